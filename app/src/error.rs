//! `AppError`: the one error type that crosses the REST API (as an HTTP status + JSON body)
//! and the dashboard's server functions (as a serialized value).
//!
//! Client errors say exactly what is wrong and, where a request field is at fault, name it
//! (`resources[0].friendly_name`). Internal errors are logged server-side with their whole
//! chain and reach the client only as an opaque message with a request id
//! (see `AppError::internal`, server only).

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

/// Errors of the API and of server functions. The JSON body of an error response is
/// `{"detail": <Display text>, "code": <code()>, "field": <field or null>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// 401: no token, or a token that is malformed, badly signed, of another issuer or
    /// audience, or expired. The text says which.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid token without the right (e.g. a user token on a write, a non-admin on
    /// the catalog).
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown, or belongs to another experiment (its existence is not revealed).
    #[error("{0}")]
    NotFound(String),
    /// 400: the request as a whole is unusable (malformed id in the path, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// 422: a field of the body has a bad value.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// 409: the request collides with existing state (a name in use, an image in use).
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// 413: the body is larger than allowed.
    #[error("request body too large (limit {limit_bytes} bytes)")]
    PayloadTooLarge { limit_bytes: usize },
    /// 429: this client sent too many requests of a kind (sign-ins, failed tokens, writes);
    /// the answer carries `Retry-After` (RFC 6585 §4, RFC 9110 §10.2.3).
    #[error("too many {what} from this client; retry in {retry_after_secs} s")]
    TooManyRequests { what: String, retry_after_secs: u64 },
    /// 502: the cloud behind a resource refused or failed the request; the text is its own.
    #[error("{0}")]
    Upstream(String),
    /// 503: a backend this request needs is not configured or not reachable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: something broke on our side; the details are in the server log under this id.
    #[error("internal error (request id {request_id}); the details are in the server log")]
    Internal { request_id: String },
    /// The server function transport itself failed (network, decoding).
    #[error("{0}")]
    ServerFn(String),
}

impl AppError {
    /// HTTP status code of this error.
    pub fn status(&self) -> u16 {
        match self {
            AppError::Unauthenticated(_) => 401,
            AppError::Forbidden(_) => 403,
            AppError::NotFound(_) => 404,
            AppError::BadRequest(_) => 400,
            AppError::Invalid { .. } => 422,
            AppError::Conflict { .. } => 409,
            AppError::PayloadTooLarge { .. } => 413,
            AppError::TooManyRequests { .. } => 429,
            AppError::Upstream(_) => 502,
            AppError::Unavailable(_) => 503,
            AppError::Internal { .. } | AppError::ServerFn(_) => 500,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "unauthenticated",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::BadRequest(_) => "bad_request",
            AppError::Invalid { .. } => "invalid_field",
            AppError::Conflict { .. } => "conflict",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::TooManyRequests { .. } => "rate_limited",
            AppError::Upstream(_) => "upstream",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal { .. } => "internal",
            AppError::ServerFn(_) => "transport",
        }
    }

    /// The request field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            AppError::Invalid { field, .. } | AppError::Conflict { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Shorthand for a 422 naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The message without the field prefix (for showing next to a form field).
    pub fn message(&self) -> String {
        match self {
            AppError::Invalid { message, .. } | AppError::Conflict { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    /// Arguments the server could not read are the caller's mistake (400); transport
    /// failures stay `ServerFn`.
    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            ServerFnErrorErr::Args(message) => {
                AppError::BadRequest(format!("the form's fields could not be read: {message}"))
            }
            other => AppError::ServerFn(other.to_string()),
        }
    }
}

/// Shorthand result type.
pub type AppResult<T> = Result<T, AppError>;
