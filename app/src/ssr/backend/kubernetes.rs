//! Kubernetes backend: one Pod per `flavor_type = k8s` resource.
//!
//! - Namespace per experiment: `K8S_NAMESPACE_PREFIX` + a DNS-safe form of the experiment id
//!   (RFC 1123 label, ≤ 63 characters; long ids are cut and suffixed with a hash), created
//!   when missing.
//! - Pod: name = the resource's `friendly_name` (validated as a DNS label), one container
//!   `main` with image = the disk image's `location`, CPU/memory requests = limits from the
//!   flavor (`vcpus` → `cpu`, `ram_mib` → `<n>Mi`; core/v1 `ResourceRequirements`).
//! - Labels (`app.kubernetes.io/managed-by=slices-blueprint`, `slices.eu/resource-id`,
//!   `slices.eu/experiment-id`, `slices.eu/project-id`) make ownership queryable; label values
//!   are limited to 63 characters of `[A-Za-z0-9._-]`, so the full ids are also kept in
//!   annotations of the same names.
//! - SSH keys and userdata are carried as annotations (`slices.eu/ssh-authorized-keys`,
//!   newline-separated; `slices.eu/userdata`) and as the container's `SSH_AUTHORIZED_KEYS` /
//!   `USERDATA` environment variables; the request's Pod options follow: `env` after those,
//!   `command`/`args`, `ports` as container ports exposed by a ClusterIP Service of the same
//!   name owned by the Pod ([`service_manifest`]), and a scratch `emptyDir` sized by the
//!   flavor's `disk_mb` at [`SCRATCH_PATH`].
//! - Hardening (Kubernetes "Pod Security Standards", `restricted` profile): every container runs
//!   without privilege escalation, with all capabilities dropped, the `RuntimeDefault` seccomp
//!   profile and as non-root, and without a service-account token. An image tagged
//!   [`TAG_NEEDS_ROOT`] in the catalog may run as root; its namespace is then labelled
//!   `baseline` instead of `restricted` for Pod Security Admission. Each experiment namespace
//!   gets a NetworkPolicy ([`NETWORK_POLICY`]: its Pods reach each other, DNS and addresses
//!   outside the private ranges, never the cluster's own services) and a ResourceQuota
//!   ([`QUOTA`]). Namespace names carry a hash of the full experiment id, so two experiments
//!   never share one; an existing namespace of another experiment is refused.
//! - Idempotent: create answers 409 AlreadyExists → the existing Pod is adopted when its
//!   `slices.eu/resource-id` annotation is ours (else the name is held by another resource's
//!   terminating Pod: retry later); delete answers 404 → done.
//! - Status comes from one watch of all managed Pods shared by the waiting creates
//!   ([`super::pod_feed`]), or where that watch is not available from a watch of the Pod
//!   itself, bounded by `POD_READY_TIMEOUT_SECS`; phases map as Pending → provisioning,
//!   Running → ready, Failed or image errors → failed with the reason ([`classify`]).
//! - The reconciler compares the database with every managed Pod in our namespaces
//!   ([`observed`], from the shared watch's store, or one LIST while it is down) and removes
//!   orphans by uid.

use super::pod_feed::{FeedPod, FeedState, PodFeed};
use super::{
    BackendError, ComputeBackend, LogOutput, LogQuery, LogsError, ObjectHandle, Observation,
    Observed, ObservedHealth, Progress, ResourceRecord,
};
use crate::model::{AllocationState, BackendDetails, OperationalState};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, Namespace, Pod,
    PodSecurityContext, PodSpec, ResourceQuota, ResourceQuotaSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, LogParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::time::Duration;

/// Label set on everything this backend creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "slices-blueprint");
pub const LABEL_RESOURCE: &str = "slices.eu/resource-id";
pub const LABEL_EXPERIMENT: &str = "slices.eu/experiment-id";
pub const LABEL_PROJECT: &str = "slices.eu/project-id";
const ANNOTATION_SSH: &str = "slices.eu/ssh-authorized-keys";
const ANNOTATION_USERDATA: &str = "slices.eu/userdata";
const ANNOTATION_REQUESTED_BY: &str = "slices.eu/requested-by";
/// The catalog tag of a disk image whose container must run as root (relaxes the Pod's
/// security context and its namespace's Pod Security level to `baseline`).
pub const TAG_NEEDS_ROOT: &str = "needs-root";
/// Pod Security Admission's enforcement label (Kubernetes "Pod Security Admission").
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// The NetworkPolicy every experiment namespace gets.
pub const NETWORK_POLICY: &str = "slices-experiment-isolation";
/// The ResourceQuota every experiment namespace gets.
pub const QUOTA: &str = "slices-experiment-quota";
/// Address ranges an experiment's Pods may not reach (besides their own namespace and DNS):
/// the private, shared (CGNAT) and link-local ranges where the cluster's nodes, Pods and
/// Services live (RFC 1918, RFC 6598, RFC 3927).
const BLOCKED_EGRESS: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
];
/// How long a create waits for its Pod to run before it records "pod created; waiting for it
/// to run" (with the namespace and Pod name) on its task and resource. Most Pods run sooner,
/// and their create writes nothing until its outcome: during a burst of 1,000 creates that
/// step was a thousand statements PostgreSQL ran while the API server wanted the CPU.
pub const STAGE_AFTER: Duration = Duration::from_secs(1);
/// How long a delete may take before it is retried.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// A Kubernetes client for `config` whose TCP connections set `TCP_NODELAY`.
///
/// `kube::Client::try_from` builds the same stack (kube's `ClientBuilder`: rustls connector,
/// connect/read/write timeouts, base URI, retries of 429/503/504, auth, extra headers) on a
/// `HttpConnector` that leaves Nagle's algorithm on. A Pod create body is written in more than
/// one TLS record, so the second write waited for the API server's delayed ACK: ~40 ms per
/// create, measured in `server/benches/provision_overhead.rs`. With a proxy in `config`, kube's
/// own builder is used unchanged (it knows the proxy protocols).
///
/// Errors: the TLS or auth settings of `config` are unusable (`kube::Error`).
pub fn kube_client(config: kube::Config) -> Result<Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use kube::client::retry::RetryPolicy;
    use kube::client::ConfigExt;
    use tower::retry::RetryLayer;
    use tower::{BoxError, ServiceBuilder};

    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper_client);
    Ok(Client::new(service, config.default_namespace))
}

/// Pods on a Kubernetes API server.
pub struct KubernetesBackend {
    /// Requests that read a whole answer (create, get, delete): their connections go back
    /// to the pool and are reused.
    client: Client,
    /// Watches only. A watch that stops early drops its connection; on a client of its own
    /// it never takes the connection the next Pod create would reuse, so that create does
    /// not wait for a new TCP + TLS handshake (~2 ms here, more across a network).
    watch_client: Client,
    namespace_prefix: String,
    ready_timeout: Duration,
    /// Namespaces this process has seen exist: a create in them skips the namespace call
    /// (forgotten when a Pod create answers 404, i.e. the namespace was deleted meanwhile).
    known_namespaces: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One lock per namespace being made ([`KubernetesBackend::namespace_gate`]).
    namespace_gates:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// The watch of every managed Pod that tells waiting creates when theirs runs.
    feed: std::sync::Arc<PodFeed>,
    /// Limits of each experiment namespace's ResourceQuota.
    quota: NamespaceQuota,
}

impl KubernetesBackend {
    /// Connects with `KUBECONFIG` (or in-cluster config) and checks the API server answers.
    pub async fn connect(namespace_prefix: &str, ready_timeout: Duration) -> anyhow::Result<Self> {
        let config = kube::Config::infer().await?;
        let client = kube_client(config.clone())?;
        let watch_client = kube_client(config)?;
        let version = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
            .await
            .map_err(|_| anyhow::anyhow!("the API server did not answer within 5 s"))??;
        tracing::info!(version = %version.git_version, "connected to the Kubernetes API server");
        let backend = Self::new(client, watch_client, namespace_prefix, ready_timeout);
        // Listing now, so the first create finds the feed live.
        backend.feed.start();
        Ok(backend)
    }

    /// Wraps existing clients: `client` for requests, `watch_client` for watches (two
    /// clients of the same cluster, with separate connection pools: see the fields).
    pub fn new(
        client: Client,
        watch_client: Client,
        namespace_prefix: &str,
        ready_timeout: Duration,
    ) -> Self {
        let feed = PodFeed::new(
            watch_client.clone(),
            &format!("{}={}", MANAGED_BY.0, MANAGED_BY.1),
        );
        Self {
            client,
            watch_client,
            namespace_prefix: namespace_prefix.to_string(),
            ready_timeout,
            known_namespaces: std::sync::Mutex::new(std::collections::HashSet::new()),
            namespace_gates: std::sync::Mutex::default(),
            feed,
            quota: NamespaceQuota::default(),
        }
    }

    /// The namespace a resource's Pod lives in: the one recorded when it was made, else its
    /// experiment's.
    fn namespace_of(&self, resource: &ResourceRecord) -> String {
        resource
            .details
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace_for(&resource.experiment_id))
    }

    /// The shared watch of managed Pods (its state, and how many waits it answered).
    pub fn pod_feed(&self) -> &PodFeed {
        &self.feed
    }

    /// The namespace of an experiment.
    pub fn namespace_for(&self, experiment_id: &str) -> String {
        namespace_name(&self.namespace_prefix, experiment_id)
    }

    fn namespace_known(&self, name: &str) -> bool {
        let known = self
            .known_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.contains(name)
    }

    /// The lock that makes one create of `name` at a time (one per namespace this process
    /// has made, kept like `known_namespaces`).
    fn namespace_gate(&self, name: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut gates = self
            .namespace_gates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        gates.entry(name.to_string()).or_default().clone()
    }

    fn set_namespace_known(&self, name: &str, known: bool) {
        let mut set = self
            .known_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
    }

    /// Creates the experiment's namespace, its NetworkPolicy and its ResourceQuota unless
    /// this process already saw them; relaxes the namespace to `baseline` for an image that
    /// needs root.
    async fn ensure_namespace(
        &self,
        name: &str,
        experiment_id: &str,
        needs_root: bool,
    ) -> Result<(), BackendError> {
        if !self.namespace_known(name) {
            // One create per namespace at a time: the 50 Pods of a new experiment's request
            // wait for the first one's namespace instead of each sending the same three
            // creates (answered 409 but for one).
            let gate = self.namespace_gate(name);
            let _held = gate.lock().await;
            if !self.namespace_known(name) {
                self.create_namespace(name, experiment_id).await?;
                self.create_guards(name).await?;
                self.set_namespace_known(name, true);
            }
        }
        if needs_root {
            self.relax_namespace(name).await?;
        }
        Ok(())
    }

    async fn create_namespace(&self, name: &str, experiment_id: &str) -> Result<(), BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api
            .create(
                &PostParams::default(),
                &namespace_manifest(name, experiment_id),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours only if it carries this experiment's id.
                let existing = api
                    .get(name)
                    .await
                    .map_err(|e| map_error("reading the namespace", e))?;
                let owner = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LABEL_EXPERIMENT));
                if owner.map(String::as_str) != Some(experiment_id) {
                    return Err(BackendError::permanent(format!(
                        "namespace {name} exists and does not belong to this experiment"
                    )));
                }
                Ok(())
            }
            Err(e) => Err(map_error("creating the namespace", e)),
        }
    }

    /// The namespace's NetworkPolicy and ResourceQuota (kept when they exist).
    async fn create_guards(&self, namespace: &str) -> Result<(), BackendError> {
        let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), namespace);
        match policies
            .create(&PostParams::default(), &network_policy(namespace))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(map_error("creating the namespace's NetworkPolicy", e)),
        }
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
        match quotas
            .create(
                &PostParams::default(),
                &resource_quota(namespace, &self.quota),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(map_error("creating the namespace's ResourceQuota", e)),
        }
    }

    /// Labels the namespace `baseline` for Pod Security Admission (a Pod runs as root).
    async fn relax_namespace(&self, name: &str) -> Result<(), BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let patch = serde_json::json!({ "metadata": { "labels": { PSA_ENFORCE: "baseline" } } });
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| map_error("labelling the namespace baseline", e))
    }
}

/// Limits of each experiment namespace's ResourceQuota (the defaults; not configurable yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceQuota {
    pub pods: u32,
    pub cpu: u32,
    pub memory_mib: u32,
}

impl Default for NamespaceQuota {
    fn default() -> Self {
        Self {
            pods: 50,
            cpu: 64,
            memory_mib: 131_072,
        }
    }
}

/// An experiment's namespace: managed-by and experiment labels, the full experiment id in an
/// annotation, and Pod Security Admission `restricted`.
pub fn namespace_manifest(name: &str, experiment_id: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (LABEL_EXPERIMENT.to_string(), label_value(experiment_id)),
                (PSA_ENFORCE.to_string(), "restricted".to_string()),
                (
                    "pod-security.kubernetes.io/enforce-version".to_string(),
                    "latest".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                LABEL_EXPERIMENT.to_string(),
                experiment_id.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The NetworkPolicy of an experiment namespace: Pods of the namespace reach each other,
/// DNS (port 53 anywhere) and addresses outside the private, CGNAT and link-local ranges
/// (`BLOCKED_EGRESS`); only Pods of the
/// namespace reach them.
pub fn network_policy(namespace: &str) -> NetworkPolicy {
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
        port: Some(IntOrString::Int(53)),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    });
    let outside = NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: "0.0.0.0/0".into(),
            except: Some(BLOCKED_EGRESS.iter().map(|c| c.to_string()).collect()),
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(NETWORK_POLICY.into()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace.clone()]),
                ports: None,
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![same_namespace]),
                    ports: None,
                },
                NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(dns.to_vec()),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![outside]),
                    ports: None,
                },
            ]),
        }),
    }
}

/// The ResourceQuota of an experiment namespace.
pub fn resource_quota(namespace: &str, quota: &NamespaceQuota) -> ResourceQuota {
    let memory = Quantity(format!("{}Mi", quota.memory_mib));
    let cpu = Quantity(quota.cpu.to_string());
    ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA.into()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([
                ("pods".to_string(), Quantity(quota.pods.to_string())),
                ("requests.cpu".to_string(), cpu.clone()),
                ("limits.cpu".to_string(), cpu),
                ("requests.memory".to_string(), memory.clone()),
                ("limits.memory".to_string(), memory),
            ])),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    }
}

/// Whether a resource's image must run as root (catalog tag [`TAG_NEEDS_ROOT`]).
pub fn needs_root(resource: &ResourceRecord) -> bool {
    resource.image_tags.iter().any(|t| t == TAG_NEEDS_ROOT)
}

/// The security context of a Pod's containers: no privilege escalation, no capabilities,
/// `RuntimeDefault` seccomp, non-root unless the image needs root.
fn container_security(needs_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        run_as_non_root: Some(!needs_root),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// The Pod this backend makes for a resource.
pub fn pod_manifest(resource: &ResourceRecord, namespace: &str) -> Pod {
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (LABEL_RESOURCE.to_string(), label_value(&resource.typed_id)),
        (
            LABEL_EXPERIMENT.to_string(),
            label_value(&resource.experiment_id),
        ),
        (LABEL_PROJECT.to_string(), label_value(&resource.project_id)),
    ]);
    let ssh_keys = resource.ssh_authorized_keys.join("\n");
    let mut annotations = BTreeMap::from([
        (LABEL_RESOURCE.to_string(), resource.typed_id.clone()),
        (LABEL_EXPERIMENT.to_string(), resource.experiment_id.clone()),
        (LABEL_PROJECT.to_string(), resource.project_id.clone()),
        (ANNOTATION_SSH.to_string(), ssh_keys.clone()),
    ]);
    if let Some(user) = &resource.requested_by {
        annotations.insert(ANNOTATION_REQUESTED_BY.to_string(), user.clone());
    }
    if let Some(userdata) = &resource.userdata {
        annotations.insert(ANNOTATION_USERDATA.to_string(), userdata.clone());
    }
    let (volumes, mounts) = scratch_volume(resource.disk_mb);
    Pod {
        metadata: ObjectMeta {
            name: Some(resource.friendly_name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![main_container(resource, &ssh_keys, mounts)],
            restart_policy: Some("Always".into()),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(!needs_root(resource)),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            enable_service_links: Some(false),
            volumes,
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The Pod's one container `main`: the site's environment (`SLICES_RESOURCE_ID`,
/// `SLICES_EXPERIMENT_ID`, `SSH_AUTHORIZED_KEYS`, `USERDATA`) then the request's `env`,
/// `command`/`args`, `ports`, the flavor's CPU and memory as requests = limits, the scratch
/// mount and the hardened security context.
fn main_container(
    resource: &ResourceRecord,
    ssh_keys: &str,
    mounts: Option<Vec<VolumeMount>>,
) -> Container {
    let mut env = vec![
        env_var("SLICES_RESOURCE_ID", &resource.typed_id),
        env_var("SLICES_EXPERIMENT_ID", &resource.experiment_id),
        env_var("SSH_AUTHORIZED_KEYS", ssh_keys),
    ];
    if let Some(userdata) = &resource.userdata {
        env.push(env_var("USERDATA", userdata));
    }
    env.extend(resource.pod.env.iter().map(|e| env_var(&e.name, &e.value)));
    let ports: Vec<ContainerPort> = resource
        .pod
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.port as i32,
            protocol: Some(p.protocol.as_str().into()),
            ..ContainerPort::default()
        })
        .collect();
    let words = |list: &Vec<String>| Some(list.clone()).filter(|l| !l.is_empty());
    let quantities = BTreeMap::from([
        ("cpu".to_string(), Quantity(resource.vcpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Mi", resource.ram_mib)),
        ),
    ]);
    Container {
        name: "main".into(),
        image: Some(resource.image_location.clone()),
        command: words(&resource.pod.command),
        args: words(&resource.pod.args),
        ports: Some(ports).filter(|p| !p.is_empty()),
        volume_mounts: mounts,
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security(needs_root(resource))),
        ..Container::default()
    }
}

/// Where a Pod's scratch volume is mounted.
pub const SCRATCH_PATH: &str = "/scratch";

/// The scratch volume of a flavor with `disk_mb` > 0: an `emptyDir` of that size
/// (`sizeLimit: <disk_mb>M`, decimal megabytes as the flavor counts them) mounted at
/// [`SCRATCH_PATH`]; it lives as long as the Pod.
fn scratch_volume(disk_mb: i32) -> (Option<Vec<Volume>>, Option<Vec<VolumeMount>>) {
    if disk_mb <= 0 {
        return (None, None);
    }
    let volume = Volume {
        name: "scratch".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(format!("{disk_mb}M"))),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "scratch".into(),
        mount_path: SCRATCH_PATH.into(),
        ..VolumeMount::default()
    };
    (Some(vec![volume]), Some(vec![mount]))
}

/// The Service exposing a Pod's `ports` (None without ports): ClusterIP, named after the
/// resource (= the Pod), selecting the Pod by its `slices.eu/resource-id` label, one port per
/// container port (same number, targeted by name), and owned by the Pod (`ownerReferences`
/// with the Pod's uid), so Kubernetes' garbage collector deletes it with the Pod (Kubernetes
/// docs, "Owners and Dependents").
pub fn service_manifest(
    resource: &ResourceRecord,
    namespace: &str,
    pod_uid: &str,
) -> Option<Service> {
    if resource.pod.ports.is_empty() {
        return None;
    }
    let selector = BTreeMap::from([(LABEL_RESOURCE.to_string(), label_value(&resource.typed_id))]);
    let mut labels = selector.clone();
    labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    let ports = resource
        .pod
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(p.name.clone()),
            port: p.port as i32,
            protocol: Some(p.protocol.as_str().into()),
            target_port: Some(IntOrString::String(p.name.clone())),
            ..ServicePort::default()
        })
        .collect();
    Some(Service {
        metadata: ObjectMeta {
            name: Some(resource.friendly_name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                LABEL_RESOURCE.to_string(),
                resource.typed_id.clone(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: resource.friendly_name.clone(),
                uid: pod_uid.to_string(),
                block_owner_deletion: None,
                controller: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// What a Pod's status means for its resource.
#[derive(Debug, Clone, PartialEq)]
pub enum PodVerdict {
    /// Not running yet; the text says why (scheduling, pulling, …).
    Pending(String),
    Running {
        ip: Option<String>,
        node: Option<String>,
    },
    /// Will not become Running by itself; the text is for the experimenter.
    Failed(String),
}

/// Waiting reasons of a container that mean the Pod will not start by itself.
const FATAL_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// Maps a Pod's status (core/v1 `PodStatus`: `phase`, `containerStatuses[].state`) to a
/// verdict.
pub fn classify(pod: &Pod) -> PodVerdict {
    let Some(status) = &pod.status else {
        return PodVerdict::Pending("waiting for the scheduler".into());
    };
    for cs in status.container_statuses.iter().flatten() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.clone().unwrap_or_default();
            if FATAL_WAITING_REASONS.contains(&reason.as_str()) {
                let detail = waiting.message.clone().unwrap_or_default();
                return PodVerdict::Failed(
                    format!("container `{}` cannot start: {reason} {detail}", cs.name)
                        .trim()
                        .to_string(),
                );
            }
        }
    }
    match status.phase.as_deref() {
        Some("Running") => PodVerdict::Running {
            ip: status.pod_ip.clone(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        },
        Some("Failed") => PodVerdict::Failed(
            format!(
                "pod failed: {} {}",
                status.reason.clone().unwrap_or_default(),
                status.message.clone().unwrap_or_default()
            )
            .trim()
            .to_string(),
        ),
        Some("Succeeded") => {
            PodVerdict::Failed("the pod's container exited (phase Succeeded)".into())
        }
        _ => {
            let unschedulable = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            match unschedulable {
                Some(c) => PodVerdict::Pending(format!(
                    "not scheduled yet: {}",
                    c.message
                        .clone()
                        .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
                )),
                None => PodVerdict::Pending("pod is pending".into()),
            }
        }
    }
}

fn details_of(pod: &Pod, namespace: &str) -> BackendDetails {
    let status = pod.status.as_ref();
    BackendDetails {
        namespace: Some(namespace.to_string()),
        pod_name: pod.metadata.name.clone(),
        pod_ip: status.and_then(|s| s.pod_ip.clone()),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        phase: status.and_then(|s| s.phase.clone()),
        ..BackendDetails::default()
    }
}

/// Whether [`classify`] still has the Pod waiting (scheduling, pulling, starting).
fn is_pending(pod: &Pod) -> bool {
    matches!(classify(pod), PodVerdict::Pending(_))
}

/// Waits until the Pod `name` is no longer Pending; `None` when it was deleted meanwhile.
/// `current` is the Pod as its create (or read, when adopted) returned it: when it is already settled
/// that is the answer, else the watch starts at its `resourceVersion` (Kubernetes API
/// concepts, "Efficient detection of changes"), which sees every later change without the
/// LIST that `await_condition` starts with. A LIST reads every Pod of the namespace, so
/// skipping it spares the API server work on each create. If that version is too old to
/// watch from (410 Gone) or the stream ends, it falls back to `await_condition`.
async fn settle(
    pods: &Api<Pod>,
    name: &str,
    current: Pod,
) -> Result<Option<Pod>, kube::runtime::wait::Error> {
    use futures::StreamExt as _;
    use kube::api::{WatchEvent, WatchParams};
    if !is_pending(&current) {
        return Ok(Some(current));
    }
    if let Some(version) = current.metadata.resource_version {
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        if let Ok(stream) = pods.watch(&params, &version).await {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) if !is_pending(&p) => {
                        return Ok(Some(p))
                    }
                    Ok(WatchEvent::Deleted(_)) => return Ok(None),
                    Ok(
                        WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Bookmark(_),
                    ) => {}
                    Ok(WatchEvent::Error(e)) => {
                        tracing::debug!(pod = name, error = %e.message, "pod watch ended; watching again with a LIST");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(pod = name, error = %e, "pod watch failed; watching again with a LIST");
                        break;
                    }
                }
            }
        }
    }
    let settled = |pod: Option<&Pod>| pod.is_none_or(|p| !is_pending(p));
    await_condition(pods.clone(), name, settled).await
}

impl KubernetesBackend {
    /// Creates the Pod (making its namespace when missing, again if it was deleted by hand),
    /// or adopts the one an earlier attempt made. Answers the Pod as the API server returned
    /// it, decoded as the feed decodes its events ([`FeedPod`]: no managedFields, of the spec
    /// only the node): where the wait for it to run starts.
    async fn create_pod(
        &self,
        resource: &ResourceRecord,
        namespace: &str,
    ) -> Result<Pod, BackendError> {
        let name = resource.friendly_name.as_str();
        let pods: Api<FeedPod> = Api::namespaced(self.client.clone(), namespace);
        let manifest = FeedPod(pod_manifest(resource, namespace));
        let mut created = pods.create(&PostParams::default(), &manifest).await;
        if matches!(&created, Err(kube::Error::Api(s)) if s.code == 404) {
            // The namespace we remembered is gone (deleted by hand): make it again, once.
            self.set_namespace_known(namespace, false);
            self.ensure_namespace(namespace, &resource.experiment_id, needs_root(resource))
                .await?;
            created = pods.create(&PostParams::default(), &manifest).await;
        }
        match created {
            Ok(pod) => Ok(pod.0),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let FeedPod(existing) = pods
                    .get(name)
                    .await
                    .map_err(|e| map_error("reading the pod", e))?;
                if owner_of(&existing) != Some(&resource.typed_id) {
                    return Err(BackendError::retryable(format!(
                        "pod name `{name}` is still held by another pod in {namespace} (being deleted?)"
                    )));
                }
                tracing::info!(pod = name, "adopting the pod an earlier attempt created");
                Ok(existing)
            }
            Err(e) => Err(map_error("creating the pod", e)),
        }
    }

    /// Creates the Service of a Pod with `ports` (its name; None without ports), or adopts
    /// the one an earlier attempt made for this resource. A Service of that name left by
    /// another resource (its Pod being deleted, the garbage collector not done yet) is a
    /// retryable error.
    async fn expose(
        &self,
        resource: &ResourceRecord,
        namespace: &str,
        pod: &Pod,
    ) -> Result<Option<String>, BackendError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let Some(manifest) = service_manifest(resource, namespace, uid) else {
            return Ok(None);
        };
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let name = resource.friendly_name.as_str();
        match services.create(&PostParams::default(), &manifest).await {
            Ok(_) => Ok(Some(name.to_string())),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = services
                    .get(name)
                    .await
                    .map_err(|e| map_error("reading the service", e))?;
                let ours = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LABEL_RESOURCE))
                    == Some(&resource.typed_id);
                if !ours {
                    return Err(BackendError::retryable(format!(
                        "service name `{name}` is still held by another resource's service in {namespace}"
                    )));
                }
                Ok(Some(name.to_string()))
            }
            Err(e) => Err(map_error("creating the service", e)),
        }
    }

    /// Waits (at most `POD_READY_TIMEOUT_SECS`) until the Pod is no longer pending: through
    /// the shared feed when it is live, else a watch of this Pod.
    async fn wait_running(
        &self,
        feed: super::pod_feed::Subscription,
        pods: &Api<Pod>,
        namespace: &str,
        current: Pod,
    ) -> Result<Pod, BackendError> {
        let name = current.metadata.name.clone().unwrap_or_default();
        let watched: Api<Pod> = Api::namespaced(self.watch_client.clone(), namespace);
        // The shared feed first; without it (or for a Pod already settled, which `settle`
        // answers at once) a watch of this Pod.
        let wait = async {
            if let (true, Some(uid)) = (is_pending(&current), current.metadata.uid.as_deref()) {
                if let Ok(answer) = feed.settle(uid, is_pending).await {
                    return Ok(answer);
                }
            }
            // Boxed, like the other calls a waiting create rarely makes: an async fn's state
            // is as large as its largest await point, and up to a thousand creates wait at once.
            Box::pin(settle(&watched, &name, current)).await
        };
        match tokio::time::timeout(self.ready_timeout, wait).await {
            Err(_) => {
                let last = match Box::pin(pods.get_opt(&name)).await {
                    Ok(Some(p)) => match classify(&p) {
                        PodVerdict::Pending(why) => why,
                        other => format!("{other:?}"),
                    },
                    _ => "unknown".into(),
                };
                Err(BackendError::permanent(format!(
                    "pod did not become Running within {} s (last status: {last}); it was removed",
                    self.ready_timeout.as_secs()
                )))
            }
            Ok(Err(e)) if wait_transport(&e) => Err(BackendError::unreachable(
                API,
                format!("watching the pod: {API} unreachable ({e})"),
            )),
            Ok(Err(e)) => Err(BackendError::retryable(format!("watching the pod: {e}"))),
            Ok(Ok(None)) => Err(BackendError::permanent(
                "the pod was deleted before it became Running",
            )),
            Ok(Ok(Some(pod))) => match classify(&pod) {
                PodVerdict::Running { .. } => Ok(pod),
                PodVerdict::Failed(why) => Err(BackendError::permanent(why)),
                PodVerdict::Pending(why) => Err(BackendError::retryable(why)),
            },
        }
    }
}

/// A managed Pod as the reconciler sees it: being deleted (`metadata.deletionTimestamp`),
/// else [`classify`] — a Pod that will not start by itself is `Degraded` while its phase is
/// Pending or Running (the kubelet keeps trying) and `Stopped` once the phase is Failed or
/// Succeeded — with container restarts (`status.containerStatuses[].restartCount`,
/// `lastState.terminated.reason`, e.g. `OOMKilled`) noted on a running Pod.
pub fn observed(pod: &Pod) -> Observed {
    let meta = &pod.metadata;
    let handle = ObjectHandle::Pod {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let health = if meta.deletion_timestamp.is_some() {
        ObservedHealth::Terminating
    } else {
        match classify(pod) {
            PodVerdict::Running { .. } => ObservedHealth::Ready(restarts_note(pod)),
            PodVerdict::Pending(why) => ObservedHealth::Starting(why),
            PodVerdict::Failed(why) if matches!(phase, Some("Failed" | "Succeeded")) => {
                ObservedHealth::Stopped(why)
            }
            PodVerdict::Failed(why) => ObservedHealth::Degraded(why),
        }
    };
    Observed {
        resource_id: owner_of(pod).cloned(),
        handle,
        health,
    }
}

/// `""` for a Pod whose containers never restarted, else how often and why the last one
/// ended (`running; containers restarted 3 times (last ended: OOMKilled)`).
fn restarts_note(pod: &Pod) -> String {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let mut restarts = 0;
    let mut last = None;
    for cs in statuses.into_iter().flatten() {
        restarts += cs.restart_count;
        if let Some(ended) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            last = Some(
                ended
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", ended.exit_code)),
            );
        }
    }
    match restarts {
        0 => String::new(),
        n => format!(
            "running; containers restarted {n} time{} (last ended: {})",
            if n == 1 { "" } else { "s" },
            last.as_deref().unwrap_or("unknown")
        ),
    }
}

/// The resource id a Pod of ours carries (annotation [`LABEL_RESOURCE`]).
/// The container whose log is asked for: `asked`, which the Pod must have, or its only one.
fn pick_container(pod: &Pod, asked: Option<&str>) -> Result<String, LogsError> {
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter().map(|c| c.name.as_str()))
        .collect();
    match (asked, names.as_slice()) {
        (Some(asked), _) if names.contains(&asked) => Ok(asked.to_string()),
        (Some(asked), _) => Err(LogsError::Container(format!(
            "the pod has no container `{asked}`; its containers: {}",
            names.join(", ")
        ))),
        (None, [only]) => Ok((*only).to_string()),
        (None, _) => Err(LogsError::Container(format!(
            "the pod has several containers: name one of {}",
            names.join(", ")
        ))),
    }
}

/// A refused log read: the kubelet's 400 (the container waits to start, or never ran) and a
/// Pod gone meanwhile mean there is no log to read; the rest as [`map_error`].
fn log_error(e: kube::Error) -> LogsError {
    match &e {
        kube::Error::Api(s) if s.code == 400 => LogsError::NotAvailable(s.message.clone()),
        kube::Error::Api(s) if s.code == 404 => {
            LogsError::NotAvailable("the pod no longer exists".into())
        }
        _ => LogsError::Backend(map_error("reading the log", e)),
    }
}

fn owner_of(pod: &Pod) -> Option<&String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LABEL_RESOURCE))
}

#[async_trait::async_trait]
impl ComputeBackend for KubernetesBackend {
    async fn create(
        &self,
        resource: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<BackendDetails, BackendError> {
        let namespace = self.namespace_of(resource);
        // The calls before the wait are boxed: this future lives as long as its Pod starts, and
        // without the boxes it would keep room for the largest of them all that time (a
        // thousand creates wait at once in a burst).
        Box::pin(self.ensure_namespace(&namespace, &resource.experiment_id, needs_root(resource)))
            .await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        // Before the create: every change after it reaches this subscription.
        let feed = self
            .feed
            .subscribe(&namespace, &resource.friendly_name)
            .await;
        // Kept while the Pod starts (up to 8 waiting creates per worker slot): decoded without
        // the server-side apply bookkeeping and the spec, which the wait does not read.
        let current = Box::pin(self.create_pod(resource, &namespace)).await?;
        let service = Box::pin(self.expose(resource, &namespace, &current)).await?;
        // From here on the Pod's events tell the rest: the worker may use the slot.
        progress.waiting().await;
        let wait = self.wait_running(feed, &pods, &namespace, current);
        let mut wait = std::pin::pin!(wait);
        // A Pod that runs within STAGE_AFTER needs no step of its own: the outcome, written
        // next, says `ready` at 100 %. One that takes longer shows where it is.
        let pod = tokio::select! {
            pod = &mut wait => pod?,
            () = tokio::time::sleep(STAGE_AFTER) => {
                let made = BackendDetails {
                    namespace: Some(namespace.clone()),
                    pod_name: Some(resource.friendly_name.clone()),
                    service_name: service.clone(),
                    ..BackendDetails::default()
                };
                progress
                    .stage(
                        50,
                        AllocationState::Provisioning,
                        OperationalState::Booting,
                        "pod created; waiting for it to run",
                        Some(&made),
                    )
                    .await;
                wait.await?
            }
        };
        // No "running" report: the task's outcome, written next, says `ready` at 100 %.
        Ok(BackendDetails {
            service_name: service,
            ..details_of(&pod, &namespace)
        })
    }

    async fn observe(&self, _owner: Option<&str>) -> Result<Option<Observation>, BackendError> {
        self.feed.start();
        let pods = match self.feed.snapshot() {
            Some(pods) => pods,
            None => {
                // The shared watch is starting or down: one LIST instead.
                let all: Api<Pod> = Api::all(self.client.clone());
                let params =
                    ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
                all.list(&params)
                    .await
                    .map_err(|e| map_error("listing the managed pods", e))?
                    .items
                    .into_iter()
                    .map(std::sync::Arc::new)
                    .collect()
            }
        };
        // Only our namespaces: another deployment on the same cluster may use the label too.
        let objects = pods
            .iter()
            .filter(|p| {
                p.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|ns| ns.starts_with(&self.namespace_prefix))
            })
            .map(|p| observed(p))
            .collect();
        Ok(Some(Observation {
            objects,
            ..Observation::default()
        }))
    }

    async fn remove_orphan(&self, object: &ObjectHandle) -> Result<(), BackendError> {
        let ObjectHandle::Pod {
            namespace,
            name,
            uid,
        } = object
        else {
            return Ok(());
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // Only that Pod: a newer one of the same name (another uid) answers 409 and stays.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(map_error("deleting an orphaned pod", e)),
        }
    }

    /// `pods/log` of the resource's Pod (Kubernetes API reference, "Read Log of the specified
    /// Pod"); a followed log is read on the watch client, so it never holds a connection the
    /// next create would use.
    async fn logs(
        &self,
        resource: &ResourceRecord,
        query: &LogQuery,
    ) -> Result<LogOutput, LogsError> {
        use futures::{AsyncBufReadExt as _, StreamExt as _, TryStreamExt as _};
        let namespace = self.namespace_of(resource);
        let name = resource
            .details
            .pod_name
            .clone()
            .unwrap_or_else(|| resource.friendly_name.clone());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = match pods.get_opt(&name).await {
            Ok(Some(pod)) if owner_of(&pod) == Some(&resource.typed_id) => pod,
            Ok(_) => return Err(LogsError::NotAvailable("the pod no longer exists".into())),
            Err(e) => return Err(LogsError::Backend(map_error("reading the pod", e))),
        };
        let params = LogParams {
            container: Some(pick_container(&pod, query.container.as_deref())?),
            tail_lines: query.tail_lines,
            since_seconds: query.since_seconds,
            timestamps: query.timestamps,
            follow: query.follow,
            ..LogParams::default()
        };
        if !query.follow {
            return pods
                .logs(&name, &params)
                .await
                .map(LogOutput::Text)
                .map_err(log_error);
        }
        let streamed: Api<Pod> = Api::namespaced(self.watch_client.clone(), &namespace);
        let reader = streamed
            .log_stream(&name, &params)
            .await
            .map_err(log_error)?;
        Ok(LogOutput::Lines(
            reader
                .lines()
                .map_err(|e| BackendError::retryable(format!("reading the log: {e}")))
                .boxed(),
        ))
    }

    fn health(&self) -> String {
        match self.feed.state() {
            FeedState::Live => "connected; pod watch live".into(),
            FeedState::Starting => "connected; pod watch starting".into(),
            FeedState::Down => "connected; pod watch down (creates watch their own pods)".into(),
        }
    }

    async fn delete(
        &self,
        resource: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<(), BackendError> {
        let namespace = self.namespace_of(resource);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let name = resource.friendly_name.as_str();
        // Only delete the pod if it is ours (a reused name may belong to a newer resource).
        let existing = match pods.get_opt(name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => return Err(map_error("reading the pod", e)),
        };
        if owner_of(&existing) != Some(&resource.typed_id) {
            return Ok(());
        }
        let uid = existing.metadata.uid.clone().unwrap_or_default();
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(map_error("deleting the pod", e)),
        }
        progress
            .report(50, "pod deletion requested; waiting for it to go")
            .await;
        let gone = kube::runtime::wait::conditions::is_deleted(&uid);
        let watched: Api<Pod> = Api::namespaced(self.watch_client.clone(), &namespace);
        match tokio::time::timeout(DELETE_TIMEOUT, await_condition(watched, name, gone)).await {
            Ok(Ok(_)) => {
                progress.report(100, "pod deleted").await;
                Ok(())
            }
            Ok(Err(e)) if wait_transport(&e) => Err(BackendError::unreachable(
                API,
                format!("watching the pod's deletion: {API} unreachable ({e})"),
            )),
            Ok(Err(e)) => Err(BackendError::retryable(format!(
                "watching the pod's deletion: {e}"
            ))),
            Err(_) => Err(BackendError::retryable(format!(
                "pod still terminating after {} s",
                DELETE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// API errors: 4xx other than 409/429 are permanent (the request itself is wrong); no answer
/// at all (connection refused, reset, timed out) is the API server being unreachable, waited
/// out by the task runner; the rest (5xx, 429) are retryable.
fn map_error(what: &str, e: kube::Error) -> BackendError {
    if is_transport(&e) {
        return BackendError::unreachable(API, format!("{what}: {API} unreachable ({e})"));
    }
    match &e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 => {
            BackendError::permanent(format!(
                "{what}: Kubernetes refused: {} ({})",
                s.message, s.reason
            ))
        }
        _ => BackendError::retryable(format!("{what}: {e}")),
    }
}

/// How task messages name the Kubernetes API server when it does not answer.
const API: &str = "Kubernetes API";

/// Whether `e` means the API server gave no answer (the request never got an HTTP status):
/// the client's transport failed (connect, TLS, connection reset) or timed out.
fn is_transport(e: &kube::Error) -> bool {
    matches!(
        e,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)
    )
}

/// [`is_transport`] for the watch under a wait (kube-runtime `wait::Error::ProbeFailed`).
fn wait_transport(e: &kube::runtime::wait::Error) -> bool {
    use kube::runtime::watcher::Error as W;
    let kube::runtime::wait::Error::ProbeFailed(w) = e;
    match w {
        W::InitialListFailed(k) | W::WatchStartFailed(k) | W::WatchFailed(k) => is_transport(k),
        _ => false,
    }
}

/// `prefix` + the experiment id made into an RFC 1123 label + `-` + 12 hex digits of an
/// FNV-1a hash of the full id (lowercase alphanumerics and `-`, ≤ 63 characters, the readable
/// part cut to fit). The slug alone would map ids that differ only in case or punctuation
/// (`exp_a.b` and `exp_a-b`) to one name; the hash keeps distinct experiments apart.
pub fn namespace_name(prefix: &str, experiment_id: &str) -> String {
    let mut slug = String::with_capacity(experiment_id.len());
    for c in experiment_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let full = format!("{prefix}{}", slug.trim_matches('-'));
    let hash = format!("{:012x}", fnv1a(experiment_id) & 0xffff_ffff_ffff);
    let keep = 63 - 1 - hash.len();
    let head: String = full.trim_matches('-').chars().take(keep).collect();
    let head = head.trim_end_matches('-');
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// A label value (≤ 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends); values
/// that do not fit are replaced by `h-` + a hash (the full value is in the annotation).
pub fn label_value(value: &str) -> String {
    let fits = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if fits {
        value.to_string()
    } else {
        format!("h-{:016x}", fnv1a(value))
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    #[test]
    fn namespaces_are_dns_labels() {
        let demo = namespace_name("slices-", "exp_dev.local_demo");
        assert!(demo.starts_with("slices-exp-dev-local-demo-"), "{demo}");
        assert_eq!(demo.len(), "slices-exp-dev-local-demo-".len() + 12);
        // Ids that differ only in punctuation or case get different namespaces.
        for (a, b) in [("exp_a.b_x", "exp_a-b_x"), ("exp_A_x", "exp_a_x")] {
            assert_ne!(namespace_name("slices-", a), namespace_name("slices-", b));
        }
        let long = format!("exp_{}_{}", "x".repeat(40), "00sqtwepw69hev0qxd08d2f3dk");
        let ns = namespace_name("slices-", &long);
        assert!(
            ns.len() <= 63 && crate::ssr::names::is_dns_label(&ns),
            "{ns}"
        );
        let other = namespace_name("slices-", &format!("{long}1"));
        assert_ne!(ns, other);
    }

    #[test]
    fn label_values_fit() {
        assert_eq!(
            label_value("resource_tld-city-bp1_00sq"),
            "resource_tld-city-bp1_00sq"
        );
        assert_eq!(label_value(""), "");
        let hashed = label_value(&"a".repeat(64));
        assert!(hashed.starts_with("h-") && hashed.len() <= 63);
        assert!(label_value("-x").starts_with("h-"));
    }

    fn pod(phase: &str, waiting: Option<&str>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some("10.0.0.7".into()),
                container_statuses: waiting.map(|reason| {
                    vec![ContainerStatus {
                        name: "main".into(),
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some(reason.into()),
                                message: Some("pull access denied".into()),
                            }),
                            ..ContainerState::default()
                        }),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn observed_pods_map_to_health() {
        use k8s_openapi::api::core::v1::ContainerStateTerminated;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut running = pod("Running", None);
        running.metadata.namespace = Some("slices-x".into());
        running.metadata.name = Some("kme-a".into());
        running.metadata.uid = Some("u-1".into());
        running.metadata.annotations = Some(BTreeMap::from([(
            LABEL_RESOURCE.to_string(),
            "resource_s_x".to_string(),
        )]));
        let seen = observed(&running);
        assert_eq!(seen.resource_id.as_deref(), Some("resource_s_x"));
        assert_eq!(seen.health, ObservedHealth::Ready(String::new()));
        assert_eq!(seen.handle.to_string(), "pod slices-x/kme-a");

        // Restarted after running out of memory: still ready, and it says so.
        let mut restarted = pod("Running", None);
        if let Some(status) = restarted.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                restart_count: 3,
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        reason: Some("OOMKilled".into()),
                        exit_code: 137,
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]);
        }
        assert_eq!(
            observed(&restarted).health,
            ObservedHealth::Ready(
                "running; containers restarted 3 times (last ended: OOMKilled)".into()
            )
        );
        // The kubelet keeps trying: degraded, not ended.
        assert!(matches!(
            observed(&pod("Running", Some("CrashLoopBackOff"))).health,
            ObservedHealth::Degraded(why) if why.contains("CrashLoopBackOff")
        ));
        assert!(matches!(
            observed(&pod("Pending", Some("ImagePullBackOff"))).health,
            ObservedHealth::Degraded(_)
        ));
        assert!(matches!(
            observed(&pod("Failed", None)).health,
            ObservedHealth::Stopped(_)
        ));
        assert!(matches!(
            observed(&pod("Pending", None)).health,
            ObservedHealth::Starting(_)
        ));
        let mut going = pod("Running", None);
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(observed(&going).health, ObservedHealth::Terminating);
        assert_eq!(observed(&going).resource_id, None);
    }

    #[test]
    fn classify_maps_phases_and_image_errors() {
        assert!(matches!(
            classify(&pod("Pending", None)),
            PodVerdict::Pending(_)
        ));
        assert!(matches!(
            classify(&pod("Pending", Some("ContainerCreating"))),
            PodVerdict::Pending(_)
        ));
        assert_eq!(
            classify(&pod("Running", None)),
            PodVerdict::Running {
                ip: Some("10.0.0.7".into()),
                node: None
            }
        );
        match classify(&pod("Pending", Some("ImagePullBackOff"))) {
            PodVerdict::Failed(m) => assert!(
                m.contains("ImagePullBackOff") && m.contains("pull access denied"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&pod("Failed", None)),
            PodVerdict::Failed(_)
        ));
        assert!(matches!(
            classify(&pod("Succeeded", None)),
            PodVerdict::Failed(_)
        ));
        assert!(matches!(classify(&Pod::default()), PodVerdict::Pending(_)));
    }

    #[test]
    fn manifest_carries_flavor_labels_and_keys() {
        let r = ResourceRecord {
            id: uuid::Uuid::nil(),
            typed_id: "resource_s_00000000000000000000000000".into(),
            experiment_id: "exp_s_1".into(),
            project_id: "proj_s_1".into(),
            requested_by: Some("user_s_1".into()),
            friendly_name: "web".into(),
            flavor_type: crate::model::FlavorType::K8s,
            allocation_state: AllocationState::Requested,
            image_location: "nginx:alpine".into(),
            image_name: "nginx".into(),
            image_tags: Vec::new(),
            image_cluster_id: "default".into(),
            default_username: "root".into(),
            vcpus: 2,
            ram_mib: 512,
            disk_mb: 0,
            flavor_name: "k8s.small".into(),
            flavor_source_id: None,
            network_name: None,
            userdata: Some("#cloud-config\n".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA a".into(), "ssh-rsa BBBB b".into()],
            details: BackendDetails::default(),
            pod: crate::model::PodOptions::default(),
        };
        assert!(service_manifest(&r, "slices-exp-s-1", "uid-1").is_none());
        let pod = pod_manifest(&r, "slices-exp-s-1");
        assert!(pod.spec.as_ref().is_some_and(|s| s.volumes.is_none()));
        let spec = pod.spec.expect("spec");
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("nginx:alpine"));
        let req = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests");
        assert_eq!(req["cpu"], Quantity("2".into()));
        assert_eq!(req["memory"], Quantity("512Mi".into()));
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[LABEL_EXPERIMENT], "exp_s_1");
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        let ann = pod.metadata.annotations.expect("annotations");
        assert_eq!(ann[ANNOTATION_SSH], "ssh-ed25519 AAAA a\nssh-rsa BBBB b");
        assert_eq!(ann[ANNOTATION_USERDATA], "#cloud-config\n");
    }

    #[test]
    fn options_reach_the_container_and_the_service() {
        use crate::model::{EnvEntry, PodOptions, PortProtocol, PortSpec};
        let r = ResourceRecord {
            id: uuid::Uuid::nil(),
            typed_id: "resource_s_00000000000000000000000001".into(),
            experiment_id: "exp_s_1".into(),
            project_id: "proj_s_1".into(),
            requested_by: None,
            friendly_name: "kme-a".into(),
            flavor_type: crate::model::FlavorType::K8s,
            allocation_state: AllocationState::Requested,
            image_location: "kme:1".into(),
            image_name: "kme".into(),
            image_tags: Vec::new(),
            image_cluster_id: "default".into(),
            default_username: "root".into(),
            vcpus: 1,
            ram_mib: 256,
            disk_mb: 1024,
            flavor_name: "k8s.small".into(),
            flavor_source_id: None,
            network_name: None,
            userdata: None,
            ssh_authorized_keys: Vec::new(),
            details: BackendDetails::default(),
            pod: PodOptions {
                env: vec![EnvEntry {
                    name: "PEER".into(),
                    value: "kme-b".into(),
                }],
                command: vec!["/kme".into()],
                args: vec!["--id".into(), "a".into()],
                ports: vec![PortSpec {
                    name: "etsi014".into(),
                    port: 8443,
                    protocol: PortProtocol::TCP,
                }],
            },
        };
        let spec = pod_manifest(&r, "ns").spec.expect("spec");
        let c = &spec.containers[0];
        assert_eq!(c.command.as_deref(), Some(&["/kme".to_string()][..]));
        assert_eq!(c.args.as_ref().map(Vec::len), Some(2));
        let env = c.env.as_ref().expect("env");
        assert!(env
            .iter()
            .any(|e| e.name == "PEER" && e.value.as_deref() == Some("kme-b")));
        let port = &c.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("etsi014"), 8443)
        );
        let scratch = &spec.volumes.as_ref().expect("volumes")[0];
        let size = scratch
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.clone());
        assert_eq!(size, Some(Quantity("1024M".into())));
        assert_eq!(
            c.volume_mounts.as_ref().expect("mounts")[0].mount_path,
            SCRATCH_PATH
        );

        let service = service_manifest(&r, "ns", "uid-1").expect("service");
        assert_eq!(service.metadata.name.as_deref(), Some("kme-a"));
        let owner = &service.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "uid-1"));
        let spec = service.spec.expect("spec");
        assert_eq!(
            spec.selector.expect("selector")[LABEL_RESOURCE],
            label_value(&r.typed_id)
        );
        assert_eq!(spec.ports.expect("ports")[0].port, 8443);
    }
}
