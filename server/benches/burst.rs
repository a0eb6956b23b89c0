//! The 1,000-Pod burst (issue 12): `BENCH_BURST_PODS` Pods (default 1000) asked for in
//! requests of 50 (the largest a request may be), one per experiment, all sent at once; the
//! time until every one of them runs, the resources' end states (none lost), and the server's
//! peak memory (VmHWM, and VmRSS sampled every 100 ms). Beside it, the same number of the same
//! Pod created directly on the same API server by 20 parallel clients (50 each, one after the
//! other), timed the same way. The direct Pod is the server's Pod spec without `nodeName`
//! (which the scheduler set), so both go through scheduling.
//!
//! Both are timed by one watch of the cluster's Pods (an observer like a dashboard's
//! informer): from the moment the requests (or creates) start until the watch has seen the
//! last Pod `Running`. The direct Pod is the one the server made for a warm-up resource,
//! renamed, without our labels, in a namespace of its own (so the reconciler leaves it alone).
//!
//! Each phase gets an API server of its own when `BENCH_DIRECT_KUBECONFIG` names a second,
//! fresh test server (bench/run starts one): the test server's fake scheduler and kubelet
//! slow down after every burst of 1,000 Pods it has seen, also once they are deleted (a phase
//! run second on one API server measured 2 s and more slower than the same phase run first),
//! so two phases on one API server compare its age as much as the two paths. Each cluster
//! first runs one warm-up Pod, so both clients have their connections open. Without the
//! variable both phases share KUBECONFIG's API server, the direct one first, its Pods deleted
//! and gone before the requests are sent, and the report says so.
//!
//! `BENCH_DIRECT_WATCH=1` gives the direct clients a watch of every Pod of their own (what a
//! client that must know when its Pods run keeps, like the server's shared Pod feed): the
//! API server then sends each Pod event to two watchers in both phases.
//!
//! Not a test: it prints figures. `bench/run` starts the server and passes BENCH_BASE_URL,
//! BENCH_SERVER_BIN (its `dev-token` mints the tokens), BENCH_SERVER_PID, KUBECONFIG,
//! BENCH_DIRECT_KUBECONFIG, K8S_NAMESPACE_PREFIX (default `slices-`) and BENCH_BURST_PODS; the
//! bench makes its own k8s flavor and image.

mod common;
#[path = "common/pods.rs"]
mod pods;
#[path = "common/prometheus.rs"]
mod prometheus;

use app::ssr::backend::kubernetes::namespace_name;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::Api;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PER_REQUEST: usize = 50;
const DIRECT_CLIENTS: usize = 20;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("burst: {name} is not set (run bench/run)");
        std::process::exit(2)
    })
}

/// VmRSS / VmHWM of `pid` in KiB.
fn proc_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn resources(image: &str, flavor: &str, tag: &str, n: usize) -> Value {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"friendly_name": format!("{tag}-{i:02}"), "disk_image_id": image, "flavor_id": flavor}))
        .collect();
    let expires = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    json!({"expires_at": expires, "resources": list})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = env("BENCH_BASE_URL");
    let bin = env("BENCH_SERVER_BIN");
    let pid = env("BENCH_SERVER_PID");
    let prefix = std::env::var("K8S_NAMESPACE_PREFIX").unwrap_or_else(|_| "slices-".into());
    let total: usize = std::env::var("BENCH_BURST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let experiments = total.div_ceil(PER_REQUEST);
    let api = format!("{base}/apis/bi.slices.eu/v1alpha2");
    let http = reqwest::Client::new();
    let (image, flavor) =
        pods::k8s_catalog(&http, &api, &common::admin_token(&bin)?, "burst").await?;
    let client = kube::Client::try_default().await?;
    let (running, changed) = pods::observe(client.clone()).await?;
    let run = &app::ids::encode_suffix(uuid::Uuid::now_v7())[20..];
    let mint = |i: usize| {
        common::dev_token(
            &bin,
            &[
                "experiment",
                "--experiment-id",
                &format!("exp_dev.local_burst{run}{i}"),
                "--project-id",
                "proj_dev.local_qkd",
                "--user-id",
                "user_dev.local_alice",
            ],
        )
    };

    // Warm-up: one resource through the server, whose Pod the direct path copies.
    let warm = mint(experiments)?;
    let warm_ns = namespace_name(&prefix, &format!("exp_dev.local_burst{run}{experiments}"));
    let answer: Value = common::answer(
        http.post(format!("{api}/resources"))
            .bearer_auth(&warm)
            .json(&resources(&image, &flavor, "warm", 1)),
        "POST /resources (warm-up)",
    )
    .await?;
    anyhow::ensure!(answer["resources"].as_array().is_some_and(|r| r.len() == 1));
    pods::all_running(
        &running,
        &changed,
        &HashSet::from([warm_ns.clone()]),
        1,
        Duration::from_secs(120),
    )
    .await?;
    let mut template = Api::<Pod>::namespaced(client.clone(), &warm_ns)
        .get("warm-00")
        .await?;
    // As the server sent it, not as the scheduler left it: a Pod that arrives with its node
    // already set skips the scheduler's binding, which the server's Pods go through.
    if let Some(spec) = template.spec.as_mut() {
        spec.node_name = None;
    }

    // Direct: the same Pod, 20 clients creating 50 each, on an API server of its own when
    // there is one.
    let own_cluster = std::env::var_os("BENCH_DIRECT_KUBECONFIG");
    let direct_client = match &own_cluster {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Client::try_from(
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?,
            )?
        }
        None => client.clone(),
    };
    let (direct_running, direct_changed) = match own_cluster {
        Some(_) => pods::observe(direct_client.clone()).await?,
        None => (running.clone(), changed.clone()),
    };
    let direct_ns = format!("burst-direct-{run}");
    create_namespace(&direct_client, &direct_ns).await?;
    let direct_pod = |name: String| Pod {
        metadata: ObjectMeta {
            name: Some(name),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        ..Pod::default()
    };
    if own_cluster.is_some() {
        // The same warm-up as the server's cluster had: one Pod, Running, then gone.
        let warm_ns = format!("burst-warm-{run}");
        create_namespace(&direct_client, &warm_ns).await?;
        Api::<Pod>::namespaced(direct_client.clone(), &warm_ns)
            .create(&PostParams::default(), &direct_pod("warm-00".into()))
            .await?;
        pods::all_running(
            &direct_running,
            &direct_changed,
            &HashSet::from([warm_ns]),
            1,
            Duration::from_secs(120),
        )
        .await?;
    }
    // BENCH_DIRECT_WATCH=1: the direct clients also keep one watch of every Pod (the informer
    // a client needs to know when its Pods run, as the server's Pod feed does for its
    // creates); without it only the bench's observer watches them.
    let direct_watch = std::env::var("BENCH_DIRECT_WATCH").is_ok_and(|v| v == "1");
    if direct_watch {
        pods::observe(direct_client.clone()).await?;
    }
    let counted = api_requests(&direct_client).await;
    let direct_kubeconfig = std::env::var_os("BENCH_DIRECT_KUBECONFIG")
        .or_else(|| std::env::var_os("KUBECONFIG"))
        .map(std::path::PathBuf::from);
    let cpu_before = Cpu::read(&pid, direct_kubeconfig.as_deref());
    let start = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..DIRECT_CLIENTS {
        let pods: Api<Pod> = Api::namespaced(direct_client.clone(), &direct_ns);
        let share = total / DIRECT_CLIENTS + usize::from(c < total % DIRECT_CLIENTS);
        let made: Vec<Pod> = (0..share)
            .map(|i| direct_pod(format!("d{c:02}-{i:03}")))
            .collect();
        creators.spawn(async move {
            for pod in made {
                pods.create(&PostParams::default(), &pod).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = creators.join_next().await {
        done??;
    }
    pods::all_running(
        &direct_running,
        &direct_changed,
        &HashSet::from([direct_ns.clone()]),
        total,
        Duration::from_secs(600),
    )
    .await?;
    let direct = start.elapsed();
    let direct_cpu = Cpu::read(&pid, direct_kubeconfig.as_deref()).since(&cpu_before);
    let direct_requests = since(&counted, &api_requests(&direct_client).await);
    // On one shared API server the direct Pods go before the second phase starts (its fake
    // scheduler and kubelet slow down with every Pod that exists).
    remove_namespace(&direct_client, &direct_ns).await?;

    // Through slices-blueprint: one request of 50 per experiment, all at once.
    let tokens = (0..experiments)
        .map(mint)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let namespaces: HashSet<String> = (0..experiments)
        .map(|i| namespace_name(&prefix, &format!("exp_dev.local_burst{run}{i}")))
        .collect();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak_rss = {
        let (sampling, pid) = (sampling.clone(), pid.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_kb(&pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let rss_before = proc_kb(&pid, "VmRSS:");
    let counted = api_requests(&client).await;
    let through_kubeconfig = std::env::var_os("KUBECONFIG").map(std::path::PathBuf::from);
    let cpu_before = Cpu::read(&pid, through_kubeconfig.as_deref());
    let start = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let n = (total - i * PER_REQUEST).min(PER_REQUEST);
        let request = http
            .post(format!("{api}/resources"))
            .bearer_auth(token)
            .json(&resources(&image, &flavor, "b", n));
        requests.spawn(async move { common::answer::<Value>(request, "POST /resources").await });
    }
    while let Some(done) = requests.join_next().await {
        done??;
    }
    let accepted = start.elapsed();
    pods::all_running(
        &running,
        &changed,
        &namespaces,
        total,
        Duration::from_secs(600),
    )
    .await?;
    let through = start.elapsed();
    let through_cpu = Cpu::read(&pid, through_kubeconfig.as_deref()).since(&cpu_before);
    let through_requests = since(&counted, &api_requests(&client).await);
    // Every resource ends provisioned (the tasks record it just after the Pod runs).
    let mut provisioned = 0;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(60) {
        provisioned = 0;
        for token in &tokens {
            let list: Vec<Value> = common::answer(
                http.get(format!("{api}/resources?limit=500"))
                    .bearer_auth(token),
                "GET /resources",
            )
            .await?;
            provisioned += list
                .iter()
                .filter(|r| r["allocation_state"] == "provisioned")
                .count();
        }
        if provisioned == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = peak_rss.await.unwrap_or(0);
    let hwm = proc_kb(&pid, "VmHWM:");

    println!("burst: {total} Pods, {experiments} requests of {PER_REQUEST} sent at once");
    println!(
        "  API servers: {}",
        if std::env::var_os("BENCH_DIRECT_KUBECONFIG").is_some() {
            "one fresh test server per phase (each after one warm-up Pod)"
        } else {
            "one for both phases, direct first (the second phase meets an older API server)"
        }
    );
    println!(
        "  direct (20 clients x {}{}):        all Running after {:7.2} s",
        total / DIRECT_CLIENTS,
        if direct_watch { ", + their watch" } else { "" },
        direct.as_secs_f64()
    );
    println!(
        "  through slices-blueprint:        all Running after {:7.2} s (all 202 after {:.2} s)",
        through.as_secs_f64(),
        accepted.as_secs_f64()
    );
    println!(
        "  ratio through / direct:          {:7.2}",
        through.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "  lost: {}  (provisioned {provisioned} of {total})",
        total - provisioned.min(total)
    );
    println!(
        "  server memory: VmRSS {:.1} MB before, peak {:.1} MB sampled, VmHWM {:.1} MB",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("  CPU seconds until all Running (/proc/PID/stat utime + stime):");
    println!(
        "    direct:  API server (miniapi + etcd) {:.2}, the bench's 20 clients {:.2}",
        direct_cpu.api_server, direct_cpu.bench
    );
    println!(
        "    through: API server (miniapi + etcd) {:.2}, slices-blueprint {:.2}, PostgreSQL (all its processes) {:.2}, the bench {:.2}",
        through_cpu.api_server, through_cpu.server, through_cpu.postgres, through_cpu.bench
    );
    println!(
        "  API server requests until all Running (apiserver_request_total; verb resource code):"
    );
    println!("    direct:  {}", direct_requests);
    println!("    through: {}", through_requests);
    Ok(())
}

/// Requests the API server has served, by `VERB resource[/subresource] code`, from its
/// `apiserver_request_total` counter (`/metrics`); empty when it does not expose it.
async fn api_requests(client: &kube::Client) -> std::collections::BTreeMap<String, f64> {
    let mut counts = std::collections::BTreeMap::new();
    let Ok(request) = axum::http::Request::get("/metrics").body(Vec::new()) else {
        return counts;
    };
    let Ok(text) = client.request_text(request).await else {
        return counts;
    };
    for (labels, value) in prometheus::samples(&text, "apiserver_request_total") {
        let label = |name: &str| labels.get(name).map_or("", String::as_str);
        let mut resource = label("resource").to_string();
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        let key = format!("{} {} {}", label("verb"), resource, label("code"));
        *counts.entry(key).or_insert(0.0) += value;
    }
    counts
}

/// What `after` counted more than `before`, as `VERB resource code: n` items.
fn since(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(key, n)| {
            let more = n - before.get(key).copied().unwrap_or(0.0);
            (more >= 1.0).then(|| format!("{key}: {more:.0}"))
        })
        .collect();
    if parts.is_empty() {
        "(not exposed)".into()
    } else {
        parts.join(", ")
    }
}

/// CPU seconds used so far (user + system) by the processes a phase keeps busy.
#[derive(Debug, Default)]
struct Cpu {
    /// The API test server whose kubeconfig was given: its `miniapi.pid` and `etcd.pid` (in the
    /// kubeconfig's folder, where `../shared/k8s-testserver/start` writes them).
    api_server: f64,
    /// The release server (BENCH_SERVER_PID).
    server: f64,
    /// Every process named `postgres` (the server's connections are among them).
    postgres: f64,
    /// This bench (the direct phase's clients; the observer's watch in both).
    bench: f64,
}

impl Cpu {
    fn read(server_pid: &str, kubeconfig: Option<&std::path::Path>) -> Self {
        let from_file = |name: &str| {
            kubeconfig
                .and_then(|k| k.parent())
                .and_then(|dir| std::fs::read_to_string(dir.join(name)).ok())
                .map_or(0.0, |pid| cpu_seconds(pid.trim()))
        };
        let postgres = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "postgres")
            })
            .map(|pid| cpu_seconds(&pid))
            .sum();
        Cpu {
            api_server: from_file("miniapi.pid") + from_file("etcd.pid"),
            server: cpu_seconds(server_pid),
            postgres,
            bench: cpu_seconds("self"),
        }
    }

    /// What was used since `before` (PostgreSQL connections that ended meanwhile are missed).
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            api_server: self.api_server - before.api_server,
            server: self.server - before.server,
            postgres: (self.postgres - before.postgres).max(0.0),
            bench: self.bench - before.bench,
        }
    }
}

/// utime + stime of `/proc/<pid>/stat` in seconds (clock ticks of USER_HZ, 100 on Linux);
/// 0 when the process is gone.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); what follows the name starts
    // with field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// Creates the namespace `name`.
async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Deletes `namespace` and waits (at most 120 s) until the API server has removed it with
/// everything in it and sends no more deletes.
async fn remove_namespace(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(namespace, &DeleteParams::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while namespaces.get_opt(namespace).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "namespace {namespace} still there after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The API server's namespace controller may still be deleting (its requests show in
    // /metrics): wait until a second passes without one.
    let deletes = |counts: &std::collections::BTreeMap<String, f64>| -> f64 {
        counts
            .iter()
            .filter(|(key, _)| key.starts_with("DELETE "))
            .map(|(_, n)| n)
            .sum()
    };
    let mut last = deletes(&api_requests(client).await);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = deletes(&api_requests(client).await);
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}
