//! Resources: validation of `POST /resources`, visibility (an experiment token sees its
//! experiment's resources, a user token the resources that user requested), and the
//! state changes that enqueue create/delete tasks (../shared/slices-api.md, "Resources
//! and tasks").

use crate::error::AppError;
use crate::ids::{format_id, IdKind};
use crate::model::{
    AllocationState, BackendDetails, CreateResourcesRequest, CreateResourcesResponse, FlavorType,
    OperationalState, Resource, ResourcePatch, Task, TaskKind,
};
use crate::ssr::auth::{Principal, TokenKind};
use crate::ssr::backend::RecordRow;
use crate::ssr::state::AppState;
use crate::ssr::{catalog, field_id, internal, path_id, tasks};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use uuid::Uuid;

/// Most resources one request may ask for.
pub const MAX_RESOURCES_PER_REQUEST: usize = 50;
/// Largest `userdata`, bytes (Kubernetes annotations are capped at 256 KiB in total).
pub const MAX_USERDATA_BYTES: usize = 64 * 1024;
/// Default and largest page size of `GET /resources`.
pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 500;

/// Which resources a principal may see.
#[derive(Debug, Clone)]
pub struct Scope {
    pub experiment_id: Option<String>,
    pub requested_by: Option<String>,
}

impl Scope {
    /// Experiment token → its experiment; user token → what that user requested.
    pub fn of(principal: &Principal) -> Scope {
        match principal.kind {
            TokenKind::Experiment => Scope {
                experiment_id: principal.experiment_id.clone(),
                requested_by: None,
            },
            TokenKind::User => Scope {
                experiment_id: None,
                requested_by: Some(principal.user_id.clone().unwrap_or_default()),
            },
        }
    }
}

/// Filters of `GET /resources`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this experiment (must be the token's own for experiment tokens).
    pub experiment_id: Option<String>,
    /// Only this project.
    pub project: Option<String>,
    /// Include deleted and expired resources (default false).
    #[serde(default)]
    pub include_deleted: bool,
    /// Page size, 1-500 (default 100).
    pub limit: Option<i64>,
    /// Rows to skip (default 0).
    pub offset: Option<i64>,
}

pub(crate) struct ResourceRow {
    pub id: Uuid,
    pub experiment_id: String,
    pub project_id: String,
    pub requested_by: Option<String>,
    pub friendly_name: String,
    pub disk_image_id: Uuid,
    pub flavor_id: Uuid,
    pub flavor_type: String,
    pub network_name: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub allocation_state: String,
    pub operational_state: String,
    pub status_message: String,
    pub backend_details: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub default_username: String,
    pub last_task_id: Option<Uuid>,
}

impl ResourceRow {
    pub(crate) fn into_wire(self, site: &str) -> Result<Resource, AppError> {
        let details: BackendDetails =
            serde_json::from_value(self.backend_details).unwrap_or_default();
        let ip = details
            .addresses
            .first()
            .cloned()
            .or_else(|| details.pod_ip.clone());
        let ssh_command = match (&ip, self.flavor_type.as_str()) {
            (Some(ip), "vm") if !self.default_username.is_empty() => {
                Some(format!("ssh {}@{}", self.default_username, ip))
            }
            _ => None,
        };
        let bad =
            |what: &str, v: &str| internal(anyhow::anyhow!("resource {} has {what} {v}", self.id));
        Ok(Resource {
            id: format_id(IdKind::Resource, site, self.id),
            friendly_name: self.friendly_name,
            experiment_id: self.experiment_id,
            project_id: self.project_id,
            requested_by: self.requested_by,
            disk_image_id: format_id(IdKind::Image, site, self.disk_image_id),
            flavor_id: format_id(IdKind::Flavor, site, self.flavor_id),
            flavor_type: FlavorType::parse(&self.flavor_type)
                .ok_or_else(|| bad("flavor type", &self.flavor_type))?,
            network_name: self.network_name,
            ssh_authorized_keys: self.ssh_authorized_keys,
            expires_at: self.expires_at,
            allocation_state: AllocationState::parse(&self.allocation_state)
                .ok_or_else(|| bad("allocation state", &self.allocation_state))?,
            operational_state: OperationalState::parse(&self.operational_state)
                .ok_or_else(|| bad("operational state", &self.operational_state))?,
            status_message: self.status_message,
            details,
            ssh_command,
            last_task_id: self.last_task_id.map(|t| format_id(IdKind::Task, site, t)),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// RFC 1123 DNS label: what a Pod name must be (Kubernetes API conventions, "Names").
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_ssh_keys(keys: &[String]) -> Result<(), AppError> {
    if keys.len() > 32 {
        return Err(AppError::invalid("ssh_authorized_keys", "at most 32 keys"));
    }
    for (i, key) in keys.iter().enumerate() {
        let field = format!("ssh_authorized_keys[{i}]");
        let key = key.trim();
        let kind = key.split_whitespace().next().unwrap_or_default();
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
        if !known || key.split_whitespace().count() < 2 {
            return Err(AppError::invalid(
                field,
                "not an OpenSSH public key (`ssh-ed25519 AAAA… comment`)",
            ));
        }
        if key.len() > 16 * 1024 || key.contains('\n') {
            return Err(AppError::invalid(
                field,
                "one key per entry, at most 16 KiB",
            ));
        }
    }
    Ok(())
}

/// Checks `expires_at` against now and the experiment's expiry.
fn check_expiry(
    field: &str,
    expires_at: DateTime<Utc>,
    principal: &Principal,
) -> Result<(), AppError> {
    let now = Utc::now();
    if expires_at <= now {
        return Err(AppError::invalid(field, "must be in the future"));
    }
    if let Some(max) = principal.experiment_expires_at {
        if expires_at > max {
            return Err(AppError::invalid(
                field,
                format!(
                    "must not be after the experiment's expiry ({})",
                    max.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ));
        }
    }
    Ok(())
}

struct Planned {
    id: Uuid,
    friendly_name: String,
    disk_image_id: Uuid,
    flavor_id: Uuid,
    flavor_type: FlavorType,
    network_name: Option<String>,
    userdata: Option<String>,
}

/// The clouds.yaml summary of the user a VM is made for: 422 (`tokens`) when the request names
/// no user or the user has uploaded none.
async fn vm_user_clouds(
    state: &AppState,
    user: Option<&str>,
) -> Result<crate::model::CloudsYamlSummary, AppError> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Err(AppError::invalid(
            "tokens",
            "a VM is created with the requesting user's clouds.yaml: send your user token in `tokens[0].jwt`",
        ));
    };
    match crate::ssr::clouds::summary(&state.pool, user).await {
        Err(AppError::NotFound(_)) => Err(AppError::invalid(
            "tokens",
            format!("user `{user}` has not uploaded a clouds.yaml yet (dashboard page Clouds, or PUT /clouds-yaml)"),
        )),
        other => other,
    }
}

/// 422 (`image_field`) when the image's cloud (`cluster_id`; `default` = the user's default)
/// is not in the user's clouds.yaml.
fn check_image_cloud(
    clouds: &crate::model::CloudsYamlSummary,
    image: &crate::model::DiskImage,
    image_field: &str,
) -> Result<(), AppError> {
    if image.cluster_id != "default" && !clouds.clouds.iter().any(|c| c.name == image.cluster_id) {
        return Err(AppError::invalid(
            image_field,
            format!(
                "this image lives on cloud `{}`, which your clouds.yaml does not define",
                image.cluster_id
            ),
        ));
    }
    Ok(())
}

/// `POST /resources`: validates everything first, then inserts every resource and its
/// create task in one statement (all or nothing). Tasks this process's worker has room for
/// are written already claimed by it and handed over in memory
/// ([`tasks::LocalWorker`]); the others are queued and the workers notified. The answer is
/// built from the inserted rows (no re-read).
pub async fn create_resources(
    state: &AppState,
    principal: &Principal,
    request: &CreateResourcesRequest,
) -> Result<CreateResourcesResponse, AppError> {
    let experiment_id = principal.require_experiment()?.to_string();
    let site = state.site();
    if request.resources.is_empty() {
        return Err(AppError::invalid(
            "resources",
            "ask for at least one resource",
        ));
    }
    if request.resources.len() > MAX_RESOURCES_PER_REQUEST {
        return Err(AppError::invalid(
            "resources",
            format!("at most {MAX_RESOURCES_PER_REQUEST} resources per request"),
        ));
    }
    check_expiry("expires_at", request.expires_at, principal)?;
    check_ssh_keys(&request.ssh_authorized_keys)?;

    // Who asked: the user token in the body (as the SLICES CLI sends it), else the
    // experiment token's acting user.
    let requested_by = match request.tokens.first() {
        Some(token) => {
            let user = state
                .auth
                .verify(&token.jwt)
                .await
                .map_err(|e| AppError::invalid("tokens[0].jwt", e.message()))?;
            if user.kind != TokenKind::User {
                return Err(AppError::invalid(
                    "tokens[0].jwt",
                    "must be a user token (`slices auth id-token`), not an experiment token",
                ));
            }
            user.user_id
        }
        None => principal.user_id.clone(),
    };

    let mut planned = Vec::with_capacity(request.resources.len());
    let mut seen = HashSet::new();
    // Read at the first VM of the request, then reused for the others.
    let mut user_clouds = None;
    // Read each image and flavor once per request (resources of one request mostly share
    // them; keyed by the typed id as sent).
    let mut images = std::collections::HashMap::new();
    let mut flavors = std::collections::HashMap::new();
    for (i, spec) in request.resources.iter().enumerate() {
        let f = |name: &str| format!("resources[{i}].{name}");
        let name = spec.friendly_name.trim().to_string();
        if name.is_empty() {
            return Err(AppError::invalid(f("friendly_name"), "must not be empty"));
        }
        if !seen.insert(name.clone()) {
            return Err(AppError::invalid(
                f("friendly_name"),
                format!("`{name}` appears twice in this request"),
            ));
        }
        let image_uuid = field_id(
            IdKind::Image,
            site,
            &f("disk_image_id"),
            &spec.disk_image_id,
        )?;
        let flavor_uuid = field_id(IdKind::Flavor, site, &f("flavor_id"), &spec.flavor_id)?;
        // The reads not yet made, both at once (two pooled connections): one round trip.
        let (image, flavor) = tokio::join!(
            async {
                match images.get(&spec.disk_image_id).cloned() {
                    Some(known) => Ok(known),
                    None => {
                        catalog::get_image(
                            &state.pool,
                            site,
                            &spec.disk_image_id,
                            principal.is_admin,
                        )
                        .await
                    }
                }
            },
            async {
                match flavors.get(&spec.flavor_id).cloned() {
                    Some(known) => Ok(known),
                    None => catalog::get_flavor(&state.pool, site, &spec.flavor_id).await,
                }
            }
        );
        let image: crate::model::DiskImage = image.map_err(|e| match e {
            AppError::NotFound(m) => AppError::invalid(f("disk_image_id"), m),
            other => other,
        })?;
        let flavor: crate::model::Flavor = flavor.map_err(|e| match e {
            AppError::NotFound(m) => AppError::invalid(f("flavor_id"), m),
            other => other,
        })?;
        images.insert(spec.disk_image_id.clone(), image.clone());
        flavors.insert(spec.flavor_id.clone(), flavor.clone());
        match flavor.flavor_type {
            FlavorType::K8s => {
                if !is_dns_label(&name) {
                    return Err(AppError::invalid(
                        f("friendly_name"),
                        "a pod name must be a DNS label: lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters",
                    ));
                }
            }
            FlavorType::Vm => {
                if name.len() > 63 {
                    return Err(AppError::invalid(
                        f("friendly_name"),
                        "at most 63 characters",
                    ));
                }
            }
        }
        if !state.backends.supports(flavor.flavor_type) {
            return Err(AppError::Unavailable(format!(
                "{}: this site has no {} backend configured",
                f("flavor_id"),
                match flavor.flavor_type {
                    FlavorType::K8s => "Kubernetes (KUBECONFIG)",
                    FlavorType::Vm => "OpenStack",
                }
            )));
        }
        if flavor.flavor_type == FlavorType::Vm {
            if user_clouds.is_none() {
                user_clouds = Some(vm_user_clouds(state, requested_by.as_deref()).await?);
            }
            if let Some(clouds) = &user_clouds {
                check_image_cloud(clouds, &image, &f("disk_image_id"))?;
            }
        }
        if let Some(userdata) = &spec.userdata {
            if userdata.len() > MAX_USERDATA_BYTES {
                return Err(AppError::invalid(
                    f("userdata"),
                    format!("at most {MAX_USERDATA_BYTES} bytes"),
                ));
            }
        }
        if let Some(network) = &spec.network_name {
            if network.len() > 255 {
                return Err(AppError::invalid(
                    f("network_name"),
                    "at most 255 characters",
                ));
            }
        }
        planned.push(Planned {
            id: Uuid::now_v7(),
            friendly_name: name,
            disk_image_id: image_uuid,
            flavor_id: flavor_uuid,
            flavor_type: flavor.flavor_type,
            network_name: spec.network_name.clone().filter(|n| !n.trim().is_empty()),
            userdata: spec.userdata.clone().filter(|u| !u.is_empty()),
        });
    }

    let project_id = principal.project_id.clone().unwrap_or_default();
    // This process's worker takes what it has room for straight from here (no claim, no
    // re-read); the rest is queued for any worker.
    let mut reserved = state.local_worker.reserve(planned.len());
    let handed: Vec<bool> = (0..planned.len()).map(|i| i < reserved.len()).collect();
    let task_ids: Vec<Uuid> = planned.iter().map(|_| Uuid::now_v7()).collect();
    let ids: Vec<Uuid> = planned.iter().map(|p| p.id).collect();
    let worker_id = reserved.first().map(|r| r.worker_id().to_string());
    // One statement, so one round trip and atomic on its own: every resource, its create
    // task (queued, or already claimed by this process's worker with a fresh lease), and
    // what the answer and the worker need, joined from the catalog.
    let rows = sqlx::query!(
        r#"WITH r AS (
               INSERT INTO resources (id, experiment_id, project_id, requested_by, friendly_name,
                   disk_image_id, flavor_id, flavor_type, network_name, userdata,
                   ssh_authorized_keys, expires_at, allocation_state, status_message)
               SELECT u.id, $2, $3, $4, u.friendly_name, u.disk_image_id, u.flavor_id,
                      u.flavor_type, u.network_name, u.userdata, $5, $6,
                      CASE WHEN u.handed THEN 'provisioning' ELSE 'requested' END,
                      CASE WHEN u.handed THEN 'provisioning' ELSE 'waiting for a worker' END
               FROM UNNEST($1::uuid[], $7::text[], $8::uuid[], $9::uuid[], $10::text[],
                           $11::text[], $12::text[], $13::bool[])
                    AS u(id, friendly_name, disk_image_id, flavor_id, flavor_type, network_name,
                         userdata, handed)
               RETURNING *),
           t AS (
               INSERT INTO tasks (id, resource_id, kind, status, message, attempts, locked_by,
                   locked_until, started_at)
               SELECT v.id, v.resource_id, 'create',
                      CASE WHEN v.handed THEN 'running' ELSE 'queued' END,
                      CASE WHEN v.handed THEN 'started' ELSE 'queued' END,
                      CASE WHEN v.handed THEN 1 ELSE 0 END,
                      CASE WHEN v.handed THEN $15 END,
                      CASE WHEN v.handed THEN now() + make_interval(secs => $16) END,
                      CASE WHEN v.handed THEN now() END
               FROM UNNEST($14::uuid[], $1::uuid[], $13::bool[]) AS v(id, resource_id, handed)
               RETURNING *)
           SELECT r.id AS "id!", r.experiment_id AS "experiment_id!", r.project_id AS "project_id!",
                  r.requested_by, r.friendly_name AS "friendly_name!",
                  r.disk_image_id AS "disk_image_id!", r.flavor_id AS "flavor_id!",
                  r.flavor_type AS "flavor_type!", r.network_name, r.userdata,
                  r.ssh_authorized_keys AS "ssh_authorized_keys!",
                  r.expires_at AS "expires_at!: DateTime<Utc>",
                  r.allocation_state AS "allocation_state!",
                  r.operational_state AS "operational_state!",
                  r.status_message AS "status_message!", r.backend_details AS "backend_details!",
                  r.created_at AS "created_at!: DateTime<Utc>",
                  r.updated_at AS "updated_at!: DateTime<Utc>",
                  i.location, i.cluster_id, i.default_username, i.friendly_name AS image_name,
                  f.vcpus, f.ram_mib, f.disk_mb, f.friendly_name AS flavor_name,
                  f.source_id AS flavor_source_id,
                  t.id AS "task_id!", t.kind AS "task_kind!", t.status AS "task_status!",
                  t.completed AS "task_completed!", t.message AS "task_message!",
                  t.attempts AS "task_attempts!", t.max_attempts AS "task_max_attempts!",
                  t.created_at AS "task_created_at!: DateTime<Utc>",
                  t.updated_at AS "task_updated_at!: DateTime<Utc>",
                  t.started_at AS "task_started_at: DateTime<Utc>",
                  t.finished_at AS "task_finished_at: DateTime<Utc>"
           FROM r JOIN t ON t.resource_id = r.id
                  JOIN disk_images i ON i.id = r.disk_image_id
                  JOIN flavors f ON f.id = r.flavor_id
           ORDER BY array_position($1::uuid[], r.id)"#,
        &ids,
        experiment_id,
        project_id,
        requested_by,
        &request.ssh_authorized_keys,
        request.expires_at as _,
        &planned
            .iter()
            .map(|p| p.friendly_name.clone())
            .collect::<Vec<_>>(),
        &planned.iter().map(|p| p.disk_image_id).collect::<Vec<_>>(),
        &planned.iter().map(|p| p.flavor_id).collect::<Vec<_>>(),
        &planned
            .iter()
            .map(|p| p.flavor_type.as_str().to_string())
            .collect::<Vec<_>>(),
        &planned
            .iter()
            .map(|p| p.network_name.clone())
            .collect::<Vec<_>>() as &[Option<String>],
        &planned
            .iter()
            .map(|p| p.userdata.clone())
            .collect::<Vec<_>>() as &[Option<String>],
        &handed,
        &task_ids,
        worker_id,
        tasks::LEASE.as_secs_f64()
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| name_conflict(e, &experiment_id, &planned))?;
    if handed.iter().any(|h| !h) {
        tasks::notify_queued(&state.pool).await;
        state.tasks_queued();
    }
    state.list_cache.invalidate();

    let mut resources = Vec::with_capacity(rows.len());
    let mut created_tasks = Vec::with_capacity(rows.len());
    let mut reserved = reserved.drain(..);
    for row in rows {
        let record = RecordRow {
            id: row.id,
            experiment_id: row.experiment_id.clone(),
            project_id: row.project_id.clone(),
            requested_by: row.requested_by.clone(),
            friendly_name: row.friendly_name.clone(),
            flavor_type: row.flavor_type.clone(),
            allocation_state: row.allocation_state.clone(),
            network_name: row.network_name.clone(),
            userdata: row.userdata,
            ssh_authorized_keys: row.ssh_authorized_keys.clone(),
            backend_details: row.backend_details.clone(),
            location: row.location,
            cluster_id: row.cluster_id,
            default_username: row.default_username.clone(),
            image_name: row.image_name,
            vcpus: row.vcpus,
            ram_mib: row.ram_mib,
            disk_mb: row.disk_mb,
            flavor_name: row.flavor_name,
            flavor_source_id: row.flavor_source_id,
        };
        if row.task_status == "running" {
            if let Some(slot) = reserved.next() {
                slot.start(
                    row.task_id,
                    TaskKind::Create,
                    row.task_max_attempts,
                    record.into_record(site),
                );
            }
        }
        created_tasks.push(
            tasks::TaskRow {
                id: row.task_id,
                resource_id: row.id,
                kind: row.task_kind,
                status: row.task_status,
                completed: row.task_completed,
                message: row.task_message,
                attempts: row.task_attempts,
                created_at: row.task_created_at,
                updated_at: row.task_updated_at,
                started_at: row.task_started_at,
                finished_at: row.task_finished_at,
            }
            .into_wire(site)?,
        );
        resources.push(
            ResourceRow {
                id: row.id,
                experiment_id: row.experiment_id,
                project_id: row.project_id,
                requested_by: row.requested_by,
                friendly_name: row.friendly_name,
                disk_image_id: row.disk_image_id,
                flavor_id: row.flavor_id,
                flavor_type: row.flavor_type,
                network_name: row.network_name,
                ssh_authorized_keys: row.ssh_authorized_keys,
                expires_at: row.expires_at,
                allocation_state: row.allocation_state,
                operational_state: row.operational_state,
                status_message: row.status_message,
                backend_details: row.backend_details,
                created_at: row.created_at,
                updated_at: row.updated_at,
                default_username: row.default_username,
                last_task_id: Some(row.task_id),
            }
            .into_wire(site)?,
        );
    }
    Ok(CreateResourcesResponse {
        resources,
        tasks: created_tasks,
    })
}

/// Maps the live-name unique index of `resources` to a 409 naming the request's field
/// (PostgreSQL's detail reads `Key (experiment_id, friendly_name)=(<exp>, <name>) already
/// exists.`); any other error is internal.
fn name_conflict(e: sqlx::Error, experiment_id: &str, planned: &[Planned]) -> AppError {
    let Some(db) = e.as_database_error() else {
        return internal(e);
    };
    if db.constraint() != Some("resources_live_name_unique") {
        return internal(e);
    }
    let detail = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail())
        .unwrap_or_default();
    let (index, name) = planned
        .iter()
        .enumerate()
        .find(|(_, p)| detail.contains(&format!("=({experiment_id}, {})", p.friendly_name)))
        .or_else(|| planned.iter().enumerate().next())
        .map(|(i, p)| (i, p.friendly_name.as_str()))
        .unwrap_or((0, ""));
    AppError::Conflict {
        field: format!("resources[{index}].friendly_name"),
        message: format!("`{name}` is already the name of a live resource of this experiment"),
    }
}

/// `GET /resources`.
pub async fn list_resources(
    state: &AppState,
    principal: &Principal,
    query: &ListQuery,
) -> Result<Vec<Resource>, AppError> {
    let scope = Scope::of(principal);
    if let (Some(own), Some(asked)) = (&scope.experiment_id, &query.experiment_id) {
        if own != asked {
            return Ok(Vec::new());
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(AppError::BadRequest("offset must not be negative".into()));
    }
    let experiment = scope.experiment_id.clone().or(query.experiment_id.clone());
    let rows = sqlx::query_as!(
        ResourceRow,
        r#"SELECT r.id, r.experiment_id, r.project_id, r.requested_by, r.friendly_name,
                  r.disk_image_id, r.flavor_id, r.flavor_type, r.network_name,
                  r.ssh_authorized_keys, r.expires_at AS "expires_at: DateTime<Utc>", r.allocation_state, r.operational_state,
                  r.status_message, r.backend_details, r.created_at AS "created_at: DateTime<Utc>",
                  r.updated_at AS "updated_at: DateTime<Utc>",
                  i.default_username,
                  (SELECT t.id FROM tasks t WHERE t.resource_id = r.id
                   ORDER BY t.created_at DESC LIMIT 1) AS last_task_id
           FROM resources r JOIN disk_images i ON i.id = r.disk_image_id
           WHERE ($1::text IS NULL OR r.experiment_id = $1)
             AND ($2::text IS NULL OR r.requested_by = $2)
             AND ($3::text IS NULL OR r.project_id = $3)
             AND ($4 OR r.allocation_state NOT IN ('deleted', 'expired'))
           ORDER BY r.created_at, r.id
           LIMIT $5 OFFSET $6"#,
        experiment,
        scope.requested_by,
        query.project,
        query.include_deleted,
        limit,
        offset
    )
    .fetch_all(&state.pool)
    .await?;
    rows.into_iter()
        .map(|r| r.into_wire(state.site()))
        .collect()
}

/// One resource visible to `scope`, by uuid.
pub(crate) async fn fetch(state: &AppState, scope: &Scope, id: Uuid) -> Result<Resource, AppError> {
    let row = sqlx::query_as!(
        ResourceRow,
        r#"SELECT r.id, r.experiment_id, r.project_id, r.requested_by, r.friendly_name,
                  r.disk_image_id, r.flavor_id, r.flavor_type, r.network_name,
                  r.ssh_authorized_keys, r.expires_at AS "expires_at: DateTime<Utc>", r.allocation_state, r.operational_state,
                  r.status_message, r.backend_details, r.created_at AS "created_at: DateTime<Utc>",
                  r.updated_at AS "updated_at: DateTime<Utc>",
                  i.default_username,
                  (SELECT t.id FROM tasks t WHERE t.resource_id = r.id
                   ORDER BY t.created_at DESC LIMIT 1) AS last_task_id
           FROM resources r JOIN disk_images i ON i.id = r.disk_image_id
           WHERE r.id = $1
             AND ($2::text IS NULL OR r.experiment_id = $2)
             AND ($3::text IS NULL OR r.requested_by = $3)"#,
        id,
        scope.experiment_id,
        scope.requested_by
    )
    .fetch_optional(&state.pool)
    .await?;
    match row {
        Some(r) => r.into_wire(state.site()),
        None => Err(AppError::NotFound(format!(
            "resource `{}` not found",
            format_id(IdKind::Resource, state.site(), id)
        ))),
    }
}

/// `GET /resources/{id}`.
pub async fn get_resource(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Resource, AppError> {
    let uuid = path_id(IdKind::Resource, state.site(), id)?;
    fetch(state, &Scope::of(principal), uuid).await
}

/// `DELETE /resources/{id}`: marks the resource `deleting` and enqueues a delete task.
/// Idempotent: a resource already being deleted (or gone) answers with its delete task.
pub async fn delete_resource(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Task, AppError> {
    principal.require_experiment()?;
    let uuid = path_id(IdKind::Resource, state.site(), id)?;
    let scope = Scope::of(principal);
    fetch(state, &scope, uuid).await?;
    let mut tx = state.pool.begin().await?;
    let marked = sqlx::query!(
        r#"UPDATE resources SET allocation_state = 'deleting',
               status_message = 'deletion requested', updated_at = now()
           WHERE id = $1 AND allocation_state NOT IN ('deleting', 'deleted', 'expired')"#,
        uuid
    )
    .execute(&mut *tx)
    .await?;
    let task_id = if marked.rows_affected() == 1 {
        tasks::enqueue(&mut tx, uuid, TaskKind::Delete).await?
    } else {
        let existing = sqlx::query_scalar!(
            r#"SELECT id FROM tasks WHERE resource_id = $1 AND kind = 'delete'
               ORDER BY created_at DESC LIMIT 1"#,
            uuid
        )
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some(task) => task,
            // Expired without a delete task of its own: enqueue one so its backend object goes.
            None => tasks::enqueue(&mut tx, uuid, TaskKind::Delete).await?,
        }
    };
    tx.commit().await?;
    state.tasks_queued();
    state.list_cache.invalidate();
    tasks::fetch(state, &scope, task_id).await
}

/// `PATCH /resources/{id}`: moves `expires_at` (within the experiment's expiry).
pub async fn extend_resource(
    state: &AppState,
    principal: &Principal,
    id: &str,
    patch: &ResourcePatch,
) -> Result<Resource, AppError> {
    principal.require_experiment()?;
    let uuid = path_id(IdKind::Resource, state.site(), id)?;
    let scope = Scope::of(principal);
    fetch(state, &scope, uuid).await?;
    check_expiry("expires_at", patch.expires_at, principal)?;
    let updated = sqlx::query!(
        r#"UPDATE resources SET expires_at = $2, updated_at = now()
           WHERE id = $1 AND allocation_state IN ('requested', 'provisioning', 'provisioned')"#,
        uuid,
        patch.expires_at as _
    )
    .execute(&state.pool)
    .await?;
    state.list_cache.invalidate();
    if updated.rows_affected() == 0 {
        return Err(AppError::Conflict {
            field: "expires_at".into(),
            message: "only live resources can be extended".into(),
        });
    }
    fetch(state, &scope, uuid).await
}

/// Most console lines one request may ask for.
pub const MAX_CONSOLE_LINES: u32 = 2000;

/// `GET /resources/{id}/console?lines=N`: the tail of a VM's console (Nova
/// `os-getConsoleOutput`, Compute API "Show Console Output"), read with the requesting
/// user's clouds.yaml. 409 for Pods and for VMs without a server; 502 when Nova refuses.
pub async fn console_log(
    state: &AppState,
    principal: &Principal,
    id: &str,
    lines: Option<u32>,
) -> Result<crate::model::ConsoleLog, AppError> {
    let lines = lines.unwrap_or(200);
    if !(1..=MAX_CONSOLE_LINES).contains(&lines) {
        return Err(AppError::invalid(
            "lines",
            format!("must be between 1 and {MAX_CONSOLE_LINES}"),
        ));
    }
    let uuid = path_id(IdKind::Resource, state.site(), id)?;
    let resource = fetch(state, &Scope::of(principal), uuid).await?;
    if resource.flavor_type != FlavorType::Vm {
        return Err(AppError::Conflict {
            field: "id".into(),
            message: "only VMs have a console log; read a Pod's logs with kubectl".into(),
        });
    }
    if resource.details.server_id.is_none() {
        return Err(AppError::Conflict {
            field: "id".into(),
            message: "the VM has no server yet (or any more): no console to read".into(),
        });
    }
    let backend = state
        .backends
        .openstack
        .clone()
        .ok_or_else(|| AppError::Unavailable("this site has no OpenStack backend".into()))?;
    let record = crate::ssr::backend::ResourceRecord::load(state, uuid).await?;
    let output = backend
        .console_log(&record, lines)
        .await
        .map_err(|e| AppError::Upstream(e.message))?;
    Ok(crate::model::ConsoleLog {
        resource_id: resource.id,
        output,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "pod-1", "0abc", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn ssh_keys() {
        assert!(check_ssh_keys(&["ssh-ed25519 AAAAC3Nza me@host".into()]).is_ok());
        assert!(check_ssh_keys(&["ecdsa-sha2-nistp256 AAAA".into()]).is_ok());
        let e = check_ssh_keys(&["ssh-ed25519 AAAA".into(), "hello".into()]).expect_err("bad");
        assert_eq!(e.field(), Some("ssh_authorized_keys[1]"));
    }
}
