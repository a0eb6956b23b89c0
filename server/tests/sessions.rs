//! Dashboard sessions and remembered experiments (issue 13) on the real router and
//! PostgreSQL session store: the session id changes at sign-in, an attached experiment keeps
//! working after its experiment token expired, idle and absolute timeouts end sessions, "sign
//! out everywhere" ends every session of the user and only theirs. (The OpenID Connect
//! sign-in itself is tested in the browser against a real provider: end2end/tests/oidc.spec.ts.)

mod common;

use common::{experiment_id, Browser, Options, TestApp, ALICE, BOB};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

/// An experiment token of ALICE whose `exp` is `secs` from now (the verifier allows 30 s of
/// clock skew past it).
fn short_token(app: &TestApp, experiment: &str, secs: i64) -> String {
    app.issuer.sign(
        Algorithm::ES256,
        json!({ "sub": experiment, "proj": "proj_test_qkd", "user_id": ALICE,
                "experiment_name": "qkd", "exp": chrono::Utc::now().timestamp() + secs }),
    )
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn an_attached_experiment_outlives_its_token_and_sign_in_rotates_the_session(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let experiment = experiment_id();
    // Accepted for about 4 s more (30 s of leeway past an `exp` 26 s ago).
    let token = short_token(&app, &experiment, -26);
    let created = app.create_resources(&token, &image, &flavor, &["m1"]).await;
    let id = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut browser = Browser::new(&app);
    assert!(matches!(
        browser.sign_in(&app.issuer.user(BOB), "").await,
        200 | 302 | 303
    ));
    let first = browser.cookie.clone().expect("a session cookie");
    assert_eq!(browser.viewer().await["user_id"], json!(BOB));
    // Signing in again (another user, same browser) gives a new session id; the old one is void.
    let status = browser.sign_in(&app.issuer.user(ALICE), &token).await;
    assert!(matches!(status, 200 | 302 | 303), "{status}");
    let second = browser.cookie.clone().expect("a session cookie");
    assert_ne!(first, second, "the session id changes at sign-in");
    let mut stale = Browser::new(&app);
    stale.cookie = Some(first);
    assert_eq!(stale.viewer().await, Value::Null);

    let viewer = browser.viewer().await;
    assert_eq!(
        viewer["experiment"]["experiment_id"],
        json!(experiment),
        "{viewer}"
    );
    assert_eq!(viewer["signed_in_with"], json!("token"));

    // The experiment token dies; the membership does not.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (s, _) = app.get("/resources", &token).await;
    assert_eq!(s, 401, "the token itself has expired");
    let (s, body) = browser
        .call(
            "extend-resource",
            &[("id", &id), ("by", "1h"), ("until", "")],
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = browser.call("delete-resource", &[("id", &id)]).await;
    assert_eq!(s, 200, "{body}");
    let (s, rows) = app
        .get(
            &format!("/audit?object_id={id}"),
            &app.issuer.user(common::ADMIN),
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    let via: Vec<(&str, &str)> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or(""),
                r["via"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        via,
        [
            ("resource.delete", "dashboard"),
            ("resource.extend", "dashboard"),
            ("resource.create", "api"),
        ]
    );

    // Another user's experiment token is not attached; an unknown experiment cannot be chosen.
    let bobs = app.issuer.experiment(&experiment_id(), BOB);
    let (s, body) = browser
        .call("attach-experiment", &[("experiment_token", &bobs)])
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(
        body["Invalid"]["field"],
        json!("experiment_token"),
        "{body}"
    );
    let (s, _) = browser
        .call(
            "switch-experiment",
            &[("experiment_id", "exp_test.portal_nope")],
        )
        .await;
    assert_eq!(s, 404);
    // Detached, it is gone and writes are refused.
    let (s, body) = browser
        .call("detach-experiment", &[("experiment_id", &experiment)])
        .await;
    assert!(matches!(s, 200 | 302 | 303), "{s} {body}");
    let viewer = browser.viewer().await;
    assert_eq!(viewer["experiment"], Value::Null, "{viewer}");
    assert_eq!(viewer["experiment_ended"], json!(true), "{viewer}");
    let (s, _) = browser
        .call(
            "extend-resource",
            &[("id", &id), ("by", "1h"), ("until", "")],
        )
        .await;
    assert!(matches!(s, 403 | 404), "{s}");
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn idle_and_absolute_timeouts_end_sessions(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            extra_args: ["--session-idle-secs", "5", "--session-absolute-secs", "9"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    )
    .await;
    let user = app.issuer.user(ALICE);
    // Idle: no request for longer than 5 s.
    let mut idle = Browser::new(&app);
    idle.sign_in(&user, "").await;
    assert_eq!(idle.viewer().await["user_id"], json!(ALICE));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(idle.viewer().await, Value::Null, "idle for 7 s of 5");

    // Absolute: active every 2 s, still over after 9 s.
    let mut busy = Browser::new(&app);
    busy.sign_in(&user, "").await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        assert_eq!(
            busy.viewer().await["user_id"],
            json!(ALICE),
            "active at {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    while started.elapsed() < Duration::from_millis(9_500) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        busy.viewer().await;
    }
    assert_eq!(
        busy.viewer().await,
        Value::Null,
        "past the absolute timeout"
    );
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn sign_out_everywhere_ends_every_session_of_that_user_only(pool: PgPool) {
    let app = TestApp::without_worker(pool).await;
    let alice = app.issuer.user(ALICE);
    let mut laptop = Browser::new(&app);
    let mut phone = Browser::new(&app);
    let mut bob = Browser::new(&app);
    laptop.sign_in(&alice, "").await;
    phone.sign_in(&alice, "").await;
    bob.sign_in(&app.issuer.user(BOB), "").await;
    let (s, body) = laptop.call("sign-out-everywhere", &[]).await;
    assert!(matches!(s, 200 | 302 | 303), "{s} {body}");
    assert_eq!(laptop.viewer().await, Value::Null);
    assert_eq!(phone.viewer().await, Value::Null);
    assert_eq!(bob.viewer().await["user_id"], json!(BOB));
    // A new sign-in afterwards works.
    laptop.sign_in(&alice, "").await;
    assert_eq!(laptop.viewer().await["user_id"], json!(ALICE));
    let (s, rows) = app
        .get(
            &format!("/audit?user_id={ALICE}&action=session.*"),
            &app.issuer.user(common::ADMIN),
        )
        .await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = rows
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "session.sign_in",
            "session.sign_out_everywhere",
            "session.sign_in",
            "session.sign_in"
        ]
    );
}
