//! What slices-blueprint adds to the time a Pod takes to run: on the same Kubernetes API
//! server and in the same namespace (the experiment's), a direct `create Pod → Running`
//! against `POST /resources → that Pod Running`, the two alternating, each started after the
//! previous one's Pod is running (or, for direct Pods, deleted). The direct Pod is the one
//! the server made for a warm-up resource, renamed, so both paths start the same object.
//!
//! Both are timed by one watch on the namespace that runs for the whole bench (an observer
//! like a dashboard's informer): it notes when each Pod is first seen (the API server stored
//! the create) and first seen Running, so no LIST or new watch of the bench's own lands in
//! the middle of a measurement, and the time splits into "until the Pod exists" (where the
//! two paths differ) and "from stored to Running" (the cluster's work, the same Pod spec).
//!
//! Not a test: it prints figures. `bench/run` starts the server and passes:
//!   BENCH_BASE_URL, BENCH_EXP_TOKEN, BENCH_IMAGE_ID, BENCH_FLAVOR_ID, KUBECONFIG,
//!   BENCH_ITERATIONS (default 20), K8S_NAMESPACE_PREFIX (default `slices-`).

use app::ssr::backend::kubernetes::namespace_name;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_deleted};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("provision_overhead: {name} is not set (run bench/run)");
        std::process::exit(2)
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(label: &str, values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(values, 50.0);
    println!(
        "{label:<34} n={:<3} median {median:8.2} ms   p90 {:8.2} ms   min {:8.2} ms   max {:8.2} ms",
        values.len(),
        percentile(values, 90.0),
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN),
    );
    median
}

/// When the namespace's watch first saw each Pod, and first saw it Running.
#[derive(Default)]
struct Sightings {
    stored: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
}

/// One watch on `pods` for the whole bench (kube's `watcher`, which re-lists by itself after
/// a lost watch), noting [`Sightings`]; returns once its first listing is done.
async fn observe(pods: Api<Pod>) -> anyhow::Result<(Arc<Mutex<Sightings>>, Arc<Notify>)> {
    use futures::StreamExt as _;
    let seen = Arc::new(Mutex::new(Sightings::default()));
    let changed = Arc::new(Notify::new());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (task_seen, task_changed) = (seen.clone(), changed.clone());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let events = watcher(pods, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let now = Instant::now();
            let pod = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            {
                let mut seen = task_seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.stored.entry(name.clone()).or_insert(now);
                if running {
                    seen.running.entry(name).or_insert(now);
                }
            }
            task_changed.notify_waiters();
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx).await??;
    Ok((seen, changed))
}

/// Waits (at most 120 s) until the watch saw `name` Running: (first seen, seen Running).
async fn wait_running(
    seen: &Mutex<Sightings>,
    changed: &Notify,
    name: &str,
) -> anyhow::Result<(Instant, Instant)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // Made before the look, so a change between the look and the wait is not missed.
        let notified = changed.notified();
        {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(stored), Some(running)) = (seen.stored.get(name), seen.running.get(name)) {
                return Ok((*stored, *running));
            }
        }
        tokio::time::timeout_at(deadline, notified)
            .await
            .map_err(|_| anyhow::anyhow!("pod {name} not seen Running within 120 s"))?;
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = env("BENCH_BASE_URL");
    let token = env("BENCH_EXP_TOKEN");
    let image_id = env("BENCH_IMAGE_ID");
    let flavor_id = env("BENCH_FLAVOR_ID");
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let prefix = std::env::var("K8S_NAMESPACE_PREFIX").unwrap_or_else(|_| "slices-".into());
    // The same client construction as the server's backend (TCP_NODELAY on).
    let client = app::ssr::backend::kubernetes::kube_client(kube::Config::infer().await?)?;
    let http = reqwest::Client::new();
    let api = format!("{base}/apis/bi.slices.eu/v1alpha2");
    let run = std::process::id();

    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut created_ids = Vec::new();

    // A first request, not measured: it makes the experiment's namespace (and warms every
    // connection). Direct Pods then go to that same namespace, so that both kinds are
    // created and watched among the same Pods (a LIST or watch by name still reads the
    // namespace's Pods; bench/run has 100 of them there).
    let body = json!({"expires_at": expires, "resources": [
        {"friendly_name": format!("ovh-{run}-warmup"), "disk_image_id": image_id, "flavor_id": flavor_id}]});
    let warmup = post_resources(&http, &api, &token, &body).await?;
    let experiment = warmup["resources"][0]["experiment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    created_ids.push(
        warmup["resources"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    let warmup_task = warmup["tasks"][0]["id"].as_str().unwrap_or_default();
    wait_finished(&http, &api, &token, warmup_task).await?;
    let namespace = namespace_name(&prefix, &experiment);

    let direct_pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    // Direct Pods are the Pod the server made for the warm-up resource, renamed: the same
    // labels, annotations, environment and resources, so both paths ask the API server to
    // store and start the same object (a smaller Pod is less work for it at every step).
    let template = direct_pods.get(&format!("ovh-{run}-warmup")).await?;
    let direct_pod = |name: &str| Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone().map(|spec| PodSpec {
            node_name: None,
            ..spec
        }),
        status: None,
    };
    let (seen, changed) = observe(direct_pods.clone()).await?;
    // Per path, ms after the start (the create call, or the POST): first seen, seen Running.
    let (mut direct_stored, mut direct_running) = (Vec::new(), Vec::new());
    let (mut through_stored, mut through_running) = (Vec::new(), Vec::new());
    let mut answered = Vec::with_capacity(iterations);
    let mut to_task = Vec::with_capacity(iterations);
    // The two kinds alternate, so that whatever else the machine is doing (other services,
    // the API server still settling after a load phase) weighs on both alike.
    for i in 0..iterations {
        let name = format!("direct-{run}-{i}");
        let pod = direct_pod(&name);
        let started = Instant::now();
        let made = direct_pods.create(&PostParams::default(), &pod).await?;
        let (stored, running) = wait_running(&seen, &changed, &name).await?;
        direct_stored.push(ms(started, stored));
        direct_running.push(ms(started, running));
        direct_pods.delete(&name, &DeleteParams::default()).await?;
        // Each measurement starts on a quiet API server: the graceful delete (finished by the
        // test server's kubelet) is over before the next create.
        let uid = made.metadata.uid.unwrap_or_default();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(direct_pods.clone(), &name, is_deleted(&uid)),
        )
        .await??;

        // Through slices-blueprint: POST → the pod Running, and POST → task finished.
        let name = format!("ovh-{run}-{i}");
        let body = json!({"expires_at": expires, "resources": [
            {"friendly_name": name, "disk_image_id": image_id, "flavor_id": flavor_id}]});
        let started = Instant::now();
        let created = post_resources(&http, &api, &token, &body).await?;
        answered.push(started.elapsed().as_secs_f64() * 1000.0);
        let (stored, running) = wait_running(&seen, &changed, &name).await?;
        through_stored.push(ms(started, stored));
        through_running.push(ms(started, running));
        let task_id = created["tasks"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        wait_finished(&http, &api, &token, &task_id).await?;
        to_task.push(started.elapsed().as_secs_f64() * 1000.0);
        created_ids.push(
            created["resources"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let stored_to_running = |stored: &[f64], running: &[f64]| -> Vec<f64> {
        stored.iter().zip(running).map(|(s, r)| r - s).collect()
    };
    let mut direct_cluster = stored_to_running(&direct_stored, &direct_running);
    let mut through_cluster = stored_to_running(&through_stored, &through_running);

    println!(
        "provision_overhead on {} ({} iterations each; times seen by one namespace watch)",
        base, iterations
    );
    let ds = summary("direct create → Pod stored", &mut direct_stored);
    let d = summary("direct create → Running", &mut direct_running);
    summary("  of which stored → Running", &mut direct_cluster);
    summary("POST /resources answered (202)", &mut answered);
    let ts = summary("POST /resources → Pod stored", &mut through_stored);
    let t = summary("POST /resources → pod Running", &mut through_running);
    summary("  of which stored → Running", &mut through_cluster);
    summary("POST /resources → task finished", &mut to_task);
    println!(
        "until the Pod is stored, through minus direct: {:.2} ms",
        ts - ds
    );
    println!(
        "median overhead (POST → Running minus direct): {:.2} ms",
        t - d
    );

    for id in created_ids {
        let _ = http
            .delete(format!("{api}/resources/{id}"))
            .bearer_auth(&token)
            .send()
            .await;
    }
    Ok(())
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(u16, Value)> {
    let response = http.get(url).bearer_auth(token).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Polls `GET /tasks/{id}` every 2 ms until the task is `finished` (error if it `failed`).
async fn wait_finished(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    task_id: &str,
) -> anyhow::Result<()> {
    loop {
        let (_, task) = get(http, &format!("{api}/tasks/{task_id}"), token).await?;
        match task["status"].as_str() {
            Some("finished") => return Ok(()),
            Some("failed") => anyhow::bail!("task failed: {task}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// `POST /resources` with `body`: the answer, or an error unless it is 202.
async fn post_resources(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = http
        .post(format!("{api}/resources"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    anyhow::ensure!(status.as_u16() == 202, "POST /resources: {status} {answer}");
    Ok(answer)
}
