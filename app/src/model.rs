//! Wire types shared by the REST API, the server functions and the browser UI.
//!
//! Field names follow ../shared/slices-api.md. Units are in the names: `_mib` (MiB),
//! `_mb` (MB), `vcpus` (virtual CPUs). Times are RFC 3339 UTC strings on the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::pod_options::{EnvEntry, PodOptions, PortProtocol, PortSpec};

#[cfg(feature = "ssr")]
use utoipa::ToSchema;

/// A JSON number that is a whole number within `i32` (`64`, or `64.0` as some JSON writers
/// send integers): the schema says `integer`, and JSON Schema counts `64.0` as one.
fn int32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    whole_number(&n)
        .and_then(|v| i32::try_from(v).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number within i32, got {n}"))
        })
}

/// `n` as a whole number when it is one: `64` or `64.0` (JSON Schema's `integer` counts both),
/// within ±9·10¹⁵ for the float spelling (where an f64 still holds every whole number).
pub(crate) fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// [`int32`] for an optional field (`null` or absent = `None`).
fn opt_int32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "int32")] i32);
    Ok(Option::<Whole>::deserialize(d)?.map(|Whole(v)| v))
}

/// A catalog tag as the schema describes it: 1 to 64 characters, not only spaces (the wire
/// type is a plain string; the catalog checks the same).
#[cfg(feature = "ssr")]
struct Tag;

#[cfg(feature = "ssr")]
impl utoipa::PartialSchema for Tag {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some(r"\S"))
            .into()
    }
}

#[cfg(feature = "ssr")]
impl ToSchema for Tag {}

/// A catalog disk image (`image_<site>_<suffix>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct DiskImage {
    pub id: String,
    pub friendly_name: String,
    /// Which cloud the image lives on; `default` means the requesting user's default cloud.
    pub cluster_id: String,
    /// OpenStack Glance image name or id, or a container image reference for Kubernetes.
    pub location: String,
    pub default_username: String,
    pub min_disk_mb: i32,
    pub min_ram_mib: i32,
    pub short_description: String,
    pub long_description: String,
    pub tags: Vec<String>,
    /// Hidden images are listed to admins only.
    pub hidden: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /disk-images`. Omitted fields take the defaults shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskImageInput {
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub friendly_name: String,
    /// Default `default`.
    #[serde(default = "default_cluster")]
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub cluster_id: String,
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub location: String,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_length = 64))]
    pub default_username: String,
    #[serde(default, deserialize_with = "int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub min_disk_mb: i32,
    #[serde(default, deserialize_with = "int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub min_ram_mib: i32,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_length = 512))]
    pub short_description: String,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_length = 8192))]
    pub long_description: String,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_items = 32, value_type = Vec<Tag>))]
    pub tags: Vec<String>,
    #[serde(default)]
    pub hidden: bool,
}

fn default_cluster() -> String {
    "default".to_string()
}

/// Body of `PATCH /disk-images/{id}`: only the fields present are changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskImagePatch {
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub friendly_name: Option<String>,
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub cluster_id: Option<String>,
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub location: Option<String>,
    #[cfg_attr(feature = "ssr", schema(max_length = 64))]
    pub default_username: Option<String>,
    #[serde(default, deserialize_with = "opt_int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub min_disk_mb: Option<i32>,
    #[serde(default, deserialize_with = "opt_int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub min_ram_mib: Option<i32>,
    #[cfg_attr(feature = "ssr", schema(max_length = 512))]
    pub short_description: Option<String>,
    #[cfg_attr(feature = "ssr", schema(max_length = 8192))]
    pub long_description: Option<String>,
    #[cfg_attr(feature = "ssr", schema(max_items = 32, value_type = Option<Vec<Tag>>))]
    pub tags: Option<Vec<String>>,
    pub hidden: Option<bool>,
}

/// What a flavor provisions: an OpenStack server (`vm`) or a Kubernetes Pod (`k8s`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum FlavorType {
    Vm,
    K8s,
}

impl FlavorType {
    /// The wire and database spelling (serde, strum and sqlx all use the lowercase name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A catalog flavor (`flavor_<site>_<suffix>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct Flavor {
    pub id: String,
    pub friendly_name: String,
    pub description: String,
    pub flavor_type: FlavorType,
    /// Memory in MiB (a Pod gets `<ram_mib>Mi` as request and limit).
    pub ram_mib: i32,
    /// Virtual CPUs (a Pod gets `<vcpus>` CPU as request and limit).
    pub vcpus: i32,
    /// Root disk in MB (VMs; ignored for Pods).
    pub disk_mb: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /flavors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FlavorInput {
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub friendly_name: String,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_length = 8192))]
    pub description: String,
    pub flavor_type: FlavorType,
    #[serde(deserialize_with = "int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 2147483647))]
    pub ram_mib: i32,
    #[serde(deserialize_with = "int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 2147483647))]
    pub vcpus: i32,
    #[serde(default, deserialize_with = "int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub disk_mb: i32,
}

/// Body of `PATCH /flavors/{id}`: only the fields present are changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FlavorPatch {
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub friendly_name: Option<String>,
    #[cfg_attr(feature = "ssr", schema(max_length = 8192))]
    pub description: Option<String>,
    pub flavor_type: Option<FlavorType>,
    #[serde(default, deserialize_with = "opt_int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 2147483647))]
    pub ram_mib: Option<i32>,
    #[serde(default, deserialize_with = "opt_int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 2147483647))]
    pub vcpus: Option<i32>,
    #[serde(default, deserialize_with = "opt_int32")]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 2147483647))]
    pub disk_mb: Option<i32>,
}

/// Allocation axis of a resource's state (after the GENI AM API v3 allocation states).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum AllocationState {
    Requested,
    Provisioning,
    Provisioned,
    Deleting,
    Deleted,
    Expired,
    Failed,
}

impl AllocationState {
    /// The wire and database spelling (serde, strum and sqlx all use the lowercase name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the resource is gone for good (its backend object was removed or never made).
    pub fn is_terminal(self) -> bool {
        matches!(self, AllocationState::Deleted | AllocationState::Expired)
    }
}

/// Operational axis of a resource's state.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum OperationalState {
    Pending,
    Booting,
    Ready,
    Error,
}

impl OperationalState {
    /// The wire and database spelling (serde, strum and sqlx all use the lowercase name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What the backend made for a resource. Kubernetes fills the `pod_*`/`namespace` fields,
/// OpenStack the `server_*` fields; absent fields are omitted on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct BackendDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The Service exposing a Pod's `ports` (same name as the Pod; reachable in the
    /// experiment's namespace as `<service_name>.<namespace>.svc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// A requested compute resource (`resource_<site>_<suffix>`): one Pod or one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct Resource {
    pub id: String,
    pub friendly_name: String,
    pub experiment_id: String,
    pub project_id: String,
    /// The user who requested it (the user token in the POST body), when known.
    pub requested_by: Option<String>,
    pub disk_image_id: String,
    pub flavor_id: String,
    pub flavor_type: FlavorType,
    pub network_name: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub allocation_state: AllocationState,
    pub operational_state: OperationalState,
    pub status_message: String,
    pub details: BackendDetails,
    /// Pods: `env`, `command`, `args`, `ports` as requested (absent when not set).
    #[serde(flatten)]
    pub pod: PodOptions,
    /// `ssh <default_username>@<ip>` once an address is known.
    pub ssh_command: Option<String>,
    /// The newest task of this resource.
    pub last_task_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One resource in a `POST /resources` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct ResourceSpec {
    /// Unique among the experiment's live resources. For Pods it becomes the Pod name, so it
    /// must be an RFC 1123 DNS label (lowercase letters, digits, `-`, at most 63 characters).
    pub friendly_name: String,
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = r"^image_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$")
    )]
    pub disk_image_id: String,
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = r"^flavor_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$")
    )]
    pub flavor_id: String,
    /// OpenStack network (VMs only).
    #[serde(default)]
    pub network_name: Option<String>,
    /// cloud-init user data (VMs) or text handed to the Pod (annotation and `USERDATA` env).
    #[serde(default)]
    pub userdata: Option<String>,
    /// Pods only: environment variables of the container (a VM given any: 422).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvEntry>,
    /// Pods only: replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Pods only: replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Pods only: ports, each exposed by a ClusterIP Service named after the resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

impl ResourceSpec {
    /// The spec's Pod options as one value (as stored and carried to the Pod).
    pub fn pod_options(&self) -> PodOptions {
        PodOptions {
            env: self.env.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            ports: self.ports.clone(),
        }
    }
}

/// A token carried in a request body, as the SLICES CLI sends it: `{"jwt": "<user token>"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct TokenRef {
    pub jwt: String,
}

/// Body of `POST /resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct CreateResourcesRequest {
    /// RFC 3339; in the future and not after the experiment's expiry.
    pub expires_at: DateTime<Utc>,
    #[cfg_attr(feature = "ssr", schema(min_items = 1, max_items = 50))]
    pub resources: Vec<ResourceSpec>,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_items = 32))]
    pub ssh_authorized_keys: Vec<String>,
    /// The requesting user's token (`slices auth id-token`), first entry used.
    #[serde(default)]
    pub tokens: Vec<TokenRef>,
    /// The client's own id of this request (a UUID, as SLICES clients send it), making a retry
    /// safe: the same experiment sending the same `request_id` again gets the first answer
    /// back (same resources, same tasks) and nothing is created twice; the same id with a
    /// different body (ignoring `tokens`) is a 409 naming `request_id`. Kept for as long as
    /// the resources it created exist in the database (at least 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<uuid::Uuid>,
}

/// Answer to `POST /resources` (202): the new resources and the task creating each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct CreateResourcesResponse {
    pub resources: Vec<Resource>,
    pub tasks: Vec<Task>,
}

/// Body of `PATCH /resources/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourcePatch {
    pub expires_at: DateTime<Utc>,
}

/// What a task does to its resource.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TaskKind {
    Create,
    Delete,
}

impl TaskKind {
    /// The wire and database spelling (serde, strum and sqlx all use the lowercase name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Task status: `queued` → `running` → `finished` | `failed` (a retry goes back to `queued`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Finished,
    Failed,
}

impl TaskStatus {
    /// The wire and database spelling (serde, strum and sqlx all use the lowercase name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One asynchronous operation (`task_<site>_<suffix>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct Task {
    pub id: String,
    pub resource_id: String,
    pub kind: TaskKind,
    pub status: TaskStatus,
    /// Progress, 0-100.
    pub completed: i16,
    pub message: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Who is signed in to the dashboard (never contains a token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Viewer {
    pub user_id: String,
    pub display_name: String,
    pub is_admin: bool,
    /// The experiment the dashboard acts for (one of `experiments`).
    pub experiment: Option<ExperimentInfo>,
    /// Every experiment the user attached that has not expired, most recent first.
    pub experiments: Vec<ExperimentInfo>,
    /// The experiment the session acted for has ended (expired or detached) since.
    pub experiment_ended: bool,
    /// `oidc`, `token` or `dev`.
    pub signed_in_with: String,
}

/// An experiment the signed-in user attached (remembered until the experiment expires).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentInfo {
    pub experiment_id: String,
    pub project_id: String,
    pub name: Option<String>,
    /// The experiment's expiry: the latest allowed `expires_at` of its resources, and the end
    /// of the membership.
    pub max_expires_at: DateTime<Utc>,
    /// When the user attached it.
    pub attached_at: DateTime<Utc>,
}

/// One cloud of a user's clouds.yaml, redacted: never a password, secret or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct CloudSummary {
    /// The key under `clouds:` in the file.
    pub name: String,
    /// Keystone, e.g. `https://keystone.example.org:5000/v3`.
    pub auth_url: String,
    /// `password` or `v3applicationcredential`.
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The user name or id (password auth; application credentials referred to by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The application credential's id or name (`v3applicationcredential`); never its secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_credential: Option<String>,
    pub region_name: Option<String>,
    /// Endpoint interface taken from the service catalog: `public` (default), `internal`, `admin`.
    pub interface: String,
}

/// What the server keeps of a user's clouds.yaml, as shown back to them (`GET /clouds-yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct CloudsYamlSummary {
    pub clouds: Vec<CloudSummary>,
    /// The cloud used for images whose `cluster_id` is `default`.
    pub default_cloud: String,
    pub uploaded_at: DateTime<Utc>,
}

/// Body of `PATCH /clouds-yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DefaultCloudPatch {
    pub default_cloud: String,
}

/// Result of a connection test: Keystone authentication, then the Glance images visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct ConnectionTest {
    pub ok: bool,
    pub cloud: String,
    /// Names of the images the credentials can see (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// Keystone's or Glance's own error message (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One catalog entry touched by an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct ImportedEntry {
    pub name: String,
    /// The Glance image id or Nova flavor id it came from.
    pub source_id: String,
}

/// What a catalog import from a site cloud did (`POST /catalog/import`,
/// `slices-blueprint sync-catalog`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct ImportReport {
    pub cloud: String,
    pub images_added: Vec<ImportedEntry>,
    pub images_updated: Vec<ImportedEntry>,
    pub images_unchanged: Vec<ImportedEntry>,
    /// Private or shared images, which users' projects could not boot.
    pub images_skipped: Vec<ImportedEntry>,
    pub flavors_added: Vec<ImportedEntry>,
    pub flavors_updated: Vec<ImportedEntry>,
    pub flavors_unchanged: Vec<ImportedEntry>,
}

/// The tail of a VM's console (Nova `os-getConsoleOutput`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct ConsoleLog {
    pub resource_id: String,
    /// The last `lines` lines Nova returned (may be empty while the VM boots).
    pub output: String,
    pub lines: u32,
}

/// One entry of the audit log (`GET /audit`, the dashboard's audit page): who did what to
/// which object, when and from where. Never holds a token or a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct AuditEntry {
    /// Increasing with the order entries were written.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The acting user (`user_…`); `null` for a refused request without a valid token.
    pub user_id: Option<String>,
    /// The token or session subject that acted (`user_…` or `exp_…`).
    pub actor: Option<String>,
    pub experiment_id: Option<String>,
    /// Dotted verb: `resource.create`, `resource.extend`, `resource.delete`, `image.create`,
    /// `flavor.update`, `clouds_yaml.upload`, `session.sign_in`, `experiment.attach`, ….
    pub action: String,
    /// The typed id of the object acted on, when there is one.
    pub object_id: Option<String>,
    /// `ok`, or `refused` (the access rules turned the attempt down: 401/403).
    pub outcome: String,
    /// `api` (bearer token), `dashboard` (session) or `system`.
    pub via: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// Action-specific facts (names, the new expiry, the refusal's reason).
    #[cfg_attr(feature = "ssr", schema(value_type = Object))]
    pub detail: serde_json::Value,
}

/// Filters of the audit log (`GET /audit` query, the dashboard's audit page). Every filter is
/// optional; entries come newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "ssr", into_params(parameter_in = Query))]
pub struct AuditFilter {
    /// Only this acting user.
    #[cfg_attr(feature = "ssr", param(max_length = 256))]
    pub user_id: Option<String>,
    /// Only this experiment.
    #[cfg_attr(feature = "ssr", param(max_length = 256))]
    pub experiment_id: Option<String>,
    /// Only this object (a typed id).
    #[cfg_attr(feature = "ssr", param(max_length = 256))]
    pub object_id: Option<String>,
    /// Only this action (`resource.delete`), or every action of a kind with a trailing `*`
    /// (`resource.*`).
    #[cfg_attr(feature = "ssr", param(max_length = 256))]
    pub action: Option<String>,
    /// Only `ok` or only `refused` entries.
    #[cfg_attr(feature = "ssr", param(pattern = "^(ok|refused)$"))]
    pub outcome: Option<String>,
    /// Entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339); a range that ends before it starts is empty.
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1-1000 (default 100). JSON-lines exports are not paged unless asked.
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 1000))]
    pub limit: Option<i64>,
    /// Entries to skip (default 0).
    #[cfg_attr(feature = "ssr", param(minimum = 0))]
    pub offset: Option<i64>,
}

impl AuditFilter {
    /// The filter as a URL query (`user_id=…&since=…`): set fields only, times in RFC 3339
    /// UTC, values percent-encoded (RFC 3986: unreserved characters kept). Used for the API's
    /// `Link` header and the dashboard's page and export links.
    pub fn query_string(&self) -> String {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let encode = |value: &str| -> String {
            value
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        [
            ("user_id", self.user_id.clone()),
            ("experiment_id", self.experiment_id.clone()),
            ("object_id", self.object_id.clone()),
            ("action", self.action.clone()),
            ("outcome", self.outcome.clone()),
            ("since", self.since.as_ref().map(time)),
            ("until", self.until.as_ref().map(time)),
            ("limit", self.limit.map(|v| v.to_string())),
            ("offset", self.offset.map(|v| v.to_string())),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", encode(&v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}
