//! The list endpoint under load, and the server's memory meanwhile. Not a test: it prints
//! figures. `bench/run` starts the release server (and the Kubernetes API test server) and
//! passes:
//!   BENCH_BASE_URL (e.g. http://127.0.0.1:3950), BENCH_SERVER_PID, BENCH_SERVER_BIN (the
//!   release binary: its `dev-token` mints the tokens, with the DEV_ISSUER, DEV_ISSUER_KEY_FILE
//!   and PUBLIC_URL bench/run exports), BENCH_PROVISION_TIMEOUT (s, default 600),
//!   BENCH_WRK_SECS (default 15), and optionally BENCH_SERVER_LOG (its tail is shown when the
//!   seed times out), BENCH_RSS_START_KB (VmRSS right after start, read by bench/run) and
//!   BENCH_EXPORTS_FILE.
//!
//! 1. Seed: a k8s flavor and a disk image (admin token), then 100 resources `bench-000` …
//!    `bench-099` in 10 `POST /resources` of 10 (experiment token), timed until accepted and
//!    until `GET /resources?limit=100` lists all 100 `provisioned`.
//! 2. Load: `wrk -t2 -c64 -d<BENCH_WRK_SECS>s --latency` on `GET /resources?limit=100`, its
//!    output shown on stderr and parsed ([`wrk::parse_wrk`]), while a task samples the server's
//!    VmRSS every 200 ms.
//!
//! stdout holds only the report lines (bench/run appends them to its report); progress goes
//! to stderr. Tokens are never printed: the experiment token, image id and flavor id go, as
//! `export NAME='value'` lines, to BENCH_EXPORTS_FILE (mode 0600) for provision_overhead.

mod common;
#[path = "common/wrk.rs"]
mod wrk;

use anyhow::Context as _;
use app::model::{
    AllocationState, CreateResourcesRequest, CreateResourcesResponse, DiskImage, DiskImageInput,
    Flavor, FlavorInput, FlavorType, Resource, ResourceSpec,
};
use chrono::SubsecRound as _;
use common::{admin_token, answer, dev_token};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const API: &str = "/apis/bi.slices.eu/v1alpha2";
const LIST: &str = "/resources?limit=100";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("api_load: {name} is not set (run bench/run)");
        std::process::exit(2)
    })
}

/// `name` parsed, `default` when unset; a value that does not parse stops the bench.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("api_load: {name}={v} is not a valid value");
            std::process::exit(2)
        }),
    }
}

/// Progress, on stderr (stdout is the report).
fn say(message: &str) {
    eprintln!("api_load: {message}");
}

/// One report line, the value in the column bench/run aligns its rows to.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("{label:<50} {value}");
}

/// The REST API of the server under test.
struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    fn request(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{API}{path}", self.base))
            .bearer_auth(token)
    }

    /// `GET path`, decoded as `T`.
    async fn get<T: DeserializeOwned>(&self, path: &str, token: &str) -> anyhow::Result<T> {
        let what = format!("GET {path}");
        answer(self.request(Method::GET, path, token), &what).await
    }

    /// `POST path` with a JSON `body`, the answer decoded as `T`.
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let what = format!("POST {path}");
        answer(self.request(Method::POST, path, token).json(body), &what).await
    }
}

/// The bench flavor and disk image (admin token): (flavor id, image id).
async fn seed_catalog(rest: &Rest, admin: &str) -> anyhow::Result<(String, String)> {
    let suffix = chrono::Utc::now().timestamp();
    let flavor = FlavorInput {
        friendly_name: format!("bench-flavor-{suffix}"),
        description: "bench".into(),
        flavor_type: FlavorType::K8s,
        ram_mib: 64,
        vcpus: 1,
        disk_mb: 0,
    };
    let flavor: Flavor = rest.post("/flavors", admin, &flavor).await?;
    let image = DiskImageInput {
        friendly_name: format!("bench-image-{suffix}"),
        cluster_id: "default".into(),
        location: "nginx:alpine".into(),
        default_username: "root".into(),
        min_disk_mb: 0,
        min_ram_mib: 0,
        short_description: String::new(),
        long_description: String::new(),
        tags: Vec::new(),
        hidden: false,
    };
    let image: DiskImage = rest.post("/disk-images", admin, &image).await?;
    Ok((flavor.id, image.id))
}

/// 100 k8s resources `bench-000` … `bench-099`, in 10 `POST /resources` of 10.
async fn request_resources(
    rest: &Rest,
    exp: &str,
    image_id: &str,
    flavor_id: &str,
) -> anyhow::Result<()> {
    let expires_at = (chrono::Utc::now() + chrono::Duration::hours(1)).trunc_subsecs(0);
    for batch in 0..10 {
        let body = CreateResourcesRequest {
            expires_at,
            resources: (0..10)
                .map(|i| ResourceSpec {
                    friendly_name: format!("bench-{:03}", batch * 10 + i),
                    disk_image_id: image_id.to_string(),
                    flavor_id: flavor_id.to_string(),
                    ..ResourceSpec::default()
                })
                .collect(),
            ssh_authorized_keys: Vec::new(),
            tokens: Vec::new(),
            request_id: None,
        };
        let _: CreateResourcesResponse = rest.post("/resources", exp, &body).await?;
    }
    Ok(())
}

/// Polls `GET /resources?limit=100` every second until it lists 100 `provisioned`
/// resources, at most `timeout`; progress every 5 s.
async fn wait_provisioned(rest: &Rest, exp: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_said = Instant::now();
    loop {
        let list: Vec<Resource> = rest.get(LIST, exp).await?;
        let n = list
            .iter()
            .filter(|r| r.allocation_state == AllocationState::Provisioned)
            .count();
        if n >= 100 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if let Ok(log) = std::env::var("BENCH_SERVER_LOG") {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("api_load: server log tail ({log}):");
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
            anyhow::bail!(
                "only {n} of 100 resources provisioned within {} s",
                timeout.as_secs()
            );
        }
        if last_said.elapsed() >= Duration::from_secs(5) {
            say(&format!("provisioned: {n}/100"));
            last_said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`); `None` once the process is gone.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field)
            .then(|| value.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

fn mib(kb: Option<u64>) -> String {
    format!("{:.1} MiB", kb.unwrap_or(0) as f64 / 1024.0)
}

/// Samples VmRSS of `pid` every 200 ms into the returned maximum (0 while nothing was
/// sampled), until the task is aborted or the process is gone.
fn sample_peak_rss(pid: u32) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let task_peak = peak.clone();
    let task = tokio::spawn(async move {
        while let Some(kb) = status_kb(pid, "VmRSS") {
            task_peak.fetch_max(kb, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (peak, task)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `export NAME='value'` lines for bench/run to source, in a file only its owner can read.
fn write_exports(path: &str, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = String::new();
    for (name, value) in pairs {
        anyhow::ensure!(
            !value.contains('\''),
            "{name} holds a quote: cannot export it"
        );
        text.push_str(&format!("export {name}='{value}'\n"));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {path}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = env("BENCH_BASE_URL");
    let pid: u32 = env("BENCH_SERVER_PID").trim().parse().unwrap_or_else(|_| {
        eprintln!("api_load: BENCH_SERVER_PID is not a process id");
        std::process::exit(2)
    });
    let bin = env("BENCH_SERVER_BIN");
    let timeout = Duration::from_secs(env_or("BENCH_PROVISION_TIMEOUT", 600));
    let wrk_secs: u64 = env_or("BENCH_WRK_SECS", 15);
    let rss_start: Option<u64> = std::env::var("BENCH_RSS_START_KB")
        .ok()
        .and_then(|v| v.trim().parse().ok());

    // 1. Tokens, catalog, 100 provisioned resources.
    let admin = admin_token(&bin)?;
    let exp = dev_token(
        &bin,
        &[
            "experiment",
            "--experiment-id",
            "exp_dev.local_bench",
            "--project-id",
            "proj_dev.local_qkd",
            "--user-id",
            "user_dev.local_bench",
            "--expires-in-secs",
            "7200",
        ],
    )?;
    let rest = Rest {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let (flavor_id, image_id) = seed_catalog(&rest, &admin).await?;
    say(&format!("catalog: flavor {flavor_id}, image {image_id}"));

    say("requesting 100 k8s resources (10 requests of 10)");
    let seed = Instant::now();
    request_resources(&rest, &exp, &image_id, &flavor_id).await?;
    row(
        "seed: 100 resources accepted (10 POSTs) in:",
        format!("{:.1} s", seed.elapsed().as_secs_f64()),
    );
    wait_provisioned(&rest, &exp, timeout).await?;
    row(
        "seed: 100 resources provisioned (pods ready):",
        format!("{:.1} s after the first POST", seed.elapsed().as_secs_f64()),
    );
    let rss_idle = status_kb(pid, "VmRSS");

    // 2. Load: wrk on the list endpoint, sampling the server's memory meanwhile.
    let (peak, sampler) = sample_peak_rss(pid);
    say(&format!(
        "wrk -t2 -c64 -d{wrk_secs}s --latency GET {API}{LIST}"
    ));
    let wrk = wrk::run_wrk(wrk_secs, &exp, &format!("{base}{API}{LIST}")).await;
    sampler.abort();
    let wrk = wrk::parse_wrk(&wrk?)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = status_kb(pid, "VmRSS");
    let hwm = status_kb(pid, "VmHWM");
    let rss_peak = Some(peak.load(Ordering::Relaxed)).filter(|kb| *kb > 0);

    println!("GET /resources?limit=100 (100 items), wrk -t2 -c64 -d{wrk_secs}s:");
    row("  requests/s:", format!("{:.2}", wrk.requests_per_sec));
    row(
        "  latency p50 / p99:",
        format!("{} / {}", ms(wrk.p50), ms(wrk.p99)),
    );
    row("  total:", &wrk.total);
    row("  non-2xx responses:", wrk.non_2xx);
    println!("server memory:");
    match rss_start {
        Some(kb) => row(
            "  VmRSS after start / with 100 resources:",
            format!("{} / {}", mib(Some(kb)), mib(rss_idle)),
        ),
        None => row("  VmRSS with 100 resources:", mib(rss_idle)),
    }
    row(
        "  VmRSS peak sampled under load / after load:",
        format!("{} / {}", mib(rss_peak), mib(rss_after)),
    );
    row("  VmHWM (peak RSS since start):", mib(hwm));

    if let Ok(path) = std::env::var("BENCH_EXPORTS_FILE") {
        write_exports(
            &path,
            &[
                ("BENCH_EXP_TOKEN", &exp),
                ("BENCH_IMAGE_ID", &image_id),
                ("BENCH_FLAVOR_ID", &flavor_id),
            ],
        )?;
    }
    Ok(())
}
