//! Dashboard sessions (tower-sessions, PostgreSQL store; the browser holds only the
//! `slices_session` cookie: HttpOnly, SameSite=Lax, Secure unless the site is plain http).
//!
//! A session starts with a verified sign-in — "Sign in with SLICES" (OpenID Connect, see
//! [`crate::ssr::oidc`]) or a pasted SLICES user token — and then holds the user's id, not a
//! token. It ends on sign-out, after `SESSION_IDLE_SECS` without a request (the store's
//! expiry), `SESSION_ABSOLUTE_SECS` after its sign-in, or when the user signs out everywhere.
//! The session id changes at every sign-in (no fixation).
//!
//! The dashboard acts for an experiment through a remembered membership
//! ([`crate::ssr::accounts`]): attached once with a valid experiment token, kept until the
//! experiment expires. The session remembers which of the user's experiments is current.

use crate::error::AppError;
use crate::model::{ExperimentInfo, Viewer};
use crate::ssr::accounts::{self, Membership};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::auth::{Principal, TokenKind};
use crate::ssr::oidc::PendingLogin;
use crate::ssr::state::AppState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

const USER_KEY: &str = "slices.user";
const LOGIN_KEY: &str = "slices.oidc_login";

/// How a session was signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInMethod {
    /// OpenID Connect at SLICES_ISSUER.
    Oidc,
    /// A pasted SLICES user token.
    Token,
    /// The dev issuer's one-click sign-in.
    Dev,
}

impl SignInMethod {
    fn as_str(self) -> &'static str {
        match self {
            SignInMethod::Oidc => "oidc",
            SignInMethod::Token => "token",
            SignInMethod::Dev => "dev",
        }
    }
}

/// What the session stores (no token).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionUser {
    user_id: String,
    display_name: Option<String>,
    method: SignInMethod,
    signed_in_at: DateTime<Utc>,
    /// The last request seen (kept to within a tenth of the idle timeout: touching the
    /// session is what moves the store's expiry on).
    seen_at: DateTime<Utc>,
    /// The experiment the dashboard acts for (one of the user's memberships).
    experiment_id: Option<String>,
}

/// The signed-in user of a dashboard request.
pub struct DashboardAuth {
    pub user: Principal,
    /// The current experiment, acting through its membership.
    pub experiment: Option<Principal>,
    /// Every experiment the user attached that has not expired.
    pub memberships: Vec<Membership>,
    /// The session's current experiment has ended (expired or detached) since it was chosen.
    pub experiment_ended: bool,
    pub method: SignInMethod,
}

impl DashboardAuth {
    /// What the UI may know about the signed-in user.
    pub fn viewer(&self) -> Viewer {
        let info = |m: &Membership| ExperimentInfo {
            experiment_id: m.experiment_id.clone(),
            project_id: m.project_id.clone(),
            name: m.experiment_name.clone(),
            max_expires_at: m.experiment_expires_at,
            attached_at: m.attached_at,
        };
        let current = self
            .experiment
            .as_ref()
            .and_then(|e| e.experiment_id.as_deref());
        Viewer {
            user_id: self.user.subject.clone(),
            display_name: self
                .user
                .display_name
                .clone()
                .unwrap_or_else(|| self.user.subject.clone()),
            is_admin: self.user.is_admin,
            experiment: self
                .memberships
                .iter()
                .find(|m| Some(m.experiment_id.as_str()) == current)
                .map(info),
            experiments: self.memberships.iter().map(info).collect(),
            experiment_ended: self.experiment_ended,
            signed_in_with: self.method.as_str().to_string(),
        }
    }

    /// The principal to act with: the current experiment (with the user's admin right), or
    /// else the user.
    pub fn acting(&self) -> Principal {
        self.experiment.clone().unwrap_or_else(|| self.user.clone())
    }
}

/// Starts a session for `user_id` (a new session id: no fixation) and records the sign-in.
async fn start(
    state: &AppState,
    session: &Session,
    user_id: &str,
    display_name: Option<String>,
    method: SignInMethod,
    experiment_id: Option<String>,
) -> Result<(), AppError> {
    session.cycle_id().await.map_err(crate::ssr::internal)?;
    let _ = session.remove_value(LOGIN_KEY).await;
    let user = SessionUser {
        user_id: user_id.to_string(),
        display_name,
        method,
        signed_in_at: Utc::now(),
        seen_at: Utc::now(),
        experiment_id,
    };
    session
        .insert(USER_KEY, user)
        .await
        .map_err(crate::ssr::internal)?;
    let event = Event::new("session.sign_in")
        .object(user_id)
        .detail(serde_json::json!({"method": method.as_str()}));
    audit::record_alone(&state.pool, &Actor::user(user_id), event).await;
    Ok(())
}

/// Signs in with a pasted user token and, optionally, an experiment token to attach.
pub async fn sign_in(
    state: &AppState,
    session: &Session,
    user_token: &str,
    experiment_token: Option<&str>,
    method: SignInMethod,
) -> Result<(), AppError> {
    let user = state
        .auth
        .verify(user_token)
        .await
        .map_err(|e| AppError::invalid("user_token", e.message()))?;
    if user.kind != TokenKind::User {
        return Err(AppError::invalid(
            "user_token",
            "this is an experiment token; paste the output of `slices auth id-token <url>` here",
        ));
    }
    let user_id = user.subject.clone();
    let experiment = match experiment_token {
        Some(token) => Some(verify_experiment(state, token).await?),
        None => None,
    };
    if let Some(experiment) = &experiment {
        accounts::attach(&state.pool, &user_id, experiment, "experiment_token").await?;
    }
    let current = experiment.and_then(|e| e.experiment_id);
    start(state, session, &user_id, user.display_name, method, current).await
}

/// Verifies a pasted experiment token (its kind and user are [`accounts::attach`]'s to judge).
async fn verify_experiment(state: &AppState, token: &str) -> Result<Principal, AppError> {
    state
        .auth
        .verify(token)
        .await
        .map_err(|e| AppError::invalid("experiment_token", e.message()))
}

/// Attaches the experiment of a pasted experiment token to the signed-in user and makes it
/// current.
pub async fn attach_experiment(
    state: &AppState,
    session: &Session,
    auth: &DashboardAuth,
    token: &str,
) -> Result<String, AppError> {
    let user_id = &auth.user.subject;
    let experiment = verify_experiment(state, token).await?;
    let membership =
        accounts::attach(&state.pool, user_id, &experiment, "experiment_token").await?;
    set_current(session, Some(membership.experiment_id.clone())).await?;
    Ok(membership.experiment_id)
}

/// Makes one of the user's experiments current (`None`: act as the user only). 404 for an
/// experiment the user has not attached (or that has expired).
pub async fn switch_experiment(
    session: &Session,
    auth: &DashboardAuth,
    experiment_id: Option<&str>,
) -> Result<(), AppError> {
    if let Some(id) = experiment_id {
        if !auth.memberships.iter().any(|m| m.experiment_id == id) {
            return Err(AppError::NotFound(format!(
                "experiment `{id}` is not attached to your account (or has expired)"
            )));
        }
    }
    set_current(session, experiment_id.map(str::to_string)).await
}

async fn set_current(session: &Session, experiment_id: Option<String>) -> Result<(), AppError> {
    let Some(mut user) = session
        .get::<SessionUser>(USER_KEY)
        .await
        .map_err(crate::ssr::internal)?
    else {
        return Err(signed_out());
    };
    user.experiment_id = experiment_id;
    session
        .insert(USER_KEY, user)
        .await
        .map_err(crate::ssr::internal)
}

/// Ends this session.
pub async fn sign_out(state: &AppState, session: &Session) -> Result<(), AppError> {
    if let Ok(Some(user)) = session.get::<SessionUser>(USER_KEY).await {
        let event = Event::new("session.sign_out").object(&user.user_id);
        audit::record_alone(&state.pool, &Actor::user(&user.user_id), event).await;
    }
    session.flush().await.map_err(crate::ssr::internal)
}

/// Ends every session of the signed-in user, this one included.
pub async fn sign_out_everywhere(
    state: &AppState,
    session: &Session,
    auth: &DashboardAuth,
) -> Result<(), AppError> {
    accounts::sign_out_everywhere(&state.pool, &auth.user.subject, Utc::now()).await?;
    session.flush().await.map_err(crate::ssr::internal)
}

fn signed_out() -> AppError {
    AppError::Unauthenticated(
        "you are signed out (your session ended or was signed out); sign in again".into(),
    )
}

/// The signed-in user, or `None` (never signed in, or the session ended: idle, absolute
/// timeout, signed out everywhere).
pub async fn current(
    state: &AppState,
    session: &Session,
) -> Result<Option<DashboardAuth>, AppError> {
    let Some(user) = session
        .get::<SessionUser>(USER_KEY)
        .await
        .map_err(crate::ssr::internal)?
    else {
        return Ok(None);
    };
    let timeouts = state.config.sessions;
    let span =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(7));
    let now = Utc::now();
    let ends = user.signed_in_at + span(timeouts.absolute);
    let (signed_out, memberships) = accounts::standing(&state.pool, &user.user_id).await?;
    if now >= ends
        || now - user.seen_at > span(timeouts.idle)
        || signed_out.is_some_and(|at| at >= user.signed_in_at)
    {
        session.flush().await.map_err(crate::ssr::internal)?;
        return Ok(None);
    }
    if now - user.seen_at > span(timeouts.idle / 10) {
        let touched = SessionUser {
            seen_at: now,
            ..user.clone()
        };
        session
            .insert(USER_KEY, touched)
            .await
            .map_err(crate::ssr::internal)?;
    }
    let principal = state
        .auth
        .session_user(&user.user_id, user.display_name.clone(), ends);
    let experiment = user.experiment_id.as_deref().and_then(|id| {
        memberships
            .iter()
            .find(|m| m.experiment_id == id)
            .map(|m| m.principal(principal.is_admin))
    });
    Ok(Some(DashboardAuth {
        experiment_ended: user.experiment_id.is_some() && experiment.is_none(),
        user: principal,
        experiment,
        memberships,
        method: user.method,
    }))
}

/// The session of the current server-function call.
pub async fn extract() -> Result<Session, AppError> {
    leptos_axum::extract()
        .await
        .map_err(|e| crate::ssr::internal(anyhow::anyhow!("session extractor: {e}")))
}

/// The signed-in user of the current server-function call, or 401.
pub async fn require() -> Result<(AppState, DashboardAuth), AppError> {
    let (state, _, auth) = require_with_session().await?;
    Ok((state, auth))
}

/// [`require`], with the session itself (for calls that change it).
pub async fn require_with_session() -> Result<(AppState, Session, DashboardAuth), AppError> {
    let state = crate::ssr::state::app_state()?;
    let session = extract().await?;
    match current(&state, &session).await? {
        Some(auth) => Ok((state, session, auth)),
        None => Err(signed_out()),
    }
}

/// Starts "Sign in with SLICES": remembers the pending sign-in in the session and answers
/// the provider's authorization URL. 404 when the site has no OpenID client configured.
pub async fn begin_oidc(
    state: &AppState,
    session: &Session,
    return_to: &str,
) -> Result<String, AppError> {
    let oidc = state.oidc.as_ref().ok_or_else(|| {
        AppError::NotFound("this site has no OpenID Connect sign-in (OIDC_CLIENT_ID)".into())
    })?;
    let (url, pending) = oidc.begin(return_to).await?;
    session
        .insert(LOGIN_KEY, pending)
        .await
        .map_err(crate::ssr::internal)?;
    Ok(url)
}

/// Completes "Sign in with SLICES" (the provider's redirect with `state` and `code`): the
/// pending sign-in is used up whatever happens, so a replayed answer finds none. Returns the
/// path to go back to.
pub async fn finish_oidc(
    state: &AppState,
    session: &Session,
    state_param: &str,
    code: &str,
) -> Result<String, AppError> {
    let oidc = state.oidc.as_ref().ok_or_else(|| {
        AppError::NotFound("this site has no OpenID Connect sign-in (OIDC_CLIENT_ID)".into())
    })?;
    let pending: Option<PendingLogin> = session
        .remove(LOGIN_KEY)
        .await
        .map_err(crate::ssr::internal)?;
    let Some(pending) = pending else {
        return Err(AppError::Unauthenticated(
            "no sign-in was started in this browser (or it was completed already); sign in again"
                .into(),
        ));
    };
    let return_to = pending.return_to.clone();
    let identity = oidc.finish(pending, state_param, code).await?;
    start(
        state,
        session,
        &identity.user_id,
        identity.display_name,
        SignInMethod::Oidc,
        None,
    )
    .await?;
    Ok(return_to)
}
