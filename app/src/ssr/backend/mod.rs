//! The ports: what the core (the task worker, the resource service, the dashboard) needs
//! from the outside, next to their error types. [`ComputeBackend`] is implemented by the
//! adapters in this folder — Kubernetes Pods (`flavor_type = k8s`, [`kubernetes`]) and
//! OpenStack Nova servers (`vm`, with each requesting user's own clouds.yaml, [`openstack`]);
//! [`Progress`] by the task queue (`queue::PgProgress`); [`CloudsSource`] by the clouds.yaml
//! store (`clouds::DbClouds`). The adapters import only this module and the pure modules
//! below it; nothing here knows the application state.

pub mod kubernetes;
pub mod openstack;
pub mod pod_feed;

use crate::model::{AllocationState, BackendDetails, FlavorType, OperationalState};
use crate::ssr::cloud_config::CloudsFile;
use std::sync::Arc;
use uuid::Uuid;

/// A backend failure. `retryable` errors (5xx, a name still held by a terminating object)
/// re-queue the task with backoff, each try using up one of its attempts; `unreachable` ones
/// (the service did not answer at all: connection refused or reset, timed out) are retried
/// with a capped backoff without using up attempts, until the outage has lasted longer than
/// the worker's outage budget; the others fail it with `message`, which is written for the
/// experimenter.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub retryable: bool,
    /// The service that did not answer (`Kubernetes API`, `Keystone`, …), for an outage.
    pub unreachable: Option<&'static str>,
    pub message: String,
}

impl BackendError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            unreachable: None,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            unreachable: None,
            message: message.into(),
        }
    }

    /// `service` did not answer at all (its outage, not a refusal of this request).
    pub fn unreachable(service: &'static str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            unreachable: Some(service),
            message: message.into(),
        }
    }
}

/// Everything a backend needs to know about one resource (joined from the catalog).
#[derive(Debug, Clone)]
pub struct ResourceRecord {
    pub id: Uuid,
    /// `resource_<site>_<suffix>`.
    pub typed_id: String,
    pub experiment_id: String,
    pub project_id: String,
    pub requested_by: Option<String>,
    pub friendly_name: String,
    pub flavor_type: FlavorType,
    pub allocation_state: AllocationState,
    /// The catalog image's `location` (container image reference for Pods; Glance id or
    /// name for VMs).
    pub image_location: String,
    /// The catalog image's `friendly_name` (fallback Glance name for VMs).
    pub image_name: String,
    /// The catalog image's tags (e.g. `needs-root` for a container that must run as root).
    pub image_tags: Vec<String>,
    pub image_cluster_id: String,
    pub default_username: String,
    pub vcpus: i32,
    pub ram_mib: i32,
    pub disk_mb: i32,
    /// The catalog flavor's `friendly_name` (the Nova flavor name for VMs).
    pub flavor_name: String,
    /// The Nova flavor id recorded at catalog import, if any.
    pub flavor_source_id: Option<String>,
    pub network_name: Option<String>,
    pub userdata: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub details: BackendDetails,
    /// A Pod's container options (empty for VMs: the API refuses them there).
    pub pod: crate::model::PodOptions,
}

/// Where a running task reports what it is doing. The queue's implementation writes to the
/// task and resource rows only while its worker holds the task's lease; tests may record the
/// calls instead.
#[async_trait::async_trait]
pub trait Progress: Send + Sync {
    /// Sets the task's progress (`completed`, 0-100) and message, and mirrors the message on
    /// the resource.
    async fn report(&self, completed: i16, message: &str);

    /// The resource's two state axes, message and (when given) backend details, together
    /// with the task's `completed` (0-100) and the same message: one write, used at the step
    /// where the Pod or server has been created.
    async fn stage(
        &self,
        completed: i16,
        allocation: AllocationState,
        operational: OperationalState,
        message: &str,
        details: Option<&BackendDetails>,
    );

    /// The backend has made its object and from now on only waits for it to be ready (a
    /// Pod's events on the shared watch): the worker may start another task in this task's
    /// slot meanwhile (`worker`, waiting places). Does nothing by default.
    async fn waiting(&self) {}
}

/// A user's parsed clouds.yaml and chosen default cloud, for the VM backend.
#[async_trait::async_trait]
pub trait CloudsSource: Send + Sync {
    /// `Err` carries a message for the experimenter (no clouds.yaml uploaded, unreadable).
    async fn clouds_of(&self, user_id: &str) -> Result<(CloudsFile, String), String>;
}

/// What part of a container's log to read (the Kubernetes `pods/log` query, API reference
/// "Read Log of the specified Pod").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// The container; `None`: the Pod's only one.
    pub container: Option<String>,
    /// Only the last this many lines.
    pub tail_lines: Option<i64>,
    /// Only lines of the last this many seconds.
    pub since_seconds: Option<i64>,
    /// Each line starts with its RFC 3339 time.
    pub timestamps: bool,
    /// Keep the log open and stream new lines until the container ends or the reader leaves.
    pub follow: bool,
}

/// A log as read ([`LogQuery::follow`] false) or as a stream of lines (true; each without its
/// line break).
pub enum LogOutput {
    Text(String),
    Lines(futures::stream::BoxStream<'static, Result<String, BackendError>>),
}

/// Why a log cannot be read.
#[derive(Debug, Clone)]
pub enum LogsError {
    /// The query must name a container, or names one the Pod does not have (the message lists
    /// the Pod's containers).
    Container(String),
    /// There is no log (yet, or any more): the container waits to start, the Pod is gone, or
    /// the object has none.
    NotAvailable(String),
    Backend(BackendError),
}

/// A place resources are provisioned. Implementations must be idempotent — a retried create
/// adopts what an earlier attempt made, a delete of something already gone succeeds.
#[async_trait::async_trait]
pub trait ComputeBackend: Send + Sync {
    /// Makes (or adopts) the backend object and waits until it is ready or failed.
    async fn create(
        &self,
        resource: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<BackendDetails, BackendError>;

    /// Removes the backend object and waits until it is gone; absent counts as done.
    async fn delete(
        &self,
        resource: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<(), BackendError>;

    /// The last `lines` lines of the object's console (a VM's boot log). Backends without
    /// one answer a permanent error saying so.
    async fn console_log(
        &self,
        _resource: &ResourceRecord,
        _lines: u32,
    ) -> Result<String, BackendError> {
        Err(BackendError::permanent(
            "this kind of resource has no console log",
        ))
    }

    /// The log of one of the object's containers (a Pod's output), whole or followed. Backends
    /// without one answer [`LogsError::NotAvailable`] saying so.
    async fn logs(
        &self,
        _resource: &ResourceRecord,
        _query: &LogQuery,
    ) -> Result<LogOutput, LogsError> {
        Err(LogsError::NotAvailable(
            "only Pods have logs (a VM has its console log)".into(),
        ))
    }

    /// One line on the backend's connection for `/healthz` (e.g. `connected; pod watch live`).
    fn health(&self) -> String;

    /// Every object of this backend that carries our marks (Kubernetes: the
    /// `app.kubernetes.io/managed-by=slices-blueprint` label; Nova: our resource-id metadata),
    /// as it is now, for the reconciler. `owner` narrows it to one user's objects where the
    /// backend works per user (OpenStack: the user's clouds.yaml); `Ok(None)` when this
    /// backend cannot observe (the default).
    async fn observe(&self, _owner: Option<&str>) -> Result<Option<Observation>, BackendError> {
        Ok(None)
    }

    /// Deletes an object [`ComputeBackend::observe`] reported whose resource the database does
    /// not know, or knows as gone (an orphan), by its handle (a Pod only with that uid).
    /// Absent counts as done; an object of another backend's kind is left alone.
    async fn remove_orphan(&self, _object: &ObjectHandle) -> Result<(), BackendError> {
        Ok(())
    }
}

/// What [`ComputeBackend::observe`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub objects: Vec<Observed>,
    /// Where it could not look (OpenStack: names of the owner's clouds whose listing failed):
    /// a resource living there is neither seen nor gone.
    pub blind: Vec<String>,
    /// What a disk image's `cluster_id = default` means for this owner (their default cloud).
    pub default_scope: Option<String>,
}

/// One backend object carrying our marks, as [`ComputeBackend::observe`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The typed resource id it names (`resource_<site>_…`); `None` when it carries our
    /// marks but no resource id.
    pub resource_id: Option<String>,
    /// Where it is, for the log and for [`ComputeBackend::remove_orphan`].
    pub handle: ObjectHandle,
    pub health: ObservedHealth,
}

/// How to find one backend object again. Stored in a reconcile task's `target` as JSON
/// (`{"kind": "pod", "namespace", "name", "uid"}` or `{"kind": "server", "user_id", "cloud",
/// "server_id"}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectHandle {
    /// A Pod (core/v1), by namespace, name and `metadata.uid`.
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
    /// A Nova server of `user_id`'s cloud `cloud`.
    Server {
        user_id: String,
        cloud: String,
        server_id: String,
    },
}

impl ObjectHandle {
    /// One key per object, the same from every pass and process: `pod/<uid>` (a Pod's uid is
    /// unique in its cluster, also over time) or `server/<user>/<cloud>/<server id>`.
    pub fn key(&self) -> String {
        match self {
            ObjectHandle::Pod { uid, .. } => format!("pod/{uid}"),
            ObjectHandle::Server {
                user_id,
                cloud,
                server_id,
            } => format!("server/{user_id}/{cloud}/{server_id}"),
        }
    }
}

impl std::fmt::Display for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectHandle::Pod {
                namespace, name, ..
            } => write!(f, "pod {namespace}/{name}"),
            ObjectHandle::Server {
                cloud, server_id, ..
            } => write!(f, "server {server_id} on cloud `{cloud}`"),
        }
    }
}

/// What an observed object is doing, in the terms of a resource's `operational_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedHealth {
    /// Not running yet (scheduling, pulling, building).
    Starting(String),
    /// Running; the text says more when there is more to say (e.g. container restarts).
    Ready(String),
    /// There but not working, and it may recover (CrashLoopBackOff, an image that cannot be
    /// pulled, Nova `ERROR`, `SHUTOFF`).
    Degraded(String),
    /// Ended for good (Pod phase `Failed` or `Succeeded`).
    Stopped(String),
    /// Being deleted.
    Terminating,
}

/// The configured backends, one per flavor type; `None` = not configured on this site.
#[derive(Default, Clone)]
pub struct Backends {
    pub kubernetes: Option<Arc<dyn ComputeBackend>>,
    /// Why Kubernetes is not connected, for the start-up report and `/healthz`.
    pub kubernetes_error: Option<String>,
    pub openstack: Option<Arc<dyn ComputeBackend>>,
}

impl Backends {
    /// The backend for a flavor type, if configured.
    pub fn for_type(&self, flavor_type: FlavorType) -> Option<Arc<dyn ComputeBackend>> {
        match flavor_type {
            FlavorType::K8s => self.kubernetes.clone(),
            FlavorType::Vm => self.openstack.clone(),
        }
    }

    /// Whether resources of this flavor type can be provisioned here.
    pub fn supports(&self, flavor_type: FlavorType) -> bool {
        self.for_type(flavor_type).is_some()
    }

    /// Each backend's state for `/healthz`: its [`ComputeBackend::health`], or why it is absent.
    pub fn health(&self) -> serde_json::Value {
        let kubernetes = match (&self.kubernetes, &self.kubernetes_error) {
            (Some(k), _) => k.health(),
            (None, Some(_)) => "not connected (see the server log)".into(),
            (None, None) => "not configured".into(),
        };
        let openstack = self
            .openstack
            .as_ref()
            .map_or_else(|| "not configured".into(), |o| o.health());
        serde_json::json!({ "kubernetes": kubernetes, "openstack": openstack })
    }
}
