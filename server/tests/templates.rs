//! Templates through the REST API on a real PostgreSQL: the built-in QKD link, publishing
//! (site: admins; project and experiment: members), immutable versions, parameter checks,
//! instantiation all or nothing; the QKD link end to end on a real Kubernetes API server
//! (2 Pods Running, 2 Services, the env wiring on the Pod specs); and Pod options
//! (`env`, `command`, `args`, `ports`) refused on VMs and with bad values.

mod common;

use common::{experiment_id, in_an_hour, Options, TestApp, ALICE, BOB};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sqlx::PgPool;

fn my_template(name: &str) -> Value {
    json!({
        "name": name,
        "description": "one web pod",
        "parameters": [
            {"name": "image", "type": "disk_image"},
            {"name": "flavor", "type": "flavor"},
            {"name": "replicas", "type": "integer", "min": 1, "max": 3, "default": 1}
        ],
        "resources": [
            {"friendly_name": "web-{{index}}", "disk_image": "{{image}}", "flavor": "{{flavor}}",
             "count": "{{replicas}}", "env": [{"name": "NODE", "value": "web-{{index}}"}]}
        ]
    })
}

fn qkd_link(templates: &Value) -> Value {
    templates
        .as_array()
        .and_then(|all| all.iter().find(|t| t["builtin"] == json!(true)))
        .cloned()
        .unwrap_or_else(|| panic!("no built-in template in {templates}"))
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn templates_are_published_versioned_and_scoped(pool: PgPool) {
    let app = TestApp::start(
        pool.clone(),
        Options {
            no_worker: true,
            no_kubernetes: true,
            ..Options::default()
        },
    )
    .await;
    let exp = experiment_id();
    let alice = app.issuer.experiment(&exp, ALICE);

    // Everyone sees the built-in QKD link, with its parameters.
    let (s, all) = app.get("/templates", &alice).await;
    assert_eq!(s, 200, "{all}");
    let qkd = qkd_link(&all);
    assert_eq!(qkd["name"], "QKD link");
    assert_eq!(qkd["scope"], "site");
    assert!(qkd["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("template_tld-city-bp1_")));
    let params: Vec<&str> = qkd["latest"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        params.contains(&"kme_image") && params.contains(&"sae_flavor"),
        "{params:?}"
    );

    // The OpenAPI document describes the five template operations.
    let doc = app.openapi().await;
    for (path, method) in [
        ("/templates", "get"),
        ("/templates", "post"),
        ("/templates/{id}", "get"),
        ("/templates/{id}/versions", "post"),
        ("/templates/{id}/instantiate", "post"),
    ] {
        let op = &doc["paths"][format!("/apis/bi.slices.eu/v1alpha2{path}")][method];
        assert_eq!(op["tags"][0], "templates", "{method} {path}: {op}");
    }
    assert!(doc["components"]["schemas"]["InstantiateRequest"].is_object());

    // An experiment's own template: version 1, then version 2; version 1 stays as it was.
    let (s, mine) = app.post("/templates", &alice, my_template("web")).await;
    assert_eq!(s, 201, "{mine}");
    assert_eq!(
        (mine["scope"].as_str(), mine["latest"]["version"].as_i64()),
        (Some("experiment"), Some(1))
    );
    let id = mine["id"].as_str().expect("id").to_string();
    let (s, again) = app.post("/templates", &alice, my_template("web")).await;
    assert_eq!((s, again["field"].as_str()), (409, Some("name")), "{again}");
    let mut v2 = my_template("web");
    v2["resources"][0]["env"][0]["value"] = json!("v2-{{index}}");
    let body = json!({"parameters": v2["parameters"], "resources": v2["resources"], "notes": "renamed env"});
    let (s, after) = app
        .post(&format!("/templates/{id}/versions"), &alice, body)
        .await;
    assert_eq!(s, 201, "{after}");
    assert_eq!(after["latest"]["version"], 2);
    let (_, whole) = app.get(&format!("/templates/{id}"), &alice).await;
    let versions = whole["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["version"], 1);
    assert_eq!(
        versions[1]["resources"][0]["env"][0]["value"],
        "web-{{index}}"
    );
    // Not even the database changes a version.
    let update = sqlx::query("UPDATE template_versions SET notes = 'x'")
        .execute(&pool)
        .await;
    assert!(update.is_err(), "a version was changed in place");

    // Bad definitions name their field.
    let mut bad = my_template("bad");
    bad["resources"][0]["friendly_name"] = json!("{{nope}}");
    let (s, err) = app.post("/templates", &alice, bad).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("resources[0]")),
        "{err}"
    );
    let mut bad = my_template("bad");
    bad["parameters"][2]["default"] = json!(9);
    let (s, err) = app.post("/templates", &alice, bad).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("parameters[2].default")),
        "{err}"
    );

    // Another experiment of the same project sees neither it nor may add versions; a project
    // template is shared with it; a user token publishes nothing; site templates need admins.
    let other = app.issuer.experiment(&experiment_id(), BOB);
    let (s, _) = app.get(&format!("/templates/{id}"), &other).await;
    assert_eq!(s, 404);
    let mut shared = my_template("shared");
    shared["scope"] = json!("project");
    let (s, shared) = app.post("/templates", &alice, shared).await;
    assert_eq!(s, 201, "{shared}");
    let (s, seen) = app
        .get(
            &format!("/templates/{}", shared["id"].as_str().expect("id")),
            &other,
        )
        .await;
    assert_eq!(s, 200, "{seen}");
    let stranger = app.issuer.sign(
        Algorithm::ES256,
        json!({"sub": experiment_id(), "proj": "proj_test_other", "user_id": BOB}),
    );
    let (s, _) = app
        .get(
            &format!("/templates/{}", shared["id"].as_str().expect("id")),
            &stranger,
        )
        .await;
    assert_eq!(s, 404, "another project's template is not found");
    let (s, _) = app
        .post("/templates", &app.issuer.user(ALICE), my_template("u"))
        .await;
    assert_eq!(s, 403);
    let mut site = my_template("site-web");
    site["scope"] = json!("site");
    let (s, _) = app.post("/templates", &alice, site.clone()).await;
    assert_eq!(s, 403);
    let admin = app.issuer.experiment(&exp, common::ADMIN);
    let (s, published) = app.post("/templates", &admin, site).await;
    assert_eq!(s, 201, "{published}");
    let (s, _) = app
        .post(
            &format!("/templates/{}/versions", qkd["id"].as_str().expect("id")),
            &alice,
            json!({"parameters": [], "resources": [{}]}),
        )
        .await;
    assert_eq!(s, 403, "only admins publish versions of site templates");

    // Instantiation checks the parameters first (nothing is created).
    let (s, err) = app
        .post(
            &format!("/templates/{id}/instantiate"),
            &alice,
            json!({"expires_at": in_an_hour(), "parameters": {"replicas": 7}}),
        )
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("parameters.image")),
        "{err}"
    );
    let (s, err) = app
        .post(&format!("/templates/{id}/instantiate"), &alice,
              json!({"expires_at": in_an_hour(), "parameters": {"image": "x", "flavor": "y", "replicas": 7}}))
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("parameters.replicas")),
        "{err}"
    );
    let (s, err) = app
        .post(&format!("/templates/{id}/instantiate"), &alice,
              json!({"expires_at": in_an_hour(), "parameters": {"image": "no such image", "flavor": "y"}}))
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("parameters.image")),
        "{err}"
    );
    let (s, err) = app
        .post(
            &format!("/templates/{id}/instantiate"),
            &alice,
            json!({"expires_at": in_an_hour(), "version": 9, "parameters": {}}),
        )
        .await;
    assert_eq!((s, err["field"].as_str()), (422, Some("version")), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 0);
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn pod_options_are_checked_and_refused_on_vms(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let admin = app.issuer.user(common::ADMIN);
    let (_, image) = app
        .post("/disk-images", &admin, json!({"friendly_name": "ubuntu", "location": "ubuntu-24.04", "default_username": "ubuntu"}))
        .await;
    let (_, flavor) = app
        .post(
            "/flavors",
            &admin,
            json!({"friendly_name": "m1.small", "flavor_type": "vm", "vcpus": 1, "ram_mib": 512}),
        )
        .await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let body = json!({
        "expires_at": in_an_hour(),
        "resources": [{"friendly_name": "vm1", "disk_image_id": image["id"], "flavor_id": flavor["id"],
                       "ports": [{"name": "http", "port": 80}]}],
    });
    let (s, err) = app.post("/resources", &token, body).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("resources[0].ports")),
        "{err}"
    );
    let body = json!({
        "expires_at": in_an_hour(),
        "resources": [{"friendly_name": "vm1", "disk_image_id": image["id"], "flavor_id": flavor["id"],
                       "ports": [{"name": "http", "port": "eighty"}]}],
    });
    let (s, err) = app.post("/resources", &token, body).await;
    assert_eq!(s, 422, "{err}");
    assert!(
        err["field"]
            .as_str()
            .is_some_and(|f| f.contains("ports[0].port")),
        "{err}"
    );
}

async fn pods_api(namespace: &str) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
    let client = kube::Client::try_default().await.expect("client");
    kube::Api::namespaced(client, namespace)
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn the_qkd_link_runs_two_wired_kmes_with_their_services(pool: PgPool) {
    use k8s_openapi::api::core::v1::Service;
    let app = TestApp::start(pool.clone(), Options::default()).await;
    let (image, flavor) = app.k8s_catalog("registry.example/qkd-kme:1").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let (_, all) = app.get("/templates", &token).await;
    let qkd = qkd_link(&all);
    let instantiate = format!("/templates/{}/instantiate", qkd["id"].as_str().expect("id"));

    // A taken name makes the whole request fail: nothing of it is created.
    let (s, first) = app
        .post(
            "/resources",
            &token,
            common::resources_request(&image, &flavor, &["qkd-kme-b"]),
        )
        .await;
    assert_eq!(s, 202, "{first}");
    let (s, err) = app
        .post(&instantiate, &token, json!({"expires_at": in_an_hour(), "parameters": {"kme_image": "test image", "kme_flavor": flavor}}))
        .await;
    assert_eq!(s, 409, "{err}");
    let kmes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resources WHERE friendly_name = 'qkd-kme-a'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(kmes, 0, "half a QKD link was stored");

    let (s, created) = app
        .post(&instantiate, &token, json!({
            "expires_at": in_an_hour(),
            "parameters": {"name_prefix": "link", "kme_image": "test image", "kme_flavor": flavor},
            "request_id": uuid::Uuid::now_v7(),
        }))
        .await;
    assert_eq!(s, 202, "{created}");
    let resources = created["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 2, "no SAE hosts without sae_image");
    for task in created["tasks"].as_array().expect("tasks") {
        let done = app
            .wait_task(task["id"].as_str().expect("id"), &token, 60)
            .await;
        assert_eq!(done["status"], "finished", "{done}");
    }
    let (_, a) = app
        .get(
            &format!("/resources/{}", resources[0]["id"].as_str().expect("id")),
            &token,
        )
        .await;
    assert_eq!(
        (a["friendly_name"].as_str(), a["operational_state"].as_str()),
        (Some("link-kme-a"), Some("ready"))
    );
    assert_eq!(a["details"]["service_name"], "link-kme-a");
    assert_eq!(
        a["ports"][0],
        json!({"name": "etsi014", "port": 8443, "protocol": "TCP"})
    );
    let namespace = a["details"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();

    // On the cluster: both Pods Running, each wired to the other; a Service each, selecting
    // its Pod, owned by it.
    let pods = pods_api(&namespace).await;
    for (me, peer) in [("link-kme-a", "link-kme-b"), ("link-kme-b", "link-kme-a")] {
        let pod = pods.get(me).await.expect("pod");
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env: std::collections::HashMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["KME_ID"], me);
        assert_eq!(env["PEER_KME_ID"], peer);
        assert_eq!(env["PEER_KME_ADDRESS"], format!("{peer}:9000"));
        assert_eq!(env["KEY_DELIVERY_PORT"], "8443");
        let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, [8443, 9000]);
        let client = kube::Client::try_default().await.expect("client");
        let service = kube::Api::<Service>::namespaced(client, &namespace)
            .get(me)
            .await
            .expect("service");
        let owner = &service.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(Some(&owner.uid), pod.metadata.uid.as_ref());
        let spec = service.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let service_ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(service_ports, [8443, 9000]);
    }

    // Deleting a KME takes its Service with it (the garbage collector follows the owner).
    app.delete_and_wait(resources[0]["id"].as_str().expect("id"), &token, 60)
        .await;
    let client = kube::Client::try_default().await.expect("client");
    let services = kube::Api::<Service>::namespaced(client, &namespace);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while services.get_opt("link-kme-a").await.expect("get").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the Service outlived its Pod"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(services.get_opt("link-kme-b").await.expect("get").is_some());
}

#[ignore = "needs Kubernetes: scripts/test runs it with --include-ignored"]
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn spec_files_logs_and_ssh_config_through_the_dashboard(pool: PgPool) {
    let app = TestApp::start(pool.clone(), Options::default()).await;
    let (_, flavor) = app.k8s_catalog("nginx:alpine").await;
    let (_, flavor) = app
        .get(&format!("/flavors/{flavor}"), &app.issuer.user(ALICE))
        .await;
    let flavor_name = flavor["friendly_name"].as_str().expect("name").to_string();
    let exp = experiment_id();
    let mut browser = common::Browser::new(&app);
    assert_eq!(
        browser
            .sign_in(&app.issuer.user(ALICE), &app.issuer.experiment(&exp, ALICE))
            .await,
        200
    );

    // Not signed in: the downloads are 401.
    let (s, _, _) = common::Browser::new(&app)
        .get("/experiment/spec.json")
        .await;
    assert_eq!(s, 401);

    // A spec file with one bad entry: checked entry by entry; importing it creates nothing.
    let spec = json!({"resources": [
        {"friendly_name": "imp-a", "site_id": "tld-city-bp1", "flavor": flavor_name, "disk_image": "test image",
         "env": [{"name": "ROLE", "value": "alice"}], "ports": [{"name": "http", "port": 8080}]},
        {"friendly_name": "imp-b", "flavor": "no-such-flavor", "disk_image": "test image"},
        {"friendly_name": "imp-c", "flavor": flavor_name, "disk_image": "test image", "cloudinit_file": "./init.yaml"},
        {"friendly_name": "imp-d", "site_id": "other-site", "flavor": flavor_name, "disk_image": "test image"},
    ]})
    .to_string();
    let (s, checks) = browser.call("spec-check", &[("spec", &spec)]).await;
    assert_eq!(s, 200, "{checks}");
    let errors: Vec<Option<&str>> = checks
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["error"].as_str())
        .collect();
    assert_eq!(errors[0], None, "{checks}");
    assert!(
        errors[1].is_some_and(|e| e.contains("no flavor `no-such-flavor`")),
        "{checks}"
    );
    assert!(
        errors[2].is_some_and(|e| e.contains("userdata")),
        "{checks}"
    );
    assert!(
        errors[3].is_some_and(|e| e.contains("other-site")),
        "{checks}"
    );
    let expires = (chrono::Utc::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let (s, err) = browser
        .call("spec-import", &[("spec", &spec), ("expires_at", &expires)])
        .await;
    assert_eq!(s, 422, "{err}");
    assert_eq!(err["Invalid"]["field"], "resources[1]", "{err}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 0);
    let (s, bad) = browser
        .call("spec-check", &[("spec", "{\"resources\": 3}")])
        .await;
    assert_eq!(
        (s, bad["Invalid"]["field"].as_str()),
        (422, Some("spec")),
        "{bad}"
    );

    // The good entry alone: requested, running, its log readable and the export round-trips.
    let good =
        json!({"resources": [serde_json::from_str::<Value>(&spec).expect("json")["resources"][0]]})
            .to_string();
    let (s, count) = browser
        .call("spec-import", &[("spec", &good), ("expires_at", &expires)])
        .await;
    assert!(s == 200 || s == 302, "{s} {count}");
    let token = app.issuer.experiment(&exp, ALICE);
    let (_, list) = app.get("/resources", &token).await;
    let a = &list.as_array().expect("list")[0];
    let task = app
        .wait_task(a["last_task_id"].as_str().expect("task"), &token, 60)
        .await;
    assert_eq!(task["status"], "finished", "{task}");
    let (s, kind, log) = browser
        .get(&format!(
            "/resources/{}/log?tail_lines=5",
            a["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        (s, kind.as_str()),
        (200, "text/plain; charset=utf-8"),
        "{log}"
    );
    assert!(log.contains("starting container main"), "{log}");
    let (s, _, exported) = browser.get("/experiment/spec.json").await;
    assert_eq!(s, 200);
    let exported: Value = serde_json::from_str(&exported).expect("spec json");
    let entry = &exported["resources"][0];
    assert_eq!(
        (entry["friendly_name"].as_str(), entry["flavor"].as_str()),
        (Some("imp-a"), Some(flavor_name.as_str()))
    );
    assert_eq!(entry["env"][0]["value"], "alice");
    assert_eq!(entry["ports"][0]["port"], 8080);
    // "Save as template": the running resources become version 1 of a new template.
    let (s, id) = browser
        .call(
            "save-as-template",
            &[("name", "from imp"), ("scope", "experiment")],
        )
        .await;
    assert_eq!(s, 200, "{id}");
    let (s, saved) = app
        .get(&format!("/templates/{}", id.as_str().expect("id")), &token)
        .await;
    assert_eq!(s, 200, "{saved}");
    assert_eq!(
        saved["latest"]["resources"][0]["friendly_name"], "imp-a",
        "{saved}"
    );
    assert_eq!(
        saved["latest"]["resources"][0]["env"][0]["value"], "alice",
        "{saved}"
    );
    let (s, again) = browser
        .call(
            "save-as-template",
            &[("name", "from imp"), ("scope", "experiment")],
        )
        .await;
    assert_eq!(
        (s, again["Conflict"]["field"].as_str()),
        (409, Some("name")),
        "{again}"
    );
    let (s, _, config) = browser.get("/experiment/ssh_config").await;
    assert_eq!(s, 200);
    assert!(
        config.starts_with("# ssh_config for the VMs of"),
        "{config}"
    );
    assert!(
        !config.contains("Host imp-a"),
        "pods get no ssh_config entry: {config}"
    );
}
