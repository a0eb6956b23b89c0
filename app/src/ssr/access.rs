//! The access model in one place (../shared/slices-api.md "Authentication"; issue 13). Every
//! REST route and server function asks this module; `server/tests/access.rs` walks the whole
//! matrix (principal kind × route × own or another experiment) on the real router.
//!
//! | who \ what | read | resource writes | catalog writes | audit log | own clouds.yaml |
//! |---|---|---|---|---|---|
//! | no or bad token / no session | 401 | 401 | 401 | 401 | 401 |
//! | user token, signed-in user | yes (what they requested) | 403 | 403 | 403 | yes |
//! | experiment token, remembered membership | yes (the experiment's) | yes (own experiment) | 403 | 403 | yes, when it names its user |
//! | admin (`ADMIN_USER_IDS`), either kind | as above | as above | yes | yes | as above |
//!
//! Another experiment's resources and tasks are 404, never 403: their existence is not
//! revealed ([`scope`] filters every read and write by it).

use crate::error::AppError;
use crate::ssr::auth::{Principal, TokenKind};
use crate::ssr::rows::Scope;

/// What a request wants to do beyond reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Create, extend or delete an experiment's resources.
    WriteResources,
    /// Add, change, hide, delete or import catalog entries.
    ChangeCatalog,
    /// Read the audit log.
    ReadAudit,
    /// Publish site templates and their versions.
    PublishSiteTemplates,
    /// Store, read, test or delete one's own clouds.yaml.
    OwnCredentials,
}

/// 403 unless `principal` holds `right` (a principal exists only once its token or session
/// was verified: the 401s come before this).
pub fn require(principal: &Principal, right: Right) -> Result<(), AppError> {
    match right {
        Right::WriteResources => experiment_to_write(principal).map(|_| ()),
        Right::ChangeCatalog | Right::ReadAudit | Right::PublishSiteTemplates => {
            if principal.is_admin {
                Ok(())
            } else {
                Err(AppError::Forbidden(
                    "only site admins (ADMIN_USER_IDS) may do this (catalog changes, site templates, the audit log)"
                        .into(),
                ))
            }
        }
        Right::OwnCredentials => credentials_owner(principal).map(|_| ()),
    }
}

/// The experiment `principal` may write to: its own, for an experiment token or a remembered
/// membership; 403 for a user.
pub fn experiment_to_write(principal: &Principal) -> Result<&str, AppError> {
    match (&principal.kind, &principal.experiment_id) {
        (TokenKind::Experiment, Some(id)) => Ok(id),
        _ => Err(AppError::Forbidden(
            "this action needs an experiment token (`slices experiment jwt <name>`) or an attached experiment; a user token only allows reads"
                .into(),
        )),
    }
}

/// The user whose clouds.yaml `principal` may use: the user, or the acting user an experiment
/// token names; 403 for an experiment token without one.
pub fn credentials_owner(principal: &Principal) -> Result<&str, AppError> {
    principal
        .user_id
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            AppError::Forbidden(
                "clouds.yaml belongs to a user: use a user token (`slices auth id-token`) or an experiment token that names its acting user".into(),
            )
        })
}

/// What `principal` sees of resources and tasks: an experiment its experiment's, a user what
/// that user requested. Everything outside is "not found".
pub fn scope(principal: &Principal) -> Scope {
    match principal.kind {
        TokenKind::Experiment => Scope {
            experiment_id: principal.experiment_id.clone(),
            requested_by: None,
        },
        TokenKind::User => Scope {
            experiment_id: None,
            requested_by: Some(principal.user_id.clone().unwrap_or_default()),
        },
    }
}
