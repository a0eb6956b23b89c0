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
//!    [`openstack`] (the OpenStack REST client), [`auth`] (JWKS), [`list_cache`], [`rows`]
//!    and [`queue`] (Postgres);
//! 4. the services, taking exactly what they use: [`catalog`], [`catalog_import`],
//!    [`clouds`], [`resources`], [`tasks`], [`worker`], [`session`];
//! 5. the entry points, the only code that sees [`state::AppState`]: [`api`], [`server`],
//!    [`state`], [`session`], [`web_security`], [`rate_limits`] (and the UI's server
//!    functions).

pub mod api;
pub mod auth;
pub mod backend;
pub mod catalog;
pub mod catalog_import;
pub mod cloud_config;
pub mod clouds;
pub mod config;
pub mod egress;
pub mod list_cache;
pub mod names;
pub mod openstack;
pub mod queue;
pub mod rate_limits;
pub mod resources;
pub mod rows;
pub mod secrets;
pub mod server;
pub mod session;
pub mod state;
pub mod tasks;
pub mod web_security;
pub mod worker;

use crate::error::AppError;

/// The migrations at the workspace root, embedded; shared by the server and the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Turns an unexpected error into an opaque 500: the chain is logged with a request id, and
/// only the id reaches the client.
pub fn internal(error: impl Into<anyhow::Error>) -> AppError {
    let error = error.into();
    let request_id = crate::ids::encode_suffix(uuid::Uuid::now_v7());
    tracing::error!(%request_id, error = format!("{error:#}"), "internal error");
    AppError::Internal { request_id }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        internal(e)
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
