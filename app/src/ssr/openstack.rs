//! A small OpenStack client: Keystone v3 tokens (cached until near expiry) and the few Nova,
//! Glance and Neutron calls this site needs.
//!
//! Why our own and not `openstack`/`openstack_sdk` or `osauth`: we need exactly one token
//! request per (user, cloud) for many servers, the catalog's endpoints by interface and region,
//! and ~10 REST calls; both crates bring large dependency trees (and `osauth` is unmaintained
//! since 2023). References: Identity API v3 "Password authentication with scoped
//! authorization" and "Authenticating with an Application Credential"; Compute API (microversion
//! 2.79) "Create Server", "Show Server Details", "Delete Server", "Show Console Output
//! (os-getConsoleOutput Action)"; Image API v2 "List images"; Networking API v2.0 "List
//! networks".

use crate::ssr::cloud_config::{Cloud, CloudAuth, NameOrId};
use crate::ssr::egress::{Denied, EgressPolicy};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Tokens closer than this to their expiry are renewed.
const RENEW_BEFORE: chrono::Duration = chrono::Duration::minutes(5);
/// Nova microversion sent with every compute call.
pub const COMPUTE_MICROVERSION: &str = "compute 2.79";

/// An OpenStack failure, classified for the task runner.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenStackError {
    /// Keystone refused the credentials (wrong, expired or revoked): the user must fix them.
    #[error("Keystone refused the credentials of cloud `{cloud}`: {message}")]
    Unauthorized { cloud: String, message: String },
    /// The request is wrong or not allowed (quota, policy, not found): permanent.
    #[error("{0}")]
    Refused(String),
    /// A 5xx, a broken answer or a failed TLS handshake: worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// No answer at all (connection refused, reset or unreachable; timed out): `service` is
    /// down or out of reach. Tasks wait such an outage out (`OUTAGE_BUDGET_SECS`).
    #[error("{message}")]
    Unreachable {
        service: &'static str,
        message: String,
    },
}

impl OpenStackError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            OpenStackError::Unavailable(_) | OpenStackError::Unreachable { .. }
        )
    }
}

/// A scoped Keystone token with its service catalog.
#[derive(Clone)]
pub struct Token {
    secret: Arc<zeroize::Zeroizing<String>>,
    pub expires_at: DateTime<Utc>,
    catalog: Value,
    pub project_id: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The endpoint of a service type (`compute`, `image`, `network`) for the cloud's
    /// interface and region, from the token's catalog.
    pub fn endpoint(&self, service_type: &str, cloud: &Cloud) -> Result<String, OpenStackError> {
        let services = self.catalog.as_array().cloned().unwrap_or_default();
        let service = services
            .iter()
            .find(|s| s["type"].as_str() == Some(service_type))
            .ok_or_else(|| {
                OpenStackError::Refused(format!(
                    "cloud `{}` has no `{service_type}` service in its catalog",
                    cloud.name
                ))
            })?;
        let endpoints = service["endpoints"].as_array().cloned().unwrap_or_default();
        endpoints
            .iter()
            .filter(|e| e["interface"].as_str() == Some(cloud.interface.as_str()))
            .find(|e| match &cloud.region_name {
                Some(region) => {
                    e["region_id"].as_str() == Some(region) || e["region"].as_str() == Some(region)
                }
                None => true,
            })
            .and_then(|e| e["url"].as_str())
            .map(|u| u.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                OpenStackError::Refused(format!(
                    "cloud `{}` has no {} `{service_type}` endpoint{}",
                    cloud.name,
                    cloud.interface,
                    cloud
                        .region_name
                        .as_ref()
                        .map(|r| format!(" in region {r}"))
                        .unwrap_or_default()
                ))
            })
    }
}

/// Identifies one cached token: the user, the cloud name and a hash of that cloud's settings
/// (a re-upload with other credentials gets a new token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub user: String,
    pub cloud: String,
    pub settings_hash: u64,
}

/// The HTTP client, the token cache and a count of Keystone token requests (for the
/// benchmark's "token requests per 10 creates").
pub struct OpenStackClient {
    http: reqwest::Client,
    insecure_http: reqwest::Client,
    /// Where requests may go (SSRF rule): checked on every URL, and on every address a host
    /// name resolves to by [`GuardedResolver`].
    policy: Arc<EgressPolicy>,
    /// Tokens per (user, cloud, settings), kept until [`RENEW_BEFORE`] their expiry (moka:
    /// one Keystone request per key at a time, other keys never wait for it, least used
    /// tokens evicted past [`MAX_CACHED_TOKENS`]).
    tokens: moka::future::Cache<TokenKey, Token>,
    pub keystone_requests: AtomicU64,
}

/// Most Keystone tokens kept.
pub const MAX_CACHED_TOKENS: u64 = 10_000;

/// A cached token lives until [`RENEW_BEFORE`] its `expires_at`.
struct UntilRenewal;

impl moka::Expiry<TokenKey, Token> for UntilRenewal {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        token: &Token,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            (token.expires_at - Utc::now() - RENEW_BEFORE)
                .to_std()
                .unwrap_or(Duration::ZERO),
        )
    }
}

fn keystone_base(auth_url: &str) -> String {
    let url = auth_url.trim_end_matches('/');
    if url.ends_with("/v3") {
        url.to_string()
    } else {
        format!("{url}/v3")
    }
}

fn name_or_id(value: &NameOrId) -> Value {
    match value {
        NameOrId::Name(n) => json!({ "name": n }),
        NameOrId::Id(i) => json!({ "id": i }),
    }
}

fn user_object(user: &NameOrId, domain: &Option<NameOrId>) -> Value {
    let mut u = name_or_id(user);
    if let (NameOrId::Name(_), Some(d)) = (user, domain) {
        u["domain"] = name_or_id(d);
    }
    u
}

/// The body of `POST /v3/auth/tokens` for a cloud.
pub fn auth_body(cloud: &Cloud) -> Value {
    match &cloud.auth {
        CloudAuth::Password {
            user,
            user_domain,
            password,
            project,
            project_domain,
        } => {
            let mut u = user_object(user, user_domain);
            u["password"] = password.expose().into();
            let mut body = json!({ "auth": { "identity": {
                "methods": ["password"], "password": { "user": u } } } });
            if let Some(p) = project {
                let mut scope = name_or_id(p);
                if let (NameOrId::Name(_), Some(d)) = (p, project_domain) {
                    scope["domain"] = name_or_id(d);
                }
                body["auth"]["scope"] = json!({ "project": scope });
            }
            body
        }
        CloudAuth::ApplicationCredential {
            credential,
            user,
            user_domain,
            secret,
        } => {
            let mut c = name_or_id(credential);
            c["secret"] = secret.expose().into();
            if let (NameOrId::Name(_), Some(u)) = (credential, user) {
                c["user"] = user_object(u, user_domain);
            }
            // An application credential carries its own project: no scope.
            json!({ "auth": { "identity": {
                "methods": ["application_credential"], "application_credential": c } } })
        }
    }
}

/// The hash of a cloud's settings (its Debug form hides secrets, so include them apart).
pub fn settings_hash(cloud: &Cloud) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    format!("{cloud:?}").hash(&mut h);
    auth_body(cloud).to_string().hash(&mut h);
    h.finish()
}

/// The message of an OpenStack error body (`{"error": {"message"}}` from Keystone,
/// `{"badRequest": {"message"}}`-style from Nova, `{"NeutronError": {"message"}}`). Any other
/// body gets a fixed text: what a foreign server sent is never echoed.
fn error_message(body: &str) -> String {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(obj) = parsed.as_object() {
        for value in obj.values() {
            if let Some(m) = value.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
        }
        if let Some(m) = parsed.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    "the answer carries no OpenStack error message".to_string()
}

/// The resolver of the OpenStack HTTP clients: resolves with the system resolver, then keeps
/// only the addresses [`EgressPolicy::check_resolved`] allows (a name that resolves only to
/// refused addresses fails with [`Denied`]). IP-literal hosts never reach a resolver: they are
/// checked on the URL ([`OpenStackClient::guard`]).
struct GuardedResolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let mut refused = None;
            let allowed: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| match policy.check_resolved(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(denied)) => {
                    Err(Box::new(denied) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

impl OpenStackClient {
    /// A client that sends requests only where `policy` allows, never follows redirects and
    /// gives up on a request after 30 s.
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
                .danger_accept_invalid_certs(insecure)
                .user_agent(concat!("slices-blueprint/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Self {
            http: build(false)?,
            insecure_http: build(true)?,
            policy: policy.clone(),
            tokens: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED_TOKENS)
                .expire_after(UntilRenewal)
                .build(),
            keystone_requests: AtomicU64::new(0),
        })
    }

    /// The client for a cloud: `verify: false` only when the operator allows it.
    fn http(&self, cloud: &Cloud) -> Result<&reqwest::Client, OpenStackError> {
        if cloud.verify {
            Ok(&self.http)
        } else if self.policy.allow_insecure_tls {
            Ok(&self.insecure_http)
        } else {
            Err(OpenStackError::Refused(format!(
                "cloud `{}` sets `verify: false`, and this site accepts only verified TLS (an operator can allow it with OPENSTACK_ALLOW_INSECURE_TLS=true)",
                cloud.name
            )))
        }
    }

    /// Checks a URL against the outbound rule before any connection is made.
    fn guard(&self, url: &str) -> Result<(), OpenStackError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| OpenStackError::Refused(format!("`{url}` is not a valid URL")))?;
        self.policy
            .check_url(&parsed)
            .map_err(|e| OpenStackError::Refused(format!("{url}: {e}")))
    }

    /// The outbound rule in one line (start-up banner).
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Requests a new token from Keystone (no cache).
    pub async fn authenticate(&self, cloud: &Cloud) -> Result<Token, OpenStackError> {
        let url = format!("{}/auth/tokens", keystone_base(&cloud.auth_url));
        self.guard(&url)?;
        let http = self.http(cloud)?;
        self.keystone_requests.fetch_add(1, Ordering::Relaxed);
        // Counted by bench/run (Keystone token requests per VM create); never a secret here.
        tracing::info!(cloud = %cloud.name, auth_url = %cloud.auth_url, "requested a Keystone token");
        let response = http
            .post(&url)
            .json(&auth_body(cloud))
            .send()
            .await
            .map_err(|e| {
                transport_error("Keystone", format!("cannot reach Keystone at {url}"), &e)
            })?;
        let status = response.status();
        let header = response
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        if status.is_redirection() {
            return Err(redirect_refused("Keystone", status));
        }
        if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 404 {
            return Err(OpenStackError::Unauthorized {
                cloud: cloud.name.clone(),
                message: error_message(&text),
            });
        }
        if !status.is_success() {
            return Err(if status.is_server_error() {
                OpenStackError::Unavailable(format!(
                    "Keystone answered {status}: {}",
                    error_message(&text)
                ))
            } else {
                OpenStackError::Refused(format!(
                    "Keystone answered {status}: {}",
                    error_message(&text)
                ))
            });
        }
        let secret = header.ok_or_else(|| {
            OpenStackError::Unavailable("Keystone sent no X-Subject-Token".into())
        })?;
        let body: Value = serde_json::from_str(&text).map_err(|e| {
            OpenStackError::Unavailable(format!("Keystone's answer is not JSON: {e}"))
        })?;
        let expires_at = body["token"]["expires_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(30));
        Ok(Token {
            secret: Arc::new(zeroize::Zeroizing::new(secret)),
            expires_at,
            catalog: body["token"]["catalog"].clone(),
            project_id: body["token"]["project"]["id"].as_str().map(str::to_string),
        })
    }

    /// A token for `key`, from the cache while it has more than 5 minutes left.
    pub async fn token(&self, key: &TokenKey, cloud: &Cloud) -> Result<Token, OpenStackError> {
        let fetched = std::sync::atomic::AtomicBool::new(false);
        let token = self
            .tokens
            .try_get_with_by_ref(key, async {
                fetched.store(true, Ordering::Relaxed);
                self.authenticate(cloud).await
            })
            .await
            .map_err(|e| (*e).clone())?;
        crate::ssr::metrics::keystone_token(!fetched.load(Ordering::Relaxed));
        Ok(token)
    }

    /// Forgets a token (after a 401 from a service).
    pub async fn forget(&self, key: &TokenKey) {
        self.tokens.invalidate(key).await;
    }

    /// One authenticated call; `Ok(None)` for 404. Errors are classified.
    pub async fn call(
        &self,
        cloud: &Cloud,
        token: &Token,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, OpenStackError> {
        self.guard(url)?;
        let mut request = self
            .http(cloud)?
            .request(method.clone(), url)
            .header("X-Auth-Token", token.secret.as_str())
            .header("OpenStack-API-Version", COMPUTE_MICROVERSION)
            .header("Accept", "application/json");
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error("OpenStack API", format!("{method} {url}"), &e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match status.as_u16() {
            200..=299 => Ok(Some(if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            })),
            300..=399 => Err(redirect_refused(&format!("{method} {url}"), status)),
            404 => Ok(None),
            401 => Err(OpenStackError::Unauthorized {
                cloud: cloud.name.clone(),
                message: error_message(&text),
            }),
            s if s >= 500 || s == 429 || s == 409 && text.contains("task_state") => {
                Err(OpenStackError::Unavailable(format!(
                    "{method} {url} answered {status}: {}",
                    error_message(&text)
                )))
            }
            _ => Err(OpenStackError::Refused(error_message(&text))),
        }
    }

    /// Image names visible to the token (for "Test connection").
    pub async fn image_names(
        &self,
        cloud: &Cloud,
        token: &Token,
    ) -> Result<Vec<String>, OpenStackError> {
        let base = token.endpoint("image", cloud)?;
        let url = format!("{base}/v2/images?limit=100");
        let body = self
            .call(cloud, token, reqwest::Method::GET, &url, None)
            .await?
            .unwrap_or(Value::Null);
        Ok(body["images"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A redirect answer: never followed (it could point anywhere), reported without its target.
fn redirect_refused(what: &str, status: reqwest::StatusCode) -> OpenStackError {
    OpenStackError::Refused(format!(
        "{what} answered {status}, a redirect; OpenStack endpoints must answer directly (redirects are not followed)"
    ))
}

/// Why a request got no answer, in fixed words: the outbound rule's own refusal (permanent),
/// or "no answer in time", "could not connect (refused, reset or unreachable)", "TLS or
/// protocol failure" (worth retrying). Transport details (OS error texts, certificate
/// contents) are not passed on.
fn transport_error(service: &'static str, what: String, e: &reqwest::Error) -> OpenStackError {
    let mut cause: &dyn std::error::Error = e;
    loop {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return OpenStackError::Refused(format!("{what}: {denied}"));
        }
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    let why = if e.is_timeout() {
        "no answer in time (timed out)"
    } else if e.is_connect() {
        "could not connect (connection refused, reset or unreachable)"
    } else {
        return OpenStackError::Unavailable(format!(
            "{what}: the connection failed (TLS or protocol error)"
        ));
    };
    OpenStackError::Unreachable {
        service,
        message: format!("{what}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssr::cloud_config::parse;

    #[test]
    fn auth_bodies_follow_the_identity_api() {
        let file = parse(
            "clouds:\n  pw:\n    auth: {auth_url: 'http://k:5000', username: u, password: p, project_name: demo, user_domain_name: Default, project_domain_id: default}\n  ac:\n    auth_type: v3applicationcredential\n    auth: {auth_url: 'http://k:5000/v3/', application_credential_name: n, username: u, user_domain_name: Default, application_credential_secret: s}\n",
        )
        .expect("valid");
        let pw = auth_body(file.get("pw").expect("pw"));
        assert_eq!(pw["auth"]["identity"]["methods"][0], "password");
        assert_eq!(
            pw["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "Default"
        );
        assert_eq!(pw["auth"]["scope"]["project"]["name"], "demo");
        assert_eq!(pw["auth"]["scope"]["project"]["domain"]["id"], "default");
        let ac = auth_body(file.get("ac").expect("ac"));
        assert_eq!(
            ac["auth"]["identity"]["application_credential"]["user"]["name"],
            "u"
        );
        assert!(ac["auth"].get("scope").is_none());
        assert_eq!(keystone_base("http://k:5000"), "http://k:5000/v3");
        assert_eq!(keystone_base("http://k:5000/v3/"), "http://k:5000/v3");
    }

    #[test]
    fn error_messages_are_extracted() {
        assert_eq!(
            error_message(
                r#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message(
                r#"{"forbidden": {"message": "Quota exceeded for instances", "code": 403}}"#
            ),
            "Quota exceeded for instances"
        );
        // A foreign body (an HTML page, a port scan's banner) is never echoed.
        let foreign = error_message("<html>secret internal page</html>");
        assert!(!foreign.contains("secret"), "{foreign}");
    }
}
