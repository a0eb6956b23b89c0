//! The audit log (issue 13) on the real router and PostgreSQL: every change and every refused
//! write is recorded with who, what, which object and from where; admins read it back with
//! filters, pages and a JSON-lines export; the table is append-only and each entry is written
//! in the transaction of its change.

mod common;

use common::{experiment_id, resources_request, TestApp, ADMIN, ALICE};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// `GET /audit?query` as the admin, with the `Link` header.
async fn audit(app: &TestApp, query: &str) -> (u16, Value, Option<String>) {
    let response = app
        .http
        .get(format!("{}/audit?{query}", app.api))
        .bearer_auth(app.issuer.user(ADMIN))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let link = response
        .headers()
        .get("link")
        .map(|v| v.to_str().expect("text").to_string());
    (status, response.json().await.expect("json"), link)
}

fn actions(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .expect("array")
        .iter()
        .map(|e| format!("{} {}", e["action"].as_str().expect("action"), e["outcome"]))
        .collect()
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn changes_and_refused_writes_are_recorded_and_admins_read_them_back(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let experiment = experiment_id();
    let token = app.issuer.experiment(&experiment, ALICE);
    let created = app
        .create_resources(&token, &image, &flavor, &["a1", "a2"])
        .await;
    let first = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let later = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    let (s, body) = app
        .patch(
            &format!("/resources/{first}"),
            &token,
            json!({ "expires_at": later }),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = app.delete(&format!("/resources/{first}"), &token).await;
    assert_eq!(s, 202, "{body}");
    // Refused writes: a user token may not create (403), no token at all (401).
    let user = app.issuer.user(ALICE);
    let (s, _) = app
        .post(
            "/resources",
            &user,
            resources_request(&image, &flavor, &["a3"]),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .call(Method::DELETE, &format!("/resources/{first}"), None, None)
        .await;
    assert_eq!(s, 401);

    // Only admins read the log.
    let (s, body) = app.get("/audit", &user).await;
    assert_eq!(s, 403, "{body}");

    let (s, mine, _) = audit(&app, &format!("user_id={ALICE}")).await;
    assert_eq!(s, 200, "{mine}");
    assert_eq!(
        actions(&mine),
        [
            "resource.create \"refused\"",
            "resource.delete \"ok\"",
            "resource.extend \"ok\"",
            "resource.create \"ok\"",
            "resource.create \"ok\"",
        ],
        "newest first: {mine:#}"
    );
    let entry = &mine[1];
    assert_eq!(entry["object_id"], json!(first));
    assert_eq!(entry["experiment_id"], json!(experiment));
    assert_eq!(entry["actor"], json!(experiment));
    assert_eq!(entry["via"], json!("api"));
    assert_eq!(entry["client_ip"], json!("127.0.0.1"));
    assert!(entry["detail"]["task_id"].as_str().is_some(), "{entry}");
    assert_eq!(mine[0]["detail"]["status"], json!(403));

    // The anonymous refusal names the object but nobody.
    let (_, refused, _) = audit(&app, "outcome=refused").await;
    let anonymous: Vec<&Value> = refused
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["user_id"].is_null())
        .collect();
    assert_eq!(anonymous.len(), 1, "{refused:#}");
    assert_eq!(anonymous[0]["action"], json!("resource.delete"));
    assert_eq!(anonymous[0]["object_id"], json!(first));
    assert_eq!(anonymous[0]["detail"]["status"], json!(401));

    // Filters: one object's history, a kind of action, the catalog changes of the admin.
    let (_, history, _) = audit(&app, &format!("object_id={first}")).await;
    assert_eq!(history.as_array().expect("array").len(), 4, "{history:#}");
    let (_, kinds, _) = audit(&app, "action=resource.*&outcome=ok").await;
    assert_eq!(kinds.as_array().expect("array").len(), 4, "{kinds:#}");
    let (_, catalog, _) = audit(&app, &format!("user_id={ADMIN}")).await;
    assert_eq!(
        actions(&catalog),
        ["flavor.create \"ok\"", "image.create \"ok\""]
    );
    let future = (chrono::Utc::now() + chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, none, _) = audit(&app, &format!("since={future}")).await;
    assert_eq!(none, json!([]));
    let (s, none, _) = audit(&app, &format!("since={future}&until=2026-01-01T00:00:00Z")).await;
    assert_eq!(
        (s, none),
        (200, json!([])),
        "a range ending before it starts is empty"
    );

    // Pages: a full page links to the next one.
    let (_, page, link) = audit(&app, &format!("user_id={ALICE}&limit=2")).await;
    assert_eq!(page.as_array().expect("array").len(), 2);
    let link = link.expect("a full page has a next link");
    assert!(
        link.contains("offset=2") && link.contains("limit=2"),
        "{link}"
    );
    let (_, rest, _) = audit(&app, &format!("user_id={ALICE}&limit=2&offset=4")).await;
    assert_eq!(rest.as_array().expect("array").len(), 1);

    // Bad filters are 400s naming the parameter.
    let long = format!("action={}", "x".repeat(257));
    for bad in [
        "limit=0",
        "limit=1001",
        "offset=-1",
        "outcome=maybe",
        long.as_str(),
    ] {
        let (s, body, _) = audit(&app, bad).await;
        assert_eq!(s, 400, "{bad}: {body}");
        let name = bad.split('=').next().expect("name");
        assert!(
            body["detail"].as_str().expect("detail").starts_with(name),
            "{bad}: {body}"
        );
    }

    // The JSON-lines export: every matching entry, one per line, same order.
    let export = app
        .http
        .get(format!("{}/audit?user_id={ALICE}", app.api))
        .bearer_auth(app.issuer.user(ADMIN))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
    assert_eq!(export.status().as_u16(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.expect("text");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(Value::Array(lines), mine);
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn the_log_is_append_only_and_written_with_its_change(pool: PgPool) {
    let app = TestApp::without_worker(pool.clone()).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    app.create_resources(&token, &image, &flavor, &["b1"]).await;
    let count = |action: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log WHERE action = $1")
                .bind(action)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    // A change that fails records nothing: the image is in use (409), the flavor is invalid
    // (422).
    let admin = app.issuer.user(ADMIN);
    let (s, body) = app.delete(&format!("/disk-images/{image}"), &admin).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(count("image.delete").await, 0);
    let (s, _) = app
        .post(
            "/flavors",
            &admin,
            json!({ "friendly_name": "", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64 }),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(count("flavor.create").await, 1);

    // Nobody rewrites history, not even the database owner without the purge switch.
    for statement in [
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let e = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement);
        assert!(e.to_string().contains("append-only"), "{statement}: {e}");
    }

    // The retention purge deletes only what is older than the cut.
    sqlx::query(
        "INSERT INTO audit_log (at, action, outcome, via) VALUES (now() - interval '500 days', 'old.entry', 'ok', 'system')",
    )
    .execute(&pool)
    .await
    .expect("an old entry");
    let before = count("resource.create").await;
    let cut = chrono::Utc::now() - chrono::Duration::days(400);
    let purged = app::ssr::audit::purge(&pool, cut).await.expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(count("old.entry").await, 0);
    assert_eq!(count("resource.create").await, before);
}
