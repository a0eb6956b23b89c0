//! OpenStack VMs against a real control plane (../shared/openstack-testcloud: Keystone,
//! Glance, Placement, Nova with the fake virt driver, Neutron). `scripts/test openstack`
//! starts it and sets `OPENSTACK_TEST_CLOUDS_YAML` to the clouds.yaml it seeds
//! (`/etc/openstack/clouds.yaml`, with the clouds `ostest-admin`, `ostest` and
//! `ostest-appcred`).
//!
//! Every test here is `#[ignore]`d (so a plain `cargo test` reports them as ignored, never
//! as passed); the OpenStack tier runs them with `--include-ignored`, and a missing cloud
//! then fails them.

mod common;

use app::ids::{parse_id, IdKind};
use app::ssr::cloud_config::{parse, Cloud};
use app::ssr::openstack::OpenStackClient;
use app::ssr::queue::PgProgress;
use base64::Engine as _;
use common::{experiment_id, in_an_hour, Options, TestApp, ADMIN, ALICE, BOB};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::atomic::Ordering;

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop";
/// A cloud whose password is wrong (same Keystone): used for the error paths and to check
/// that passwords never leave the server.
const DECOY_PASSWORD: &str = "decoy-pass-7f3a9c";

/// The test cloud's clouds.yaml (`OPENSTACK_TEST_CLOUDS_YAML`); these tests are ignored
/// unless asked for, and fail when asked for without a cloud.
fn clouds_path() -> String {
    let path = std::env::var("OPENSTACK_TEST_CLOUDS_YAML").unwrap_or_default();
    assert!(
        !path.is_empty() && std::path::Path::new(&path).is_file(),
        "OPENSTACK_TEST_CLOUDS_YAML (`{path}`) is no file: start the test cloud (`scripts/test openstack`)"
    );
    path
}

/// The whole seeded clouds.yaml.
fn site_yaml(path: &str) -> String {
    std::fs::read_to_string(path).expect("read clouds.yaml")
}

/// The blocks of the named clouds (the seeded file has one `  name:` line per cloud, its
/// settings indented below), as a clouds.yaml of their own.
fn clouds_subset(full: &str, names: &[&str]) -> String {
    let mut out = String::from("clouds:\n");
    let mut keep = false;
    for line in full
        .lines()
        .skip_while(|l| !l.starts_with("clouds:"))
        .skip(1)
    {
        if let Some(name) = line
            .strip_prefix("  ")
            .filter(|rest| !rest.starts_with(' '))
            .and_then(|rest| rest.strip_suffix(':'))
        {
            keep = names.contains(&name);
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The user's clouds.yaml: the demo project by password and by application credential, and a
/// decoy cloud with a wrong password.
fn user_yaml(full: &str) -> String {
    let auth_url = parse(full)
        .expect("seeded clouds.yaml parses")
        .get("ostest")
        .expect("ostest cloud")
        .auth_url
        .clone();
    format!(
        "{}  decoy:\n    auth:\n      auth_url: {auth_url}\n      username: demo\n      password: {DECOY_PASSWORD}\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n",
        clouds_subset(full, &["ostest", "ostest-appcred"])
    )
}

fn cloud(full: &str, name: &str) -> Cloud {
    parse(full)
        .expect("parse")
        .get(name)
        .cloned()
        .expect("cloud")
}

/// `PUT /clouds-yaml` with a YAML body.
async fn put_yaml(app: &TestApp, token: &str, query: &str, body: &str) -> (u16, Value) {
    let response = app
        .http
        .put(format!("{}/clouds-yaml{query}", app.api))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(body.to_string())
        .send()
        .await
        .expect("put");
    let status = response.status().as_u16();
    let text = response.text().await.expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The id of the catalog entry called `name` (`kind`: `disk-images` or `flavors`).
async fn catalog_id(app: &TestApp, kind: &str, name: &str) -> String {
    let (_, list) = app
        .get(&format!("/{kind}?limit=500"), &app.issuer.user(ADMIN))
        .await;
    list.as_array()
        .and_then(|a| a.iter().find(|e| e["friendly_name"] == name))
        .and_then(|e| e["id"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no {kind} entry {name} in {list}"))
}

/// Imports the site cloud's catalog (as admin); returns the ids of `tiny` and `m1.nano`.
async fn import_catalog(app: &TestApp) -> (String, String) {
    let admin = app.issuer.user(ADMIN);
    let (s, report) = app
        .post("/catalog/import?cloud=ostest-admin", &admin, json!(null))
        .await;
    assert_eq!(s, 200, "{report}");
    (
        catalog_id(app, "disk-images", "tiny").await,
        catalog_id(app, "flavors", "m1.nano").await,
    )
}

async fn start(pool: PgPool, site_clouds: &str) -> TestApp {
    start_with(pool, site_clouds, &[]).await
}

/// [`start`] with extra settings (`["--quota-ram-mib-per-experiment", "0"]`).
async fn start_with(pool: PgPool, site_clouds: &str, extra_args: &[&str]) -> TestApp {
    TestApp::start(pool, vm_options(site_clouds, extra_args)).await
}

/// The options of [`start_with`]: the site clouds.yaml, the test cloud's endpoints allowed,
/// no Kubernetes.
fn vm_options(site_clouds: &str, extra_args: &[&str]) -> Options {
    Options {
        no_kubernetes: true,
        vm_ready_timeout_secs: Some(120),
        site_clouds_yaml: Some(site_clouds.to_string()),
        allowed_endpoints: Some(common::test_cloud_endpoints()),
        extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        ..Options::default()
    }
}

/// Imports the catalog and uploads Alice's clouds.yaml with `default_cloud`; returns her
/// experiment token (a new experiment), her user token and the `tiny` / `m1.nano` ids.
async fn vm_ready_user(
    app: &TestApp,
    full: &str,
    default_cloud: &str,
) -> (String, String, String, String) {
    let (image, flavor) = import_catalog(app).await;
    let alice = app.issuer.user(ALICE);
    let query = format!("?default_cloud={default_cloud}");
    let (s, e) = put_yaml(app, &alice, &query, &user_yaml(full)).await;
    assert_eq!(s, 200, "{e}");
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    (token, alice, image, flavor)
}

/// A unique server name (tests share the demo project and run in parallel).
fn vm_name(prefix: &str) -> String {
    let suffix = app::ids::encode_suffix(uuid::Uuid::now_v7());
    format!("{prefix}-{}", &suffix[suffix.len() - 8..])
}

fn vm_request(image: &str, flavor: &str, name: &str, network: &str, user_token: &str) -> Value {
    json!({
        "expires_at": in_an_hour(),
        "resources": [{"friendly_name": name, "disk_image_id": image, "flavor_id": flavor,
                        "network_name": network, "userdata": "#cloud-config\npackages: [git]\n"}],
        "ssh_authorized_keys": [SSH_KEY],
        "tokens": [{"jwt": user_token}],
    })
}

/// The `name`s of a list of import report entries.
fn entry_names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource and task ids of a one-resource `POST /resources` answer.
fn created_ids(created: &Value) -> (String, String) {
    let id = |key: &str| {
        created[key][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}[0].id in {created}"))
            .to_string()
    };
    (id("resources"), id("tasks"))
}

/// One OpenStack API call as `cloud`: a token, the catalog's public endpoint of `service`
/// (`compute`, `image`, `network`) and `path` below it; answers the JSON body (`None` on
/// 404). Panics on any other failure (test helper).
async fn os_call(
    client: &OpenStackClient,
    cloud: &Cloud,
    service: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Option<Value> {
    let token = client.authenticate(cloud).await.expect("token");
    let base = token.endpoint(service, cloud).expect("endpoint");
    client
        .call(cloud, &token, method, &format!("{base}{path}"), body)
        .await
        .unwrap_or_else(|e| panic!("{service} {path}: {e}"))
}

/// Nova's view of a server by id (`None` once it answers 404), read with `cloud`.
async fn nova_server(client: &OpenStackClient, cloud: &Cloud, id: &str) -> Option<Value> {
    let path = format!("/servers/{id}");
    os_call(client, cloud, "compute", reqwest::Method::GET, &path, None)
        .await
        .map(|b| b["server"].clone())
}

/// Servers of the demo project called `name`.
/// The user data Nova stored for a server, decoded (readable by an admin: Compute API
/// microversion >= 2.3, `OS-EXT-SRV-ATTR:user_data`).
async fn user_data_of(client: &OpenStackClient, admin: &Cloud, id: &str) -> String {
    let server = nova_server(client, admin, id)
        .await
        .expect("server seen by the admin");
    server["OS-EXT-SRV-ATTR:user_data"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| panic!("no user_data: {server}"))
}

async fn servers_named(client: &OpenStackClient, cloud: &Cloud, name: &str) -> Vec<Value> {
    let path = format!("/servers/detail?name=^{name}$");
    let body = os_call(client, cloud, "compute", reqwest::Method::GET, &path, None).await;
    body.unwrap_or(Value::Null)["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn clouds_yaml_is_validated_redacted_sealed_tested_and_deleted(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = start(pool.clone(), &path).await;
    let alice = app.issuer.user(ALICE);
    let yaml = user_yaml(&full);

    // Nothing yet; no token → 401.
    assert_eq!(app.get("/clouds-yaml", &alice).await.0, 404);
    let (s, _) = app
        .call(reqwest::Method::GET, "/clouds-yaml", None, None)
        .await;
    assert_eq!(s, 401);

    let (s, summary) = put_yaml(&app, &alice, "?default_cloud=ostest", &yaml).await;
    assert_eq!(s, 200, "{summary}");
    assert_eq!(summary["default_cloud"], "ostest");
    let names: Vec<&str> = summary["clouds"]
        .as_array()
        .expect("clouds")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["ostest", "ostest-appcred", "decoy"]);
    assert_eq!(summary["clouds"][1]["auth_type"], "v3applicationcredential");
    assert_eq!(summary["clouds"][0]["project_name"], "demo");
    assert_eq!(summary["clouds"][0]["region_name"], "RegionOne");

    // Never a secret in an answer, nor in the stored bytes.
    let (s, again) = app.get("/clouds-yaml", &alice).await;
    assert_eq!(s, 200);
    for body in [summary.to_string(), again.to_string()] {
        assert!(
            !body.contains(DECOY_PASSWORD) && !body.contains("ci-secret"),
            "{body}"
        );
        assert!(!body.contains("\"password\":"), "no password field: {body}");
        assert!(!body.contains("secret\":"), "no secret field: {body}");
    }
    let (sealed, stored_summary): (String, String) =
        sqlx::query_as("SELECT sealed_yaml, summary::text FROM user_clouds WHERE user_id = $1")
            .bind(ALICE)
            .fetch_one(&pool)
            .await
            .expect("row");
    for stored in [&sealed, &stored_summary] {
        assert!(!stored.contains(DECOY_PASSWORD), "password stored in clear");
        assert!(!stored.contains("ci-secret"), "secret stored in clear");
    }
    assert!(
        !sealed.contains("auth_url") && !sealed.contains("clouds"),
        "the file is stored sealed"
    );

    // Another user sees nothing of it.
    assert_eq!(app.get("/clouds-yaml", &app.issuer.user(BOB)).await.0, 404);

    // Test connection: both auth types reach Keystone and list Glance's `tiny`.
    for name in ["ostest", "ostest-appcred"] {
        let (s, test) = app
            .post(
                &format!("/clouds-yaml/test?cloud={name}"),
                &alice,
                json!(null),
            )
            .await;
        assert_eq!(s, 200, "{test}");
        assert_eq!(test["ok"], true, "{name}: {test}");
        assert!(
            test["images"]
                .as_array()
                .is_some_and(|i| i.iter().any(|n| n == "tiny")),
            "{test}"
        );
    }
    // A wrong password: Keystone's own message, and the password is not echoed.
    let (s, test) = app
        .post("/clouds-yaml/test?cloud=decoy", &alice, json!(null))
        .await;
    assert_eq!(s, 200, "{test}");
    assert_eq!(test["ok"], false, "{test}");
    let error = test["error"].as_str().unwrap_or_default();
    assert!(error.contains("requires authentication"), "{error}");
    assert!(!error.contains(DECOY_PASSWORD));
    let (s, e) = app
        .post("/clouds-yaml/test?cloud=nope", &alice, json!(null))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("cloud")), "{e}");

    // Default cloud.
    let (s, p) = app
        .patch(
            "/clouds-yaml",
            &alice,
            json!({"default_cloud": "ostest-appcred"}),
        )
        .await;
    assert_eq!(
        (s, p["default_cloud"].as_str()),
        (200, Some("ostest-appcred")),
        "{p}"
    );
    let (s, e) = app
        .patch("/clouds-yaml", &alice, json!({"default_cloud": "nope"}))
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (422, Some("default_cloud")),
        "{e}"
    );

    // Bad files: a clear 4xx naming the field and line; the stored file is kept.
    let no_url = "clouds:\n  x:\n    auth:\n      username: u\n      password: p\n";
    let (s, e) = put_yaml(&app, &alice, "", no_url).await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["field"], "clouds.x.auth (line 3)", "{e}");
    let mut laughs = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        laughs.push_str(&format!(
            "{next}: &{next} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
    }
    laughs.push_str("clouds: *i\n");
    let started = std::time::Instant::now();
    let (s, e) = put_yaml(&app, &alice, "", &laughs).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "billion laughs took {:?}",
        started.elapsed()
    );
    assert_eq!(s, 422, "{e}");
    assert!(
        e["detail"].as_str().unwrap_or_default().contains("aliases"),
        "{e}"
    );
    let (s, _) = put_yaml(&app, &alice, "", &"#".repeat(70 * 1024)).await;
    assert_eq!(s, 413);
    let (s, e) = put_yaml(&app, &alice, "?default_cloud=zzz", &yaml).await;
    assert_eq!(
        (s, e["field"].as_str()),
        (422, Some("default_cloud")),
        "{e}"
    );
    assert_eq!(
        app.get("/clouds-yaml", &alice).await.1["default_cloud"],
        "ostest-appcred"
    );

    // Delete.
    assert_eq!(app.delete("/clouds-yaml", &alice).await.0, 204);
    assert_eq!(app.get("/clouds-yaml", &alice).await.0, 404);
    assert_eq!(app.delete("/clouds-yaml", &alice).await.0, 404);
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn catalog_import_adds_then_changes_nothing(pool: PgPool) {
    let path = clouds_path();
    let app = start(pool, &path).await;
    let admin = app.issuer.user(ADMIN);

    let (s, e) = app
        .post(
            "/catalog/import?cloud=ostest-admin",
            &app.issuer.user(ALICE),
            json!(null),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    let (s, e) = app
        .post("/catalog/import?cloud=nope", &admin, json!(null))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("cloud")), "{e}");

    let (s, first) = app
        .post("/catalog/import?cloud=ostest-admin", &admin, json!(null))
        .await;
    assert_eq!(s, 200, "{first}");
    assert!(
        entry_names(&first["images_added"]).contains(&"tiny".to_string()),
        "{first}"
    );
    assert!(
        entry_names(&first["flavors_added"]).contains(&"m1.nano".to_string()),
        "{first}"
    );

    let (s, second) = app
        .post("/catalog/import?cloud=ostest-admin", &admin, json!(null))
        .await;
    assert_eq!(s, 200, "{second}");
    for group in [
        "images_added",
        "images_updated",
        "flavors_added",
        "flavors_updated",
    ] {
        assert!(
            entry_names(&second[group]).is_empty(),
            "{group} after a repeat: {second}"
        );
    }
    assert!(entry_names(&second["images_unchanged"]).contains(&"tiny".to_string()));
    assert!(entry_names(&second["flavors_unchanged"]).contains(&"m1.nano".to_string()));

    // The entries are what Glance and Nova say.
    let (_, flavors) = app.get("/flavors", &admin).await;
    let nano = flavors
        .as_array()
        .and_then(|a| a.iter().find(|f| f["friendly_name"] == "m1.nano"))
        .cloned()
        .expect("m1.nano");
    assert_eq!(
        (
            &nano["flavor_type"],
            &nano["ram_mib"],
            &nano["vcpus"],
            &nano["disk_mb"]
        ),
        (&json!("vm"), &json!(64), &json!(1), &json!(1024)),
        "{nano}"
    );
    let (_, images) = app.get("/disk-images", &admin).await;
    let tiny = images
        .as_array()
        .and_then(|a| a.iter().find(|i| i["friendly_name"] == "tiny"))
        .cloned()
        .expect("tiny");
    assert_eq!(tiny["cluster_id"], "default");
    assert_eq!(
        tiny["location"].as_str().map(str::len),
        Some(36),
        "Glance id: {tiny}"
    );
}

/// The whole VM path through the REST API with the user's `default_cloud`.
async fn vm_lifecycle(pool: PgPool, default_cloud: &str) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = start(pool, &path).await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, default_cloud).await;
    let name = vm_name("qkd-vm");

    let (s, created) = app
        .post(
            "/resources",
            &token,
            vm_request(&image, &flavor, &name, "private", &alice),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let (resource_id, task_id) = created_ids(&created);
    let task = app.wait_task(&task_id, &token, 180).await;
    assert_eq!(task["status"], "finished", "{task}");
    assert_eq!(task["completed"], 100);

    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    assert_eq!(resource["allocation_state"], "provisioned", "{resource}");
    assert_eq!(resource["operational_state"], "ready");
    assert_eq!(resource["requested_by"], ALICE);
    let server_id = resource["details"]["server_id"]
        .as_str()
        .expect("server_id")
        .to_string();
    let ip = resource["details"]["addresses"][0]
        .as_str()
        .expect("address")
        .to_string();
    assert!(ip.starts_with("10.99.0."), "{resource}");
    assert!(
        resource["ssh_command"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("@{ip}"))),
        "{resource}"
    );

    // Nova agrees: ACTIVE, named as asked, tagged with the resource id.
    let demo = cloud(&full, "ostest");
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let server = nova_server(&client, &demo, &server_id)
        .await
        .expect("server exists");
    assert_eq!(server["status"], "ACTIVE");
    assert_eq!(server["name"], name.as_str());
    assert_eq!(
        server["metadata"]["slices-resource-id"],
        resource_id.as_str()
    );
    // The user_data Nova stored (readable by an admin, Compute API microversion >= 2.3) is the
    // requested cloud-config with the SSH key merged in.
    let admin = cloud(&full, "ostest-admin");
    let user_data = user_data_of(&client, &admin, &server_id).await;
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(user_data.contains(SSH_KEY), "{user_data}");
    assert!(
        user_data.contains("git"),
        "the requested packages stay: {user_data}"
    );

    // Console log (the fake driver's canned output).
    let (s, console) = app
        .get(
            &format!("/resources/{resource_id}/console?lines=50"),
            &token,
        )
        .await;
    assert_eq!(s, 200, "{console}");
    assert!(
        !console["output"].as_str().unwrap_or_default().is_empty(),
        "{console}"
    );
    let (s, e) = app
        .get(&format!("/resources/{resource_id}/console?lines=0"), &token)
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("lines")), "{e}");
    // Another experiment does not see it.
    let other = app.issuer.experiment(&experiment_id(), BOB);
    assert_eq!(
        app.get(&format!("/resources/{resource_id}/console"), &other)
            .await
            .0,
        404
    );

    // Delete → the task finishes once Nova answers 404.
    app.delete_and_wait(&resource_id, &token, 180).await;
    assert!(
        nova_server(&client, &demo, &server_id).await.is_none(),
        "server still exists"
    );
    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    assert_eq!(resource["allocation_state"], "deleted", "{resource}");
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_vm_is_created_active_and_deleted_with_password_auth(pool: PgPool) {
    vm_lifecycle(pool, "ostest").await;
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_vm_is_created_active_and_deleted_with_an_application_credential(pool: PgPool) {
    vm_lifecycle(pool, "ostest-appcred").await;
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_retried_create_adopts_the_server_and_ten_creates_need_one_token(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = TestApp::start(
        pool.clone(),
        Options {
            no_kubernetes: true,
            no_worker: true,
            site_clouds_yaml: Some(path.clone()),
            allowed_endpoints: Some(common::test_cloud_endpoints()),
            ..Options::default()
        },
    )
    .await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, "ostest").await;
    let name = vm_name("adopt");
    let (s, created) = app
        .post(
            "/resources",
            &token,
            vm_request(&image, &flavor, &name, "private", &alice),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let (resource_id, task_id) = created_ids(&created);
    let uuid = parse_id(IdKind::Resource, "tld-city-bp1", &resource_id).expect("uuid");
    let task_uuid = parse_id(IdKind::Task, "tld-city-bp1", &task_id).expect("uuid");
    let record = app::ssr::rows::load_record(&app.state.pool, app.state.site(), uuid)
        .await
        .expect("record");
    let backend = app.state.backends.openstack.clone().expect("openstack");
    let progress = PgProgress::new(pool.clone(), task_uuid, uuid, "crashed-worker");

    // A first attempt creates the server; a retry (as after a crash) adopts it.
    let first = backend
        .create(&record, &progress)
        .await
        .expect("first attempt");
    let record = app::ssr::rows::load_record(&app.state.pool, app.state.site(), uuid)
        .await
        .expect("record");
    let second = backend.create(&record, &progress).await.expect("retry");
    assert_eq!(
        first.server_id, second.server_id,
        "the retry adopted the server"
    );
    // Even without the recorded id (a crash before it was written), metadata finds it.
    let mut forgetful = record.clone();
    forgetful.details.server_id = None;
    let third = backend
        .create(&forgetful, &progress)
        .await
        .expect("retry without id");
    assert_eq!(first.server_id, third.server_id);
    let demo = cloud(&full, "ostest");
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    assert_eq!(
        servers_named(&client, &demo, &name).await.len(),
        1,
        "no second server"
    );

    // Token cache: ten more creates of this user's cloud ask Keystone for no new token.
    let before = app
        .state
        .openstack
        .keystone_requests
        .load(Ordering::Relaxed);
    for _ in 0..10 {
        backend
            .create(&record, &progress)
            .await
            .expect("adopting create");
    }
    let after = app
        .state
        .openstack
        .keystone_requests
        .load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "creates reuse the cached Keystone token");

    // Deleting twice is fine (404 = done), and the server is gone.
    backend.delete(&record, &progress).await.expect("delete");
    backend
        .delete(&record, &progress)
        .await
        .expect("delete again");
    assert!(servers_named(&client, &demo, &name).await.is_empty());
}

/// Creates a Nova flavor with the admin cloud (test-only flavors for the error paths).
async fn nova_flavor(full: &str, name: &str, ram: u32, disk: u32) {
    let admin = cloud(full, "ostest-admin");
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let token = client.authenticate(&admin).await.expect("admin token");
    let compute = token.endpoint("compute", &admin).expect("compute");
    let listed = client
        .call(
            &admin,
            &token,
            reqwest::Method::GET,
            &format!("{compute}/flavors"),
            None,
        )
        .await
        .expect("flavors")
        .unwrap_or(Value::Null);
    if listed["flavors"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f["name"] == name))
    {
        return;
    }
    // Two tests may race to create it: a 409 means the other won.
    let _ = client
        .call(
            &admin,
            &token,
            reqwest::Method::POST,
            &format!("{compute}/flavors"),
            Some(&json!({"flavor": {"name": name, "ram": ram, "vcpus": 1, "disk": disk}})),
        )
        .await;
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn openstack_errors_fail_the_task_with_a_message_to_act_on(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    nova_flavor(&full, "test.quota-buster", 4_000_000, 1).await;
    nova_flavor(&full, "test.no-room", 64, 900_000).await;
    // Nova's own quota is what this test provokes: this site's per-experiment quota is off.
    let no_quota = [
        "--quota-ram-mib-per-experiment",
        "0",
        "--quota-vcpus-per-experiment",
        "0",
    ];
    let app = start_with(pool, &path, &no_quota).await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, "ostest").await;
    let admin = app.issuer.user(ADMIN);

    // Catalog entries that point at things the cloud does not have or cannot give.
    let (s, ghost) = app
        .post(
            "/disk-images",
            &admin,
            json!({"friendly_name": "ghost", "location": "no-such-image", "default_username": "root"}),
        )
        .await;
    assert_eq!(s, 201, "{ghost}");
    let (s, on_decoy) = app
        .post(
            "/disk-images",
            &admin,
            json!({"friendly_name": "decoy image", "cluster_id": "decoy", "location": "tiny"}),
        )
        .await;
    assert_eq!(s, 201, "{on_decoy}");
    let flavors = [
        catalog_id(&app, "flavors", "test.quota-buster").await,
        catalog_id(&app, "flavors", "test.no-room").await,
    ];
    let id = |v: &Value| v["id"].as_str().expect("id").to_string();
    let cases = [
        (
            "image",
            id(&ghost),
            flavor.clone(),
            "private",
            "not found in Glance",
        ),
        (
            "network",
            image.clone(),
            flavor.clone(),
            "no-such-net",
            "network `no-such-net` not found",
        ),
        (
            "keystone",
            id(&on_decoy),
            flavor.clone(),
            "private",
            "Keystone refused the credentials of cloud `decoy`",
        ),
        (
            "quota",
            image.clone(),
            flavors[0].clone(),
            "private",
            "Quota exceeded",
        ),
        (
            "novalidhost",
            image.clone(),
            flavors[1].clone(),
            "private",
            "No valid host",
        ),
    ];
    let mut tasks = Vec::new();
    for (label, image, flavor, network, _) in &cases {
        let (s, created) = app
            .post(
                "/resources",
                &token,
                vm_request(image, flavor, &vm_name(label), network, &alice),
            )
            .await;
        assert_eq!(s, 202, "{label}: {created}");
        let (resource_id, task_id) = created_ids(&created);
        tasks.push((task_id, resource_id));
    }
    let demo = cloud(&full, "ostest");
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    for ((label, .., expected), (task_id, resource_id)) in cases.iter().zip(&tasks) {
        let task = app.wait_task(task_id, &token, 180).await;
        assert_eq!(task["status"], "failed", "{label}: {task}");
        let message = task["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "{label}: `{message}` lacks `{expected}`"
        );
        assert!(!message.contains(DECOY_PASSWORD), "{label}: {message}");
        let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
        assert_eq!(
            resource["allocation_state"], "failed",
            "{label}: {resource}"
        );
        assert_eq!(resource["operational_state"], "error");
        // Nothing half-made is left: the server of a failed build was removed.
        let name = resource["friendly_name"].as_str().expect("name");
        assert!(
            servers_named(&client, &demo, name).await.is_empty(),
            "{label}: a server was left behind"
        );
    }
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_vm_request_without_a_clouds_yaml_is_refused_up_front(pool: PgPool) {
    let path = clouds_path();
    let app = start(pool, &path).await;
    let (image, flavor) = import_catalog(&app).await;
    let bob = app.issuer.user(BOB);
    let token = app.issuer.experiment(&experiment_id(), BOB);
    let (s, e) = app
        .post(
            "/resources",
            &token,
            vm_request(&image, &flavor, "no-creds", "private", &bob),
        )
        .await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["field"], "tokens", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("clouds.yaml"),
        "{e}"
    );
    let (_, listed) = app.get("/resources", &token).await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "nothing was created"
    );
}

#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn the_sync_catalog_command_imports_and_a_second_run_changes_nothing(pool: PgPool) {
    let path = clouds_path();
    let run = |pool: PgPool, path: String| async move {
        tokio::task::spawn_blocking(move || {
            common::cli(
                &pool,
                &[
                    ("SITE_CLOUDS_YAML", path.as_str()),
                    (
                        "OPENSTACK_ALLOWED_ENDPOINTS",
                        &common::test_cloud_endpoints(),
                    ),
                ],
                &["sync-catalog", "--cloud", "ostest-admin", "--json"],
            )
        })
        .await
        .expect("join")
    };
    let first = run(pool.clone(), path.clone()).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: Value = serde_json::from_slice(&first.stdout).expect("JSON report");
    assert!(
        entry_names(&report["images_added"]).contains(&"tiny".into()),
        "{report}"
    );
    assert!(
        entry_names(&report["flavors_added"]).contains(&"m1.nano".into()),
        "{report}"
    );

    let second = run(pool.clone(), path.clone()).await;
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let report: Value = serde_json::from_slice(&second.stdout).expect("JSON report");
    for group in [
        "images_added",
        "images_updated",
        "flavors_added",
        "flavors_updated",
    ] {
        assert!(entry_names(&report[group]).is_empty(), "{group}: {report}");
    }
    assert!(
        entry_names(&report["images_unchanged"]).contains(&"tiny".into()),
        "{report}"
    );

    // An unknown cloud: a non-zero exit with a message naming it.
    let bad = tokio::task::spawn_blocking(move || {
        common::cli(
            &pool,
            &[("SITE_CLOUDS_YAML", path.as_str())],
            &["sync-catalog", "--cloud", "nope"],
        )
    })
    .await
    .expect("join");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Out-of-band changes to a VM reach its resource within a reconcile pass (every 2 s here):
/// Nova `SHUTOFF` (stopped by hand) → `operational_state = error` saying so; started again →
/// `ready`; the server deleted by hand → `failed`, "deleted outside slices-blueprint".
#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_vm_changed_by_hand_is_noticed_by_the_reconciler(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = start_with(pool, &path, &["--vm-reconcile-secs", "2"]).await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, "ostest").await;
    let name = vm_name("drift");
    let (s, created) = app
        .post(
            "/resources",
            &token,
            vm_request(&image, &flavor, &name, "private", &alice),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let (resource_id, task_id) = created_ids(&created);
    let task = app.wait_task(&task_id, &token, 180).await;
    assert_eq!(task["status"], "finished", "{task}");
    let (_, resource) = app.get(&format!("/resources/{resource_id}"), &token).await;
    let server_id = resource["details"]["server_id"]
        .as_str()
        .expect("server")
        .to_string();

    let demo = cloud(&full, "ostest");
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let nova = |method: reqwest::Method, suffix: String, body: Option<Value>| {
        let (client, demo) = (&client, &demo);
        async move {
            let path = format!("/servers/{suffix}");
            os_call(client, demo, "compute", method, &path, body.as_ref()).await
        }
    };
    let until = |want: &'static str, field: &'static str, limit: u64| {
        until_state(&app, &token, &resource_id, (field, want), limit)
    };

    nova(
        reqwest::Method::POST,
        format!("{server_id}/action"),
        Some(json!({"os-stop": null})),
    )
    .await;
    let (stopped_in, r) = until("error", "operational_state", 60).await;
    assert!(
        r["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("SHUTOFF")),
        "{r}"
    );
    assert_eq!(r["allocation_state"], "provisioned", "{r}");
    nova(
        reqwest::Method::POST,
        format!("{server_id}/action"),
        Some(json!({"os-start": null})),
    )
    .await;
    let (started_in, _) = until("ready", "operational_state", 60).await;

    nova(reqwest::Method::DELETE, server_id.clone(), None).await;
    let (gone_in, r) = until("failed", "allocation_state", 60).await;
    assert!(
        r["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("deleted outside slices-blueprint")),
        "{r}"
    );
    println!(
        "openstack: drift noticed after: SHUTOFF {} ms, started again {} ms, deleted {} ms (passes every 2 s)",
        stopped_in.as_millis(),
        started_in.as_millis(),
        gone_in.as_millis()
    );
}

// ---- Fault drills (issue 12). They kill processes and stop Keystone, so scripts/test runs
// them after the tests above, one at a time: `cargo test --test openstack drill_ --
// --test-threads=1`.

/// Lifts the demo project's Nova instance and core quotas (10 and 20 by default) with the
/// admin cloud, so that a drill's VMs fit beside whatever else the shared project holds. The
/// RAM quota stays: the error-path test's `test.quota-buster` flavor must still exceed it.
async fn lift_nova_quotas(full: &str) {
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let demo = cloud(full, "ostest");
    let project = client.authenticate(&demo).await.expect("demo token");
    let project_id = project.project_id.clone().expect("demo project id");
    let admin = cloud(full, "ostest-admin");
    let quotas = json!({"quota_set": {"instances": -1, "cores": -1}});
    let path = format!("/os-quota-sets/{project_id}");
    os_call(
        &client,
        &admin,
        "compute",
        reqwest::Method::PUT,
        &path,
        Some(&quotas),
    )
    .await;
}

/// Nova servers of the demo project that carry one of `ids` as their resource-id metadata,
/// counted per id.
async fn servers_per_resource(
    client: &OpenStackClient,
    demo: &Cloud,
    ids: &[String],
) -> std::collections::HashMap<String, usize> {
    let path = "/servers/detail?limit=1000";
    let body = os_call(client, demo, "compute", reqwest::Method::GET, path, None)
        .await
        .unwrap_or(Value::Null);
    let mut counts = std::collections::HashMap::new();
    for server in body["servers"].as_array().into_iter().flatten() {
        if let Some(id) = server["metadata"]["slices-resource-id"].as_str() {
            if ids.iter().any(|i| i == id) {
                *counts.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// `slices-blueprint worker` for the drills: the test app's `clouds.key` (so it opens the
/// clouds.yaml the app sealed), the test cloud's endpoints, reconcile passes every 2 s and
/// a 10 s orphan grace.
fn spawn_vm_worker(app: &TestApp, pool: &PgPool) -> std::process::Child {
    let tag = app::ids::encode_suffix(uuid::Uuid::now_v7());
    common::binary(pool)
        .arg("worker")
        .env("CLOUDS_ENCRYPTION_KEY_FILE", app.key_dir.join("clouds.key"))
        .env(
            "OPENSTACK_ALLOWED_ENDPOINTS",
            common::test_cloud_endpoints(),
        )
        .env("SITE_ID", "tld-city-bp1")
        .env(
            "K8S_NAMESPACE_PREFIX",
            format!("d{}-", &tag[tag.len() - 6..]),
        )
        .env("WORKER_CONCURRENCY", "8")
        .env("VM_READY_TIMEOUT_SECS", "180")
        .env("VM_RECONCILE_SECS", "2")
        .env("ORPHAN_GRACE_SECS", "10")
        .env("SHUTDOWN_GRACE_SECS", "5")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the worker")
}

/// Polls `GET /resources/{id}` until its `field` is `want` (at most `secs`); answers how long
/// that took and the resource as last read.
async fn until_state(
    app: &TestApp,
    token: &str,
    id: &str,
    (field, want): (&str, &str),
    secs: u64,
) -> (std::time::Duration, Value) {
    let start = std::time::Instant::now();
    loop {
        let (_, r) = app.get(&format!("/resources/{id}"), token).await;
        if r[field] == want {
            return (start.elapsed(), r);
        }
        assert!(start.elapsed().as_secs() < secs, "still {r} after {secs} s");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The id of the first `kind` (`images` on Glance, `networks` on Neutron, `flavors` on
/// Nova) called `name` in the demo project's view.
async fn openstack_id(client: &OpenStackClient, demo: &Cloud, kind: &str, name: &str) -> String {
    let (service, path) = match kind {
        "images" => ("image", format!("/v2/images?name={name}")),
        "networks" => ("network", format!("/v2.0/networks?name={name}")),
        _ => ("compute", "/flavors?limit=1000".to_string()),
    };
    let body = os_call(client, demo, service, reqwest::Method::GET, &path, None)
        .await
        .unwrap_or(Value::Null);
    body[kind]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("no {kind} called {name}: {body}"))
        .to_string()
}

/// A server made by hand in the demo project, carrying a resource id this site never issued;
/// answers its id.
async fn hand_made_orphan(client: &OpenStackClient, demo: &Cloud) -> String {
    let image = openstack_id(client, demo, "images", "tiny").await;
    let network = openstack_id(client, demo, "networks", "private").await;
    let flavor = openstack_id(client, demo, "flavors", "m1.nano").await;
    let unknown = app::ids::format_id(IdKind::Resource, "tld-city-bp1", uuid::Uuid::now_v7());
    let server = json!({"server": {"name": vm_name("orphan"), "imageRef": image,
        "flavorRef": flavor, "networks": [{"uuid": network}],
        "metadata": {"slices-resource-id": unknown}}});
    let method = reqwest::Method::POST;
    let body = os_call(client, demo, "compute", method, "/servers", Some(&server))
        .await
        .unwrap_or(Value::Null);
    body["server"]["id"]
        .as_str()
        .expect("server id")
        .to_string()
}

/// Requests `count` VMs (`tiny` on `m1.nano`, network `private`) in one request; answers
/// their resource and task ids.
async fn request_vms(
    app: &TestApp,
    token: &str,
    user_token: &str,
    (image, flavor): (&str, &str),
    count: usize,
) -> (Vec<String>, Vec<String>) {
    let name = vm_name("drill");
    let resources: Vec<Value> = (0..count)
        .map(|i| {
            json!({"friendly_name": format!("{name}-{i}"), "disk_image_id": image,
                        "flavor_id": flavor, "network_name": "private"})
        })
        .collect();
    let (s, created) = app
        .post(
            "/resources",
            token,
            json!({"expires_at": in_an_hour(), "resources": resources,
                   "tokens": [{"jwt": user_token}]}),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let ids = |key: &str| -> Vec<String> {
        created[key]
            .as_array()
            .expect("list")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    };
    (ids("resources"), ids("tasks"))
}

/// An app without a worker (the drills run `slices-blueprint worker` processes).
async fn api_only(pool: PgPool, site_clouds: &str) -> TestApp {
    TestApp::start(
        pool,
        Options {
            no_kubernetes: true,
            no_worker: true,
            site_clouds_yaml: Some(site_clouds.to_string()),
            allowed_endpoints: Some(common::test_cloud_endpoints()),
            ..Options::default()
        },
    )
    .await
}

/// Kills `worker` (SIGKILL) after a random pause of `pause_ms` and starts a new one.
async fn kill_and_restart(
    worker: &mut std::process::Child,
    pause_ms: std::ops::Range<u64>,
    app: &TestApp,
    pool: &PgPool,
) {
    use rand::Rng as _;
    let pause = rand::thread_rng().gen_range(pause_ms);
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    worker.kill().expect("SIGKILL");
    let _ = worker.wait();
    *worker = spawn_vm_worker(app, pool);
}

/// SIGKILL the worker process at `FAULT_VM_KILLS` (2) random points while `FAULT_VMS` (20)
/// VMs are provisioned and once while the rest are deleted, restarting it each time: each
/// resource ends as asked with exactly one Nova server (counted by resource-id metadata), and
/// no task fails. In between, 2 servers deleted by hand must be noticed (resource `failed`)
/// and a hand-made server carrying an unknown resource id removed after the 10 s grace.
#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn drill_sigkill_during_vm_provisioning_duplicates_nothing(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = api_only(pool.clone(), &path).await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, "ostest").await;
    lift_nova_quotas(&full).await;
    let asked = common::env_or("FAULT_VMS", 20).max(3);
    let (ids, _) = request_vms(&app, &token, &alice, (&image, &flavor), asked).await;
    let started = std::time::Instant::now();
    let mut worker = spawn_vm_worker(&app, &pool);
    let mut kills = 0;
    for _ in 0..common::env_or("FAULT_VM_KILLS", 2) {
        kill_and_restart(&mut worker, 1000..6000, &app, &pool).await;
        kills += 1;
    }
    let provisioned_in = common::drain(&pool, std::time::Duration::from_secs(600)).await;
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let demo = cloud(&full, "ostest");
    let servers = servers_per_resource(&client, &demo, &ids).await;
    let duplicated = servers.values().filter(|&&n| n > 1).count();
    // Lost: no Nova server, or the resource not provisioned (each resource counted once).
    let mut lost = 0;
    for id in &ids {
        let (_, r) = app.get(&format!("/resources/{id}"), &token).await;
        if !servers.contains_key(id) || r["allocation_state"] != "provisioned" {
            lost += 1;
            eprintln!("lost: {r}");
        }
    }
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "after provisioning: {servers:?}"
    );

    // Out of band: two servers deleted by hand, one server made by hand.
    let (by_hand, rest) = ids.split_at(2);
    let mut noticed = Vec::new();
    for id in by_hand {
        let (_, r) = app.get(&format!("/resources/{id}"), &token).await;
        let server = r["details"]["server_id"].as_str().expect("server_id");
        delete_server(&client, &demo, server).await;
    }
    for id in by_hand {
        let failed = ("allocation_state", "failed");
        let (took, _) = until_state(&app, &token, id, failed, 90).await;
        noticed.push(took.as_millis());
    }
    let orphan = hand_made_orphan(&client, &demo).await;
    let orphan_start = std::time::Instant::now();
    while nova_server(&client, &demo, &orphan).await.is_some() {
        assert!(
            orphan_start.elapsed().as_secs() < 120,
            "orphan {orphan} still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let orphan_gone = orphan_start.elapsed();

    // The rest deleted, with one more kill in the middle.
    for id in rest {
        let (s, task) = app.delete(&format!("/resources/{id}"), &token).await;
        assert_eq!(s, 202, "{task}");
    }
    kill_and_restart(&mut worker, 200..2000, &app, &pool).await;
    kills += 1;
    common::drain(&pool, std::time::Duration::from_secs(600)).await;
    let left = servers_per_resource(&client, &demo, &ids).await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'failed'")
        .fetch_one(&pool)
        .await
        .expect("failed tasks");
    for id in rest {
        until_state(&app, &token, id, ("allocation_state", "deleted"), 5).await;
    }
    println!(
        "faults: vm sigkill: {asked} VM provisions + {} deletes, {kills} kills: lost {lost}, \
         duplicated {duplicated}, left behind {}, failed tasks {failed}; provisioned {} s after \
         the start, all in {} s; deleted by hand noticed after {noticed:?} ms (passes every 2 s); \
         hand-made orphan removed after {} s (grace 10 s)",
        rest.len(),
        left.len(),
        provisioned_in.as_secs(),
        started.elapsed().as_secs(),
        orphan_gone.as_secs()
    );
    assert!(left.is_empty(), "servers left behind: {left:?}");
    assert_eq!(failed, 0);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// `DELETE /servers/{id}` on the demo project (by hand, as an operator would).
async fn delete_server(client: &OpenStackClient, demo: &Cloud, id: &str) {
    let path = format!("/servers/{id}");
    os_call(
        client,
        demo,
        "compute",
        reqwest::Method::DELETE,
        &path,
        None,
    )
    .await;
}

/// The test cloud's Keystone process (`ostest-cloud` keeps its pid in
/// `$OSTEST_STATE/pid/keystone.pid`), stopped for a drill and started again with the same
/// command line and environment, also when the drill fails half-way (on drop).
struct KeystoneOutage {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    state: std::path::PathBuf,
    down: bool,
}

impl KeystoneOutage {
    /// Stops Keystone (SIGTERM to its process group) and waits until `addr` refuses
    /// connections.
    fn begin(addr: &str) -> KeystoneOutage {
        let state = std::path::PathBuf::from(
            std::env::var("OSTEST_STATE").unwrap_or_else(|_| "/var/lib/ostest".into()),
        );
        let pid_text =
            std::fs::read_to_string(state.join("pid/keystone.pid")).expect("keystone pid file");
        let pid = pid_text.trim();
        let fields = |file: &str| -> Vec<String> {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .expect("keystone process")
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        };
        let argv = fields("cmdline");
        let env = fields("environ")
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{pid}")])
            .status()
            .expect("kill");
        assert!(killed.success(), "could not stop Keystone ({pid})");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(start.elapsed().as_secs() < 30, "Keystone still answers");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        KeystoneOutage {
            argv,
            env,
            state,
            down: true,
        }
    }

    /// Starts Keystone again as `ostest-cloud` did (own process group, output appended to
    /// its log, pid file updated). It outlives the test, as after `ostest-cloud up`.
    #[expect(
        clippy::zombie_processes,
        reason = "Keystone is a daemon that outlives the test; ostest-cloud stops it"
    )]
    fn start(&mut self) {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("log/keystone.out"))
            .expect("keystone log");
        let child = std::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start Keystone");
        std::fs::write(self.state.join("pid/keystone.pid"), child.id().to_string())
            .expect("pid file");
        self.down = false;
    }

    /// Starts Keystone and waits until it answers `GET {auth_url}` (at most 60 s).
    async fn end(&mut self, auth_url: &str) {
        self.start();
        let start = std::time::Instant::now();
        loop {
            let answer = reqwest::get(auth_url).await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(start.elapsed().as_secs() < 60, "Keystone did not come back");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for KeystoneOutage {
    fn drop(&mut self) {
        if self.down {
            self.start();
        }
    }
}

/// Keystone down for `FAULT_OUTAGE_SECS` (60) while 5 VMs are requested: no task fails; each
/// waits saying "Keystone unreachable since …" and all finish once it is back. Prints the
/// time from Keystone's return to the last finish.
#[ignore = "needs the OpenStack test cloud: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn drill_keystone_down_while_vms_are_provisioned(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let app = start(pool.clone(), &path).await;
    let (token, alice, image, flavor) = vm_ready_user(&app, &full, "ostest").await;
    lift_nova_quotas(&full).await;
    let auth_url = cloud(&full, "ostest").auth_url;
    let parsed = reqwest::Url::parse(&auth_url).expect("auth_url");
    let addr = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port_or_known_default().expect("port")
    );
    let outage_secs = common::env_or("FAULT_OUTAGE_SECS", 60) as u64;

    let mut outage = KeystoneOutage::begin(&addr);
    let down_at = std::time::Instant::now();
    let (ids, tasks) = request_vms(&app, &token, &alice, (&image, &flavor), 5).await;
    let mut waiting = std::collections::HashSet::new();
    while waiting.len() < tasks.len() {
        for task_id in &tasks {
            let (_, task) = app.get(&format!("/tasks/{task_id}"), &token).await;
            assert_ne!(task["status"], "failed", "{task}");
            let message = task["message"].as_str().unwrap_or_default();
            if message.contains("Keystone unreachable since") {
                waiting.insert(task_id.clone());
            }
        }
        assert!(
            down_at.elapsed().as_secs() < outage_secs + 30,
            "tasks never said that Keystone is unreachable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let told_in = down_at.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(outage_secs).saturating_sub(told_in)).await;
    for task_id in &tasks {
        let (_, task) = app.get(&format!("/tasks/{task_id}"), &token).await;
        assert!(
            matches!(task["status"].as_str(), Some("queued" | "running")),
            "{task}"
        );
    }
    outage.end(&auth_url).await;
    let back = std::time::Instant::now();
    for task_id in &tasks {
        let task = app.wait_task(task_id, &token, 300).await;
        assert_eq!(task["status"], "finished", "{task}");
    }
    let recovered_in = back.elapsed();
    println!(
        "faults: keystone down {} s during {} VM provisions: every task said so after {} ms; \
         none failed; last finished {} ms after Keystone was back",
        outage_secs,
        tasks.len(),
        told_in.as_millis(),
        recovered_in.as_millis()
    );
    for id in &ids {
        let (s, task) = app.delete(&format!("/resources/{id}"), &token).await;
        assert_eq!(s, 202, "{task}");
    }
    common::drain(&pool, std::time::Duration::from_secs(300)).await;
}

/// The QKD link with its SAE hosts as VMs: one request that mixes Pods (the KMEs, on the
/// Kubernetes API of KUBECONFIG) and Nova servers (the SAE hosts, with Alice's clouds.yaml),
/// each SAE host told its own KME's key delivery URL in its cloud-init user data.
#[ignore = "needs the OpenStack test cloud and a Kubernetes API: scripts/test openstack runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn the_qkd_link_puts_its_sae_hosts_on_vms(pool: PgPool) {
    let path = clouds_path();
    let full = site_yaml(&path);
    let options = Options {
        no_kubernetes: false,
        ..vm_options(
            &path,
            &["--ssh-proxy-jump", "jump@bastion.example.org:2222"],
        )
    };
    let app = TestApp::start(pool, options).await;
    let (token, alice, sae_image, sae_flavor) = vm_ready_user(&app, &full, "ostest").await;
    let (kme_image, kme_flavor) = app.k8s_catalog("registry.example/qkd-kme:1").await;
    let (_, templates) = app.get("/templates", &token).await;
    let qkd = templates
        .as_array()
        .and_then(|all| all.iter().find(|t| t["builtin"] == json!(true)))
        .expect("the built-in QKD link");
    let prefix = vm_name("q");
    let (s, created) = app
        .post(
            &format!("/templates/{}/instantiate", qkd["id"].as_str().expect("id")),
            &token,
            json!({
                "expires_at": in_an_hour(),
                "parameters": {"name_prefix": prefix, "kme_image": kme_image, "kme_flavor": kme_flavor,
                               "sae_image": sae_image, "sae_flavor": sae_flavor, "sae_network": "private"},
                "ssh_authorized_keys": [SSH_KEY],
                "tokens": [{"jwt": alice}],
            }),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let resources = created["resources"].as_array().expect("resources");
    let kinds: Vec<(&str, &str)> = resources
        .iter()
        .map(|r| {
            (
                r["friendly_name"].as_str().unwrap_or_default(),
                r["flavor_type"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let (a, b) = (format!("{prefix}-sae-a"), format!("{prefix}-sae-b"));
    assert_eq!(
        kinds,
        [
            (format!("{prefix}-kme-a").as_str(), "k8s"),
            (format!("{prefix}-kme-b").as_str(), "k8s"),
            (a.as_str(), "vm"),
            (b.as_str(), "vm")
        ]
    );
    for task in created["tasks"].as_array().expect("tasks") {
        let done = app
            .wait_task(task["id"].as_str().expect("id"), &token, 180)
            .await;
        assert_eq!(done["status"], "finished", "{done}");
    }
    // Nova has each SAE host with its own KME's URL in the user data.
    let client = OpenStackClient::new(common::test_cloud_policy()).expect("client");
    let admin = cloud(&full, "ostest-admin");
    for (sae, kme) in [(&resources[2], "kme-a"), (&resources[3], "kme-b")] {
        let (_, sae) = app
            .get(
                &format!("/resources/{}", sae["id"].as_str().expect("id")),
                &token,
            )
            .await;
        let server_id = sae["details"]["server_id"].as_str().expect("server_id");
        let user_data = user_data_of(&client, &admin, server_id).await;
        assert!(
            user_data.contains(&format!("KME_URL=https://{prefix}-{kme}:8443/api/v1/keys")),
            "{user_data}"
        );
    }
    // The dashboard's ssh_config: one Host per VM (not the pods), through the jump host.
    let mut browser = common::Browser::new(&app);
    assert_eq!(browser.sign_in(&alice, &token).await, 200);
    let (s, _, config) = browser.get("/experiment/ssh_config").await;
    assert_eq!(s, 200, "{config}");
    for sae in [&resources[2], &resources[3]] {
        let (_, sae) = app
            .get(
                &format!("/resources/{}", sae["id"].as_str().expect("id")),
                &token,
            )
            .await;
        let ip = sae["details"]["addresses"][0].as_str().expect("address");
        let name = sae["friendly_name"].as_str().expect("name");
        let entry = format!("Host {name}\n    HostName {ip}\n");
        assert!(config.contains(&entry), "{entry:?} not in {config}");
    }
    assert_eq!(
        config
            .matches("ProxyJump jump@bastion.example.org:2222")
            .count(),
        2,
        "{config}"
    );
    assert!(!config.contains("kme-"), "pods are no SSH hosts: {config}");
    for r in resources {
        app.delete_and_wait(r["id"].as_str().expect("id"), &token, 180)
            .await;
    }
}
