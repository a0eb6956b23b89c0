//! The 1,000-Pod burst (issue 12): `BENCH_BURST_PODS` Pods (default 1000) asked for in
//! requests of 50 (the largest a request may be), one per experiment, all sent at once; the
//! time until every one of them runs, the resources' end states (none lost), and the server's
//! peak memory (VmHWM, and VmRSS sampled every 100 ms). Beside it, the same number of the same
//! Pod created directly on the same API server by 20 parallel clients (50 each, one after the
//! other), timed the same way. The direct Pod is the server's Pod (spec, labels and
//! annotations) without `nodeName` (which the scheduler set), so both go through scheduling.
//!
//! Both are timed by one watch of the cluster's Pods (an observer like a dashboard's
//! informer): from the moment the requests (or creates) start until the watch has seen the
//! last Pod `Running`. The direct Pod is the one the server made for a warm-up resource,
//! renamed, in a namespace of its own; on an API server the server shares it goes without our
//! labels (so the reconciler leaves it alone).
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
//! `BENCH_BURST_ORDER=through-first` runs the requests first and the direct creates second
//! (only with an API server per phase; bench/run alternates the order over its rounds).
//!
//! `BENCH_PPROF_DIR=DIR` also takes a CPU profile of each phase's API test server (Go's
//! `/debug/pprof/profile`, `BENCH_PPROF_SECS` s, default 12, from the phase's start, by curl)
//! into `DIR/direct.pb.gz` and `DIR/through.pb.gz`, to compare with
//! `go tool pprof -top -diff_base DIR/direct.pb.gz DIR/through.pb.gz`.
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

/// What one phase measured.
struct Phase {
    /// From the first request (or create) until the watch saw the last Pod Running.
    took: Duration,
    cpu: Cpu,
    requests: String,
}

/// The through phase's extra figures.
struct Through {
    phase: Phase,
    /// Until every 202 came back.
    accepted: Duration,
    provisioned: usize,
    rss_before: u64,
    peak: u64,
}

/// One cluster the bench watches: its client, its kubeconfig (for the CPU figures and the
/// profile) and its watch of every Pod.
struct Cluster {
    client: kube::Client,
    kubeconfig: Option<std::path::PathBuf>,
    running: pods::Running,
    changed: Arc<tokio::sync::Notify>,
}

/// What both phases share.
struct Bench {
    base: String,
    bin: String,
    pid: String,
    prefix: String,
    total: usize,
    experiments: usize,
    run: String,
    http: reqwest::Client,
    image: String,
    flavor: String,
}

impl Bench {
    fn api(&self) -> String {
        format!("{}/apis/bi.slices.eu/v1alpha2", self.base)
    }

    /// An experiment token for the burst's experiment `i` (`experiments` is the warm-up's).
    fn mint(&self, i: usize) -> anyhow::Result<String> {
        common::dev_token(
            &self.bin,
            &[
                "experiment",
                "--experiment-id",
                &format!("exp_dev.local_burst{}{i}", self.run),
                "--project-id",
                "proj_dev.local_qkd",
                "--user-id",
                "user_dev.local_alice",
            ],
        )
    }

    fn namespace(&self, i: usize) -> String {
        namespace_name(&self.prefix, &format!("exp_dev.local_burst{}{i}", self.run))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = env("BENCH_BASE_URL");
    let bin = env("BENCH_SERVER_BIN");
    let total: usize = std::env::var("BENCH_BURST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let http = reqwest::Client::new();
    let api = format!("{base}/apis/bi.slices.eu/v1alpha2");
    let (image, flavor) =
        pods::k8s_catalog(&http, &api, &common::admin_token(&bin)?, "burst").await?;
    let bench = Bench {
        base,
        bin,
        pid: env("BENCH_SERVER_PID"),
        prefix: std::env::var("K8S_NAMESPACE_PREFIX").unwrap_or_else(|_| "slices-".into()),
        total,
        experiments: total.div_ceil(PER_REQUEST),
        run: app::ids::encode_suffix(uuid::Uuid::now_v7())[20..].to_string(),
        http,
        image,
        flavor,
    };
    let client = kube::Client::try_default().await?;
    let (running, changed) = pods::observe(client.clone()).await?;
    let server_cluster = Cluster {
        client,
        kubeconfig: std::env::var_os("KUBECONFIG").map(std::path::PathBuf::from),
        running,
        changed,
    };
    let template = warm_up(&bench, &server_cluster).await?;
    let own_cluster = std::env::var_os("BENCH_DIRECT_KUBECONFIG");
    let direct_cluster = match &own_cluster {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let options = kube::config::KubeConfigOptions::default();
            let client = kube::Client::try_from(
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?,
            )?;
            let (running, changed) = pods::observe(client.clone()).await?;
            Cluster {
                client,
                kubeconfig: Some(std::path::PathBuf::from(path)),
                running,
                changed,
            }
        }
        None => Cluster {
            client: server_cluster.client.clone(),
            kubeconfig: server_cluster.kubeconfig.clone(),
            running: server_cluster.running.clone(),
            changed: server_cluster.changed.clone(),
        },
    };
    // On an API server of its own the direct Pod is the server's Pod as it was sent (labels
    // and annotations too); on the shared one it goes without our labels, so the reconciler
    // leaves it alone.
    let direct_pod = |name: String| {
        let mut pod = template.clone();
        pod.metadata.name = Some(name);
        pod.metadata.namespace = None;
        if own_cluster.is_none() {
            pod.metadata.labels = None;
        }
        pod
    };
    let direct_watch = std::env::var("BENCH_DIRECT_WATCH").is_ok_and(|v| v == "1");
    // BENCH_BURST_ORDER=through-first runs the requests before the direct creates (bench/run
    // alternates the order over its rounds); only with an API server per phase.
    let through_first = own_cluster.is_some()
        && std::env::var("BENCH_BURST_ORDER").is_ok_and(|v| v == "through-first");
    let own = own_cluster.is_some();
    let run_direct = || direct_phase(&bench, &direct_cluster, &direct_pod, own, direct_watch);
    let (direct, through) = if through_first {
        let through = through_phase(&bench, &server_cluster).await?;
        (run_direct().await?, through)
    } else {
        let direct = run_direct().await?;
        (direct, through_phase(&bench, &server_cluster).await?)
    };
    report(
        &bench,
        &direct,
        &through,
        own_cluster.is_some(),
        through_first,
        direct_watch,
    );
    Ok(())
}

/// One resource through the server; answers its Pod as the server sent it (without the
/// `nodeName` the scheduler set: a Pod that arrives with its node set skips the scheduler's
/// binding, which the server's Pods go through), the template of the direct Pods.
async fn warm_up(bench: &Bench, cluster: &Cluster) -> anyhow::Result<Pod> {
    let warm = bench.mint(bench.experiments)?;
    let warm_ns = bench.namespace(bench.experiments);
    let answer: Value = common::answer(
        bench
            .http
            .post(format!("{}/resources", bench.api()))
            .bearer_auth(&warm)
            .json(&resources(&bench.image, &bench.flavor, "warm", 1)),
        "POST /resources (warm-up)",
    )
    .await?;
    anyhow::ensure!(answer["resources"].as_array().is_some_and(|r| r.len() == 1));
    pods::all_running(
        &cluster.running,
        &cluster.changed,
        &HashSet::from([warm_ns.clone()]),
        1,
        Duration::from_secs(120),
    )
    .await?;
    let mut template = Api::<Pod>::namespaced(cluster.client.clone(), &warm_ns)
        .get("warm-00")
        .await?;
    template.metadata = ObjectMeta {
        labels: template.metadata.labels.take(),
        annotations: template.metadata.annotations.take(),
        ..ObjectMeta::default()
    };
    template.status = None;
    if let Some(spec) = template.spec.as_mut() {
        spec.node_name = None;
    }
    Ok(template)
}

/// The same Pods created directly: 20 clients creating their share one after the other, in
/// one namespace made before the clock starts.
async fn direct_phase(
    bench: &Bench,
    cluster: &Cluster,
    direct_pod: &dyn Fn(String) -> Pod,
    own_cluster: bool,
    direct_watch: bool,
) -> anyhow::Result<Phase> {
    let client = &cluster.client;
    let direct_ns = format!("burst-direct-{}", bench.run);
    create_namespace(client, &direct_ns).await?;
    if own_cluster {
        // The same warm-up as the server's cluster had: one Pod, Running.
        let warm_ns = format!("burst-warm-{}", bench.run);
        create_namespace(client, &warm_ns).await?;
        Api::<Pod>::namespaced(client.clone(), &warm_ns)
            .create(&PostParams::default(), &direct_pod("warm-00".into()))
            .await?;
        pods::all_running(
            &cluster.running,
            &cluster.changed,
            &HashSet::from([warm_ns]),
            1,
            Duration::from_secs(120),
        )
        .await?;
    }
    // BENCH_DIRECT_WATCH=1: the direct clients also keep one watch of every Pod (the informer
    // a client needs to know when its Pods run, as the server's Pod feed does for its
    // creates); without it only the bench's observer watches them.
    if direct_watch {
        pods::observe(client.clone()).await?;
    }
    let counted = api_requests(client).await;
    let cpu_before = Cpu::read(&bench.pid, cluster.kubeconfig.as_deref());
    let profile = start_profile(cluster.kubeconfig.as_deref(), "direct")?;
    let start = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..DIRECT_CLIENTS {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &direct_ns);
        let share = bench.total / DIRECT_CLIENTS + usize::from(c < bench.total % DIRECT_CLIENTS);
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
        &cluster.running,
        &cluster.changed,
        &HashSet::from([direct_ns.clone()]),
        bench.total,
        Duration::from_secs(600),
    )
    .await?;
    let took = start.elapsed();
    let cpu = Cpu::read(&bench.pid, cluster.kubeconfig.as_deref()).since(&cpu_before);
    let requests = since(&counted, &api_requests(client).await);
    finish_profile(profile)?;
    // On one shared API server the direct Pods go before the second phase starts (its fake
    // scheduler and kubelet slow down with every Pod that exists).
    remove_namespace(client, &direct_ns).await?;
    Ok(Phase {
        took,
        cpu,
        requests,
    })
}

/// Through slices-blueprint: one request of 50 per experiment, all at once; then every
/// resource must end provisioned (the tasks record it just after the Pod runs).
async fn through_phase(bench: &Bench, cluster: &Cluster) -> anyhow::Result<Through> {
    let tokens = (0..bench.experiments)
        .map(|i| bench.mint(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let namespaces: HashSet<String> = (0..bench.experiments).map(|i| bench.namespace(i)).collect();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak_rss = {
        let (sampling, pid) = (sampling.clone(), bench.pid.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_kb(&pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let rss_before = proc_kb(&bench.pid, "VmRSS:");
    let counted = api_requests(&cluster.client).await;
    let cpu_before = Cpu::read(&bench.pid, cluster.kubeconfig.as_deref());
    let profile = start_profile(cluster.kubeconfig.as_deref(), "through")?;
    let start = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let n = (bench.total - i * PER_REQUEST).min(PER_REQUEST);
        let request = bench
            .http
            .post(format!("{}/resources", bench.api()))
            .bearer_auth(token)
            .json(&resources(&bench.image, &bench.flavor, "b", n));
        requests.spawn(async move { common::answer::<Value>(request, "POST /resources").await });
    }
    while let Some(done) = requests.join_next().await {
        done??;
    }
    let accepted = start.elapsed();
    pods::all_running(
        &cluster.running,
        &cluster.changed,
        &namespaces,
        bench.total,
        Duration::from_secs(600),
    )
    .await?;
    let took = start.elapsed();
    let cpu = Cpu::read(&bench.pid, cluster.kubeconfig.as_deref()).since(&cpu_before);
    let requests = since(&counted, &api_requests(&cluster.client).await);
    finish_profile(profile)?;
    let provisioned = provisioned(bench, &tokens).await?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = peak_rss.await.unwrap_or(0);
    Ok(Through {
        phase: Phase {
            took,
            cpu,
            requests,
        },
        accepted,
        provisioned,
        rss_before,
        peak,
    })
}

/// How many of the burst's resources are `provisioned` (asked until all are, at most 60 s).
async fn provisioned(bench: &Bench, tokens: &[String]) -> anyhow::Result<usize> {
    let mut provisioned = 0;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(60) {
        provisioned = 0;
        for token in tokens {
            let list: Vec<Value> = common::answer(
                bench
                    .http
                    .get(format!("{}/resources?limit=500", bench.api()))
                    .bearer_auth(token),
                "GET /resources",
            )
            .await?;
            provisioned += list
                .iter()
                .filter(|r| r["allocation_state"] == "provisioned")
                .count();
        }
        if provisioned == bench.total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(provisioned)
}

/// Prints the figures.
fn report(
    bench: &Bench,
    direct: &Phase,
    through: &Through,
    own_cluster: bool,
    through_first: bool,
    direct_watch: bool,
) {
    let total = bench.total;
    let hwm = proc_kb(&bench.pid, "VmHWM:");
    println!(
        "burst: {total} Pods, {} requests of {PER_REQUEST} sent at once",
        bench.experiments
    );
    println!(
        "  API servers: {}",
        if own_cluster {
            "one fresh test server per phase (each after one warm-up Pod)"
        } else {
            "one for both phases, direct first (the second phase meets an older API server)"
        }
    );
    println!(
        "  order: {}",
        if through_first {
            "through slices-blueprint first, then direct"
        } else {
            "direct first, then through slices-blueprint"
        }
    );
    println!(
        "  direct (20 clients x {}{}):        all Running after {:7.2} s",
        total / DIRECT_CLIENTS,
        if direct_watch { ", + their watch" } else { "" },
        direct.took.as_secs_f64()
    );
    println!(
        "  through slices-blueprint:        all Running after {:7.2} s (all 202 after {:.2} s)",
        through.phase.took.as_secs_f64(),
        through.accepted.as_secs_f64()
    );
    println!(
        "  ratio through / direct:          {:7.2}",
        through.phase.took.as_secs_f64() / direct.took.as_secs_f64()
    );
    println!(
        "  lost: {}  (provisioned {} of {total})",
        total - through.provisioned.min(total),
        through.provisioned
    );
    println!(
        "  server memory: VmRSS {:.1} MB before, peak {:.1} MB sampled, VmHWM {:.1} MB",
        through.rss_before as f64 / 1024.0,
        through.peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("  CPU seconds until all Running (/proc/PID/stat utime + stime):");
    println!(
        "    direct:  API server (miniapi + etcd) {:.2}, the bench's 20 clients {:.2}",
        direct.cpu.api_server, direct.cpu.bench
    );
    let cpu = &through.phase.cpu;
    println!(
        "    through: API server (miniapi + etcd) {:.2}, slices-blueprint {:.2}, PostgreSQL (all its processes) {:.2}, the bench {:.2}",
        cpu.api_server, cpu.server, cpu.postgres, cpu.bench
    );
    println!(
        "  API server requests until all Running (apiserver_request_total; verb resource code):"
    );
    println!("    direct:  {}", direct.requests);
    println!("    through: {}", through.phase.requests);
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

/// With `BENCH_PPROF_DIR` set: starts curl fetching a CPU profile of the API server that
/// `kubeconfig` names (its first cluster's `server` and first user's `token`, as
/// `../shared/k8s-testserver/start` writes them) into `BENCH_PPROF_DIR/<phase>.pb.gz`.
fn start_profile(
    kubeconfig: Option<&std::path::Path>,
    phase: &str,
) -> anyhow::Result<Option<std::process::Child>> {
    let Some(dir) = std::env::var_os("BENCH_PPROF_DIR").filter(|dir| !dir.is_empty()) else {
        return Ok(None);
    };
    let path = kubeconfig.ok_or_else(|| anyhow::anyhow!("BENCH_PPROF_DIR needs a kubeconfig"))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path)?)?;
    let doc = docs
        .first()
        .ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))?;
    let server = doc["clusters"][0]["cluster"]["server"].as_str();
    let token = doc["users"][0]["user"]["token"].as_str();
    let (Some(server), Some(token)) = (server, token) else {
        anyhow::bail!("{}: no server and token", path.display());
    };
    let secs = std::env::var("BENCH_PPROF_SECS").unwrap_or_else(|_| "12".into());
    let out = std::path::Path::new(&dir).join(format!("{phase}.pb.gz"));
    let child = std::process::Command::new("curl")
        .args([
            "-skf",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-o",
        ])
        .arg(&out)
        .arg(format!("{server}/debug/pprof/profile?seconds={secs}"))
        .spawn()?;
    Ok(Some(child))
}

/// Waits for the profile `start_profile` started (it ends BENCH_PPROF_SECS after its start).
fn finish_profile(child: Option<std::process::Child>) -> anyhow::Result<()> {
    if let Some(mut child) = child {
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "curl for the CPU profile: {status}");
    }
    Ok(())
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
