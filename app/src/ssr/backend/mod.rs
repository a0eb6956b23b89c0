//! Compute backends behind one trait: the task worker and the UI only see
//! [`ComputeBackend`]: Kubernetes Pods (`flavor_type = k8s`) and OpenStack Nova servers
//! (`vm`, with each requesting user's own clouds.yaml).

pub mod kubernetes;
pub mod openstack;
pub mod pod_feed;

use crate::error::AppError;
use crate::model::{AllocationState, BackendDetails, FlavorType, OperationalState};
use crate::ssr::state::AppState;
use crate::ssr::tasks::Progress;
use std::sync::Arc;
use uuid::Uuid;

/// A backend failure. `retryable` errors (network, 5xx, a name still held by a terminating
/// object) re-queue the task with backoff; the others fail it with `message`, which is
/// written for the experimenter.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub retryable: bool,
    pub message: String,
}

impl BackendError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// What a backend currently sees of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub allocation: AllocationState,
    pub operational: OperationalState,
    pub message: String,
    pub details: BackendDetails,
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
}

/// The columns a [`ResourceRecord`] is read from: a resource joined with its image and
/// flavor ([`ResourceRecord::load`], and the insert of `POST /resources`, which hands the
/// record it wrote to this process's worker).
pub(crate) struct RecordRow {
    pub id: Uuid,
    pub experiment_id: String,
    pub project_id: String,
    pub requested_by: Option<String>,
    pub friendly_name: String,
    pub flavor_type: String,
    pub allocation_state: String,
    pub network_name: Option<String>,
    pub userdata: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub backend_details: serde_json::Value,
    pub location: String,
    pub cluster_id: String,
    pub default_username: String,
    pub image_name: String,
    pub vcpus: i32,
    pub ram_mib: i32,
    pub disk_mb: i32,
    pub flavor_name: String,
    pub flavor_source_id: Option<String>,
}

impl RecordRow {
    pub(crate) fn into_record(self, site: &str) -> ResourceRecord {
        ResourceRecord {
            id: self.id,
            typed_id: crate::ids::format_id(crate::ids::IdKind::Resource, site, self.id),
            experiment_id: self.experiment_id,
            project_id: self.project_id,
            requested_by: self.requested_by,
            friendly_name: self.friendly_name,
            flavor_type: FlavorType::parse(&self.flavor_type).unwrap_or(FlavorType::K8s),
            allocation_state: AllocationState::parse(&self.allocation_state)
                .unwrap_or(AllocationState::Failed),
            image_location: self.location,
            image_name: self.image_name,
            image_cluster_id: self.cluster_id,
            default_username: self.default_username,
            vcpus: self.vcpus,
            ram_mib: self.ram_mib,
            disk_mb: self.disk_mb,
            flavor_name: self.flavor_name,
            flavor_source_id: self.flavor_source_id,
            network_name: self.network_name,
            userdata: self.userdata,
            ssh_authorized_keys: self.ssh_authorized_keys,
            details: serde_json::from_value(self.backend_details).unwrap_or_default(),
        }
    }
}

impl ResourceRecord {
    /// Loads a resource with its image and flavor.
    pub async fn load(state: &AppState, id: Uuid) -> Result<Self, AppError> {
        let row = sqlx::query_as!(
            RecordRow,
            r#"SELECT r.id, r.experiment_id, r.project_id, r.requested_by, r.friendly_name,
                      r.flavor_type, r.allocation_state, r.network_name, r.userdata,
                      r.ssh_authorized_keys, r.backend_details,
                      i.location, i.cluster_id, i.default_username, i.friendly_name AS image_name,
                      f.vcpus, f.ram_mib, f.disk_mb, f.friendly_name AS flavor_name,
                      f.source_id AS flavor_source_id
               FROM resources r
               JOIN disk_images i ON i.id = r.disk_image_id
               JOIN flavors f ON f.id = r.flavor_id
               WHERE r.id = $1"#,
            id
        )
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("resource {id} vanished")))?;
        Ok(row.into_record(state.site()))
    }
}

/// A place resources are provisioned: create, observe, delete. Implementations must be
/// idempotent — a retried create adopts what an earlier attempt made, a delete of
/// something already gone succeeds.
#[async_trait::async_trait]
pub trait ComputeBackend: Send + Sync {
    /// Makes (or adopts) the backend object and waits until it is ready or failed.
    async fn create(
        &self,
        resource: &ResourceRecord,
        progress: &Progress,
    ) -> Result<BackendDetails, BackendError>;

    /// Reads the backend object's current state.
    async fn observe(&self, resource: &ResourceRecord) -> Result<Observation, BackendError>;

    /// Removes the backend object and waits until it is gone; absent counts as done.
    async fn delete(
        &self,
        resource: &ResourceRecord,
        progress: &Progress,
    ) -> Result<(), BackendError>;
}

/// The configured backends.
#[derive(Default)]
pub struct Backends {
    pub kubernetes: Option<Arc<kubernetes::KubernetesBackend>>,
    /// Why Kubernetes is not connected, for the start-up report.
    pub kubernetes_error: Option<String>,
    pub openstack: Option<Arc<openstack::OpenStackBackend>>,
}

impl Backends {
    /// The backend for a flavor type, if configured.
    pub fn for_type(&self, flavor_type: FlavorType) -> Option<Arc<dyn ComputeBackend>> {
        match flavor_type {
            FlavorType::K8s => self
                .kubernetes
                .clone()
                .map(|k| k as Arc<dyn ComputeBackend>),
            FlavorType::Vm => self.openstack.clone().map(|o| o as Arc<dyn ComputeBackend>),
        }
    }

    /// Whether resources of this flavor type can be provisioned here.
    pub fn supports(&self, flavor_type: FlavorType) -> bool {
        self.for_type(flavor_type).is_some()
    }
}
