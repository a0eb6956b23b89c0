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
    TestApp::start(
        pool,
        Options {
            no_kubernetes: true,
            vm_ready_timeout_secs: Some(120),
            site_clouds_yaml: Some(site_clouds.to_string()),
            allowed_endpoints: Some(common::test_cloud_endpoints()),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            ..Options::default()
        },
    )
    .await
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

/// Nova's view of a server by id (`None` once it answers 404), read with `cloud`.
async fn nova_server(client: &OpenStackClient, cloud: &Cloud, id: &str) -> Option<Value> {
    let token = client.authenticate(cloud).await.expect("token");
    let compute = token.endpoint("compute", cloud).expect("compute");
    client
        .call(
            cloud,
            &token,
            reqwest::Method::GET,
            &format!("{compute}/servers/{id}"),
            None,
        )
        .await
        .expect("GET server")
        .map(|b| b["server"].clone())
}

/// Servers of the demo project called `name`.
async fn servers_named(client: &OpenStackClient, cloud: &Cloud, name: &str) -> Vec<Value> {
    let token = client.authenticate(cloud).await.expect("token");
    let compute = token.endpoint("compute", cloud).expect("compute");
    let body = client
        .call(
            cloud,
            &token,
            reqwest::Method::GET,
            &format!("{compute}/servers/detail?name=^{name}$"),
            None,
        )
        .await
        .expect("list")
        .unwrap_or(Value::Null);
    body["servers"].as_array().cloned().unwrap_or_default()
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
    let as_admin = nova_server(&client, &admin, &server_id)
        .await
        .expect("server seen by the admin");
    let user_data = as_admin["OS-EXT-SRV-ATTR:user_data"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| panic!("no user_data: {as_admin}"));
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
    let (s, deleted) = app
        .delete(&format!("/resources/{resource_id}"), &token)
        .await;
    assert_eq!(s, 202, "{deleted}");
    let task = app
        .wait_task(deleted["id"].as_str().expect("task"), &token, 180)
        .await;
    assert_eq!(task["status"], "finished", "{task}");
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
            let token = client.authenticate(demo).await.expect("token");
            let compute = token.endpoint("compute", demo).expect("compute");
            client
                .call(
                    demo,
                    &token,
                    method,
                    &format!("{compute}/servers/{suffix}"),
                    body.as_ref(),
                )
                .await
                .expect("nova")
        }
    };
    let until = |want: &'static str, field: &'static str, limit: u64| {
        let (app, token, resource_id) = (&app, &token, &resource_id);
        async move {
            let start = std::time::Instant::now();
            loop {
                let (_, r) = app.get(&format!("/resources/{resource_id}"), token).await;
                if r[field] == want {
                    return (start.elapsed(), r);
                }
                assert!(
                    start.elapsed().as_secs() < limit,
                    "still {r} after {limit} s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
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
