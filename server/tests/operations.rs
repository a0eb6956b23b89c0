//! What an operator watches (issue 14, "Operations"): `/readyz` for the readiness probe,
//! `/metrics` in the Prometheus text format, and JSON log lines — on the real router, the real
//! binary and PostgreSQL.

mod common;

use common::{cli, experiment_id, TestApp, ALICE};
use serde_json::Value;
use sqlx::Connection as _;
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

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// The status of the first answer of `url` (the process listens once it answers),
    /// waiting up to 30 s.
    async fn first_answer(http: &reqwest::Client, url: &str) -> Option<u16> {
        for _ in 0..120 {
            if let Ok(r) = http.get(url).send().await {
                return Some(r.status().as_u16());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        None
    }

    /// SIGTERM, then the exit status (waiting up to 10 s; `None`: still running).
    async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        for _ in 0..100 {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_worker_process_answers_probes_and_metrics_and_leaves_migrations_to_migrate(
    pool: PgPool,
) {
    // The schema one migration behind the build, as during a rolling upgrade before the Helm
    // hook's `migrate` ran: with MIGRATE_ON_START=false the worker starts on it, unready.
    let (newest, description, checksum): (i64, String, Vec<u8>) = sqlx::query_as(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)
         RETURNING version, description, checksum",
    )
    .fetch_one(&pool)
    .await
    .expect("forget the newest migration");
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("sb-worker-{}.log", uuid::Uuid::now_v7()));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut worker = KillOnDrop(
        common::binary(&pool)
            .args(["worker"])
            .env("MIGRATE_ON_START", "false")
            .env("WORKER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,tower_http=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the worker"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let health = KillOnDrop::first_answer(&http, &format!("{base}/healthz")).await;
    assert_eq!(health, Some(200), "the worker never answered /healthz");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("json");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.starts_with("migrations pending")),
        "{body}"
    );
    let still_missing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
            .bind(newest)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        still_missing, 0,
        "the worker migrated although MIGRATE_ON_START=false"
    );

    // Once the migration is recorded again (as `migrate` would: its objects are still there,
    // so running it again would fail), the running worker turns ready without a restart.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, $2, true, $3, 1)",
    )
    .bind(newest)
    .bind(description)
    .bind(checksum)
    .execute(&pool)
    .await
    .expect("record the migration again");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(sample(&metrics, "tasks_queued", &[]).is_some(), "{metrics}");
    // Every answer carries an X-Request-Id (the client's own, or a new one), and the log lines
    // of that request carry it as a field of their span.
    let answered = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "req-ops-test-1")
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        answered
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-ops-test-1")
    );
    let fresh = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    let fresh_id = fresh
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(uuid::Uuid::parse_str(&fresh_id).is_ok(), "{fresh_id:?}");
    // Nothing but the probes on that port.
    let api = http
        .get(format!("{base}/api/v1/resources"))
        .send()
        .await
        .expect("request");
    assert_eq!(api.status().as_u16(), 404);
    // SIGTERM stops it.
    let exited = worker.terminate().await;
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    let logs = std::fs::read_to_string(&log_path).expect("the worker's log");
    let _ = std::fs::remove_file(&log_path);
    // (Leptos itself prints a warning about LEPTOS_OUTPUT_NAME outside cargo-leptos: skipped.)
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == "req-ops-test-1" && l["span"]["uri"] == "/healthz"),
        "no log line of the request carries its id:\n{logs}"
    );
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_periodic_job_runs_on_one_process_at_a_time_and_a_dead_holder_hands_it_over(
    pool: PgPool,
) {
    use app::ssr::singleton::{exclusive, EXPIRY_SWEEP, SESSION_CLEANUP};
    // One run in progress: the same job elsewhere is skipped, another job is not.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, has_started) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            exclusive(&pool, EXPIRY_SWEEP, async move {
                let _ = started.send(());
                let _ = released.await;
                "first"
            })
            .await
        })
    };
    has_started.await.expect("the first run started");
    let second = exclusive(&pool, EXPIRY_SWEEP, async { "second" }).await;
    assert_eq!(second.expect("database"), None);
    let other = exclusive(&pool, SESSION_CLEANUP, async { "other job" }).await;
    assert_eq!(other.expect("database"), Some("other job"));
    release.send(()).expect("release");
    let first = holder.await.expect("join").expect("database");
    assert_eq!(first, Some("first"));
    // Released when the run ended.
    let third = exclusive(&pool, EXPIRY_SWEEP, async { "third" }).await;
    assert_eq!(third.expect("database"), Some("third"));

    // A job that is one transaction holds the same lock for that transaction only.
    let mut first = pool.begin().await.expect("tx");
    assert!(app::ssr::singleton::try_lock_in(&mut first, EXPIRY_SWEEP)
        .await
        .expect("db"));
    assert_eq!(
        exclusive(&pool, EXPIRY_SWEEP, async {}).await.expect("db"),
        None
    );
    let mut second = pool.begin().await.expect("tx");
    assert!(!app::ssr::singleton::try_lock_in(&mut second, EXPIRY_SWEEP)
        .await
        .expect("db"));
    second.rollback().await.expect("rollback");
    first.commit().await.expect("commit");
    assert!(exclusive(&pool, EXPIRY_SWEEP, async {})
        .await
        .expect("db")
        .is_some());

    // A process that dies mid-run: its database session ends, and with it the lock.
    let mut dying = sqlx::postgres::PgConnection::connect_with(&*pool.connect_options())
        .await
        .expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(EXPIRY_SWEEP.key)
        .execute(&mut dying)
        .await
        .expect("lock");
    assert_eq!(
        exclusive(&pool, EXPIRY_SWEEP, async {}).await.expect("db"),
        None
    );
    let started = std::time::Instant::now();
    dying.close().await.expect("close");
    let mut handed_over = None;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        if exclusive(&pool, EXPIRY_SWEEP, async {})
            .await
            .expect("db")
            .is_some()
        {
            handed_over = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(handed_over.is_some(), "the lock outlived its session");
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_rolled_back_release_starts_on_the_newer_schema_it_finds(pool: PgPool) {
    // A newer release migrated (one more migration than this build knows), then `helm
    // rollback` brought this build back: its `migrate` hook and its processes must start.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000001, 'from a newer release', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .expect("a newer migration");
    let out = cli(&pool, &[], &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ahead of this build"), "{said}");
    let app = TestApp::without_worker(pool.clone()).await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    // Asked again, the library says the same and leaves the schema alone.
    assert_eq!(
        app::ssr::migrate(&pool).await.expect("nothing to do"),
        app::ssr::Migrated::Newer {
            applied: 99_991_231_000_001,
            this_build: app::ssr::MIGRATOR
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0),
        }
    );
}

#[test]
fn the_operations_guide_and_env_example_list_every_setting() {
    use clap::Args as _;
    let command = app::ssr::config::Settings::augment_args(clap::Command::new("settings"));
    let names: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(names.len() > 40, "{names:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).expect("the guide");
    let example = std::fs::read_to_string(root.join(".env.example")).expect(".env.example");
    let missing_in_guide: Vec<&String> = names
        .iter()
        .filter(|n| !guide.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing_in_guide.is_empty(),
        "docs/operations.md has no settings row for {missing_in_guide:?}"
    );
    let missing_in_example: Vec<&String> = names
        .iter()
        .filter(|n| !example.contains(&format!("{n}=")))
        .collect();
    assert!(
        missing_in_example.is_empty(),
        ".env.example does not show {missing_in_example:?}"
    );
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn spans_go_to_an_otlp_http_collector_when_an_endpoint_is_set(pool: PgPool) {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};
    // A collector's OTLP/HTTP receiver on loopback: keeps what it is sent.
    type Received = Arc<Mutex<Vec<(String, Bytes)>>>;
    let received: Received = Arc::default();
    let keep = received.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                keep.lock().expect("lock").push((kind, body));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let port = free_port();
    let mut worker = KillOnDrop(
        common::binary(&pool)
            .args(["worker"])
            .env("WORKER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("RUST_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_SERVICE_NAME", "slices-blueprint-otlp-test")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the worker"),
    );
    let http = reqwest::Client::new();
    let health = KillOnDrop::first_answer(&http, &format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(health, Some(200), "the worker never answered /healthz");
    // SIGTERM: the process exports what it still holds before it exits.
    let exited = worker.terminate().await;
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    let batches = received.lock().expect("lock").clone();
    assert!(!batches.is_empty(), "no OTLP request reached the collector");
    let contains = |needle: &str| {
        batches
            .iter()
            .any(|(_, body)| body.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert!(
        batches
            .iter()
            .all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        batches.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    // The resource names the service; the request span names its route.
    assert!(contains("slices-blueprint-otlp-test"));
    assert!(contains("/healthz"), "no span of the /healthz request");
}
