//! Scale-out (issue 14): several `serve` and `worker` processes on one database behind a load
//! balancer, and what happens when one of each dies in the middle of a burst.
//!
//! `bench/run --only scale` starts the Kubernetes API test server, a fresh database, 3 `serve`
//! processes (`RUN_WORKER=false`) and 2 `worker` processes (`HOSTNAME` = their name, so the
//! worker ids they write into `tasks.locked_by` start with it), all with the same dev issuer key
//! and `PUBLIC_URL` = the balancer, behind haproxy (round-robin, `/healthz` checks, redispatch
//! and retries on connection failures, empty answers and timeouts). This bench then:
//!
//! 1. makes a k8s flavor and image and one experiment of 100 provisioned resources (the page);
//! 2. runs wrk (2 threads, 64 connections, BENCH_WRK_SECS) on `GET /resources?limit=100` through
//!    the balancer, then on one `serve` directly;
//! 3. checks every replica's list cache against writes made on each other replica: it reads a
//!    page on A twice (so A keeps it), extends a resource's `expires_at` (twice) or deletes one
//!    through B, and reads the page on A at once: is the change there?
//! 4. asks for BENCH_SCALE_PODS Pods (1000) from 10 clients at once through the balancer, each
//!    with its own experiment token, in requests of 50 with a `request_id` (a retry after a
//!    502/503/504 or no answer, at most 3, sends the same one, so it cannot create twice), and
//!    polls its list until every resource is provisioned; when a third of the Pods run it
//!    SIGKILLs the last `serve` and the first `worker`;
//! 5. counts: every resource provisioned with exactly one Pod, no resource id on two Pods, the
//!    create tasks each worker finished (`tasks.locked_by`), those taken over from the killed
//!    worker, and checks the list caches of the replicas still alive again.
//!
//! Not a test: it prints figures (stdout, for the report; progress on stderr) and fails only
//! when it cannot measure. Environment from bench/run: BENCH_BASE_URL (the balancer),
//! BENCH_SERVER_BIN (its `dev-token` mints the tokens), BENCH_SCALE_SERVES and
//! BENCH_SCALE_WORKERS (`name=pid@url`, space-separated; a worker's url is its
//! WORKER_HTTP_ADDR), BENCH_SCALE_PODS, BENCH_WRK_SECS, BENCH_PROVISION_TIMEOUT,
//! BENCH_SCALE_LOG_DIR (the processes' logs), DATABASE_URL, KUBECONFIG, K8S_NAMESPACE_PREFIX.

mod common;
#[path = "common/pods.rs"]
mod pods;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/wrk.rs"]
mod wrk;

use anyhow::Context as _;
use app::model::{
    AllocationState, CreateResourcesRequest, CreateResourcesResponse, Resource, ResourcePatch,
    ResourceSpec,
};
use app::ssr::backend::kubernetes::{namespace_name, LABEL_RESOURCE, MANAGED_BY};
use chrono::{DateTime, SubsecRound as _, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const API: &str = "/apis/bi.slices.eu/v1alpha2";
const LIST: &str = "/resources?limit=100";
/// The most resources one `POST /resources` may ask for.
const PER_REQUEST: usize = 50;
const CLIENTS: usize = 10;
/// How many times a client sends a request again after a 502, 503, 504 or no answer.
const RETRIES: u32 = 3;
/// How long a client waits before it sends a request again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Resources in the experiment whose list page wrk loads and the cache checks read.
const PAGE_RESOURCES: usize = 100;
/// The writes of one freshness check per (reader, writer) pair of replicas.
const WRITES: [Write; 3] = [Write::Extend, Write::Extend, Write::Delete];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("scale_out: {name} is not set (run bench/run --only scale)");
        std::process::exit(2)
    })
}

/// `name` parsed, `default` when unset; a value that does not parse stops the bench.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("scale_out: {name}={v} is not a valid value");
            std::process::exit(2)
        }),
    }
}

/// Progress, on stderr (stdout is the report).
fn say(message: &str) {
    eprintln!("scale_out: {message}");
}

/// One report line, the value in the column bench/run aligns its rows to.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("{label:<50} {value}");
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One process bench/run started: its name, pid and (for `serve`) base URL.
#[derive(Debug, Clone)]
struct Process {
    name: String,
    pid: u32,
    url: String,
}

/// `name=pid@url` entries separated by spaces.
fn processes(variable: &str) -> anyhow::Result<Vec<Process>> {
    env(variable)
        .split_whitespace()
        .map(|entry| {
            let (name, rest) = entry
                .split_once('=')
                .with_context(|| format!("{variable}: {entry:?} is not name=pid[@url]"))?;
            let (pid, url) = rest.split_once('@').unwrap_or((rest, ""));
            Ok(Process {
                name: name.to_string(),
                pid: pid
                    .parse()
                    .with_context(|| format!("{variable}: {pid:?} is not a process id"))?,
                url: url.trim_end_matches('/').to_string(),
            })
        })
        .collect()
}

/// What bench/run passes.
struct Setup {
    balancer: String,
    bin: String,
    serves: Vec<Process>,
    workers: Vec<Process>,
    pods: usize,
    wrk_secs: u64,
    timeout: Duration,
    prefix: String,
}

impl Setup {
    fn from_env() -> anyhow::Result<Self> {
        let setup = Setup {
            balancer: env("BENCH_BASE_URL").trim_end_matches('/').to_string(),
            bin: env("BENCH_SERVER_BIN"),
            serves: processes("BENCH_SCALE_SERVES")?,
            workers: processes("BENCH_SCALE_WORKERS")?,
            pods: env_or("BENCH_SCALE_PODS", 1000),
            wrk_secs: env_or("BENCH_WRK_SECS", 15),
            timeout: Duration::from_secs(env_or("BENCH_PROVISION_TIMEOUT", 600)),
            prefix: std::env::var("K8S_NAMESPACE_PREFIX").unwrap_or_else(|_| "slices-".into()),
        };
        anyhow::ensure!(
            setup.serves.len() >= 2 && setup.workers.len() >= 2,
            "needs at least 2 serve and 2 worker processes (one of each is killed)"
        );
        anyhow::ensure!(
            setup.pods >= CLIENTS && setup.pods.div_ceil(CLIENTS) <= 500,
            "BENCH_SCALE_PODS must be between {CLIENTS} and {} (a client lists its resources in one page of 500)",
            CLIENTS * 500
        );
        Ok(setup)
    }

    fn api(&self) -> String {
        format!("{}{API}", self.balancer)
    }
}

/// An experiment token (2 h) for `experiment_id`, acting user alice.
fn experiment_token(bin: &str, experiment_id: &str) -> anyhow::Result<String> {
    common::dev_token(
        bin,
        &[
            "experiment",
            "--experiment-id",
            experiment_id,
            "--project-id",
            "proj_dev.local_qkd",
            "--user-id",
            "user_dev.local_alice",
            "--expires-in-secs",
            "7200",
        ],
    )
}

/// `POST /resources` for `n` resources `<name>-000` … of the bench's image and flavor, from
/// `first` on, expiring in 2 h, with a fresh `request_id`.
fn create_request(
    image: &str,
    flavor: &str,
    name: &str,
    first: usize,
    n: usize,
) -> CreateResourcesRequest {
    CreateResourcesRequest {
        expires_at: (Utc::now() + chrono::Duration::hours(2)).trunc_subsecs(0),
        resources: (first..first + n)
            .map(|i| ResourceSpec {
                friendly_name: format!("{name}-{i:03}"),
                disk_image_id: image.to_string(),
                flavor_id: flavor.to_string(),
                ..ResourceSpec::default()
            })
            .collect(),
        ssh_authorized_keys: Vec::new(),
        tokens: Vec::new(),
        request_id: Some(uuid::Uuid::now_v7()),
    }
}

/// Requests a client sent (every try), sent again, and that failed even after the retries.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

/// One of the 10 clients: its own HTTP connections, its experiment token.
struct Client {
    http: reqwest::Client,
    token: String,
    tally: Arc<Tally>,
}

impl Client {
    /// Sends what `build` makes until the application answers: a 502, 503 or 504 (the
    /// balancer found no replica to answer) or no answer at all is tried again, at most
    /// [`RETRIES`] times. The answer decoded as `T`, or `None` (counted as failed, shown on
    /// stderr) when even the last try got none or an error.
    async fn call<T: DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        what: &str,
    ) -> Option<T> {
        let mut tries = 0;
        loop {
            self.tally.sent.fetch_add(1, Ordering::Relaxed);
            let outcome = build(&self.http).bearer_auth(&self.token).send().await;
            let again = match &outcome {
                Ok(response) => matches!(response.status().as_u16(), 502..=504),
                Err(_) => true,
            };
            if again && tries < RETRIES {
                tries += 1;
                self.tally.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            let decoded = match outcome {
                Ok(response) => common::decode(response, what).await,
                Err(e) => Err(anyhow::Error::new(e).context(format!("{what}: no answer"))),
            };
            return match decoded {
                Ok(value) => Some(value),
                Err(e) => {
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                    say(&format!("failed after {tries} retries: {e:#}"));
                    None
                }
            };
        }
    }
}

/// What one client of the burst saw.
struct ClientRun {
    /// Ids of the resources its POSTs created.
    resources: Vec<String>,
    /// When its last POST was answered (from the burst's start).
    accepted: Duration,
    /// When its list first showed every resource provisioned.
    provisioned: Option<Duration>,
}

/// Client `index` of the burst: `n` resources in requests of [`PER_REQUEST`], one after the
/// other, then its list polled every second until none is still being provisioned.
async fn run_client(
    client: Client,
    api: String,
    (image, flavor): (String, String),
    n: usize,
    start: Instant,
    timeout: Duration,
) -> ClientRun {
    let mut resources = Vec::new();
    for first in (0..n).step_by(PER_REQUEST) {
        let body = create_request(&image, &flavor, "s", first, PER_REQUEST.min(n - first));
        let url = format!("{api}/resources");
        let answer: Option<CreateResourcesResponse> = client
            .call(|http| http.post(&url).json(&body), "POST /resources")
            .await;
        resources.extend(answer.into_iter().flat_map(|a| a.resources).map(|r| r.id));
    }
    let accepted = start.elapsed();
    let mine: HashSet<&String> = resources.iter().collect();
    let url = format!("{api}/resources?limit=500");
    let mut provisioned = None;
    while start.elapsed() < timeout {
        let list: Option<Vec<Resource>> =
            client.call(|http| http.get(&url), "GET /resources").await;
        let states: Vec<AllocationState> = list
            .unwrap_or_default()
            .into_iter()
            .filter(|r| mine.contains(&r.id))
            .map(|r| r.allocation_state)
            .collect();
        let busy = |s: &AllocationState| {
            matches!(
                s,
                AllocationState::Requested | AllocationState::Provisioning
            )
        };
        if states.len() == resources.len() && !states.iter().any(busy) {
            if states.iter().all(|s| *s == AllocationState::Provisioned) {
                provisioned = Some(start.elapsed());
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ClientRun {
        resources,
        accepted,
        provisioned,
    }
}

/// The experiment whose list page wrk loads: [`PAGE_RESOURCES`] resources through the
/// balancer, waited for until all are provisioned.
async fn seed_page(
    http: &reqwest::Client,
    setup: &Setup,
    token: &str,
    catalog: &(String, String),
) -> anyhow::Result<()> {
    let api = setup.api();
    for first in (0..PAGE_RESOURCES).step_by(PER_REQUEST) {
        let n = PER_REQUEST.min(PAGE_RESOURCES - first);
        let body = create_request(&catalog.0, &catalog.1, "list", first, n);
        let _: CreateResourcesResponse = common::answer(
            http.post(format!("{api}/resources"))
                .bearer_auth(token)
                .json(&body),
            "POST /resources (page)",
        )
        .await?;
    }
    let deadline = Instant::now() + setup.timeout;
    loop {
        let list: Vec<Resource> = common::answer(
            http.get(format!("{api}{LIST}")).bearer_auth(token),
            "GET /resources (page)",
        )
        .await?;
        let done = list
            .iter()
            .filter(|r| r.allocation_state == AllocationState::Provisioned)
            .count();
        if done >= PAGE_RESOURCES {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {PAGE_RESOURCES} page resources provisioned after {:?}",
            setup.timeout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What one wrk run measured.
struct Load {
    wrk: wrk::WrkSummary,
    /// The answers other than 200 the serve processes counted meanwhile, by status.
    other_statuses: String,
    /// The most connections to the database seen meanwhile.
    peak_connections: i64,
}

/// wrk on the page at `base`.
async fn load(
    http: &reqwest::Client,
    setup: &Setup,
    token: &str,
    base: &str,
    connections: &AtomicI64,
) -> anyhow::Result<Load> {
    say(&format!(
        "wrk -t2 -c64 -d{}s --latency {base}{API}{LIST}",
        setup.wrk_secs
    ));
    let before = list_statuses(http, &setup.serves).await;
    connections.store(0, Ordering::Relaxed);
    let output = wrk::run_wrk(setup.wrk_secs, token, &format!("{base}{API}{LIST}")).await?;
    let peak_connections = connections.swap(0, Ordering::Relaxed);
    let after = list_statuses(http, &setup.serves).await;
    Ok(Load {
        wrk: wrk::parse_wrk(&output)?,
        other_statuses: other_statuses(&before, &after),
        peak_connections,
    })
}

/// A write the freshness check makes on another replica.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// `PATCH /resources/{id}` with `expires_at` one minute later.
    Extend,
    /// `DELETE /resources/{id}`.
    Delete,
}

/// What the page must show after a write.
enum Expect {
    ExpiresAt(String, DateTime<Utc>),
    Deleting(String),
}

impl Expect {
    fn seen_in(&self, page: &[Resource]) -> bool {
        match self {
            Expect::ExpiresAt(id, at) => page.iter().any(|r| &r.id == id && r.expires_at == *at),
            Expect::Deleting(id) => page.iter().all(|r| {
                &r.id != id
                    || matches!(
                        r.allocation_state,
                        AllocationState::Deleting | AllocationState::Deleted
                    )
            }),
        }
    }
}

/// The outcome of the freshness checks of one set of replicas.
#[derive(Default)]
struct Freshness {
    checks: usize,
    fresh: usize,
    /// Checks in which the reader's `/metrics` showed the page served from its cache just
    /// before the write (so the read after it had a kept page to go wrong with).
    cached: usize,
    /// Reads after the write that the reader's `/metrics` counts as cache hits.
    hit_after: usize,
    /// One line per stale read: who, what, and how long until the change showed.
    stale: Vec<String>,
}

/// The `/metrics` text of the process at `base`; `None` without one.
async fn metrics_text(http: &reqwest::Client, base: &str) -> Option<String> {
    let response = http.get(format!("{base}/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// `list_cache_requests_total{result="hit"}` of the process at `base`; `None` without
/// `/metrics`.
async fn cache_hits(http: &reqwest::Client, base: &str) -> Option<f64> {
    let text = metrics_text(http, base).await?;
    let hits = prometheus::samples(&text, "list_cache_requests_total")
        .into_iter()
        .filter(|(labels, _)| labels.get("result").is_some_and(|r| r == "hit"))
        .map(|(_, n)| n)
        .sum();
    Some(hits)
}

/// `GET …/resources` answers the `serves` counted (`http_requests_total`), by status.
async fn list_statuses(http: &reqwest::Client, serves: &[Process]) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for serve in serves {
        let Some(text) = metrics_text(http, &serve.url).await else {
            continue;
        };
        for (labels, n) in prometheus::samples(&text, "http_requests_total") {
            let is =
                |name: &str, wanted: fn(&str) -> bool| labels.get(name).is_some_and(|v| wanted(v));
            if is("method", |m| m == "GET") && is("route", |r| r.ends_with("/resources")) {
                let status = labels.get("status").cloned().unwrap_or_default();
                *counts.entry(status).or_insert(0.0) += n;
            }
        }
    }
    counts
}

/// The statuses other than 200 that `after` counted more than `before` (`503: 48, …`), or
/// `none`.
fn other_statuses(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter(|(status, _)| status.as_str() != "200")
        .filter_map(|(status, n)| {
            let more = n - before.get(status).copied().unwrap_or(0.0);
            (more >= 1.0).then(|| format!("{status}: {more:.0}"))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// For every replica A and every other replica B, the [`WRITES`] in turn: A reads the page
/// twice (the second read is served from its cache), B makes the write, A reads the page at
/// once. Resources are taken round the page's provisioned ones.
async fn freshness(
    http: &reqwest::Client,
    replicas: &[&Process],
    token: &str,
) -> anyhow::Result<Freshness> {
    let mut outcome = Freshness::default();
    let mut nth = 0;
    for a in replicas {
        for b in replicas.iter().filter(|b| b.name != a.name) {
            for write in WRITES {
                check_fresh(http, (*a, *b), token, write, nth, &mut outcome).await?;
                nth += 1;
            }
        }
    }
    Ok(outcome)
}

/// The list page as `replica` serves it.
async fn read_page(
    http: &reqwest::Client,
    replica: &Process,
    token: &str,
) -> anyhow::Result<Vec<Resource>> {
    common::answer(
        http.get(format!("{}{API}{LIST}", replica.url))
            .bearer_auth(token),
        &format!("GET /resources on {}", replica.name),
    )
    .await
}

/// One freshness check (see [`freshness`]).
async fn check_fresh(
    http: &reqwest::Client,
    (a, b): (&Process, &Process),
    token: &str,
    write: Write,
    nth: usize,
    outcome: &mut Freshness,
) -> anyhow::Result<()> {
    let read = || read_page(http, a, token);
    let hits_before = cache_hits(http, &a.url).await;
    read().await?;
    let page = read().await?;
    let hits_kept = cache_hits(http, &a.url).await;
    let live: Vec<&Resource> = page
        .iter()
        .filter(|r| r.allocation_state == AllocationState::Provisioned)
        .collect();
    anyhow::ensure!(!live.is_empty(), "no provisioned resource left on the page");
    let target = live[nth % live.len()];
    let resource_url = format!("{}{API}/resources/{}", b.url, target.id);
    let expect = match write {
        Write::Extend => {
            let patch = ResourcePatch {
                expires_at: target.expires_at + chrono::Duration::minutes(1),
            };
            let patched: Resource = common::answer(
                http.patch(&resource_url).bearer_auth(token).json(&patch),
                &format!("PATCH /resources/{{id}} on {}", b.name),
            )
            .await?;
            Expect::ExpiresAt(target.id.clone(), patched.expires_at)
        }
        Write::Delete => {
            let _: Value = common::answer(
                http.delete(&resource_url).bearer_auth(token),
                &format!("DELETE /resources/{{id}} on {}", b.name),
            )
            .await?;
            Expect::Deleting(target.id.clone())
        }
    };
    let written = Instant::now();
    let after = read().await?;
    let hits_after = cache_hits(http, &a.url).await;
    outcome.checks += 1;
    let counted = |from: Option<f64>, to: Option<f64>| from.zip(to).is_some_and(|(f, t)| t > f);
    outcome.cached += usize::from(counted(hits_before, hits_kept));
    let served_from_cache = counted(hits_kept, hits_after);
    outcome.hit_after += usize::from(served_from_cache);
    if expect.seen_in(&after) {
        outcome.fresh += 1;
        return Ok(());
    }
    let mut shown = None;
    while written.elapsed() < Duration::from_secs(5) {
        if expect.seen_in(&read().await?) {
            shown = Some(written.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outcome.stale.push(format!(
        "{} after a {write:?} on {}: stale ({}), change shown after {}",
        a.name,
        b.name,
        if served_from_cache {
            "a cache hit"
        } else {
            "not from the cache"
        },
        shown.map_or("more than 5 s".into(), ms)
    ));
    Ok(())
}

/// The SIGKILL in the middle of the burst.
struct Kill {
    /// From the burst's start.
    at: Duration,
    /// Pods Running then.
    running: usize,
    serve: Process,
    worker: Process,
    /// When, by the database's clock.
    db_time: DateTime<Utc>,
    /// Ids of the tasks the worker held (`running`, its lease) when it died.
    held: Vec<String>,
    /// The burst's create tasks by worker just after the kill.
    tasks: BTreeMap<String, WorkerTasks>,
}

/// SIGKILL to `pid`.
fn sigkill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -KILL {pid}: {status}");
    Ok(())
}

/// The Pods of the burst: where they are, what they are waited for with.
struct Watch {
    running: pods::Running,
    changed: Arc<Notify>,
    namespaces: HashSet<String>,
}

/// Waits until `share` Pods of the burst run, then SIGKILLs `serve` and `worker` and reads
/// which tasks the worker held.
async fn kill_midway(
    watch: Arc<Watch>,
    share: usize,
    (serve, worker): (Process, Process),
    (experiments, workers): (Vec<String>, Vec<Process>),
    db: PgPool,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<Kill> {
    pods::all_running(
        &watch.running,
        &watch.changed,
        &watch.namespaces,
        share,
        timeout,
    )
    .await?;
    let db_time: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db)
        .await?;
    sigkill(serve.pid)?;
    sigkill(worker.pid)?;
    let at = start.elapsed();
    let running = pods::running_in(&watch.running, &watch.namespaces);
    say(&format!(
        "killed {} (pid {}) and {} (pid {}) at {} with {running} Pods Running",
        serve.name,
        serve.pid,
        worker.name,
        worker.pid,
        secs(at)
    ));
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM tasks WHERE status = 'running' AND starts_with(locked_by, $1)",
    )
    .bind(format!("{}-", worker.name))
    .fetch_all(&db)
    .await?;
    let tasks = per_worker(&db, &experiments, &workers).await?;
    Ok(Kill {
        at,
        running,
        serve,
        worker,
        db_time,
        held,
        tasks,
    })
}

/// What the burst measured.
struct Burst {
    experiments: Vec<String>,
    clients: Vec<ClientRun>,
    tally: Arc<Tally>,
    all_running: Option<Duration>,
    kill: Kill,
}

/// The 10 clients at once, the kill in the middle, and the moment the last Pod runs.
async fn burst(
    setup: &Setup,
    catalog: &(String, String),
    (running, changed): (pods::Running, Arc<Notify>),
    db: &PgPool,
    run: &str,
) -> anyhow::Result<Burst> {
    let experiments: Vec<String> = (0..CLIENTS)
        .map(|i| format!("exp_dev.local_scale{run}c{i}"))
        .collect();
    let tokens = experiments
        .iter()
        .map(|e| experiment_token(&setup.bin, e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let watch = Arc::new(Watch {
        running,
        changed,
        namespaces: experiments
            .iter()
            .map(|e| namespace_name(&setup.prefix, e))
            .collect(),
    });
    let victims = (
        setup.serves[setup.serves.len() - 1].clone(),
        setup.workers[0].clone(),
    );
    let tally = Arc::new(Tally::default());
    say(&format!(
        "{} Pods from {CLIENTS} clients through {}",
        setup.pods, setup.balancer
    ));
    let start = Instant::now();
    let killer = tokio::spawn(kill_midway(
        watch.clone(),
        setup.pods / 3,
        victims,
        (experiments.clone(), setup.workers.clone()),
        db.clone(),
        start,
        setup.timeout,
    ));
    let all_running = {
        let (watch, n, timeout) = (watch.clone(), setup.pods, setup.timeout);
        tokio::spawn(async move {
            pods::all_running(
                &watch.running,
                &watch.changed,
                &watch.namespaces,
                n,
                timeout,
            )
            .await
            .map(|()| start.elapsed())
        })
    };
    let mut clients = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let client = Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            token,
            tally: tally.clone(),
        };
        let n = setup.pods / CLIENTS + usize::from(i < setup.pods % CLIENTS);
        clients.push(tokio::spawn(run_client(
            client,
            setup.api(),
            catalog.clone(),
            n,
            start,
            setup.timeout,
        )));
    }
    let mut runs = Vec::new();
    for client in clients {
        runs.push(client.await?);
    }
    let accepted: usize = runs.iter().map(|c| c.resources.len()).sum();
    // Every Pod runs before its resource is provisioned, which the clients waited for; when
    // some were never accepted, the count cannot be reached.
    let all_running = if accepted == setup.pods {
        match all_running.await? {
            Ok(at) => Some(at),
            Err(e) => {
                say(&format!("{e:#}"));
                None
            }
        }
    } else {
        all_running.abort();
        None
    };
    let kill = killer.await??;
    Ok(Burst {
        experiments,
        clients: runs,
        tally,
        all_running,
        kill,
    })
}

/// Resources and Pods of the burst after it.
struct Census {
    /// Resources the database holds for the burst's experiments.
    in_database: i64,
    provisioned: usize,
    /// Resources not provisioned or without a Pod.
    lost: usize,
    /// Resource ids carried by more than one Pod, and the Pods beyond the first.
    duplicated: usize,
    extra_pods: usize,
    /// Pods in the burst's namespaces whose resource id is none of the burst's.
    strangers: usize,
    pods: usize,
}

async fn census(
    setup: &Setup,
    http: &reqwest::Client,
    burst: &Burst,
    db: &PgPool,
    kube: &kube::Client,
) -> anyhow::Result<Census> {
    let ids: HashSet<&String> = burst.clients.iter().flat_map(|c| &c.resources).collect();
    let mut states = HashMap::new();
    for experiment in &burst.experiments {
        let token = experiment_token(&setup.bin, experiment)?;
        let list: Vec<Resource> = common::answer(
            http.get(format!("{}/resources?limit=500", setup.api()))
                .bearer_auth(&token),
            "GET /resources (census)",
        )
        .await?;
        states.extend(list.into_iter().map(|r| (r.id, r.allocation_state)));
    }
    let namespaces: HashSet<String> = burst
        .experiments
        .iter()
        .map(|e| namespace_name(&setup.prefix, e))
        .collect();
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let mut pods_of: HashMap<String, usize> = HashMap::new();
    let mut strangers = 0;
    let mut pods = 0;
    for pod in kube::Api::<Pod>::all(kube.clone())
        .list(&ListParams::default().labels(&selector))
        .await?
    {
        if !pod
            .metadata
            .namespace
            .as_ref()
            .is_some_and(|ns| namespaces.contains(ns))
        {
            continue;
        }
        pods += 1;
        let owner = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LABEL_RESOURCE))
            .filter(|id| ids.contains(id));
        match owner {
            Some(id) => *pods_of.entry(id.clone()).or_default() += 1,
            None => strangers += 1,
        }
    }
    let provisioned = ids
        .iter()
        .filter(|id| states.get(**id) == Some(&AllocationState::Provisioned))
        .count();
    let lost = ids
        .iter()
        .filter(|id| {
            states.get(**id) != Some(&AllocationState::Provisioned)
                || pods_of.get(**id).copied().unwrap_or(0) == 0
        })
        .count();
    let in_database: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resources WHERE experiment_id = ANY($1)")
            .bind(&burst.experiments[..])
            .fetch_one(db)
            .await?;
    Ok(Census {
        in_database,
        provisioned,
        lost,
        duplicated: pods_of.values().filter(|n| **n > 1).count(),
        extra_pods: pods_of.values().map(|n| n.saturating_sub(1)).sum(),
        strangers,
        pods,
    })
}

/// Create tasks of the burst by the worker that claimed them last (`tasks.locked_by`).
#[derive(Debug, Default, Clone, Copy)]
struct WorkerTasks {
    finished: i64,
    failed: i64,
    running: i64,
    /// Tasks that took more than one attempt.
    retried: i64,
}

/// [`WorkerTasks`] of the burst's `experiments` by worker name (or the raw `locked_by` when it
/// is none of `workers`).
async fn per_worker(
    db: &PgPool,
    experiments: &[String],
    workers: &[Process],
) -> anyhow::Result<BTreeMap<String, WorkerTasks>> {
    let rows: Vec<(Option<String>, i64, i64, i64, i64)> = sqlx::query_as(
        r#"SELECT t.locked_by,
                  count(*) FILTER (WHERE t.status = 'finished'),
                  count(*) FILTER (WHERE t.status = 'failed'),
                  count(*) FILTER (WHERE t.status = 'running'),
                  count(*) FILTER (WHERE t.attempts > 1)
           FROM tasks t JOIN resources r ON r.id = t.resource_id
           WHERE t.kind = 'create' AND r.experiment_id = ANY($1)
           GROUP BY t.locked_by"#,
    )
    .bind(experiments)
    .fetch_all(db)
    .await?;
    let mut by_worker: BTreeMap<String, WorkerTasks> = BTreeMap::new();
    for (locked_by, finished, failed, running, retried) in rows {
        let locked_by = locked_by.unwrap_or_else(|| "(not claimed)".into());
        let name = workers
            .iter()
            .find(|w| locked_by.starts_with(&format!("{}-", w.name)))
            .map_or(locked_by, |w| w.name.clone());
        let entry = by_worker.entry(name).or_default();
        entry.finished += finished;
        entry.failed += failed;
        entry.running += running;
        entry.retried += retried;
    }
    Ok(by_worker)
}

/// What became of the tasks the killed worker held.
struct TakeOver {
    /// Finished by another worker.
    taken_over: i64,
    not_finished: i64,
    /// Seconds from the kill until the last of them finished.
    last_after: Option<f64>,
}

async fn take_over(db: &PgPool, kill: &Kill) -> anyhow::Result<TakeOver> {
    let (taken_over, not_finished, last_after): (i64, i64, Option<f64>) = sqlx::query_as(
        r#"SELECT count(*) FILTER (WHERE status = 'finished' AND NOT starts_with(locked_by, $2)),
                  count(*) FILTER (WHERE status <> 'finished'),
                  EXTRACT(EPOCH FROM max(finished_at) FILTER (WHERE NOT starts_with(locked_by, $2)) - $3)::float8
           FROM tasks WHERE id::text = ANY($1)"#,
    )
    .bind(&kill.held[..])
    .bind(format!("{}-", kill.worker.name))
    .bind(kill.db_time)
    .fetch_one(db)
    .await?;
    Ok(TakeOver {
        taken_over,
        not_finished,
        last_after,
    })
}

/// What the processes' logs (`*.log` in `dir`) say about database connections they could not
/// get: PostgreSQL's "too many clients already" (its `max_connections` reached) and sqlx's
/// "pool timed out" (none free within the pool's acquire timeout).
fn refused_connections(dir: &std::path::Path) -> anyhow::Result<String> {
    let mut found = Vec::new();
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        let refused = text.matches("too many clients already").count();
        let timed_out = text.matches("pool timed out").count();
        if refused + timed_out > 0 {
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            found.push(format!(
                "{name}: {refused} \"too many clients already\", {timed_out} \"pool timed out\""
            ));
        }
    }
    Ok(if found.is_empty() {
        "none".into()
    } else {
        found.join("; ")
    })
}

/// Samples the connections to the bench's database every 250 ms: the most seen since the
/// caller last reset it.
fn sample_connections(db: PgPool) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicI64::new(0));
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            let count: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
            )
            .fetch_one(&db)
            .await;
            if let Ok(n) = count {
                seen.fetch_max(n, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (peak, task)
}

fn print_load(setup: &Setup, through: &Load, direct: &Load, max_connections: &str) {
    println!(
        "GET /resources?limit=100 ({PAGE_RESOURCES} items, experiment token), wrk -t2 -c64 -d{}s:",
        setup.wrk_secs
    );
    for (label, load) in [
        (
            format!("  through haproxy ({} serve):", setup.serves.len()),
            through,
        ),
        ("  one serve directly:".to_string(), direct),
    ] {
        let w = &load.wrk;
        row(
            &label,
            format!(
                "{:.0} requests/s, p50 {}, p99 {}, non-2xx {}",
                w.requests_per_sec,
                ms(w.p50),
                ms(w.p99),
                w.non_2xx
            ),
        );
        row(
            "    answers other than 200 (serves' /metrics):",
            &load.other_statuses,
        );
        row(
            "    peak connections to the database:",
            format!(
                "{} (max_connections {max_connections})",
                load.peak_connections
            ),
        );
        say(&format!("{label} {}", w.total.trim()));
    }
    row(
        "  through / direct (requests/s, p99):",
        format!(
            "{:.2}, {:.2}",
            through.wrk.requests_per_sec / direct.wrk.requests_per_sec,
            through.wrk.p99.as_secs_f64() / direct.wrk.p99.as_secs_f64()
        ),
    );
}

fn print_burst(
    setup: &Setup,
    burst: &Burst,
    census: &Census,
    (tasks, taken): (&BTreeMap<String, WorkerTasks>, &TakeOver),
) {
    let kill = &burst.kill;
    println!(
        "{} Pods from {CLIENTS} clients at once through haproxy (requests of {PER_REQUEST} with a request_id; up to {RETRIES} retries on 502/503/504/no answer):",
        setup.pods
    );
    let accepted = burst
        .clients
        .iter()
        .map(|c| c.accepted)
        .max()
        .unwrap_or_default();
    row("  all POSTs answered after:", secs(accepted));
    row(
        "  killed (SIGKILL):",
        format!(
            "{} and {} at {}, with {} Pods Running",
            kill.serve.name,
            kill.worker.name,
            secs(kill.at),
            kill.running
        ),
    );
    row(
        "  all Pods Running after (Pod watch):",
        burst.all_running.map_or("not reached".into(), secs),
    );
    let provisioned = burst
        .clients
        .iter()
        .map(|c| c.provisioned)
        .collect::<Option<Vec<_>>>();
    row(
        "  all resources provisioned after (clients' polls):",
        provisioned
            .and_then(|p| p.into_iter().max())
            .map_or("not reached".into(), secs),
    );
    let t = &burst.tally;
    row(
        "  client requests sent / retried / failed:",
        format!(
            "{} / {} / {}",
            t.sent.load(Ordering::Relaxed),
            t.retried.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed)
        ),
    );
    println!("  create tasks by the worker that claimed them last (tasks.locked_by):");
    for (name, t) in tasks {
        let at_kill = kill.tasks.get(name).copied().unwrap_or_default();
        let killed = if *name == kill.worker.name {
            " (killed)"
        } else {
            ""
        };
        row(
            &format!("    {name}{killed}:"),
            format!(
                "{} finished, {} failed, {} with more than one attempt; at the kill {} finished, {} running",
                t.finished, t.failed, t.retried, at_kill.finished, at_kill.running
            ),
        );
    }
    row(
        &format!("  taken over from {}:", kill.worker.name),
        format!(
            "{} of the {} tasks it held, {} not finished; the last finished {} after the kill",
            taken.taken_over,
            kill.held.len(),
            taken.not_finished,
            taken.last_after.map_or("-".into(), |s| format!("{s:.1} s"))
        ),
    );
    row(
        "  resources in the database / expected:",
        format!("{} / {}", census.in_database, setup.pods),
    );
    row(
        "  lost (not provisioned, or no Pod):",
        format!("{} (provisioned {})", census.lost, census.provisioned),
    );
    row(
        "  duplicate Pods (a resource id on two or more):",
        format!(
            "{} ({} resources; {} Pods in all, {} of no resource of ours)",
            census.extra_pods, census.duplicated, census.pods, census.strangers
        ),
    );
}

fn print_freshness(label: &str, f: &Freshness) {
    row(
        label,
        format!(
            "{}/{} (page served from A's cache before the write: {}/{}; a cache hit after it: {})",
            f.fresh, f.checks, f.cached, f.checks, f.hit_after
        ),
    );
    for line in &f.stale {
        println!("    {line}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let setup = Setup::from_env()?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&env("DATABASE_URL"))
        .await
        .context("connecting to DATABASE_URL")?;
    let (connections, sampler) = sample_connections(db.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let admin = common::admin_token(&setup.bin)?;
    let catalog = pods::k8s_catalog(&http, &setup.api(), &admin, "scale").await?;
    let kube = kube::Client::try_default().await?;
    let watch = pods::observe(kube.clone()).await?;
    let run = &app::ids::encode_suffix(uuid::Uuid::now_v7())[20..];

    say(&format!("{PAGE_RESOURCES} resources for the list page"));
    let page_token = experiment_token(&setup.bin, &format!("exp_dev.local_scale{run}page"))?;
    seed_page(&http, &setup, &page_token, &catalog).await?;
    let through = load(&http, &setup, &page_token, &setup.balancer, &connections).await?;
    let direct = load(
        &http,
        &setup,
        &page_token,
        &setup.serves[0].url,
        &connections,
    )
    .await?;

    say("list cache freshness, every replica");
    let everyone: Vec<&Process> = setup.serves.iter().collect();
    let before = freshness(&http, &everyone, &page_token).await?;

    connections.store(0, Ordering::Relaxed);
    let burst = burst(&setup, &catalog, watch, &db, run).await?;
    let burst_connections = connections.swap(0, Ordering::Relaxed);
    let census = census(&setup, &http, &burst, &db, &kube).await?;
    let tasks = per_worker(&db, &burst.experiments, &setup.workers).await?;
    let taken = take_over(&db, &burst.kill).await?;

    say("list cache freshness, the replicas still alive");
    let alive: Vec<&Process> = setup
        .serves
        .iter()
        .filter(|s| s.pid != burst.kill.serve.pid)
        .collect();
    let after = freshness(&http, &alive, &page_token).await?;
    sampler.abort();
    let max_connections: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&db)
        .await?;

    println!(
        "scale-out: {} serve (RUN_WORKER=false) + {} worker processes, one database, haproxy round-robin",
        setup.serves.len(),
        setup.workers.len()
    );
    print_load(&setup, &through, &direct, &max_connections);
    print_burst(&setup, &burst, &census, (&tasks, &taken));
    row(
        "  peak connections to the database:",
        format!("{burst_connections} (max_connections {max_connections})"),
    );
    println!(
        "list cache: read a page on A twice, write through B ({} on each pair), read on A at once:",
        WRITES.map(|w| format!("{w:?}")).join(", ")
    );
    let fresh = before.fresh + after.fresh;
    let checks = before.checks + after.checks;
    row(
        "  fresh after writes on another replica:",
        format!("{fresh}/{checks}"),
    );
    print_freshness(
        &format!("    {} serve, before the kill:", everyone.len()),
        &before,
    );
    print_freshness(
        &format!("    {} serve alive, after it:", alive.len()),
        &after,
    );
    if let Ok(dir) = std::env::var("BENCH_SCALE_LOG_DIR") {
        row(
            "log lines of the processes on refused connections:",
            refused_connections(std::path::Path::new(&dir))?,
        );
    }
    Ok(())
}
