//! The SLICES REST API under `/apis/bi.slices.eu/v1alpha2` (contract:
//! ../shared/slices-api.md), its OpenAPI document (utoipa) and the offline API docs
//! (Swagger UI at `/docs`, ReDoc at `/redoc`).
//!
//! Every route authenticates with `Authorization: Bearer <JWT>`. Errors are JSON:
//! `{"detail": "...", "code": "...", "field": "..."|null}` with the status of [`AppError`].

use crate::error::AppError;
use crate::model::*;
use crate::ssr::auth::Principal;
use crate::ssr::list_cache::{ListKey, Page};
use crate::ssr::resources::ListQuery;
use crate::ssr::state::AppState;
use crate::ssr::{catalog, catalog_import, clouds, resources, tasks};
use crate::templates::{CreateTemplateRequest, InstantiateRequest, NewVersionRequest, Template};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Base path of the API.
pub const BASE: &str = "/apis/bi.slices.eu/v1alpha2";
/// Largest JSON body accepted, bytes.
pub const BODY_LIMIT: usize = 256 * 1024;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "detail": self.to_string(),
            "code": self.code(),
            "field": self.field(),
        });
        let retry_after = match &self {
            AppError::TooManyRequests {
                retry_after_secs, ..
            } => HeaderValue::from_str(&retry_after_secs.to_string()).ok(),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        response
    }
}

/// The token of a request's `Authorization: Bearer <token>` header (RFC 6750 §2.1), not yet
/// verified; 401 saying what is wrong with the header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, AppError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            AppError::Unauthenticated("missing `Authorization: Bearer <token>` header".into())
        })?
        .to_str()
        .map_err(|_| AppError::Unauthenticated("Authorization header is not text".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            AppError::Unauthenticated("Authorization header must be `Bearer <token>`".into())
        })
}

/// The verified bearer token of a request.
pub struct Bearer(pub Principal);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        state
            .auth
            .verify(bearer_token(&parts.headers)?)
            .await
            .map(Bearer)
    }
}

/// A JSON body whose errors name the field (`resources[0].flavor_id: missing field`),
/// 413 beyond [`BODY_LIMIT`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_) => AppError::PayloadTooLarge {
                    limit_bytes: BODY_LIMIT,
                },
                other => AppError::BadRequest(other.body_text()),
            })?;
        // PostgreSQL text cannot hold U+0000: refuse it here, not as a database error.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(AppError::BadRequest(
                "strings in the body must not contain U+0000 (NUL)".into(),
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes JSON, naming the failing path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return AppError::BadRequest(format!("body is not valid JSON: {inner}"));
        }
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        // serde's text ends with " at line 1 column 42"; the field name says more.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        AppError::Invalid { field, message }
    })
}

/// Query string with a 400 that says what is wrong.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        // PostgreSQL text cannot hold U+0000 (a filter with it would fail in the database).
        let query = parts.uri.query().unwrap_or_default();
        if query.to_ascii_lowercase().contains("%00") {
            return Err(AppError::BadRequest(
                "query parameters must not contain U+0000 (NUL)".into(),
            ));
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| AppError::BadRequest(e.body_text()))
    }
}

/// The API routes (mounted at [`BASE`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/disk-images", get(list_images).post(create_image))
        .route(
            "/disk-images/{id}",
            get(get_image).patch(update_image).delete(delete_image),
        )
        .route("/flavors", get(list_flavors).post(create_flavor))
        .route(
            "/flavors/{id}",
            get(get_flavor).patch(update_flavor).delete(delete_flavor),
        )
        .route("/resources", get(list_resources).post(create_resources))
        .route(
            "/resources/{id}",
            get(get_resource)
                .patch(extend_resource)
                .delete(delete_resource),
        )
        .route("/resources/{id}/console", get(get_console_log))
        .route("/resources/{id}/logs", get(get_pod_logs))
        .route(
            "/clouds-yaml",
            get(get_clouds_yaml)
                .put(put_clouds_yaml)
                .patch(patch_clouds_yaml)
                .delete(delete_clouds_yaml),
        )
        .route("/clouds-yaml/test", axum::routing::post(test_clouds_yaml))
        .route("/catalog/import", axum::routing::post(import_catalog))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route("/audit", get(list_audit))
        .route("/templates", get(list_templates).post(create_template))
        .route("/templates/{id}", get(get_template))
        .route(
            "/templates/{id}/versions",
            axum::routing::post(add_template_version),
        )
        .route(
            "/templates/{id}/instantiate",
            axum::routing::post(instantiate_template),
        )
        .route_layer(axum::middleware::from_fn(crate::ssr::metrics::http_metrics))
        .fallback(|| async { AppError::NotFound("no such API route".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/disk-images", tag = "catalog",
    responses((status = 200, body = Vec<DiskImage>), (status = 401, description = "no or bad token")))]
async fn list_images(
    State(s): State<AppState>,
    Bearer(p): Bearer,
) -> Result<Json<Vec<DiskImage>>, AppError> {
    catalog::list_images(&s.pool, s.site(), p.is_admin)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/disk-images/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^image_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "image_<site>_<suffix>")),
    responses((status = 200, body = DiskImage), (status = 404, description = "unknown (or hidden)")))]
async fn get_image(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<Json<DiskImage>, AppError> {
    catalog::get_image(&s.pool, s.site(), &id, p.is_admin)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/disk-images", tag = "catalog",
    request_body = DiskImageInput,
    responses((status = 201, body = DiskImage), (status = 403, description = "not an admin"),
              (status = 422, description = "a field is invalid")))]
async fn create_image(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiJson(input): ApiJson<DiskImageInput>,
) -> Result<(StatusCode, Json<DiskImage>), AppError> {
    let image = catalog::create_image(&s.pool, s.site(), &p, &input).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

#[utoipa::path(patch, path = "/apis/bi.slices.eu/v1alpha2/disk-images/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^image_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "image_<site>_<suffix>")), request_body = DiskImagePatch,
    responses((status = 200, body = DiskImage), (status = 403), (status = 404), (status = 422)))]
async fn update_image(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<DiskImagePatch>,
) -> Result<Json<DiskImage>, AppError> {
    catalog::update_image(&s.pool, s.site(), &p, &id, &patch)
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/apis/bi.slices.eu/v1alpha2/disk-images/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^image_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "image_<site>_<suffix>")),
    responses((status = 204), (status = 403), (status = 404),
              (status = 409, description = "still referenced by resources; hide it instead")))]
async fn delete_image(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    catalog::delete_image(&s.pool, s.site(), &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/flavors", tag = "catalog",
    responses((status = 200, body = Vec<Flavor>), (status = 401)))]
async fn list_flavors(
    State(s): State<AppState>,
    Bearer(_p): Bearer,
) -> Result<Json<Vec<Flavor>>, AppError> {
    catalog::list_flavors(&s.pool, s.site()).await.map(Json)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/flavors/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^flavor_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "flavor_<site>_<suffix>")),
    responses((status = 200, body = Flavor), (status = 404)))]
async fn get_flavor(
    State(s): State<AppState>,
    Bearer(_p): Bearer,
    Path(id): Path<String>,
) -> Result<Json<Flavor>, AppError> {
    catalog::get_flavor(&s.pool, s.site(), &id).await.map(Json)
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/flavors", tag = "catalog",
    request_body = FlavorInput,
    responses((status = 201, body = Flavor), (status = 403), (status = 422)))]
async fn create_flavor(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiJson(input): ApiJson<FlavorInput>,
) -> Result<(StatusCode, Json<Flavor>), AppError> {
    let flavor = catalog::create_flavor(&s.pool, s.site(), &p, &input).await?;
    Ok((StatusCode::CREATED, Json(flavor)))
}

#[utoipa::path(patch, path = "/apis/bi.slices.eu/v1alpha2/flavors/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^flavor_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "flavor_<site>_<suffix>")), request_body = FlavorPatch,
    responses((status = 200, body = Flavor), (status = 403), (status = 404), (status = 422)))]
async fn update_flavor(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<FlavorPatch>,
) -> Result<Json<Flavor>, AppError> {
    catalog::update_flavor(&s.pool, s.site(), &p, &id, &patch)
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/apis/bi.slices.eu/v1alpha2/flavors/{id}", tag = "catalog",
    params(("id" = String, Path, pattern = "^flavor_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "flavor_<site>_<suffix>")),
    responses((status = 204), (status = 403), (status = 404), (status = 409)))]
async fn delete_flavor(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    catalog::delete_flavor(&s.pool, s.site(), &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/resources", tag = "resources",
    params(ListQuery),
    responses((status = 200, body = Vec<Resource>,
               description = "Oldest first. When the page is full, a `Link: <…>; rel=\"next\"` header (RFC 8288) gives the next page."),
              (status = 400, description = "bad query"), (status = 401)))]
async fn list_resources(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, AppError> {
    let scope = crate::ssr::access::scope(&p);
    let limit = query.limit.unwrap_or(resources::DEFAULT_PAGE);
    let key = ListKey {
        scope_experiment: scope.experiment_id,
        scope_user: scope.requested_by,
        experiment_id: query.experiment_id.clone(),
        project: query.project.clone(),
        include_deleted: query.include_deleted,
        limit,
        offset: query.offset.unwrap_or(0),
    };
    // A kept page is served only once every change committed before this request has
    // reached this process's cache (another replica's write included: `catch_up`).
    if s.list_cache.get(&key).is_some() && s.list_cache.catch_up().await {
        if let Some(page) = s.list_cache.get(&key) {
            crate::ssr::metrics::list_cache(true);
            return Ok(page_response(page));
        }
    }
    crate::ssr::metrics::list_cache(false);
    // Recorded before the database is read: a change committed meanwhile voids this fill.
    let generation = s.list_cache.begin_fill();
    let items = resources::list_resources(&s.pool, s.site(), &p, &query).await?;
    let body = serde_json::to_vec(&items).map_err(crate::ssr::internal)?;
    let page = Page {
        body: body.into(),
        next: (items.len() as i64 == limit)
            .then(|| next_page_link(&query, limit))
            .flatten(),
    };
    if let Some(generation) = generation {
        s.list_cache.put(key, generation, page.clone());
    }
    Ok(page_response(page))
}

/// `Link: <…>; rel="next"` (RFC 8288) for the page after a full one.
fn next_page_link(query: &ListQuery, limit: i64) -> Option<HeaderValue> {
    let mut next = format!(
        "{BASE}/resources?limit={limit}&offset={}",
        query.offset.unwrap_or(0) + limit
    );
    for (key, value) in [
        ("experiment_id", &query.experiment_id),
        ("project", &query.project),
    ] {
        if let Some(v) = value {
            next.push_str(&format!("&{key}={}", crate::ssr::query_value(v)));
        }
    }
    if query.include_deleted {
        next.push_str("&include_deleted=true");
    }
    HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")).ok()
}

fn page_response(page: Page) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        page.body,
    )
        .into_response();
    if let Some(next) = page.next {
        response.headers_mut().insert(header::LINK, next);
    }
    response
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/resources", tag = "resources",
    request_body = CreateResourcesRequest,
    responses((status = 202, body = CreateResourcesResponse,
               description = "Accepted: each resource is created by its task (poll GET /tasks/{id})."),
              (status = 401), (status = 403, description = "not an experiment token"),
              (status = 409, description = "a name is already used by a live resource"),
              (status = 413), (status = 422, description = "a field is invalid (named in `field`), or the request would take the experiment past its quota of live resources, vCPUs or RAM (`field` = `resources`)"),
              (status = 503, description = "the backend for this flavor type is not configured")))]
async fn create_resources(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiJson(request): ApiJson<CreateResourcesRequest>,
) -> Result<(StatusCode, Json<CreateResourcesResponse>), AppError> {
    let created = resources::create_resources(&s.resources(), &p, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/resources/{id}", tag = "resources",
    params(("id" = String, Path, pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "resource_<site>_<suffix>")),
    responses((status = 200, body = Resource), (status = 404, description = "unknown or another experiment's")))]
async fn get_resource(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<Json<Resource>, AppError> {
    resources::get_resource(&s.pool, s.site(), &p, &id)
        .await
        .map(Json)
}

#[utoipa::path(patch, path = "/apis/bi.slices.eu/v1alpha2/resources/{id}", tag = "resources",
    params(("id" = String, Path, pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "resource_<site>_<suffix>")), request_body = ResourcePatch,
    responses((status = 200, body = Resource), (status = 403), (status = 404), (status = 409), (status = 422)))]
async fn extend_resource(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ResourcePatch>,
) -> Result<Json<Resource>, AppError> {
    resources::extend_resource(&s.resources(), &p, &id, &patch)
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/apis/bi.slices.eu/v1alpha2/resources/{id}", tag = "resources",
    params(("id" = String, Path, pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "resource_<site>_<suffix>")),
    responses((status = 202, body = Task, description = "the delete task (the same one when repeated)"),
              (status = 403), (status = 404)))]
async fn delete_resource(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Task>), AppError> {
    let task = resources::delete_resource(&s.resources(), &p, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Query of `GET /tasks`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// `resource_<site>_<suffix>` (required).
    #[param(pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    pub resource_id: String,
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/tasks", tag = "tasks",
    params(TaskQuery),
    responses((status = 200, body = Vec<Task>), (status = 400), (status = 404)))]
async fn list_tasks(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiQuery(q): ApiQuery<TaskQuery>,
) -> Result<Json<Vec<Task>>, AppError> {
    tasks::list_tasks(&s.pool, s.site(), &p, &q.resource_id)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, pattern = "^task_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "task_<site>_<suffix>")),
    responses((status = 200, body = Task), (status = 404)))]
async fn get_task(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<Json<Task>, AppError> {
    tasks::get_task(&s.pool, s.site(), &p, &id).await.map(Json)
}

/// Query of `GET /resources/{id}/console`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// How many of the last lines to return (1-2000, default 200).
    #[param(minimum = 1, maximum = 2000)]
    pub lines: Option<u32>,
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/resources/{id}/console", tag = "resources",
    params(("id" = String, Path, pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "resource_<site>_<suffix> of a VM"), ConsoleQuery),
    responses((status = 200, body = ConsoleLog), (status = 404), (status = 409, description = "not a VM, or no server"),
              (status = 422, description = "lines out of range"), (status = 502, description = "Nova refused")))]
async fn get_console_log(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<Json<ConsoleLog>, AppError> {
    resources::console_log(&s.resources(), &p, &id, q.lines)
        .await
        .map(Json)
}

/// Query of `GET /resources/{id}/logs` (the Kubernetes `pods/log` query, API reference
/// "Read Log of the specified Pod").
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The container (default: the Pod's only one).
    #[param(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub container: Option<String>,
    /// Only the last this many lines (1-100000; default: the whole log).
    #[param(minimum = 1, maximum = 100000)]
    pub tail_lines: Option<i64>,
    /// Only lines of the last this many seconds (at least 1).
    #[param(minimum = 1)]
    pub since_seconds: Option<i64>,
    /// Start each line with its RFC 3339 time (default false).
    pub timestamps: Option<bool>,
    /// Stream the log as `text/event-stream` (one `data:` event per line) until the
    /// container ends or the client leaves (default false: the log so far as `text/plain`).
    pub follow: Option<bool>,
}

impl From<LogsQuery> for crate::ssr::backend::LogQuery {
    fn from(q: LogsQuery) -> Self {
        Self {
            container: q.container,
            tail_lines: q.tail_lines,
            since_seconds: q.since_seconds,
            timestamps: q.timestamps.unwrap_or(false),
            follow: q.follow.unwrap_or(false),
        }
    }
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/resources/{id}/logs", tag = "resources",
    params(("id" = String, Path, pattern = "^resource_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "resource_<site>_<suffix> of a Pod"), LogsQuery),
    responses((status = 200, description = "the log: `text/plain`, or with `follow=true` `text/event-stream` (one event per line; an `error` event if reading stops early)",
               content((String = "text/plain"), (String = "text/event-stream"))),
              (status = 404), (status = 409, description = "not a Pod, no Pod, or its container has not started"),
              (status = 422, description = "container, tail_lines or since_seconds wrong"),
              (status = 502, description = "the Kubernetes API refused"), (status = 503, description = "the Kubernetes API does not answer")))]
async fn get_pod_logs(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, AppError> {
    let output = resources::pod_logs(&s.resources(), &p, &id, &q.into()).await?;
    Ok(log_response(output, None))
}

/// A Pod log as an HTTP answer: `text/plain; charset=utf-8` (with `attachment` named
/// `download` when given), or a followed log as `text/event-stream`, one `data:` event per
/// line and an `error` event when reading stops early (HTML Living Standard, "Server-sent
/// events"). Shared by the API and the dashboard's log routes.
pub fn log_response(output: crate::ssr::backend::LogOutput, download: Option<&str>) -> Response {
    use crate::ssr::backend::LogOutput;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    match output {
        LogOutput::Text(text) => {
            let mut response = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                text,
            )
                .into_response();
            let disposition = download.and_then(|name| {
                HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")).ok()
            });
            if let Some(value) = disposition {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        LogOutput::Lines(lines) => {
            let events = lines.map(|line| {
                Ok::<_, std::convert::Infallible>(match line {
                    Ok(line) => Event::default().data(line),
                    Err(e) => Event::default().event("error").data(e.message),
                })
            });
            Sse::new(events)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
    }
}

/// Query of `PUT /clouds-yaml`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The default cloud (default: the file's first cloud).
    pub default_cloud: Option<String>,
}

#[utoipa::path(put, path = "/apis/bi.slices.eu/v1alpha2/clouds-yaml", tag = "clouds",
    params(UploadQuery),
    request_body(content = String, content_type = "application/yaml",
        description = "The whole clouds.yaml (also accepted as text/plain), at most 64 KiB"),
    responses((status = 200, body = CloudsYamlSummary, description = "stored; the redacted summary"),
              (status = 400, description = "not UTF-8 text, or a content type other than YAML/plain text"),
              (status = 413, description = "larger than 64 KiB"),
              (status = 422, description = "malformed or hostile YAML (aliases, nesting over 12, over 4000 nodes), or a field missing or wrong; `field` names it with its line, e.g. `clouds.x.auth (line 3)`")))]
async fn put_clouds_yaml(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<CloudsYamlSummary>, AppError> {
    let user = crate::ssr::access::credentials_owner(&p)?;
    if let Some(kind) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let kind = kind.split(';').next().unwrap_or_default().trim();
        if !matches!(
            kind,
            "application/yaml"
                | "application/x-yaml"
                | "text/yaml"
                | "text/x-yaml"
                | "text/plain"
                | "application/octet-stream"
        ) {
            return Err(AppError::BadRequest(format!(
                "send the clouds.yaml text as application/yaml or text/plain, not {kind}"
            )));
        }
    }
    if body.len() > crate::ssr::cloud_config::MAX_BYTES {
        return Err(AppError::PayloadTooLarge {
            limit_bytes: crate::ssr::cloud_config::MAX_BYTES,
        });
    }
    let text = zeroize::Zeroizing::new(
        String::from_utf8(body.to_vec())
            .map_err(|_| AppError::BadRequest("the clouds.yaml is not UTF-8 text".into()))?,
    );
    clouds::store(
        &s.pool,
        &s.clouds_keys,
        user,
        &text,
        q.default_cloud.as_deref(),
    )
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/clouds-yaml", tag = "clouds",
    responses((status = 200, body = CloudsYamlSummary, description = "never a password or secret"),
              (status = 404, description = "nothing uploaded")))]
async fn get_clouds_yaml(
    State(s): State<AppState>,
    Bearer(p): Bearer,
) -> Result<Json<CloudsYamlSummary>, AppError> {
    clouds::summary(&s.pool, crate::ssr::access::credentials_owner(&p)?)
        .await
        .map(Json)
}

#[utoipa::path(patch, path = "/apis/bi.slices.eu/v1alpha2/clouds-yaml", tag = "clouds",
    request_body = DefaultCloudPatch,
    responses((status = 200, body = CloudsYamlSummary), (status = 404), (status = 422)))]
async fn patch_clouds_yaml(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiJson(patch): ApiJson<DefaultCloudPatch>,
) -> Result<Json<CloudsYamlSummary>, AppError> {
    clouds::set_default(
        &s.pool,
        crate::ssr::access::credentials_owner(&p)?,
        patch.default_cloud.trim(),
    )
    .await
    .map(Json)
}

#[utoipa::path(delete, path = "/apis/bi.slices.eu/v1alpha2/clouds-yaml", tag = "clouds",
    responses((status = 204, description = "forgotten"), (status = 404)))]
async fn delete_clouds_yaml(
    State(s): State<AppState>,
    Bearer(p): Bearer,
) -> Result<StatusCode, AppError> {
    clouds::remove(&s.pool, crate::ssr::access::credentials_owner(&p)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `POST /clouds-yaml/test` and `POST /catalog/import`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CloudQuery {
    /// The cloud to use (default: the default cloud / the site file's first cloud).
    pub cloud: Option<String>,
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/clouds-yaml/test", tag = "clouds",
    params(CloudQuery),
    responses((status = 200, body = ConnectionTest, description = "`ok` false carries Keystone's own message"),
              (status = 404, description = "nothing uploaded"), (status = 422, description = "no such cloud")))]
async fn test_clouds_yaml(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiQuery(q): ApiQuery<CloudQuery>,
) -> Result<Json<ConnectionTest>, AppError> {
    clouds::test_connection(
        &s.pool,
        &s.clouds_keys,
        &s.openstack,
        crate::ssr::access::credentials_owner(&p)?,
        q.cloud.as_deref(),
    )
    .await
    .map(Json)
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/catalog/import", tag = "catalog",
    params(CloudQuery),
    responses((status = 200, body = ImportReport, description = "what was added, updated, unchanged, skipped"),
              (status = 403, description = "admins only"), (status = 422, description = "no such site cloud"),
              (status = 409, description = "no site cloud is configured (SITE_CLOUDS_YAML)"),
              (status = 503, description = "SITE_CLOUDS_YAML unreadable, or the cloud is unreachable")))]
async fn import_catalog(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiQuery(q): ApiQuery<CloudQuery>,
) -> Result<Json<ImportReport>, AppError> {
    crate::ssr::access::require(&p, crate::ssr::access::Right::ChangeCatalog)?;
    catalog_import::import_site_cloud(
        &s.pool,
        &s.openstack,
        &crate::ssr::audit::Actor::of(&p),
        s.config.site_clouds_yaml.as_deref(),
        q.cloud.as_deref(),
    )
    .await
    .map(Json)
}

/// The media type of a JSON-lines export (one JSON object per line).
pub const NDJSON: &str = "application/x-ndjson";

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/templates", tag = "templates",
    responses((status = 200, body = Vec<Template>, description = "The site's templates, your project's and your experiment's, each with its newest version (`latest`); built-in ones first.")))]
async fn list_templates(
    State(s): State<AppState>,
    Bearer(p): Bearer,
) -> Result<Json<Vec<Template>>, AppError> {
    crate::ssr::templates::list(&s.pool, s.site(), &p)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/templates/{id}", tag = "templates",
    params(("id" = String, Path, pattern = "^template_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "template_<site>_<suffix>")),
    responses((status = 200, body = Template, description = "With every version, newest first (`versions`)."),
              (status = 404, description = "unknown, or another project's or experiment's")))]
async fn get_template(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
) -> Result<Json<Template>, AppError> {
    crate::ssr::templates::get(&s.pool, s.site(), &p, &id)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/templates", tag = "templates",
    request_body = CreateTemplateRequest,
    responses((status = 201, body = Template, description = "Created with version 1."),
              (status = 403, description = "site templates: not an admin; project and experiment templates: not an experiment token"),
              (status = 409, description = "the owner has a template of this name (`field` = `name`)"),
              (status = 422, description = "a field is wrong (`name`, `parameters[i].…`, `resources[i]`)")))]
async fn create_template(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    ApiJson(request): ApiJson<CreateTemplateRequest>,
) -> Result<(StatusCode, Json<Template>), AppError> {
    let template = crate::ssr::templates::create(&s.pool, s.site(), &p, &request).await?;
    Ok((StatusCode::CREATED, Json(template)))
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/templates/{id}/versions", tag = "templates",
    params(("id" = String, Path, pattern = "^template_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "template_<site>_<suffix>")),
    request_body = NewVersionRequest,
    responses((status = 201, body = Template, description = "The template with its new version as `latest`; earlier versions are unchanged."),
              (status = 403, description = "not the template's owner (site templates: admins)"), (status = 404),
              (status = 422, description = "a field is wrong (`parameters[i].…`, `resources[i]`)")))]
async fn add_template_version(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<NewVersionRequest>,
) -> Result<(StatusCode, Json<Template>), AppError> {
    let template = crate::ssr::templates::add_version(&s.pool, s.site(), &p, &id, &request).await?;
    Ok((StatusCode::CREATED, Json(template)))
}

#[utoipa::path(post, path = "/apis/bi.slices.eu/v1alpha2/templates/{id}/instantiate", tag = "templates",
    params(("id" = String, Path, pattern = "^template_[a-z0-9.-]+_[0-7][0-9a-hjkmnp-tv-z]{25}$", description = "template_<site>_<suffix>")),
    request_body = InstantiateRequest,
    responses((status = 202, body = CreateResourcesResponse, description = "As POST /resources: every resource of the rendered version and the task creating it (all or nothing)."),
              (status = 403, description = "not an experiment token"), (status = 404),
              (status = 409, description = "a name is taken by a live resource, or `request_id` was used with another body"),
              (status = 422, description = "a parameter is wrong (`parameters.<name>`), `version` unknown, or a rendered resource is refused as POST /resources would (`resources[i].…`)")))]
async fn instantiate_template(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<InstantiateRequest>,
) -> Result<(StatusCode, Json<CreateResourcesResponse>), AppError> {
    let created = crate::ssr::templates::instantiate(&s.resources(), &p, &id, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[utoipa::path(get, path = "/apis/bi.slices.eu/v1alpha2/audit", tag = "audit",
    params(AuditFilter),
    responses((status = 200, body = Vec<AuditEntry>,
               description = "Newest first. When the page is full, a `Link: <…>; rel=\"next\"` header (RFC 8288) gives the next page. With `Accept: application/x-ndjson` the answer is every matching entry (or `limit` of them) as JSON lines, streamed."),
              (status = 400, description = "bad filter (named first in `detail`)"), (status = 401),
              (status = 403, description = "not an admin (ADMIN_USER_IDS)")))]
async fn list_audit(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    headers: axum::http::HeaderMap,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> Result<Response, AppError> {
    use crate::ssr::audit;
    crate::ssr::access::require(&p, crate::ssr::access::Right::ReadAudit)?;
    audit::check_filter(&filter)?;
    let wants_lines = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if wants_lines {
        let body = axum::body::Body::from_stream(audit::export(s.pool.clone(), filter));
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
            body,
        )
            .into_response());
    }
    let items = audit::list(&s.pool, &filter).await?;
    let limit = filter.limit.unwrap_or(audit::DEFAULT_PAGE);
    let mut response = Json(&items).into_response();
    if items.len() as i64 == limit {
        let next = AuditFilter {
            offset: Some(filter.offset.unwrap_or(0) + limit),
            limit: Some(limit),
            ..filter
        };
        let query = next.query_string();
        if let Ok(link) = HeaderValue::from_str(&format!("<{BASE}/audit?{query}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A SLICES token: `slices experiment jwt <name>` (reads and writes) or `slices auth id-token <url>` (reads).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The body of every error answer (see `IntoResponse for AppError`): `detail` for people,
/// `code` for programs (`invalid`, `not_found`, …), `field` naming the request field at fault
/// (`resources[0].flavor_id`) when there is one.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub detail: String,
    pub code: String,
    pub field: Option<String>,
}

/// Documents on every operation the error answers the shared layers give (so a client, or
/// schemathesis, finds every status it can get in the document): 400 (bad JSON, query or
/// path), 401 (token missing or invalid), 403 (token not allowed here), 429 (rate limits,
/// with `Retry-After`); 404 where the path names an entry; 413 and 422 where there is a body
/// or query; each with [`ErrorBody`]. A status an operation documents itself is kept.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.schemas.insert(
            "ErrorBody".into(),
            <ErrorBody as utoipa::PartialSchema>::schema(),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names_entry = path.contains('{');
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let has_input = operation.request_body.is_some()
                    || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut common = vec![
                    ("400", "malformed request: bad JSON, query or path parameter"),
                    ("401", "token missing, expired or invalid (`WWW-Authenticate: Bearer`)"),
                    ("403", "this token may not do this (e.g. a user token on a write, another experiment's resource)"),
                    ("429", "too many requests of this kind from this client; see `Retry-After`"),
                ];
                if names_entry {
                    common.push(("404", "no such entry (or not visible to this token)"));
                }
                if has_input {
                    common.push(("413", "request body too large"));
                    common.push(("422", "a field is invalid (named in `field`)"));
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "slices-blueprint", description = "SLICES-RI blueprint backend: catalog, resources (OpenStack VMs, Kubernetes pods) and tasks."),
    paths(list_images, get_image, create_image, update_image, delete_image,
          list_flavors, get_flavor, create_flavor, update_flavor, delete_flavor,
          import_catalog,
          list_resources, create_resources, get_resource, extend_resource, delete_resource,
          get_console_log,
          get_pod_logs,
          list_tasks, get_task,
          put_clouds_yaml, get_clouds_yaml, patch_clouds_yaml, delete_clouds_yaml, test_clouds_yaml,
          list_audit,
          list_templates, get_template, create_template, add_template_version, instantiate_template),
    modifiers(&BearerScheme, &CommonResponses),
    security(("bearer" = [])),
    tags((name = "catalog", description = "Disk images and flavors (writes: admins)"),
         (name = "resources", description = "VMs and pods of an experiment"),
         (name = "tasks", description = "Asynchronous operations"),
         (name = "clouds", description = "Your own OpenStack clouds.yaml, used for your VMs (stored encrypted; never sent back)"),
         (name = "audit", description = "Who did what, when and from where (admins)"),
         (name = "templates", description = "Named, versioned sets of resources with parameters (profiles); instantiate one to request them all"))
)]
pub struct ApiDoc;

/// Swagger UI (assets compiled in: `utoipa-swagger-ui` `vendored`) at `/docs`, serving the
/// document at `<BASE>/openapi.json`, plus ReDoc at `/redoc` from locally served assets.
pub fn docs_router() -> Router<AppState> {
    let swagger = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url(format!("{BASE}/openapi.json"), ApiDoc::openapi());
    Router::new()
        .merge(swagger)
        .route("/redoc", get(redoc_page))
}

async fn redoc_page() -> axum::response::Html<&'static str> {
    axum::response::Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>slices-blueprint API</title>",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head><body>",
        "<redoc spec-url=\"/apis/bi.slices.eu/v1alpha2/openapi.json\"></redoc>",
        "<script src=\"/vendor/redoc/redoc.standalone.js\"></script></body></html>"
    ))
}

/// Dev issuer discovery and JWKS, so tools can verify dev tokens like portal tokens.
pub fn dev_issuer_router() -> Router<AppState> {
    Router::new()
        .route(
            "/dev-issuer/.well-known/openid-configuration",
            get(|State(s): State<AppState>| async move {
                match s.auth.dev_issuer() {
                    Some(dev) => Json(serde_json::json!({
                        "issuer": dev.issuer,
                        "jwks_uri": format!("{}/jwks.json", dev.issuer),
                        "id_token_signing_alg_values_supported": ["ES256"],
                    }))
                    .into_response(),
                    None => AppError::NotFound("the dev issuer is off".into()).into_response(),
                }
            }),
        )
        .route(
            "/dev-issuer/jwks.json",
            get(|State(s): State<AppState>| async move {
                match s.auth.dev_issuer() {
                    Some(dev) => {
                        Json(serde_json::json!({ "keys": [dev.public_jwk] })).into_response()
                    }
                    None => AppError::NotFound("the dev issuer is off".into()).into_response(),
                }
            }),
        )
}

/// `GET /metrics`: the Prometheus text format (see `metrics`); 503 when this process's
/// recorder is not the Prometheus one.
pub async fn metrics(State(s): State<AppState>) -> Response {
    match crate::ssr::metrics::render(&s.pool).await {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::ssr::metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        None => AppError::Unavailable("metrics are recorded elsewhere in this process".into())
            .into_response(),
    }
}

/// `GET /readyz`: 200 when the database answers and has every migration of this build
/// (a Kubernetes readiness probe: a replica of a newer build waits for `migrate`), with the
/// backends' state as `/healthz` reports it; 503 with the reason otherwise.
pub async fn readyz(State(s): State<AppState>) -> Response {
    let latest = crate::ssr::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let applied: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&s.pool)
            .await;
    let (ready, database) = match applied {
        Ok(Some(v)) if v >= latest => (true, "ok".to_string()),
        Ok(v) => (
            false,
            format!(
                "migrations pending: applied {}, this build needs {latest} (run `slices-blueprint migrate`)",
                v.unwrap_or(0)
            ),
        ),
        Err(e) if crate::ssr::database_unreachable(&e) => (false, "unreachable".to_string()),
        Err(e) => (false, format!("cannot read the migrations: {e}")),
    };
    let mut body = s.backends.health();
    body["database"] = database.into();
    body["ready"] = ready.into();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /healthz`: 200 when the database answers (503 otherwise); says how each backend is
/// connected (`{"database": "ok", "kubernetes": "connected; pod watch live", "openstack": …}`).
pub async fn healthz(State(s): State<AppState>) -> Response {
    let db = sqlx::query_scalar!("SELECT 1 AS \"one!\"")
        .fetch_one(&s.pool)
        .await
        .is_ok();
    let mut body = s.backends.health();
    body["database"] = if db { "ok" } else { "unreachable" }.into();
    let status = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
