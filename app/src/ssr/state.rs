//! `AppState`: the one bundle of shared services handed to axum handlers, server functions
//! and the worker.

use crate::ssr::auth::Authenticator;
use crate::ssr::backend::Backends;
use crate::ssr::clouds::CloudsKeys;
use crate::ssr::config::Config;
use crate::ssr::openstack::OpenStackClient;
use crate::ssr::secrets::SecretBox;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use sqlx::PgPool;
use std::sync::Arc;

/// Shared services; cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub secrets: SecretBox,
    pub backends: Arc<Backends>,
    /// Keys sealing users' clouds.yaml at rest.
    pub clouds_keys: CloudsKeys,
    /// Keystone/Nova/Glance/Neutron client with its token cache (shared by the VM backend,
    /// connection tests and catalog import).
    pub openstack: Arc<OpenStackClient>,
    /// Serialized `GET /resources` pages (see `list_cache`).
    pub list_cache: Arc<crate::ssr::list_cache::ListCache>,
    /// Connections for the worker's own bookkeeping (claims, heartbeats, progress), opened
    /// with `synchronous_commit = off`: see [`crate::ssr::tasks::bookkeeping_pool`].
    #[from_ref(skip)]
    pub bookkeeping: PgPool,
    /// Wakes this process's worker right after a request queued a task (other processes'
    /// workers hear the `pg_notify` sent in the same transaction).
    #[from_ref(skip)]
    pub task_wake: Arc<tokio::sync::Notify>,
    /// This process's worker, when it runs one: requests hand new tasks straight to it.
    #[from_ref(skip)]
    pub local_worker: Arc<crate::ssr::tasks::LocalWorker>,
}

impl AppState {
    /// The site part of typed ids.
    pub fn site(&self) -> &str {
        &self.config.site_id
    }

    /// Call after committing a transaction that queued tasks: this process's worker claims
    /// them at once instead of waiting for the notification's round trip through Postgres.
    pub fn tasks_queued(&self) {
        self.task_wake.notify_one();
    }
}

/// The `AppState` inside a server function (provided as context by the router).
pub fn app_state() -> Result<AppState, crate::error::AppError> {
    leptos::prelude::use_context::<AppState>()
        .ok_or_else(|| crate::ssr::internal(anyhow::anyhow!("AppState missing from context")))
}
