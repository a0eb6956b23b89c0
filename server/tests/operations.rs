//! What an operator watches (issue 14, "Operations"): `/readyz` for the readiness probe,
//! `/metrics` in the Prometheus text format, and JSON log lines — on the real router, the real
//! binary and PostgreSQL.

mod common;

use common::{cli, experiment_id, TestApp, ALICE};
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn readyz_says_whether_the_database_has_this_builds_migrations(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let get = |path: &'static str| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let response = http.get(url).send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (s, body) = get("/readyz").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["ready"], Value::Bool(true), "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    // A database one migration behind this build (a rolling upgrade before `migrate` ran).
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .expect("forget the newest migration");
    let (s, body) = get("/readyz").await;
    assert_eq!(s, 503, "{body}");
    let why = body["database"].as_str().expect("text");
    assert!(why.starts_with("migrations pending"), "{why}");
    // Liveness does not depend on it.
    let (s, _) = get("/healthz").await;
    assert_eq!(s, 200);
}

/// The value of the sample `name{labels}` in a text exposition, if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn metrics_count_requests_by_route_and_status_and_show_the_queue(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    app.create_resources(&token, &image, &flavor, &["q1", "q2", "q3"])
        .await;
    for _ in 0..3 {
        assert_eq!(app.get("/flavors", &token).await.0, 200);
    }
    assert_eq!(app.get("/flavors", "not-a-token").await.0, 401);
    let response = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("text");
    let route = "/apis/bi.slices.eu/v1alpha2/flavors";
    let ok = sample(
        &text,
        "http_requests_total",
        &[("method", "GET"), ("route", route), ("status", "200")],
    );
    assert!(
        ok.is_some_and(|n| n >= 3.0),
        "GET flavors 200 counted: {ok:?}\n{text}"
    );
    let refused = sample(
        &text,
        "http_requests_total",
        &[("route", route), ("status", "401")],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}\n{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "latency histogram:\n{text}"
    );
    // No worker runs in this app: its three create tasks wait in the queue.
    assert_eq!(sample(&text, "tasks_queued", &[]), Some(3.0), "{text}");
    assert!(sample(&text, "tasks_oldest_queued_age_seconds", &[]).is_some_and(|a| a >= 0.0));
    assert!(
        sample(&text, "db_pool_connections", &[("state", "idle")]).is_some(),
        "{text}"
    );
    // Every series served is one the module documents (and dashboards may use).
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(
            app::ssr::metrics::NAMES.contains(&base_name(name)),
            "undocumented metric `{name}`"
        );
    }
}

/// A histogram's series name without its `_bucket`, `_sum` or `_count` suffix.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// deploy/grafana/slices-blueprint.json: valid JSON whose queries use only metrics this
/// service records, and every one of them.
#[test]
fn the_grafana_dashboard_charts_every_metric_and_only_those() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/slices-blueprint.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let tokens = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for token in tokens.filter(|t| t.contains('_')) {
                let name = base_name(token);
                if ["_total", "_seconds", "_connections", "_queued", "_running"]
                    .iter()
                    .any(|s| name.ends_with(s))
                {
                    assert!(
                        app::ssr::metrics::NAMES.contains(&name),
                        "{expr}: `{name}` is not recorded"
                    );
                    used.insert(name.to_string());
                }
            }
        }
    }
    for name in app::ssr::metrics::NAMES {
        assert!(used.contains(*name), "no panel shows `{name}`");
    }
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn log_format_json_writes_one_json_object_per_line(pool: PgPool) {
    let out = cli(
        &pool,
        &[("LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
        &["migrate"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "debug logging wrote nothing");
    for line in &lines {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
    let bad = cli(&pool, &[("LOG_FORMAT", "yaml")], &["migrate"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("log-format"));
}
