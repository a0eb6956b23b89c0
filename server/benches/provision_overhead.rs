//! What slices-blueprint adds to the time a Pod takes to run: on the same Kubernetes API
//! server and in the same namespace (the experiment's), a direct `create Pod → Running`
//! (watched) against `POST /resources → that Pod Running` (watched the same way), the two
//! alternating, each started after the previous one's Pod is running (or, for direct Pods,
//! deleted). Not a test: it prints figures. `bench/run` starts the server and passes:
//!   BENCH_BASE_URL, BENCH_EXP_TOKEN, BENCH_IMAGE_ID, BENCH_FLAVOR_ID, KUBECONFIG,
//!   BENCH_ITERATIONS (default 20), K8S_NAMESPACE_PREFIX (default `slices-`).

use app::ssr::backend::kubernetes::namespace_name;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_deleted, conditions::is_pod_running};
use kube::Api;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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

async fn wait_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(pods.clone(), name, is_pod_running()),
    )
    .await??;
    Ok(())
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

    // Direct: the same image the catalog entry names.
    let (_, image) = get(&http, &format!("{api}/disk-images/{image_id}"), &token).await?;
    let location = image["location"].as_str().unwrap_or("busybox").to_string();
    let direct_pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut direct = Vec::with_capacity(iterations);
    let mut answered = Vec::with_capacity(iterations);
    let mut through = Vec::with_capacity(iterations);
    let mut to_task = Vec::with_capacity(iterations);
    // The two kinds alternate, so that whatever else the machine is doing (other services,
    // the API server still settling after a load phase) weighs on both alike.
    for i in 0..iterations {
        let name = format!("direct-{run}-{i}");
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some(location.clone()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        };
        let started = Instant::now();
        let made = direct_pods.create(&PostParams::default(), &pod).await?;
        wait_running(&direct_pods, &name).await?;
        direct.push(started.elapsed().as_secs_f64() * 1000.0);
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
        wait_running(&direct_pods, &name).await?;
        through.push(started.elapsed().as_secs_f64() * 1000.0);
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

    println!(
        "provision_overhead on {} ({} iterations each)",
        base, iterations
    );
    let d = summary("direct create → Running", &mut direct);
    summary("POST /resources answered (202)", &mut answered);
    let t = summary("POST /resources → pod Running", &mut through);
    summary("POST /resources → task finished", &mut to_task);
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
