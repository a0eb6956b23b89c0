//! The durable task queue on a real PostgreSQL: no double claims between workers, tasks of
//! one resource in order, and a task left `running` by a crashed worker is run again.

mod common;

use common::{experiment_id, in_an_hour, Options, TestApp, ALICE};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn two_workers_never_claim_the_same_task_and_respect_per_resource_order(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
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
            while let Some(task) = app::ssr::queue::claim(&pool, worker, usize::MAX)
                .await
                .expect("claim")
            {
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

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_task_left_running_by_a_crashed_worker_is_run_again(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
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
    let claimed = app::ssr::queue::claim(&pool, "dead-worker", 4)
        .await
        .expect("claim")
        .expect("task");
    sqlx::query("UPDATE tasks SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(claimed.id)
        .execute(&pool)
        .await
        .expect("expire lease");

    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app::ssr::worker::run_worker(app.state.worker(), rx));
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
    let app = TestApp::without_worker(pool).await;
    let setting = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .expect("SHOW synchronous_commit")
    };
    assert_eq!(setting(app.state.bookkeeping.clone()).await, "off");
    assert_eq!(setting(app.state.pool.clone()).await, "on");
}

/// `Progress::stage` (the backends' "created" step) writes the resource's state, message and
/// details, and the task's progress with the same message, in one statement, and the task
/// part only for the worker that holds the task's lease.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_stage_writes_resource_and_task_and_the_task_only_for_the_lease_holder(pool: PgPool) {
    use app::ids::{parse_id, IdKind};
    use app::model::{AllocationState, BackendDetails, OperationalState};
    use app::ssr::backend::Progress as _;
    use app::ssr::queue::PgProgress;
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, created) = app
        .post(
            "/resources",
            &token,
            json!({"expires_at": in_an_hour(), "resources": [
                {"friendly_name": "staged", "disk_image_id": image, "flavor_id": flavor}]}),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let resource = parse_id(
        IdKind::Resource,
        "tld-city-bp1",
        created["resources"][0]["id"].as_str().expect("id"),
    )
    .expect("uuid");
    let task = parse_id(
        IdKind::Task,
        "tld-city-bp1",
        created["tasks"][0]["id"].as_str().expect("id"),
    )
    .expect("uuid");
    // A worker "w1" holds the task.
    sqlx::query(
        "UPDATE tasks SET status = 'running', locked_by = 'w1', \
         locked_until = now() + interval '30 seconds', attempts = 1 WHERE id = $1",
    )
    .bind(task)
    .execute(&pool)
    .await
    .expect("claim");
    let details = BackendDetails {
        namespace: Some("ns-1".into()),
        pod_name: Some("staged".into()),
        ..BackendDetails::default()
    };
    let read = || async {
        sqlx::query_as::<_, (String, String, String, serde_json::Value, i16, String)>(
            "SELECT r.allocation_state, r.operational_state, r.status_message, \
                    r.backend_details, t.completed, t.message \
             FROM resources r JOIN tasks t ON t.resource_id = r.id WHERE t.id = $1",
        )
        .bind(task)
        .fetch_one(&pool)
        .await
        .expect("read back")
    };

    // Not the holder: the resource is written, the task is not.
    PgProgress::new(pool.clone(), task, resource, "w2")
        .stage(
            40,
            AllocationState::Provisioning,
            OperationalState::Booting,
            "from w2",
            Some(&details),
        )
        .await;
    let (allocation, operational, message, backend, completed, task_message) = read().await;
    assert_eq!(
        (allocation.as_str(), operational.as_str(), message.as_str()),
        ("provisioning", "booting", "from w2")
    );
    assert_eq!(backend["pod_name"], "staged", "{backend}");
    assert_eq!(completed, 0, "a non-holder's progress is not written");
    assert_ne!(task_message, "from w2");

    // The holder: both, with the same message; the details are kept when none are given.
    PgProgress::new(pool.clone(), task, resource, "w1")
        .stage(
            50,
            AllocationState::Provisioning,
            OperationalState::Booting,
            "pod created; waiting for it to run",
            None,
        )
        .await;
    let (_, _, message, backend, completed, task_message) = read().await;
    assert_eq!(message, "pod created; waiting for it to run");
    assert_eq!(task_message, message);
    assert_eq!(completed, 50);
    assert_eq!(backend["namespace"], "ns-1", "{backend}");
}

/// A request served by a process with a worker hands its new tasks straight to that worker,
/// as many as it has free slots (`--worker-concurrency 4` here); the rest are queued. Every
/// task runs exactly once.
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn requests_hand_new_tasks_to_the_local_worker_up_to_its_free_slots(pool: PgPool) {
    let app = TestApp::start(pool.clone(), Options::default()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !app.state.local_worker.is_attached() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never attached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let names: Vec<String> = (0..6).map(|i| format!("handed-{i}")).collect();
    let (status, created) = app
        .post(
            "/resources",
            &token,
            json!({"expires_at": in_an_hour(),
                   "resources": names.iter().map(|n| json!({"friendly_name": n, "disk_image_id": image, "flavor_id": flavor})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let tasks = created["tasks"].as_array().cloned().unwrap_or_default();
    let resources = created["resources"].as_array().cloned().unwrap_or_default();
    assert_eq!((tasks.len(), resources.len()), (6, 6), "{created}");
    let handed = tasks.iter().filter(|t| t["status"] == "running").count();
    let queued = tasks.iter().filter(|t| t["status"] == "queued").count();
    assert_eq!(handed + queued, 6, "{created}");
    assert!(
        (1..=4).contains(&handed),
        "{handed} handed over with 4 slots: {created}"
    );
    for (task, resource) in tasks.iter().zip(&resources) {
        let expected = if task["status"] == "running" {
            ("provisioning", 1)
        } else {
            ("requested", 0)
        };
        assert_eq!(
            (
                resource["allocation_state"].as_str().unwrap_or_default(),
                task["attempts"].as_i64().unwrap_or(-1)
            ),
            expected,
            "{resource} {task}"
        );
    }
    for task in &tasks {
        let id = task["id"].as_str().expect("task id");
        let done = app.wait_task(id, &token, 90).await;
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["attempts"], 1, "ran more than once: {done}");
    }
    let (_, list) = app.get("/resources", &token).await;
    let provisioned = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["allocation_state"] == "provisioned" && r["operational_state"] == "ready")
        .count();
    assert_eq!(provisioned, 6, "{list}");
}

/// A task handed to a worker that dies before starting it is not lost: it stays claimed by
/// that worker until the lease runs out, then another worker runs it.
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_task_handed_to_a_worker_that_died_is_run_after_its_lease(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let doomed = app.state.local_worker.attach("doomed-worker", 2);
    let (status, created) = app
        .post(
            "/resources",
            &token,
            json!({"expires_at": in_an_hour(),
                   "resources": [{"friendly_name": "orphan", "disk_image_id": image, "flavor_id": flavor}]}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["tasks"][0]["status"], "running", "{created}");
    // The worker dies with the task in its inbox.
    drop(doomed);
    assert!(!app.state.local_worker.is_attached());
    let task_id = created["tasks"][0]["id"].as_str().expect("id").to_string();
    let (locked_by,): (Option<String>,) = sqlx::query_as(
        "SELECT locked_by FROM tasks WHERE status = 'running' AND locked_until > now()",
    )
    .fetch_one(&pool)
    .await
    .expect("the task row");
    assert_eq!(locked_by.as_deref(), Some("doomed-worker"));
    // Its lease runs out; a worker of another process picks it up.
    sqlx::query("UPDATE tasks SET locked_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire lease");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app::ssr::worker::run_worker(app.state.worker(), rx));
    let task = app.wait_task(&task_id, &token, 60).await;
    assert_eq!(task["status"], "finished", "{task}");
    assert_eq!(
        task["attempts"], 2,
        "handed once, claimed once again: {task}"
    );
    let (_, resource) = app
        .get(
            &format!(
                "/resources/{}",
                created["resources"][0]["id"].as_str().unwrap_or_default()
            ),
            &token,
        )
        .await;
    assert_eq!(resource["operational_state"], "ready", "{resource}");
    let _ = stop.send(true);
    let _ = worker.await;
}

/// A batch claim goes round the experiments and stops at each one's share of the slots:
/// experiment A asks for 10, B for 2, each may run 3 at once; a claim of 6 gets A 3 and B 2,
/// the next one nothing, and two workers claiming in batches at once never share a task.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn batch_claims_are_fair_capped_and_never_overlap(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let request = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        common::resources_request(&image, &flavor, &names)
    };
    let (a, b) = (experiment_id(), experiment_id());
    for (experiment, n) in [(&a, 10), (&b, 2)] {
        let token = app.issuer.experiment(experiment, ALICE);
        let (s, body) = app.post("/resources", &token, request(n)).await;
        assert_eq!(s, 202, "{body}");
    }
    let experiment_of = |resource: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT experiment_id FROM resources WHERE id = $1")
                .bind(resource)
                .fetch_one(&pool)
                .await
                .expect("resource")
        }
    };
    let first = app::ssr::queue::claim_many(&pool, "worker-a", 3, 6)
        .await
        .expect("claim");
    let mut per_experiment = std::collections::HashMap::new();
    for task in &first {
        *per_experiment
            .entry(experiment_of(task.resource_id).await)
            .or_insert(0) += 1;
    }
    assert_eq!(per_experiment.get(&a), Some(&3), "{per_experiment:?}");
    assert_eq!(per_experiment.get(&b), Some(&2), "{per_experiment:?}");
    let second = app::ssr::queue::claim_many(&pool, "worker-a", 3, 6)
        .await
        .expect("claim");
    assert!(second.is_empty(), "over the share: {second:?}");

    // Without a cap, two workers empty the queue in batches of 4 at once: 7 tasks, each once.
    let claim_all = |worker: &'static str| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let batch = app::ssr::queue::claim_many(&pool, worker, usize::MAX, 4)
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return claimed;
                }
                claimed.extend(batch);
            }
        })
    };
    let (x, y) = (claim_all("worker-x"), claim_all("worker-y"));
    let rest: Vec<_> = x
        .await
        .expect("x")
        .into_iter()
        .chain(y.await.expect("y"))
        .collect();
    let unique: HashSet<_> = rest.iter().map(|t| t.id).collect();
    assert_eq!(rest.len(), 7, "the 7 tasks A had left");
    assert_eq!(unique.len(), 7, "no task claimed twice");
    assert!(first.iter().all(|t| !unique.contains(&t.id)));
}

/// One heartbeat statement renews every lease the worker still holds and nothing else, and
/// tells each task its resource's state (a create stops on `deleting`).
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn one_heartbeat_renews_the_leases_a_worker_holds_and_reports_deletions(pool: PgPool) {
    use app::model::AllocationState;
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, created) = app
        .post(
            "/resources",
            &token,
            common::resources_request(&image, &flavor, &["kept", "dropped"]),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let claimed = app::ssr::queue::claim_many(&pool, "worker-a", usize::MAX, 2)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    // Leases about to run out: the heartbeat must push them a whole LEASE ahead.
    sqlx::query("UPDATE tasks SET locked_until = now() + interval '1 second'")
        .execute(&pool)
        .await
        .expect("shorten");
    let dropped = created["resources"][1]["id"].as_str().expect("id");
    let (s, _) = app.delete(&format!("/resources/{dropped}"), &token).await;
    assert_eq!(s, 202);
    let ids: Vec<uuid::Uuid> = claimed.iter().map(|t| t.id).collect();
    let stranger = uuid::Uuid::now_v7();
    let mut asked = ids.clone();
    asked.push(stranger);

    assert!(app::ssr::queue::renew_leases(&pool, "worker-b", &ids)
        .await
        .expect("renew")
        .is_empty());
    let renewed: std::collections::HashMap<_, _> =
        app::ssr::queue::renew_leases(&pool, "worker-a", &asked)
            .await
            .expect("renew")
            .into_iter()
            .collect();
    assert_eq!(renewed.len(), 2, "{renewed:?}");
    let mut state_of = std::collections::HashMap::new();
    for task in &claimed {
        let name: String = sqlx::query_scalar("SELECT friendly_name FROM resources WHERE id = $1")
            .bind(task.resource_id)
            .fetch_one(&pool)
            .await
            .expect("resource");
        state_of.insert(name, renewed[&task.id]);
    }
    assert_eq!(state_of["dropped"], AllocationState::Deleting);
    assert_eq!(state_of["kept"], AllocationState::Provisioning);
    let shortest: f64 = sqlx::query_scalar(
        "SELECT min(extract(epoch FROM locked_until - now()))::float8 FROM tasks WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await
    .expect("leases");
    assert!(shortest > 25.0, "lease left: {shortest} s");
}

/// Writes handed to one `TaskWriter` at the same time go out together: progress steps (the
/// resource always, the task only for its holder), then outcomes — each task `finished` at
/// 100 % and its resource `provisioned`/`ready` with its own details — and a task the worker
/// no longer holds is not ended (its caller hears "not held").
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_task_writer_writes_steps_and_outcomes_together_guarded_by_the_lease(pool: PgPool) {
    use app::model::{AllocationState, BackendDetails, OperationalState};
    use app::ssr::backend::Progress as _;
    use app::ssr::queue::{record_outcome, Outcome, PgProgress, TaskWriter};
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let names = ["f-0", "f-1", "f-2", "f-3"];
    let (s, created) = app
        .post(
            "/resources",
            &token,
            common::resources_request(&image, &flavor, &names),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let claimed = app::ssr::queue::claim_many(&pool, "worker-a", usize::MAX, 4)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    // The last one's lease was taken over by another worker.
    sqlx::query("UPDATE tasks SET locked_by = 'worker-b' WHERE id = $1")
        .bind(claimed[3].id)
        .execute(&pool)
        .await
        .expect("take over");
    let cache = std::sync::Arc::new(app::ssr::list_cache::ListCache::default());
    let (writer, writing) =
        TaskWriter::start(pool.clone(), pool.clone(), cache.clone(), "worker-a".into());
    let read = |task: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i16, String, String, String, serde_json::Value)>(
                "SELECT t.status, t.completed, t.message, r.allocation_state,                         r.operational_state, r.backend_details                  FROM tasks t JOIN resources r ON r.id = t.resource_id WHERE t.id = $1",
            )
            .bind(task)
            .fetch_one(&pool)
            .await
            .expect("read back")
        }
    };

    let steps = claimed.iter().map(|task| {
        let progress = PgProgress::new(pool.clone(), task.id, task.resource_id, "worker-a")
            .with_writer(writer.clone());
        async move {
            let details = BackendDetails {
                namespace: Some("ns-steps".into()),
                ..BackendDetails::default()
            };
            progress
                .stage(
                    50,
                    AllocationState::Provisioning,
                    OperationalState::Booting,
                    "pod created; waiting for it to run",
                    Some(&details),
                )
                .await;
        }
    });
    futures::future::join_all(steps).await;
    for (i, task) in claimed.iter().enumerate() {
        let (_, completed, message, allocation, operational, details) = read(task.id).await;
        assert_eq!(
            (allocation.as_str(), operational.as_str()),
            ("provisioning", "booting")
        );
        assert_eq!(
            details["namespace"], "ns-steps",
            "every resource gets its step"
        );
        if i < 3 {
            assert_eq!(
                (completed, message.as_str()),
                (50, "pod created; waiting for it to run")
            );
        } else {
            assert_eq!(
                completed, 0,
                "the step of a task held elsewhere skips the task"
            );
        }
    }

    let budget = std::time::Duration::from_secs(60);
    let outcomes = claimed.iter().map(|task| {
        let outcome = Outcome::Finished {
            message: "ready".into(),
            details: Some(BackendDetails {
                pod_name: Some(format!("pod-of-{}", task.resource_id)),
                ..BackendDetails::default()
            }),
        };
        record_outcome(
            &pool,
            &cache,
            Some(&writer),
            "worker-a",
            task,
            outcome,
            budget,
        )
    });
    for written in futures::future::join_all(outcomes).await {
        written.expect("outcome");
    }
    drop(writer);
    writing.await.expect("the writer ends with its last handle");
    for (i, task) in claimed.iter().enumerate() {
        let (status, completed, _, allocation, operational, details) = read(task.id).await;
        if i < 3 {
            assert_eq!(
                (
                    status.as_str(),
                    completed,
                    allocation.as_str(),
                    operational.as_str()
                ),
                ("finished", 100, "provisioned", "ready")
            );
            assert_eq!(details["pod_name"], format!("pod-of-{}", task.resource_id));
        } else {
            assert_eq!(
                (status.as_str(), allocation.as_str()),
                ("running", "provisioning"),
                "a task another worker holds is not ended"
            );
        }
    }
}

/// Reconcile work in the queue: an orphan's removal is queued once per object (a second
/// sighting adds nothing), becomes due after its grace period, is claimed by one worker only
/// (never by the task loop's claim), is retried after a jittered backoff, and only its holder
/// ends it; a removal that ended makes room for a new one of the same object.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn orphan_removals_are_queued_once_claimed_once_and_retried_with_backoff(pool: PgPool) {
    use app::model::TaskStatus;
    use app::ssr::backend::ObjectHandle;
    use app::ssr::queue::{self, OrphanTarget};
    use std::time::Duration;
    let orphan = |uid: &str| {
        let handle = ObjectHandle::Pod {
            namespace: "slices-x".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
        };
        OrphanTarget::new(handle, None)
    };
    let (due, later) = (orphan("u1"), orphan("u2"));
    assert!(queue::enqueue_orphan_removal(&pool, &due, Duration::ZERO)
        .await
        .expect("enqueue"));
    assert!(!queue::enqueue_orphan_removal(&pool, &due, Duration::ZERO)
        .await
        .expect("enqueue again"));
    assert!(
        queue::enqueue_orphan_removal(&pool, &later, Duration::from_secs(3600))
            .await
            .expect("enqueue")
    );
    let waits: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM run_after - now())::float8 FROM tasks WHERE target->>'key' = 'pod/u2'",
    )
    .fetch_one(&pool)
    .await
    .expect("run_after");
    assert!((3590.0..=3600.0).contains(&waits), "{waits}");

    // The task loop's claim never takes a reconcile task.
    assert!(queue::claim_many(&pool, "loop", 8, 100)
        .await
        .expect("claim")
        .is_empty());
    let first = queue::claim_orphan_removals(&pool, "w1")
        .await
        .expect("claim");
    assert_eq!(first.len(), 1, "only the due one: {first:?}");
    assert_eq!(first[0].target, due);
    assert_eq!(first[0].attempts, 1);
    assert!(queue::claim_orphan_removals(&pool, "w2")
        .await
        .expect("claim")
        .is_empty());

    // Only the holder retries it, after 2 s ± 20 % (the first attempt's backoff).
    assert!(!queue::retry_removal(&pool, &first[0], "w2", "boom")
        .await
        .expect("retry"));
    assert!(queue::retry_removal(&pool, &first[0], "w1", "boom")
        .await
        .expect("retry"));
    let (status, waits, message): (String, f64, String) = sqlx::query_as(
        "SELECT status, EXTRACT(EPOCH FROM run_after - now())::float8, message FROM tasks WHERE id = $1",
    )
    .bind(first[0].id)
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!(status, "queued");
    assert!((1.5..=2.4).contains(&waits), "{waits}");
    assert!(message.starts_with("boom; retrying in "), "{message}");
    assert!(queue::claim_orphan_removals(&pool, "w2")
        .await
        .expect("claim")
        .is_empty());

    // Its time comes: another worker takes it; the old holder can no longer end it.
    sqlx::query("UPDATE tasks SET run_after = now() WHERE id = $1")
        .bind(first[0].id)
        .execute(&pool)
        .await
        .expect("due now");
    let second = queue::claim_orphan_removals(&pool, "w2")
        .await
        .expect("claim");
    assert_eq!((second.len(), second[0].attempts), (1, 2));
    assert!(
        !queue::end_removal(&pool, first[0].id, "w1", TaskStatus::Finished, "done")
            .await
            .expect("end")
    );
    assert!(
        queue::end_removal(&pool, first[0].id, "w2", TaskStatus::Finished, "done")
            .await
            .expect("end")
    );
    let status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
        .bind(first[0].id)
        .fetch_one(&pool)
        .await
        .expect("status");
    assert_eq!(status, "finished");
    // Seen again after its removal ended (say, its delete did not take): queued anew.
    assert!(queue::enqueue_orphan_removal(&pool, &due, Duration::ZERO)
        .await
        .expect("enqueue after the end"));
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_claims_records_load_in_one_statement_and_a_vanished_one_is_left_out(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let names = ["rec-a", "rec-b", "rec-c"];
    let created = app.create_resources(&token, &image, &flavor, &names).await;
    let site = app.state.site();
    let mut ids: Vec<uuid::Uuid> = created["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            let id = r["id"].as_str().expect("id");
            app::ids::parse_id(app::ids::IdKind::Resource, site, id).expect("uuid")
        })
        .collect();
    let vanished = uuid::Uuid::now_v7();
    ids.push(vanished);

    let records = app::ssr::rows::load_records(&pool, site, &ids)
        .await
        .expect("load_records");
    let mut loaded: Vec<(uuid::Uuid, String)> = records
        .iter()
        .map(|r| (r.id, r.friendly_name.clone()))
        .collect();
    loaded.sort();
    let mut expected: Vec<(uuid::Uuid, String)> = ids[..3]
        .iter()
        .copied()
        .zip(names.iter().map(|n| n.to_string()))
        .collect();
    expected.sort();
    assert_eq!(loaded, expected, "the three resources, not the vanished id");
    // The batch gives what the single load gives.
    for record in &records {
        let one = app::ssr::rows::load_record(&pool, site, record.id)
            .await
            .expect("load_record");
        assert_eq!(
            (
                &one.typed_id,
                &one.image_location,
                one.vcpus,
                &one.experiment_id
            ),
            (
                &record.typed_id,
                &record.image_location,
                record.vcpus,
                &record.experiment_id
            )
        );
    }
    let gone = app::ssr::rows::load_record(&pool, site, vanished).await;
    assert!(
        matches!(gone, Err(app::error::AppError::NotFound(_))),
        "{gone:?}"
    );
    let none = app::ssr::rows::load_records(&pool, site, &[])
        .await
        .expect("no ids");
    assert!(none.is_empty());
}
