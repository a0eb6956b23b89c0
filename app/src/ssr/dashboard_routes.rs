//! The dashboard's plain HTTP routes (not server functions): the OpenID Connect sign-in
//! (`GET /auth/login` → the provider, `GET /auth/callback` ← the provider), the admins'
//! audit export (`GET /admin/audit.jsonl`) and a Pod's log for the signed-in user
//! (`GET /resources/{id}/log`, followed as server-sent events with `follow=true`;
//! `GET /resources/{id}/log.txt` as a download). They live behind the session layer.

use crate::error::AppError;
use crate::model::AuditFilter;
use crate::ssr::api::{ApiQuery, LogsQuery};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::session;
use crate::ssr::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tower_sessions::Session;

/// The routes (merged into the dashboard's router, under its session layer).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/admin/audit.jsonl", get(export_audit))
        .route("/resources/{id}/log", get(pod_log))
        .route("/resources/{id}/log.txt", get(download_pod_log))
        .route("/experiment/ssh_config", get(download_ssh_config))
        .route("/experiment/spec.json", get(download_spec))
}

/// The session's principal, or 401.
async fn acting(
    state: &AppState,
    session: &Session,
) -> Result<crate::ssr::auth::Principal, AppError> {
    match session::current(state, session).await? {
        Some(auth) => Ok(auth.acting()),
        None => Err(AppError::Unauthenticated(
            "you are signed out; sign in again".into(),
        )),
    }
}

fn attachment(content_type: &'static str, name: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, HeaderValue::from_static(name)),
        ],
        body,
    )
        .into_response()
}

/// `GET /experiment/ssh_config`: the VMs of the session's experiment as `Host` entries.
async fn download_ssh_config(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, AppError> {
    let principal = acting(&state, &session).await?;
    let jump = state.config.ssh_proxy_jump.as_deref();
    let text =
        crate::ssr::spec_files::ssh_config(&state.pool, state.site(), &principal, jump).await?;
    Ok(attachment(
        "text/plain; charset=utf-8",
        "attachment; filename=\"ssh_config\"",
        text,
    ))
}

/// `GET /experiment/spec.json`: the session's live resources as a SLICES CLI spec file.
async fn download_spec(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, AppError> {
    let principal = acting(&state, &session).await?;
    let spec = crate::ssr::spec_files::export(&state.pool, state.site(), &principal).await?;
    let text = serde_json::to_string_pretty(&spec).map_err(crate::ssr::internal)?;
    Ok(attachment(
        "application/json",
        "attachment; filename=\"experiment-spec.json\"",
        text,
    ))
}

/// The Pod log of `GET /resources/{id}/logs` (same query, same answers) for the session's
/// user, as the detail page's log panel reads it.
async fn pod_log(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, AppError> {
    let output = read_pod_log(&state, &session, &id, query).await?;
    Ok(crate::ssr::api::log_response(output, None))
}

/// The log as a file (`<resource id>.log`); `follow` is ignored.
async fn download_pod_log(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ApiQuery(mut query): ApiQuery<LogsQuery>,
) -> Result<Response, AppError> {
    query.follow = None;
    let output = read_pod_log(&state, &session, &id, query).await?;
    let name = format!(
        "{}.log",
        id.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    );
    Ok(crate::ssr::api::log_response(output, Some(&name)))
}

async fn read_pod_log(
    state: &AppState,
    session: &Session,
    id: &str,
    query: LogsQuery,
) -> Result<crate::ssr::backend::LogOutput, AppError> {
    let principal = acting(state, session).await?;
    crate::ssr::resources::pod_logs(&state.resources(), &principal, id, &query.into()).await
}

#[derive(Deserialize)]
struct LoginQuery {
    /// A dashboard path to come back to (default `/resources`).
    next: Option<String>,
}

/// Only paths of this site are returned to (no open redirect): `/x…`, not `//host` or `/\host`.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\") => {
            p.chars().take(512).collect()
        }
        _ => "/resources".to_string(),
    }
}

async fn login(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<LoginQuery>,
) -> Result<Redirect, AppError> {
    let url = session::begin_oidc(&state, &session, &local_path(query.next.as_deref())).await?;
    Ok(Redirect::to(&url))
}

#[derive(Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider's answer. Any failure is recorded as a refused sign-in and shown on the
/// sign-in page (`/login?error=…`), never as a bare error page.
async fn callback(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<CallbackQuery>,
) -> Redirect {
    let result = match (&query.error, &query.state, &query.code) {
        (Some(error), _, _) => Err(AppError::Unauthenticated(format!(
            "the sign-in provider answered `{}`{}",
            error.chars().take(64).collect::<String>(),
            query
                .error_description
                .as_deref()
                .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                .unwrap_or_default()
        ))),
        (None, Some(s), Some(code)) => session::finish_oidc(&state, &session, s, code).await,
        _ => Err(AppError::BadRequest(
            "the sign-in answer lacks `state` or `code`".into(),
        )),
    };
    match result {
        Ok(next) => Redirect::to(&local_path(Some(&next))),
        Err(e) => {
            let event = Event::new("session.sign_in")
                .refused()
                .detail(serde_json::json!({"method": "oidc", "reason": e.to_string()}));
            audit::record_alone(&state.pool, &Actor::anonymous(), event).await;
            let message = crate::ssr::query_value(&e.to_string());
            Redirect::to(&format!("/login?error={message}"))
        }
    }
}

/// `GET /admin/audit.jsonl?…` (the filters of `GET /audit`): the matching audit entries as
/// JSON lines, for admins signed in to the dashboard.
async fn export_audit(
    State(state): State<AppState>,
    session: Session,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> Result<Response, AppError> {
    let Some(auth) = session::current(&state, &session).await? else {
        return Err(AppError::Unauthenticated(
            "you are signed out; sign in again".into(),
        ));
    };
    crate::ssr::access::require(&auth.user, crate::ssr::access::Right::ReadAudit)?;
    audit::check_filter(&filter)?;
    let body = axum::body::Body::from_stream(audit::export(state.pool.clone(), filter));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::ssr::api::NDJSON),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"audit.jsonl\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(local_path(Some("/resources/new")), "/resources/new");
        assert_eq!(local_path(Some("//evil.example/x")), "/resources");
        assert_eq!(local_path(Some("/\\evil.example")), "/resources");
        assert_eq!(local_path(Some("https://evil.example")), "/resources");
        assert_eq!(local_path(None), "/resources");
    }
}
