//! Server-only code (feature `ssr`): configuration, authentication, the database services,
//! the task worker, the compute backends and the REST API. The browser build never sees it.
//!
//! The modules form layers that import only downwards (README, "Architecture"; checked by
//! `app/tests/layers.rs`):
//!
//! 1. pure types and parsing, no I/O: [`cloud_config`], [`names`], [`secrets`], [`config`],
//!    [`egress`] (the outbound address rule);
//! 2. the ports: [`backend`] (`ComputeBackend`, `Progress`, `CloudsSource`, their errors);
//! 3. the adapters: [`backend::kubernetes`], [`backend::pod_feed`], [`backend::openstack`],
//!    [`openstack`] (the OpenStack REST client), [`auth`] (JWKS), [`list_cache`], [`rows`],
//!    [`queue`], [`audit`] and [`singleton`] (Postgres), [`oidc`] (the OpenID provider),
//!    [`metrics`] (Prometheus), [`access`] (who may do what: the one place that decides);
//! 4. the services, taking exactly what they use: [`catalog`], [`catalog_import`],
//!    [`clouds`], [`resources`], [`tasks`], [`worker`], [`accounts`];
//! 5. the entry points, the only code that sees [`state::AppState`]: [`api`], [`server`],
//!    [`state`], [`session`], [`web_security`], [`rate_limits`], [`audit_http`], [`dashboard_routes`] (and the UI's server
//!    functions).

pub mod access;
pub mod accounts;
pub mod api;
pub mod audit;
pub mod audit_http;
pub mod auth;
pub mod backend;
pub mod catalog;
pub mod catalog_import;
pub mod cloud_config;
pub mod clouds;
pub mod config;
pub mod dashboard_routes;
pub mod egress;
pub mod list_cache;
pub mod metrics;
pub mod names;
pub mod oidc;
pub mod openstack;
pub mod queue;
pub mod rate_limits;
pub mod reconcile;
pub mod resources;
pub mod rows;
pub mod secrets;
pub mod server;
pub mod session;
pub mod singleton;
pub mod spec_files;
pub mod state;
pub mod tasks;
pub mod templates;
pub mod web_security;
pub mod worker;

use crate::error::AppError;

/// The migrations at the workspace root, embedded; shared by the server and the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrated {
    /// The schema is now this build's (migrations applied, or there was nothing to do).
    Current,
    /// The database holds every migration of this build and newer ones (a newer release ran
    /// `migrate`, and this one was rolled back to): left as it is. Migrations only add
    /// (README, "Operations"), so the previous release runs on the newer schema.
    Newer { applied: i64, this_build: i64 },
}

/// Applies this build's migrations ([`MIGRATOR`]), unless the database is ahead of it (a
/// rollback: [`Migrated::Newer`]; sqlx would refuse, naming the newer migrations as missing).
/// Errors: the database cannot be read, or a migration fails or was changed after it was
/// applied.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<Migrated, sqlx::migrate::MigrateError> {
    let this_build = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // Before the first run `_sqlx_migrations` does not exist: nothing applied, run them all.
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let newest = applied.iter().copied().max().unwrap_or(0);
    let ours_applied = MIGRATOR.iter().all(|m| applied.contains(&m.version));
    if newest > this_build && ours_applied {
        return Ok(Migrated::Newer {
            applied: newest,
            this_build,
        });
    }
    MIGRATOR.run(pool).await?;
    Ok(Migrated::Current)
}

/// Turns an unexpected error into an opaque 500: the chain is logged with a request id, and
/// only the id reaches the client.
pub fn internal(error: impl Into<anyhow::Error>) -> AppError {
    let error = error.into();
    let request_id = crate::ids::encode_suffix(uuid::Uuid::now_v7());
    tracing::error!(%request_id, error = format!("{error:#}"), "internal error");
    AppError::Internal { request_id }
}

/// Database errors: the database out of reach (no connection within the pool's acquire
/// timeout, a dropped or refused connection, e.g. while PostgreSQL restarts) is a 503 the
/// client may retry; anything else is an opaque 500 ([`internal`]).
impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        if database_unreachable(&e) {
            tracing::warn!(error = %e, "database unreachable");
            return AppError::Unavailable(
                "the database is not reachable at the moment; try again shortly".into(),
            );
        }
        internal(e)
    }
}

/// Whether `e` means the database could not be reached (rather than a query that failed):
/// pool timeouts, I/O and TLS failures, a closed pool, and the server's own shutdown and
/// connection errors (SQLSTATE class 08 "connection exception", 57P01-57P03 "operator
/// intervention": admin shutdown, crash shutdown, cannot connect now).
pub fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Parses a typed id from a URL path: malformed or of another type → 400, another site → 404.
pub fn path_id(kind: crate::ids::IdKind, site: &str, id: &str) -> Result<uuid::Uuid, AppError> {
    use crate::ids::IdError;
    crate::ids::parse_id(kind, site, id).map_err(|e| match e {
        IdError::OtherSite { .. } => AppError::NotFound(format!("{kind} `{id}` not found")),
        other => AppError::BadRequest(other.to_string()),
    })
}

/// Parses a typed id from a body field: any problem → 422 naming the field.
pub fn field_id(
    kind: crate::ids::IdKind,
    site: &str,
    field: &str,
    id: &str,
) -> Result<uuid::Uuid, AppError> {
    crate::ids::parse_id(kind, site, id).map_err(|e| AppError::invalid(field, e.to_string()))
}

/// `value` encoded for a URL query (`application/x-www-form-urlencoded`, WHATWG URL
/// standard), e.g. `^qkd vm$` → `%5Eqkd+vm%24`.
pub fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
