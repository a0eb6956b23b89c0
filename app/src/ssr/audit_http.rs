//! The audit log's HTTP side: a middleware on the whole router that sets each request's
//! [`Source`] (API or dashboard, peer address, `User-Agent`) for the services' audit entries,
//! and writes a `refused` entry for every write the access rules turn down (answers 401 or
//! 403 to a method other than GET, HEAD or OPTIONS, except the server functions that only
//! read), with the route's action, the object's id and the refusal's reason.

use crate::ssr::api::BASE;
use crate::ssr::audit::{self, Actor, Event, Source, Via};
use crate::ssr::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;

/// Server functions that only read (posted like every server function): a refusal of one is
/// a page that needs a sign-in, not an attempted change, and is not recorded.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "viewer",
    "sign-in-options",
    "my-clouds",
    "last-cloud-test",
    "catalog",
    "resources",
    "resource-detail",
    "console-log",
    "request-options",
    "admin-catalog",
    "audit-entries",
];

/// Longest error body read back for a refusal's reason, bytes.
const MAX_REASON_BODY: usize = 16 * 1024;

/// The middleware (see the module doc).
pub async fn audit_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let via = if path.starts_with(BASE) {
        Via::Api
    } else {
        Via::Dashboard
    };
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let source = Source::request(via, ip, agent);
    let method = request.method().clone();
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !READ_ONLY_FUNCTIONS.contains(&path.trim_start_matches("/api/"));
    // Kept only where a refusal may have to name its holder.
    let bearer = write
        .then(|| {
            crate::ssr::api::bearer_token(request.headers())
                .ok()
                .map(str::to_string)
        })
        .flatten();
    let response = source.clone().scope(next.run(request)).await;
    let status = response.status();
    if !write || !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_REASON_BODY)
        .await
        .unwrap_or_default();
    let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string));
    // A valid token without the right (403) names its holder; a refused token names nobody.
    let actor = match &bearer {
        Some(token) => match state.auth.verify(token).await {
            Ok(principal) => Actor::of(&principal),
            Err(_) => Actor::anonymous(),
        },
        None => Actor::anonymous(),
    };
    let (action, object) = refused_action(&method, &path);
    let mut event = Event::new(action).refused().detail(serde_json::json!({
        "method": method.as_str(),
        "path": path,
        "status": status.as_u16(),
        "reason": reason,
    }));
    if let Some(object) = object {
        event = event.object(object);
    }
    source
        .scope(audit::record_alone(&state.pool, &actor, event))
        .await;
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The audit action a write request would have been (`resource.create`, `image.delete`,
/// `clouds_yaml.upload`, `dashboard.<server function>`…) and the object id in its path.
pub fn refused_action(method: &Method, path: &str) -> (String, Option<String>) {
    let Some(rest) = path.strip_prefix(BASE) else {
        let name = path.trim_start_matches("/api/").trim_matches('/');
        return (format!("dashboard.{name}"), None);
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let kind = match segments.first().copied() {
        Some("resources") => "resource",
        Some("disk-images") => "image",
        Some("flavors") => "flavor",
        Some("clouds-yaml") => "clouds_yaml",
        Some("catalog") => "catalog",
        Some("templates") => "template",
        Some(other) => other,
        None => "api",
    };
    let last = segments.last().copied().unwrap_or_default();
    let verb = match (kind, method.as_str(), segments.len()) {
        ("clouds_yaml", "PUT", _) => "upload",
        ("clouds_yaml", "PATCH", _) => "set_default",
        (_, "POST", n) if n >= 2 && !last.contains('_') => last,
        ("resource", "PATCH", _) => "extend",
        (_, "POST", _) => "create",
        (_, "PATCH" | "PUT", _) => "update",
        (_, "DELETE", _) => "delete",
        (_, other, _) => other,
    };
    let object = segments
        .get(1)
        .filter(|s| s.contains('_'))
        .map(|s| s.to_string());
    (format!("{kind}.{verb}"), object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_are_named_like_the_changes_they_would_have_made() {
        let id = "resource_tld-city-bp1_06c9m0d8m1b5h7w3r7s6m8e4yc";
        let cases = [
            (
                Method::POST,
                format!("{BASE}/resources"),
                "resource.create",
                None,
            ),
            (
                Method::PATCH,
                format!("{BASE}/resources/{id}"),
                "resource.extend",
                Some(id),
            ),
            (
                Method::DELETE,
                format!("{BASE}/resources/{id}"),
                "resource.delete",
                Some(id),
            ),
            (
                Method::POST,
                format!("{BASE}/disk-images"),
                "image.create",
                None,
            ),
            (
                Method::DELETE,
                format!("{BASE}/flavors/{id}"),
                "flavor.delete",
                Some(id),
            ),
            (
                Method::PUT,
                format!("{BASE}/clouds-yaml"),
                "clouds_yaml.upload",
                None,
            ),
            (
                Method::PATCH,
                format!("{BASE}/clouds-yaml"),
                "clouds_yaml.set_default",
                None,
            ),
            (
                Method::POST,
                format!("{BASE}/clouds-yaml/test"),
                "clouds_yaml.test",
                None,
            ),
            (
                Method::POST,
                format!("{BASE}/catalog/import"),
                "catalog.import",
                None,
            ),
            (
                Method::POST,
                "/api/admin-delete".to_string(),
                "dashboard.admin-delete",
                None,
            ),
        ];
        for (method, path, action, object) in cases {
            let (got, got_object) = refused_action(&method, &path);
            assert_eq!(got, action, "{method} {path}");
            assert_eq!(got_object.as_deref(), object, "{method} {path}");
        }
    }
}
