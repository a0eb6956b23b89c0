//! Assembly of the running service: the shared state and the HTTP router (dashboard, API,
//! docs, dev issuer), used by the binary and by the integration tests alike.

use crate::ssr::api;
use crate::ssr::auth::Authenticator;
use crate::ssr::backend::{kubernetes::KubernetesBackend, openstack::OpenStackBackend, Backends};
use crate::ssr::clouds::{CloudsKeys, DbClouds};
use crate::ssr::config::Config;
use crate::ssr::openstack::OpenStackClient;
use crate::ssr::queue::bookkeeping_pool;
use crate::ssr::rate_limits::{self, RateLimits};
use crate::ssr::secrets::SecretBox;
use crate::ssr::singleton;
use crate::ssr::state::AppState;
use crate::ssr::web_security::{self, SiteOrigin};
use crate::{shell, App};
use anyhow::Context as _;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use leptos::prelude::LeptosOptions;
use leptos_axum::{generate_route_list, LeptosRoutes};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_sqlx_store::PostgresStore;

/// Connects to `DATABASE_URL`.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&config.database_url)
        .await
        .context("cannot connect to DATABASE_URL")
}

/// Builds the shared state on a migrated pool: secret key, token verifier, backends
/// (Kubernetes from `KUBECONFIG` or in-cluster config; absent = not connected), and the demo
/// catalog when asked.
pub async fn assemble(
    config: Config,
    pool: PgPool,
    leptos_options: LeptosOptions,
) -> anyhow::Result<AppState> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("slices-blueprint/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let auth = Authenticator::new(config.auth.clone(), http)?;
    let mut backends = Backends::default();
    match KubernetesBackend::connect(&config.k8s_namespace_prefix, config.pod_ready_timeout).await {
        Ok(k) => backends.kubernetes = Some(Arc::new(k) as _),
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes is not connected: k8s flavors cannot be provisioned");
            backends.kubernetes_error = Some(format!("{e:#}"));
        }
    }
    let clouds_keys = clouds_keys(&config, &pool).await?;
    let openstack = Arc::new(OpenStackClient::new(config.egress.clone())?);
    backends.openstack = Some(Arc::new(OpenStackBackend::new(
        openstack.clone(),
        Arc::new(DbClouds {
            pool: pool.clone(),
            keys: clouds_keys.clone(),
        }),
        config.vm_ready_timeout,
    )) as _);
    if config.seed_demo_catalog
        && crate::ssr::catalog::seed_demo(&pool, &config.site_id)
            .await
            .map_err(|e| anyhow::anyhow!("seeding the demo catalog: {e}"))?
    {
        tracing::info!("seeded a demo image and flavor (SEED_DEMO_CATALOG)");
    }
    crate::ssr::templates::ensure_builtin(&pool)
        .await
        .context("writing the built-in templates")?;
    let bookkeeping = bookkeeping_pool(&pool);
    let oidc = match config.oidc.clone() {
        Some(oidc) => Some(Arc::new(
            crate::ssr::oidc::Oidc::new(oidc).context("building the OpenID Connect client")?,
        )),
        None => None,
    };
    Ok(AppState {
        oidc,
        leptos_options,
        bookkeeping,
        local_worker: Arc::default(),
        pool,
        config: Arc::new(config),
        auth: Arc::new(auth),
        backends,
        clouds_keys,
        openstack,
        list_cache: Arc::default(),
    })
}

/// The clouds.yaml keys: CLOUDS_ENCRYPTION_KEY (+ _PREVIOUS during a rotation), else the
/// key file CLOUDS_ENCRYPTION_KEY_FILE, created on first use. A missing key file while sealed
/// files are stored is an error (a new key would make them unreadable), not a new key.
pub async fn clouds_keys(config: &Config, pool: &PgPool) -> anyhow::Result<CloudsKeys> {
    let current = match &config.clouds_key {
        Some(key) => key.clone(),
        None => {
            let path = &config.clouds_key_file;
            if !path.exists() {
                let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_clouds")
                    .fetch_one(pool)
                    .await
                    .context("counting stored clouds.yaml files")?;
                if stored > 0 {
                    anyhow::bail!(
                        "CLOUDS_ENCRYPTION_KEY_FILE {} is missing, but {stored} clouds.yaml file(s) are stored sealed with it: restore the key file (README, \"Secrets and key rotation\"); a new key would make them unreadable",
                        path.display()
                    );
                }
            }
            SecretBox::load_or_create(path).context("CLOUDS_ENCRYPTION_KEY_FILE")?
        }
    };
    Ok(CloudsKeys {
        current,
        previous: config.clouds_key_previous.clone(),
    })
}

/// The whole HTTP surface. Sessions (PostgreSQL store, cookie `slices_session`: HttpOnly,
/// SameSite=Lax, Secure when PUBLIC_URL is https, ended after `SESSION_IDLE_SECS` of
/// inactivity; the absolute timeout is checked by `session`) cover the dashboard
/// only, which refuses cross-site state changes; the API is stateless bearer auth. Every
/// answer carries the security headers of `web_security`.
pub async fn router(state: &AppState) -> anyhow::Result<Router> {
    let store = PostgresStore::new(state.pool.clone());
    store
        .migrate()
        .await
        .context("creating the session table")?;
    tokio::spawn(delete_expired_sessions(state.pool.clone(), store.clone()));
    let sessions = SessionManagerLayer::new(store)
        .with_name("slices_session")
        .with_secure(state.config.public_url.starts_with("https://"))
        .with_same_site(tower_sessions::cookie::SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(
            tower_sessions::cookie::time::Duration::seconds(
                i64::try_from(state.config.sessions.idle.as_secs()).unwrap_or(43_200),
            ),
        ));
    crate::ssr::list_cache::spawn_listener(&state.pool, &state.list_cache);
    crate::ssr::metrics::install();
    let options = state.leptos_options.clone();
    let routes = generate_route_list(App);
    let site = Arc::new(SiteOrigin::of(&state.config.public_url));
    let limits = Arc::new(RateLimits::new(state.config.limits, api::BASE));
    let ui = Router::new()
        .leptos_routes(state, routes, move || shell(options.clone()))
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .merge(crate::ssr::dashboard_routes::router())
        // Pages, wasm, JS and CSS gzip-compressed when the browser accepts it (tower-http's
        // default predicate: bodies over 32 bytes, never images or event streams).
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .layer(sessions)
        .layer(axum::middleware::from_fn(web_security::server_fn_status))
        .layer(from_fn_with_state(
            site.clone(),
            web_security::refuse_cross_site,
        ));
    let routes = Router::new()
        .merge(probes())
        .nest(api::BASE, api::router())
        .merge(api::docs_router())
        .merge(api::dev_issuer_router())
        .merge(ui)
        .layer(from_fn_with_state(
            state.clone(),
            crate::ssr::audit_http::audit_requests,
        ))
        .layer(from_fn_with_state(limits, rate_limits::limit))
        .layer(from_fn_with_state(site, web_security::security_headers))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_IN_FLIGHT,
        ));
    Ok(request_spans(routes).with_state(state.clone()))
}

/// How often expired dashboard sessions are deleted.
const SESSION_CLEANUP_EVERY: Duration = Duration::from_secs(300);

/// Deletes expired sessions now and every [`SESSION_CLEANUP_EVERY`], one process at a time
/// ([`singleton::SESSION_CLEANUP`]).
async fn delete_expired_sessions(pool: PgPool, store: PostgresStore) {
    use tower_sessions::session_store::ExpiredDeletion as _;
    // The first run one period after start: a starting process has more urgent work.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + SESSION_CLEANUP_EVERY,
        SESSION_CLEANUP_EVERY,
    );
    loop {
        tick.tick().await;
        match singleton::exclusive(&pool, singleton::SESSION_CLEANUP, store.delete_expired()).await
        {
            Ok(None | Some(Ok(()))) => {}
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "deleting expired sessions failed"),
            Err(e) => tracing::warn!(error = %e, "deleting expired sessions failed"),
        }
    }
}

/// The layers every request passes first: an `X-Request-Id` (the client's, or a new UUID v4),
/// one `request` span carrying it (method, path, `request_id`) at INFO so that the default
/// filter keeps it — log lines inside a request carry its fields, and the OTLP export (when on)
/// sends it as the request's root span — and the id copied onto the answer. The trace layer's
/// own events (request start, response) stay at DEBUG.
fn request_spans<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// The `request` span of one HTTP request (see [`request_spans`]).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        // The path only: a query can carry credentials (the OIDC callback's `code` and
        // `state`), and these fields reach every log line of the request and the traces.
        uri = %request.uri().path(),
        request_id = %id,
    )
}

/// `GET /healthz`, `/readyz` and `/metrics`: what probes and scrapers call.
fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
}

/// The router of a `worker` process's `WORKER_HTTP_ADDR`: `/healthz`, `/readyz` and
/// `/metrics` (the worker's own task and backend figures), nothing else; installs the
/// Prometheus recorder.
pub fn ops_router(state: &AppState) -> Router {
    crate::ssr::metrics::install();
    request_spans(
        probes().layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        )),
    )
    .with_state(state.clone())
}

/// How long a client may take to send a request's headers before its connection is closed
/// (a "slowloris" client otherwise holds a connection forever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may run before it is answered 408 (tower-http `TimeoutLayer`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests handled at once; more wait for a slot (tower `GlobalConcurrencyLimitLayer`).
pub const MAX_IN_FLIGHT: usize = 1024;
/// Serves `router` on `listener` until `shutdown` resolves, then closes the listener and lets
/// open connections finish their requests for at most `grace` (`SHUTDOWN_GRACE_SECS`). Each connection: `TCP_NODELAY` (answers go
/// out when written), HTTP/1.1 or h2c (hyper-util's auto builder), headers within
/// [`HEADER_READ_TIMEOUT`], and the peer address as axum's `ConnectInfo` (for per-client
/// rate limits).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}
