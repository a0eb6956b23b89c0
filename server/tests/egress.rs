//! SSRF (issue 11): with the allow-list naming only one Keystone (host and port), a user's
//! clouds.yaml cannot make the server connect anywhere else. Every target here is on loopback:
//! listeners that count the connections they accept prove the refused ones were never
//! reached. The deny rules for private, link-local and cluster ranges are unit tests of the
//! address filter (`app::ssr::egress`), never connections.

mod common;

use common::{Options, TestApp, ALICE};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A loopback listener that accepts, counts and closes every connection.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, hits)
}

/// Serves `router` on a loopback port, counting requests.
async fn serve(router: axum::Router) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, hits)
}

/// A Keystone that issues a token whose catalog names `image_url` as Glance.
fn fake_keystone(image_url: String) -> axum::Router {
    axum::Router::new().route(
        "/v3/auth/tokens",
        axum::routing::post(move || {
            let image_url = image_url.clone();
            async move {
                let body = json!({"token": {
                    "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                    "project": {"id": "p1"},
                    "catalog": [{"type": "image", "endpoints": [
                        {"interface": "public", "region_id": "RegionOne", "url": image_url}
                    ]}]
                }});
                (
                    axum::http::StatusCode::CREATED,
                    [("X-Subject-Token", "fake-token")],
                    axum::Json(body),
                )
            }
        }),
    )
}

/// A server that answers every request with a redirect to `target`.
fn redirector(target: String) -> axum::Router {
    axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("Location", target)],
                "",
            )
        }
    })
}

fn cloud(name: &str, auth_url: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    auth:\n      auth_url: {auth_url}\n      username: alice\n      password: not-used\n      project_name: qkd\n      user_domain_name: Default\n      project_domain_name: Default\n{extra}"
    )
}

async fn put_yaml(app: &TestApp, token: &str, body: String) -> (u16, Value) {
    let response = app
        .http
        .put(format!("{}/clouds-yaml", app.api))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(body)
        .send()
        .await
        .expect("put");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_clouds_yaml_reaches_only_the_allowed_keystone(pool: PgPool) {
    let (outside, outside_hits) = counting_listener().await;
    let (keystone, keystone_hits) = serve(fake_keystone(format!("http://{outside}"))).await;
    let (redirect, redirect_hits) =
        serve(redirector(format!("http://{outside}/v3/auth/tokens"))).await;
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            no_kubernetes: true,
            allowed_endpoints: Some(format!("{keystone},{redirect}")),
            ..Options::default()
        },
    )
    .await;
    let alice = app.issuer.user(ALICE);
    let port = outside.port();
    let yaml = format!(
        "clouds:\n{}{}{}{}{}",
        cloud("direct", &format!("http://127.0.0.1:{port}/v3"), ""),
        cloud("byname", &format!("http://localhost:{port}/v3"), ""),
        cloud(
            "mapped",
            &format!("http://[::ffff:127.0.0.1]:{port}/v3"),
            ""
        ),
        cloud("redirect", &format!("http://{redirect}/v3"), ""),
        cloud(
            "catalog",
            &format!("http://{keystone}/v3"),
            "    verify: true\n"
        ),
    );
    let (s, summary) = put_yaml(&app, &alice, yaml).await;
    assert_eq!(s, 200, "{summary}");

    let cases: [(&str, &[&str]); 5] = [
        (
            "direct",
            &[
                "not an allowed OpenStack endpoint",
                "loopback",
                "OPENSTACK_ALLOWED_ENDPOINTS",
            ],
        ),
        (
            "byname",
            &["localhost is not an allowed OpenStack endpoint", "loopback"],
        ),
        ("mapped", &["not an allowed OpenStack endpoint", "loopback"]),
        ("redirect", &["307", "redirects are not followed"]),
        (
            "catalog",
            &[
                "not an allowed OpenStack endpoint",
                &format!("127.0.0.1:{port}"),
            ],
        ),
    ];
    for (name, words) in cases {
        let (s, test) = app
            .post(
                &format!("/clouds-yaml/test?cloud={name}"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(s, 200, "{name}: {test}");
        assert_eq!(test["ok"], false, "{name}: {test}");
        let error = test["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(error.contains(word), "{name}: `{word}` not in: {error}");
        }
        if name == "redirect" {
            // Where the redirect pointed is not passed on.
            assert!(!error.contains(&format!(":{port}")), "{name}: {error}");
        }
    }
    // The allowed servers were reached; the one outside the list never was.
    assert!(
        keystone_hits.load(Ordering::SeqCst) >= 1,
        "Keystone reached"
    );
    assert!(
        redirect_hits.load(Ordering::SeqCst) >= 1,
        "redirector reached"
    );
    assert_eq!(
        outside_hits.load(Ordering::SeqCst),
        0,
        "a refused target was connected to"
    );

    // `verify: false` is refused unless the operator allows it (no connection either).
    let before = keystone_hits.load(Ordering::SeqCst);
    let yaml = format!(
        "clouds:\n{}",
        cloud(
            "insecure",
            &format!("https://{keystone}/v3"),
            "    verify: false\n"
        )
    );
    assert_eq!(put_yaml(&app, &alice, yaml).await.0, 200);
    let (_, test) = app
        .post("/clouds-yaml/test?cloud=insecure", &alice, json!({}))
        .await;
    let error = test["error"].as_str().unwrap_or_default();
    assert!(error.contains("OPENSTACK_ALLOW_INSECURE_TLS"), "{test}");
    assert_eq!(keystone_hits.load(Ordering::SeqCst), before);

    // The fragment trick (`…/x#/v3`) and credentials in the URL are refused at upload.
    for (url, why) in [
        (format!("http://{keystone}/x#/v3"), "fragment"),
        (format!("http://admin:pw@{keystone}/v3"), "password"),
    ] {
        let (s, body) =
            put_yaml(&app, &alice, format!("clouds:\n{}", cloud("bad", &url, ""))).await;
        assert_eq!(s, 422, "{url}: {body}");
        let text = body.to_string();
        assert!(text.contains("clouds.bad.auth.auth_url"), "{text}");
        assert!(text.contains(why), "{text}");
    }
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn connection_tests_are_rate_limited(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            no_kubernetes: true,
            ..Options::default()
        },
    )
    .await;
    let alice = app.issuer.user(ALICE);
    // A target the rule refuses: each test answers at once, without a connection.
    let yaml = format!("clouds:\n{}", cloud("lab", "http://127.0.0.1:9/v3", ""));
    assert_eq!(put_yaml(&app, &alice, yaml).await.0, 200);
    // A connection test never happens on GET (this counts against the limit too).
    let (s, _) = app.get("/clouds-yaml/test", &alice).await;
    assert_eq!(s, 405);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = app
            .http
            .post(format!("{}/clouds-yaml/test", app.api))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("post");
        let retry_after = response.headers().get("retry-after").cloned();
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            assert!(retry_after.is_some(), "429 without Retry-After");
        }
    }
    // The default budget (RATE_LIMIT_CONNECTION_TESTS_PER_MINUTE=10) as one burst, then 429.
    assert_eq!(&statuses[..9], &[200; 9], "{statuses:?}");
    assert_eq!(statuses[9], 429, "{statuses:?}");
}
