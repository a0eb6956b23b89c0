//! Prometheus metrics (issue 14): the `metrics` facade, recorded by the HTTP middleware, the
//! worker and the backends, rendered by `metrics-exporter-prometheus` at `GET /metrics` in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | `method`, `route` (the matched route pattern), `status` |
//! | `http_request_duration_seconds` | histogram | `method`, `route` |
//! | `tasks_finished_total` | counter | `kind` (create/delete), `outcome` (finished, cancelled, failed, retry, lease_lost) |
//! | `task_duration_seconds` | histogram | `kind`, `outcome` |
//! | `tasks_queued` | gauge | — (read at scrape time) |
//! | `tasks_running` | gauge | — (read at scrape time) |
//! | `tasks_oldest_queued_age_seconds` | gauge | — (read at scrape time) |
//! | `db_pool_connections` | gauge | `state` (idle, busy) |
//! | `list_cache_requests_total` | counter | `result` (hit, miss) |
//! | `list_cache_invalidations_total` | counter | — |
//! | `backend_calls_total` | counter | `backend` (k8s, vm), `operation` (create, delete, observe), `outcome` (ok, error) |
//! | `backend_call_duration_seconds` | histogram | `backend`, `operation` |
//! | `keystone_tokens_total` | counter | `source` (cache, keystone) |
//!
//! The recorder is process-wide: installed once ([`install`]); every router of the process
//! (the tests start several) renders the same registry.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::sync::OnceLock;
use std::time::Instant;

/// Every metric this service records (the table above); dashboards may use only these.
pub const NAMES: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds",
    "tasks_finished_total",
    "task_duration_seconds",
    "tasks_queued",
    "tasks_running",
    "tasks_oldest_queued_age_seconds",
    "db_pool_connections",
    "list_cache_requests_total",
    "list_cache_invalidations_total",
    "backend_calls_total",
    "backend_call_duration_seconds",
    "keystone_tokens_total",
];

/// The media type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Histogram buckets of the `_duration_seconds` metrics, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once); `None` when
/// another recorder was installed first (metrics then go there, `/metrics` answers 503).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "the Prometheus recorder could not be installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Middleware (a route layer: it sees the matched route): counts each request and its time by
/// method, route pattern and status. Requests no route matched count as route `unmatched`.
pub async fn http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// One task reached `outcome` after `seconds` of running.
pub fn task_finished(kind: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!("tasks_finished_total", "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!("task_duration_seconds", "kind" => kind, "outcome" => outcome)
        .record(seconds);
}

/// A `GET /resources` page served from the list cache (`hit`) or read from the database.
pub fn list_cache(hit: bool) {
    metrics::counter!("list_cache_requests_total", "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

/// Every kept list page turned stale at once (a change notification or this process's write).
pub fn list_cache_invalidated() {
    metrics::counter!("list_cache_invalidations_total").increment(1);
}

/// One call of a compute backend (`backend`: the flavor type it serves) ended after `seconds`.
/// A create or delete call lasts until the object is ready or gone.
pub fn backend_call(backend: &'static str, operation: &'static str, ok: bool, seconds: f64) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("backend_calls_total", "backend" => backend, "operation" => operation, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("backend_call_duration_seconds", "backend" => backend, "operation" => operation)
        .record(seconds);
}

/// A Keystone token was needed: served from the token cache, or requested from Keystone.
pub fn keystone_token(from_cache: bool) {
    let source = if from_cache { "cache" } else { "keystone" };
    metrics::counter!("keystone_tokens_total", "source" => source).increment(1);
}

/// The scrape: the gauges read now (queue depth and age, pool use), then everything as text.
/// `None` when the recorder is not ours.
pub async fn render(pool: &PgPool) -> Option<String> {
    let handle = install()?;
    let idle = pool.num_idle() as f64;
    metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("db_pool_connections", "state" => "busy").set(f64::from(pool.size()) - idle);
    let queue = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE status = 'queued') AS "queued!",
                  count(*) FILTER (WHERE status = 'running') AS "running!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'queued')), 0)::float8 AS "oldest!"
           FROM tasks WHERE status IN ('queued', 'running')"#
    )
    .fetch_one(pool)
    .await;
    match queue {
        Ok(q) => {
            metrics::gauge!("tasks_queued").set(q.queued as f64);
            metrics::gauge!("tasks_running").set(q.running as f64);
            metrics::gauge!("tasks_oldest_queued_age_seconds").set(q.oldest);
        }
        Err(e) => tracing::warn!(error = %e, "reading the queue for /metrics failed"),
    }
    Some(handle.render())
}
