//! The access matrix of issue 13, walked on the real router and PostgreSQL: every principal
//! kind against every API route, on its own experiment's objects and another's, with the
//! status each must get (../shared/slices-api.md "Authentication"; `app::ssr::access`). Write
//! bodies are well-formed but fail the service's value checks (422) where the access rules let
//! them through, so the walk changes nothing but the one delete it ends with.

mod common;

use common::{experiment_id, in_an_hour, Browser, Options, TestApp, ADMIN, ALICE, BOB};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The principals, in the order of each row's expected statuses.
const WHO: [&str; 6] = [
    "no token",
    "user token",
    "admin user token",
    "admin's experiment token",
    "other experiment's token",
    "own experiment's token",
];

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn every_principal_kind_gets_what_the_access_model_says_on_every_route(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            // The walk sends many requests without a token on purpose.
            extra_args: ["--rate-limit-auth-failures-per-minute", "0"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    )
    .await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let own = experiment_id();
    let own_token = app.issuer.experiment(&own, ALICE);
    let created = app
        .create_resources(&own_token, &image, &flavor, &["m1"])
        .await;
    let r = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let t = created["tasks"][0]["id"].as_str().expect("id").to_string();
    let tokens: [Option<String>; 6] = [
        None,
        Some(app.issuer.user(ALICE)),
        Some(app.issuer.user(ADMIN)),
        Some(app.issuer.experiment(&experiment_id(), ADMIN)),
        Some(app.issuer.experiment(&experiment_id(), BOB)),
        Some(own_token),
    ];
    let bad_image = json!({ "friendly_name": "", "location": "x", "default_username": "root" });
    let bad_flavor =
        json!({ "friendly_name": "", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64 });
    let no_resources = json!({ "expires_at": in_an_hour(), "resources": [] });
    let past = json!({ "expires_at": "2001-01-01T00:00:00Z" });
    let (_, templates) = app
        .get("/templates", tokens[5].as_deref().unwrap_or_default())
        .await;
    let qkd = templates[0]["id"]
        .as_str()
        .expect("the built-in template")
        .to_string();
    let bad_template = json!({ "name": "", "parameters": [], "resources": [] });
    let no_version = json!({ "parameters": [], "resources": [] });
    let no_parameters = json!({ "expires_at": in_an_hour(), "parameters": {} });
    // (method, path, body, status for each of WHO)
    let matrix: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        (
            Method::GET,
            "/disk-images".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/disk-images/{image}"),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/disk-images".into(),
            Some(bad_image.clone()),
            [401, 403, 422, 422, 403, 403],
        ),
        (
            Method::PATCH,
            format!("/disk-images/{image}"),
            Some(json!({"friendly_name": ""})),
            [401, 403, 422, 422, 403, 403],
        ),
        (
            Method::DELETE,
            format!("/disk-images/{image}"),
            None,
            [401, 403, 409, 409, 403, 403],
        ),
        (
            Method::GET,
            "/flavors".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/flavors".into(),
            Some(bad_flavor),
            [401, 403, 422, 422, 403, 403],
        ),
        (
            Method::DELETE,
            format!("/flavors/{flavor}"),
            None,
            [401, 403, 409, 409, 403, 403],
        ),
        (
            Method::POST,
            "/catalog/import".into(),
            None,
            [401, 403, 409, 409, 403, 403],
        ),
        (
            Method::GET,
            "/resources".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        // A user sees what they requested (ALICE requested it); experiments see their own.
        (
            Method::GET,
            format!("/resources/{r}"),
            None,
            [401, 200, 404, 404, 404, 200],
        ),
        (
            Method::GET,
            format!("/tasks/{t}"),
            None,
            [401, 200, 404, 404, 404, 200],
        ),
        (
            Method::GET,
            format!("/resources/{r}/console"),
            None,
            [401, 409, 404, 404, 404, 409],
        ),
        (
            Method::POST,
            "/resources".into(),
            Some(no_resources),
            [401, 403, 403, 422, 422, 422],
        ),
        (
            Method::PATCH,
            format!("/resources/{r}"),
            Some(past),
            [401, 403, 403, 404, 404, 422],
        ),
        (
            Method::GET,
            "/audit".into(),
            None,
            [401, 403, 200, 200, 403, 403],
        ),
        (
            Method::GET,
            "/clouds-yaml".into(),
            None,
            [401, 404, 404, 404, 404, 404],
        ),
        (
            Method::DELETE,
            "/clouds-yaml".into(),
            None,
            [401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            format!("/resources/{r}/logs"),
            None,
            [401, 409, 404, 404, 404, 409],
        ),
        (
            Method::GET,
            "/templates".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/templates/{qkd}"),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        // Experiment templates: experiments publish, users do not.
        (
            Method::POST,
            "/templates".into(),
            Some(bad_template),
            [401, 403, 403, 422, 422, 422],
        ),
        // The built-in site template: only admins publish its versions.
        (
            Method::POST,
            format!("/templates/{qkd}/versions"),
            Some(no_version),
            [401, 403, 422, 422, 403, 403],
        ),
        (
            Method::POST,
            format!("/templates/{qkd}/instantiate"),
            Some(no_parameters),
            [401, 403, 403, 422, 422, 422],
        ),
        // Last: the one write that goes through.
        (
            Method::DELETE,
            format!("/resources/{r}"),
            None,
            [401, 403, 403, 404, 404, 202],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &matrix {
        for (i, token) in tokens.iter().enumerate() {
            let (status, answer) = app
                .call(method.clone(), path, token.as_deref(), body.clone())
                .await;
            if status != expected[i] {
                wrong.push(format!(
                    "{method} {path} with {}: {status} (expected {}) {answer}",
                    WHO[i], expected[i]
                ));
            }
            if status >= 400 {
                assert!(answer["detail"].is_string(), "{method} {path}: {answer}");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    println!(
        "access matrix: {} routes x {} principals = {} cells, all as expected",
        matrix.len(),
        WHO.len(),
        matrix.len() * WHO.len()
    );
}

/// A server function, its form fields, and the status for each kind of session.
type FnRow<'a> = (&'a str, Vec<(&'a str, &'a str)>, [u16; 5]);

/// The dashboard's side of the matrix: each kind of session against the server functions
/// that read, write resources, change the catalog or read the audit log. A remembered
/// membership counts as the experiment's token (its token has expired by then in
/// sessions.rs; here it is still valid).
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn every_kind_of_session_gets_what_the_access_model_says_on_the_server_functions(
    pool: PgPool,
) {
    let app = TestApp::without_worker(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let own = experiment_id();
    let own_token = app.issuer.experiment(&own, ALICE);
    let created = app
        .create_resources(&own_token, &image, &flavor, &["d1"])
        .await;
    let r = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Signed out; a user without an experiment; the admin; BOB with his own experiment;
    // ALICE with the resource's experiment.
    let who = [
        "signed out",
        "user",
        "admin",
        "other experiment",
        "own experiment",
    ];
    let bob_experiment = app.issuer.experiment(&experiment_id(), BOB);
    let sign_ins: [Option<(String, String)>; 5] = [
        None,
        Some((app.issuer.user(ALICE), String::new())),
        Some((app.issuer.user(ADMIN), String::new())),
        Some((app.issuer.user(BOB), bob_experiment)),
        Some((app.issuer.user(ALICE), own_token.clone())),
    ];
    let mut browsers = Vec::new();
    for sign_in in &sign_ins {
        let mut browser = Browser::new(&app);
        if let Some((user, experiment)) = sign_in {
            let status = browser.sign_in(user, experiment).await;
            assert!(matches!(status, 200 | 302 | 303), "{status}");
        }
        browsers.push(browser);
    }
    let past = "2001-01-01T00:00";
    let matrix: Vec<FnRow> = vec![
        ("resources", vec![], [401, 200, 200, 200, 200]),
        (
            "resource-detail",
            vec![("id", &r)],
            [401, 200, 404, 404, 200],
        ),
        ("admin-catalog", vec![], [401, 403, 200, 403, 403]),
        (
            "admin-delete",
            vec![("kind", "image"), ("id", &image)],
            [401, 403, 409, 403, 403],
        ),
        (
            "audit-entries",
            vec![("filter[limit]", "10")],
            [401, 403, 200, 403, 403],
        ),
        (
            "audit-entries",
            vec![("filter[limit]", "ten")],
            [400, 400, 400, 400, 400],
        ),
        ("my-clouds", vec![], [401, 200, 200, 200, 200]),
        (
            "extend-resource",
            vec![("id", &r), ("by", "custom"), ("until", past)],
            [401, 403, 403, 404, 422],
        ),
        (
            "delete-resource",
            vec![("id", &r)],
            [401, 403, 403, 404, 200],
        ),
    ];
    let mut wrong = Vec::new();
    for (endpoint, form, expected) in &matrix {
        for (i, browser) in browsers.iter_mut().enumerate() {
            let (status, answer) = browser.call(endpoint, form).await;
            if status != expected[i] {
                wrong.push(format!(
                    "{endpoint} as {}: {status} (expected {}) {answer}",
                    who[i], expected[i]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Refused changes are in the audit log; refused reads (a page that needs a sign-in) are not.
    let refused = |action: &'static str| {
        let pool = app.state.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM audit_log WHERE action = $1 AND outcome = 'refused'",
            )
            .bind(action)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(refused("dashboard.delete-resource").await, 3);
    assert_eq!(refused("dashboard.admin-delete").await, 4);
    assert_eq!(refused("dashboard.resources").await, 0);
    assert_eq!(refused("dashboard.audit-entries").await, 0);
}
