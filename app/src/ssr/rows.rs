//! The resource and task rows: one home for their columns, the visibility filter and their
//! mapping to wire types. `ResourceRow` is a resource as the API shows it (joined with its
//! image's login user and its newest task); `RecordRow` is a resource joined with its disk
//! image and flavor, as a backend needs it ([`ResourceRecord`]); `TaskRow` is a task.
//! State columns are `text` with CHECK constraints in SQL and typed enums here (sqlx
//! `Type` with `type_name = "text"`), so a row never holds an unknown state.

use crate::error::AppError;
use crate::ids::{format_id, IdKind};
use crate::model::{
    AllocationState, BackendDetails, FlavorType, OperationalState, PodOptions, Resource, Task,
    TaskKind, TaskStatus,
};
use crate::ssr::backend::ResourceRecord;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// Which resources (and their tasks) a principal may see (decided by `access::scope`): an experiment token its
/// experiment's, a user token what that user requested (../shared/slices-api.md,
/// "Authentication").
#[derive(Debug, Clone)]
pub struct Scope {
    pub experiment_id: Option<String>,
    pub requested_by: Option<String>,
}

/// A `resources` row as the API shows it.
pub(crate) struct ResourceRow {
    pub id: Uuid,
    pub experiment_id: String,
    pub project_id: String,
    pub requested_by: Option<String>,
    pub friendly_name: String,
    pub disk_image_id: Uuid,
    pub flavor_id: Uuid,
    pub flavor_type: FlavorType,
    pub network_name: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub allocation_state: AllocationState,
    pub operational_state: OperationalState,
    pub status_message: String,
    pub backend_details: Json<BackendDetails>,
    pub pod_options: Json<PodOptions>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The disk image's login user (for the `ssh` command of a VM).
    pub default_username: String,
    pub last_task_id: Option<Uuid>,
}

impl ResourceRow {
    pub(crate) fn into_wire(self, site: &str) -> Resource {
        let details = self.backend_details.0;
        let ip = details
            .addresses
            .first()
            .cloned()
            .or_else(|| details.pod_ip.clone());
        let ssh_command = match (&ip, self.flavor_type) {
            (Some(ip), FlavorType::Vm) if !self.default_username.is_empty() => {
                Some(format!("ssh {}@{}", self.default_username, ip))
            }
            _ => None,
        };
        Resource {
            id: format_id(IdKind::Resource, site, self.id),
            friendly_name: self.friendly_name,
            experiment_id: self.experiment_id,
            project_id: self.project_id,
            requested_by: self.requested_by,
            disk_image_id: format_id(IdKind::Image, site, self.disk_image_id),
            flavor_id: format_id(IdKind::Flavor, site, self.flavor_id),
            flavor_type: self.flavor_type,
            network_name: self.network_name,
            ssh_authorized_keys: self.ssh_authorized_keys,
            expires_at: self.expires_at,
            allocation_state: self.allocation_state,
            operational_state: self.operational_state,
            status_message: self.status_message,
            details,
            pod: self.pod_options.0,
            ssh_command,
            last_task_id: self.last_task_id.map(|t| format_id(IdKind::Task, site, t)),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// What [`select_resources`] returns: `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct ResourceFilter {
    pub id: Option<Uuid>,
    pub experiment_id: Option<String>,
    pub requested_by: Option<String>,
    pub project_id: Option<String>,
    /// Only the resources of this stored request (`resource_requests.id`).
    pub request_id: Option<Uuid>,
    /// Include `deleted` and `expired` resources.
    pub include_deleted: bool,
    /// Page size (rows) and rows skipped.
    pub limit: i64,
    pub offset: i64,
}

impl ResourceFilter {
    /// The one resource `id`, if `scope` sees it (deleted ones included).
    pub fn one(scope: &Scope, id: Uuid) -> Self {
        Self {
            id: Some(id),
            experiment_id: scope.experiment_id.clone(),
            requested_by: scope.requested_by.clone(),
            include_deleted: true,
            limit: 1,
            ..Self::default()
        }
    }
}

/// Resources matching `filter`, oldest first: the one query behind `GET /resources`,
/// `GET /resources/{id}` and every visibility check.
pub async fn select_resources(
    pool: &PgPool,
    site: &str,
    filter: &ResourceFilter,
) -> Result<Vec<Resource>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ResourceRow,
        r#"SELECT r.id, r.experiment_id, r.project_id, r.requested_by, r.friendly_name,
                  r.disk_image_id, r.flavor_id, r.flavor_type AS "flavor_type: FlavorType",
                  r.network_name, q.ssh_authorized_keys,
                  r.expires_at AS "expires_at: DateTime<Utc>",
                  r.allocation_state AS "allocation_state: AllocationState",
                  r.operational_state AS "operational_state: OperationalState",
                  r.status_message, r.backend_details AS "backend_details: Json<BackendDetails>",
                  r.pod_options AS "pod_options: Json<PodOptions>",
                  r.created_at AS "created_at: DateTime<Utc>",
                  r.updated_at AS "updated_at: DateTime<Utc>",
                  i.default_username,
                  (SELECT t.id FROM tasks t WHERE t.resource_id = r.id
                   ORDER BY t.created_at DESC LIMIT 1) AS last_task_id
           FROM resources r JOIN disk_images i ON i.id = r.disk_image_id
                JOIN resource_requests q ON q.id = r.request_id
           WHERE ($1::uuid IS NULL OR r.id = $1)
             AND ($2::text IS NULL OR r.experiment_id = $2)
             AND ($3::text IS NULL OR r.requested_by = $3)
             AND ($4::text IS NULL OR r.project_id = $4)
             AND ($5 OR r.allocation_state NOT IN ('deleted', 'expired'))
             AND ($8::uuid IS NULL OR r.request_id = $8)
           ORDER BY r.created_at, r.id
           LIMIT $6 OFFSET $7"#,
        filter.id,
        filter.experiment_id,
        filter.requested_by,
        filter.project_id,
        filter.include_deleted,
        filter.limit,
        filter.offset,
        filter.request_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_wire(site)).collect())
}

/// One resource visible to `scope`; 404 (naming it) otherwise, also for another
/// experiment's resource (its existence is not revealed).
pub async fn fetch_resource(
    pool: &PgPool,
    site: &str,
    scope: &Scope,
    id: Uuid,
) -> Result<Resource, AppError> {
    select_resources(pool, site, &ResourceFilter::one(scope, id))
        .await?
        .pop()
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "resource `{}` not found",
                format_id(IdKind::Resource, site, id)
            ))
        })
}

/// The columns a [`ResourceRecord`] is read from: a resource joined with its image and
/// flavor ([`load_record`], and the insert of `POST /resources`, which hands the record it
/// wrote to this process's worker).
pub(crate) struct RecordRow {
    pub id: Uuid,
    pub experiment_id: String,
    pub project_id: String,
    pub requested_by: Option<String>,
    pub friendly_name: String,
    pub flavor_type: FlavorType,
    pub allocation_state: AllocationState,
    pub network_name: Option<String>,
    pub userdata: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub backend_details: Json<BackendDetails>,
    pub pod_options: Json<PodOptions>,
    pub location: String,
    pub cluster_id: String,
    pub default_username: String,
    pub image_name: String,
    pub image_tags: Vec<String>,
    pub vcpus: i32,
    pub ram_mib: i32,
    pub disk_mb: i32,
    pub flavor_name: String,
    pub flavor_source_id: Option<String>,
}

impl RecordRow {
    pub(crate) fn into_record(self, site: &str) -> ResourceRecord {
        ResourceRecord {
            id: self.id,
            typed_id: format_id(IdKind::Resource, site, self.id),
            experiment_id: self.experiment_id,
            project_id: self.project_id,
            requested_by: self.requested_by,
            friendly_name: self.friendly_name,
            flavor_type: self.flavor_type,
            allocation_state: self.allocation_state,
            image_location: self.location,
            image_name: self.image_name,
            image_tags: self.image_tags,
            image_cluster_id: self.cluster_id,
            default_username: self.default_username,
            vcpus: self.vcpus,
            ram_mib: self.ram_mib,
            disk_mb: self.disk_mb,
            flavor_name: self.flavor_name,
            flavor_source_id: self.flavor_source_id,
            network_name: self.network_name,
            userdata: self.userdata,
            ssh_authorized_keys: self.ssh_authorized_keys,
            details: self.backend_details.0,
            pod: self.pod_options.0,
        }
    }
}

/// Loads a resource with its image and flavor, as a backend needs it ([`load_records`] of
/// one). Errors: [`AppError::NotFound`] when the row is gone.
pub async fn load_record(pool: &PgPool, site: &str, id: Uuid) -> Result<ResourceRecord, AppError> {
    load_records(pool, site, &[id])
        .await?
        .pop()
        .ok_or_else(|| AppError::NotFound(format!("resource {id} vanished")))
}

/// Loads the resources `ids` with their images and flavors in one statement (the worker
/// loads a claim's records at once: a burst of 1,000 creates otherwise sent 1,000 SELECTs).
/// A resource whose row is gone is missing from the answer; the order is the database's.
pub async fn load_records(
    pool: &PgPool,
    site: &str,
    ids: &[Uuid],
) -> Result<Vec<ResourceRecord>, AppError> {
    let rows = sqlx::query_as!(
        RecordRow,
        r#"SELECT r.id, r.experiment_id, r.project_id, r.requested_by, r.friendly_name,
                  r.flavor_type AS "flavor_type: FlavorType",
                  r.allocation_state AS "allocation_state: AllocationState",
                  r.network_name, r.userdata, q.ssh_authorized_keys,
                  r.backend_details AS "backend_details: Json<BackendDetails>",
                  r.pod_options AS "pod_options: Json<PodOptions>",
                  i.location, i.cluster_id, i.default_username, i.friendly_name AS image_name,
                  i.tags AS image_tags,
                  f.vcpus, f.ram_mib, f.disk_mb, f.friendly_name AS flavor_name,
                  f.source_id AS flavor_source_id
           FROM resources r
           JOIN resource_requests q ON q.id = r.request_id
           JOIN disk_images i ON i.id = r.disk_image_id
           JOIN flavors f ON f.id = r.flavor_id
           WHERE r.id = ANY($1)"#,
        ids
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| row.into_record(site)).collect())
}

/// A `tasks` row as the API shows it.
pub(crate) struct TaskRow {
    pub id: Uuid,
    pub resource_id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    pub completed: i16,
    pub message: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TaskRow {
    pub(crate) fn into_wire(self, site: &str) -> Task {
        Task {
            id: format_id(IdKind::Task, site, self.id),
            resource_id: format_id(IdKind::Resource, site, self.resource_id),
            kind: self.kind,
            status: self.status,
            completed: self.completed,
            message: self.message,
            attempts: self.attempts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// Which tasks [`select_tasks`] returns: `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// The one task `id`.
    pub id: Option<Uuid>,
    /// The tasks of one resource.
    pub resource_id: Option<Uuid>,
    /// The create tasks of the resources of one stored request (`resource_requests.id`).
    pub creates_of_request: Option<Uuid>,
}

/// Tasks matching `filter` whose resource is visible to `scope`, in the order of their
/// resources (as [`select_resources`] lists them), then oldest first.
pub async fn select_tasks(
    pool: &PgPool,
    site: &str,
    scope: &Scope,
    filter: &TaskFilter,
) -> Result<Vec<Task>, sqlx::Error> {
    let rows = sqlx::query_as!(
        TaskRow,
        r#"SELECT t.id, t.resource_id AS "resource_id!", t.kind AS "kind: TaskKind", t.status AS "status: TaskStatus",
                  t.completed, t.message, t.attempts,
                  t.created_at AS "created_at: DateTime<Utc>", t.updated_at AS "updated_at: DateTime<Utc>",
                  t.started_at AS "started_at: DateTime<Utc>", t.finished_at AS "finished_at: DateTime<Utc>"
           FROM tasks t JOIN resources r ON r.id = t.resource_id
           WHERE ($1::uuid IS NULL OR t.id = $1)
             AND ($2::uuid IS NULL OR t.resource_id = $2)
             AND ($3::text IS NULL OR r.experiment_id = $3)
             AND ($4::text IS NULL OR r.requested_by = $4)
             AND ($5::uuid IS NULL OR (r.request_id = $5 AND t.kind = 'create'))
           ORDER BY r.created_at, r.id, t.created_at, t.id"#,
        filter.id,
        filter.resource_id,
        scope.experiment_id,
        scope.requested_by,
        filter.creates_of_request
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_wire(site)).collect())
}

/// One task whose resource is visible to `scope`; 404 otherwise.
pub async fn fetch_task(
    pool: &PgPool,
    site: &str,
    scope: &Scope,
    id: Uuid,
) -> Result<Task, AppError> {
    let filter = TaskFilter {
        id: Some(id),
        ..TaskFilter::default()
    };
    select_tasks(pool, site, scope, &filter)
        .await?
        .pop()
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "task `{}` not found",
                format_id(IdKind::Task, site, id)
            ))
        })
}
