//! Pods on a real Kubernetes API server (../shared/k8s-testserver, or any cluster in
//! KUBECONFIG): the whole lifecycle through the API, adoption of a pod a crashed attempt
//! made, and the timeout path on a cluster whose kubelet never starts pods.

mod common;

use app::ids::{parse_id, IdKind};
use app::ssr::backend::pod_feed::{FeedGone, FeedState, PodFeed};
use app::ssr::backend::{ComputeBackend, ResourceRecord};
use app::ssr::queue::PgProgress;
use common::{experiment_id, in_an_hour, Options, TestApp, ALICE};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use sqlx::PgPool;

fn pod_request(image: &str, flavor: &str, name: &str) -> serde_json::Value {
    json!({
        "expires_at": in_an_hour(),
        "resources": [{"friendly_name": name, "disk_image_id": image, "flavor_id": flavor,
                        "userdata": "#cloud-config\nruncmd: [echo hi]"}],
        "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop"],
    })
}

async fn pods_api(app: &TestApp, experiment: &str) -> Api<Pod> {
    let client = kube::Client::try_default().await.expect("client");
    let ns = app
        .kubernetes
        .as_ref()
        .expect("kubernetes")
        .namespace_for(experiment);
    Api::namespaced(client, &ns)
}

/// The Pod runs restricted (Pod Security Standards) unless its image needs root, and its
/// namespace carries the Pod Security label, the NetworkPolicy and the ResourceQuota.
async fn assert_hardened(pod: &Pod, pods: &Api<Pod>, root: bool) {
    use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.automount_service_account_token, Some(false));
    let pod_context = spec.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_context.run_as_non_root, Some(!root));
    let security = spec.containers[0]
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(security.run_as_non_root, Some(!root));
    let namespace = pod.metadata.namespace.clone().expect("namespace");
    let client = kube::Client::try_default().await.expect("client");
    let ns = Api::<Namespace>::all(client.clone())
        .get(&namespace)
        .await
        .expect("namespace");
    let level = if root { "baseline" } else { "restricted" };
    assert_eq!(
        ns.metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some(level)
    );
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .get("slices-experiment-isolation")
        .await
        .expect("NetworkPolicy");
    let policy = policy.spec.expect("spec");
    assert_eq!(
        policy.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    let egress = serde_json::to_string(&policy.egress).expect("json");
    assert!(
        egress.contains("10.0.0.0/8") && egress.contains("\"port\":53"),
        "{egress}"
    );
    let quota = Api::<ResourceQuota>::namespaced(client, &namespace)
        .get("slices-experiment-quota")
        .await
        .expect("ResourceQuota");
    let hard = quota.spec.and_then(|s| s.hard).unwrap_or_default();
    assert!(
        hard.contains_key("pods") && hard.contains_key("limits.memory"),
        "{hard:?}"
    );
    let _ = pods;
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_pod_is_created_observed_and_deleted_through_the_api(pool: PgPool) {
    let app = TestApp::start(pool, Options::default()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);

    let (s, created) = app
        .post(
            "/resources",
            &token,
            pod_request(&image, &flavor, "qkd-node"),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let task_id = created["tasks"][0]["id"]
        .as_str()
        .expect("task")
        .to_string();
    let resource_id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let task = app.wait_task(&task_id, &token, 60).await;
    assert_eq!(task["status"].as_str(), Some("finished"), "{task}");
    assert_eq!(task["completed"].as_i64(), Some(100));
    // The shared watch of managed Pods (not a watch of its own) told the create it runs.
    let backend = app.kubernetes.clone().expect("k8s");
    assert_eq!(backend.pod_feed().state(), FeedState::Live);
    assert_eq!(backend.pod_feed().settled(), 1);

    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    assert_eq!(
        resource["allocation_state"].as_str(),
        Some("provisioned"),
        "{resource}"
    );
    assert_eq!(resource["operational_state"].as_str(), Some("ready"));
    assert_eq!(resource["details"]["pod_name"].as_str(), Some("qkd-node"));
    assert!(
        resource["details"]["pod_ip"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty()),
        "{resource}"
    );

    // The pod as Kubernetes has it: image, flavor-sized resources, ownership labels, keys.
    let pods = pods_api(&app, &exp).await;
    let pod = pods.get("qkd-node").await.expect("pod exists");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("slices.eu/resource-id"), Some(&resource_id));
    assert_eq!(labels.get("slices.eu/experiment-id"), Some(&exp));
    assert_eq!(
        labels.get("slices.eu/project-id").map(String::as_str),
        Some("proj_test_qkd")
    );
    let container = &pod.spec.as_ref().expect("spec").containers[0];
    assert_eq!(container.image.as_deref(), Some("nginx:alpine"));
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("64Mi"));
    assert_eq!(limits.get("cpu").map(|q| q.0.as_str()), Some("1"));
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert!(annotations["slices.eu/ssh-authorized-keys"].contains("alice@laptop"));
    assert!(annotations["slices.eu/userdata"].starts_with("#cloud-config"));
    // Ownership is queryable by label.
    let listed = pods
        .list(&kube::api::ListParams::default().labels(&format!("slices.eu/experiment-id={exp}")))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_hardened(&pod, &pods_api(&app, &exp).await, false).await;

    let (s, delete_task) = app
        .delete(&format!("/resources/{resource_id}"), &token)
        .await;
    assert_eq!(s, 202, "{delete_task}");
    let done = app
        .wait_task(delete_task["id"].as_str().expect("id"), &token, 60)
        .await;
    assert_eq!(done["status"].as_str(), Some("finished"), "{done}");
    assert!(
        pods.get_opt("qkd-node").await.expect("get").is_none(),
        "pod must be gone"
    );
    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    assert_eq!(
        resource["allocation_state"].as_str(),
        Some("deleted"),
        "{resource}"
    );
    // Deleted resources leave the default list but stay visible on request.
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    let (_, list) = app.get("/resources?include_deleted=true", &token).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_retried_create_adopts_the_pod_instead_of_making_a_second(pool: PgPool) {
    // The worker is off: we play a worker that created the pod and then crashed.
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("busybox").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let (_, created) = app
        .post(
            "/resources",
            &token,
            pod_request(&image, &flavor, "adopt-me"),
        )
        .await;
    let resource_id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let task_id = created["tasks"][0]["id"].as_str().expect("id").to_string();
    let uuid = parse_id(IdKind::Resource, "tld-city-bp1", &resource_id).expect("uuid");
    let record = app::ssr::rows::load_record(&app.state.pool, app.state.site(), uuid)
        .await
        .expect("record");
    let backend = app.kubernetes.clone().expect("k8s");
    let task_uuid = parse_id(IdKind::Task, "tld-city-bp1", &task_id).expect("uuid");
    let progress = PgProgress::new(pool.clone(), task_uuid, uuid, "crashed-worker");
    backend
        .create(&record, &progress)
        .await
        .expect("first attempt");
    let pods = pods_api(&app, &exp).await;
    let first_uid = pods.get("adopt-me").await.expect("pod").metadata.uid;

    // Now a real worker runs the (still queued) task: it must adopt the pod.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app::ssr::worker::run_worker(app.state.worker(), rx));
    let task = app.wait_task(&task_id, &token, 60).await;
    assert_eq!(task["status"].as_str(), Some("finished"), "{task}");
    assert_eq!(
        pods.get("adopt-me").await.expect("pod").metadata.uid,
        first_uid,
        "same pod, adopted"
    );
    let listed = pods.list(&Default::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1, "no second pod");

    // Deleting twice is fine (404 = done).
    backend.delete(&record, &progress).await.expect("delete");
    backend
        .delete(&record, &progress)
        .await
        .expect("delete again");
    assert!(pods.get_opt("adopt-me").await.expect("get").is_none());
    let _ = stop.send(true);
    let _ = worker.await;
}

/// A private API server whose fake kubelet is off: pods stay Pending forever.
struct StuckCluster {
    dir: std::path::PathBuf,
    script_dir: std::path::PathBuf,
}

impl StuckCluster {
    fn start() -> Option<Self> {
        let script_dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s-testserver");
        if !script_dir.join("start").exists() {
            return None;
        }
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()
                .map(|a| a.port())
        };
        let (api, etcd) = (free()?, free()?);
        let dir = std::env::temp_dir().join(format!("stuck-kube-{}", uuid::Uuid::now_v7()));
        let status = std::process::Command::new(script_dir.join("start"))
            .arg(&dir)
            .arg(api.to_string())
            .arg(etcd.to_string())
            .arg("--no-fake-kubelet")
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self { dir, script_dir })
    }

    fn kubeconfig(&self) -> String {
        self.dir.join("kubeconfig").display().to_string()
    }

    /// A test app on this cluster whose Pods fail after `ready_secs` without running.
    fn options(&self, ready_secs: u64) -> Options {
        Options {
            kubeconfig: Some(self.kubeconfig()),
            pod_ready_timeout_secs: Some(ready_secs),
            ..Options::default()
        }
    }
}

impl Drop for StuckCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(self.script_dir.join("stop"))
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_pod_that_never_runs_fails_its_task_and_is_removed(pool: PgPool) {
    let cluster = StuckCluster::start()
        .expect("../shared/k8s-testserver is needed to start a cluster without a kubelet");
    let app = TestApp::start(pool, cluster.options(2)).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let (_, created) = app
        .post(
            "/resources",
            &token,
            pod_request(&image, &flavor, "never-runs"),
        )
        .await;
    let task_id = created["tasks"][0]["id"].as_str().expect("id").to_string();
    let resource_id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let task = app.wait_task(&task_id, &token, 60).await;
    assert_eq!(task["status"].as_str(), Some("failed"), "{task}");
    let message = task["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not become Running within 2 s"),
        "{message}"
    );
    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    assert_eq!(
        resource["allocation_state"].as_str(),
        Some("failed"),
        "{resource}"
    );
    assert_eq!(resource["operational_state"].as_str(), Some("error"));

    // Nothing half-made is left behind (the stuck cluster completes no graceful delete, so
    // the pod is at least marked for deletion).
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("cfg");
    let client = kube::Client::try_from(cfg).expect("client");
    let ns = app.kubernetes.as_ref().expect("k8s").namespace_for(&exp);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    match pods.get_opt("never-runs").await.expect("get") {
        None => {}
        Some(p) => assert!(
            p.metadata.deletion_timestamp.is_some(),
            "pod left behind: {:?}",
            p.metadata
        ),
    }
}

/// A create gives its worker slot back while it only waits for its Pod: with one slot and a
/// cluster whose Pods never start, all three creates of a request get their Pod made and
/// wait together (holding the slot, the second would wait for the first's 30 s timeout).
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_create_waiting_for_its_pod_gives_its_worker_slot_back(pool: PgPool) {
    let cluster = StuckCluster::start()
        .expect("../shared/k8s-testserver is needed to start a cluster without a kubelet");
    let app = TestApp::start(
        pool,
        Options {
            extra_args: [
                "--worker-concurrency",
                "1",
                "--worker-slots-per-experiment",
                "3",
            ]
            .map(String::from)
            .to_vec(),
            ..cluster.options(30)
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, created) = app
        .post(
            "/resources",
            &token,
            common::resources_request(&image, &flavor, &["waits-0", "waits-1", "waits-2"]),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let tasks: Vec<String> = created["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut waiting = 0;
        for id in &tasks {
            let (_, task) = app.get(&format!("/tasks/{id}"), &token).await;
            if task["status"] == "running"
                && task["message"] == "pod created; waiting for it to run"
            {
                waiting += 1;
            }
        }
        if waiting == tasks.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {waiting} of 3 creates got their Pod made with one worker slot in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A feed that cannot watch (here: nothing listens at the API server's address; in a
/// cluster: no permission to watch Pods in all namespaces) is `Down`, and a waiting create
/// is sent to watch its own Pod instead of waiting on it.
#[tokio::test]
async fn a_pod_feed_that_cannot_watch_sends_waiters_to_their_own_watch() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().expect("uri"));
    let client = app::ssr::backend::kubernetes::kube_client(config).expect("client");
    let feed = PodFeed::new(client, "app.kubernetes.io/managed-by=slices-blueprint");
    let waiter = feed.subscribe("ns", "pod").await;
    assert_eq!(feed.state(), FeedState::Down);
    let answer = waiter.settle("uid", |_| true).await;
    assert_eq!(answer.err(), Some(FeedGone));
    assert_eq!(feed.settled(), 0);
}

/// What a backend reported, recorded instead of written to Postgres.
#[derive(Default)]
struct RecordedProgress {
    calls: std::sync::Mutex<Vec<(i16, String)>>,
    waiting: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl app::ssr::backend::Progress for RecordedProgress {
    async fn report(&self, completed: i16, message: &str) {
        self.calls
            .lock()
            .expect("lock")
            .push((completed, message.to_string()));
    }

    async fn stage(
        &self,
        completed: i16,
        _allocation: app::model::AllocationState,
        _operational: app::model::OperationalState,
        message: &str,
        _details: Option<&app::model::BackendDetails>,
    ) {
        self.report(completed, message).await;
    }

    async fn waiting(&self) {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A Pod resource as the worker would hand it to the adapter.
fn adapter_record(experiment: &str, name: &str, tags: &[&str]) -> ResourceRecord {
    let id = uuid::Uuid::now_v7();
    ResourceRecord {
        id,
        typed_id: app::ids::format_id(IdKind::Resource, "tld-city-bp1", id),
        experiment_id: experiment.into(),
        project_id: "project_test".into(),
        requested_by: Some(ALICE.into()),
        friendly_name: name.into(),
        flavor_type: app::model::FlavorType::K8s,
        allocation_state: app::model::AllocationState::Provisioning,
        image_location: "nginx:alpine".into(),
        image_name: "nginx".into(),
        image_tags: tags.iter().map(|t| t.to_string()).collect(),
        image_cluster_id: "default".into(),
        default_username: String::new(),
        vcpus: 1,
        ram_mib: 64,
        disk_mb: 0,
        flavor_name: "small".into(),
        flavor_source_id: None,
        network_name: None,
        userdata: None,
        ssh_authorized_keys: Vec::new(),
        details: Default::default(),
        pod: Default::default(),
    }
}

/// The Kubernetes adapter on its own: no database, no application state, a fake `Progress`
/// (the port), and the real API server.
#[tokio::test]
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
async fn the_kubernetes_adapter_runs_with_a_fake_progress() {
    let config = kube::Config::infer().await.expect("KUBECONFIG");
    let client = || app::ssr::backend::kubernetes::kube_client(config.clone()).expect("client");
    let backend = app::ssr::backend::kubernetes::KubernetesBackend::new(
        client(),
        client(),
        "slices-adapter-",
        std::time::Duration::from_secs(60),
    );
    // An image that must run as root: the Pod and its namespace are relaxed to baseline.
    let record = adapter_record(&experiment_id(), "fake-progress", &["needs-root"]);
    let progress = RecordedProgress::default();
    let details = backend.create(&record, &progress).await.expect("create");
    assert_eq!(details.pod_name.as_deref(), Some("fake-progress"));
    assert_eq!(details.phase.as_deref(), Some("Running"));
    let pods: Api<Pod> = Api::namespaced(
        kube::Client::try_default().await.expect("client"),
        details.namespace.as_deref().expect("namespace"),
    );
    let pod = pods.get("fake-progress").await.expect("pod");
    assert_hardened(&pod, &pods, true).await;
    backend.delete(&record, &progress).await.expect("delete");
    let calls = progress.calls.lock().expect("lock").clone();
    let steps: Vec<i16> = calls.iter().map(|(c, _)| *c).collect();
    // The create writes its "waiting" step only when its Pod took longer than STAGE_AFTER
    // (its outcome then says ready); the delete reports its two.
    let deleting = calls.len().saturating_sub(2);
    assert!(deleting <= 1, "{calls:?}");
    if deleting == 1 {
        assert_eq!(
            calls[0],
            (50, "pod created; waiting for it to run".to_string())
        );
    }
    assert_eq!(&steps[deleting..], &[50, 100], "{calls:?}");
    assert_eq!(
        calls[deleting].1,
        "pod deletion requested; waiting for it to go"
    );
    assert_eq!(calls[deleting + 1].1, "pod deleted");
    // The create said when it only waited (the worker gives its slot back then).
    assert_eq!(
        progress.waiting.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        backend.health().starts_with("connected"),
        "{}",
        backend.health()
    );
}

/// Many creates at once (here 120 in one namespace) each wait on the shared watch for their
/// own Pod only: every one is answered by the feed, none falls back to a watch of its own
/// (a broadcast of every event to every waiter made waiters fall behind in a burst).
#[tokio::test]
#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
async fn concurrent_creates_all_settle_on_the_shared_pod_feed() {
    const PODS: usize = 120;
    let config = kube::Config::infer().await.expect("KUBECONFIG");
    let client = || app::ssr::backend::kubernetes::kube_client(config.clone()).expect("client");
    let backend = std::sync::Arc::new(app::ssr::backend::kubernetes::KubernetesBackend::new(
        client(),
        client(),
        "slices-feed-",
        std::time::Duration::from_secs(120),
    ));
    let experiment = experiment_id();
    let progress = std::sync::Arc::new(RecordedProgress::default());
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..PODS {
        let (backend, progress) = (backend.clone(), progress.clone());
        let record = adapter_record(&experiment, &format!("burst-{i:03}"), &[]);
        creates.spawn(async move {
            let created = backend.create(&record, progress.as_ref()).await;
            (record, created)
        });
    }
    let mut records = Vec::new();
    while let Some(done) = creates.join_next().await {
        let (record, created) = done.expect("join");
        let details =
            created.unwrap_or_else(|e| panic!("create {}: {}", record.friendly_name, e.message));
        assert_eq!(details.phase.as_deref(), Some("Running"));
        records.push(record);
    }
    assert_eq!(backend.pod_feed().settled(), PODS as u64);
    assert_eq!(
        progress.waiting.load(std::sync::atomic::Ordering::Relaxed),
        PODS
    );
    let namespace = backend.namespace_for(&experiment);
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client())
        .delete(&namespace, &kube::api::DeleteParams::default())
        .await;
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_pods_log_is_read_whole_tailed_and_followed_until_the_pod_goes(pool: PgPool) {
    let app = TestApp::start(pool, Options::default()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let (s, created) = app
        .post("/resources", &token, pod_request(&image, &flavor, "kme-a"))
        .await;
    assert_eq!(s, 202, "{created}");
    let task_id = created["tasks"][0]["id"].as_str().expect("task");
    let id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let task = app.wait_task(task_id, &token, 60).await;
    assert_eq!(task["status"].as_str(), Some("finished"), "{task}");
    let logs = format!("/resources/{id}/logs");

    // The whole log so far, as the kubelet tells it.
    let (s, whole) = app.get(&logs, &token).await;
    assert_eq!(s, 200, "{whole}");
    let whole = whole.as_str().expect("text/plain").to_string();
    assert!(
        whole.starts_with("starting container main image nginx:alpine"),
        "{whole}"
    );
    // The test kubelet writes a heartbeat every 2 s: wait for two, then ask for the last one.
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let (s, tail) = app.get(&format!("{logs}?tail_lines=1"), &token).await;
    assert_eq!(s, 200, "{tail}");
    let tail = tail.as_str().expect("text").trim_end().to_string();
    assert!(
        tail.starts_with("heartbeat ") && !tail.contains('\n'),
        "{tail:?}"
    );
    let (_, stamped) = app
        .get(&format!("{logs}?tail_lines=1&timestamps=true"), &token)
        .await;
    let stamped = stamped.as_str().expect("text").to_string();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamped.split(' ').next().unwrap_or_default()).is_ok(),
        "{stamped:?}"
    );

    // Bad queries name their field; another experiment sees nothing.
    for (query, field) in [
        ("tail_lines=0", "tail_lines"),
        ("since_seconds=0", "since_seconds"),
        ("container=sidecar", "container"),
        ("container=Not_A_Name", "container"),
    ] {
        let (s, err) = app.get(&format!("{logs}?{query}"), &token).await;
        assert_eq!(
            (s, err["field"].as_str()),
            (422, Some(field)),
            "{query}: {err}"
        );
    }
    let (_, err) = app.get(&format!("{logs}?container=sidecar"), &token).await;
    assert!(
        err["message"].as_str().unwrap_or_default().contains("main")
            || err.to_string().contains("main"),
        "{err}"
    );
    let other = app.issuer.experiment(&experiment_id(), ALICE);
    let (s, _) = app.get(&logs, &other).await;
    assert_eq!(s, 404);

    // Followed: server-sent events, one per line, new heartbeats as they come, and the end
    // of the stream when the Pod is deleted.
    let mut response = app
        .http
        .get(format!("{}{logs}?follow=true&tail_lines=1", app.api))
        .bearer_auth(&token)
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut seen = String::new();
    let started = std::time::Instant::now();
    while seen.matches("data: heartbeat").count() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no new heartbeats followed: {seen:?}"
        );
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .expect("a chunk in time")
            .expect("read")
            .expect("the stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (s, _) = app.delete(&format!("/resources/{id}"), &token).await;
    assert_eq!(s, 202);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the followed log outlived its Pod");
    // Gone: no log to read any more (409 with the reason, not an error of ours).
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..60 {
        last = app.get(&logs, &token).await;
        if last.0 == 409 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(last.0, 409, "{}", last.1);
}
