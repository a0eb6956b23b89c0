//! Configuration: read once at start-up from the environment (clap `env`), validated into
//! [`Config`]. Every setting is listed with its default in `.env.example`.
//! A missing or malformed setting stops start-up with one line naming the variable.

use crate::ssr::egress::EgressPolicy;
use crate::ssr::secrets::SecretBox;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A setting that may hold a secret (a key, a URL with a password): `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hidden(***)")
    }
}

impl std::str::FromStr for Hidden {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Hidden(s.to_string()))
    }
}

impl From<&str> for Hidden {
    fn from(s: &str) -> Self {
        Hidden(s.to_string())
    }
}

impl std::ops::Deref for Hidden {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Raw settings as clap reads them (flags or environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Hidden>,
    /// Listen address of the dashboard and API.
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = "127.0.0.1:3000")]
    pub site_addr: String,
    /// Public base URL (default `http://<LEPTOS_SITE_ADDR>`): default JWT audience and the
    /// dev issuer's base.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Site part of typed ids.
    #[arg(long, env = "SITE_ID", default_value = "tld-city-bp1")]
    pub site_id: String,
    /// OIDC issuer of SLICES tokens; its discovery document gives `jwks_uri`.
    #[arg(long, env = "SLICES_ISSUER")]
    pub slices_issuer: Option<String>,
    /// JWKS URL (overrides discovery).
    #[arg(long, env = "SLICES_JWKS_URL")]
    pub slices_jwks_url: Option<String>,
    /// Expected `aud` of tokens (default PUBLIC_URL).
    /// Sign-ins a client may make per minute (0: no limit).
    #[arg(long, env = "RATE_LIMIT_SIGN_INS_PER_MINUTE", default_value_t = 10)]
    pub rate_limit_sign_ins_per_minute: u32,
    /// Requests with invalid tokens a client may make per minute before it is refused for a
    /// while (0: no limit).
    #[arg(
        long,
        env = "RATE_LIMIT_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 30
    )]
    pub rate_limit_auth_failures_per_minute: u32,
    /// API writes (POST, PUT, PATCH, DELETE) a client may make per minute (0: no limit).
    #[arg(long, env = "RATE_LIMIT_WRITES_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_writes_per_minute: u32,
    /// OpenStack connection tests (`POST /clouds-yaml/test`, the dashboard's "Test
    /// connection") per client and minute: each makes the server call out; 0 turns it off.
    #[arg(
        long,
        env = "RATE_LIMIT_CONNECTION_TESTS_PER_MINUTE",
        default_value_t = 10
    )]
    pub rate_limit_connection_tests_per_minute: u32,
    /// How often the issuer's JWKS is read again, seconds: a key the portal withdrew stops
    /// working within this time (RFC 8725 §3.5 asks for keys to be rotatable).
    #[arg(long, env = "SLICES_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub slices_jwks_refresh_secs: u64,
    #[arg(long, env = "SLICES_AUDIENCE")]
    pub slices_audience: Option<String>,
    /// Claim carrying the project id in experiment tokens.
    #[arg(long, env = "SLICES_CLAIM_PROJECT", default_value = "proj")]
    pub claim_project: String,
    /// Claim carrying the experiment's expiry (seconds since the epoch).
    #[arg(
        long,
        env = "SLICES_CLAIM_EXPERIMENT_EXPIRES",
        default_value = "experiment_expires_at"
    )]
    pub claim_experiment_expires: String,
    /// Claim naming the acting user in experiment tokens.
    #[arg(long, env = "SLICES_CLAIM_ACTING_USER", default_value = "user_id")]
    pub claim_acting_user: String,
    /// Admin user ids, comma-separated or a JSON list.
    #[arg(long, env = "ADMIN_USER_IDS", default_value = "")]
    pub admin_user_ids: String,
    /// Prefix of per-experiment Kubernetes namespaces.
    #[arg(long, env = "K8S_NAMESPACE_PREFIX", default_value = "slices-")]
    pub k8s_namespace_prefix: String,
    /// How long a Pod may take to become Running before its task fails.
    #[arg(long, env = "POD_READY_TIMEOUT_SECS", default_value_t = 300)]
    pub pod_ready_timeout_secs: u64,
    /// Tasks one worker runs at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4)]
    pub worker_concurrency: usize,
    /// Running tasks one experiment may hold at once, over all workers (so one experiment's
    /// slow or stuck tasks cannot take every slot); 0 = `WORKER_CONCURRENCY` − 1 (at least 1).
    #[arg(long, env = "WORKER_SLOTS_PER_EXPERIMENT", default_value_t = 0)]
    pub worker_slots_per_experiment: usize,
    /// Most live resources (not deleted, expired or failed) one experiment may have; 0 = no limit.
    #[arg(long, env = "QUOTA_RESOURCES_PER_EXPERIMENT", default_value_t = 50)]
    pub quota_resources_per_experiment: u32,
    /// Most vCPUs (sum over the flavors of its live resources) one experiment may have; 0 = no limit.
    #[arg(long, env = "QUOTA_VCPUS_PER_EXPERIMENT", default_value_t = 64)]
    pub quota_vcpus_per_experiment: u32,
    /// Most RAM in MiB (sum over the flavors of its live resources) one experiment may have;
    /// 0 = no limit.
    #[arg(long, env = "QUOTA_RAM_MIB_PER_EXPERIMENT", default_value_t = 131_072)]
    pub quota_ram_mib_per_experiment: u32,
    /// How long a task waits out its backend being unreachable (the Kubernetes API, Keystone
    /// or another OpenStack endpoint not answering at all) before it fails, in seconds. While
    /// it waits it is retried with a capped backoff and uses up none of its attempts.
    #[arg(long, env = "OUTAGE_BUDGET_SECS", default_value_t = 900)]
    pub outage_budget_secs: u64,
    /// How long after SIGTERM or Ctrl-C open requests may still finish, in seconds (running
    /// tasks are handed back to the queue at once, for the next process to resume).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// How long a Pod or Nova server that carries our labels but whose resource the database
    /// does not know (or knows as gone) may live before the reconciler deletes it, in seconds.
    #[arg(long, env = "ORPHAN_GRACE_SECS", default_value_t = 60)]
    pub orphan_grace_secs: u64,
    /// Seconds between two reconcile passes over the VMs of one (user, cloud) (jittered by up
    /// to a fifth either way). Pods are compared every 2 s from the shared Pod watch.
    #[arg(long, env = "VM_RECONCILE_SECS", default_value_t = 30)]
    pub vm_reconcile_secs: u64,
    /// Days the audit log keeps its entries (older ones are purged hourly); 0 keeps them
    /// forever.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 400)]
    pub audit_retention_days: u32,
    /// A dashboard session ends after this many seconds without a request (idle timeout).
    #[arg(long, env = "SESSION_IDLE_SECS", default_value_t = 43_200)]
    pub session_idle_secs: u64,
    /// A dashboard session ends this many seconds after its sign-in, however active
    /// (absolute timeout).
    #[arg(long, env = "SESSION_ABSOLUTE_SECS", default_value_t = 604_800)]
    pub session_absolute_secs: u64,
    /// OpenID Connect client id at SLICES_ISSUER; set it to offer "Sign in with SLICES".
    #[arg(long, env = "OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// OpenID Connect client secret (confidential clients; PKCE is used either way).
    #[arg(long, env = "OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<Hidden>,
    /// Where the provider sends the browser back (default `<PUBLIC_URL>/auth/callback`);
    /// must be registered with the provider.
    #[arg(long, env = "OIDC_REDIRECT_URL")]
    pub oidc_redirect_url: Option<String>,
    /// Scopes asked for besides `openid`, space- or comma-separated (e.g. `userinfo projects`).
    #[arg(long, env = "OIDC_SCOPES", default_value = "profile email")]
    pub oidc_scopes: String,
    /// Log lines as `text` (for people) or `json` (one JSON object per line, with the span
    /// fields: request, task and resource ids).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Run the task worker inside `serve`.
    #[arg(long, env = "RUN_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_worker: bool,
    /// Most connections this process opens to PostgreSQL (its pool's size). Mind the server's
    /// `max_connections` (100 by default) over every replica.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    pub database_max_connections: u32,
    /// Apply the database migrations when a process starts (`serve`, `worker`, ...). Off
    /// where a separate step migrates (the Helm chart's `migrate` hook Job): a process then
    /// starts on whatever schema is there and `/readyz` answers 503 until it is current.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Where `worker` answers `/healthz`, `/readyz` and `/metrics` (host:port), for probes and
    /// scrapes; unset: the worker listens on no port.
    #[arg(long, env = "WORKER_HTTP_ADDR")]
    pub worker_http_addr: Option<SocketAddr>,
    /// Enable the local dev token issuer (local runs and tests only).
    #[arg(long, env = "DEV_ISSUER", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_issuer: bool,
    /// PEM file of the dev issuer's P-256 key (created when missing).
    #[arg(
        long,
        env = "DEV_ISSUER_KEY_FILE",
        default_value = ".data/dev-issuer-key.pem"
    )]
    pub dev_issuer_key_file: PathBuf,
    /// Key sealing users' clouds.yaml at rest: 64 hex characters or base64 of 32 bytes.
    /// When unset, the key in CLOUDS_ENCRYPTION_KEY_FILE is used (created when missing).
    #[arg(long, env = "CLOUDS_ENCRYPTION_KEY", hide_env_values = true)]
    pub clouds_encryption_key: Option<Hidden>,
    /// The key being rotated out: stored clouds.yaml sealed with it still open until
    /// `slices-blueprint rotate-clouds-key` re-seals them with CLOUDS_ENCRYPTION_KEY.
    #[arg(long, env = "CLOUDS_ENCRYPTION_KEY_PREVIOUS", hide_env_values = true)]
    pub clouds_encryption_key_previous: Option<Hidden>,
    /// Key file used when CLOUDS_ENCRYPTION_KEY is unset (created, mode 0600, when missing).
    #[arg(
        long,
        env = "CLOUDS_ENCRYPTION_KEY_FILE",
        default_value = ".data/clouds.key"
    )]
    pub clouds_encryption_key_file: PathBuf,
    /// The operator's clouds.yaml for catalog import (`sync-catalog`, admin "Import").
    #[arg(long, env = "SITE_CLOUDS_YAML")]
    pub site_clouds_yaml: Option<PathBuf>,
    /// Networks and `host:port` endpoints that OpenStack requests may reach besides public
    /// addresses (comma-separated, e.g. `keystone.site:5000,10.20.0.0/16`); loopback, private,
    /// link-local and CGNAT addresses are refused unless listed (see `egress`).
    #[arg(long, env = "OPENSTACK_ALLOWED_ENDPOINTS", default_value = "")]
    pub openstack_allowed_endpoints: String,
    /// Honour `verify: false` in users' clouds.yaml (TLS without certificate checks).
    #[arg(long, env = "OPENSTACK_ALLOW_INSECURE_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub openstack_allow_insecure_tls: bool,
    /// How long a Nova server may take to become ACTIVE before its task fails, seconds.
    #[arg(long, env = "VM_READY_TIMEOUT_SECS", default_value_t = 600)]
    pub vm_ready_timeout_secs: u64,
    /// Add a demo image and flavor when the catalog is empty.
    #[arg(long, env = "SEED_DEMO_CATALOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub seed_demo_catalog: bool,
    /// Jump host for the dashboard's SSH commands and `ssh_config` (`ssh -J` syntax,
    /// `[user@]host[:port]`; empty: VMs are reached directly).
    #[arg(long, env = "SSH_PROXY_JUMP", default_value = "")]
    pub ssh_proxy_jump: String,
}

/// Names of the token claims that carry SLICES concepts (see ../shared/slices-api.md,
/// "Authentication": the real claim set is not public, so these are configurable).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub project: String,
    pub experiment_expires: String,
    pub acting_user: String,
}

/// Validated authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: Option<String>,
    pub jwks_url: Option<String>,
    /// The JWKS is read again when older than this.
    pub jwks_refresh: Duration,
    pub audience: String,
    pub claims: ClaimNames,
    pub admin_user_ids: HashSet<String>,
    /// Dev issuer key file, when the dev issuer is on.
    pub dev_issuer_key_file: Option<PathBuf>,
    /// `iss` of dev tokens: `<PUBLIC_URL>/dev-issuer`.
    pub dev_issuer_url: String,
}

/// The user the dashboard's "Dev sign-in as admin" signs in as; an admin whenever the dev
/// issuer is on (only its key can mint tokens for it, and the dev issuer only runs on loopback).
pub const DEV_ADMIN_USER_ID: &str = "user_dev.local_admin";

/// Per-client rate limits, per minute (0: that limit is off); see `rate_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sign_ins_per_minute: u32,
    pub auth_failures_per_minute: u32,
    pub writes_per_minute: u32,
    pub connection_tests_per_minute: u32,
}

/// Per-experiment caps on live resources (`QUOTA_*_PER_EXPERIMENT`); `None` = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub resources: Option<u32>,
    pub vcpus: Option<u32>,
    pub ram_mib: Option<u32>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// `DATABASE_URL` (may carry a password: never printed by `Debug`).
    pub database_url: Hidden,
    pub site_addr: SocketAddr,
    pub public_url: String,
    pub site_id: String,
    pub auth: AuthConfig,
    pub k8s_namespace_prefix: String,
    pub pod_ready_timeout: Duration,
    pub worker_concurrency: usize,
    /// Running tasks one experiment may hold at once (≥ 1).
    pub worker_slots_per_experiment: usize,
    pub quota: Quota,
    /// `OUTAGE_BUDGET_SECS`.
    pub outage_budget: Duration,
    /// `SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace: Duration,
    /// `ORPHAN_GRACE_SECS`.
    pub orphan_grace: Duration,
    /// `VM_RECONCILE_SECS`.
    pub vm_reconcile_every: Duration,
    /// `AUDIT_RETENTION_DAYS` (`None`: keep forever).
    pub audit_retention_days: Option<u32>,
    /// Dashboard session timeouts.
    pub sessions: SessionTimeouts,
    /// "Sign in with SLICES", when `OIDC_CLIENT_ID` and `SLICES_ISSUER` are set.
    pub oidc: Option<OidcConfig>,
    pub run_worker: bool,
    /// `MIGRATE_ON_START`.
    pub migrate_on_start: bool,
    /// `DATABASE_MAX_CONNECTIONS` (2..=1000).
    pub database_max_connections: u32,
    /// `WORKER_HTTP_ADDR`.
    pub worker_http_addr: Option<SocketAddr>,
    pub seed_demo_catalog: bool,
    /// `SSH_PROXY_JUMP` (None: empty).
    pub ssh_proxy_jump: Option<String>,
    /// CLOUDS_ENCRYPTION_KEY, parsed (None: use `clouds_key_file`).
    pub clouds_key: Option<SecretBox>,
    pub clouds_key_previous: Option<SecretBox>,
    pub clouds_key_file: PathBuf,
    pub site_clouds_yaml: Option<PathBuf>,
    pub vm_ready_timeout: Duration,
    /// Where OpenStack requests may go (`OPENSTACK_ALLOWED_ENDPOINTS`,
    /// `OPENSTACK_ALLOW_INSECURE_TLS`).
    pub egress: EgressPolicy,
}

/// Dashboard session timeouts (`SESSION_IDLE_SECS`, `SESSION_ABSOLUTE_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// Without a request for this long, the session ends.
    pub idle: Duration,
    /// This long after sign-in, the session ends.
    pub absolute: Duration,
}

/// The OpenID Connect client of "Sign in with SLICES" (authorization code flow with PKCE,
/// OpenID Connect Core 1.0 §3.1).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// `SLICES_ISSUER`: discovery at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Hidden>,
    /// `OIDC_REDIRECT_URL`, or `<PUBLIC_URL>/auth/callback`.
    pub redirect_url: String,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
}

/// A configuration problem, displayed as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn err(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

impl Settings {
    /// `SSH_PROXY_JUMP`: `[user@]host[:port]` with no spaces or shell/ssh_config syntax
    /// (it is written into commands and `ssh_config` files).
    fn proxy_jump(&self) -> Result<Option<String>, ConfigError> {
        let jump = self.ssh_proxy_jump.trim();
        if jump.is_empty() {
            return Ok(None);
        }
        let fine = jump.len() <= 255
            && jump.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':' | '[' | ']')
            });
        if !fine {
            return Err(err(
                "SSH_PROXY_JUMP",
                "expected [user@]host[:port] (letters, digits, . - _ @ : [ ])",
            ));
        }
        Ok(Some(jump.to_string()))
    }

    fn session_timeouts(&self) -> Result<SessionTimeouts, ConfigError> {
        if self.session_idle_secs < 5 {
            return Err(err("SESSION_IDLE_SECS", "at least 5 seconds"));
        }
        if self.session_absolute_secs < self.session_idle_secs {
            return Err(err(
                "SESSION_ABSOLUTE_SECS",
                "must not be shorter than SESSION_IDLE_SECS",
            ));
        }
        Ok(SessionTimeouts {
            idle: Duration::from_secs(self.session_idle_secs),
            absolute: Duration::from_secs(self.session_absolute_secs),
        })
    }

    fn oidc(&self, public_url: &str) -> Result<Option<OidcConfig>, ConfigError> {
        let Some(client_id) = self.oidc_client_id.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if client_id.is_empty() {
            return Ok(None);
        }
        let issuer = self.slices_issuer.clone().ok_or_else(|| {
            err(
                "OIDC_CLIENT_ID",
                "sign-in needs SLICES_ISSUER (the OpenID provider) too",
            )
        })?;
        let redirect_url = match &self.oidc_redirect_url {
            Some(url) => {
                check_url("OIDC_REDIRECT_URL", url)?;
                url.clone()
            }
            None => format!("{public_url}/auth/callback"),
        };
        let scopes = self
            .oidc_scopes
            .split([' ', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "openid")
            .map(str::to_string)
            .collect();
        Ok(Some(OidcConfig {
            issuer: issuer.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            client_secret: self.oidc_client_secret.clone(),
            redirect_url,
            scopes,
        }))
    }

    /// Validates the raw settings. `need_database` is false for commands that do not touch
    /// the database (`dev-token`). The first problem found is the error.
    pub fn validate(&self, need_database: bool) -> Result<Config, ConfigError> {
        let database_url = self.database_url(need_database)?;
        let site_addr: SocketAddr = self
            .site_addr
            .parse()
            .map_err(|e| err("LEPTOS_SITE_ADDR", format!("`{}`: {e}", self.site_addr)))?;
        let public_url = match &self.public_url {
            Some(url) => {
                check_url("PUBLIC_URL", url)?;
                url.trim_end_matches('/').to_string()
            }
            None => format!("http://{site_addr}"),
        };
        let site_id = self.site_id()?;
        let auth = self.auth(&public_url)?;
        self.fence_dev_issuer(&site_addr, &public_url)?;
        self.check_backends()?;
        let (clouds_key, clouds_key_previous) = self.clouds_keys()?;
        let oidc = self.oidc(&public_url)?;
        Ok(Config {
            limits: Limits {
                sign_ins_per_minute: self.rate_limit_sign_ins_per_minute,
                auth_failures_per_minute: self.rate_limit_auth_failures_per_minute,
                writes_per_minute: self.rate_limit_writes_per_minute,
                connection_tests_per_minute: self.rate_limit_connection_tests_per_minute,
            },
            database_url,
            site_addr,
            site_id,
            auth,
            public_url,
            k8s_namespace_prefix: self.k8s_namespace_prefix.clone(),
            pod_ready_timeout: Duration::from_secs(self.pod_ready_timeout_secs),
            worker_concurrency: self.worker_concurrency,
            worker_slots_per_experiment: match self.worker_slots_per_experiment {
                0 => self.worker_concurrency.saturating_sub(1).max(1),
                n => n,
            },
            quota: Quota {
                resources: Some(self.quota_resources_per_experiment).filter(|&n| n > 0),
                vcpus: Some(self.quota_vcpus_per_experiment).filter(|&n| n > 0),
                ram_mib: Some(self.quota_ram_mib_per_experiment).filter(|&n| n > 0),
            },
            outage_budget: Duration::from_secs(self.outage_budget_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            orphan_grace: Duration::from_secs(self.orphan_grace_secs),
            vm_reconcile_every: Duration::from_secs(self.vm_reconcile_secs.max(1)),
            audit_retention_days: Some(self.audit_retention_days).filter(|&d| d > 0),
            sessions: self.session_timeouts()?,
            oidc,
            run_worker: self.run_worker,
            migrate_on_start: self.migrate_on_start,
            database_max_connections: self.database_max_connections,
            worker_http_addr: self.worker_http_addr,
            seed_demo_catalog: self.seed_demo_catalog,
            ssh_proxy_jump: self.proxy_jump()?,
            clouds_key,
            clouds_key_previous,
            clouds_key_file: self.clouds_encryption_key_file.clone(),
            site_clouds_yaml: self.site_clouds_yaml.clone(),
            vm_ready_timeout: Duration::from_secs(self.vm_ready_timeout_secs),
            egress: EgressPolicy::parse(
                &self.openstack_allowed_endpoints,
                self.openstack_allow_insecure_tls,
            )
            .map_err(|e| err("OPENSTACK_ALLOWED_ENDPOINTS", e))?,
        })
    }

    /// `DATABASE_URL`: a postgres:// URL; empty when not needed and not set.
    fn database_url(&self, need_database: bool) -> Result<Hidden, ConfigError> {
        match &self.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(url.clone())
            }
            Some(_) => Err(err("DATABASE_URL", "must be a postgres:// URL")),
            None if need_database => Err(err(
                "DATABASE_URL",
                "not set (scripts/run starts an embedded PostgreSQL and sets it for you)",
            )),
            None => Ok(Hidden::default()),
        }
    }

    /// `SITE_ID`: the site part of typed ids (no `_`, which separates the parts).
    fn site_id(&self) -> Result<String, ConfigError> {
        let site_id = self.site_id.trim().to_string();
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
        if site_id.is_empty() || !site_id.bytes().all(allowed) {
            return Err(err(
                "SITE_ID",
                "must be lowercase letters, digits, `-` or `.`, without `_` (e.g. tld-city-bp1)",
            ));
        }
        Ok(site_id)
    }

    /// The token verification settings: issuer (or the dev issuer), JWKS, audience (default
    /// `public_url`), claim names and admins.
    fn auth(&self, public_url: &str) -> Result<AuthConfig, ConfigError> {
        if let Some(issuer) = &self.slices_issuer {
            check_url("SLICES_ISSUER", issuer)?;
        }
        if let Some(jwks) = &self.slices_jwks_url {
            check_url("SLICES_JWKS_URL", jwks)?;
            if self.slices_issuer.is_none() {
                return Err(err(
                    "SLICES_ISSUER",
                    "required with SLICES_JWKS_URL (tokens' `iss` is checked against it)",
                ));
            }
        }
        if self.slices_jwks_refresh_secs == 0 {
            return Err(err("SLICES_JWKS_REFRESH_SECS", "must be at least 1"));
        }
        if self.slices_issuer.is_none() && !self.dev_issuer {
            return Err(err(
                "SLICES_ISSUER",
                "not set: name the SLICES portal's OIDC issuer, or set DEV_ISSUER=true for a local run",
            ));
        }
        // Tokens must name this site (RFC 8725 §3.9): no audience every site would share.
        if !self.dev_issuer && self.slices_audience.is_none() && self.public_url.is_none() {
            return Err(err(
                "SLICES_AUDIENCE",
                "not set: tokens must be issued for this site; set SLICES_AUDIENCE (or PUBLIC_URL) to this site's public URL",
            ));
        }
        let mut admin_user_ids = parse_admin_ids(&self.admin_user_ids)?;
        if self.dev_issuer {
            admin_user_ids.insert(DEV_ADMIN_USER_ID.to_string());
        }
        Ok(AuthConfig {
            issuer: self
                .slices_issuer
                .as_ref()
                .map(|s| s.trim_end_matches('/').to_string()),
            jwks_url: self.slices_jwks_url.clone(),
            jwks_refresh: Duration::from_secs(self.slices_jwks_refresh_secs),
            audience: self
                .slices_audience
                .clone()
                .unwrap_or_else(|| public_url.to_string()),
            claims: ClaimNames {
                project: self.claim_project.clone(),
                experiment_expires: self.claim_experiment_expires.clone(),
                acting_user: self.claim_acting_user.clone(),
            },
            admin_user_ids,
            dev_issuer_key_file: self.dev_issuer.then(|| self.dev_issuer_key_file.clone()),
            dev_issuer_url: format!("{public_url}/dev-issuer"),
        })
    }

    /// The dev issuer mints tokens with a key on this machine: it runs only alone (no portal
    /// beside it), on a loopback listen address and without an https `PUBLIC_URL`, so it can
    /// never reach a real site by accident.
    fn fence_dev_issuer(
        &self,
        site_addr: &SocketAddr,
        public_url: &str,
    ) -> Result<(), ConfigError> {
        if !self.dev_issuer {
            return Ok(());
        }
        let refuse = |why: String| {
            Err(err(
                "DEV_ISSUER",
                format!("{why}: the dev issuer is for local runs only (set DEV_ISSUER=false)"),
            ))
        };
        // A provider on this machine (a local OpenID provider for tests) may sit beside it; a
        // real portal may not.
        for url in [&self.slices_issuer, &self.slices_jwks_url]
            .into_iter()
            .flatten()
        {
            if !is_loopback_url(url) {
                return refuse(format!(
                    "on together with SLICES_ISSUER/SLICES_JWKS_URL `{url}`, which is not on loopback"
                ));
            }
        }
        if !site_addr.ip().is_loopback() {
            return refuse(format!("the listen address {site_addr} is not loopback"));
        }
        if public_url.starts_with("https://") {
            return refuse(format!("PUBLIC_URL {public_url} is https (a served site)"));
        }
        Ok(())
    }

    /// The backends' and the worker's settings: namespace prefix, timeouts, concurrency,
    /// the site cloud file.
    fn check_backends(&self) -> Result<(), ConfigError> {
        let prefix = &self.k8s_namespace_prefix;
        if prefix.len() > 30
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || prefix.starts_with('-')
        {
            return Err(err(
                "K8S_NAMESPACE_PREFIX",
                "must be at most 30 lowercase letters, digits or `-`, not starting with `-`",
            ));
        }
        if self.pod_ready_timeout_secs == 0 {
            return Err(err("POD_READY_TIMEOUT_SECS", "must be at least 1"));
        }
        if self.vm_ready_timeout_secs == 0 {
            return Err(err("VM_READY_TIMEOUT_SECS", "must be at least 1"));
        }
        if let Some(path) = &self.site_clouds_yaml {
            if !path.is_file() {
                return Err(err(
                    "SITE_CLOUDS_YAML",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        if !(2..=1000).contains(&self.database_max_connections) {
            return Err(err(
                "DATABASE_MAX_CONNECTIONS",
                "must be between 2 and 1000",
            ));
        }
        if self.worker_concurrency == 0 || self.worker_concurrency > 256 {
            return Err(err("WORKER_CONCURRENCY", "must be between 1 and 256"));
        }
        Ok(())
    }

    /// `CLOUDS_ENCRYPTION_KEY` and `_PREVIOUS`, when given inline.
    fn clouds_keys(&self) -> Result<(Option<SecretBox>, Option<SecretBox>), ConfigError> {
        let key = |variable, value: &Option<Hidden>| {
            value
                .as_deref()
                .map(|k| parse_key_value(variable, k))
                .transpose()
        };
        Ok((
            key("CLOUDS_ENCRYPTION_KEY", &self.clouds_encryption_key)?,
            key(
                "CLOUDS_ENCRYPTION_KEY_PREVIOUS",
                &self.clouds_encryption_key_previous,
            )?,
        ))
    }
}

/// Whether `url`'s host is loopback (127.0.0.0/8, `localhost`, `[::1]`).
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn check_url(variable: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(err(variable, format!("`{url}` is not an http(s) URL")))
    }
}

/// A 32-byte key given inline: 64 hex characters or standard base64 (e.g. `openssl rand
/// -base64 32`).
fn parse_key_value(variable: &'static str, raw: &str) -> Result<SecretBox, ConfigError> {
    SecretBox::from_text(raw).ok_or_else(|| {
        err(
            variable,
            "expected 32 bytes as 64 hex characters or base64 (e.g. `openssl rand -hex 32`)",
        )
    })
}

/// `ADMIN_USER_IDS`: `a,b,c` or `["a","b"]`.
fn parse_admin_ids(raw: &str) -> Result<HashSet<String>, ConfigError> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(raw)
            .map_err(|e| err("ADMIN_USER_IDS", format!("not a JSON list of strings: {e}")))?;
        Ok(list
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    } else {
        Ok(raw
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    /// Settings as if no variable were set: clap reads the environment, so every field the
    /// tests rely on is reset (CI itself sets DATABASE_URL, KUBECONFIG, …).
    fn base() -> Settings {
        let mut s = Cli::parse_from(["test"]).settings;
        s.database_url = None;
        s.site_addr = "127.0.0.1:3000".into();
        s.public_url = None;
        s.site_id = "tld-city-bp1".into();
        s.slices_issuer = None;
        s.slices_jwks_url = None;
        s.slices_audience = None;
        s.oidc_client_id = None;
        s.oidc_client_secret = None;
        s.oidc_redirect_url = None;
        s.oidc_scopes = "profile email".into();
        s.session_idle_secs = 43_200;
        s.session_absolute_secs = 604_800;
        s.slices_jwks_refresh_secs = 300;
        s.admin_user_ids = String::new();
        s.k8s_namespace_prefix = "slices-".into();
        s.pod_ready_timeout_secs = 300;
        s.worker_concurrency = 4;
        s.dev_issuer = false;
        s.clouds_encryption_key = None;
        s.clouds_encryption_key_previous = None;
        s.site_clouds_yaml = None;
        s.vm_ready_timeout_secs = 600;
        s
    }

    /// `base()` with a database and the dev issuer: valid.
    fn valid() -> Settings {
        let mut s = base();
        s.database_url = Some("postgres://x".into());
        s.dev_issuer = true;
        s
    }

    #[test]
    fn a_jump_host_is_kept_as_written() {
        let mut s = valid();
        s.ssh_proxy_jump = " jump@bastion.example.org:2222 ".into();
        assert_eq!(
            s.proxy_jump().expect("valid").as_deref(),
            Some("jump@bastion.example.org:2222")
        );
        s.ssh_proxy_jump = String::new();
        assert_eq!(s.proxy_jump().expect("empty"), None);
    }

    #[test]
    fn admin_ids_accept_both_forms() {
        let csv = parse_admin_ids(" a, b ,,c").expect("csv");
        assert_eq!(csv.len(), 3);
        let json = parse_admin_ids(r#"["a","b"]"#).expect("json");
        assert!(json.contains("a") && json.contains("b"));
        let bad = parse_admin_ids("[oops").expect_err("bad json");
        assert_eq!(bad.variable, "ADMIN_USER_IDS");
    }

    #[test]
    fn errors_name_the_variable() {
        type Change = fn(&mut Settings);
        let cases: &[(Change, &str)] = &[
            (|s| s.database_url = None, "DATABASE_URL"),
            (
                |s| s.database_url = Some("mysql://x".into()),
                "DATABASE_URL",
            ),
            (|s| s.dev_issuer = false, "SLICES_ISSUER"),
            (
                |s| {
                    s.dev_issuer = false;
                    s.slices_jwks_url = Some("http://j".into());
                },
                "SLICES_ISSUER",
            ),
            (
                |s| s.slices_issuer = Some("ftp://x".into()),
                "SLICES_ISSUER",
            ),
            (|s| s.site_id = "a_b".into(), "SITE_ID"),
            (|s| s.site_addr = "nope".into(), "LEPTOS_SITE_ADDR"),
            (
                |s| s.k8s_namespace_prefix = "Bad_".into(),
                "K8S_NAMESPACE_PREFIX",
            ),
            (|s| s.worker_concurrency = 0, "WORKER_CONCURRENCY"),
            (
                |s| s.ssh_proxy_jump = "bastion; rm -rf ~".into(),
                "SSH_PROXY_JUMP",
            ),
            (|s| s.admin_user_ids = "[1,".into(), "ADMIN_USER_IDS"),
            (
                |s| s.clouds_encryption_key = Some("short".into()),
                "CLOUDS_ENCRYPTION_KEY",
            ),
            (
                |s| s.clouds_encryption_key_previous = Some(Hidden("ab".repeat(31))),
                "CLOUDS_ENCRYPTION_KEY_PREVIOUS",
            ),
            (
                |s| s.site_clouds_yaml = Some("/nonexistent/clouds.yaml".into()),
                "SITE_CLOUDS_YAML",
            ),
            (|s| s.vm_ready_timeout_secs = 0, "VM_READY_TIMEOUT_SECS"),
            // The dev issuer is fenced to local runs.
            (
                |s| s.slices_issuer = Some("https://portal.example".into()),
                "DEV_ISSUER",
            ),
            (
                |s| s.slices_issuer = Some("http://10.0.0.7:8080".into()),
                "DEV_ISSUER",
            ),
            (
                |s| s.oidc_client_id = Some("blueprint".into()),
                "OIDC_CLIENT_ID",
            ),
            (|s| s.session_idle_secs = 4, "SESSION_IDLE_SECS"),
            (
                |s| {
                    s.session_idle_secs = 600;
                    s.session_absolute_secs = 599;
                },
                "SESSION_ABSOLUTE_SECS",
            ),
            (|s| s.site_addr = "0.0.0.0:3000".into(), "DEV_ISSUER"),
            (|s| s.site_addr = "[::]:3000".into(), "DEV_ISSUER"),
            (
                |s| s.public_url = Some("https://bp1.example".into()),
                "DEV_ISSUER",
            ),
            // Outside dev, tokens must name this site.
            (
                |s| {
                    s.dev_issuer = false;
                    s.slices_issuer = Some("https://portal.example".into());
                },
                "SLICES_AUDIENCE",
            ),
        ];
        for (change, variable) in cases {
            let mut s = valid();
            change(&mut s);
            let e = s.validate(true).expect_err("must fail");
            assert_eq!(e.variable, *variable);
            assert!(!e.to_string().contains('\n'));
        }
        // A local OpenID provider may sit beside the dev issuer (the e2e tier's oidc-provider).
        let mut local = valid();
        local.slices_issuer = Some("http://127.0.0.1:4999/".into());
        local.oidc_client_id = Some("blueprint".into());
        local.oidc_scopes = "openid, userinfo projects".into();
        let oidc = local
            .validate(true)
            .expect("a loopback provider beside the dev issuer")
            .oidc
            .expect("sign-in configured");
        assert_eq!(oidc.issuer, "http://127.0.0.1:4999");
        assert_eq!(oidc.redirect_url, "http://127.0.0.1:3000/auth/callback");
        assert_eq!(oidc.scopes, ["userinfo", "projects"]);
        // In a local run the dev admin really is an admin.
        let config = valid().validate(true).expect("valid");
        assert!(config.oidc.is_none());
        assert!(config.auth.admin_user_ids.contains(DEV_ADMIN_USER_ID));
        // Secrets never reach Debug output (logs, panics).
        let mut secret = valid();
        secret.database_url = Some("postgres://app:pg-pass-123@db/app".into());
        secret.clouds_encryption_key = Some(Hidden("ab".repeat(32)));
        let printed = format!("{secret:?} {:?}", secret.validate(true).expect("valid"));
        assert!(
            !printed.contains("pg-pass-123") && !printed.contains(&"ab".repeat(32)),
            "{printed}"
        );
        // dev-token needs no database.
        let mut s = valid();
        s.database_url = None;
        assert!(s.validate(false).is_ok());
    }

    #[test]
    fn defaults_are_sensible() {
        let c = valid().validate(true).expect("valid");
        assert_eq!(c.site_id, "tld-city-bp1");
        assert_eq!(c.public_url, "http://127.0.0.1:3000");
        assert_eq!(c.auth.audience, "http://127.0.0.1:3000");
        assert_eq!(c.auth.dev_issuer_url, "http://127.0.0.1:3000/dev-issuer");
        assert_eq!(c.k8s_namespace_prefix, "slices-");
        assert!(c.auth.dev_issuer_key_file.is_some());
    }
}
