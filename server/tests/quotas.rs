//! Per-experiment quotas and fair worker slots (issue 11), on the real router, database and
//! worker. The fairness test stands a backend in for Kubernetes whose creates for one
//! experiment never finish (50 stuck pods), so what is measured is the worker's sharing, not a
//! cluster's speed.

mod common;

use app::model::BackendDetails;
use app::ssr::backend::{BackendError, ComputeBackend, Progress, ResourceRecord};
use common::{experiment_id, resources_request, Options, TestApp, ADMIN, ALICE, BOB};
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A backend whose creates for `stuck_experiment` wait forever (counted), and whose other
/// creates and deletes succeed at once.
struct StuckFor {
    stuck_experiment: String,
    stuck_now: AtomicUsize,
}

#[async_trait::async_trait]
impl ComputeBackend for StuckFor {
    async fn create(
        &self,
        resource: &ResourceRecord,
        _progress: &dyn Progress,
    ) -> Result<BackendDetails, BackendError> {
        if resource.experiment_id == self.stuck_experiment {
            self.stuck_now.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Ok(BackendDetails::default())
    }

    async fn delete(
        &self,
        _resource: &ResourceRecord,
        _progress: &dyn Progress,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    fn health(&self) -> String {
        "stand-in".into()
    }
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn one_experiments_stuck_pods_do_not_delay_anothers(pool: PgPool) {
    let stuck = experiment_id();
    let backend = Arc::new(StuckFor {
        stuck_experiment: stuck.clone(),
        stuck_now: AtomicUsize::new(0),
    });
    let app = TestApp::start(
        pool,
        Options {
            kubernetes_backend: Some(backend.clone()),
            no_kubernetes: true,
            // The test app's four slots; one experiment may hold three of them (the default,
            // WORKER_CONCURRENCY − 1).
            ..Options::default()
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let a = app.issuer.experiment(&stuck, ALICE);
    let (s, body) = app
        .post(
            "/resources",
            &a,
            resources_request(&image, &flavor, &names("a", 50)),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    // Give A's tasks every chance to take the slots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backend.stuck_now.load(Ordering::SeqCst),
        3,
        "A holds its share only"
    );

    let b = app.issuer.experiment(&experiment_id(), BOB);
    let started = std::time::Instant::now();
    let (s, body) = app
        .post(
            "/resources",
            &b,
            resources_request(&image, &flavor, &names("b", 1)),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let task = body["tasks"][0]["id"]
        .as_str()
        .expect("task id")
        .to_string();
    let done = app.wait_task(&task, &b, 10).await;
    assert_eq!(done["status"], "finished", "{done}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "B waited {waited:?}");
    // Still three: A never got the fourth slot, not even after B's task ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.stuck_now.load(Ordering::SeqCst), 3);
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn an_experiment_cannot_go_past_its_quota(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            no_kubernetes: true,
            kubernetes_backend: Some(Arc::new(StuckFor {
                stuck_experiment: String::new(),
                stuck_now: AtomicUsize::new(0),
            })),
            extra_args: vec![
                "--quota-resources-per-experiment".into(),
                "5".into(),
                "--quota-vcpus-per-experiment".into(),
                "8".into(),
                "--quota-ram-mib-per-experiment".into(),
                "1024".into(),
            ],
            ..Options::default()
        },
    )
    .await;
    let (image, small) = app.k8s_catalog("nginx:alpine").await;
    let admin = app.issuer.user(ADMIN);
    let flavor = |name: &str, vcpus: u32, ram: u32| json!({"friendly_name": name, "flavor_type": "k8s", "vcpus": vcpus, "ram_mib": ram});
    let (_, big_cpu) = app.post("/flavors", &admin, flavor("cpu6", 6, 64)).await;
    let (_, big_ram) = app.post("/flavors", &admin, flavor("ram900", 1, 900)).await;
    let big_cpu = big_cpu["id"].as_str().expect("id").to_string();
    let big_ram = big_ram["id"].as_str().expect("id").to_string();

    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    // Each step: names prefix, count, flavor, expected status, words of the answer.
    let steps: [(&str, usize, &str, u16, &[&str]); 5] = [
        // Six at once: over the 5 live resources, nothing stored.
        (
            "n",
            6,
            &small,
            422,
            &[
                "resources",
                "QUOTA_RESOURCES_PER_EXPERIMENT",
                "the limit is 5",
            ],
        ),
        // 1 vCPU + 6 vCPUs = 7 ≤ 8; a second 6-vCPU pod is over.
        ("s", 1, &small, 202, &[]),
        ("c", 1, &big_cpu, 202, &[]),
        (
            "c2",
            1,
            &big_cpu,
            422,
            &["holds 7 vCPUs", "QUOTA_VCPUS_PER_EXPERIMENT"],
        ),
        // RAM: 64 + 64 + 900 > 1024.
        (
            "r",
            1,
            &big_ram,
            422,
            &["MiB of RAM", "QUOTA_RAM_MIB_PER_EXPERIMENT"],
        ),
    ];
    for (prefix, count, flavor, expected, words) in steps {
        let (s, body) = app
            .post(
                "/resources",
                &token,
                resources_request(&image, flavor, &names(prefix, count)),
            )
            .await;
        assert_eq!(s, expected, "{prefix}: {body}");
        for word in words {
            assert!(
                body.to_string().contains(word),
                "{prefix}: `{word}` not in {body}"
            );
        }
    }
    // Only the two accepted requests stored anything.
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // Another experiment has its own quota.
    let other = app.issuer.experiment(&experiment_id(), BOB);
    let (s, body) = app
        .post(
            "/resources",
            &other,
            resources_request(&image, &big_cpu, &names("o", 1)),
        )
        .await;
    assert_eq!(s, 202, "{body}");

    // Concurrent requests of one experiment cannot slip under a cap together: it holds 7
    // vCPUs of 8; five 1-vCPU requests at once → exactly one accepted.
    let calls = (0..5).map(|i| {
        let (app, token, image, small) = (&app, &token, &image, &small);
        async move {
            app.post(
                "/resources",
                token,
                resources_request(image, small, &[format!("p-{i}")]),
            )
            .await
            .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    assert_eq!(accepted, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 202 || s == 422),
        "{statuses:?}"
    );
}
