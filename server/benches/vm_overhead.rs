//! What slices-blueprint adds to the time a Nova server takes to become ACTIVE, and how many
//! Keystone tokens it asks for. Not a test: it prints figures. `bench/run` starts the server
//! (with its log at BENCH_SERVER_LOG) and the OpenStack test cloud, and passes:
//!   BENCH_BASE_URL, BENCH_CLOUDS_YAML (the file with the clouds `ostest` and `ostest-admin`),
//!   BENCH_SERVER_LOG, BENCH_ITERATIONS (default 5), BENCH_SERVER_BIN (the release binary: its
//!   `dev-token` mints the tokens, with the DEV_ISSUER, DEV_ISSUER_KEY_FILE and PUBLIC_URL
//!   bench/run exports) and DATABASE_URL (the server's database).
//!
//! 0. Set-up ([`prepare`]): catalog import from `ostest-admin` (admin token); the ids of the
//!    imported image `tiny` and flavor `m1.nano`; tokens for the user `user_dev.local_benchvm`
//!    and an experiment acting as them; that user's clouds.yaml uploaded (only the `ostest`
//!    cloud of BENCH_CLOUDS_YAML, the demo project's password cloud). At the end, the stored
//!    copy is checked: it holds neither the cloud's password nor `auth_url` (it is sealed).
//!    Skipped when BENCH_VM_IMAGE_ID is given: then BENCH_VM_FLAVOR_ID, BENCH_EXP_TOKEN and
//!    BENCH_USER_TOKEN (the requesting user, whose clouds.yaml the caller uploaded) are needed,
//!    and BENCH_SERVER_BIN and DATABASE_URL are not.
//!
//! 1. Direct: `POST /servers` → `GET /servers/{id}` every 100 ms until ACTIVE, with the demo
//!    project's own token (Compute API "Create Server", "Show Server Details").
//! 2. Through the API: `POST /resources` → `GET /tasks/{id}` every 100 ms until `finished`.
//!    Iterations alternate 1 and 2, so both see the same cloud load.
//! 3. Ten VMs in one `POST /resources` for the first time for this user: the Keystone token
//!    requests the server made, counted from its log ("requested a Keystone token").

mod common;

use anyhow::Context as _;
use app::model::{CloudsYamlSummary, DiskImage, Flavor, ImportReport};
use app::ssr::cloud_config::{parse, Cloud, CloudAuth, CloudsFile};
use app::ssr::openstack::{OpenStackClient, Token};
use common::{admin_token, answer, dev_token};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

const API: &str = "/apis/bi.slices.eu/v1alpha2";
/// The user whose VMs the bench requests, when it sets up by itself.
const VM_USER: &str = "user_dev.local_benchvm";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("vm_overhead: {name} is not set (run bench/run)");
        std::process::exit(2)
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn line(label: &str, values: &mut [f64]) -> f64 {
    let m = median(values);
    println!(
        "{label:<36} n={:<2} median {m:8.0} ms   min {:8.0} ms   max {:8.0} ms",
        values.len(),
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN)
    );
    m
}

/// Keystone token requests the server has logged so far.
fn tokens_logged(log: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("requested a Keystone token")
        .count()
}

struct Direct {
    client: OpenStackClient,
    cloud: Cloud,
    token: Token,
    compute: String,
}

impl Direct {
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        self.client
            .call(&self.cloud, &self.token, method, url, body)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The first id Glance / Neutron / Nova lists for `url` under `key` with `name`.
    async fn id_of(&self, url: &str, key: &str, name: &str) -> anyhow::Result<String> {
        let body = self
            .call(Method::GET, url, None)
            .await?
            .unwrap_or(Value::Null);
        body[key]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name))
            .and_then(|e| e["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no {key} called {name}"))
    }

    /// Create → ACTIVE, ms; then delete and wait for 404.
    async fn create_active(
        &self,
        name: &str,
        image: &str,
        flavor: &str,
        network: &str,
    ) -> anyhow::Result<f64> {
        let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor,
                                      "networks": [{"uuid": network}]}});
        let started = Instant::now();
        let created = self
            .call(
                Method::POST,
                &format!("{}/servers", self.compute),
                Some(&body),
            )
            .await?
            .unwrap_or(Value::Null);
        let id = created["server"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let url = format!("{}/servers/{id}", self.compute);
        let elapsed = loop {
            let server = self
                .call(Method::GET, &url, None)
                .await?
                .unwrap_or(Value::Null);
            match server["server"]["status"].as_str() {
                Some("ACTIVE") => break started.elapsed().as_secs_f64() * 1000.0,
                Some("ERROR") => anyhow::bail!("direct server went ERROR: {server}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.call(Method::DELETE, &url, None).await?;
        while self.call(Method::GET, &url, None).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(elapsed)
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    exp: String,
    user: String,
}

impl Api {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(
                method.clone(),
                format!("{}/apis/bi.slices.eu/v1alpha2{path}", self.base),
            )
            .bearer_auth(&self.exp);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {value}");
        Ok(value)
    }

    async fn wait_task(&self, id: &str) -> anyhow::Result<()> {
        loop {
            let task = self
                .send(Method::GET, &format!("/tasks/{id}"), None)
                .await?;
            match task["status"].as_str() {
                Some("finished") => return Ok(()),
                Some("failed") => anyhow::bail!("task failed: {task}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// POSTs `names` as VMs in one request; returns (resource ids, task ids).
    async fn create(
        &self,
        names: &[String],
        image: &str,
        flavor: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let resources: Vec<Value> = names
            .iter()
            .map(|n| json!({"friendly_name": n, "disk_image_id": image, "flavor_id": flavor, "network_name": "private"}))
            .collect();
        let created = self
            .send(
                Method::POST,
                "/resources",
                Some(json!({"expires_at": expires, "resources": resources, "tokens": [{"jwt": self.user}]})),
            )
            .await?;
        let ids = |key: &str| -> Vec<String> {
            created[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok((ids("resources"), ids("tasks")))
    }

    async fn delete_all(&self, ids: &[String]) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for id in ids {
            let task = self
                .send(Method::DELETE, &format!("/resources/{id}"), None)
                .await?;
            tasks.push(task["id"].as_str().unwrap_or_default().to_string());
        }
        for t in tasks {
            self.wait_task(&t).await?;
        }
        Ok(())
    }
}

/// A clouds.yaml holding only the cloud `name` of `text` (rebuilt from its YAML tree), checked
/// with the server's own parser: it must read back as exactly that cloud of `file`.
fn only_cloud(text: &str, name: &str, file: &CloudsFile) -> anyhow::Result<String> {
    let docs = YamlLoader::load_from_str(text).context("BENCH_CLOUDS_YAML: not valid YAML")?;
    let cloud = docs
        .first()
        .map(|root| &root["clouds"][name])
        .filter(|cloud| !cloud.is_badvalue())
        .with_context(|| format!("BENCH_CLOUDS_YAML has no cloud {name}"))?;
    let mut clouds = yaml_rust2::yaml::Hash::new();
    clouds.insert(Yaml::String(name.to_string()), cloud.clone());
    let mut root = yaml_rust2::yaml::Hash::new();
    root.insert(Yaml::String("clouds".into()), Yaml::Hash(clouds));
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(&Yaml::Hash(root))
        .map_err(|e| anyhow::anyhow!("writing the {name} clouds.yaml: {e}"))?;
    out.push('\n');
    let back = parse(&out).map_err(|e| anyhow::anyhow!("the {name} clouds.yaml: {e}"))?;
    anyhow::ensure!(
        back.clouds.len() == 1 && back.get(name).is_some() && back.get(name) == file.get(name),
        "the rebuilt clouds.yaml does not read back as the cloud {name}"
    );
    Ok(out)
}

/// What the measurements need: the VM image and flavor, the experiment token, the requesting
/// user's token, and (when [`prepare`] uploaded their clouds.yaml) that user's id.
struct Prepared {
    image_id: String,
    flavor_id: String,
    exp: String,
    user: String,
    uploaded_for: Option<String>,
}

/// The set-up bench/run used to do: catalog import from `ostest-admin`, the ids of `tiny`
/// and `m1.nano`, the VM user's and experiment's tokens, and the user's clouds.yaml (only
/// the `ostest` cloud) uploaded with `ostest` as the default cloud.
async fn prepare(
    http: &reqwest::Client,
    base: &str,
    clouds_text: &str,
    file: &CloudsFile,
) -> anyhow::Result<Prepared> {
    let bin = env("BENCH_SERVER_BIN");
    let admin = admin_token(&bin)?;
    let url = |path: &str| format!("{base}{API}{path}");
    eprintln!("vm_overhead: catalog import from ostest-admin");
    let path = "/catalog/import?cloud=ostest-admin";
    let _: ImportReport = answer(http.post(url(path)).bearer_auth(&admin), path).await?;
    let path = "/disk-images?limit=500";
    let images: Vec<DiskImage> = answer(http.get(url(path)).bearer_auth(&admin), path).await?;
    let path = "/flavors?limit=500";
    let flavors: Vec<Flavor> = answer(http.get(url(path)).bearer_auth(&admin), path).await?;
    let image_id = images
        .into_iter()
        .find(|i| i.friendly_name == "tiny")
        .context("the catalog import made no image `tiny`")?
        .id;
    let flavor_id = flavors
        .into_iter()
        .find(|f| f.friendly_name == "m1.nano")
        .context("the catalog import made no flavor `m1.nano`")?
        .id;

    let user = dev_token(
        &bin,
        &["user", "--user-id", VM_USER, "--name", "Bench VM user"],
    )?;
    let exp = dev_token(
        &bin,
        &[
            "experiment",
            "--experiment-id",
            "exp_dev.local_benchvm",
            "--project-id",
            "proj_dev.local_qkd",
            "--user-id",
            VM_USER,
            "--expires-in-secs",
            "7200",
        ],
    )?;
    // The user's own clouds.yaml: the demo project's password cloud.
    let yaml = only_cloud(clouds_text, "ostest", file)?;
    let path = "/clouds-yaml?default_cloud=ostest";
    let request = http
        .put(url(path))
        .bearer_auth(&user)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(yaml);
    let _: CloudsYamlSummary = answer(request, path).await?;
    Ok(Prepared {
        image_id,
        flavor_id,
        exp,
        user,
        uploaded_for: Some(VM_USER.to_string()),
    })
}

/// The stored-secret check: the clouds.yaml kept for `user` (`user_clouds.sealed_yaml`)
/// holds neither the password of `cloud` nor the text `auth_url`. Prints one report line.
async fn check_at_rest(user: &str, cloud: Option<&Cloud>) -> anyhow::Result<()> {
    let password = match cloud.map(|c| &c.auth) {
        Some(CloudAuth::Password { password, .. }) => Some(password.expose().to_string()),
        _ => None,
    };
    let pool = sqlx::PgPool::connect(&env("DATABASE_URL"))
        .await
        .context("connecting to DATABASE_URL")?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT sealed_yaml FROM user_clouds WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&pool)
            .await
            .context("reading user_clouds")?;
    pool.close().await;
    let label = "clouds.yaml at rest (password in stored bytes?):";
    match (password, stored) {
        (Some(p), Some(s)) if !p.is_empty() && !s.contains(&p) && !s.contains("auth_url") => {
            println!("{label:<50} no ({} bytes, sealed)", s.len());
        }
        _ => println!("{label:<50} CHECK FAILED"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let clouds_text = std::fs::read_to_string(env("BENCH_CLOUDS_YAML"))?;
    let file = parse(&clouds_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (http, base) = (reqwest::Client::new(), env("BENCH_BASE_URL"));
    let log = env("BENCH_SERVER_LOG");
    let prepared = match std::env::var("BENCH_VM_IMAGE_ID") {
        Ok(image_id) => Prepared {
            image_id,
            flavor_id: env("BENCH_VM_FLAVOR_ID"),
            exp: env("BENCH_EXP_TOKEN"),
            user: env("BENCH_USER_TOKEN"),
            uploaded_for: None,
        },
        Err(_) => prepare(&http, &base, &clouds_text, &file).await?,
    };
    let (image_id, flavor_id) = (prepared.image_id, prepared.flavor_id);
    let api = Api {
        http,
        base,
        exp: prepared.exp,
        user: prepared.user,
    };

    // The demo project gets room for 10 VMs at once (the default quota is exactly 10).
    let admin_cloud = file
        .get("ostest-admin")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no ostest-admin cloud"))?;
    let client = OpenStackClient::new(
        app::ssr::egress::EgressPolicy::parse(&env("OPENSTACK_ALLOWED_ENDPOINTS"), false)
            .map_err(anyhow::Error::msg)?,
    )?;
    let admin_token = client
        .authenticate(&admin_cloud)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cloud = file
        .get("ostest")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no ostest cloud"))?;
    let token = client
        .authenticate(&cloud)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let project = token.project_id.clone().unwrap_or_default();
    let admin_compute = admin_token
        .endpoint("compute", &admin_cloud)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    client
        .call(
            &admin_cloud,
            &admin_token,
            Method::PUT,
            &format!("{admin_compute}/os-quota-sets/{project}"),
            Some(&json!({"quota_set": {"instances": 50, "cores": 100, "ram": 512000}})),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let direct = Direct {
        compute: token
            .endpoint("compute", &cloud)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        client,
        cloud,
        token,
    };
    let glance = direct
        .token
        .endpoint("image", &direct.cloud)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let neutron = direct
        .token
        .endpoint("network", &direct.cloud)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let image = direct
        .id_of(&format!("{glance}/v2/images?name=tiny"), "images", "tiny")
        .await?;
    let flavor = direct
        .id_of(&format!("{}/flavors", direct.compute), "flavors", "m1.nano")
        .await?;
    let network = direct
        .id_of(
            &format!("{neutron}/v2.0/networks?name=private"),
            "networks",
            "private",
        )
        .await?;

    // 3 first: the user's very first VMs, so the token cache starts empty.
    let run = std::process::id();
    let names: Vec<String> = (0..10).map(|i| format!("tok-{run}-{i}")).collect();
    let before = tokens_logged(&log);
    let started = Instant::now();
    let (ids, tasks) = api.create(&names, &image_id, &flavor_id).await?;
    for t in &tasks {
        api.wait_task(t).await?;
    }
    let ten = started.elapsed().as_secs_f64();
    let tokens = tokens_logged(&log) - before;
    api.delete_all(&ids).await?;

    let (mut direct_ms, mut api_ms) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        direct_ms.push(
            direct
                .create_active(&format!("direct-{run}-{i}"), &image, &flavor, &network)
                .await?,
        );
        let name = format!("ovh-{run}-{i}");
        let started = Instant::now();
        let (ids, tasks) = api
            .create(std::slice::from_ref(&name), &image_id, &flavor_id)
            .await?;
        api.wait_task(&tasks[0]).await?;
        api_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        api.delete_all(&ids).await?;
    }
    println!(
        "vm_overhead on {} ({iterations} iterations each, Nova fake driver)",
        api.base
    );
    let d = line("direct Nova create → ACTIVE", &mut direct_ms);
    let a = line("POST /resources → task finished", &mut api_ms);
    println!("median overhead (API minus direct): {:.0} ms", a - d);
    println!(
        "10 VMs in one POST → all tasks finished: {ten:.1} s; Keystone token requests: {tokens}"
    );
    if let Some(user) = &prepared.uploaded_for {
        check_at_rest(user, file.get("ostest")).await?;
    }
    Ok(())
}
