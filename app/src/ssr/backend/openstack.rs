//! OpenStack backend: one Nova server per `flavor_type = vm` resource, made with the
//! requesting user's own clouds.yaml.
//!
//! - Cloud: the image's `cluster_id`; `default` means the user's chosen default cloud.
//! - Image: the catalog image's `location`, a Glance image id or name. Flavor: the Nova flavor
//!   recorded at catalog import (`source_id`), else the one named like the catalog flavor.
//!   Network: the resource's `network_name`, else the only network the project sees.
//! - user_data: the requested cloud-init with the SSH keys merged in as
//!   `ssh_authorized_keys` (see [`merge_user_data`]), base64-encoded.
//! - Idempotent: the server carries the resource id in its metadata (`slices-resource-id`);
//!   a retried create adopts a server that has it, and a delete that meets 404 is done.
//! - Status: `GET /servers/{id}` polled with backoff until ACTIVE (addresses recorded) or
//!   ERROR (Nova's fault message), bounded by `VM_READY_TIMEOUT_SECS`.
//! - Reconciler: per user with live VMs, every cloud of their clouds.yaml is listed
//!   (`GET /servers/detail`) for servers with our metadata; orphans are deleted by id.

use super::{
    BackendError, CloudsSource, ComputeBackend, ObjectHandle, Observation, Observed,
    ObservedHealth, Progress, ResourceRecord,
};
use crate::model::{AllocationState, BackendDetails, OperationalState};
use crate::ssr::cloud_config::Cloud;
use crate::ssr::openstack::{settings_hash, OpenStackClient, OpenStackError, Token, TokenKey};
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Metadata key naming the resource a server belongs to.
pub const META_RESOURCE: &str = "slices-resource-id";
const META_EXPERIMENT: &str = "slices-experiment-id";
const DELETE_TIMEOUT: Duration = Duration::from_secs(300);

/// Nova servers.
pub struct OpenStackBackend {
    client: Arc<OpenStackClient>,
    clouds: Arc<dyn CloudsSource>,
    ready_timeout: Duration,
}

fn map(e: OpenStackError) -> BackendError {
    match e {
        OpenStackError::Unauthorized { .. } => BackendError::permanent(format!(
            "{e}; upload a clouds.yaml with valid credentials and request the resource again"
        )),
        OpenStackError::Refused(m) => BackendError::permanent(explain(&m)),
        OpenStackError::Unavailable(m) => BackendError::retryable(m),
        OpenStackError::Unreachable { service, message } => {
            BackendError::unreachable(service, message)
        }
    }
}

/// Adds what an experimenter can do about the common Nova refusals.
fn explain(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if lower.contains("quota exceeded") {
        format!("{message} (the project's quota is used up: delete resources or ask for more)")
    } else if lower.contains("no valid host") {
        format!(
            "{message} (the cloud has no room for this flavor now: try a smaller flavor or later)"
        )
    } else {
        message.to_string()
    }
}

impl OpenStackBackend {
    pub fn new(
        client: Arc<OpenStackClient>,
        clouds: Arc<dyn CloudsSource>,
        ready_timeout: Duration,
    ) -> Self {
        Self {
            client,
            clouds,
            ready_timeout,
        }
    }

    /// The cloud and a token for a resource's requesting user.
    async fn session(&self, r: &ResourceRecord) -> Result<(Cloud, TokenKey, Token), BackendError> {
        let user = r.requested_by.clone().ok_or_else(|| {
            BackendError::permanent(
                "no requesting user is known: send your user token in `tokens` so that your clouds.yaml can be used",
            )
        })?;
        let (file, default) = self
            .clouds
            .clouds_of(&user)
            .await
            .map_err(BackendError::permanent)?;
        let name = if r.image_cluster_id == "default" {
            default
        } else {
            r.image_cluster_id.clone()
        };
        let cloud = file.get(&name).cloned().ok_or_else(|| {
            BackendError::permanent(format!(
                "your clouds.yaml has no cloud `{name}` (needed by image cluster_id `{}`)",
                r.image_cluster_id
            ))
        })?;
        let (key, token) = self.cloud_session(&user, &cloud).await?;
        Ok((cloud, key, token))
    }

    /// A (cached) token of `user` for `cloud`.
    async fn cloud_session(
        &self,
        user: &str,
        cloud: &Cloud,
    ) -> Result<(TokenKey, Token), BackendError> {
        let key = TokenKey {
            user: user.to_string(),
            cloud: cloud.name.clone(),
            settings_hash: settings_hash(cloud),
        };
        let token = self.client.token(&key, cloud).await.map_err(map)?;
        Ok((key, token))
    }

    async fn get(
        &self,
        cloud: &Cloud,
        token: &Token,
        url: &str,
    ) -> Result<Option<Value>, BackendError> {
        self.client
            .call(cloud, token, Method::GET, url, None)
            .await
            .map_err(map)
    }

    /// The server of this resource, found by its metadata.
    async fn find_server(
        &self,
        cloud: &Cloud,
        token: &Token,
        r: &ResourceRecord,
    ) -> Result<Option<Value>, BackendError> {
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        if let Some(id) = &r.details.server_id {
            if let Some(body) = self
                .get(cloud, token, &format!("{compute}/servers/{id}"))
                .await?
            {
                return Ok(Some(body["server"].clone()));
            }
        }
        let url = format!(
            "{compute}/servers/detail?name={}",
            crate::ssr::query_value(&format!("^{}$", r.friendly_name))
        );
        let body = self.get(cloud, token, &url).await?.unwrap_or(Value::Null);
        Ok(body["servers"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|s| s["metadata"][META_RESOURCE].as_str() == Some(r.typed_id.as_str()))
            })
            .cloned())
    }

    /// The Glance image for the catalog image: `location` as an id, then as a name, then
    /// the catalog entry's own name (an image imported from a site cloud keeps its id there,
    /// which another project may not see, while the name is shared).
    async fn resolve_image(
        &self,
        cloud: &Cloud,
        token: &Token,
        r: &ResourceRecord,
    ) -> Result<String, BackendError> {
        let glance = token.endpoint("image", cloud).map_err(map)?;
        let location = r.image_location.as_str();
        if looks_like_uuid(location)
            && self
                .get(cloud, token, &format!("{glance}/v2/images/{location}"))
                .await?
                .is_some()
        {
            return Ok(location.to_string());
        }
        for name in [location, r.image_name.as_str()] {
            let body = self
                .get(
                    cloud,
                    token,
                    &format!("{glance}/v2/images?name={}", crate::ssr::query_value(name)),
                )
                .await?
                .unwrap_or(Value::Null);
            if let Some(id) = body["images"][0]["id"].as_str() {
                return Ok(id.to_string());
            }
        }
        Err(BackendError::permanent(format!(
            "image `{location}` not found in Glance on cloud `{}` (or not visible to your project)",
            cloud.name
        )))
    }

    async fn resolve_flavor(
        &self,
        cloud: &Cloud,
        token: &Token,
        r: &ResourceRecord,
    ) -> Result<String, BackendError> {
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        if let Some(id) = &r.flavor_source_id {
            if self
                .get(cloud, token, &format!("{compute}/flavors/{id}"))
                .await?
                .is_some()
            {
                return Ok(id.clone());
            }
        }
        let body = self
            .get(cloud, token, &format!("{compute}/flavors/detail"))
            .await?
            .unwrap_or(Value::Null);
        body["flavors"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|f| f["name"].as_str() == Some(r.flavor_name.as_str()))
            })
            .and_then(|f| f["id"].as_str().map(str::to_string))
            .ok_or_else(|| {
                BackendError::permanent(format!(
                    "no Nova flavor `{}` on cloud `{}` (import the catalog from this cloud)",
                    r.flavor_name, cloud.name
                ))
            })
    }

    async fn resolve_network(
        &self,
        cloud: &Cloud,
        token: &Token,
        name: Option<&str>,
    ) -> Result<String, BackendError> {
        let neutron = token.endpoint("network", cloud).map_err(map)?;
        let url = match name {
            Some(n) => format!(
                "{neutron}/v2.0/networks?name={}",
                crate::ssr::query_value(n)
            ),
            None => format!("{neutron}/v2.0/networks"),
        };
        let body = self.get(cloud, token, &url).await?.unwrap_or(Value::Null);
        let networks = body["networks"].as_array().cloned().unwrap_or_default();
        match (name, networks.len()) {
            (_, 1) => Ok(networks[0]["id"].as_str().unwrap_or_default().to_string()),
            (Some(n), 0) => Err(BackendError::permanent(format!(
                "network `{n}` not found in Neutron on cloud `{}`",
                cloud.name
            ))),
            (Some(n), _) => Err(BackendError::permanent(format!(
                "several networks are called `{n}`; use a unique name"
            ))),
            (None, count) => Err(BackendError::permanent(format!(
                "set network_name: the project sees {count} networks on cloud `{}`",
                cloud.name
            ))),
        }
    }

    /// Console output (`os-getConsoleOutput`, Compute API "Show Console Output"), last
    /// `lines` lines.
    async fn console_output(&self, r: &ResourceRecord, lines: u32) -> Result<String, BackendError> {
        let (cloud, _, token) = self.session(r).await?;
        let server = self
            .find_server(&cloud, &token, r)
            .await?
            .ok_or_else(|| BackendError::permanent("the server no longer exists"))?;
        let compute = token.endpoint("compute", &cloud).map_err(map)?;
        let id = server["id"].as_str().unwrap_or_default();
        let body = self
            .client
            .call(
                &cloud,
                &token,
                Method::POST,
                &format!("{compute}/servers/{id}/action"),
                Some(&json!({"os-getConsoleOutput": {"length": lines}})),
            )
            .await
            .map_err(map)?
            .unwrap_or(Value::Null);
        Ok(body["output"].as_str().unwrap_or_default().to_string())
    }
}

impl OpenStackBackend {
    /// The servers of `user`'s `cloud` that carry our resource-id metadata.
    async fn list_ours(&self, user: &str, cloud: &Cloud) -> Result<Vec<Observed>, BackendError> {
        let (_, token) = self.cloud_session(user, cloud).await?;
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        let url = format!("{compute}/servers/detail?limit=1000");
        let body = self.get(cloud, &token, &url).await?.unwrap_or(Value::Null);
        let servers = body["servers"].as_array().cloned().unwrap_or_default();
        Ok(servers
            .iter()
            .filter_map(|server| {
                let resource_id = server["metadata"][META_RESOURCE].as_str()?;
                Some(Observed {
                    resource_id: Some(resource_id.to_string()),
                    handle: ObjectHandle::Server {
                        user_id: user.to_string(),
                        cloud: cloud.name.clone(),
                        server_id: server["id"].as_str().unwrap_or_default().to_string(),
                    },
                    health: server_health(server),
                })
            })
            .collect())
    }
}

/// A Nova server's `status` as the reconciler sees it (Compute API, "Server Status").
fn server_health(server: &Value) -> ObservedHealth {
    let status = server["status"].as_str().unwrap_or_default();
    match status {
        "ACTIVE" => ObservedHealth::Ready(String::new()),
        "BUILD" => ObservedHealth::Starting("the server is being built".into()),
        "ERROR" => ObservedHealth::Degraded(format!(
            "Nova reports the server in ERROR: {}",
            server["fault"]["message"]
                .as_str()
                .unwrap_or("no fault message")
        )),
        "SHUTOFF" => ObservedHealth::Degraded("the server is shut off (SHUTOFF)".into()),
        "DELETED" | "SOFT_DELETED" => ObservedHealth::Terminating,
        other => ObservedHealth::Starting(format!("Nova status {other}")),
    }
}

fn details_of(server: &Value) -> BackendDetails {
    let mut addresses = Vec::new();
    if let Some(networks) = server["addresses"].as_object() {
        for list in networks.values() {
            for a in list.as_array().into_iter().flatten() {
                if let Some(addr) = a["addr"].as_str() {
                    // Floating addresses first: they are the ones reachable from outside.
                    if a["OS-EXT-IPS:type"].as_str() == Some("floating") {
                        addresses.insert(0, addr.to_string());
                    } else {
                        addresses.push(addr.to_string());
                    }
                }
            }
        }
    }
    BackendDetails {
        server_id: server["id"].as_str().map(str::to_string),
        phase: server["status"].as_str().map(str::to_string),
        addresses,
        ..BackendDetails::default()
    }
}

impl OpenStackBackend {
    /// The server carrying the resource's id (an earlier attempt made it), else a new one.
    /// Answers its id.
    async fn create_server(
        &self,
        cloud: &Cloud,
        key: &TokenKey,
        token: &Token,
        r: &ResourceRecord,
    ) -> Result<String, BackendError> {
        if let Some(existing) = self.find_server(cloud, token, r).await? {
            tracing::info!(server = %existing["id"], "adopting the server an earlier attempt created");
            return Ok(existing["id"].as_str().unwrap_or_default().to_string());
        }
        let server = self.server_request(cloud, token, r).await?;
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        let created = match self
            .client
            .call(
                cloud,
                token,
                Method::POST,
                &format!("{compute}/servers"),
                Some(&json!({ "server": server })),
            )
            .await
        {
            Err(OpenStackError::Unauthorized { .. }) => {
                // The cached token may have been revoked: forget it and let the retry
                // re-authenticate.
                self.client.forget(key).await;
                return Err(BackendError::retryable(
                    "the token was refused; authenticating again",
                ));
            }
            other => other.map_err(map)?,
        };
        created
            .and_then(|b| b["server"]["id"].as_str().map(str::to_string))
            .ok_or_else(|| BackendError::retryable("Nova accepted the server but sent no id"))
    }

    /// The body of Compute "Create Server": image, flavor and network resolved on the cloud,
    /// the resource id in its metadata, the user data with the SSH keys merged in.
    async fn server_request(
        &self,
        cloud: &Cloud,
        token: &Token,
        r: &ResourceRecord,
    ) -> Result<Value, BackendError> {
        let image = self.resolve_image(cloud, token, r).await?;
        let flavor = self.resolve_flavor(cloud, token, r).await?;
        let network = self
            .resolve_network(cloud, token, r.network_name.as_deref())
            .await?;
        let user_data = merge_user_data(r.userdata.as_deref(), &r.ssh_authorized_keys);
        let mut server = json!({
            "name": r.friendly_name,
            "imageRef": image,
            "flavorRef": flavor,
            "networks": [{"uuid": network}],
            "metadata": {META_RESOURCE: r.typed_id, META_EXPERIMENT: truncate(&r.experiment_id, 255)},
        });
        if !user_data.is_empty() {
            server["user_data"] = base64::engine::general_purpose::STANDARD
                .encode(user_data)
                .into();
        }
        Ok(server)
    }

    /// Polls "Show Server Details" with backoff until ACTIVE (its details) or ERROR (Nova's
    /// fault message), at most `VM_READY_TIMEOUT_SECS`.
    async fn wait_active(
        &self,
        cloud: &Cloud,
        token: &Token,
        server_id: &str,
    ) -> Result<BackendDetails, BackendError> {
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        let started = tokio::time::Instant::now();
        let deadline = started + self.ready_timeout;
        loop {
            let server = self
                .get(cloud, token, &format!("{compute}/servers/{server_id}"))
                .await?
                .map(|b| b["server"].clone())
                .ok_or_else(|| {
                    BackendError::permanent("the server was deleted before it became ACTIVE")
                })?;
            match server["status"].as_str() {
                Some("ACTIVE") => return Ok(details_of(&server)),
                Some("ERROR") => {
                    let fault = server["fault"]["message"]
                        .as_str()
                        .unwrap_or("no fault message");
                    return Err(BackendError::permanent(format!(
                        "Nova could not build the server: {}",
                        explain(fault)
                    )));
                }
                _ => {}
            }
            let delay = poll_delay(started.elapsed());
            if tokio::time::Instant::now() + delay > deadline {
                return Err(BackendError::permanent(format!(
                    "server did not become ACTIVE within {} s (status {}); it was removed",
                    self.ready_timeout.as_secs(),
                    server["status"].as_str().unwrap_or("unknown")
                )));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait::async_trait]
impl ComputeBackend for OpenStackBackend {
    async fn create(
        &self,
        r: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<BackendDetails, BackendError> {
        let (cloud, key, token) = self.session(r).await?;
        progress
            .report(
                20,
                &format!("authenticated with Keystone (cloud {})", cloud.name),
            )
            .await;
        let server_id = self.create_server(&cloud, &key, &token, r).await?;
        progress
            .stage(
                50,
                AllocationState::Provisioning,
                OperationalState::Booting,
                &format!("server {server_id} created; waiting for ACTIVE"),
                Some(&BackendDetails {
                    server_id: Some(server_id.clone()),
                    ..BackendDetails::default()
                }),
            )
            .await;
        let details = self.wait_active(&cloud, &token, &server_id).await?;
        progress.report(100, "server ACTIVE").await;
        Ok(details)
    }

    async fn console_log(&self, r: &ResourceRecord, lines: u32) -> Result<String, BackendError> {
        self.console_output(r, lines).await
    }

    fn health(&self) -> String {
        "configured (each user's clouds.yaml)".into()
    }

    /// The servers carrying our resource-id metadata in every cloud of `owner`'s clouds.yaml
    /// (Compute API "List Servers Detailed"). A cloud that cannot be listed (refused
    /// credentials, down) is reported `blind`, so that its servers are never taken for gone.
    async fn observe(&self, owner: Option<&str>) -> Result<Option<Observation>, BackendError> {
        let Some(user) = owner else {
            return Ok(None);
        };
        let Ok((file, default)) = self.clouds.clouds_of(user).await else {
            return Ok(None);
        };
        let mut seen = Observation {
            default_scope: Some(default),
            ..Observation::default()
        };
        for cloud in &file.clouds {
            match self.list_ours(user, cloud).await {
                Ok(objects) => seen.objects.extend(objects),
                Err(e) => {
                    tracing::debug!(cloud = %cloud.name, error = %e.message, "cannot list the servers of a cloud now");
                    seen.blind.push(cloud.name.clone());
                }
            }
        }
        Ok(Some(seen))
    }

    async fn remove_orphan(&self, object: &ObjectHandle) -> Result<(), BackendError> {
        let ObjectHandle::Server {
            user_id,
            cloud,
            server_id,
        } = object
        else {
            return Ok(());
        };
        let (file, _) = self
            .clouds
            .clouds_of(user_id)
            .await
            .map_err(BackendError::permanent)?;
        let Some(cloud) = file.get(cloud) else {
            return Ok(());
        };
        let (_, token) = self.cloud_session(user_id, cloud).await?;
        let compute = token.endpoint("compute", cloud).map_err(map)?;
        self.client
            .call(
                cloud,
                &token,
                Method::DELETE,
                &format!("{compute}/servers/{server_id}"),
                None,
            )
            .await
            .map_err(map)?;
        Ok(())
    }

    async fn delete(
        &self,
        r: &ResourceRecord,
        progress: &dyn Progress,
    ) -> Result<(), BackendError> {
        let (cloud, _, token) = self.session(r).await?;
        let Some(server) = self.find_server(&cloud, &token, r).await? else {
            return Ok(());
        };
        let compute = token.endpoint("compute", &cloud).map_err(map)?;
        let id = server["id"].as_str().unwrap_or_default().to_string();
        self.client
            .call(
                &cloud,
                &token,
                Method::DELETE,
                &format!("{compute}/servers/{id}"),
                None,
            )
            .await
            .map_err(map)?;
        progress
            .report(50, "server deletion requested; waiting for it to go")
            .await;
        let deadline = tokio::time::Instant::now() + DELETE_TIMEOUT;
        let mut delay = Duration::from_millis(500);
        loop {
            if self
                .get(&cloud, &token, &format!("{compute}/servers/{id}"))
                .await?
                .is_none()
            {
                progress.report(100, "server deleted").await;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BackendError::retryable(format!(
                    "server {id} still exists after {} s",
                    DELETE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }
}

/// Merges SSH keys into cloud-init user data (cloud-init docs, "User data formats"):
/// none given → the user data unchanged; no user data → a `#cloud-config` with
/// `ssh_authorized_keys`; a `#cloud-config` → the keys appended to its
/// `ssh_authorized_keys` (created when absent); anything else (a script, a MIME archive
/// start line) → a `multipart/mixed` archive of a `#cloud-config` with the keys and the
/// original part.
pub fn merge_user_data(userdata: Option<&str>, keys: &[String]) -> String {
    let userdata = userdata.unwrap_or_default();
    if keys.is_empty() {
        return userdata.to_string();
    }
    // JSON strings are valid YAML double-quoted scalars: no escaping surprises.
    let key_lines: String = keys
        .iter()
        .map(|k| format!("  - {}\n", serde_json::Value::String(k.trim().to_string())))
        .collect();
    if userdata.trim().is_empty() {
        return format!("#cloud-config\nssh_authorized_keys:\n{key_lines}");
    }
    // A `#cloud-config` is loaded into a tree only when that is safe (see `loadable_yaml`);
    // otherwise it travels unchanged as its own part of the archive below.
    if userdata.starts_with("#cloud-config") && loadable_yaml(userdata) {
        if let Ok(mut docs) = yaml_rust2::YamlLoader::load_from_str(userdata) {
            if let Some(yaml_rust2::Yaml::Hash(map)) = docs.first_mut() {
                let k = yaml_rust2::Yaml::String("ssh_authorized_keys".into());
                let mut list = match map.get(&k) {
                    Some(yaml_rust2::Yaml::Array(a)) => a.clone(),
                    _ => Vec::new(),
                };
                list.extend(
                    keys.iter()
                        .map(|key| yaml_rust2::Yaml::String(key.trim().to_string())),
                );
                map.insert(k, yaml_rust2::Yaml::Array(list));
                let mut out = String::new();
                if yaml_rust2::YamlEmitter::new(&mut out)
                    .dump(&docs[0])
                    .is_ok()
                {
                    // The emitter writes `---`; cloud-init needs the header on the first line.
                    return format!(
                        "#cloud-config\n{}\n",
                        out.trim_start_matches("---").trim_start()
                    );
                }
            }
        }
        return format!("{}\nssh_authorized_keys:\n{key_lines}", userdata.trim_end());
    }
    let boundary = "==SLICES-BLUEPRINT==";
    let kind = if userdata.starts_with("#!") {
        "text/x-shellscript"
    } else if userdata.starts_with("#cloud-config") {
        "text/cloud-config"
    } else {
        "text/plain"
    };
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
         --{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\n\
         #cloud-config\nssh_authorized_keys:\n{key_lines}\n\
         --{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\n\n{userdata}\n--{boundary}--\n"
    )
}

/// Most YAML nodes a `#cloud-config` may have to be merged as a tree.
const MAX_USERDATA_NODES: usize = 10_000;
/// Deepest nesting a `#cloud-config` may have to be merged as a tree (the emitter recurses).
const MAX_USERDATA_DEPTH: usize = 64;

/// Whether user data is YAML that is safe to load into a tree and emit again: no aliases
/// (expanding them is how a "billion laughs" document grows from bytes to gigabytes), at most
/// [`MAX_USERDATA_NODES`] nodes and [`MAX_USERDATA_DEPTH`] levels. Checked on the event
/// stream, before anything is built (the same approach as the clouds.yaml scan in `clouds.rs`).
fn loadable_yaml(text: &str) -> bool {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let (mut nodes, mut depth) = (0usize, 0usize);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => return true,
            Ok((Event::Alias(_), _)) | Err(_) => return false,
            Ok((Event::MappingStart(..) | Event::SequenceStart(..), _)) => {
                nodes += 1;
                depth += 1;
            }
            Ok((Event::MappingEnd | Event::SequenceEnd, _)) => depth = depth.saturating_sub(1),
            Ok((Event::Scalar(..), _)) => nodes += 1,
            Ok(_) => {}
        }
        if nodes > MAX_USERDATA_NODES || depth > MAX_USERDATA_DEPTH {
            return false;
        }
    }
}

/// How long to wait before the next `GET /servers/{id}` while a server builds: every 0.25 s
/// for the first 10 s (most builds finish within seconds, so this keeps the added latency near
/// an eighth of a second), every 0.5 s until 30 s, then a tenth of the time waited so far, at
/// most 5 s.
fn poll_delay(waited: Duration) -> Duration {
    if waited < Duration::from_secs(10) {
        Duration::from_millis(250)
    } else if waited < Duration::from_secs(30) {
        Duration::from_millis(500)
    } else {
        (waited / 10).min(Duration::from_secs(5))
    }
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys_merge_into_every_user_data_shape() {
        let keys = vec!["ssh-ed25519 AAAA alice".to_string()];
        assert_eq!(merge_user_data(Some("x"), &[]), "x");
        let fresh = merge_user_data(None, &keys);
        assert!(
            fresh.starts_with("#cloud-config\n") && fresh.contains("\"ssh-ed25519 AAAA alice\""),
            "{fresh}"
        );
        let merged = merge_user_data(
            Some("#cloud-config\npackages: [git]\nssh_authorized_keys:\n  - ssh-rsa BBBB bob\n"),
            &keys,
        );
        assert!(merged.starts_with("#cloud-config\n"), "{merged}");
        let docs = yaml_rust2::YamlLoader::load_from_str(&merged).expect("yaml");
        let list = docs[0]["ssh_authorized_keys"].as_vec().expect("list");
        assert_eq!(list.len(), 2, "{merged}");
        assert_eq!(docs[0]["packages"][0].as_str(), Some("git"));
        let script = merge_user_data(Some("#!/bin/sh\necho hi\n"), &keys);
        assert!(
            script.contains("multipart/mixed")
                && script.contains("text/x-shellscript")
                && script.contains("echo hi")
        );
    }

    #[test]
    fn hostile_cloud_config_is_passed_on_unexpanded() {
        let keys = vec!["ssh-ed25519 AAAA alice".to_string()];
        // Nine levels of nine aliases: ~387 million nodes if it were expanded.
        let mut laughs = String::from("#cloud-config\na0: &a0 [lol]\n");
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 9].join(", ");
            laughs.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let started = std::time::Instant::now();
        let merged = merge_user_data(Some(&laughs), &keys);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(merged.contains("multipart/mixed"), "{merged}");
        assert!(
            merged.contains(&laughs),
            "the original part travels unchanged"
        );
        assert_eq!(merged.matches("text/cloud-config").count(), 2, "{merged}");
        assert!(merged.contains("\"ssh-ed25519 AAAA alice\""));

        let deep = format!(
            "#cloud-config\nx: {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let merged = merge_user_data(Some(&deep), &keys);
        assert!(merged.contains("multipart/mixed") && merged.contains(&deep));
    }

    #[test]
    fn addresses_and_uuids() {
        let server = json!({"id": "s1", "status": "ACTIVE", "addresses": {"private": [
            {"addr": "10.99.0.7", "OS-EXT-IPS:type": "fixed"}, {"addr": "192.0.2.5", "OS-EXT-IPS:type": "floating"}]}});
        let d = details_of(&server);
        assert_eq!(d.addresses, vec!["192.0.2.5", "10.99.0.7"]);
        assert!(looks_like_uuid("6b0f1c7e-1d6a-4c1e-9a52-2f3b8f0d9a11"));
        assert!(!looks_like_uuid("tiny"));
        assert!(explain("Quota exceeded for instances").contains("quota"));
        assert_eq!(
            poll_delay(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            poll_delay(Duration::from_secs(20)),
            Duration::from_millis(500)
        );
        assert_eq!(poll_delay(Duration::from_secs(40)), Duration::from_secs(4));
        assert_eq!(poll_delay(Duration::from_secs(400)), Duration::from_secs(5));
    }
}
