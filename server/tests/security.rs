//! The attacks of issue 11 tried on the real router: one table of tokens (RFC 8725's list of
//! JWT pitfalls and the access rules of ../shared/slices-api.md) with the status each must get.

mod common;

use base64::Engine as _;
use common::{experiment_id, in_an_hour, Options, TestApp, ALICE, BOB};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The app without a worker (no task runs: requests are only accepted or refused).
async fn api_app(pool: PgPool) -> TestApp {
    TestApp::start(
        pool,
        Options {
            no_worker: true,
            ..Options::default()
        },
    )
    .await
}

/// A request: method, path under the API base, body.
type Call = (Method, String, Option<Value>);

fn request(image: &str, flavor: &str, name: &str, tokens: &[&str]) -> Value {
    json!({
        "expires_at": in_an_hour(),
        "resources": [{"friendly_name": name, "disk_image_id": image, "flavor_id": flavor}],
        "tokens": tokens.iter().map(|t| json!({"jwt": t})).collect::<Vec<_>>(),
    })
}

/// A token signed with HS256 whose secret is the issuer's RSA public key (the algorithm
/// confusion attack: a verifier that takes `alg` from the token would accept it).
fn hs256_with_the_public_key(app: &TestApp) -> String {
    use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _, LineEnding};
    let private =
        rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("fixtures/test-rsa-key.pem")).expect("rsa");
    let public = rsa::RsaPublicKey::from(&private)
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let key = EncodingKey::from_secret(public.as_bytes());
    app.issuer
        .sign_with(&key, "rsa-1", Algorithm::HS256, &mut json!({"sub": ALICE}))
}

/// An unsigned token (`alg: none`).
fn unsigned(app: &TestApp) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"});
    let claims = json!({"sub": ALICE, "iss": app.issuer.url, "aud": app.issuer.audience,
                        "iat": now, "exp": now + 600});
    format!("{}.{}.", b64(&header), b64(&claims))
}

/// A valid token whose payload was changed afterwards (the signature no longer matches).
fn tampered(app: &TestApp) -> String {
    let good = app.issuer.user(ALICE);
    let parts: Vec<&str> = good.split('.').collect();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": common::ADMIN, "iss": app.issuer.url, "aud": app.issuer.audience,
                        "iat": now, "exp": now + 600});
    format!("{}.{}.{}", parts[0], b64(&claims), parts[2])
}

#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn every_token_gets_the_status_it_must(pool: PgPool) {
    let app = TestApp::start(
        pool,
        Options {
            no_worker: true,
            jwks_refresh_secs: Some(1),
            ..Options::default()
        },
    )
    .await;
    let iss = &app.issuer;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let (exp_a, exp_b) = (experiment_id(), experiment_id());
    let token_a = iss.experiment(&exp_a, ALICE);
    let token_b = iss.experiment(&exp_b, BOB);
    let (s, created) = app
        .post(
            "/resources",
            &token_b,
            request(&image, &flavor, "b-node", &[]),
        )
        .await;
    assert_eq!(s, 202, "{created}");
    let b_resource = created["resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();

    // A key that signs one token, is withdrawn, and must then stop working.
    let (withdrawn_key, jwk) = common::new_ec_key("ec-withdrawn");
    iss.publish(jwk);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = iss.sign_with(
        &withdrawn_key,
        "ec-withdrawn",
        Algorithm::ES256,
        &mut json!({"sub": ALICE, "jti": "1"}),
    );
    assert_eq!(
        app.get("/flavors", &before).await.0,
        200,
        "the key works while published"
    );
    iss.withdraw("ec-withdrawn");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = iss.sign_with(
        &withdrawn_key,
        "ec-withdrawn",
        Algorithm::ES256,
        &mut json!({"sub": ALICE, "jti": "2"}),
    );

    let now = chrono::Utc::now().timestamp();
    let signed = |claims: Value| iss.sign(Algorithm::ES256, claims);
    let (rogue, _) = common::new_ec_key("rogue");
    let unknown_kid = iss.sign_with(
        &rogue,
        "never-published",
        Algorithm::ES256,
        &mut json!({"sub": ALICE}),
    );
    let resource_path = format!("/resources/{b_resource}");
    let alice_user = iss.user(ALICE);
    let bob_user = iss.user(BOB);
    let post = |body: Value| (Method::POST, "/resources".to_string(), Some(body));
    let get = |path: &str| (Method::GET, path.to_string(), None);
    let rows: Vec<(&str, String, Call, u16)> = vec![
        (
            "valid user token (control)",
            alice_user.clone(),
            get("/flavors"),
            200,
        ),
        (
            "valid experiment token (control)",
            token_a.clone(),
            get("/resources"),
            200,
        ),
        (
            "expired",
            signed(json!({"sub": ALICE, "exp": now - 3600, "iat": now - 7200})),
            get("/flavors"),
            401,
        ),
        (
            "not yet valid (nbf in 10 min)",
            signed(json!({"sub": ALICE, "nbf": now + 600})),
            get("/flavors"),
            401,
        ),
        (
            "wrong aud",
            signed(json!({"sub": ALICE, "aud": "https://other-site.example"})),
            get("/flavors"),
            401,
        ),
        (
            "wrong iss",
            signed(json!({"sub": ALICE, "iss": "https://evil.example"})),
            get("/flavors"),
            401,
        ),
        ("alg: none", unsigned(&app), get("/flavors"), 401),
        (
            "HS256 signed with the RSA public key",
            hs256_with_the_public_key(&app),
            get("/flavors"),
            401,
        ),
        ("unknown kid", unknown_kid, get("/flavors"), 401),
        ("key withdrawn from the JWKS", after, get("/flavors"), 401),
        ("tampered payload", tampered(&app), get("/flavors"), 401),
        (
            "user token on a write route",
            alice_user.clone(),
            post(request(&image, &flavor, "u-node", &[])),
            403,
        ),
        (
            "experiment A's token on B's resource",
            token_a.clone(),
            get(&resource_path),
            404,
        ),
        (
            "experiment A's token deleting B's resource",
            token_a.clone(),
            (Method::DELETE, resource_path.clone(), None),
            404,
        ),
        (
            "another user's token in the body",
            token_a.clone(),
            post(request(&image, &flavor, "a-other", &[&bob_user])),
            403,
        ),
        (
            "own user token in the body (control)",
            token_a.clone(),
            post(request(&image, &flavor, "a-own", &[&alice_user])),
            202,
        ),
    ];
    let mut table = Vec::new();
    let mut wrong = Vec::new();
    for (name, token, (method, path, body), expected) in rows {
        let (status, answer) = app.call(method, &path, Some(&token), body).await;
        table.push(format!("{name:<45} {expected} {status}"));
        if status != expected {
            wrong.push(format!(
                "{name}: expected {expected}, got {status}: {answer}"
            ));
        }
        // Every refusal is a JSON body saying why.
        if status >= 400 {
            assert!(
                answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}: {answer}"
            );
        }
    }
    println!("{:<45} expected got\n{}", "token", table.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A form post to a dashboard server function, from `origin` (None: no Origin header).
async fn form_post(
    app: &TestApp,
    path: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut request = client.post(format!("{}{path}", app.base)).form(form);
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    request.send().await.expect("send")
}

/// Login CSRF and cross-site server-function calls: a form on another site cannot sign the
/// browser in as someone else or act in its session; the same form from this site works.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn cross_site_form_posts_are_refused(pool: PgPool) {
    let app = api_app(pool).await;
    let attacker = app.issuer.user(BOB);
    let sign_in = [("user_token", attacker.as_str()), ("experiment_token", "")];
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let answer = form_post(&app, "/api/sign-in", origin, &sign_in).await;
        assert_eq!(answer.status().as_u16(), 403, "sign-in from {origin:?}");
        assert!(
            answer.headers().get("set-cookie").is_none(),
            "no session from {origin:?}"
        );
        let body: Value = answer.json().await.expect("json");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("cross-site"),
            "{body}"
        );
    }
    // A referer from another site is no better.
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/api/delete-clouds", app.base))
        .header("Referer", "http://evil.example/page")
        .form(&[("x", "y")])
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status().as_u16(), 403);

    // From this site: signed in (a session cookie and the redirect to the resources page).
    let answer = form_post(&app, "/api/sign-in", Some(&app.base), &sign_in).await;
    assert!(
        answer.status().is_redirection() || answer.status().is_success(),
        "{}",
        answer.status()
    );
    assert!(answer.headers().get("set-cookie").is_some(), "signed in");
}

/// Every answer carries the security headers; a dashboard page's CSP names the nonce its
/// inline scripts carry, and nothing else inline may run.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn answers_carry_security_headers_and_pages_a_nonce_csp(pool: PgPool) {
    let app = api_app(pool).await;
    let page = app
        .http
        .get(format!("{}/", app.base))
        .send()
        .await
        .expect("page");
    let headers = page.headers().clone();
    let html = page.text().await.expect("html");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "same-origin");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("'wasm-unsafe-eval'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a nonce in the page's CSP");
    assert!(nonce.len() >= 16, "{nonce}");
    // Every inline script of the page carries it.
    let scripts = html.matches("<script").count();
    assert!(scripts > 0, "{html}");
    assert_eq!(
        html.matches(&format!("nonce=\"{nonce}\"")).count(),
        scripts,
        "{html}"
    );
    // Another request, another nonce.
    let again = app
        .http
        .get(format!("{}/", app.base))
        .send()
        .await
        .expect("page");
    let csp_again = again.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert_ne!(csp, csp_again);

    let api = app
        .http
        .get(format!("{}/flavors", app.api))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status().as_u16(), 401);
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
    assert!(
        api.headers().get("strict-transport-security").is_none(),
        "plain http: no HSTS"
    );
}

/// Names that would print as something else (control characters, bidi overrides) are
/// refused with a 422 naming the field, in requests and in the catalog.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn names_with_control_or_bidi_characters_are_refused(pool: PgPool) {
    let app = api_app(pool).await;
    let (image, flavor) = app.k8s_catalog("nginx:alpine").await;
    let token = app.issuer.experiment(&experiment_id(), ALICE);
    let mut body = request(&image, &flavor, "fine", &[]);
    body["resources"][0]["network_name"] = "net\u{202E}krow".into();
    let (s, err) = app.post("/resources", &token, body).await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("resources[0].network_name")),
        "{err}"
    );
    let admin = app.issuer.user(common::ADMIN);
    let (s, err) = app
        .post(
            "/flavors",
            &admin,
            json!({"friendly_name": "small\nlarge", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64}),
        )
        .await;
    assert_eq!(
        (s, err["field"].as_str()),
        (422, Some("friendly_name")),
        "{err}"
    );
    // U+0000 anywhere (PostgreSQL text cannot hold it) is a 400, not a database error: in a
    // free-text field of a body and in a query filter (both were 500s, found by schemathesis).
    let (s, err) = app
        .post(
            "/flavors",
            &admin,
            json!({"friendly_name": "nul", "description": "a\u{0}b", "flavor_type": "k8s", "vcpus": 1, "ram_mib": 64}),
        )
        .await;
    assert_eq!(s, 400, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("U+0000"),
        "{err}"
    );
    let (s, err) = app.get("/resources?project=a%00b", &admin).await;
    assert_eq!(s, 400, "{err}");
}

/// Sign-ins and failed token checks are rate limited per client: 429 with `Retry-After`,
/// and a client over the failure limit is refused even with a good token for a while.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn sign_ins_and_bad_tokens_are_rate_limited(pool: PgPool) {
    let app = api_app(pool).await;
    // Sign-ins: 10 a minute (the default), then 429.
    let bad = [("user_token", "not-a-token"), ("experiment_token", "")];
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let answer = form_post(&app, "/api/sign-in", Some(&app.base), &bad).await;
        statuses.push(answer.status().as_u16());
        if answer.status().as_u16() == 429 {
            let retry: u64 = answer.headers()["retry-after"]
                .to_str()
                .expect("text")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    // A bad token is the client's mistake: 422 naming the field, never a 500.
    assert!(statuses[..10].iter().all(|s| *s == 422), "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");

    // Failed token checks: 30 a minute, then every request of that client is refused.
    let mut last = 0;
    for _ in 0..31 {
        last = app.get("/flavors", "not-a-jwt").await.0;
    }
    assert_eq!(last, 429);
    let (s, body) = app.get("/flavors", &app.issuer.user(ALICE)).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["code"].as_str(), Some("rate_limited"), "{body}");
}

/// A client that never finishes its request headers is dropped after the header timeout
/// instead of holding its connection forever.
#[sqlx::test(migrator = "app::ssr::MIGRATOR")]
async fn a_connection_that_never_finishes_its_headers_is_closed(pool: PgPool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = api_app(pool).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(
        app::ssr::server::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buffer),
    )
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after the header timeout"
    );
    assert!(
        started.elapsed()
            >= app::ssr::server::HEADER_READ_TIMEOUT - std::time::Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
}
