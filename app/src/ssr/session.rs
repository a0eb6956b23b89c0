//! Dashboard sign-in: the SLICES tokens a user pastes (a user token, and optionally an
//! experiment token) are verified, sealed with the site's secret key (see `secrets`) and
//! kept in the server-side session (tower-sessions, PostgreSQL store). The browser only
//! holds the session cookie (HttpOnly, SameSite=Lax); tokens never reach localStorage or
//! the page.

use crate::error::AppError;
use crate::model::{ExperimentInfo, Viewer};
use crate::ssr::auth::{Principal, TokenKind};
use crate::ssr::state::AppState;
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

const KEY: &str = "slices.tokens";

#[derive(Serialize, Deserialize)]
struct SealedTokens {
    user: String,
    experiment: Option<String>,
}

/// The signed-in user of a dashboard request, with the verified tokens.
pub struct DashboardAuth {
    pub user: Principal,
    /// The user token, sent in `tokens` of requests as the SLICES CLI does.
    pub user_token: String,
    pub experiment: Option<Principal>,
    pub experiment_expired: bool,
}

impl DashboardAuth {
    /// What the UI may know about the signed-in user.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            user_id: self.user.subject.clone(),
            display_name: self
                .user
                .display_name
                .clone()
                .unwrap_or_else(|| self.user.subject.clone()),
            is_admin: self.user.is_admin,
            experiment: self.experiment.as_ref().map(|e| ExperimentInfo {
                experiment_id: e.experiment_id.clone().unwrap_or_default(),
                project_id: e.project_id.clone().unwrap_or_default(),
                name: e.experiment_name.clone(),
                max_expires_at: e.experiment_expires_at.unwrap_or(e.token_expires_at),
                token_expires_at: e.token_expires_at,
            }),
            experiment_token_expired: self.experiment_expired,
        }
    }

    /// The principal to act with: the experiment token (with the admin right of its user
    /// token), or else the user token.
    pub fn acting(&self) -> Principal {
        match &self.experiment {
            Some(e) => {
                let mut e = e.clone();
                e.is_admin = e.is_admin || self.user.is_admin;
                e
            }
            None => self.user.clone(),
        }
    }
}

/// Verifies the pasted tokens and stores them in the session (new session id: no fixation).
pub async fn sign_in(
    state: &AppState,
    session: &Session,
    user_token: &str,
    experiment_token: Option<&str>,
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
    if let Some(token) = experiment_token {
        let experiment = state
            .auth
            .verify(token)
            .await
            .map_err(|e| AppError::invalid("experiment_token", e.message()))?;
        if experiment.kind != TokenKind::Experiment {
            return Err(AppError::invalid(
                "experiment_token",
                "this is a user token; paste the output of `slices experiment jwt <name>` here",
            ));
        }
        if let (Some(acting), Some(user_id)) = (&experiment.user_id, &user.user_id) {
            if acting != user_id {
                return Err(AppError::invalid(
                    "experiment_token",
                    "this experiment token was issued to another user",
                ));
            }
        }
    }
    let sealed = SealedTokens {
        user: state.secrets.seal(user_token.trim().as_bytes()),
        experiment: experiment_token.map(|t| state.secrets.seal(t.trim().as_bytes())),
    };
    session.cycle_id().await.map_err(crate::ssr::internal)?;
    session
        .insert(KEY, sealed)
        .await
        .map_err(crate::ssr::internal)?;
    Ok(())
}

/// Forgets the session.
pub async fn sign_out(session: &Session) -> Result<(), AppError> {
    session.flush().await.map_err(crate::ssr::internal)
}

/// The signed-in user, or `None` (not signed in, or the user token expired).
pub async fn current(
    state: &AppState,
    session: &Session,
) -> Result<Option<DashboardAuth>, AppError> {
    let Some(sealed) = session
        .get::<SealedTokens>(KEY)
        .await
        .map_err(crate::ssr::internal)?
    else {
        return Ok(None);
    };
    let open = |s: &str| {
        state
            .secrets
            .open(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let Some(user_token) = open(&sealed.user) else {
        return Ok(None);
    };
    let Ok(user) = state.auth.verify(&user_token).await else {
        return Ok(None);
    };
    let (experiment, experiment_expired) = match sealed.experiment.as_deref().and_then(open) {
        Some(token) => match state.auth.verify(&token).await {
            Ok(e) => (Some(e), false),
            Err(_) => (None, true),
        },
        None => (None, false),
    };
    Ok(Some(DashboardAuth {
        user,
        user_token,
        experiment,
        experiment_expired,
    }))
}

/// The signed-in user of the current server-function call, or 401.
pub async fn require() -> Result<(AppState, DashboardAuth), AppError> {
    let state = crate::ssr::state::app_state()?;
    let session: Session = leptos_axum::extract()
        .await
        .map_err(|e| crate::ssr::internal(anyhow::anyhow!("session extractor: {e}")))?;
    match current(&state, &session).await? {
        Some(auth) => Ok((state, auth)),
        None => Err(AppError::Unauthenticated(
            "you are signed out (or your user token expired); sign in again".into(),
        )),
    }
}
