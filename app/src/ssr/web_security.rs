//! What every response carries for the browser, and the cross-site request check of the
//! dashboard (an entry-point concern: it wraps the router).
//!
//! - Headers (OWASP Secure Headers): `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//!   same-origin`, `X-Frame-Options: DENY`, a Content Security Policy (below) and, when the
//!   site is served over https, `Strict-Transport-Security` (RFC 6797).
//! - CSP (CSP Level 3): dashboard pages allow only this site's scripts, the inline scripts that
//!   carry the page's nonce (Leptos puts a fresh one on its hydration scripts, see
//!   [`page_csp`]) and WebAssembly compilation (`'wasm-unsafe-eval'`); nothing may frame a
//!   page (`frame-ancestors 'none'`). API answers get `default-src 'none'`; the API docs
//!   (Swagger UI, ReDoc) their own assets plus the inline styles they inject.
//! - Cross-site requests: a state-changing request to the dashboard (server functions and
//!   forms: any method but GET, HEAD and OPTIONS) is refused with 403 unless its `Origin`
//!   (else its `Referer`) is this site: `PUBLIC_URL`'s origin, or the origin of the `Host`
//!   it was sent to. Browsers send `Origin` on every such request, so a form or `fetch` on
//!   another site can neither sign a victim in as someone else (login CSRF) nor act in their
//!   session. The REST API takes bearer tokens only (no cookies), so it needs no such check.

use crate::error::AppError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The site's origin and scheme, for the checks here.
#[derive(Clone, Debug)]
pub struct SiteOrigin {
    /// `scheme://host[:port]` of `PUBLIC_URL`.
    pub origin: String,
    /// Whether the site is served over https (then HSTS is sent).
    pub https: bool,
}

impl SiteOrigin {
    /// From `PUBLIC_URL` (`http(s)://host[:port][/path]`).
    pub fn of(public_url: &str) -> Self {
        Self {
            origin: origin_of(public_url).unwrap_or_default(),
            https: public_url.starts_with("https://"),
        }
    }
}

/// `scheme://host[:port]` of a URL, lowercased; `None` when it is not an http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return None;
    }
    Some(parsed.origin().ascii_serialization())
}

/// The policy of a dashboard page whose inline scripts carry `nonce`.
pub fn page_csp(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The policy of API answers and files.
const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// The policy of the API docs (Swagger UI and ReDoc inject inline styles; ReDoc starts a
/// worker from a blob).
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; \
     frame-ancestors 'none'";

/// The nonce of one page response, chosen by [`security_headers`] before the render and
/// carried to it in the request's extensions (16 random bytes, base64url).
#[derive(Clone, Debug)]
pub struct PageNonce(pub String);

impl PageNonce {
    fn new() -> Self {
        use base64::Engine as _;
        let bytes: [u8; 16] = rand::random();
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Makes the page's inline scripts carry the nonce [`security_headers`] chose for this
/// response (called by the shell on the server, before anything renders). The middleware then
/// sets the page's CSP itself: it does not depend on the render handing headers back (once in
/// a few hundred loads that header was missing, the page got `default-src 'none'` and never
/// hydrated).
pub fn use_page_nonce() {
    use leptos::prelude::{provide_context, use_context};
    let nonce = use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<PageNonce>().cloned());
    if let Some(PageNonce(nonce)) = nonce {
        provide_context(leptos::nonce::Nonce::from_value(nonce));
    }
}

/// Adds the security headers to every response; a dashboard page gets its CSP with the nonce
/// chosen here (see [`use_page_nonce`]).
pub async fn security_headers(
    State(site): State<Arc<SiteOrigin>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let docs = path == "/docs" || path.starts_with("/docs/") || path == "/redoc";
    // Only a dashboard page needs a nonce: the API, server functions and files never render one.
    let may_be_page = !docs
        && !["/apis/", "/api/", "/pkg/", "/vendor/"]
            .iter()
            .any(|prefix| path.starts_with(prefix));
    let mut request = request;
    let nonce = may_be_page.then(PageNonce::new);
    if let Some(nonce) = &nonce {
        request.extensions_mut().insert(nonce.clone());
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let policy = match (&nonce, html) {
        (Some(nonce), true) => HeaderValue::from_str(&page_csp(&nonce.0)).ok(),
        _ => None,
    }
    .unwrap_or(HeaderValue::from_static(if docs {
        DOCS_CSP
    } else {
        DEFAULT_CSP
    }));
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if site.https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Whether `headers` show a request sent from this site (see the module docs).
pub fn same_site(headers: &HeaderMap, site: &SiteOrigin) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let claimed = match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) if origin != "null" => origin_of(origin),
        (_, Some(referer)) => origin_of(referer),
        _ => None,
    };
    let Some(claimed) = claimed else {
        return false;
    };
    if claimed == site.origin {
        return true;
    }
    // The origin the request was addressed to (the same server reached under another name,
    // e.g. localhost and 127.0.0.1 in a local run).
    let scheme = if site.https { "https" } else { "http" };
    text(header::HOST)
        .and_then(|host| origin_of(&format!("{scheme}://{host}")))
        .is_some_and(|addressed| addressed == claimed)
}

/// Refuses cross-site state changes to the dashboard with 403 (JSON body saying why).
pub async fn refuse_cross_site(
    State(site): State<Arc<SiteOrigin>>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if safe || same_site(request.headers(), &site) {
        return next.run(request).await;
    }
    tracing::warn!(
        method = %request.method(),
        path = %request.uri().path(),
        origin = ?request.headers().get(header::ORIGIN),
        "refused a cross-site request"
    );
    AppError::Forbidden(
        "cross-site request refused: the Origin (or Referer) header is not this site".into(),
    )
    .into_response()
}

/// Server functions answer a failure with the error's own status (422 for a bad field, 401
/// for a bad token, 403, 404, 429 …) instead of Leptos's blanket 500: the body is the
/// serialized [`AppError`], which knows its status. Bodies over 64 KiB are left alone.
pub async fn server_fn_status(request: Request, next: Next) -> Response {
    let server_fn = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    if !server_fn || response.status() != axum::http::StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return AppError::ServerFn("the server function's error could not be read".into())
            .into_response();
    };
    if let Ok(error) = serde_json::from_slice::<AppError>(&bytes) {
        if let Ok(status) = axum::http::StatusCode::from_u16(error.status()) {
            parts.status = status;
        }
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn only_this_sites_origin_passes() {
        let site = SiteOrigin::of("http://127.0.0.1:3000");
        let host = (header::HOST, "127.0.0.1:3000");
        for (pairs, ok) in [
            (vec![(header::ORIGIN, "http://127.0.0.1:3000")], true),
            (vec![(header::ORIGIN, "http://127.0.0.1:3000/")], true),
            (
                vec![(header::REFERER, "http://127.0.0.1:3000/clouds?x=1")],
                true,
            ),
            (
                vec![
                    (header::ORIGIN, "http://localhost:3000"),
                    (header::HOST, "localhost:3000"),
                ],
                true,
            ),
            (
                vec![(header::ORIGIN, "http://evil.example"), host.clone()],
                false,
            ),
            (
                vec![(header::ORIGIN, "http://127.0.0.1:3001"), host.clone()],
                false,
            ),
            (vec![(header::ORIGIN, "null"), host.clone()], false),
            (
                vec![
                    (header::REFERER, "http://127.0.0.1:3000.evil.example/"),
                    host.clone(),
                ],
                false,
            ),
            (vec![host.clone()], false),
            (vec![], false),
        ] {
            assert_eq!(same_site(&headers(&pairs), &site), ok, "{pairs:?}");
        }
        assert_eq!(
            origin_of("HTTPS://Example.ORG:443/x").as_deref(),
            Some("https://example.org")
        );
    }

    #[test]
    fn page_policy_allows_only_own_scripts_and_wasm() {
        let policy = page_csp("abc123");
        for part in [
            "script-src 'self' 'nonce-abc123' 'wasm-unsafe-eval'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(policy.contains(part), "{policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
    }
}
