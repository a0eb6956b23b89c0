//! Templates in the database: who sees and edits which (site templates: everyone sees,
//! admins publish; project and experiment templates: their members), immutable versions,
//! the built-in QKD link, and instantiation, which renders a version ([`crate::templates`])
//! and requests the result exactly as `POST /resources` would (all or nothing, `request_id`
//! idempotency, quotas).

use crate::error::AppError;
use crate::ids::{format_id, IdKind};
use crate::model::{
    CreateResourcesRequest, CreateResourcesResponse, DiskImage, Flavor, FlavorType, ResourceSpec,
};
use crate::ssr::access::{self, Right};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::auth::{Principal, TokenKind};
use crate::ssr::resources::{self, Resources};
use crate::ssr::{catalog, path_id};
use crate::templates::{
    check_definition, fill_parameters, render, CreateTemplateRequest, InstantiateRequest,
    NewVersionRequest, Rendered, Template, TemplateParameter, TemplateScope, TemplateVersion,
    MAX_NAME,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// The built-in QKD link's id (the same on every site; its typed id carries the site).
pub const QKD_LINK_ID: Uuid = Uuid::from_u128(0x0193_9a00_0000_7000_8000_0000_0000_0015);
/// Its definition (`app/templates/qkd-link.json`).
const QKD_LINK: &str = include_str!("../../templates/qkd-link.json");

struct TemplateRow {
    id: Uuid,
    name: String,
    description: String,
    scope: TemplateScope,
    project_id: Option<String>,
    experiment_id: Option<String>,
    builtin: bool,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct VersionRow {
    template_id: Uuid,
    version: i32,
    parameters: Json<Vec<TemplateParameter>>,
    resources: Json<Vec<Value>>,
    notes: String,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
}

impl VersionRow {
    fn into_wire(self) -> TemplateVersion {
        TemplateVersion {
            version: self.version,
            parameters: self.parameters.0,
            resources: self.resources.0,
            notes: self.notes,
            created_by: self.created_by,
            created_at: self.created_at,
        }
    }
}

impl TemplateRow {
    fn into_wire(self, site: &str, mut versions: Vec<TemplateVersion>) -> Option<Template> {
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        let latest = versions.first()?.clone();
        Some(Template {
            id: format_id(IdKind::Template, site, self.id),
            name: self.name,
            description: self.description,
            scope: self.scope,
            project_id: self.project_id,
            experiment_id: self.experiment_id,
            builtin: self.builtin,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            latest,
            versions,
        })
    }
}

/// What a principal sees: site templates, its project's and its experiment's.
fn visible(principal: &Principal) -> (Option<&str>, Option<&str>) {
    (
        principal.project_id.as_deref().filter(|p| !p.is_empty()),
        principal.experiment_id.as_deref(),
    )
}

async fn select(
    pool: &PgPool,
    principal: &Principal,
    id: Option<Uuid>,
) -> Result<Vec<TemplateRow>, AppError> {
    let (project, experiment) = visible(principal);
    Ok(sqlx::query_as!(
        TemplateRow,
        r#"SELECT id, name, description, scope AS "scope: TemplateScope", project_id,
                  experiment_id, builtin, created_by,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>"
           FROM templates
           WHERE ($1::uuid IS NULL OR id = $1)
             AND (scope = 'site'
                  OR (scope = 'project' AND project_id = $2)
                  OR (scope = 'experiment' AND experiment_id = $3))
           ORDER BY builtin DESC, scope, name, id"#,
        id,
        project,
        experiment
    )
    .fetch_all(pool)
    .await?)
}

async fn versions_of(pool: &PgPool, ids: &[Uuid], all: bool) -> Result<Vec<VersionRow>, AppError> {
    Ok(sqlx::query_as!(
        VersionRow,
        r#"SELECT v.template_id, v.version, v.parameters AS "parameters: Json<Vec<TemplateParameter>>",
                  v.resources AS "resources: Json<Vec<Value>>", v.notes, v.created_by,
                  v.created_at AS "created_at: DateTime<Utc>"
           FROM template_versions v
           WHERE v.template_id = ANY($1)
             AND ($2 OR v.version = (SELECT max(w.version) FROM template_versions w
                                     WHERE w.template_id = v.template_id))
           ORDER BY v.template_id, v.version DESC"#,
        ids,
        all
    )
    .fetch_all(pool)
    .await?)
}

/// `GET /templates`: the templates `principal` sees, each with its newest version; the
/// built-in ones first.
pub async fn list(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
) -> Result<Vec<Template>, AppError> {
    let rows = select(pool, principal, None).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut versions = versions_of(pool, &ids, false).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let mine: Vec<TemplateVersion> = versions
                .extract_if(.., |v| v.template_id == row.id)
                .map(VersionRow::into_wire)
                .collect();
            let mut template = row.into_wire(site, mine)?;
            template.versions.clear();
            Some(template)
        })
        .collect())
}

/// `GET /templates/{id}`: one template with every version, newest first; 404 when unknown
/// or not visible to `principal`.
pub async fn get(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
) -> Result<Template, AppError> {
    let uuid = path_id(IdKind::Template, site, id)?;
    let not_found = || AppError::NotFound(format!("template `{id}` not found"));
    let row = select(pool, principal, Some(uuid))
        .await?
        .pop()
        .ok_or_else(not_found)?;
    let versions = versions_of(pool, &[uuid], true).await?;
    row.into_wire(
        site,
        versions.into_iter().map(VersionRow::into_wire).collect(),
    )
    .ok_or_else(not_found)
}

/// The owner columns of a new template in `scope`, or why `principal` may not publish there
/// (403: site templates need an admin, the others an experiment).
fn owner_for(
    principal: &Principal,
    scope: TemplateScope,
) -> Result<(Option<String>, Option<String>), AppError> {
    match scope {
        TemplateScope::Site => {
            access::require(principal, Right::PublishSiteTemplates)?;
            Ok((None, None))
        }
        TemplateScope::Project => {
            access::experiment_to_write(principal)?;
            let project = visible(principal).0.ok_or_else(|| {
                AppError::invalid(
                    "scope",
                    "your experiment names no project: use scope `experiment`",
                )
            })?;
            Ok((Some(project.to_string()), None))
        }
        TemplateScope::Experiment => {
            let experiment = access::experiment_to_write(principal)?;
            Ok((
                visible(principal).0.map(str::to_string),
                Some(experiment.to_string()),
            ))
        }
    }
}

/// Whether `principal` may publish versions of `template`: admins for site templates, the
/// owning experiment or a member of the owning project otherwise (403).
fn may_edit(principal: &Principal, template: &Template) -> Result<(), AppError> {
    let member = principal.kind == TokenKind::Experiment;
    let allowed = match template.scope {
        TemplateScope::Site => principal.is_admin,
        TemplateScope::Project => member && template.project_id.as_deref() == visible(principal).0,
        TemplateScope::Experiment => {
            member && template.experiment_id.as_deref() == principal.experiment_id.as_deref()
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::Forbidden(match template.scope {
            TemplateScope::Site => "only site admins (ADMIN_USER_IDS) publish versions of site templates".into(),
            _ => "only members of the template's project or experiment (with an experiment token) publish its versions".into(),
        }))
    }
}

/// `POST /templates`: the template and its version 1 (201). 422 naming the field for a bad
/// name or definition, 409 (`name`) when the owner already has a template of that name.
pub async fn create(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    request: &CreateTemplateRequest,
) -> Result<Template, AppError> {
    // Who may publish here comes first: a caller without the right learns nothing more.
    let (project, experiment) = owner_for(principal, request.scope)?;
    let name = request.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME
        || crate::ssr::names::unsafe_character(name).is_some()
    {
        return Err(AppError::invalid(
            "name",
            format!("1 to {MAX_NAME} printable characters"),
        ));
    }
    if request.description.len() > 4000 {
        return Err(AppError::invalid("description", "at most 4000 bytes"));
    }
    check_definition(&request.parameters, &request.resources)?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query!(
        "INSERT INTO templates (id, name, description, scope, project_id, experiment_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        id,
        name,
        request.description.trim(),
        request.scope.as_str(),
        project,
        experiment,
        principal.user_id
    )
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        return Err(match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => AppError::Conflict {
                field: "name".into(),
                message: format!(
                    "a {} template named `{name}` exists already: publish a new version of it",
                    request.scope.as_str()
                ),
            },
            _ => e.into(),
        });
    }
    insert_version(
        &mut tx,
        id,
        1,
        &request.parameters,
        &request.resources,
        &request.notes,
        principal,
    )
    .await?;
    let typed = format_id(IdKind::Template, site, id);
    let event = Event::new("template.create")
        .object(&typed)
        .detail(serde_json::json!({
            "name": name, "scope": request.scope.as_str(),
        }));
    audit::commit(tx, &Actor::of(principal), event).await?;
    get(pool, site, principal, &typed).await
}

async fn insert_version(
    tx: &mut sqlx::PgConnection,
    template: Uuid,
    version: i32,
    parameters: &[TemplateParameter],
    resources: &[Value],
    notes: &str,
    principal: &Principal,
) -> Result<(), AppError> {
    sqlx::query!(
        "INSERT INTO template_versions (template_id, version, parameters, resources, notes, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
        template,
        version,
        Json(parameters) as _,
        Json(resources) as _,
        notes,
        principal.user_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `POST /templates/{id}/versions`: the next version (201 with the template); earlier
/// versions never change. 404 unknown, 403 not the caller's to edit, 422 a bad definition.
pub async fn add_version(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
    request: &NewVersionRequest,
) -> Result<Template, AppError> {
    let template = get(pool, site, principal, id).await?;
    may_edit(principal, &template)?;
    check_definition(&request.parameters, &request.resources)?;
    if request.description.as_ref().is_some_and(|d| d.len() > 4000) {
        return Err(AppError::invalid("description", "at most 4000 bytes"));
    }
    let uuid = path_id(IdKind::Template, site, id)?;
    let mut tx = pool.begin().await?;
    // The template row's lock orders concurrent publications: each gets the next number.
    let next = sqlx::query_scalar!(
        r#"UPDATE templates SET description = coalesce($2, description) WHERE id = $1
           RETURNING (SELECT coalesce(max(version), 0) + 1 FROM template_versions
                      WHERE template_id = $1) AS "next!""#,
        uuid,
        request.description.as_deref().map(str::trim)
    )
    .fetch_one(&mut *tx)
    .await?;
    insert_version(
        &mut tx,
        uuid,
        next,
        &request.parameters,
        &request.resources,
        &request.notes,
        principal,
    )
    .await?;
    let event = Event::new("template.version")
        .object(id)
        .detail(serde_json::json!({ "version": next }));
    audit::commit(tx, &Actor::of(principal), event).await?;
    get(pool, site, principal, id).await
}

/// The catalog as an instantiation or a spec file import resolves names in it (read once
/// per request).
pub(crate) struct Catalog {
    images: Vec<DiskImage>,
    flavors: Vec<Flavor>,
}

impl Catalog {
    pub(crate) async fn load(
        pool: &PgPool,
        site: &str,
        principal: &Principal,
    ) -> Result<Self, AppError> {
        let (images, flavors) = tokio::try_join!(
            catalog::list_images(pool, site, principal.is_admin),
            catalog::list_flavors(pool, site)
        )?;
        Ok(Self { images, flavors })
    }

    /// The id of the image `value` (an id or a friendly name; one match).
    pub(crate) fn image(&self, value: &str) -> Result<String, String> {
        pick(
            value,
            self.images.iter().map(|i| (&i.id, &i.friendly_name)),
            "disk image",
        )
    }

    pub(crate) fn flavor(&self, value: &str) -> Result<(String, FlavorType), String> {
        let id = pick(
            value,
            self.flavors.iter().map(|f| (&f.id, &f.friendly_name)),
            "flavor",
        )?;
        let kind = self
            .flavors
            .iter()
            .find(|f| f.id == id)
            .map_or(FlavorType::K8s, |f| f.flavor_type);
        Ok((id, kind))
    }
}

fn pick<'a>(
    value: &str,
    entries: impl Iterator<Item = (&'a String, &'a String)> + Clone,
    what: &str,
) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("a {what} is needed"));
    }
    if let Some((id, _)) = entries.clone().find(|(id, _)| id.as_str() == value) {
        return Ok(id.clone());
    }
    let named: Vec<&String> = entries
        .filter(|(_, name)| name.as_str() == value)
        .map(|(id, _)| id)
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("the catalog has no {what} `{value}`")),
        _ => Err(format!(
            "the catalog has {} {what}s named `{value}`: give the id",
            named.len()
        )),
    }
}

/// The resource specs of a rendered template: catalog names resolved to ids. A value that
/// came from a parameter is blamed on `parameters.<name>`.
fn specs(catalog: &Catalog, rendered: &[Rendered]) -> Result<Vec<ResourceSpec>, AppError> {
    rendered
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let blame = |param: &Option<String>, field: &str, why: String| match param {
                Some(p) => AppError::invalid(format!("parameters.{p}"), why),
                None => AppError::invalid(
                    format!("resources[{i}].{field}"),
                    format!("{}: {why}", r.resource.friendly_name),
                ),
            };
            let t = &r.resource;
            let disk_image_id = catalog
                .image(&t.disk_image)
                .map_err(|why| blame(&r.image_parameter, "disk_image", why))?;
            let (flavor_id, _) = catalog
                .flavor(&t.flavor)
                .map_err(|why| blame(&r.flavor_parameter, "flavor", why))?;
            Ok(ResourceSpec {
                friendly_name: t.friendly_name.clone(),
                disk_image_id,
                flavor_id,
                network_name: t.network_name.clone().filter(|n| !n.trim().is_empty()),
                userdata: t.userdata.clone().filter(|u| !u.is_empty()),
                env: t.env.clone(),
                command: t.command.clone(),
                args: t.args.clone(),
                ports: t.ports.iter().cloned().map(Into::into).collect(),
            })
        })
        .collect()
}

/// What instantiating would request (the dashboard's preview): the rendered resources with
/// catalog ids, without creating anything.
pub async fn preview(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
    version: Option<i64>,
    parameters: &serde_json::Map<String, Value>,
) -> Result<Vec<ResourceSpec>, AppError> {
    let template = get(pool, site, principal, id).await?;
    let chosen = pick_version(&template, version)?;
    let values = fill_parameters(&chosen.parameters, parameters)?;
    let rendered = render(&chosen.resources, &values)?;
    let catalog = Catalog::load(pool, site, principal).await?;
    specs(&catalog, &rendered)
}

fn pick_version(template: &Template, version: Option<i64>) -> Result<&TemplateVersion, AppError> {
    match version {
        None => Ok(&template.latest),
        Some(n) => template
            .versions
            .iter()
            .find(|v| i64::from(v.version) == n)
            .ok_or_else(|| {
                AppError::invalid(
                    "version",
                    format!(
                        "this template has versions 1 to {}",
                        template.latest.version
                    ),
                )
            }),
    }
}

/// `POST /templates/{id}/instantiate`: renders the version with the parameters and requests
/// the resources as `POST /resources` (202 answer; its checks, quotas and `request_id`).
pub async fn instantiate(
    ctx: &Resources<'_>,
    principal: &Principal,
    id: &str,
    request: &InstantiateRequest,
) -> Result<CreateResourcesResponse, AppError> {
    access::experiment_to_write(principal)?;
    let resources = preview(
        ctx.pool,
        ctx.site,
        principal,
        id,
        request.version,
        &request.parameters,
    )
    .await?;
    let create = CreateResourcesRequest {
        expires_at: request.expires_at,
        resources,
        ssh_authorized_keys: request.ssh_authorized_keys.clone(),
        tokens: request.tokens.clone(),
        request_id: request.request_id,
    };
    let created = resources::create_resources(ctx, principal, &create).await?;
    let event = Event::new("template.instantiate").object(id).detail(serde_json::json!({
        "version": request.version, "resources": created.resources.iter().map(|r| &r.id).collect::<Vec<_>>(),
    }));
    audit::record_alone(ctx.pool, &Actor::of(principal), event).await;
    Ok(created)
}

/// Keeps the built-in templates (the QKD link) in the database: written at start-up when
/// missing, as a site template with version 1; later versions (an admin picking the KME image)
/// are left alone.
pub async fn ensure_builtin(pool: &PgPool) -> anyhow::Result<()> {
    let definition: CreateTemplateRequest = serde_json::from_str(QKD_LINK)?;
    check_definition(&definition.parameters, &definition.resources)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query!(
        "INSERT INTO templates (id, name, description, scope, builtin)
         VALUES ($1, $2, $3, 'site', true) ON CONFLICT DO NOTHING",
        QKD_LINK_ID,
        definition.name,
        definition.description
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        sqlx::query!(
            "INSERT INTO template_versions (template_id, version, parameters, resources, notes)
             VALUES ($1, 1, $2, $3, $4)",
            QKD_LINK_ID,
            Json(&definition.parameters) as _,
            Json(&definition.resources) as _,
            definition.notes
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qkd_link_definition_renders() {
        let definition: CreateTemplateRequest = serde_json::from_str(QKD_LINK).expect("json");
        check_definition(&definition.parameters, &definition.resources).expect("definition");
        let given = serde_json::json!({"kme_image": "kme", "kme_flavor": "small"});
        let values = fill_parameters(&definition.parameters, given.as_object().expect("map"))
            .expect("values");
        let out = render(&definition.resources, &values).expect("render");
        let names: Vec<&str> = out
            .iter()
            .map(|r| r.resource.friendly_name.as_str())
            .collect();
        assert_eq!(names, ["qkd-kme-a", "qkd-kme-b"]);
        let peer = out[0]
            .resource
            .env
            .iter()
            .find(|e| e.name == "PEER_KME_ADDRESS")
            .expect("peer");
        assert_eq!(peer.value, "qkd-kme-b:9000");
        assert_eq!(out[1].resource.ports[0].port, 8443);
    }

    #[test]
    fn names_resolve_once() {
        let entries = [
            ("image_s_1".to_string(), "kme".to_string()),
            ("image_s_2".to_string(), "dup".to_string()),
            ("image_s_3".to_string(), "dup".to_string()),
        ];
        let it = || entries.iter().map(|(a, b)| (a, b));
        assert_eq!(pick("kme", it(), "disk image").as_deref(), Ok("image_s_1"));
        assert_eq!(
            pick("image_s_3", it(), "disk image").as_deref(),
            Ok("image_s_3")
        );
        assert!(pick("dup", it(), "disk image")
            .expect_err("an error")
            .contains("give the id"));
        assert!(pick("nope", it(), "disk image")
            .expect_err("an error")
            .contains("no disk image"));
    }
}
