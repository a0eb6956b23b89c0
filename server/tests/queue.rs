//! The durable task queue on a real PostgreSQL: no double claims between workers, tasks of
//! one resource in order, and a task left `running` by a crashed worker is run again.

mod common;

use common::{experiment_id, in_an_hour, skip_k8s, Options, TestApp, ALICE};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn two_workers_never_claim_the_same_task_and_respect_per_resource_order(pool: PgPool) {
    let app = TestApp::start(
        pool.clone(),
        Options {
            no_worker: true,
            ..Options::default()
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let names: Vec<String> = (0..30).map(|i| format!("node-{i}")).collect();
    let (s, created) = app
        .post(
            "/resources",
            &token,
            json!({
                "expires_at": in_an_hour(),
                "resources": names.iter().map(|n| json!({"friendly_name": n, "disk_image_id": image, "flavor_id": flavor})).collect::<Vec<_>>(),
            }),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    // A delete queued behind the first resource's create must wait for it.
    let first = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, _) = app.delete(&format!("/resources/{first}"), &token).await;
    assert_eq!(s, 202);

    let claim_all = |worker: &'static str| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(task) = app::ssr::tasks::claim(&pool, worker).await.expect("claim") {
                claimed.push(task);
            }
            claimed
        })
    };
    let (a, b) = (claim_all("worker-a"), claim_all("worker-b"));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    let all: Vec<_> = a.iter().chain(b.iter()).collect();
    let unique: HashSet<_> = all.iter().map(|t| t.id).collect();
    assert_eq!(all.len(), 30, "the 30 creates, and not the blocked delete");
    assert_eq!(unique.len(), 30, "no task claimed twice");
    assert!(all.iter().all(|t| t.kind == app::model::TaskKind::Create));
    assert!(!a.is_empty() || !b.is_empty());
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_task_left_running_by_a_crashed_worker_is_run_again(pool: PgPool) {
    if skip_k8s() {
        eprintln!("SKIPPED: no Kubernetes API server (SKIP_K8S_TESTS=1 or no KUBECONFIG)");
        return;
    }
    let app = TestApp::start(
        pool.clone(),
        Options {
            no_worker: true,
            ..Options::default()
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let (_, created) = app
        .post(
            "/resources",
            &token,
            json!({"expires_at": in_an_hour(),
                   "resources": [{"friendly_name": "survivor", "disk_image_id": image, "flavor_id": flavor}]}),
        )
        .await;
    let task_id = created["tasks"][0]["id"].as_str().expect("id").to_string();
    // A worker claimed it and died: the row says running, its lease ran out.
    let claimed = app::ssr::tasks::claim(&pool, "dead-worker")
        .await
        .expect("claim")
        .expect("task");
    sqlx::query("UPDATE tasks SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(claimed.id)
        .execute(&pool)
        .await
        .expect("expire lease");

    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app::ssr::tasks::run_worker(app.state.clone(), rx));
    let task = app.wait_task(&task_id, &token, 60).await;
    assert_eq!(task["status"].as_str(), Some("finished"), "{task}");
    assert_eq!(
        task["attempts"].as_i64(),
        Some(2),
        "claimed once by the dead worker, once again"
    );
    let _ = stop.send(true);
    let _ = worker.await;
}

/// The worker's claims, heartbeats and progress go through connections that do not wait for
/// the WAL flush; the request path (and the task's outcome) keeps the server's setting.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn bookkeeping_connections_skip_the_flush_wait_and_request_connections_do_not(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            ..Options::default()
        },
    )
    .await;
    let setting = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .expect("SHOW synchronous_commit")
    };
    assert_eq!(setting(app.state.bookkeeping.clone()).await, "off");
    assert_eq!(setting(app.state.pool.clone()).await, "on");
}
