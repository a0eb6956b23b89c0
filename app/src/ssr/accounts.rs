//! What the site remembers about a signed-in user between sessions (issue 13):
//!
//! - **Experiment memberships.** A user attaches an experiment by presenting a valid experiment
//!   token once (its `sub` is the experiment; its acting-user claim, when present, must be the
//!   user). The membership is remembered until the experiment's expiry
//!   (`experiment_expires_at`, at most 89 days), so the dashboard keeps acting for the user
//!   after the ~15-minute token has expired. This is a trust decision: the portal's word that
//!   the user belongs to the experiment is taken once and not asked again until the
//!   experiment ends (README, "Security"). A user can detach an experiment at any time.
//! - **Sign-outs everywhere.** The moment a user signed out of every session; a session signed
//!   in before it is void.
//!
//! Each change is written to the audit log in its own transaction.

use crate::error::AppError;
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::auth::{Principal, TokenKind};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// An experiment a user attached, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user_id: String,
    pub experiment_id: String,
    pub project_id: String,
    pub experiment_name: Option<String>,
    /// When the experiment (and so the membership) ends.
    pub experiment_expires_at: DateTime<Utc>,
    pub attached_at: DateTime<Utc>,
}

impl Membership {
    /// The principal the dashboard acts with for this membership: an experiment principal
    /// of `user_id`, valid until the experiment's expiry.
    pub fn principal(&self, is_admin: bool) -> Principal {
        Principal {
            kind: TokenKind::Experiment,
            subject: self.experiment_id.clone(),
            user_id: Some(self.user_id.clone()),
            experiment_id: Some(self.experiment_id.clone()),
            project_id: Some(self.project_id.clone()),
            experiment_name: self.experiment_name.clone(),
            experiment_expires_at: Some(self.experiment_expires_at),
            token_expires_at: self.experiment_expires_at,
            display_name: self.experiment_name.clone(),
            is_admin,
        }
    }
}

/// Remembers that `user_id` belongs to the experiment of `experiment` (a verified
/// experiment token). 422 naming `field` when the token is not an experiment token or names
/// another acting user.
pub async fn attach(
    pool: &PgPool,
    user_id: &str,
    experiment: &Principal,
    field: &str,
) -> Result<Membership, AppError> {
    if experiment.kind != TokenKind::Experiment {
        return Err(AppError::invalid(
            field,
            "this is a user token; paste the output of `slices experiment jwt <name>` here",
        ));
    }
    if let Some(acting) = experiment.user_id.as_deref() {
        if acting != user_id {
            return Err(AppError::invalid(
                field,
                "this experiment token was issued to another user",
            ));
        }
    }
    let experiment_id = crate::ssr::access::experiment_to_write(experiment)?.to_string();
    let expires = experiment
        .experiment_expires_at
        .unwrap_or(experiment.token_expires_at);
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        Membership,
        r#"INSERT INTO experiment_memberships
               (user_id, experiment_id, project_id, experiment_name, experiment_expires_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (user_id, experiment_id) DO UPDATE SET
               project_id = EXCLUDED.project_id, experiment_name = EXCLUDED.experiment_name,
               experiment_expires_at = EXCLUDED.experiment_expires_at
           RETURNING user_id, experiment_id, project_id, experiment_name,
                     experiment_expires_at AS "experiment_expires_at: DateTime<Utc>",
                     attached_at AS "attached_at: DateTime<Utc>""#,
        user_id,
        experiment_id,
        experiment.project_id.clone().unwrap_or_default(),
        experiment.experiment_name,
        expires as _
    )
    .fetch_one(&mut *tx)
    .await?;
    let event = Event::new("experiment.attach")
        .object(&experiment_id)
        .experiment(&experiment_id)
        .detail(serde_json::json!({"until": expires}));
    audit::commit(tx, &Actor::user(user_id), event).await?;
    Ok(row)
}

/// What a session of `user_id` needs to know, in one round trip: when the user last signed
/// out everywhere (if ever), and their memberships whose experiment has not expired, most
/// recently attached first.
pub async fn standing(
    pool: &PgPool,
    user_id: &str,
) -> Result<(Option<DateTime<Utc>>, Vec<Membership>), AppError> {
    let rows = sqlx::query!(
        r#"SELECT s.signed_out_at AS "signed_out_at?: DateTime<Utc>",
                  m.experiment_id AS "experiment_id?", m.project_id AS "project_id?",
                  m.experiment_name, m.experiment_expires_at AS "experiment_expires_at?: DateTime<Utc>",
                  m.attached_at AS "attached_at?: DateTime<Utc>"
           FROM (SELECT $1::text AS user_id) u
           LEFT JOIN user_sign_outs s ON s.user_id = u.user_id
           LEFT JOIN experiment_memberships m
                  ON m.user_id = u.user_id AND m.experiment_expires_at > now()
           ORDER BY m.attached_at DESC NULLS LAST, m.experiment_id"#,
        user_id
    )
    .fetch_all(pool)
    .await?;
    let signed_out = rows.first().and_then(|r| r.signed_out_at);
    let memberships = rows
        .into_iter()
        .filter_map(|r| {
            Some(Membership {
                user_id: user_id.to_string(),
                experiment_id: r.experiment_id?,
                project_id: r.project_id?,
                experiment_name: r.experiment_name,
                experiment_expires_at: r.experiment_expires_at?,
                attached_at: r.attached_at?,
            })
        })
        .collect();
    Ok((signed_out, memberships))
}

/// Forgets a membership; 404 when there is none.
pub async fn detach(pool: &PgPool, user_id: &str, experiment_id: &str) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let gone = sqlx::query!(
        "DELETE FROM experiment_memberships WHERE user_id = $1 AND experiment_id = $2",
        user_id,
        experiment_id
    )
    .execute(&mut *tx)
    .await?;
    if gone.rows_affected() == 0 {
        return Err(AppError::NotFound(format!(
            "experiment `{experiment_id}` is not attached"
        )));
    }
    let event = Event::new("experiment.detach")
        .object(experiment_id)
        .experiment(experiment_id);
    audit::commit(tx, &Actor::user(user_id), event).await?;
    Ok(())
}

/// Ends every dashboard session of `user_id` signed in at or before `at`.
pub async fn sign_out_everywhere(
    pool: &PgPool,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        r#"INSERT INTO user_sign_outs (user_id, signed_out_at) VALUES ($1, $2)
           ON CONFLICT (user_id) DO UPDATE SET signed_out_at = EXCLUDED.signed_out_at"#,
        user_id,
        at as _
    )
    .execute(&mut *tx)
    .await?;
    let event = Event::new("session.sign_out_everywhere").object(user_id);
    audit::commit(tx, &Actor::user(user_id), event).await?;
    Ok(())
}
