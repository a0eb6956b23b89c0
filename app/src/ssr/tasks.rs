//! The task API: `GET /tasks/{id}` and `GET /tasks?resource_id=` (../shared/slices-api.md,
//! "Resources and tasks"). Tasks are rows of the durable queue (`queue`), run by the worker
//! (`worker`); a principal sees the tasks of the resources it sees.

use crate::error::AppError;
use crate::ids::IdKind;
use crate::model::Task;
use crate::ssr::auth::Principal;
use crate::ssr::rows::{fetch_resource, fetch_task, select_tasks, TaskFilter};
use crate::ssr::{field_id, path_id};
use sqlx::PgPool;

/// `GET /tasks/{id}`: 400 for a malformed id, 404 for a task the principal does not see.
pub async fn get_task(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
) -> Result<Task, AppError> {
    let uuid = path_id(IdKind::Task, site, id)?;
    fetch_task(pool, site, &crate::ssr::access::scope(principal), uuid).await
}

/// `GET /tasks?resource_id=`: the resource's tasks, oldest first; 404 when the principal
/// does not see the resource.
pub async fn list_tasks(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    resource_id: &str,
) -> Result<Vec<Task>, AppError> {
    // A well-formed id of another site names no resource here: 404, like a path id.
    let uuid = match path_id(IdKind::Resource, site, resource_id) {
        Err(AppError::BadRequest(_)) => {
            field_id(IdKind::Resource, site, "resource_id", resource_id)
                .map_err(|e| AppError::BadRequest(e.to_string()))?
        }
        other => other?,
    };
    let scope = crate::ssr::access::scope(principal);
    fetch_resource(pool, site, &scope, uuid).await?;
    let filter = TaskFilter {
        resource_id: Some(uuid),
        ..TaskFilter::default()
    };
    Ok(select_tasks(pool, site, &scope, &filter).await?)
}
