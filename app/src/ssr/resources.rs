//! Resources: validation of `POST /resources`, visibility, and the state changes that
//! enqueue create/delete tasks (../shared/slices-api.md, "Resources and tasks"). A request
//! goes validate → plan (catalog entries, the user's clouds) → store (resources and tasks in
//! one statement) → hand over (to this process's worker, or the queue).

use crate::error::AppError;
use crate::ids::IdKind;
use crate::model::{
    AllocationState, BackendDetails, CloudsYamlSummary, ConsoleLog, CreateResourcesRequest,
    CreateResourcesResponse, DiskImage, Flavor, FlavorType, OperationalState, PodOptions, Resource,
    ResourcePatch, ResourceSpec, Task, TaskKind, TaskStatus,
};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::auth::{Authenticator, Principal, TokenKind};
use crate::ssr::backend::{Backends, LogOutput, LogQuery, LogsError};
use crate::ssr::config::Quota;
use crate::ssr::list_cache::ListCache;
use crate::ssr::names::{is_dns_label, unsafe_character};
use crate::ssr::queue::{self, LocalWorker, Reserved};
use crate::ssr::rows::{
    fetch_resource, fetch_task, load_record, select_resources, select_tasks, RecordRow,
    ResourceFilter, ResourceRow, Scope, TaskFilter, TaskRow,
};
use crate::ssr::{catalog, clouds, field_id, internal, path_id};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Most resources one request may ask for.
pub const MAX_RESOURCES_PER_REQUEST: usize = 50;
/// Largest `userdata`, bytes (Kubernetes annotations are capped at 256 KiB in total).
pub const MAX_USERDATA_BYTES: usize = 64 * 1024;
/// Default and largest page size of `GET /resources`.
pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 500;
/// Most console lines one request may ask for.
pub const MAX_CONSOLE_LINES: u32 = 2000;

/// What the resource service works with, borrowed from the application state by the entry
/// points (REST handlers, server functions).
#[derive(Clone, Copy)]
pub struct Resources<'a> {
    pub pool: &'a PgPool,
    /// The site part of typed ids.
    pub site: &'a str,
    /// Verifies the user token in a request body.
    pub auth: &'a Authenticator,
    pub backends: &'a Backends,
    pub list_cache: &'a ListCache,
    /// This process's worker, which takes new tasks straight from the request.
    pub local: &'a LocalWorker,
    /// Per-experiment caps on live resources, vCPUs and RAM.
    pub quota: Quota,
    /// Running tasks one experiment may hold at once (`WORKER_SLOTS_PER_EXPERIMENT`).
    pub slots_per_experiment: usize,
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
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Rows to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
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

/// The longest a resource may live, in days from now (the SLICES testbeds' limit, as at
/// imec: ../shared/slices-api.md, "Resources and tasks").
pub const MAX_LIFETIME_DAYS: i64 = 89;

/// Checks `expires_at` against now (in the future, at most [`MAX_LIFETIME_DAYS`] ahead) and
/// the experiment's expiry.
fn check_expiry(
    field: &str,
    expires_at: DateTime<Utc>,
    principal: &Principal,
) -> Result<(), AppError> {
    let now = Utc::now();
    if expires_at <= now {
        return Err(AppError::invalid(field, "must be in the future"));
    }
    if expires_at > now + chrono::Duration::days(MAX_LIFETIME_DAYS) {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_LIFETIME_DAYS} days from now"),
        ));
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

/// The request-wide checks of `POST /resources`, pure (no I/O): at least one and at most
/// [`MAX_RESOURCES_PER_REQUEST`] resources, `expires_at` in the future and not after the
/// experiment's expiry, at most 32 OpenSSH public keys of at most 16 KiB each. Errors are 422
/// naming the field (`resources`, `expires_at`, `ssh_authorized_keys[i]`).
pub fn check_request(
    principal: &Principal,
    request: &CreateResourcesRequest,
) -> Result<(), AppError> {
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
    check_ssh_keys(&request.ssh_authorized_keys)
}

/// Who asked, and so whose OpenStack account pays for a VM: the user token in the body (as
/// the SLICES CLI sends it), else the experiment token's acting user. 422 (`tokens[0].jwt`)
/// for a token that is invalid or not a user's; 403 when the experiment token names an acting
/// user and the body's token is another user's (a user token authorises spending on that
/// user's cloud, so it must be the acting user's own).
async fn requesting_user(
    auth: &Authenticator,
    principal: &Principal,
    request: &CreateResourcesRequest,
) -> Result<Option<String>, AppError> {
    let Some(token) = request.tokens.first() else {
        return Ok(principal.user_id.clone());
    };
    let user = auth
        .verify(&token.jwt)
        .await
        .map_err(|e| AppError::invalid("tokens[0].jwt", e.message()))?;
    if user.kind != TokenKind::User {
        return Err(AppError::invalid(
            "tokens[0].jwt",
            "must be a user token (`slices auth id-token`), not an experiment token",
        ));
    }
    if let Some(acting) = principal.user_id.as_deref().filter(|u| !u.is_empty()) {
        if user.user_id.as_deref() != Some(acting) {
            return Err(AppError::Forbidden(format!(
                "tokens[0].jwt belongs to another user than this experiment token's acting user `{acting}`: send your own user token"
            )));
        }
    }
    Ok(user.user_id)
}

/// One resource of a request, checked and resolved.
struct Planned {
    id: Uuid,
    friendly_name: String,
    disk_image_id: Uuid,
    flavor_id: Uuid,
    flavor_type: FlavorType,
    network_name: Option<String>,
    userdata: Option<String>,
    pod: PodOptions,
    vcpus: i32,
    ram_mib: i32,
}

/// Resolves a request's resources against the catalog and the requesting user's clouds,
/// reading each image, flavor and the clouds.yaml summary once per request.
struct Planner<'a> {
    ctx: &'a Resources<'a>,
    principal: &'a Principal,
    requested_by: Option<&'a str>,
    seen: HashSet<String>,
    images: HashMap<String, DiskImage>,
    flavors: HashMap<String, Flavor>,
    /// Read at the first VM of the request.
    user_clouds: Option<CloudsYamlSummary>,
}

impl<'a> Planner<'a> {
    fn new(
        ctx: &'a Resources<'a>,
        principal: &'a Principal,
        requested_by: Option<&'a str>,
    ) -> Self {
        Self {
            ctx,
            principal,
            requested_by,
            seen: HashSet::new(),
            images: HashMap::new(),
            flavors: HashMap::new(),
            user_clouds: None,
        }
    }

    async fn plan(mut self, specs: &[ResourceSpec]) -> Result<Vec<Planned>, AppError> {
        let mut planned = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            planned.push(self.plan_one(i, spec).await?);
        }
        Ok(planned)
    }

    /// `resources[i]`: its name, catalog entries, backend and (VMs) cloud.
    async fn plan_one(&mut self, i: usize, spec: &ResourceSpec) -> Result<Planned, AppError> {
        let f = |name: &str| format!("resources[{i}].{name}");
        let name = spec.friendly_name.trim().to_string();
        if name.is_empty() {
            return Err(AppError::invalid(f("friendly_name"), "must not be empty"));
        }
        if let Some(why) = unsafe_character(&name) {
            return Err(AppError::invalid(f("friendly_name"), why));
        }
        if !self.seen.insert(name.clone()) {
            return Err(AppError::invalid(
                f("friendly_name"),
                format!("`{name}` appears twice in this request"),
            ));
        }
        let site = self.ctx.site;
        let disk_image_id = field_id(
            IdKind::Image,
            site,
            &f("disk_image_id"),
            &spec.disk_image_id,
        )?;
        let flavor_id = field_id(IdKind::Flavor, site, &f("flavor_id"), &spec.flavor_id)?;
        let (image, flavor) = self.catalog(spec, &f).await?;
        check_name(flavor.flavor_type, &name, &f("friendly_name"))?;
        if !self.ctx.backends.supports(flavor.flavor_type) {
            return Err(AppError::Unavailable(format!(
                "{}: this site has no {} backend configured",
                f("flavor_id"),
                match flavor.flavor_type {
                    FlavorType::K8s => "Kubernetes (KUBECONFIG)",
                    FlavorType::Vm => "OpenStack",
                }
            )));
        }
        check_texts(spec, &f)?;
        let pod = spec.pod_options();
        match (flavor.flavor_type, pod.first_set()) {
            (FlavorType::Vm, Some(option)) => {
                return Err(AppError::invalid(
                    f(option),
                    "only Pods take `env`, `command`, `args` and `ports`; this resource's flavor is a VM",
                ))
            }
            (FlavorType::K8s, _) => pod.check(&format!("resources[{i}]"))?,
            (FlavorType::Vm, None) => {}
        }
        if flavor.flavor_type == FlavorType::Vm {
            let clouds = self.user_clouds().await?;
            check_image_cloud(clouds, &image, &f("disk_image_id"))?;
        }
        Ok(Planned {
            id: Uuid::now_v7(),
            friendly_name: name,
            disk_image_id,
            flavor_id,
            flavor_type: flavor.flavor_type,
            network_name: spec.network_name.clone().filter(|n| !n.trim().is_empty()),
            userdata: spec.userdata.clone().filter(|u| !u.is_empty()),
            pod,
            vcpus: flavor.vcpus,
            ram_mib: flavor.ram_mib,
        })
    }

    /// The spec's image and flavor (422 naming the field when unknown); reads not made
    /// earlier in this request run both at once (two pooled connections: one round trip).
    async fn catalog(
        &mut self,
        spec: &ResourceSpec,
        f: &impl Fn(&str) -> String,
    ) -> Result<(DiskImage, Flavor), AppError> {
        let (pool, site, admin) = (self.ctx.pool, self.ctx.site, self.principal.is_admin);
        let (image, flavor) = tokio::join!(
            async {
                match self.images.get(&spec.disk_image_id) {
                    Some(known) => Ok(known.clone()),
                    None => catalog::get_image(pool, site, &spec.disk_image_id, admin).await,
                }
            },
            async {
                match self.flavors.get(&spec.flavor_id) {
                    Some(known) => Ok(known.clone()),
                    None => catalog::get_flavor(pool, site, &spec.flavor_id).await,
                }
            }
        );
        let unknown = |field: String| {
            move |e| match e {
                AppError::NotFound(m) => AppError::invalid(field, m),
                other => other,
            }
        };
        let image = image.map_err(unknown(f("disk_image_id")))?;
        let flavor = flavor.map_err(unknown(f("flavor_id")))?;
        self.images
            .insert(spec.disk_image_id.clone(), image.clone());
        self.flavors.insert(spec.flavor_id.clone(), flavor.clone());
        Ok((image, flavor))
    }

    /// The clouds.yaml summary of the user a VM is made for: 422 (`tokens`) when the request
    /// names no user or the user has uploaded none.
    async fn user_clouds(&mut self) -> Result<&CloudsYamlSummary, AppError> {
        if self.user_clouds.is_none() {
            let Some(user) = self.requested_by.filter(|u| !u.is_empty()) else {
                return Err(AppError::invalid(
                    "tokens",
                    "a VM is created with the requesting user's clouds.yaml: send your user token in `tokens[0].jwt`",
                ));
            };
            let summary = match clouds::summary(self.ctx.pool, user).await {
                Err(AppError::NotFound(_)) => Err(AppError::invalid(
                    "tokens",
                    format!("user `{user}` has not uploaded a clouds.yaml yet (dashboard page Clouds, or PUT /clouds-yaml)"),
                )),
                other => other,
            }?;
            self.user_clouds = Some(summary);
        }
        self.user_clouds
            .as_ref()
            .ok_or_else(|| internal(anyhow::anyhow!("clouds summary not kept")))
    }
}

/// A Pod's name must be a DNS label; a VM's at most 63 characters.
fn check_name(flavor_type: FlavorType, name: &str, field: &str) -> Result<(), AppError> {
    match flavor_type {
        FlavorType::K8s if !is_dns_label(name) => Err(AppError::invalid(
            field,
            "a pod name must be a DNS label: lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters",
        )),
        FlavorType::Vm if name.len() > 63 => Err(AppError::invalid(field, "at most 63 characters")),
        _ => Ok(()),
    }
}

/// Sizes of `userdata` and `network_name`.
fn check_texts(spec: &ResourceSpec, f: &impl Fn(&str) -> String) -> Result<(), AppError> {
    if spec
        .userdata
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USERDATA_BYTES)
    {
        return Err(AppError::invalid(
            f("userdata"),
            format!("at most {MAX_USERDATA_BYTES} bytes"),
        ));
    }
    if let Some(network) = &spec.network_name {
        if network.len() > 255 {
            return Err(AppError::invalid(
                f("network_name"),
                "at most 255 characters",
            ));
        }
        if let Some(why) = unsafe_character(network) {
            return Err(AppError::invalid(f("network_name"), why));
        }
    }
    Ok(())
}

/// 422 (`image_field`) when the image's cloud (`cluster_id`; `default` = the user's default)
/// is not in the user's clouds.yaml.
fn check_image_cloud(
    clouds: &CloudsYamlSummary,
    image: &DiskImage,
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
/// are written already claimed by it and handed over in memory ([`LocalWorker`]); the others
/// are queued and the workers notified. The answer is built from the inserted rows (no
/// re-read).
pub async fn create_resources(
    ctx: &Resources<'_>,
    principal: &Principal,
    request: &CreateResourcesRequest,
) -> Result<CreateResourcesResponse, AppError> {
    let experiment_id = crate::ssr::access::experiment_to_write(principal)?;
    // A retry of a request already stored gets that request's answer, before any check that
    // might now decide otherwise (an image hidden since, the quota used by the first try).
    let client = request.request_id.map(|id| (id, body_digest(request)));
    if let Some((id, digest)) = &client {
        if let Some(answer) = replay(ctx, experiment_id, *id, digest).await? {
            return Ok(answer);
        }
    }
    check_request(principal, request)?;
    let requested_by = requesting_user(ctx.auth, principal, request).await?;
    let planned = Planner::new(ctx, principal, requested_by.as_deref())
        .plan(&request.resources)
        .await?;
    // One transaction under the experiment's lock: the quota check sees every resource
    // stored before, and the next request of this experiment sees these.
    let mut tx = ctx.pool.begin().await?;
    let used = usage(&mut tx, experiment_id).await?;
    if let Some((id, digest)) = &client {
        // A twin sent at the same time may have been stored while this one was checked; the
        // experiment's lock, now held, orders the two.
        if request_known(&mut tx, experiment_id, *id).await? {
            tx.rollback().await?;
            if let Some(answer) = replay(ctx, experiment_id, *id, digest).await? {
                return Ok(answer);
            }
            return Err(internal(anyhow::anyhow!(
                "a stored request vanished during its replay"
            )));
        }
    }
    check_quota(ctx.quota, &used, &planned)?;
    // This process's worker takes what it has room for straight from here (no claim, no
    // re-read), within the experiment's share of the slots; the rest is queued.
    let room = ctx
        .slots_per_experiment
        .saturating_sub(usize::try_from(used.running).unwrap_or(usize::MAX));
    let reserved = ctx.local.reserve(planned.len().min(room));
    let owner = Owner {
        experiment_id,
        project_id: principal.project_id.as_deref().unwrap_or_default(),
        requested_by: requested_by.as_deref(),
    };
    let rows = store(
        &mut tx,
        &owner,
        request,
        client.as_ref(),
        &planned,
        &reserved,
    )
    .await?;
    audit::record_many(
        &mut tx,
        &Actor::of(principal),
        created_events(ctx.site, &rows),
    )
    .await?;
    tx.commit().await?;
    if rows.len() > reserved.len() {
        queue::notify_queued(ctx.pool).await;
        ctx.local.wake();
    }
    ctx.list_cache.invalidate();
    Ok(hand_over(ctx.site, rows, reserved))
}

/// One `resource.create` audit entry per stored resource.
fn created_events(site: &str, rows: &[InsertedRow]) -> Vec<Event> {
    rows.iter()
        .map(|r| {
            Event::new("resource.create")
                .object(crate::ids::format_id(IdKind::Resource, site, r.id))
                .detail(serde_json::json!({
                    "friendly_name": r.friendly_name,
                    "flavor_type": r.flavor_type.as_str(),
                    "disk_image_id": crate::ids::format_id(IdKind::Image, site, r.disk_image_id),
                    "flavor_id": crate::ids::format_id(IdKind::Flavor, site, r.flavor_id),
                    "expires_at": r.expires_at,
                    "task_id": crate::ids::format_id(IdKind::Task, site, r.task_id),
                }))
        })
        .collect()
}

/// SHA-256 of the request as it matters for a retry: the JSON of its fields without
/// `request_id` and `tokens` (a client may renew its user token between two tries). Fields
/// are serialised in declaration order and times as RFC 3339 UTC, so the same request written
/// with other whitespace, key order or time zone offset has the same digest.
pub fn body_digest(request: &CreateResourcesRequest) -> Vec<u8> {
    use sha2::Digest as _;
    let canonical = CreateResourcesRequest {
        tokens: Vec::new(),
        request_id: None,
        ..request.clone()
    };
    let json = serde_json::to_vec(&canonical).unwrap_or_default();
    sha2::Sha256::digest(json).to_vec()
}

/// Whether `experiment_id` already stored a request with the client id `client_id`.
async fn request_known(
    tx: &mut sqlx::PgConnection,
    experiment_id: &str,
    client_id: Uuid,
) -> Result<bool, AppError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM resource_requests
                          WHERE experiment_id = $1 AND client_request_id = $2) AS "known!""#,
        experiment_id,
        client_id
    )
    .fetch_one(&mut *tx)
    .await?)
}

/// The answer to a request `experiment_id` already made with the client id `client_id`:
/// its resources (in request order) and each one's create task, as they are now. `None` when
/// no such request is stored; 409 naming `request_id` when it was stored with another body
/// (`digest`, see [`body_digest`]).
async fn replay(
    ctx: &Resources<'_>,
    experiment_id: &str,
    client_id: Uuid,
    digest: &[u8],
) -> Result<Option<CreateResourcesResponse>, AppError> {
    let Some(stored) = sqlx::query!(
        r#"SELECT id, body_sha256 FROM resource_requests
           WHERE experiment_id = $1 AND client_request_id = $2"#,
        experiment_id,
        client_id
    )
    .fetch_optional(ctx.pool)
    .await?
    else {
        return Ok(None);
    };
    if stored.body_sha256.as_deref() != Some(digest) {
        return Err(AppError::Conflict {
            field: "request_id".into(),
            message: format!(
                "request_id `{client_id}` was already used by this experiment for a different request; \
                 send a new request_id for a new request"
            ),
        });
    }
    let filter = ResourceFilter {
        request_id: Some(stored.id),
        experiment_id: Some(experiment_id.to_string()),
        include_deleted: true,
        limit: i64::try_from(MAX_RESOURCES_PER_REQUEST).unwrap_or(i64::MAX),
        ..ResourceFilter::default()
    };
    let resources = select_resources(ctx.pool, ctx.site, &filter).await?;
    let scope = Scope {
        experiment_id: Some(experiment_id.to_string()),
        requested_by: None,
    };
    let creates = TaskFilter {
        creates_of_request: Some(stored.id),
        ..TaskFilter::default()
    };
    let tasks = select_tasks(ctx.pool, ctx.site, &scope, &creates).await?;
    Ok(Some(CreateResourcesResponse { resources, tasks }))
}

/// What an experiment holds now: live resources (not deleted, expired or failed), the sums
/// of their flavors' vCPUs and RAM (MiB), and its running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    resources: i64,
    vcpus: i64,
    ram_mib: i64,
    running: i64,
}

/// [`Usage`] of `experiment_id`, after taking its transaction-scoped advisory lock (held to
/// the end of `tx`, so two requests of one experiment are checked one after the other).
async fn usage(tx: &mut sqlx::PgConnection, experiment_id: &str) -> Result<Usage, AppError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('experiment:' || $1, 0))",
        experiment_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(sqlx::query_as!(
        Usage,
        r#"SELECT count(*) AS "resources!",
                  COALESCE(sum(f.vcpus), 0)::bigint AS "vcpus!",
                  COALESCE(sum(f.ram_mib), 0)::bigint AS "ram_mib!",
                  (SELECT count(*) FROM tasks t JOIN resources x ON x.id = t.resource_id
                   WHERE x.experiment_id = $1 AND t.status = 'running') AS "running!"
           FROM resources r JOIN flavors f ON f.id = r.flavor_id
           WHERE r.experiment_id = $1
             AND r.allocation_state NOT IN ('deleted', 'expired', 'failed')"#,
        experiment_id
    )
    .fetch_one(&mut *tx)
    .await?)
}

/// 422 on `resources` when the request would take the experiment past a cap of `quota`,
/// naming the cap, what the experiment holds and what the request adds.
fn check_quota(quota: Quota, used: &Usage, planned: &[Planned]) -> Result<(), AppError> {
    let add_vcpus: i64 = planned.iter().map(|p| i64::from(p.vcpus)).sum();
    let add_ram: i64 = planned.iter().map(|p| i64::from(p.ram_mib)).sum();
    let caps = [
        (
            quota.resources,
            used.resources,
            planned.len() as i64,
            "live resources",
            "QUOTA_RESOURCES_PER_EXPERIMENT",
        ),
        (
            quota.vcpus,
            used.vcpus,
            add_vcpus,
            "vCPUs",
            "QUOTA_VCPUS_PER_EXPERIMENT",
        ),
        (
            quota.ram_mib,
            used.ram_mib,
            add_ram,
            "MiB of RAM",
            "QUOTA_RAM_MIB_PER_EXPERIMENT",
        ),
    ];
    for (limit, now, add, what, setting) in caps {
        if let Some(limit) = limit.filter(|&l| now + add > i64::from(l)) {
            return Err(AppError::invalid(
                "resources",
                format!(
                    "over this experiment's quota: it holds {now} {what} and the request adds {add}, the limit is {limit} ({setting}); delete resources first or ask the site operator"
                ),
            ));
        }
    }
    Ok(())
}

/// Whose new resources these are.
struct Owner<'a> {
    experiment_id: &'a str,
    project_id: &'a str,
    requested_by: Option<&'a str>,
}

/// A resource and its create task as inserted, with what the answer and the worker need
/// joined from the catalog.
struct InsertedRow {
    id: Uuid,
    experiment_id: String,
    project_id: String,
    requested_by: Option<String>,
    friendly_name: String,
    disk_image_id: Uuid,
    flavor_id: Uuid,
    flavor_type: FlavorType,
    network_name: Option<String>,
    userdata: Option<String>,
    ssh_authorized_keys: Vec<String>,
    expires_at: DateTime<Utc>,
    allocation_state: AllocationState,
    operational_state: OperationalState,
    status_message: String,
    backend_details: Json<BackendDetails>,
    pod_options: Json<PodOptions>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    location: String,
    cluster_id: String,
    default_username: String,
    image_name: String,
    image_tags: Vec<String>,
    vcpus: i32,
    ram_mib: i32,
    disk_mb: i32,
    flavor_name: String,
    flavor_source_id: Option<String>,
    task_id: Uuid,
    task_kind: TaskKind,
    task_status: TaskStatus,
    task_completed: i16,
    task_message: String,
    task_attempts: i32,
    task_max_attempts: i32,
    task_created_at: DateTime<Utc>,
    task_updated_at: DateTime<Utc>,
    task_started_at: Option<DateTime<Utc>>,
    task_finished_at: Option<DateTime<Utc>>,
}

/// The request (its SSH keys, stored once), every planned resource naming it and each one's
/// create task in one statement (one round trip): the first `reserved.len()` tasks already claimed by this process's worker with
/// a fresh lease, the others queued. A live name already taken is a 409 naming the field.
async fn store(
    tx: &mut sqlx::PgConnection,
    owner: &Owner<'_>,
    request: &CreateResourcesRequest,
    client: Option<&(Uuid, Vec<u8>)>,
    planned: &[Planned],
    reserved: &[Reserved],
) -> Result<Vec<InsertedRow>, AppError> {
    let ids: Vec<Uuid> = planned.iter().map(|p| p.id).collect();
    let names: Vec<String> = planned.iter().map(|p| p.friendly_name.clone()).collect();
    let images: Vec<Uuid> = planned.iter().map(|p| p.disk_image_id).collect();
    let flavors: Vec<Uuid> = planned.iter().map(|p| p.flavor_id).collect();
    let types: Vec<String> = planned
        .iter()
        .map(|p| p.flavor_type.as_str().into())
        .collect();
    let networks: Vec<Option<String>> = planned.iter().map(|p| p.network_name.clone()).collect();
    let userdata: Vec<Option<String>> = planned.iter().map(|p| p.userdata.clone()).collect();
    let pod_options: Vec<String> = planned
        .iter()
        .map(|p| serde_json::to_string(&p.pod).map_err(internal))
        .collect::<Result<_, _>>()?;
    let handed: Vec<bool> = (0..planned.len()).map(|i| i < reserved.len()).collect();
    let task_ids: Vec<Uuid> = planned.iter().map(|_| Uuid::now_v7()).collect();
    let worker_id = reserved.first().map(|r| r.worker_id().to_string());
    sqlx::query_as!(
        InsertedRow,
        r#"WITH q AS (
               INSERT INTO resource_requests (id, experiment_id, ssh_authorized_keys,
                   client_request_id, body_sha256)
               VALUES ($17, $2, $5, $18, $19)
               RETURNING id, ssh_authorized_keys),
           r AS (
               INSERT INTO resources (id, experiment_id, project_id, requested_by, friendly_name,
                   disk_image_id, flavor_id, flavor_type, network_name, userdata, pod_options,
                   request_id, expires_at, allocation_state, status_message)
               SELECT u.id, $2, $3, $4, u.friendly_name, u.disk_image_id, u.flavor_id,
                      u.flavor_type, u.network_name, u.userdata, u.pod_options::jsonb,
                      (SELECT id FROM q), $6,
                      CASE WHEN u.handed THEN 'provisioning' ELSE 'requested' END,
                      CASE WHEN u.handed THEN 'provisioning' ELSE 'waiting for a worker' END
               FROM UNNEST($1::uuid[], $7::text[], $8::uuid[], $9::uuid[], $10::text[],
                           $11::text[], $12::text[], $13::bool[], $20::text[])
                    AS u(id, friendly_name, disk_image_id, flavor_id, flavor_type, network_name,
                         userdata, handed, pod_options)
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
                  r.flavor_type AS "flavor_type!: FlavorType", r.network_name, r.userdata,
                  q.ssh_authorized_keys AS "ssh_authorized_keys!",
                  r.expires_at AS "expires_at!: DateTime<Utc>",
                  r.allocation_state AS "allocation_state!: AllocationState",
                  r.operational_state AS "operational_state!: OperationalState",
                  r.status_message AS "status_message!",
                  r.backend_details AS "backend_details!: Json<BackendDetails>",
                  r.pod_options AS "pod_options!: Json<PodOptions>",
                  r.created_at AS "created_at!: DateTime<Utc>",
                  r.updated_at AS "updated_at!: DateTime<Utc>",
                  i.location, i.cluster_id, i.default_username, i.friendly_name AS image_name,
                  i.tags AS image_tags, f.vcpus, f.ram_mib, f.disk_mb, f.friendly_name AS flavor_name,
                  f.source_id AS flavor_source_id,
                  t.id AS "task_id!", t.kind AS "task_kind!: TaskKind",
                  t.status AS "task_status!: TaskStatus",
                  t.completed AS "task_completed!", t.message AS "task_message!",
                  t.attempts AS "task_attempts!", t.max_attempts AS "task_max_attempts!",
                  t.created_at AS "task_created_at!: DateTime<Utc>",
                  t.updated_at AS "task_updated_at!: DateTime<Utc>",
                  t.started_at AS "task_started_at: DateTime<Utc>",
                  t.finished_at AS "task_finished_at: DateTime<Utc>"
           FROM r JOIN t ON t.resource_id = r.id
                  JOIN q ON q.id = r.request_id
                  JOIN disk_images i ON i.id = r.disk_image_id
                  JOIN flavors f ON f.id = r.flavor_id
           ORDER BY array_position($1::uuid[], r.id)"#,
        &ids,
        owner.experiment_id,
        owner.project_id,
        owner.requested_by,
        &request.ssh_authorized_keys,
        request.expires_at as _,
        &names,
        &images,
        &flavors,
        &types,
        &networks as &[Option<String>],
        &userdata as &[Option<String>],
        &handed,
        &task_ids,
        worker_id,
        queue::LEASE.as_secs_f64(),
        Uuid::now_v7(),
        client.map(|c| c.0),
        client.map(|c| c.1.as_slice()),
        &pod_options
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| name_conflict(e, owner.experiment_id, planned))
}

impl InsertedRow {
    /// The row as the answer shows it (resource and task) and as the worker needs it.
    fn split(self, site: &str) -> (Resource, Task, RecordRow) {
        let task = TaskRow {
            id: self.task_id,
            resource_id: self.id,
            kind: self.task_kind,
            status: self.task_status,
            completed: self.task_completed,
            message: self.task_message,
            attempts: self.task_attempts,
            created_at: self.task_created_at,
            updated_at: self.task_updated_at,
            started_at: self.task_started_at,
            finished_at: self.task_finished_at,
        };
        let record = RecordRow {
            id: self.id,
            experiment_id: self.experiment_id.clone(),
            project_id: self.project_id.clone(),
            requested_by: self.requested_by.clone(),
            friendly_name: self.friendly_name.clone(),
            flavor_type: self.flavor_type,
            allocation_state: self.allocation_state,
            network_name: self.network_name.clone(),
            userdata: self.userdata,
            ssh_authorized_keys: self.ssh_authorized_keys.clone(),
            backend_details: self.backend_details.clone(),
            pod_options: self.pod_options.clone(),
            location: self.location,
            cluster_id: self.cluster_id,
            default_username: self.default_username.clone(),
            image_name: self.image_name,
            image_tags: self.image_tags,
            vcpus: self.vcpus,
            ram_mib: self.ram_mib,
            disk_mb: self.disk_mb,
            flavor_name: self.flavor_name,
            flavor_source_id: self.flavor_source_id,
        };
        let resource = ResourceRow {
            id: self.id,
            experiment_id: self.experiment_id,
            project_id: self.project_id,
            requested_by: self.requested_by,
            friendly_name: self.friendly_name,
            disk_image_id: self.disk_image_id,
            flavor_id: self.flavor_id,
            flavor_type: self.flavor_type,
            network_name: self.network_name,
            ssh_authorized_keys: self.ssh_authorized_keys,
            expires_at: self.expires_at,
            allocation_state: self.allocation_state,
            operational_state: self.operational_state,
            status_message: self.status_message,
            backend_details: self.backend_details,
            pod_options: self.pod_options,
            created_at: self.created_at,
            updated_at: self.updated_at,
            default_username: self.default_username,
            last_task_id: Some(self.task_id),
        };
        (resource.into_wire(site), task.into_wire(site), record)
    }
}

/// Starts the tasks claimed for this process's worker and builds the 202 answer.
fn hand_over(
    site: &str,
    rows: Vec<InsertedRow>,
    reserved: Vec<Reserved>,
) -> CreateResourcesResponse {
    let mut resources = Vec::with_capacity(rows.len());
    let mut tasks = Vec::with_capacity(rows.len());
    let mut reserved = reserved.into_iter();
    for row in rows {
        let (task_id, max_attempts) = (row.task_id, row.task_max_attempts);
        let handed = row.task_status == TaskStatus::Running;
        let (resource, task, record) = row.split(site);
        if let Some(slot) = handed.then(|| reserved.next()).flatten() {
            slot.start(
                task_id,
                TaskKind::Create,
                max_attempts,
                record.into_record(site),
            );
        }
        resources.push(resource);
        tasks.push(task);
    }
    CreateResourcesResponse { resources, tasks }
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

/// `GET /resources`: the principal's resources, oldest first, one page.
pub async fn list_resources(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    query: &ListQuery,
) -> Result<Vec<Resource>, AppError> {
    // The page is checked first: a bad one is a 400 whatever the filter matches.
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
    let scope = crate::ssr::access::scope(principal);
    if let (Some(own), Some(asked)) = (&scope.experiment_id, &query.experiment_id) {
        if own != asked {
            return Ok(Vec::new());
        }
    }
    let filter = ResourceFilter {
        id: None,
        experiment_id: scope.experiment_id.or(query.experiment_id.clone()),
        requested_by: scope.requested_by,
        project_id: query.project.clone(),
        request_id: None,
        include_deleted: query.include_deleted,
        limit,
        offset,
    };
    Ok(select_resources(pool, site, &filter).await?)
}

/// `GET /resources/{id}`.
pub async fn get_resource(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
) -> Result<Resource, AppError> {
    let uuid = path_id(IdKind::Resource, site, id)?;
    fetch_resource(pool, site, &crate::ssr::access::scope(principal), uuid).await
}

/// `DELETE /resources/{id}`: marks the resource `deleting` and enqueues a delete task.
/// Idempotent: a resource already being deleted (or gone) answers with its delete task.
pub async fn delete_resource(
    ctx: &Resources<'_>,
    principal: &Principal,
    id: &str,
) -> Result<Task, AppError> {
    crate::ssr::access::experiment_to_write(principal)?;
    let uuid = path_id(IdKind::Resource, ctx.site, id)?;
    let scope = crate::ssr::access::scope(principal);
    fetch_resource(ctx.pool, ctx.site, &scope, uuid).await?;
    let mut tx = ctx.pool.begin().await?;
    let marked = sqlx::query!(
        r#"UPDATE resources SET allocation_state = 'deleting',
               status_message = 'deletion requested'
           WHERE id = $1 AND allocation_state NOT IN ('deleting', 'deleted', 'expired')"#,
        uuid
    )
    .execute(&mut *tx)
    .await?;
    let existing = if marked.rows_affected() == 1 {
        None
    } else {
        sqlx::query_scalar!(
            r#"SELECT id FROM tasks WHERE resource_id = $1 AND kind = 'delete'
               ORDER BY created_at DESC LIMIT 1"#,
            uuid
        )
        .fetch_optional(&mut *tx)
        .await?
    };
    // A resource that expired without a delete task of its own gets one, so its backend
    // object goes.
    let task_id = match existing {
        Some(task) => task,
        None => queue::enqueue(&mut tx, uuid, TaskKind::Delete).await?,
    };
    let object = crate::ids::format_id(IdKind::Resource, ctx.site, uuid);
    let event = Event::new("resource.delete")
        .object(object)
        .detail(serde_json::json!({
            "task_id": crate::ids::format_id(IdKind::Task, ctx.site, task_id),
            "already_deleting": marked.rows_affected() == 0,
        }));
    audit::commit(tx, &Actor::of(principal), event).await?;
    ctx.local.wake();
    ctx.list_cache.invalidate();
    fetch_task(ctx.pool, ctx.site, &scope, task_id).await
}

/// `PATCH /resources/{id}`: moves `expires_at` later. 422 naming `expires_at` when it is in
/// the past, earlier than the current expiry, after the experiment's expiry or more than
/// [`MAX_LIFETIME_DAYS`] ahead; 404 for a resource the principal does not see; 409 for one
/// that is no longer live.
pub async fn extend_resource(
    ctx: &Resources<'_>,
    principal: &Principal,
    id: &str,
    patch: &ResourcePatch,
) -> Result<Resource, AppError> {
    crate::ssr::access::experiment_to_write(principal)?;
    let uuid = path_id(IdKind::Resource, ctx.site, id)?;
    let scope = crate::ssr::access::scope(principal);
    let current = fetch_resource(ctx.pool, ctx.site, &scope, uuid).await?;
    check_expiry("expires_at", patch.expires_at, principal)?;
    if patch.expires_at < current.expires_at {
        return Err(AppError::invalid(
            "expires_at",
            format!(
                "must not be earlier than the resource's current expiry ({}); delete the resource to end it sooner",
                current
                    .expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    let mut tx = ctx.pool.begin().await?;
    let updated = sqlx::query!(
        r#"UPDATE resources SET expires_at = $2
           WHERE id = $1 AND allocation_state IN ('requested', 'provisioning', 'provisioned')"#,
        uuid,
        patch.expires_at as _
    )
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(AppError::Conflict {
            field: "expires_at".into(),
            message: "only live resources can be extended".into(),
        });
    }
    let object = crate::ids::format_id(IdKind::Resource, ctx.site, uuid);
    let event = Event::new("resource.extend")
        .object(object)
        .detail(serde_json::json!({
            "from": current.expires_at,
            "to": patch.expires_at,
        }));
    audit::commit(tx, &Actor::of(principal), event).await?;
    ctx.list_cache.invalidate();
    fetch_resource(ctx.pool, ctx.site, &scope, uuid).await
}

/// `GET /resources/{id}/console?lines=N`: the tail of a VM's console (Nova
/// `os-getConsoleOutput`, Compute API "Show Console Output"), read with the requesting
/// user's clouds.yaml. 409 for Pods and for VMs without a server; 502 when Nova refuses.
pub async fn console_log(
    ctx: &Resources<'_>,
    principal: &Principal,
    id: &str,
    lines: Option<u32>,
) -> Result<ConsoleLog, AppError> {
    let lines = lines.unwrap_or(200);
    if !(1..=MAX_CONSOLE_LINES).contains(&lines) {
        return Err(AppError::invalid(
            "lines",
            format!("must be between 1 and {MAX_CONSOLE_LINES}"),
        ));
    }
    let uuid = path_id(IdKind::Resource, ctx.site, id)?;
    let resource = fetch_resource(
        ctx.pool,
        ctx.site,
        &crate::ssr::access::scope(principal),
        uuid,
    )
    .await?;
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
    let backend = ctx
        .backends
        .for_type(FlavorType::Vm)
        .ok_or_else(|| AppError::Unavailable("this site has no OpenStack backend".into()))?;
    let record = load_record(ctx.pool, ctx.site, uuid).await?;
    let output = backend
        .console_log(&record, lines)
        .await
        .map_err(|e| AppError::Upstream(e.message))?;
    Ok(ConsoleLog {
        resource_id: resource.id,
        output,
        lines,
    })
}

/// Most lines `tail_lines` may ask for.
pub const MAX_LOG_TAIL_LINES: i64 = 100_000;

/// The log of a Pod resource's container (`GET /resources/{id}/logs`), whole or followed.
/// Errors: 404 unknown or not the caller's; 409 not a Pod, no Pod yet or any more, or the
/// container has not started; 422 `container`, `tail_lines` or `since_seconds` wrong; 502 the
/// Kubernetes API refused; 503 it does not answer.
pub async fn pod_logs(
    ctx: &Resources<'_>,
    principal: &Principal,
    id: &str,
    query: &LogQuery,
) -> Result<LogOutput, AppError> {
    if query
        .tail_lines
        .is_some_and(|n| !(1..=MAX_LOG_TAIL_LINES).contains(&n))
    {
        return Err(AppError::invalid(
            "tail_lines",
            format!("must be between 1 and {MAX_LOG_TAIL_LINES}"),
        ));
    }
    if query.since_seconds.is_some_and(|s| s < 1) {
        return Err(AppError::invalid("since_seconds", "must be at least 1"));
    }
    if let Some(name) = &query.container {
        if !is_dns_label(name) {
            return Err(AppError::invalid(
                "container",
                "a container name: lowercase letters, digits and '-', at most 63",
            ));
        }
    }
    let uuid = path_id(IdKind::Resource, ctx.site, id)?;
    let resource = fetch_resource(
        ctx.pool,
        ctx.site,
        &crate::ssr::access::scope(principal),
        uuid,
    )
    .await?;
    let conflict = |message: String| AppError::Conflict {
        field: "id".into(),
        message,
    };
    if resource.flavor_type != FlavorType::K8s {
        return Err(conflict(
            "only Pods have logs; a VM's boot log is GET /resources/{id}/console".into(),
        ));
    }
    if resource.details.pod_name.is_none() {
        return Err(conflict(
            "the resource has no Pod yet (or any more): no log to read".into(),
        ));
    }
    let backend = ctx
        .backends
        .for_type(FlavorType::K8s)
        .ok_or_else(|| AppError::Unavailable("this site has no Kubernetes backend".into()))?;
    let record = load_record(ctx.pool, ctx.site, uuid).await?;
    backend.logs(&record, query).await.map_err(|e| match e {
        LogsError::Container(message) => AppError::invalid("container", message),
        LogsError::NotAvailable(message) => conflict(message),
        LogsError::Backend(e) if e.unreachable.is_some() => AppError::Unavailable(e.message),
        LogsError::Backend(e) => AppError::Upstream(e.message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys() {
        assert!(check_ssh_keys(&["ssh-ed25519 AAAAC3Nza me@host".into()]).is_ok());
        assert!(check_ssh_keys(&["ecdsa-sha2-nistp256 AAAA".into()]).is_ok());
        let e = check_ssh_keys(&["ssh-ed25519 AAAA".into(), "hello".into()]).expect_err("bad");
        assert_eq!(e.field(), Some("ssh_authorized_keys[1]"));
    }
}
