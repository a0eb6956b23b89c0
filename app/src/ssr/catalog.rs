//! The catalog: disk images and flavors (../shared/slices-api.md, "Catalog").
//! Reads for any valid token (hidden images for admins only); writes for admins only (each
//! write checks its principal) and each is written to the audit log in its own transaction.

use crate::error::AppError;
use crate::ids::{format_id, IdKind};
use crate::model::{
    DiskImage, DiskImageInput, DiskImagePatch, Flavor, FlavorInput, FlavorPatch, FlavorType,
};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::auth::Principal;
use crate::ssr::{internal, path_id};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

const MAX_NAME: usize = 128;
const MAX_TEXT: usize = 8192;

struct ImageRow {
    id: Uuid,
    friendly_name: String,
    cluster_id: String,
    location: String,
    default_username: String,
    min_disk_mb: i32,
    min_ram_mib: i32,
    short_description: String,
    long_description: String,
    tags: Vec<String>,
    hidden: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ImageRow {
    fn into_wire(self, site: &str) -> DiskImage {
        DiskImage {
            id: format_id(IdKind::Image, site, self.id),
            friendly_name: self.friendly_name,
            cluster_id: self.cluster_id,
            location: self.location,
            default_username: self.default_username,
            min_disk_mb: self.min_disk_mb,
            min_ram_mib: self.min_ram_mib,
            short_description: self.short_description,
            long_description: self.long_description,
            tags: self.tags,
            hidden: self.hidden,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

struct FlavorRow {
    id: Uuid,
    friendly_name: String,
    description: String,
    flavor_type: FlavorType,
    ram_mib: i32,
    vcpus: i32,
    disk_mb: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl FlavorRow {
    fn into_wire(self, site: &str) -> Flavor {
        Flavor {
            id: format_id(IdKind::Flavor, site, self.id),
            flavor_type: self.flavor_type,
            friendly_name: self.friendly_name,
            description: self.description,
            ram_mib: self.ram_mib,
            vcpus: self.vcpus,
            disk_mb: self.disk_mb,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn check_name(field: &str, value: &str) -> Result<(), AppError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AppError::invalid(field, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_NAME {
        return Err(AppError::invalid(
            field,
            format!("at most {MAX_NAME} characters"),
        ));
    }
    if let Some(why) = crate::ssr::names::unsafe_character(trimmed) {
        return Err(AppError::invalid(field, why));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), AppError> {
    if value.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(())
}

fn check_nonneg(field: &str, value: i32) -> Result<(), AppError> {
    if value < 0 {
        return Err(AppError::invalid(field, "must not be negative"));
    }
    Ok(())
}

fn check_positive(field: &str, value: i32) -> Result<(), AppError> {
    if value <= 0 {
        return Err(AppError::invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), AppError> {
    if tags.len() > 32 {
        return Err(AppError::invalid("tags", "at most 32 tags"));
    }
    for (i, tag) in tags.iter().enumerate() {
        if tag.trim().is_empty() || tag.chars().count() > 64 {
            return Err(AppError::invalid(
                format!("tags[{i}]"),
                "each tag has 1 to 64 characters",
            ));
        }
    }
    Ok(())
}

fn validate_image(i: &DiskImageInput) -> Result<(), AppError> {
    check_name("friendly_name", &i.friendly_name)?;
    check_name("cluster_id", &i.cluster_id)?;
    check_name("location", &i.location)?;
    check_text("location", &i.location, 1024)?;
    check_text("default_username", &i.default_username, 64)?;
    check_nonneg("min_disk_mb", i.min_disk_mb)?;
    check_nonneg("min_ram_mib", i.min_ram_mib)?;
    check_text("short_description", &i.short_description, 512)?;
    check_text("long_description", &i.long_description, MAX_TEXT)?;
    check_tags(&i.tags)
}

fn validate_flavor(f: &FlavorInput) -> Result<(), AppError> {
    check_name("friendly_name", &f.friendly_name)?;
    check_text("description", &f.description, MAX_TEXT)?;
    check_positive("ram_mib", f.ram_mib)?;
    check_positive("vcpus", f.vcpus)?;
    check_nonneg("disk_mb", f.disk_mb)
}

/// Lists images, oldest first; hidden ones only when `include_hidden`.
pub async fn list_images(
    pool: &PgPool,
    site: &str,
    include_hidden: bool,
) -> Result<Vec<DiskImage>, AppError> {
    let rows = sqlx::query_as!(
        ImageRow,
        r#"SELECT id, friendly_name, cluster_id, location, default_username, min_disk_mb,
                  min_ram_mib, short_description, long_description, tags, hidden,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>"
           FROM disk_images WHERE (NOT hidden OR $1) ORDER BY created_at, id"#,
        include_hidden
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_wire(site)).collect())
}

/// One image by typed id; hidden ones are 404 unless `include_hidden`.
pub async fn get_image(
    pool: &PgPool,
    site: &str,
    id: &str,
    include_hidden: bool,
) -> Result<DiskImage, AppError> {
    let uuid = path_id(IdKind::Image, site, id)?;
    let row = sqlx::query_as!(
        ImageRow,
        r#"SELECT id, friendly_name, cluster_id, location, default_username, min_disk_mb,
                  min_ram_mib, short_description, long_description, tags, hidden,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>"
           FROM disk_images WHERE id = $1 AND (NOT hidden OR $2)"#,
        uuid,
        include_hidden
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.into_wire(site))
        .ok_or_else(|| AppError::NotFound(format!("disk image `{id}` not found")))
}

/// Adds an image.
pub async fn create_image(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    input: &DiskImageInput,
) -> Result<DiskImage, AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    validate_image(input)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        ImageRow,
        r#"INSERT INTO disk_images (id, friendly_name, cluster_id, location, default_username,
               min_disk_mb, min_ram_mib, short_description, long_description, tags, hidden)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           RETURNING id, friendly_name, cluster_id, location, default_username, min_disk_mb,
                  min_ram_mib, short_description, long_description, tags, hidden,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>""#,
        Uuid::now_v7(),
        input.friendly_name.trim(),
        input.cluster_id.trim(),
        input.location.trim(),
        input.default_username.trim(),
        input.min_disk_mb,
        input.min_ram_mib,
        input.short_description,
        input.long_description,
        &input.tags,
        input.hidden
    )
    .fetch_one(&mut *tx)
    .await?;
    let image = row.into_wire(site);
    let event = Event::new("image.create").object(&image.id).detail(serde_json::json!({
        "friendly_name": image.friendly_name, "location": image.location, "hidden": image.hidden,
    }));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(image)
}

/// Changes the fields present in `patch`.
pub async fn update_image(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
    patch: &DiskImagePatch,
) -> Result<DiskImage, AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    let uuid = path_id(IdKind::Image, site, id)?;
    let mut current: DiskImageInput = {
        let i = get_image(pool, site, id, true).await?;
        DiskImageInput {
            friendly_name: i.friendly_name,
            cluster_id: i.cluster_id,
            location: i.location,
            default_username: i.default_username,
            min_disk_mb: i.min_disk_mb,
            min_ram_mib: i.min_ram_mib,
            short_description: i.short_description,
            long_description: i.long_description,
            tags: i.tags,
            hidden: i.hidden,
        }
    };
    let p = patch.clone();
    macro_rules! apply {
        ($($f:ident),*) => { $( if let Some(v) = p.$f { current.$f = v; } )* };
    }
    apply!(
        friendly_name,
        cluster_id,
        location,
        default_username,
        min_disk_mb,
        min_ram_mib,
        short_description,
        long_description,
        tags,
        hidden
    );
    validate_image(&current)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        ImageRow,
        r#"UPDATE disk_images SET friendly_name = $2, cluster_id = $3, location = $4,
               default_username = $5, min_disk_mb = $6, min_ram_mib = $7,
               short_description = $8, long_description = $9, tags = $10, hidden = $11
           WHERE id = $1
           RETURNING id, friendly_name, cluster_id, location, default_username, min_disk_mb,
                  min_ram_mib, short_description, long_description, tags, hidden,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>""#,
        uuid,
        current.friendly_name.trim(),
        current.cluster_id.trim(),
        current.location.trim(),
        current.default_username.trim(),
        current.min_disk_mb,
        current.min_ram_mib,
        current.short_description,
        current.long_description,
        &current.tags,
        current.hidden
    )
    .fetch_optional(&mut *tx)
    .await?;
    let image = row
        .map(|r| r.into_wire(site))
        .ok_or_else(|| AppError::NotFound(format!("disk image `{id}` not found")))?;
    let event = Event::new("image.update")
        .object(&image.id)
        .detail(audit::fields_set(patch));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(image)
}

/// Removes an image; 409 while resources still refer to it (hide it instead).
pub async fn delete_image(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
) -> Result<(), AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    let uuid = path_id(IdKind::Image, site, id)?;
    let mut tx = pool.begin().await?;
    let result = sqlx::query!("DELETE FROM disk_images WHERE id = $1", uuid)
        .execute(&mut *tx)
        .await
        .map_err(|e| in_use(e, "disk image"))?;
    if result.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("disk image `{id}` not found")));
    }
    let event = Event::new("image.delete").object(format_id(IdKind::Image, site, uuid));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(())
}

/// Lists flavors, oldest first.
pub async fn list_flavors(pool: &PgPool, site: &str) -> Result<Vec<Flavor>, AppError> {
    let rows = sqlx::query_as!(
        FlavorRow,
        r#"SELECT id, friendly_name, description, flavor_type AS "flavor_type: FlavorType", ram_mib, vcpus, disk_mb,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>"
           FROM flavors ORDER BY created_at, id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_wire(site)).collect())
}

/// One flavor by typed id.
pub async fn get_flavor(pool: &PgPool, site: &str, id: &str) -> Result<Flavor, AppError> {
    let uuid = path_id(IdKind::Flavor, site, id)?;
    let row = sqlx::query_as!(
        FlavorRow,
        r#"SELECT id, friendly_name, description, flavor_type AS "flavor_type: FlavorType", ram_mib, vcpus, disk_mb,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>"
           FROM flavors WHERE id = $1"#,
        uuid
    )
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => Ok(r.into_wire(site)),
        None => Err(AppError::NotFound(format!("flavor `{id}` not found"))),
    }
}

/// Adds a flavor.
pub async fn create_flavor(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    input: &FlavorInput,
) -> Result<Flavor, AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    validate_flavor(input)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        FlavorRow,
        r#"INSERT INTO flavors (id, friendly_name, description, flavor_type, ram_mib, vcpus, disk_mb)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, friendly_name, description, flavor_type AS "flavor_type: FlavorType", ram_mib, vcpus, disk_mb,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>""#,
        Uuid::now_v7(),
        input.friendly_name.trim(),
        input.description,
        input.flavor_type.as_str(),
        input.ram_mib,
        input.vcpus,
        input.disk_mb
    )
    .fetch_one(&mut *tx)
    .await?;
    let flavor = row.into_wire(site);
    let event = Event::new("flavor.create")
        .object(&flavor.id)
        .detail(audit::fields_set(input));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(flavor)
}

/// Changes the fields present in `patch`.
pub async fn update_flavor(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
    patch: &FlavorPatch,
) -> Result<Flavor, AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    let uuid = path_id(IdKind::Flavor, site, id)?;
    let f = get_flavor(pool, site, id).await?;
    let next = FlavorInput {
        friendly_name: patch.friendly_name.clone().unwrap_or(f.friendly_name),
        description: patch.description.clone().unwrap_or(f.description),
        flavor_type: patch.flavor_type.unwrap_or(f.flavor_type),
        ram_mib: patch.ram_mib.unwrap_or(f.ram_mib),
        vcpus: patch.vcpus.unwrap_or(f.vcpus),
        disk_mb: patch.disk_mb.unwrap_or(f.disk_mb),
    };
    validate_flavor(&next)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        FlavorRow,
        r#"UPDATE flavors SET friendly_name = $2, description = $3, flavor_type = $4,
               ram_mib = $5, vcpus = $6, disk_mb = $7
           WHERE id = $1
           RETURNING id, friendly_name, description, flavor_type AS "flavor_type: FlavorType", ram_mib, vcpus, disk_mb,
                  created_at AS "created_at: DateTime<Utc>", updated_at AS "updated_at: DateTime<Utc>""#,
        uuid,
        next.friendly_name.trim(),
        next.description,
        next.flavor_type.as_str(),
        next.ram_mib,
        next.vcpus,
        next.disk_mb
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(AppError::NotFound(format!("flavor `{id}` not found")));
    };
    let flavor = row.into_wire(site);
    let event = Event::new("flavor.update")
        .object(&flavor.id)
        .detail(audit::fields_set(patch));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(flavor)
}

/// Removes a flavor; 409 while resources still refer to it.
pub async fn delete_flavor(
    pool: &PgPool,
    site: &str,
    principal: &Principal,
    id: &str,
) -> Result<(), AppError> {
    crate::ssr::access::require(principal, crate::ssr::access::Right::ChangeCatalog)?;
    let uuid = path_id(IdKind::Flavor, site, id)?;
    let mut tx = pool.begin().await?;
    let result = sqlx::query!("DELETE FROM flavors WHERE id = $1", uuid)
        .execute(&mut *tx)
        .await
        .map_err(|e| in_use(e, "flavor"))?;
    if result.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("flavor `{id}` not found")));
    }
    let event = Event::new("flavor.delete").object(format_id(IdKind::Flavor, site, uuid));
    audit::commit(tx, &Actor::of(principal), event).await?;
    Ok(())
}

/// Maps the named foreign-key constraints of `resources` to a 409.
fn in_use(e: sqlx::Error, what: &str) -> AppError {
    if let Some(db) = e.as_database_error() {
        if matches!(
            db.constraint(),
            Some("resources_disk_image_fk" | "resources_flavor_fk")
        ) {
            return AppError::Conflict {
                field: "id".into(),
                message: format!(
                    "this {what} is referenced by resources (including deleted ones kept for history); hide it instead"
                ),
            };
        }
    }
    internal(e)
}

/// Adds a demo Kubernetes image and flavor when the catalog is empty (`SEED_DEMO_CATALOG`).
pub async fn seed_demo(pool: &PgPool, site: &str) -> Result<bool, AppError> {
    let count = sqlx::query_scalar!(
        r#"SELECT (SELECT count(*) FROM disk_images) + (SELECT count(*) FROM flavors) AS "n!""#
    )
    .fetch_one(pool)
    .await?;
    if count > 0 {
        return Ok(false);
    }
    let system = Principal::system();
    create_image(
        pool,
        site,
        &system,
        &DiskImageInput {
            friendly_name: "nginx (container)".into(),
            cluster_id: "default".into(),
            location: "nginx:alpine".into(),
            default_username: "root".into(),
            short_description: "Demo container image for Kubernetes pods".into(),
            tags: vec!["demo".into(), "k8s".into()],
            ..DiskImageInput::default()
        },
    )
    .await?;
    create_flavor(
        pool,
        site,
        &system,
        &FlavorInput {
            friendly_name: "k8s.small".into(),
            description: "1 vCPU, 256 MiB pod".into(),
            flavor_type: FlavorType::K8s,
            ram_mib: 256,
            vcpus: 1,
            disk_mb: 0,
        },
    )
    .await?;
    Ok(true)
}
