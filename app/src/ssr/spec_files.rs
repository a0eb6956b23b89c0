//! An experiment in and out of files: the SLICES CLI's spec file ([`crate::spec_file`])
//! imported (checked entry by entry, then requested as one `POST /resources`) and exported
//! (also as a new template: "save as template"), and an `ssh_config` for the experiment's
//! VMs (through `SSH_PROXY_JUMP` when set).

use crate::error::AppError;
use crate::model::{
    CreateResourcesRequest, CreateResourcesResponse, FlavorType, PodOptions, ResourceSpec,
};
use crate::spec_file::{SpecCheck, SpecEntry, SpecFile};
use crate::ssr::auth::Principal;
use crate::ssr::resources::{self, ListQuery, Resources};
use crate::ssr::templates::Catalog;
use sqlx::types::Json;
use sqlx::PgPool;

/// Most entries of an imported spec file (as `POST /resources`).
pub const MAX_ENTRIES: usize = 50;

/// Reads a spec file; 422 (`spec`) naming what is wrong and where.
pub fn parse(text: &str) -> Result<SpecFile, AppError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let spec: SpecFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." => AppError::invalid("spec", format!("not a spec file: {inner}")),
            _ => AppError::invalid("spec", format!("{path}: {inner}")),
        }
    })?;
    if spec.resources.is_empty() || spec.resources.len() > MAX_ENTRIES {
        return Err(AppError::invalid(
            "spec",
            format!("`resources` needs 1 to {MAX_ENTRIES} entries"),
        ));
    }
    Ok(spec)
}

/// Each entry checked on its own: the site, names known to the catalog, `cloudinit_file`
/// (not readable here), Pod options only on Pods and valid, names unique in the file. The
/// `ResourceSpec`s are those of the entries without error.
pub async fn check(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    spec: &SpecFile,
) -> Result<(Vec<SpecCheck>, Vec<ResourceSpec>), AppError> {
    let catalog = Catalog::load(pool, site, principal).await?;
    let mut checks = Vec::new();
    let mut specs = Vec::new();
    for (i, entry) in spec.resources.iter().enumerate() {
        let mut check = SpecCheck {
            friendly_name: entry.friendly_name.clone(),
            flavor: entry.flavor.clone(),
            disk_image: entry.disk_image.clone(),
            flavor_type: None,
            error: None,
        };
        let duplicate = spec.resources[..i]
            .iter()
            .any(|e| e.friendly_name == entry.friendly_name);
        match (duplicate, resolve(&catalog, site, i, entry)) {
            (true, _) => {
                check.error = Some(format!(
                    "`{}` appears twice in the file",
                    entry.friendly_name
                ))
            }
            (false, Ok((resolved, kind))) => {
                check.flavor_type = Some(kind);
                specs.push(resolved);
            }
            (false, Err(why)) => check.error = Some(why),
        }
        checks.push(check);
    }
    Ok((checks, specs))
}

fn resolve(
    catalog: &Catalog,
    site: &str,
    i: usize,
    entry: &SpecEntry,
) -> Result<(ResourceSpec, FlavorType), String> {
    if entry.site_id.as_deref().is_some_and(|s| s != site) {
        return Err(format!(
            "for site `{}`; this is `{site}`",
            entry.site_id.as_deref().unwrap_or_default()
        ));
    }
    if entry.friendly_name.trim().is_empty() {
        return Err("`friendly_name` is empty".into());
    }
    if entry.cloudinit_file.is_some() && entry.userdata.is_none() {
        return Err("`cloudinit_file` names a file on your machine: paste its content as `userdata` instead".into());
    }
    let disk_image_id = catalog.image(&entry.disk_image)?;
    let (flavor_id, kind) = catalog.flavor(&entry.flavor)?;
    let pod = entry.pod.clone();
    match (kind, pod.first_set()) {
        (FlavorType::Vm, Some(option)) => {
            return Err(format!(
                "`{option}` is for pods; `{}` is a VM flavor",
                entry.flavor
            ))
        }
        (FlavorType::K8s, _) => pod
            .check(&format!("resources[{i}]"))
            .map_err(|e| e.to_string())?,
        (FlavorType::Vm, None) => {}
    }
    Ok((
        ResourceSpec {
            friendly_name: entry.friendly_name.trim().to_string(),
            disk_image_id,
            flavor_id,
            network_name: None,
            userdata: entry.userdata.clone().filter(|u| !u.is_empty()),
            env: pod.env,
            command: pod.command,
            args: pod.args,
            ports: pod.ports,
        },
        kind,
    ))
}

/// Requests every entry of a spec file at once (all or nothing): 422 naming the first bad
/// entry (`resources[i]`) when any is wrong, else the answer of `POST /resources`.
pub async fn import(
    ctx: &Resources<'_>,
    principal: &Principal,
    spec: &SpecFile,
    expires_at: chrono::DateTime<chrono::Utc>,
    ssh_authorized_keys: Vec<String>,
) -> Result<CreateResourcesResponse, AppError> {
    crate::ssr::access::experiment_to_write(principal)?;
    let (checks, specs) = check(ctx.pool, ctx.site, principal, spec).await?;
    if let Some((i, bad)) = checks.iter().enumerate().find(|(_, c)| c.error.is_some()) {
        return Err(AppError::invalid(
            format!("resources[{i}]"),
            format!(
                "{}: {}",
                bad.friendly_name,
                bad.error.clone().unwrap_or_default()
            ),
        ));
    }
    let request = CreateResourcesRequest {
        expires_at,
        resources: specs,
        ssh_authorized_keys,
        tokens: Vec::new(),
        request_id: None,
    };
    resources::create_resources(ctx, principal, &request).await
}

/// The live resources `principal` sees as a spec file (names from the catalog; `userdata`
/// and Pod options when set).
pub async fn export(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
) -> Result<SpecFile, AppError> {
    let scope = crate::ssr::access::scope(principal);
    let rows = sqlx::query!(
        r#"SELECT r.friendly_name, i.friendly_name AS image, f.friendly_name AS flavor, r.userdata,
                  r.pod_options AS "pod_options: Json<PodOptions>"
           FROM resources r JOIN disk_images i ON i.id = r.disk_image_id
                JOIN flavors f ON f.id = r.flavor_id
           WHERE r.allocation_state NOT IN ('deleted', 'expired', 'failed', 'deleting')
             AND ($1::text IS NULL OR r.experiment_id = $1)
             AND ($2::text IS NULL OR r.requested_by = $2)
           ORDER BY r.created_at, r.id"#,
        scope.experiment_id,
        scope.requested_by
    )
    .fetch_all(pool)
    .await?;
    Ok(SpecFile {
        resources: rows
            .into_iter()
            .map(|r| SpecEntry {
                friendly_name: r.friendly_name,
                site_id: Some(site.to_string()),
                flavor: r.flavor,
                disk_image: r.image,
                cloudinit_file: None,
                userdata: r.userdata,
                pod: r.pod_options.0,
            })
            .collect(),
    })
}

/// "Save as template": the live resources `principal` sees as version 1 of a new template
/// in `scope` (no parameters; images and flavors by name, as the export writes them).
/// Errors as `POST /templates` (422 for an experiment with no live resource: `resources`).
pub async fn save_as_template(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    name: &str,
    scope: crate::templates::TemplateScope,
) -> Result<crate::templates::Template, AppError> {
    let spec = export(pool, site, principal).await?;
    let resources = spec
        .resources
        .into_iter()
        .map(|entry| {
            let mut value = serde_json::to_value(entry).map_err(crate::ssr::internal)?;
            if let Some(object) = value.as_object_mut() {
                object.remove("site_id");
            }
            Ok(value)
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    let request = crate::templates::CreateTemplateRequest {
        name: name.to_string(),
        description: format!(
            "Saved from experiment {} ({} resources).",
            principal.experiment_id.as_deref().unwrap_or("?"),
            resources.len()
        ),
        scope,
        parameters: Vec::new(),
        resources,
        notes: "saved from a running experiment".into(),
    };
    crate::ssr::templates::create(pool, site, principal, &request).await
}

/// An `ssh_config` with one `Host` per live VM that has an address (`Host` = its name,
/// `HostName`, `User` = the image's login user, `ProxyJump` when `jump` is set).
pub async fn ssh_config(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    jump: Option<&str>,
) -> Result<String, AppError> {
    let query = ListQuery {
        limit: Some(resources::MAX_PAGE),
        ..ListQuery::default()
    };
    let list = resources::list_resources(pool, site, principal, &query).await?;
    let mut out = format!(
        "# ssh_config for the VMs of {} (slices-blueprint, {} UTC)\n# Use: ssh -F ssh_config <name>\n",
        principal.experiment_id.as_deref().unwrap_or("your resources"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    );
    for r in list.iter().filter(|r| r.flavor_type == FlavorType::Vm) {
        let Some(target) = r
            .ssh_command
            .as_deref()
            .and_then(|c| c.strip_prefix("ssh "))
        else {
            continue;
        };
        let (user, host) = target.split_once('@').unwrap_or(("", target));
        out.push_str(&format!(
            "\nHost {}\n    HostName {host}\n",
            r.friendly_name
        ));
        if !user.is_empty() {
            out.push_str(&format!("    User {user}\n"));
        }
        if let Some(jump) = jump {
            out.push_str(&format!("    ProxyJump {jump}\n"));
        }
    }
    Ok(out)
}
