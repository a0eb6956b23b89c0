//! The lifecycle under faults (issue 12), against a real PostgreSQL server and the Kubernetes
//! API test server: idempotent requests (`request_id`), drift noticed by the reconciler (a
//! Pod deleted by hand, orphaned Pods), and tasks that wait out an API server outage. Each
//! test prints the figure it measures (`--nocapture` shows them).

mod common;

use common::{experiment_id, Options, TestApp, ALICE};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

fn request(image: &str, flavor: &str, names: &[&str], request_id: Option<&str>) -> Value {
    let mut body = common::resources_request(image, flavor, names);
    if let Some(id) = request_id {
        body["request_id"] = json!(id);
    }
    body
}

fn ids(answer: &Value, list: &str) -> Vec<String> {
    answer[list]
        .as_array()
        .expect(list)
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// A retried `POST /resources` with the same `request_id` gets the first answer (same
/// resources, same tasks) and creates nothing; another body with that id is a 409 naming
/// `request_id`; another experiment may use the same id; twins sent at once create once.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_repeated_request_id_gets_the_first_answer(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let rid = uuid::Uuid::new_v4().to_string();
    let body = request(&image, &flavor, &["kme-a", "kme-b"], Some(&rid));

    let (s, first) = app.post("/resources", &token, body.clone()).await;
    assert_eq!(s, 202, "{first}");
    // The same body again, with a fresh user token list and its keys in another order.
    let mut again = body.clone();
    again["tokens"] = json!([]);
    let (s, second) = app.post("/resources", &token, again).await;
    assert_eq!(s, 202, "{second}");
    assert_eq!(ids(&first, "resources"), ids(&second, "resources"));
    assert_eq!(ids(&first, "tasks"), ids(&second, "tasks"));
    let (_, listed) = app.get("/resources", &token).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    let other = request(&image, &flavor, &["kme-c"], Some(&rid));
    let (s, conflict) = app.post("/resources", &token, other).await;
    assert_eq!(s, 409, "{conflict}");
    assert_eq!(conflict["field"], "request_id", "{conflict}");

    // Another experiment's ids are its own.
    let other_exp = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, theirs) = app.post("/resources", &other_exp, body.clone()).await;
    assert_eq!(s, 202, "{theirs}");
    assert_ne!(ids(&first, "resources"), ids(&theirs, "resources"));

    // Twins at once: one create, both answered with it.
    let twin_id = uuid::Uuid::new_v4().to_string();
    let twin = request(&image, &flavor, &["sae-a"], Some(&twin_id));
    let (a, b) = tokio::join!(
        app.post("/resources", &token, twin.clone()),
        app.post("/resources", &token, twin.clone())
    );
    assert_eq!((a.0, b.0), (202, 202), "{} / {}", a.1, b.1);
    assert_eq!(ids(&a.1, "resources"), ids(&b.1, "resources"));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resources WHERE friendly_name = 'sae-a'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(stored, 1);

    // Not a UUID: 422 (or 400 from the JSON reader) naming the field.
    let mut bad = request(&image, &flavor, &["x"], None);
    bad["request_id"] = json!("not-a-uuid");
    let (s, refused) = app.post("/resources", &token, bad).await;
    assert!(matches!(s, 400 | 422), "{s} {refused}");
    assert!(refused.to_string().contains("request_id"), "{refused}");
}

async fn resource(app: &TestApp, token: &str, id: &str) -> Value {
    let (s, r) = app.get(&format!("/resources/{id}"), token).await;
    assert_eq!(s, 200, "{r}");
    r
}

/// Polls `GET /resources/{id}` until `done` holds (at most `limit`); answers how long it took.
async fn until(
    app: &TestApp,
    token: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = resource(app, token, id).await;
        if done(&r) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still {r} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn provision(app: &TestApp, token: &str, image: &str, flavor: &str, names: &[&str]) -> Value {
    let (s, created) = app
        .post("/resources", token, request(image, flavor, names, None))
        .await;
    assert_eq!(s, 202, "{created}");
    for task in ids(&created, "tasks") {
        let t = app.wait_task(&task, token, 60).await;
        assert_eq!(t["status"], "finished", "{t}");
    }
    created
}

/// A Pod deleted by hand leaves its resource `failed` with "deleted outside slices-blueprint"
/// within 5 s; the other Pod of the experiment stays `provisioned`. An orphan removal waiting
/// in the queue meanwhile (a task without a resource) does not hide the drift.
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_pod_deleted_by_hand_fails_its_resource(pool: PgPool) {
    use app::ssr::backend::ObjectHandle;
    use app::ssr::queue::{self, OrphanTarget};
    // Due in an hour: still queued, with no resource, while the pass below runs (a NULL in
    // the reconciler's list of busy resources once made every resource's `busy` unknown).
    let elsewhere = ObjectHandle::Pod {
        namespace: "slices-elsewhere".into(),
        name: "left-over".into(),
        uid: "u-left-over".into(),
    };
    let waiting = OrphanTarget::new(elsewhere, None);
    assert!(
        queue::enqueue_orphan_removal(&pool, &waiting, Duration::from_secs(3600))
            .await
            .expect("queue an orphan removal"),
        "queued"
    );
    let app = TestApp::start(pool, Options::default()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let created = provision(&app, &token, &image, &flavor, &["gone", "kept"]).await;
    let [gone, kept] = [0, 1].map(|i| {
        created["resources"][i]["id"]
            .as_str()
            .expect("id")
            .to_string()
    });

    let ns = app.kubernetes.as_ref().expect("k8s").namespace_for(&exp);
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_default().await.expect("client"), &ns);
    pods.delete("gone", &Default::default())
        .await
        .expect("delete");
    let noticed = until(&app, &token, &gone, Duration::from_secs(5), |r| {
        r["allocation_state"] == "failed"
    })
    .await;
    println!(
        "lifecycle: pod deleted by hand noticed after {} ms",
        noticed.as_millis()
    );
    let r = resource(&app, &token, &gone).await;
    assert!(
        r["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("deleted outside slices-blueprint")),
        "{r}"
    );
    assert_eq!(r["operational_state"], "error", "{r}");
    let k = resource(&app, &token, &kept).await;
    assert_eq!(k["allocation_state"], "provisioned", "{k}");
    assert_eq!(k["operational_state"], "ready", "{k}");

    // A failed resource is deleted like any other.
    let (s, task) = app.delete(&format!("/resources/{gone}"), &token).await;
    assert_eq!(s, 202, "{task}");
    let t = app
        .wait_task(task["id"].as_str().expect("task"), &token, 30)
        .await;
    assert_eq!(t["status"], "finished", "{t}");
}

fn orphan(name: &str, resource_id: Option<&str>) -> Pod {
    let mut annotations = serde_json::Map::new();
    if let Some(id) = resource_id {
        annotations.insert("slices.eu/resource-id".into(), json!(id));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "slices-blueprint"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }))
    .expect("pod")
}

/// Pods labelled as ours whose resource the database does not know (or that name none) are
/// deleted after the grace period, not before; Pods of resources it knows, and labelled Pods
/// outside this site's namespaces, stay.
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn orphaned_pods_are_deleted_after_the_grace_period(pool: PgPool) {
    const GRACE: u64 = 3;
    let prefix = format!("o{}-", &app::ids::encode_suffix(uuid::Uuid::now_v7())[20..]);
    let app = TestApp::start(
        pool,
        Options {
            extra_args: vec![
                "--orphan-grace-secs".into(),
                GRACE.to_string(),
                "--k8s-namespace-prefix".into(),
                prefix.clone(),
            ],
            ..Options::default()
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let created = provision(&app, &token, &image, &flavor, &["known"]).await;
    let known = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let client = kube::Client::try_default().await.expect("client");
    let ns = app.kubernetes.as_ref().expect("k8s").namespace_for(&exp);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let unknown = app::ids::format_id(
        app::ids::IdKind::Resource,
        "tld-city-bp1",
        uuid::Uuid::now_v7(),
    );
    let made = Instant::now();
    for (name, id) in [
        ("orphan-unknown", Some(unknown.as_str())),
        ("orphan-unnamed", None),
    ] {
        pods.create(&Default::default(), &orphan(name, id))
            .await
            .expect("create orphan");
    }
    // The same marks in a namespace that is not this site's: left alone.
    let foreign_ns = format!("x{prefix}other");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": foreign_ns}})).expect("ns"),
        )
        .await;
    let foreign: Api<Pod> = Api::namespaced(client.clone(), &foreign_ns);
    foreign
        .create(&Default::default(), &orphan("not-ours", None))
        .await
        .expect("create");

    let mut removed_after = None;
    while made.elapsed() < Duration::from_secs(GRACE + 10) {
        let left = pods.list(&Default::default()).await.expect("list");
        let names: Vec<String> = left
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !names.iter().any(|n| n.starts_with("orphan-")) {
            removed_after = Some(made.elapsed());
            assert!(names.contains(&"known".to_string()), "{names:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let removed_after = removed_after.expect("orphans still there after the grace period + 10 s");
    println!(
        "lifecycle: orphans removed {} ms after they were made (grace {GRACE} s)",
        removed_after.as_millis()
    );
    assert!(
        removed_after >= Duration::from_secs(GRACE),
        "removed before the grace period: {removed_after:?}"
    );
    assert!(foreign.get_opt("not-ours").await.expect("get").is_some());
    // Each removal was a reconcile task of the queue that ended with the deletion (the
    // task's outcome is written just after its delete call returns).
    for name in ["orphan-unknown", "orphan-unnamed"] {
        let deleted = format!("deleted pod {ns}/{name} (an orphan)");
        let mut ended = None;
        for _ in 0..50 {
            ended = sqlx::query_scalar::<_, String>(
                "SELECT status FROM tasks WHERE kind = 'remove_orphan' AND message = $1",
            )
            .bind(&deleted)
            .fetch_optional(&app.state.pool)
            .await
            .expect("removal task");
            if ended.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ended.as_deref(), Some("finished"), "{deleted}");
    }
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE kind = 'remove_orphan' AND status = 'failed'",
    )
    .fetch_one(&app.state.pool)
    .await
    .expect("count");
    assert_eq!(failed, 0);
    let k = resource(&app, &token, &known).await;
    assert_eq!(k["allocation_state"], "provisioned", "{k}");
    let _ = namespaces.delete(&foreign_ns, &Default::default()).await;
}

/// `PATCH /resources/{id}` moves `expires_at` later only: 422 naming `expires_at` for a time
/// in the past, earlier than the current expiry or more than 89 days ahead; 404 for another
/// experiment's resource; 403 for a user token.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn extend_rules(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, created) = app
        .post(
            "/resources",
            &token,
            request(&image, &flavor, &["ext"], None),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let current: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(created["resources"][0]["expires_at"].clone()).expect("time");
    let path = format!("/resources/{id}");
    let at = |t: chrono::DateTime<chrono::Utc>| json!({ "expires_at": t.to_rfc3339() });
    let now = chrono::Utc::now();

    let later = current + chrono::Duration::days(1);
    let (s, moved) = app.patch(&path, &token, at(later)).await;
    assert_eq!(s, 200, "{moved}");
    let moved_to: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(moved["expires_at"].clone()).expect("time");
    assert_eq!(moved_to, later);
    for (when, says) in [
        (now - chrono::Duration::minutes(1), "future"),
        (later - chrono::Duration::minutes(5), "earlier than"),
        (now + chrono::Duration::days(90), "89 days"),
    ] {
        let (s, refused) = app.patch(&path, &token, at(when)).await;
        assert_eq!(s, 422, "{when}: {refused}");
        assert_eq!(refused["field"], "expires_at", "{refused}");
        assert!(
            refused["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{refused}"
        );
    }
    let other = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, _) = app.patch(&path, &other, at(later)).await;
    assert_eq!(s, 404);
    let (s, _) = app.patch(&path, &app.issuer.user(ALICE), at(later)).await;
    assert_eq!(s, 403);
}

/// A VM whose Keystone does not answer (nothing listens on its port) does not fail at once:
/// its task is queued again without using up attempts, saying "Keystone unreachable since …";
/// it fails only once the outage outlasts `OUTAGE_BUDGET_SECS` (4 s here), saying so.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_vm_task_waits_out_an_unreachable_keystone_within_the_budget(pool: PgPool) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let app = TestApp::start(
        pool,
        Options {
            no_kubernetes: true,
            allowed_endpoints: Some(format!("127.0.0.1:{port}")),
            extra_args: vec!["--outage-budget-secs".into(), "4".into()],
            ..Options::default()
        },
    )
    .await;
    let admin = app.issuer.user(common::ADMIN);
    let (s, image) = app
        .post(
            "/disk-images",
            &admin,
            json!({"friendly_name": "tiny", "location": "tiny", "default_username": "cirros"}),
        )
        .await;
    assert_eq!(s, 201, "{image}");
    let (s, flavor) = app
        .post(
            "/flavors",
            &admin,
            json!({"friendly_name": "m1.nano", "flavor_type": "vm", "vcpus": 1, "ram_mib": 64}),
        )
        .await;
    assert_eq!(s, 201, "{flavor}");
    let alice = app.issuer.user(ALICE);
    let yaml = format!(
        "clouds:\n  down:\n    auth:\n      auth_url: http://127.0.0.1:{port}/v3\n      username: demo\n      password: demo\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n"
    );
    let response = app
        .http
        .put(format!("{}/clouds-yaml", app.api))
        .bearer_auth(&alice)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let mut body = request(
        image["id"].as_str().expect("id"),
        flavor["id"].as_str().expect("id"),
        &["vm-down"],
        None,
    );
    body["tokens"] = json!([{ "jwt": alice }]);
    let (s, created) = app.post("/resources", &token, body).await;
    assert_eq!(s, 202, "{created}");
    let task_id = created["tasks"][0]["id"]
        .as_str()
        .expect("task")
        .to_string();

    let start = Instant::now();
    let mut waited = None;
    // Each status and message seen, with when it was first seen (for the failure message).
    let mut seen: Vec<(u128, String)> = Vec::new();
    let task = loop {
        let (_, task) = app.get(&format!("/tasks/{task_id}"), &token).await;
        let message = task["message"].as_str().unwrap_or_default().to_string();
        let state = format!("{}: {message}", task["status"]);
        if seen.last().is_none_or(|(_, last)| *last != state) {
            seen.push((start.elapsed().as_millis(), state));
        }
        if task["status"] == "failed" {
            break task;
        }
        if message.contains("Keystone unreachable since") {
            waited.get_or_insert(task.clone());
            assert!(task["attempts"].as_i64().unwrap_or(9) <= 1, "{task}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(waited) = waited else {
        panic!(
            "the task never said Keystone was unreachable; it went through:\n{}",
            seen.iter()
                .map(|(ms, state)| format!("{ms} ms: {state}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    println!("lifecycle: while waiting: {}", waited["message"]);
    println!(
        "lifecycle: failed after {} ms: {}",
        start.elapsed().as_millis(),
        task["message"]
    );
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "failed before the budget ran out"
    );
    let message = task["message"].as_str().unwrap_or_default();
    assert!(message.contains("Keystone unreachable since"), "{task}");
    assert!(
        message.contains("longer than this site waits (4 s)"),
        "{task}"
    );
}
