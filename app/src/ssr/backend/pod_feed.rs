//! One watch of every Pod this backend manages, shared by the creates waiting for their Pod.
//!
//! A create used to open a watch of its own Pod right after the API server stored it: one
//! more request, and one more watcher registered on the API server, at the moment the
//! scheduler and kubelet are busy starting that Pod. Controllers watch once and hand each
//! event to whoever waits (client-go's shared informers; kube-rs's `runtime::watcher`, which
//! lists, then watches, and lists again after a lost watch). [`PodFeed`] does that for Pods
//! labelled `app.kubernetes.io/managed-by=slices-blueprint` in every namespace.
//!
//! - A waiting create subscribes to its Pod's namespace and name *before* it sends the Pod
//!   (so no later change is missed), then reads that Pod's events until the Pod (matched by
//!   `metadata.uid`, unique in the cluster) leaves Pending or is deleted
//!   ([`Subscription::settle`]).
//! - Each event goes only to the waiters of its Pod (a map from namespace and name to their
//!   channels), so a waiter reads its own Pod's three or four events, whatever else the
//!   cluster does: during a burst of 1,000 creates no waiter wades through every other Pod's
//!   events or falls behind them (an earlier broadcast to every waiter did, and sent them to
//!   watches of their own).
//! - The feed needs `list` and `watch` on Pods in all namespaces (cluster scope). Where it
//!   cannot have them, or while its watch is down, the waiter answers [`FeedGone`] and the
//!   caller watches its own Pod as before.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long a create waits for a feed that is still making its first list.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(2);

/// What the shared watch is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedState {
    /// Not yet through its first list.
    Starting,
    /// Watching: every change of a managed Pod is broadcast.
    Live,
    /// The watch failed (no permission, API server away); it retries with backoff.
    Down,
}

/// A change of a managed Pod.
#[derive(Debug, Clone)]
pub enum PodEvent {
    /// Added or modified (or listed again after a lost watch).
    Applied(Arc<Pod>),
    Deleted(Arc<Pod>),
}

/// The feed cannot answer this wait (its watch is down): watch the Pod directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedGone;

/// The shared watch of one backend; started on the first [`PodFeed::subscribe`].
pub struct PodFeed {
    client: Client,
    label_selector: String,
    /// The waiters of each Pod, by `(namespace, name)`: a subscription's number and channel.
    waiters: Mutex<HashMap<PodKey, Vec<Waiter>>>,
    next_waiter: AtomicU64,
    state: watch::Sender<FeedState>,
    started: AtomicBool,
    settled: AtomicU64,
    /// Every managed Pod as last seen, by `metadata.uid` (what the reconciler compares with
    /// the database); rebuilt from each full list.
    store: Mutex<HashMap<String, Arc<Pod>>>,
}

impl PodFeed {
    /// A feed of the Pods matching `label_selector` (e.g. `app.kubernetes.io/managed-by=x`),
    /// watched through `client`. Nothing runs until [`PodFeed::start`] or a subscription.
    pub fn new(client: Client, label_selector: &str) -> Arc<Self> {
        Arc::new(Self {
            client,
            label_selector: label_selector.to_string(),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            state: watch::channel(FeedState::Starting).0,
            started: AtomicBool::new(false),
            settled: AtomicU64::new(0),
            store: Mutex::new(HashMap::new()),
        })
    }

    /// Every managed Pod as the watch last saw it, while the watch is live (`None` while it
    /// starts or is down: then nobody can say which Pods exist).
    pub fn snapshot(&self) -> Option<Vec<Arc<Pod>>> {
        if self.state() != FeedState::Live {
            return None;
        }
        Some(self.lock_store().values().cloned().collect())
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pod>>> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<PodKey, Vec<Waiter>>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `event` to the waiters of its Pod (none: nothing to do).
    fn route(&self, event: PodEvent) {
        let pod = match &event {
            PodEvent::Applied(pod) | PodEvent::Deleted(pod) => pod,
        };
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        if let Some(waiters) = self.lock_waiters().get(&key) {
            for (_, tx) in waiters {
                let _ = tx.send(event.clone());
            }
        }
    }

    /// Starts the watch on the current tokio runtime (once; later calls do nothing). It
    /// runs until the feed is dropped and an event arrives, or the runtime ends.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(run(
            Arc::downgrade(self),
            self.client.clone(),
            self.label_selector.clone(),
        ));
    }

    /// What the watch is doing now.
    pub fn state(&self) -> FeedState {
        *self.state.borrow()
    }

    /// How many waits the feed has answered (the rest fell back to a watch of their own).
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Relaxed)
    }

    /// Subscribes to every later event of the Pod `name` in `namespace`, for a create about
    /// to send it. Starts the feed if needed, and waits (at most [`FIRST_LIST_WAIT`]) while
    /// it makes its first list. The subscription ends when dropped.
    pub async fn subscribe(self: &Arc<Self>, namespace: &str, name: &str) -> Subscription {
        self.start();
        let key = (namespace.to_string(), name.to_string());
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        self.lock_waiters()
            .entry(key.clone())
            .or_default()
            .push((id, tx));
        let mut state = self.state.subscribe();
        if *state.borrow() == FeedState::Starting {
            let _ = tokio::time::timeout(
                FIRST_LIST_WAIT,
                state.wait_for(|s| *s != FeedState::Starting),
            )
            .await;
        }
        Subscription {
            feed: self.clone(),
            key,
            id,
            events,
            state,
        }
    }
}

/// A Pod's namespace and name.
type PodKey = (String, String);
/// A subscription's number and the channel its Pod's events go to.
type Waiter = (u64, mpsc::UnboundedSender<PodEvent>);

/// A waiter's view of one Pod's events, from the moment it subscribed.
pub struct Subscription {
    feed: Arc<PodFeed>,
    key: PodKey,
    id: u64,
    events: mpsc::UnboundedReceiver<PodEvent>,
    state: watch::Receiver<FeedState>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = self.feed.lock_waiters();
        if let Some(list) = waiters.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

impl Subscription {
    /// Waits until the Pod with `metadata.uid` = `uid` (the one subscribed to; events of an
    /// older Pod of the same name are skipped) is no longer `pending`: `Ok(Some(pod))`, or
    /// `Ok(None)` if it was deleted. [`FeedGone`] when the feed is not live; the caller then
    /// watches the Pod itself. No time limit of its own (the caller bounds the wait).
    pub async fn settle(
        mut self,
        uid: &str,
        pending: impl Fn(&Pod) -> bool,
    ) -> Result<Option<Pod>, FeedGone> {
        if *self.state.borrow() != FeedState::Live {
            return Err(FeedGone);
        }
        let ours = |p: &Pod| p.metadata.uid.as_deref() == Some(uid);
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(PodEvent::Applied(pod)) if ours(&pod) && !pending(&pod) => {
                        self.feed.settled.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(Arc::unwrap_or_clone(pod)));
                    }
                    Some(PodEvent::Deleted(pod)) if ours(&pod) => {
                        self.feed.settled.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                    Some(_) => {}
                    None => return Err(FeedGone),
                },
                _ = self.state.wait_for(|s| *s != FeedState::Live) => return Err(FeedGone),
            }
        }
    }
}

/// The watch loop: kube's `watcher` (list, then watch; lists again after a lost watch, with
/// backoff between failures), each Pod handed to its waiters as it comes.
async fn run(feed: std::sync::Weak<PodFeed>, client: Client, label_selector: String) {
    use futures::StreamExt as _;
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().labels(&label_selector);
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // The Pods of a full list in progress (they replace the store when it is done).
    let mut relisted: HashMap<String, Arc<Pod>> = HashMap::new();
    let uid = |pod: &Pod| pod.metadata.uid.clone().unwrap_or_default();
    while let Some(event) = stream.next().await {
        let Some(feed) = feed.upgrade() else { return };
        match event {
            Ok(watcher::Event::InitApply(pod)) => {
                let pod = Arc::new(trimmed(pod));
                relisted.insert(uid(&pod), pod.clone());
                feed.route(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Apply(pod)) => {
                let pod = Arc::new(trimmed(pod));
                feed.lock_store().insert(uid(&pod), pod.clone());
                feed.route(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Delete(pod)) => {
                feed.lock_store().remove(&uid(&pod));
                feed.route(PodEvent::Deleted(Arc::new(trimmed(pod))));
            }
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitDone) => {
                *feed.lock_store() = std::mem::take(&mut relisted);
                if feed.state.send_replace(FeedState::Live) != FeedState::Live {
                    tracing::debug!("pod feed live");
                }
            }
            Err(e) => {
                if feed.state.send_replace(FeedState::Down) != FeedState::Down {
                    tracing::info!(error = %e, "pod feed down (creates watch their own pods until it is back)");
                }
            }
        }
    }
}

/// `pod` with only what its readers use (the waiting create's `details_of`, the
/// reconciler's `observed`: metadata, status and `spec.nodeName`): without
/// `metadata.managedFields` (server-side apply bookkeeping, often the larger part of a Pod's
/// metadata) and without the rest of its spec (containers, volumes, security contexts). The
/// store holds every managed Pod, and during a burst a thousand creates wait on theirs.
fn trimmed(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.map(|spec| k8s_openapi::api::core::v1::PodSpec {
        node_name: spec.node_name,
        ..Default::default()
    });
    pod
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    /// The store keeps what `details_of` and `observed` read, and drops the bulk.
    #[test]
    fn a_stored_pod_keeps_metadata_status_and_node_only() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": "fake-node", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.7"}
        }))
        .expect("pod");
        let kept = super::trimmed(pod.clone());
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(kept.metadata.labels, pod.metadata.labels);
        assert_eq!(kept.metadata.uid.as_deref(), Some("u"));
        assert_eq!(kept.status, pod.status);
        let spec = kept.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("fake-node"));
        assert!(spec.containers.is_empty());
    }
}
