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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    let api: Api<FeedPod> = Api::all(client);
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
                let pod = Arc::new(pod.0);
                relisted.insert(uid(&pod), pod.clone());
                feed.route(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Apply(pod)) => {
                let pod = Arc::new(pod.0);
                feed.lock_store().insert(uid(&pod), pod.clone());
                feed.route(PodEvent::Applied(pod));
            }
            Ok(watcher::Event::Delete(pod)) => {
                feed.lock_store().remove(&uid(&pod.0));
                feed.route(PodEvent::Deleted(Arc::new(pod.0)));
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

/// A managed Pod as the feed (and a create's answer) decodes it: metadata without
/// `managedFields` (server-side apply bookkeeping, often the larger part of a Pod's
/// metadata, and a tree of JSON values to build), `spec.nodeName` and the whole `status`
/// (core/v1 `PodStatus`) — what its readers use (the waiting create's `details_of`, the
/// reconciler's `observed`). The rest of the object (containers, volumes, security
/// contexts) is skipped while decoding, not decoded and dropped: in a burst of 1,000 Pods
/// the feed decodes about 3,000 watch events. The store holds every managed Pod, so it
/// keeps only this much of each.
///
/// Serializes as the whole [`Pod`] it holds (what a create sends); decodes a Pod's JSON
/// (Kubernetes API reference, core/v1 Pod) into the subset above.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedPod(pub Pod);

impl k8s_openapi::Resource for FeedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for FeedPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl serde::Serialize for FeedPod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for FeedPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
        use std::collections::BTreeMap;
        /// The fields of `ObjectMeta` (meta/v1) but `managedFields`, which serde skips
        /// unread like any field not named here.
        #[derive(serde::Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta {
            annotations: Option<BTreeMap<String, String>>,
            creation_timestamp: Option<Time>,
            deletion_grace_period_seconds: Option<i64>,
            deletion_timestamp: Option<Time>,
            finalizers: Option<Vec<String>>,
            generate_name: Option<String>,
            generation: Option<i64>,
            labels: Option<BTreeMap<String, String>>,
            name: Option<String>,
            namespace: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            resource_version: Option<String>,
            self_link: Option<String>,
            uid: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            node_name: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Wire {
            metadata: Option<Meta>,
            spec: Option<Spec>,
            status: Option<PodStatus>,
        }
        let wire = Wire::deserialize(deserializer)?;
        let m = wire.metadata.unwrap_or_default();
        Ok(FeedPod(Pod {
            metadata: ObjectMeta {
                annotations: m.annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                generate_name: m.generate_name,
                generation: m.generation,
                labels: m.labels,
                managed_fields: None,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references,
                resource_version: m.resource_version,
                self_link: m.self_link,
                uid: m.uid,
            },
            spec: wire.spec.map(|spec| PodSpec {
                node_name: spec.node_name,
                ..PodSpec::default()
            }),
            status: wire.status,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::FeedPod;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};

    /// A Running Pod as the API test server's watch sends it: metadata with managedFields
    /// from three managers, a full spec, a status.
    fn running_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "42",
                         "generateName": "p-", "generation": 1,
                         "creationTimestamp": "2026-12-06T10:00:00Z",
                         "deletionTimestamp": "2026-12-06T10:05:00Z",
                         "deletionGracePeriodSeconds": 30, "finalizers": ["f"],
                         "labels": {"a": "b"}, "annotations": {"c": "d"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x",
                                              "uid": "xu"}],
                         "managedFields": [
                             {"manager": "slices-blueprint", "operation": "Update",
                              "apiVersion": "v1", "fieldsType": "FieldsV1",
                              "fieldsV1": {"f:spec": {"f:containers": {}}}},
                             {"manager": "fake-kubelet", "operation": "Update",
                              "subresource": "status", "fieldsV1": {"f:status": {}}}]},
            "spec": {"nodeName": "fake-node",
                     "containers": [{"name": "c", "image": "nginx",
                                     "env": [{"name": "K", "value": "v"}]}],
                     "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]},
            "status": {"phase": "Running", "podIP": "10.244.0.7", "hostIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "image": "nginx", "imageID": "",
                                              "ready": true, "restartCount": 2,
                                              "state": {"running": {}}}]}
        })
    }

    /// The feed's decoding keeps all of the metadata but managedFields, the whole status
    /// and the node, and equals the full decoding with the rest cut away.
    #[test]
    fn a_feed_pod_is_the_full_pod_without_managed_fields_and_spec() {
        let full: Pod = serde_json::from_value(running_pod()).expect("full pod");
        let slim: FeedPod = serde_json::from_value(running_pod()).expect("feed pod");
        let mut expected = full.clone();
        expected.metadata.managed_fields = None;
        expected.spec = Some(PodSpec {
            node_name: Some("fake-node".into()),
            ..PodSpec::default()
        });
        assert_eq!(slim.0, expected);
        assert!(
            full.metadata.managed_fields.is_some(),
            "the sample has managedFields"
        );
        assert_eq!(slim.0.status, full.status);
        assert_eq!(slim.0.metadata.owner_references.map(|o| o.len()), Some(1));
    }

    /// A Pod just created (no spec.nodeName, no status) and a bare object decode too; a
    /// field of the wrong type is still an error.
    #[test]
    fn a_feed_pod_decodes_sparse_pods_and_rejects_bad_types() {
        let fresh: FeedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": []}
        }))
        .expect("fresh pod");
        assert_eq!(fresh.0.metadata.name.as_deref(), Some("p"));
        assert_eq!(fresh.0.spec.and_then(|s| s.node_name), None);
        assert_eq!(fresh.0.status, None);
        let bare: FeedPod = serde_json::from_value(serde_json::json!({})).expect("bare");
        assert_eq!(bare, FeedPod::default());
        let bad = serde_json::from_value::<FeedPod>(serde_json::json!({
            "metadata": {"labels": ["not", "a", "map"]}
        }));
        assert!(bad.is_err(), "labels must be a map");
    }

    /// What a create sends is the whole Pod, not the subset it decodes.
    #[test]
    fn a_feed_pod_serializes_as_its_whole_pod() {
        let full: Pod = serde_json::from_value(running_pod()).expect("full pod");
        let sent = serde_json::to_value(FeedPod(full.clone())).expect("serialize");
        assert_eq!(sent, serde_json::to_value(&full).expect("serialize pod"));
    }
}
