//! Per-client rate limits (an entry-point concern: a middleware on the router), keyed by the
//! peer's IP address (`ConnectInfo` from `server::serve`), with the `governor` crate's GCRA
//! limiters. Over a limit the answer is 429 with `Retry-After` (RFC 6585 §4):
//!
//! - sign-ins (`/api/sign-in`, `/api/dev-sign-in`, and `/auth/login`, which starts an OpenID
//!   Connect sign-in and stores it in a new session): `RATE_LIMIT_SIGN_INS_PER_MINUTE`;
//! - failed token checks (answers 401): `RATE_LIMIT_AUTH_FAILURES_PER_MINUTE`; past it the
//!   client's requests are refused unverified until the limiter has room again, so tokens
//!   cannot be guessed at speed;
//! - OpenStack connection tests (`POST <API>/clouds-yaml/test`, the dashboard's
//!   `/api/test-cloud`), which make the server call out: `RATE_LIMIT_CONNECTION_TESTS_PER_MINUTE`;
//! - writes to the API (any method but GET, HEAD, OPTIONS under the API base):
//!   `RATE_LIMIT_WRITES_PER_MINUTE`.
//!
//! Each limit allows its whole minute's budget as one burst. Requests without a peer address
//! (in-process calls) are not limited.

use crate::error::AppError;
use crate::ssr::config::Limits;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The limiters of one server process.
pub struct RateLimits {
    sign_ins: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    writes: Option<DefaultKeyedRateLimiter<IpAddr>>,
    connection_tests: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Clients over the auth-failure limit, until when.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    /// The API base path (`/apis/bi.slices.eu/v1alpha2`).
    api_base: &'static str,
}

fn limiter(per_minute: u32) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    NonZeroU32::new(per_minute)
        .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n).allow_burst(n)))
}

impl RateLimits {
    pub fn new(limits: Limits, api_base: &'static str) -> Self {
        Self {
            sign_ins: limiter(limits.sign_ins_per_minute),
            auth_failures: limiter(limits.auth_failures_per_minute),
            writes: limiter(limits.writes_per_minute),
            connection_tests: limiter(limits.connection_tests_per_minute),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            api_base,
        }
    }

    /// `Err(429)` when `ip` is over `limiter`'s limit (one request counted).
    fn check(
        limiter: Option<&DefaultKeyedRateLimiter<IpAddr>>,
        ip: IpAddr,
        what: &str,
    ) -> Result<(), AppError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::TooManyRequests {
                what: what.to_string(),
                retry_after_secs: wait.as_secs().max(1),
            }
        })
    }

    /// Whether `ip` is refused for failed token checks, and for how long.
    fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let until = self.blocked.get(&ip)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// The middleware: checks the request against the limits before it runs, and counts a 401
/// answer as a failed token check.
pub async fn limit(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    else {
        return next.run(request).await;
    };
    let ip = peer.ip();
    let path = request.uri().path();
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let before = if let Some(left) = limits.blocked_for(ip) {
        Err(AppError::TooManyRequests {
            what: "requests with invalid tokens".into(),
            retry_after_secs: left.as_secs().max(1),
        })
    } else if path == "/api/sign-in" || path == "/api/dev-sign-in" || path == "/auth/login" {
        RateLimits::check(limits.sign_ins.as_ref(), ip, "sign-ins")
    } else if path == "/api/test-cloud"
        || (path.starts_with(limits.api_base) && path.ends_with("/clouds-yaml/test"))
    {
        RateLimits::check(limits.connection_tests.as_ref(), ip, "connection tests")
    } else if write && path.starts_with(limits.api_base) {
        RateLimits::check(limits.writes.as_ref(), ip, "write requests")
    } else {
        Ok(())
    };
    if let Err(refused) = before {
        return refused.into_response();
    }
    let response = next.run(request).await;
    if response.status() != axum::http::StatusCode::UNAUTHORIZED {
        return response;
    }
    match RateLimits::check(
        limits.auth_failures.as_ref(),
        ip,
        "requests with invalid tokens",
    ) {
        Ok(()) => response,
        Err(refused) => {
            if let AppError::TooManyRequests {
                retry_after_secs, ..
            } = &refused
            {
                let until = Instant::now() + Duration::from_secs(*retry_after_secs);
                limits.blocked.insert(ip, until);
            }
            tracing::warn!(%ip, "too many requests with invalid tokens; refusing them for a while");
            refused.into_response()
        }
    }
}
