//! Bearer JWT verification and the claim mapping of ../shared/slices-api.md
//! ("Authentication").
//!
//! Tokens are verified against the issuer's JWKS (RFC 7517): the key is chosen by the header's
//! `kid`, the algorithm must be RS256 or ES256 and match the key (and the JWK's own `alg` and
//! `use` when it states them: RFC 7517 §4.2, §4.4), and `iss`, `aud`, `exp` and `nbf` are
//! checked (RFC 7519 §4.1, 30 s leeway; RFC 8725). The JWKS comes from `SLICES_JWKS_URL` or
//! from the issuer's OpenID discovery document (`<issuer>/.well-known/openid-configuration`,
//! `jwks_uri`); it is cached, read again every `SLICES_JWKS_REFRESH_SECS` (so a withdrawn key
//! stops working; while the issuer cannot be reached the keys already known stay in use), and
//! fetched at once when a token names an unknown `kid` (at most once per second, so forged
//! `kid`s cannot flood the portal).
//!
//! A verified token is remembered (its mapped [`Principal`]) for at most
//! [`VERIFIED_TTL_SECS`] (and the JWKS refresh interval) and never past its `exp`, so a client's repeated requests with one
//! token skip the signature check (an ES256 verification costs far more than the rest of a list
//! request). The cache (moka) holds at most [`VERIFIED_CACHE_MAX`] tokens, evicting the least
//! used ones past that, and verifies one token once even when many requests bring it at the
//! same moment; failures are not remembered.
//!
//! The dev issuer (`DEV_ISSUER=true`) signs ES256 tokens with a local P-256 key for local
//! runs and tests; its tokens are verified exactly like the portal's.

use crate::error::AppError;
use crate::ssr::config::AuthConfig;
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// Experiments may not outlive this when the token carries no expiry (imec's 89-day cap).
pub const MAX_EXPERIMENT_LIFETIME_DAYS: i64 = 89;
const LEEWAY_SECS: u64 = 30;
const JWKS_REFRESH_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest a verified token is trusted without checking its signature again, seconds (bounds
/// how long a token signed by a key the issuer has since withdrawn stays accepted).
pub const VERIFIED_TTL_SECS: i64 = 300;
/// Most verified tokens remembered at once.
pub const VERIFIED_CACHE_MAX: usize = 4096;

/// Which kind of SLICES token this is (decided by the type of its `sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `sub` = `user_…`: who you are; reads only.
    User,
    /// `sub` = `exp_…`: one experiment; reads and writes.
    Experiment,
}

/// A verified token, mapped to SLICES concepts. Holds no token text.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: TokenKind,
    /// The `sub` claim.
    pub subject: String,
    /// The user: `sub` of a user token, or the acting-user claim of an experiment token.
    pub user_id: Option<String>,
    pub experiment_id: Option<String>,
    pub project_id: Option<String>,
    pub experiment_name: Option<String>,
    /// Latest allowed resource expiry: the experiment-expiry claim, or now + 89 days.
    pub experiment_expires_at: Option<DateTime<Utc>>,
    pub token_expires_at: DateTime<Utc>,
    pub display_name: Option<String>,
    pub is_admin: bool,
}

impl Principal {
    /// The server itself acting as an admin (seeding the demo catalog at start-up); audit
    /// entries name it `system`.
    pub fn system() -> Self {
        Principal {
            kind: TokenKind::User,
            subject: "system".into(),
            user_id: None,
            experiment_id: None,
            project_id: None,
            experiment_name: None,
            experiment_expires_at: None,
            token_expires_at: Utc::now(),
            display_name: Some("slices-blueprint".into()),
            is_admin: true,
        }
    }
}

struct KeyEntry {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<KeyEntry>>,
    /// The only key when the set has exactly one and it has no `kid`.
    anonymous: Option<Arc<KeyEntry>>,
    fetched_at: Option<Instant>,
}

/// The external issuer's keys.
struct RemoteIssuer {
    issuer: String,
    jwks_url: Option<String>,
    cache: RwLock<KeyCache>,
    refresh: Mutex<()>,
}

/// The local dev issuer: signs tokens for local runs and tests.
pub struct DevIssuer {
    pub issuer: String,
    pub kid: String,
    encoding: EncodingKey,
    decoding: Arc<KeyEntry>,
    /// Public JWK as served at `/dev-issuer/jwks.json`.
    pub public_jwk: Value,
}

/// Verifies bearer tokens. Cheap to clone behind an `Arc`.
pub struct Authenticator {
    config: AuthConfig,
    http: reqwest::Client,
    remote: Option<RemoteIssuer>,
    dev: Option<DevIssuer>,
    /// Verified tokens → (principal, trusted until, seconds since the epoch).
    verified: moka::future::Cache<String, (Principal, i64)>,
}

/// Each remembered token lives until its own "trusted until" time.
struct TrustedUntil;

impl moka::Expiry<String, (Principal, i64)> for TrustedUntil {
    fn expire_after_create(
        &self,
        _token: &String,
        value: &(Principal, i64),
        _now: Instant,
    ) -> Option<Duration> {
        let left = value.1 - Utc::now().timestamp();
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

impl Authenticator {
    /// Builds the verifier; loads or creates the dev key when the dev issuer is on.
    pub fn new(config: AuthConfig, http: reqwest::Client) -> anyhow::Result<Self> {
        let remote = config.issuer.as_ref().map(|issuer| RemoteIssuer {
            issuer: issuer.clone(),
            jwks_url: config.jwks_url.clone(),
            cache: RwLock::new(KeyCache::default()),
            refresh: Mutex::new(()),
        });
        let dev = match &config.dev_issuer_key_file {
            Some(path) => Some(DevIssuer::load_or_create(path, &config.dev_issuer_url)?),
            None => None,
        };
        Ok(Self {
            config,
            http,
            remote,
            dev,
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_CACHE_MAX as u64)
                .expire_after(TrustedUntil)
                .build(),
        })
    }

    /// The dev issuer, when enabled.
    pub fn dev_issuer(&self) -> Option<&DevIssuer> {
        self.dev.as_ref()
    }

    /// Whether `user_id` is a site admin (`ADMIN_USER_IDS`).
    pub fn is_admin(&self, user_id: &str) -> bool {
        self.config.admin_user_ids.contains(user_id)
    }

    /// The user principal of a dashboard session (its sign-in was verified then), valid
    /// until `until` (the session's absolute end).
    pub fn session_user(
        &self,
        user_id: &str,
        display_name: Option<String>,
        until: DateTime<Utc>,
    ) -> Principal {
        Principal {
            kind: TokenKind::User,
            subject: user_id.to_string(),
            user_id: Some(user_id.to_string()),
            experiment_id: None,
            project_id: None,
            experiment_name: None,
            experiment_expires_at: None,
            token_expires_at: until,
            display_name,
            is_admin: self.is_admin(user_id),
        }
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.config.audience
    }

    /// Verifies `token` and maps its claims. Errors are 401s saying what is wrong, or 503
    /// when the issuer's keys cannot be fetched.
    pub async fn verify(&self, token: &str) -> Result<Principal, AppError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AppError::Unauthenticated("empty bearer token".into()));
        }
        let verify = async {
            let principal = self.verify_signed(token).await?;
            let ttl = VERIFIED_TTL_SECS
                .min(i64::try_from(self.config.jwks_refresh.as_secs()).unwrap_or(i64::MAX));
            let until = principal
                .token_expires_at
                .timestamp()
                .min(Utc::now().timestamp() + ttl);
            Ok::<_, AppError>((principal, until))
        };
        match self.verified.try_get_with_by_ref(token, verify).await {
            Ok((principal, _)) => Ok(principal),
            Err(e) => Err((*e).clone()),
        }
    }

    /// The signature, algorithm, `iss`, `aud` and `exp` checks, then the claim mapping.
    async fn verify_signed(&self, token: &str) -> Result<Principal, AppError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AppError::Unauthenticated(format!("malformed token: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AppError::Unauthenticated(format!(
                "token algorithm {:?} is not accepted (RS256 or ES256)",
                header.alg
            )));
        }
        let (entry, issuer) = match (&self.dev, header.kid.as_deref()) {
            (Some(dev), Some(kid)) if kid == dev.kid => (dev.decoding.clone(), dev.issuer.clone()),
            _ => {
                let remote = self.remote.as_ref().ok_or_else(|| {
                    AppError::Unauthenticated(
                        "token is not signed by a key of an issuer this site trusts".into(),
                    )
                })?;
                let entry = self.remote_key(remote, header.kid.as_deref()).await?;
                (entry, remote.issuer.clone())
            }
        };
        if entry.algorithm != header.alg {
            return Err(AppError::Unauthenticated(format!(
                "token algorithm {:?} does not match its key ({:?})",
                header.alg, entry.algorithm
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, &validation)
            .map_err(|e| {
                AppError::Unauthenticated(describe_jwt_error(&e, &self.config.audience))
            })?;
        self.map_claims(&data.claims)
    }

    fn map_claims(&self, claims: &Map<String, Value>) -> Result<Principal, AppError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let subject = text("sub").unwrap_or_default();
        let token_expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .unwrap_or_else(Utc::now);
        let kind = match subject.split('_').next() {
            Some("user") => TokenKind::User,
            Some("exp") => TokenKind::Experiment,
            _ => {
                return Err(AppError::Unauthenticated(format!(
                    "token subject `{}` is neither a user (`user_…`) nor an experiment (`exp_…`)",
                    shorten(&subject)
                )))
            }
        };
        let names = &self.config.claims;
        let principal = match kind {
            TokenKind::User => Principal {
                kind,
                user_id: Some(subject.clone()),
                experiment_id: None,
                project_id: None,
                experiment_name: None,
                experiment_expires_at: None,
                token_expires_at,
                display_name: text("name")
                    .or_else(|| text("preferred_username"))
                    .or_else(|| text("email")),
                is_admin: self.config.admin_user_ids.contains(&subject),
                subject,
            },
            TokenKind::Experiment => {
                let user_id = text(&names.acting_user);
                let cap = Utc::now() + chrono::Duration::days(MAX_EXPERIMENT_LIFETIME_DAYS);
                let expires = claims
                    .get(&names.experiment_expires)
                    .and_then(Value::as_i64)
                    .and_then(|s| Utc.timestamp_opt(s, 0).single())
                    .map(|t| t.min(cap))
                    .unwrap_or(cap);
                Principal {
                    kind,
                    is_admin: user_id
                        .as_ref()
                        .is_some_and(|u| self.config.admin_user_ids.contains(u)),
                    user_id,
                    experiment_id: Some(subject.clone()),
                    project_id: text(&names.project),
                    experiment_name: text("experiment_name"),
                    experiment_expires_at: Some(expires),
                    token_expires_at,
                    display_name: text("experiment_name"),
                    subject,
                }
            }
        };
        Ok(principal)
    }

    async fn remote_key(
        &self,
        remote: &RemoteIssuer,
        kid: Option<&str>,
    ) -> Result<Arc<KeyEntry>, AppError> {
        let fresh = |cache: &KeyCache| {
            cache
                .fetched_at
                .is_some_and(|t| t.elapsed() < self.config.jwks_refresh)
        };
        {
            let cache = remote.cache.read().await;
            if let (Some(entry), true) = (lookup(&cache, kid), fresh(&cache)) {
                return Ok(entry);
            }
        }
        // Unknown kid, nothing fetched yet, or keys older than the refresh interval: read the
        // JWKS again, one fetch at a time, at most once per second.
        let _guard = remote.refresh.lock().await;
        {
            let cache = remote.cache.read().await;
            let known = lookup(&cache, kid);
            let recent = cache
                .fetched_at
                .is_some_and(|t| t.elapsed() < JWKS_REFRESH_COOLDOWN);
            match known {
                Some(entry) if fresh(&cache) => return Ok(entry),
                None if recent => return Err(unknown_kid(kid)),
                _ => {}
            }
        }
        let fetched = self.fetch_jwks(remote).await;
        let mut cache = remote.cache.write().await;
        match fetched {
            Ok(new_cache) => *cache = new_cache,
            Err(e) => {
                tracing::warn!(error = %e, issuer = %remote.issuer, "fetching the issuer's JWKS failed");
                // While the issuer is away, the keys already known stay in use.
                if let Some(entry) = lookup(&cache, kid) {
                    return Ok(entry);
                }
                cache.fetched_at = Some(Instant::now());
                return Err(AppError::Unavailable(format!(
                    "cannot fetch the token issuer's signing keys: {e}"
                )));
            }
        }
        lookup(&cache, kid).ok_or_else(|| unknown_kid(kid))
    }

    async fn fetch_jwks(&self, remote: &RemoteIssuer) -> anyhow::Result<KeyCache> {
        use anyhow::Context as _;
        let jwks_url = match &remote.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", remote.issuer);
                let doc: Value = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .with_context(|| format!("GET {url}"))?
                    .json()
                    .await
                    .with_context(|| format!("decoding {url}"))?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .with_context(|| format!("{url} has no jwks_uri"))?
            }
        };
        let set: JwkSet = self
            .http
            .get(&jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("GET {jwks_url}"))?
            .json()
            .await
            .with_context(|| format!("decoding the JWKS at {jwks_url}"))?;
        let mut cache = KeyCache {
            fetched_at: Some(Instant::now()),
            ..KeyCache::default()
        };
        let only_one = set.keys.len() == 1;
        for jwk in &set.keys {
            let Some(algorithm) = signing_algorithm(jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let entry = Arc::new(KeyEntry { key, algorithm });
            match &jwk.common.key_id {
                Some(kid) => {
                    cache.keys.insert(kid.clone(), entry);
                }
                None if only_one => cache.anonymous = Some(entry),
                None => {}
            }
        }
        tracing::info!(keys = cache.keys.len(), url = %jwks_url, "loaded the issuer's JWKS");
        Ok(cache)
    }
}

/// The algorithm a published key verifies: RS256 for RSA keys, ES256 for P-256 keys; `None`
/// for other keys, keys published for encryption (`use` other than `sig`), and keys whose
/// stated `alg` is another algorithm (RFC 7517 §4.2, §4.4).
fn signing_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{KeyAlgorithm, PublicKeyUse};
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let stated = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return None,
    };
    match stated {
        Some(stated) if stated != algorithm => None,
        _ => Some(algorithm),
    }
}

fn lookup(cache: &KeyCache, kid: Option<&str>) -> Option<Arc<KeyEntry>> {
    match kid {
        Some(kid) => cache.keys.get(kid).cloned(),
        None => cache.anonymous.clone(),
    }
}

fn unknown_kid(kid: Option<&str>) -> AppError {
    match kid {
        Some(kid) => AppError::Unauthenticated(format!(
            "token is signed with key `{}`, which the issuer does not publish",
            shorten(kid)
        )),
        None => AppError::Unauthenticated("token header has no `kid`".into()),
    }
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error, audience: &str) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "token signature is invalid".into(),
        ErrorKind::InvalidIssuer => "token issuer (iss) is not trusted by this site".into(),
        ErrorKind::InvalidAudience => {
            format!("token audience (aud) does not include this site ({audience})")
        }
        ErrorKind::MissingRequiredClaim(c) => format!("token lacks the `{c}` claim"),
        other => format!("token rejected: {other:?}"),
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Claims of a dev token; the CLI's `dev-token` and the dashboard's dev sign-in build these.
#[derive(Debug, Clone, Default)]
pub struct DevTokenRequest {
    pub subject: String,
    pub audience: String,
    pub lifetime: Duration,
    /// Extra claims (`proj`, `user_id`, `name`, …).
    pub extra: Map<String, Value>,
}

impl DevIssuer {
    /// Loads the PKCS#8 PEM key at `path`, creating it (0600) when missing.
    pub fn load_or_create(path: &std::path::Path, issuer: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
        let secret = if path.exists() {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading DEV_ISSUER_KEY_FILE {}", path.display()))?;
            p256::SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("DEV_ISSUER_KEY_FILE {}: {e}", path.display()))?
        } else {
            let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the dev key: {e}"))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            crate::ssr::secrets::write_private(path, pem.as_bytes())
                .with_context(|| format!("writing DEV_ISSUER_KEY_FILE {}", path.display()))?;
            secret
        };
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the dev key: {e}"))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string())?;
        let x = jwk
            .get("x")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let y = jwk
            .get("y")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kid = format!("dev-{}", x.chars().take(16).collect::<String>());
        let decoding = DecodingKey::from_ec_components(&x, &y)?;
        let public_jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Ok(Self {
            issuer: issuer.to_string(),
            kid,
            encoding,
            decoding: Arc::new(KeyEntry {
                key: decoding,
                algorithm: Algorithm::ES256,
            }),
            public_jwk,
        })
    }

    /// Signs a token (ES256) with `iss`, `aud`, `sub`, `iat`, `exp` and the extra claims.
    pub fn mint(&self, request: &DevTokenRequest) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let mut claims = request.extra.clone();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), request.audience.clone().into());
        claims.insert("sub".into(), request.subject.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert(
            "exp".into(),
            (now + request.lifetime.as_secs() as i64).into(),
        );
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Builds a user token request.
    pub fn user_token(&self, audience: &str, user_id: &str, name: Option<&str>) -> DevTokenRequest {
        let mut extra = Map::new();
        let username = user_id.rsplit('_').next().unwrap_or(user_id).to_string();
        extra.insert("preferred_username".into(), username.clone().into());
        extra.insert("email".into(), format!("{username}@dev.local").into());
        if let Some(name) = name {
            extra.insert("name".into(), name.into());
        }
        DevTokenRequest {
            subject: user_id.to_string(),
            audience: audience.to_string(),
            lifetime: Duration::from_secs(12 * 3600),
            extra,
        }
    }

    /// Builds an experiment token request (claim names from the configuration).
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per claim of the token; the CLI passes them by name"
    )]
    pub fn experiment_token(
        &self,
        audience: &str,
        claims: &crate::ssr::config::ClaimNames,
        experiment_id: &str,
        project_id: &str,
        user_id: Option<&str>,
        experiment_expires_at: Option<DateTime<Utc>>,
        lifetime: Duration,
    ) -> DevTokenRequest {
        let mut extra = Map::new();
        extra.insert(claims.project.clone(), project_id.into());
        let name = experiment_id.rsplit('_').next().unwrap_or(experiment_id);
        extra.insert("experiment_name".into(), name.into());
        if let Some(user) = user_id {
            extra.insert(claims.acting_user.clone(), user.into());
        }
        if let Some(at) = experiment_expires_at {
            extra.insert(claims.experiment_expires.clone(), at.timestamp().into());
        }
        DevTokenRequest {
            subject: experiment_id.to_string(),
            audience: audience.to_string(),
            lifetime,
            extra,
        }
    }
}
