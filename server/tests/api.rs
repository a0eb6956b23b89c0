//! The REST API against a real PostgreSQL (fresh database per test) and a real token issuer
//! on loopback: authentication, the catalog rules, validation of `POST /resources`,
//! visibility between experiments. The worker is off here; provisioning is in pods.rs.

mod common;

use common::{experiment_id, in_an_hour, Options, TestApp, ADMIN, ALICE, BOB};
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

fn api_only() -> Options {
    Options {
        no_worker: true,
        ..Options::default()
    }
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn tokens_are_verified_against_the_issuers_jwks(pool: PgPool) {
    let app = TestApp::start(pool, api_only()).await;
    let iss = &app.issuer;

    // No header, not a bearer, garbage: 401 with a JSON body saying which.
    let (s, body) = app.call(Method::GET, "/flavors", None, None).await;
    assert_eq!(s, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Authorization"),
        "{body}"
    );
    let (s, body) = app.get("/flavors", "not-a-jwt").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );

    // RS256 (user) and ES256 (experiment) tokens, keys chosen by kid.
    assert_eq!(app.get("/flavors", &iss.user(ALICE)).await.0, 200);
    assert_eq!(
        app.get("/flavors", &iss.experiment(&experiment_id(), ALICE))
            .await
            .0,
        200
    );

    // A verified token is remembered, but only that exact token: the same claims with a
    // changed signature are checked (and refused) again.
    let good = iss.user(BOB);
    assert_eq!(app.get("/flavors", &good).await.0, 200);
    assert_eq!(app.get("/flavors", &good).await.0, 200);
    let (head, signature) = good.rsplit_once('.').expect("jwt");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{flipped}{}", &signature[1..]);
    let (s, body) = app.get("/flavors", &tampered).await;
    assert_eq!(s, 401, "a tampered token passed: {body}");

    // Expired, other audience, other issuer, unknown subject type.
    let past = chrono::Utc::now().timestamp() - 3600;
    let cases = [
        (
            json!({"sub": ALICE, "exp": past, "iat": past - 60}),
            "expired",
        ),
        (
            json!({"sub": ALICE, "aud": "https://elsewhere.example"}),
            "audience",
        ),
        (
            json!({"sub": ALICE, "iss": "https://evil.example"}),
            "issuer",
        ),
        (json!({"sub": "svc_x_y"}), "neither a user"),
    ];
    for (claims, words) in cases {
        let token = iss.sign(Algorithm::ES256, claims);
        let (s, body) = app.get("/flavors", &token).await;
        assert_eq!(s, 401, "{body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(words),
            "{words}: {body}"
        );
    }

    // A token signed by a key the issuer does not publish.
    let (rogue, _) = common::new_ec_key("rogue");
    let forged = iss.sign_with(&rogue, "ec-1", Algorithm::ES256, &mut json!({"sub": ALICE}));
    let (s, body) = app.get("/flavors", &forged).await;
    assert_eq!(s, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{body}"
    );
    let unknown = iss.sign_with(
        &rogue,
        "never-published",
        Algorithm::ES256,
        &mut json!({"sub": ALICE}),
    );
    assert_eq!(app.get("/flavors", &unknown).await.0, 401);

    // Key rotation: a newly published kid is fetched on first sight (after the 1 s cooldown).
    let (next, jwk) = common::new_ec_key("ec-2");
    iss.publish(jwk);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotated = iss.sign_with(&next, "ec-2", Algorithm::ES256, &mut json!({"sub": ALICE}));
    let (s, body) = app.get("/flavors", &rotated).await;
    assert_eq!(s, 200, "{body}");
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn catalog_writes_are_for_admins_and_hidden_images_for_admins_only(pool: PgPool) {
    let app = TestApp::start(pool, api_only()).await;
    let admin = app.issuer.user(ADMIN);
    let alice = app.issuer.user(ALICE);
    let flavor =
        json!({"friendly_name": "k8s.small", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 128});

    let (s, body) = app.post("/flavors", &alice, flavor.clone()).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // An experiment token whose acting user is an admin may write too.
    let admin_exp = app.issuer.experiment(&experiment_id(), ADMIN);
    let (s, created) = app.post("/flavors", &admin_exp, flavor.clone()).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    assert!(
        id.starts_with("flavor_tld-city-bp1_") && id.len() == "flavor_tld-city-bp1_".len() + 26
    );

    // Bad values name the field; unknown fields and wrong types too.
    for (body, field) in [
        (
            json!({"friendly_name": "x", "flavor_type": "k8s", "vcpus": 0, "ram_mib": 1}),
            "vcpus",
        ),
        (
            json!({"friendly_name": " ", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 1}),
            "friendly_name",
        ),
        (
            json!({"friendly_name": "x", "flavor_type": "gpu", "vcpus": 1, "ram_mib": 1}),
            "flavor_type",
        ),
        (
            json!({"friendly_name": "x", "flavor_type": "k8s", "vcpus": "two", "ram_mib": 1}),
            "vcpus",
        ),
        (
            json!({"friendly_name": "x", "flavor_type": "k8s", "vcpus": 1}),
            "body",
        ),
        (
            json!({"friendly_name": "x", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 1, "colour": "red"}),
            "colour",
        ),
    ] {
        let (s, err) = app.post("/flavors", &admin, body).await;
        assert_eq!(s, 422, "{err}");
        assert_eq!(err["field"].as_str(), Some(field), "{err}");
    }
    let (s, err) = app.call(Method::POST, "/flavors", Some(&admin), None).await;
    assert_eq!(s, 400, "{err}");

    // PATCH changes only what it names.
    let (s, patched) = app
        .call(
            Method::PATCH,
            &format!("/flavors/{id}"),
            Some(&admin),
            Some(json!({"ram_mib": 256})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(
        (patched["ram_mib"].as_i64(), patched["vcpus"].as_i64()),
        (Some(256), Some(1))
    );

    // Hidden images: listed and readable for admins only.
    let (s, image) = app
        .post(
            "/disk-images",
            &admin,
            json!({"friendly_name": "secret", "location": "busybox", "hidden": true}),
        )
        .await;
    assert_eq!(s, 201, "{image}");
    let image_id = image["id"].as_str().expect("id");
    let (_, list) = app.get("/disk-images", &alice).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    let (_, list) = app.get("/disk-images", &admin).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        app.get(&format!("/disk-images/{image_id}"), &alice).await.0,
        404
    );

    // Ids: wrong type or malformed → 400; another site's → 404.
    let (s, err) = app.get(&format!("/flavors/{image_id}"), &alice).await;
    assert_eq!(s, 400, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("image id"),
        "{err}"
    );
    assert_eq!(app.get("/flavors/flavor_x", &alice).await.0, 400);
    let other_site = id.replace("tld-city-bp1", "be-gent1-bi-vm1");
    assert_eq!(
        app.get(&format!("/flavors/{other_site}"), &alice).await.0,
        404
    );

    // Delete: 204, then 404.
    assert_eq!(
        app.delete(&format!("/disk-images/{image_id}"), &admin)
            .await
            .0,
        204
    );
    assert_eq!(
        app.delete(&format!("/disk-images/{image_id}"), &admin)
            .await
            .0,
        404
    );
}

fn request(image: &str, flavor: &str, names: &[&str]) -> Value {
    json!({
        "expires_at": in_an_hour(),
        "resources": names.iter().map(|n| json!({"friendly_name": n, "disk_image_id": image, "flavor_id": flavor})).collect::<Vec<_>>(),
        "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE test@example"],
    })
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn resource_requests_are_validated_field_by_field(pool: PgPool) {
    let app = TestApp::start(pool, api_only()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);

    // A user token may read but not write.
    let (s, err) = app
        .post(
            "/resources",
            &app.issuer.user(ALICE),
            request(&image, &flavor, &["a"]),
        )
        .await;
    assert_eq!(s, 403, "{err}");

    let mut cases: Vec<(Value, u16, &str)> = vec![
        (request(&image, &flavor, &[]), 422, "resources"),
        (
            request(&image, &flavor, &["Bad_Name!"]),
            422,
            "resources[0].friendly_name",
        ),
        (
            request(&image, &flavor, &[""]),
            422,
            "resources[0].friendly_name",
        ),
        (
            request(&image, &flavor, &["ok", "ok"]),
            422,
            "resources[1].friendly_name",
        ),
        (
            request(&flavor, &flavor, &["a"]),
            422,
            "resources[0].disk_image_id",
        ),
        (
            request(
                &image,
                "flavor_tld-city-bp1_00000000000000000000000000",
                &["a"],
            ),
            422,
            "resources[0].flavor_id",
        ),
    ];
    let mut past = request(&image, &flavor, &["a"]);
    past["expires_at"] = json!("2020-01-01T00:00:00Z");
    cases.push((past, 422, "expires_at"));
    let mut too_late = request(&image, &flavor, &["a"]);
    too_late["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::days(200)).to_rfc3339());
    cases.push((too_late, 422, "expires_at"));
    let mut bad_time = request(&image, &flavor, &["a"]);
    bad_time["expires_at"] = json!("next tuesday");
    cases.push((bad_time, 422, "expires_at"));
    let mut bad_key = request(&image, &flavor, &["a"]);
    bad_key["ssh_authorized_keys"] = json!(["hello"]);
    cases.push((bad_key, 422, "ssh_authorized_keys[0]"));
    let mut bad_user = request(&image, &flavor, &["a"]);
    bad_user["tokens"] = json!([{"jwt": "nope"}]);
    cases.push((bad_user, 422, "tokens[0].jwt"));
    let mut wrong_kind = request(&image, &flavor, &["a"]);
    wrong_kind["tokens"] = json!([{"jwt": token}]);
    cases.push((wrong_kind, 422, "tokens[0].jwt"));
    let mut missing = request(&image, &flavor, &["a"]);
    missing["resources"][0]
        .as_object_mut()
        .expect("obj")
        .remove("flavor_id");
    cases.push((missing, 422, "resources[0]"));
    for (body, status, field) in cases {
        let (s, err) = app.post("/resources", &token, body).await;
        assert_eq!(s, status, "{field}: {err}");
        assert_eq!(err["field"].as_str(), Some(field), "{err}");
        assert!(!err["detail"].as_str().unwrap_or_default().is_empty());
    }
    // Nothing was created by any of them (all or nothing).
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // Oversized body → 413; not JSON → 400.
    let mut huge = request(&image, &flavor, &["a"]);
    huge["resources"][0]["userdata"] = json!("x".repeat(300 * 1024));
    let (s, err) = app.post("/resources", &token, huge).await;
    assert_eq!(s, 413, "{err}");
    let response = app
        .http
        .post(format!("{}/resources", app.api))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);

    // A good request: 202, one task per resource; the requester comes from `tokens` (an
    // experiment token naming no acting user lets the body say who pays; one naming its
    // acting user needs that user's own token there: see tests/security.rs).
    let mut good = request(&image, &flavor, &["qkd-alice", "qkd-bob"]);
    good["tokens"] = json!([{"jwt": app.issuer.user(BOB)}]);
    let no_acting_user = app.issuer.sign(
        Algorithm::ES256,
        json!({"sub": exp, "proj": "proj_test_qkd", "experiment_name": "qkd"}),
    );
    let (s, created) = app.post("/resources", &no_acting_user, good).await;
    assert_eq!(s, 202, "{created}");
    assert_eq!(created["tasks"].as_array().map(Vec::len), Some(2));
    assert_eq!(created["resources"][0]["requested_by"].as_str(), Some(BOB));
    assert_eq!(created["tasks"][0]["status"].as_str(), Some("queued"));
    // The answer is built from the inserted rows: it must equal what a read returns.
    for (resource, task) in created["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(created["tasks"].as_array().into_iter().flatten())
    {
        let id = resource["id"].as_str().expect("id");
        assert_eq!(
            &app.get(&format!("/resources/{id}"), &token).await.1,
            resource
        );
        let task_id = task["id"].as_str().expect("task id");
        assert_eq!(&app.get(&format!("/tasks/{task_id}"), &token).await.1, task);
        assert_eq!(resource["last_task_id"], task["id"], "{resource}");
    }
    // The same live name again → 409 naming the field, also when it is not the first.
    let (s, err) = app
        .post("/resources", &token, request(&image, &flavor, &["qkd-bob"]))
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (409, Some("resources[0].friendly_name")),
        "{err}"
    );
    let (s, err) = app
        .post(
            "/resources",
            &token,
            request(&image, &flavor, &["qkd-eve", "qkd-alice"]),
        )
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (409, Some("resources[1].friendly_name")),
        "{err}"
    );
    assert!(
        err["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("qkd-alice"),
        "{err}"
    );
    // All or nothing: `qkd-eve` was not created either.
    let (_, list) = app.get("/resources", &token).await;
    assert!(
        !list.to_string().contains("qkd-eve"),
        "a refused request left a resource behind: {list}"
    );

    // Another experiment sees none of it: empty list, 404 on the id and its task.
    let resource_id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let task_id = created["tasks"][0]["id"].as_str().expect("id").to_string();
    let other = app.issuer.experiment(&experiment_id(), ALICE);
    let (_, list) = app.get("/resources", &other).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    assert_eq!(
        app.get(&format!("/resources/{resource_id}"), &other)
            .await
            .0,
        404
    );
    assert_eq!(app.get(&format!("/tasks/{task_id}"), &other).await.0, 404);
    assert_eq!(
        app.delete(&format!("/resources/{resource_id}"), &other)
            .await
            .0,
        404
    );
    // The requesting user's own token sees what they requested (read only).
    let bob = app.issuer.user(BOB);
    let (_, list) = app.get("/resources", &bob).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(
        app.delete(&format!("/resources/{resource_id}"), &bob)
            .await
            .0,
        403
    );

    // Pagination: a full page carries a Link to the next one.
    let response = app
        .http
        .get(format!("{}/resources?limit=1", app.api))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    let link = response
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        link.contains("offset=1") && link.contains("rel=\"next\""),
        "{link}"
    );
    let (s, _) = app.get("/resources?limit=0", &token).await;
    assert_eq!(s, 400);
    // A bad page is refused even when the filter names another experiment (which would
    // answer an empty page): schemathesis found it answered 200 `[]`.
    for bad in ["offset=-455", "limit=0"] {
        let (s, body) = app
            .get(&format!("/resources?experiment_id=exp_other&{bad}"), &token)
            .await;
        assert_eq!(s, 400, "{bad}: {body}");
    }

    // PATCH extends within the experiment's life; DELETE answers with the same task twice.
    let later = (chrono::Utc::now() + chrono::Duration::hours(5)).to_rfc3339();
    let (s, r) = app
        .call(
            Method::PATCH,
            &format!("/resources/{resource_id}"),
            Some(&token),
            Some(json!({"expires_at": later})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, first) = app
        .delete(&format!("/resources/{resource_id}"), &token)
        .await;
    assert_eq!(
        (s, first["kind"].as_str()),
        (202, Some("delete")),
        "{first}"
    );
    let (_, second) = app
        .delete(&format!("/resources/{resource_id}"), &token)
        .await;
    assert_eq!(first["id"], second["id"]);
    let (_, tasks) = app
        .get(&format!("/tasks?resource_id={resource_id}"), &token)
        .await;
    assert_eq!(tasks.as_array().map(Vec::len), Some(2), "{tasks}");
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn openapi_and_docs_are_served_offline(pool: PgPool) {
    let app = TestApp::start(pool, api_only()).await;
    let doc = app.openapi().await;
    assert!(
        doc["paths"]["/apis/bi.slices.eu/v1alpha2/resources"]["post"].is_object(),
        "{doc}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"].as_str(),
        Some("bearer")
    );
    let docs = app
        .http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .expect("send");
    assert_eq!(docs.status().as_u16(), 200);
    let page = docs.text().await.expect("text");
    assert!(
        !page.contains("cdn.") && !page.contains("unpkg"),
        "Swagger UI must not load from a CDN"
    );
    let redoc = app
        .http
        .get(format!("{}/redoc", app.base))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(redoc.contains("/vendor/redoc/redoc.standalone.js"));
    let health: Value = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(health["database"].as_str(), Some("ok"));
    // Each backend says how it is connected (OpenStack used to read "not configured" always).
    assert_eq!(
        health["openstack"].as_str(),
        Some("configured (each user's clouds.yaml)"),
        "{health}"
    );
    assert!(health["kubernetes"].is_string(), "{health}");
}

/// `GET /resources` pages are served from memory (app/src/ssr/list_cache.rs) but never stale:
/// not to the client that wrote, and not after another process's committed write (each hit
/// first catches up with PostgreSQL's notifications).
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn resource_list_pages_follow_every_change(pool: PgPool) {
    let app = TestApp::start(pool.clone(), api_only()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let exp = experiment_id();
    let token = app.issuer.experiment(&exp, ALICE);
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|r| r["friendly_name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // The listener connects in the background; until then pages are not kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app.state.list_cache.is_on() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let (s, list) = app.get("/resources", &token).await;
    assert_eq!((s, names(&list)), (200, vec![]), "{list}");

    // Own writes: visible in the very next read.
    let (s, created) = app
        .post("/resources", &token, request(&image, &flavor, &["one"]))
        .await;
    assert_eq!(s, 202, "{created}");
    let id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(names(&list), vec!["one"]);
    let (s, _) = app
        .post("/resources", &token, request(&image, &flavor, &["two"]))
        .await;
    assert_eq!(s, 202);
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(names(&list), vec!["one", "two"]);

    // Another experiment's token never gets this experiment's page.
    let other = app.issuer.experiment(&experiment_id(), BOB);
    let (_, list) = app.get("/resources", &other).await;
    assert_eq!(names(&list), Vec::<String>::new());

    // A write by another process (here: plain SQL, as another replica's would be) is in the
    // very next read: a kept page is served only after the cache caught up with every change
    // committed before the request (`ListCache::catch_up`), not when the notification happens
    // to arrive. Twenty times, each right after the page was kept again.
    for round in 0..20 {
        let (_, list) = app.get("/resources", &token).await; // kept again
        let message = format!("changed elsewhere {round}");
        assert_ne!(list[0]["status_message"], message.as_str());
        sqlx::query("UPDATE resources SET status_message = $1 WHERE friendly_name = 'one'")
            .bind(&message)
            .execute(&pool)
            .await
            .expect("update");
        let (_, list) = app.get("/resources", &token).await;
        assert_eq!(
            list[0]["status_message"],
            message.as_str(),
            "round {round}: a page from before another process's committed write"
        );
    }

    // The page really is kept: a write that raises no notification (triggers off for the
    // transaction) is not seen at once, and is seen once the 2 s limit has passed.
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list[1]["status_message"], "waiting for a worker");
    let mut tx = pool.begin().await.expect("tx");
    for sql in [
        "ALTER TABLE resources DISABLE TRIGGER resources_changed",
        "UPDATE resources SET status_message = 'silent' WHERE friendly_name = 'two'",
        "ALTER TABLE resources ENABLE TRIGGER resources_changed",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect(sql);
    }
    tx.commit().await.expect("commit");
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(
        list[1]["status_message"], "waiting for a worker",
        "served from memory"
    );
    tokio::time::sleep(app::ssr::list_cache::MAX_AGE).await;
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list[1]["status_message"], "silent", "dropped after MAX_AGE");

    // Own delete: the next read shows it deleting.
    let (s, task) = app.delete(&format!("/resources/{id}"), &token).await;
    assert_eq!(s, 202, "{task}");
    let (_, list) = app.get("/resources", &token).await;
    assert_eq!(list[0]["allocation_state"], "deleting", "{list}");
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_requests_ssh_keys_are_stored_once(pool: PgPool) {
    let app = TestApp::start(pool.clone(), api_only()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let keys = [
        "ssh-ed25519 AAAAC3Nza alice@lab",
        "ssh-rsa AAAAB3Nza alice@laptop",
    ];
    let specs: Vec<Value> = ["k-0", "k-1", "k-2"]
        .iter()
        .map(|n| json!({"friendly_name": n, "disk_image_id": image, "flavor_id": flavor}))
        .collect();
    let (s, created) = app
        .post(
            "/resources",
            &token,
            json!({
                "expires_at": in_an_hour(),
                "ssh_authorized_keys": keys,
                "resources": specs,
            }),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    // Every resource still shows the keys it will get…
    for resource in created["resources"].as_array().expect("resources") {
        assert_eq!(resource["ssh_authorized_keys"], json!(keys), "{resource}");
        let id = resource["id"].as_str().expect("id");
        let (_, fetched) = app.get(&format!("/resources/{id}"), &token).await;
        assert_eq!(fetched["ssh_authorized_keys"], json!(keys), "{fetched}");
    }
    // …but the keys are stored once, in the request's row, which all three name.
    let (requests, distinct): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM resource_requests), count(DISTINCT request_id) FROM resources",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((requests, distinct), (1, 1));
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT unnest(ssh_authorized_keys) FROM resource_requests")
            .fetch_all(&pool)
            .await
            .expect("keys");
    assert_eq!(stored, keys);
    let column: Option<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_name = 'resources' AND column_name = 'ssh_authorized_keys'",
    )
    .fetch_optional(&pool)
    .await
    .expect("catalog");
    assert_eq!(column, None, "resources keep no copy of the keys");
}
