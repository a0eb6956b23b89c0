//! `AppState`: the one bundle of shared services, seen only by the entry points (REST
//! handlers, server functions, the worker's start), which hand each service exactly what it
//! uses.

use crate::ssr::auth::Authenticator;
use crate::ssr::backend::Backends;
use crate::ssr::clouds::CloudsKeys;
use crate::ssr::config::Config;
use crate::ssr::list_cache::ListCache;
use crate::ssr::oidc::Oidc;
use crate::ssr::openstack::OpenStackClient;
use crate::ssr::queue::LocalWorker;
use crate::ssr::resources::Resources;
use crate::ssr::worker::Worker;
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
    pub backends: Backends,
    /// Keys sealing users' clouds.yaml at rest.
    pub clouds_keys: CloudsKeys,
    /// Keystone/Nova/Glance/Neutron client with its token cache (shared by the VM backend,
    /// connection tests and catalog import).
    pub openstack: Arc<OpenStackClient>,
    /// Serialized `GET /resources` pages (see `list_cache`).
    pub list_cache: Arc<ListCache>,
    /// Connections for the worker's own bookkeeping (claims, heartbeats, progress), opened
    /// with `synchronous_commit = off`: see [`crate::ssr::queue::bookkeeping_pool`].
    #[from_ref(skip)]
    pub bookkeeping: PgPool,
    /// This process's worker, when it runs one: requests hand new tasks straight to it.
    #[from_ref(skip)]
    pub local_worker: Arc<LocalWorker>,
    /// "Sign in with SLICES", when configured (`OIDC_CLIENT_ID`).
    #[from_ref(skip)]
    pub oidc: Option<Arc<Oidc>>,
}

impl AppState {
    /// The site part of typed ids.
    pub fn site(&self) -> &str {
        &self.config.site_id
    }

    /// What the resource service uses.
    pub fn resources(&self) -> Resources<'_> {
        Resources {
            pool: &self.pool,
            site: &self.config.site_id,
            auth: &self.auth,
            backends: &self.backends,
            list_cache: &self.list_cache,
            local: &self.local_worker,
            quota: self.config.quota,
            slots_per_experiment: self.config.worker_slots_per_experiment,
        }
    }

    /// What the task worker uses.
    pub fn worker(&self) -> Worker {
        Worker {
            pool: self.pool.clone(),
            bookkeeping: self.bookkeeping.clone(),
            site: self.config.site_id.clone(),
            backends: self.backends.clone(),
            list_cache: self.list_cache.clone(),
            local: self.local_worker.clone(),
            concurrency: self.config.worker_concurrency,
            slots_per_experiment: self.config.worker_slots_per_experiment,
            outage_budget: self.config.outage_budget,
            orphan_grace: self.config.orphan_grace,
            vm_reconcile_every: self.config.vm_reconcile_every,
            audit_retention_days: self.config.audit_retention_days,
        }
    }
}

/// The `AppState` inside a server function (provided as context by the router).
pub fn app_state() -> Result<AppState, crate::error::AppError> {
    leptos::prelude::use_context::<AppState>()
        .ok_or_else(|| crate::ssr::internal(anyhow::anyhow!("AppState missing from context")))
}
