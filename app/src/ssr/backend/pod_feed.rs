//! One watch of every Pod this backend manages, shared by the creates waiting for their Pod.
//!
//! A create used to open a watch of its own Pod right after the API server stored it: one
//! more request, and one more watcher registered on the API server, at the moment the
//! scheduler and kubelet are busy starting that Pod. Controllers watch once and hand each
//! event to whoever waits (client-go's shared informers; kube-rs's `runtime::watcher`, which
//! lists, then watches, and lists again after a lost watch). [`PodFeed`] does that for Pods
//! labelled `app.kubernetes.io/managed-by=slices-blueprint` in every namespace.
//!
//! - A waiting create subscribes *before* it sends the Pod (so no later change is missed),
//!   then reads events until its Pod (matched by `metadata.uid`, unique in the cluster) leaves
//!   Pending or is deleted ([`Subscription::settle`]).
//! - The feed needs `list` and `watch` on Pods in all namespaces (cluster scope). Where it
//!   cannot have them, or while its watch is down, or when a waiter falls behind the
//!   [`CAPACITY`] events buffered for it, the waiter answers [`FeedGone`] and the caller
//!   watches its own Pod as before.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Events buffered per waiter before it counts as fallen behind.
pub const CAPACITY: usize = 1024;
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

/// The feed cannot answer this wait (down, or the waiter fell behind): watch the Pod directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedGone;

/// The shared watch of one backend; started on the first [`PodFeed::subscribe`].
pub struct PodFeed {
    client: Client,
    label_selector: String,
    events: broadcast::Sender<PodEvent>,
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
            events: broadcast::channel(CAPACITY).0,
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

    /// Subscribes to every later event, for a create about to send its Pod. Starts the feed
    /// if needed, and waits (at most [`FIRST_LIST_WAIT`]) while it makes its first list.
    pub async fn subscribe(self: &Arc<Self>) -> Subscription {
        self.start();
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
            events: self.events.subscribe(),
            state,
        }
    }
}

/// A waiter's view of the feed, from the moment it subscribed.
pub struct Subscription {
    feed: Arc<PodFeed>,
    events: broadcast::Receiver<PodEvent>,
    state: watch::Receiver<FeedState>,
}

impl Subscription {
    /// Waits until the Pod with `metadata.uid` = `uid` is no longer `pending`:
    /// `Ok(Some(pod))`, or `Ok(None)` if it was deleted. [`FeedGone`] when the feed is not
    /// live or this waiter fell behind; the caller then watches the Pod itself. No time
    /// limit of its own (the caller bounds the wait).
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
                    Ok(PodEvent::Applied(pod)) if ours(&pod) && !pending(&pod) => {
                        self.feed.settled.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(Arc::unwrap_or_clone(pod)));
                    }
                    Ok(PodEvent::Deleted(pod)) if ours(&pod) => {
                        self.feed.settled.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(pod_uid = uid, missed, "fell behind the pod feed; watching the pod directly");
                        return Err(FeedGone);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(FeedGone),
                },
                _ = self.state.wait_for(|s| *s != FeedState::Live) => return Err(FeedGone),
            }
        }
    }
}

/// The watch loop: kube's `watcher` (list, then watch; lists again after a lost watch, with
/// backoff between failures), each Pod broadcast as it comes.
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
                let pod = Arc::new(pod);
                relisted.insert(uid(&pod), pod.clone());
                let _ = feed.events.send(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Apply(pod)) => {
                let pod = Arc::new(pod);
                feed.lock_store().insert(uid(&pod), pod.clone());
                let _ = feed.events.send(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Delete(pod)) => {
                feed.lock_store().remove(&uid(&pod));
                let _ = feed.events.send(PodEvent::Deleted(Arc::new(pod)));
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
