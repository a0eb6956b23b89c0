//! Test harness: a token issuer serving OIDC discovery and a JWKS over HTTP on loopback (as
//! the SLICES portal would), and the real router + task worker on a fresh database.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness; `expect` would fail in the one that uses all of it"
)]

use app::ssr::backend::{kubernetes::KubernetesBackend, Backends};
use app::ssr::config::Settings;
use app::ssr::state::AppState;
use axum::routing::get;
use axum::Json;
use base64::Engine as _;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Test-only RSA key (generated for these tests; it protects nothing).
const RSA_PEM: &str = include_str!("../fixtures/test-rsa-key.pem");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An OIDC issuer on 127.0.0.1 with one RS256 and one ES256 key; more keys can be published.
pub struct Issuer {
    pub url: String,
    jwks: Arc<RwLock<Vec<Value>>>,
    rsa: EncodingKey,
    ec: EncodingKey,
    pub audience: String,
}

/// A new P-256 key: its signing key and public JWK.
pub fn new_ec_key(kid: &str) -> (EncodingKey, Value) {
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).expect("jwk");
    jwk["kid"] = kid.into();
    jwk["alg"] = "ES256".into();
    jwk["use"] = "sig".into();
    (
        EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key"),
        jwk,
    )
}

impl Issuer {
    pub async fn start(audience: &str) -> Issuer {
        use rsa::pkcs8::DecodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).expect("rsa pem");
        let rsa_jwk = json!({
            "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
            "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be()),
        });
        let (ec, ec_jwk) = new_ec_key("ec-1");
        let jwks = Arc::new(RwLock::new(vec![rsa_jwk, ec_jwk]));
        let discovery = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks.json") });
        let served = jwks.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let d = discovery.clone();
                    async move { Json(d) }
                }),
            )
            .route(
                "/jwks.json",
                get(move || {
                    let keys = served.read().expect("lock").clone();
                    async move { Json(json!({ "keys": keys })) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url,
            jwks,
            rsa: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("rsa"),
            ec,
            audience: audience.to_string(),
        }
    }

    /// Publishes another key in the JWKS (key rotation).
    pub fn publish(&self, jwk: Value) {
        self.jwks.write().expect("lock").push(jwk);
    }

    /// Withdraws the key `kid` from the JWKS.
    pub fn withdraw(&self, kid: &str) {
        self.jwks
            .write()
            .expect("lock")
            .retain(|k| k["kid"].as_str() != Some(kid));
    }

    /// Signs `claims` (iss/aud/iat/exp filled in unless given) with the RS256 or ES256 key.
    pub fn sign(&self, alg: Algorithm, mut claims: Value) -> String {
        let (key, kid) = match alg {
            Algorithm::RS256 => (&self.rsa, "rsa-1"),
            _ => (&self.ec, "ec-1"),
        };
        self.sign_with(key, kid, alg, &mut claims)
    }

    pub fn sign_with(
        &self,
        key: &EncodingKey,
        kid: &str,
        alg: Algorithm,
        claims: &mut Value,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let obj = claims.as_object_mut().expect("object");
        obj.entry("iss").or_insert(self.url.clone().into());
        obj.entry("aud").or_insert(self.audience.clone().into());
        obj.entry("iat").or_insert(now.into());
        obj.entry("exp").or_insert((now + 900).into());
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }

    /// A user token (RS256, like the portal's id tokens).
    pub fn user(&self, user_id: &str) -> String {
        self.sign(
            Algorithm::RS256,
            json!({ "sub": user_id, "preferred_username": user_id.rsplit('_').next(), "email": "u@example.org" }),
        )
    }

    /// An experiment token (ES256) for `experiment_id`, acting user `user_id`.
    pub fn experiment(&self, experiment_id: &str, user_id: &str) -> String {
        self.sign(
            Algorithm::ES256,
            json!({ "sub": experiment_id, "proj": "proj_test_qkd", "user_id": user_id,
                    "experiment_name": "qkd" }),
        )
    }
}

/// What a test app needs beyond the defaults.
#[derive(Default, Clone)]
pub struct Options {
    /// Kubeconfig of the cluster to use (default: `KUBECONFIG`; none = not connected).
    pub kubeconfig: Option<String>,
    pub pod_ready_timeout_secs: Option<u64>,
    pub no_kubernetes: bool,
    pub no_worker: bool,
    pub vm_ready_timeout_secs: Option<u64>,
    /// SITE_CLOUDS_YAML for catalog import.
    pub site_clouds_yaml: Option<String>,
    /// SLICES_JWKS_REFRESH_SECS (default 300).
    pub jwks_refresh_secs: Option<u64>,
    /// OPENSTACK_ALLOWED_ENDPOINTS (default: none, public addresses only).
    pub allowed_endpoints: Option<String>,
    /// A stand-in for the Kubernetes backend (worker tests that need a backend which
    /// never finishes); replaces the cluster.
    pub kubernetes_backend: Option<Arc<dyn app::ssr::backend::ComputeBackend>>,
    /// Extra command-line settings (`["--quota-vcpus-per-experiment", "4"]`).
    pub extra_args: Vec<String>,
}

/// The endpoints of the OpenStack test cloud (Keystone, Nova, Glance, Neutron on loopback), or
/// `OPENSTACK_ALLOWED_ENDPOINTS` when the run points at another cloud (scripts/test sets it).
pub fn test_cloud_endpoints() -> String {
    std::env::var("OPENSTACK_ALLOWED_ENDPOINTS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| {
            "127.0.0.1:5000,127.0.0.1:8774,127.0.0.1:9292,127.0.0.1:9696".to_string()
        })
}

/// An outbound rule that reaches the test cloud and nothing else on loopback.
pub fn test_cloud_policy() -> app::ssr::egress::EgressPolicy {
    app::ssr::egress::EgressPolicy::parse(&test_cloud_endpoints(), false).expect("endpoint list")
}

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    settings: Settings,
}

/// The service on a loopback port, with its worker.
pub struct TestApp {
    pub base: String,
    pub api: String,
    pub state: AppState,
    /// The Kubernetes backend as its concrete type (its Pod feed), when the app has one.
    pub kubernetes: Option<Arc<KubernetesBackend>>,
    pub issuer: Issuer,
    pub http: reqwest::Client,
    /// The folder of its key file (`clouds.key`): a worker binary given the
    /// same `clouds.key` opens the clouds.yaml files this app sealed.
    pub key_dir: std::path::PathBuf,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub const ADMIN: &str = "user_test.portal_admin";
pub const ALICE: &str = "user_test.portal_alice";
pub const BOB: &str = "user_test.portal_bob";

/// Whether the Kubernetes tiers are to be skipped (no cluster on this machine).
pub fn skip_k8s() -> bool {
    std::env::var("SKIP_K8S_TESTS").is_ok_and(|v| v == "1")
        || (std::env::var_os("KUBECONFIG").is_none()
            && !std::path::Path::new(&format!(
                "{}/.kube/config",
                std::env::var("HOME").unwrap_or_default()
            ))
            .exists())
}

/// A unique experiment id (namespaces on the shared test cluster stay apart).
pub fn experiment_id() -> String {
    format!(
        "exp_test.portal_{}",
        app::ids::encode_suffix(uuid::Uuid::now_v7())
    )
}

impl TestApp {
    /// [`TestApp::start`] with the worker off (tasks stay queued unless a test runs one).
    pub async fn without_worker(pool: PgPool) -> Self {
        Self::start(
            pool,
            Options {
                no_worker: true,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn start(pool: PgPool, options: Options) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let issuer = Issuer::start(&base).await;
        let dir = std::env::temp_dir().join(format!("sb-test-{}", uuid::Uuid::now_v7()));
        let timeout = options.pod_ready_timeout_secs.unwrap_or(60).to_string();
        let mut args = vec![
            "test".to_string(),
            "--database-url".into(),
            "postgres://unused".into(),
            "--site-addr".into(),
            addr.to_string(),
            "--public-url".into(),
            base.clone(),
            "--slices-issuer".into(),
            issuer.url.clone(),
            "--admin-user-ids".into(),
            ADMIN.into(),
            "--pod-ready-timeout-secs".into(),
            timeout,
            "--clouds-encryption-key-file".into(),
            dir.join("clouds.key").display().to_string(),
            "--vm-ready-timeout-secs".into(),
            options.vm_ready_timeout_secs.unwrap_or(120).to_string(),
            "--site-id".into(),
            "tld-city-bp1".into(),
            "--slices-jwks-refresh-secs".into(),
            options.jwks_refresh_secs.unwrap_or(300).to_string(),
        ];
        if !options
            .extra_args
            .iter()
            .any(|a| a == "--k8s-namespace-prefix")
        {
            // Namespaces of its own: the reconciler of each test app looks only at Pods under
            // its prefix, so it never takes another test's Pods (unknown to its database) for
            // orphans.
            let tag = app::ids::encode_suffix(uuid::Uuid::now_v7());
            args.push("--k8s-namespace-prefix".into());
            args.push(format!("t{}-", &tag[tag.len() - 6..]));
        }
        // Defaults a test may override in `extra_args`. Tests share one OpenStack project (and
        // may share a cluster): a reconciler deletes orphans and lists each user's clouds only
        // where a test asks for it.
        for (flag, value) in [
            ("--worker-concurrency", "4"),
            ("--orphan-grace-secs", "86400"),
            ("--vm-reconcile-secs", "3600"),
        ] {
            if !options.extra_args.iter().any(|a| a == flag) {
                args.push(flag.into());
                args.push(value.into());
            }
        }
        args.extend(options.extra_args.iter().cloned());
        if let Some(allowed) = &options.allowed_endpoints {
            args.push("--openstack-allowed-endpoints".into());
            args.push(allowed.clone());
        }
        if let Some(site) = &options.site_clouds_yaml {
            args.push("--site-clouds-yaml".into());
            args.push(site.clone());
        }
        let config = TestCli::parse_from(args)
            .settings
            .validate(true)
            .expect("test config");
        let leptos_options = leptos::prelude::LeptosOptions::builder()
            .output_name("slices-blueprint")
            .build();
        let mut state = app::ssr::server::assemble(config, pool, leptos_options)
            .await
            .expect("assemble");
        // Backends: the cluster named by the test, or none.
        let mut backends = Backends {
            openstack: state.backends.openstack.clone(),
            ..Backends::default()
        };
        let mut kubernetes = None;
        if !options.no_kubernetes {
            let config = match &options.kubeconfig {
                Some(path) => {
                    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
                    Some(
                        kube::Config::from_custom_kubeconfig(kc, &Default::default())
                            .await
                            .expect("kube config"),
                    )
                }
                // API-only tests never reach the cluster (their worker is off): without one
                // on this machine they get clients for an address nothing listens on.
                None if skip_k8s() => None,
                None => Some(kube::Config::infer().await.expect("KUBECONFIG")),
            };
            let client = || match &config {
                Some(cfg) => {
                    app::ssr::backend::kubernetes::kube_client(cfg.clone()).expect("client")
                }
                None => {
                    let url = "http://127.0.0.1:9".parse().expect("url");
                    kube::Client::try_from(kube::Config::new(url)).expect("client")
                }
            };
            let k8s = Arc::new(KubernetesBackend::new(
                client(),
                client(),
                &state.config.k8s_namespace_prefix,
                state.config.pod_ready_timeout,
            ));
            backends.kubernetes = Some(k8s.clone() as _);
            kubernetes = Some(k8s);
        }
        if let Some(stand_in) = &options.kubernetes_backend {
            backends.kubernetes = Some(stand_in.clone());
        }
        state.backends = backends;
        let router = app::ssr::server::router(&state).await.expect("router");
        tokio::spawn(app::ssr::server::serve(
            listener,
            router,
            std::future::pending(),
            std::time::Duration::from_secs(1),
        ));
        let (stop, rx) = tokio::sync::watch::channel(false);
        if !options.no_worker {
            let worker = state.worker();
            tokio::spawn(async move { app::ssr::worker::run_worker(worker, rx).await });
        }
        TestApp {
            api: format!("{base}/apis/bi.slices.eu/v1alpha2"),
            base,
            state,
            kubernetes,
            issuer,
            http: reqwest::Client::new(),
            key_dir: dir,
            _stop: stop,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// `POST /resources` of `names` (image, flavor, an hour) with `token`; the 202 answer
    /// (`{"resources": […], "tasks": […]}`), or the test fails.
    pub async fn create_resources(
        &self,
        token: &str,
        image: &str,
        flavor: &str,
        names: &[&str],
    ) -> Value {
        let (s, created) = self
            .post("/resources", token, resources_request(image, flavor, names))
            .await;
        assert_eq!(s, 202, "{created}");
        created
    }

    /// Creates a k8s image (`location`) and flavor as admin; returns their ids.
    pub async fn k8s_catalog(&self, location: &str) -> (String, String) {
        let admin = self.issuer.user(ADMIN);
        let (s, image) = self
            .post(
                "/disk-images",
                &admin,
                json!({ "friendly_name": "test image", "location": location, "default_username": "root" }),
            )
            .await;
        assert_eq!(s, 201, "{image}");
        let (s, flavor) = self
            .post(
                "/flavors",
                &admin,
                json!({ "friendly_name": "k8s.test", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64 }),
            )
            .await;
        assert_eq!(s, 201, "{flavor}");
        (
            image["id"].as_str().expect("id").to_string(),
            flavor["id"].as_str().expect("id").to_string(),
        )
    }

    /// The OpenAPI document the API serves (`<base>/openapi.json`).
    pub async fn openapi(&self) -> Value {
        self.http
            .get(format!("{}/openapi.json", self.api))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    /// `DELETE /resources/{id}` (202) and its delete task waited for (at most `secs`); the
    /// test fails unless the task finished.
    pub async fn delete_and_wait(&self, id: &str, token: &str, secs: u64) -> Value {
        let (s, deleted) = self.delete(&format!("/resources/{id}"), token).await;
        assert_eq!(s, 202, "{deleted}");
        let task = self
            .wait_task(deleted["id"].as_str().expect("task"), token, secs)
            .await;
        assert_eq!(task["status"], "finished", "{task}");
        task
    }

    /// Polls a task until it is `finished` or `failed` (at most `secs`).
    pub async fn wait_task(&self, task_id: &str, token: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, task) = self.get(&format!("/tasks/{task_id}"), token).await;
            assert_eq!(status, 200, "{task}");
            if matches!(task["status"].as_str(), Some("finished" | "failed")) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task still {task} after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `expires_at` one hour from now.
pub fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
}

/// A `POST /resources` body: one resource of `image` and `flavor` per name, expiring in an
/// hour.
pub fn resources_request(image: &str, flavor: &str, names: &[impl AsRef<str>]) -> Value {
    json!({
        "expires_at": in_an_hour(),
        "resources": names.iter().map(|n| json!({
            "friendly_name": n.as_ref(), "disk_image_id": image, "flavor_id": flavor
        })).collect::<Vec<_>>(),
    })
}

/// The `slices-blueprint` binary of this build set up for the test's database: its key files
/// in a fresh temp folder, and the dev issuer (which satisfies the token settings every
/// command validates).
pub fn binary(pool: &PgPool) -> std::process::Command {
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().expect("database name")
    );
    let dir = std::env::temp_dir().join(format!("sb-cli-{}", uuid::Uuid::now_v7()));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_slices-blueprint"));
    command
        .env("DATABASE_URL", url)
        .env("CLOUDS_ENCRYPTION_KEY_FILE", dir.join("clouds.key"))
        .env("RUST_LOG", "warn")
        .env_remove("SLICES_ISSUER")
        .env_remove("SLICES_JWKS_URL")
        .env("DEV_ISSUER", "true")
        .env("DEV_ISSUER_KEY_FILE", dir.join("dev-key.pem"));
    command
}

/// Runs the `slices-blueprint` binary of this build ([`binary`]) with `args` against the
/// test's database; `env` adds variables (e.g. `SITE_CLOUDS_YAML`).
pub fn cli(pool: &PgPool, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    binary(pool)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run slices-blueprint")
}

/// A number from the environment, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tasks not yet ended.
pub async fn unfinished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Waits until every task has ended (at most `limit`); answers how long that took.
pub async fn drain(pool: &PgPool, limit: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    while unfinished(pool).await > 0 {
        assert!(
            start.elapsed() < limit,
            "{} tasks still unfinished after {limit:?}",
            unfinished(pool).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    start.elapsed()
}

/// A browser of the dashboard: one session cookie; server-function calls as same-site form
/// posts that ask for JSON answers.
pub struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    /// The `slices_session` cookie's value, once set.
    pub cookie: Option<String>,
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    /// Posts `form` to the server function `endpoint`; keeps the session cookie it sets.
    pub async fn call(&mut self, endpoint: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/{endpoint}", self.app.base))
            .header("Origin", &self.app.base)
            .header("Accept", "application/json")
            .form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", format!("slices_session={cookie}"));
        }
        let response = request.send().await.expect("send");
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().expect("text");
            if let Some(rest) = text.strip_prefix("slices_session=") {
                let id = rest.split(';').next().unwrap_or_default();
                self.cookie = (!id.is_empty()).then(|| id.to_string());
            }
        }
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET path` of the dashboard with the session cookie: status, content type, body text.
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        let mut request = self.http.get(format!("{}{path}", self.app.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", format!("slices_session={cookie}"));
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, kind, response.text().await.expect("body"))
    }

    pub async fn viewer(&mut self) -> Value {
        let (s, body) = self.call("viewer", &[]).await;
        assert_eq!(s, 200, "{body}");
        body
    }

    pub async fn sign_in(&mut self, user_token: &str, experiment_token: &str) -> u16 {
        let form = [
            ("user_token", user_token),
            ("experiment_token", experiment_token),
        ];
        self.call("sign-in", &form).await.0
    }
}
