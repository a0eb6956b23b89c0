//! Pods through slices-blueprint, for the benches that time many of them (burst, scale_out):
//! the k8s flavor and disk image a bench makes for itself, and one watch of every Pod in the
//! cluster that tells when they run.
//!
//! Included by path (`#[path = "common/pods.rs"] mod pods;`) next to `mod common;` by the
//! benches that use it, so the others carry none of it as dead code.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// `(namespace, name)` of every Pod the watch has seen Running.
pub type Running = Arc<Mutex<HashSet<(String, String)>>>;

/// One watch of every Pod in the cluster for the whole bench (an observer like a dashboard's
/// informer); returns once it has listed. The [`Notify`] wakes its waiters on every Pod seen
/// Running.
pub async fn observe(client: kube::Client) -> anyhow::Result<(Running, Arc<Notify>)> {
    use futures::StreamExt as _;
    let running: Running = Arc::default();
    let changed = Arc::new(Notify::new());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (seen, notify) = (running.clone(), changed.clone());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let events = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
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
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
                notify.notify_waiters();
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx).await??;
    Ok((running, changed))
}

/// How many Pods in `namespaces` the watch has seen Running.
pub fn running_in(running: &Running, namespaces: &HashSet<String>) -> usize {
    running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(ns, _)| namespaces.contains(ns))
        .count()
}

/// Waits (at most `limit`) until the watch saw `n` Running Pods in `namespaces`.
pub async fn all_running(
    running: &Running,
    changed: &Notify,
    namespaces: &HashSet<String>,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = changed.notified();
        let count = running_in(running, namespaces);
        if count >= n {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            anyhow::bail!("only {count} of {n} Pods Running after {limit:?}");
        }
    }
}

/// A k8s flavor (1 vCPU, 64 MiB) and an `nginx:alpine` disk image of the bench's own, named
/// `<name>-<random tag>` (admin token, `api` = the REST API's base): `(image id, flavor id)`.
pub async fn k8s_catalog(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let tag = &app::ids::encode_suffix(uuid::Uuid::now_v7())[20..];
    let flavor: Value = crate::common::answer(
        http.post(format!("{api}/flavors")).bearer_auth(admin).json(&json!({
            "friendly_name": format!("{name}-{tag}"), "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64
        })),
        "POST /flavors",
    )
    .await?;
    let image: Value = crate::common::answer(
        http.post(format!("{api}/disk-images")).bearer_auth(admin).json(&json!({
            "friendly_name": format!("{name}-{tag}"), "location": "nginx:alpine", "default_username": "root"
        })),
        "POST /disk-images",
    )
    .await?;
    let id = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
    Ok((id(&image), id(&flavor)))
}
