//! Catalog import from a site-level cloud (`SITE_CLOUDS_YAML`, the operator's clouds.yaml):
//! Glance images become disk images (`location` = the Glance image id, `min_disk_mb` =
//! `min_disk` GiB × 1024, `min_ram_mib` = `min_ram`), Nova flavors become `vm` flavors
//! (`ram_mib` = `ram`, `disk_mb` = `disk` GiB × 1024). Only `public` and `community` images are
//! imported (a private image of the operator's project could not be booted by users). Entries remember their source
//! (`source_cloud`, `source_id`), so a second import updates what changed and adds nothing twice.

use crate::error::AppError;
use crate::model::{ImportReport, ImportedEntry};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::cloud_config::{parse, Cloud};
use crate::ssr::openstack::{OpenStackClient, OpenStackError};
use reqwest::Method;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::path::Path;
use uuid::Uuid;

fn entry(name: &str, source_id: &str) -> ImportedEntry {
    ImportedEntry {
        name: name.to_string(),
        source_id: source_id.to_string(),
    }
}

/// A count from OpenStack as the catalog's `i32`, clamped to 0..=i32::MAX.
fn mib(value: i64) -> i32 {
    i32::try_from(value.max(0)).unwrap_or(i32::MAX)
}

/// The login user of an image without an `os_admin_user` property: the default user the
/// distribution's cloud images create (cloud-init `default_user`), guessed from the image
/// name; `root` when nothing matches. Admins can correct it in the catalog editor.
pub fn guess_username(image_name: &str) -> &'static str {
    let name = image_name.to_ascii_lowercase();
    const KNOWN: [(&str, &str); 10] = [
        ("ubuntu", "ubuntu"),
        ("debian", "debian"),
        ("cirros", "cirros"),
        ("fedora", "fedora"),
        ("centos", "centos"),
        ("rocky", "rocky"),
        ("alma", "almalinux"),
        ("alpine", "alpine"),
        ("arch", "arch"),
        ("opensuse", "opensuse"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| name.contains(needle))
        .map_or("root", |(_, user)| user)
}

/// Imports the images and flavors `cloud` shows, in one transaction. Errors from OpenStack
/// become 503 with its message; database errors are internal.
pub async fn import(
    pool: &PgPool,
    client: &OpenStackClient,
    actor: &Actor,
    cloud: &Cloud,
) -> Result<ImportReport, AppError> {
    let (images, flavors) = fetch(client, cloud)
        .await
        .map_err(|e| AppError::Unavailable(format!("catalog import from `{}`: {e}", cloud.name)))?;
    let mut report = ImportReport {
        cloud: cloud.name.clone(),
        ..ImportReport::default()
    };
    let mut tx = pool.begin().await?;
    for image in images["images"].as_array().into_iter().flatten() {
        import_image(&mut tx, &cloud.name, image, &mut report).await?;
    }
    for flavor in flavors["flavors"].as_array().into_iter().flatten() {
        import_flavor(&mut tx, &cloud.name, flavor, &mut report).await?;
    }
    let counts = serde_json::json!({
        "images_added": report.images_added.len(),
        "images_updated": report.images_updated.len(),
        "flavors_added": report.flavors_added.len(),
        "flavors_updated": report.flavors_updated.len(),
    });
    let event = Event::new("catalog.import")
        .object(format!("cloud:{}", cloud.name))
        .detail(counts);
    audit::record(&mut tx, actor, event).await?;
    tx.commit().await?;
    Ok(report)
}

/// Image v2 "List images" (active ones) and Compute "List Flavors With Details".
async fn fetch(client: &OpenStackClient, cloud: &Cloud) -> Result<(Value, Value), OpenStackError> {
    let token = client.authenticate(cloud).await?;
    let glance = token.endpoint("image", cloud)?;
    let nova = token.endpoint("compute", cloud)?;
    let list = |url: String| {
        let token = &token;
        async move {
            Ok::<_, OpenStackError>(
                client
                    .call(cloud, token, Method::GET, &url, None)
                    .await?
                    .unwrap_or(Value::Null),
            )
        }
    };
    let images = list(format!("{glance}/v2/images?limit=1000&status=active")).await?;
    let flavors = list(format!("{nova}/flavors/detail")).await?;
    Ok((images, flavors))
}

/// One Glance image: added, updated or unchanged (keyed by cloud and Glance id); private
/// and shared images are skipped, since not every user's project could boot them.
async fn import_image(
    tx: &mut Transaction<'_, Postgres>,
    cloud: &str,
    image: &Value,
    report: &mut ImportReport,
) -> Result<(), AppError> {
    let (Some(id), Some(name)) = (image["id"].as_str(), image["name"].as_str()) else {
        return Ok(());
    };
    if !matches!(image["visibility"].as_str(), Some("public" | "community")) {
        report.images_skipped.push(entry(name, id));
        return Ok(());
    }
    let min_disk_mb = mib(image["min_disk"].as_i64().unwrap_or(0).saturating_mul(1024));
    let min_ram_mib = mib(image["min_ram"].as_i64().unwrap_or(0));
    let username = image["os_admin_user"]
        .as_str()
        .or(image["default_user"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| guess_username(name).to_string());
    let existing = sqlx::query!(
        r#"SELECT id, friendly_name, location, min_disk_mb, min_ram_mib FROM disk_images
           WHERE source_cloud = $1 AND source_id = $2"#,
        cloud,
        id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let list = match existing {
        None => {
            sqlx::query!(
                r#"INSERT INTO disk_images (id, friendly_name, cluster_id, location, default_username,
                       min_disk_mb, min_ram_mib, short_description, source_cloud, source_id)
                   VALUES ($1, $2, 'default', $3, $4, $5, $6, $7, $8, $9)"#,
                Uuid::now_v7(),
                name,
                id,
                &username,
                min_disk_mb,
                min_ram_mib,
                format!("Imported from cloud {cloud}"),
                cloud,
                id
            )
            .execute(&mut **tx)
            .await?;
            &mut report.images_added
        }
        Some(row)
            if row.friendly_name == name
                && row.location == id
                && row.min_disk_mb == min_disk_mb
                && row.min_ram_mib == min_ram_mib =>
        {
            &mut report.images_unchanged
        }
        Some(row) => {
            sqlx::query!(
                r#"UPDATE disk_images SET friendly_name = $2, location = $3, min_disk_mb = $4,
                       min_ram_mib = $5 WHERE id = $1"#,
                row.id,
                name,
                id,
                min_disk_mb,
                min_ram_mib
            )
            .execute(&mut **tx)
            .await?;
            &mut report.images_updated
        }
    };
    list.push(entry(name, id));
    Ok(())
}

/// One Nova flavor: added, updated or unchanged (keyed by cloud and Nova id).
async fn import_flavor(
    tx: &mut Transaction<'_, Postgres>,
    cloud: &str,
    flavor: &Value,
    report: &mut ImportReport,
) -> Result<(), AppError> {
    let (Some(id), Some(name)) = (flavor["id"].as_str(), flavor["name"].as_str()) else {
        return Ok(());
    };
    let vcpus = mib(flavor["vcpus"].as_i64().unwrap_or(1)).max(1);
    let ram_mib = mib(flavor["ram"].as_i64().unwrap_or(1)).max(1);
    let disk_mb = mib(flavor["disk"].as_i64().unwrap_or(0).saturating_mul(1024));
    let description = flavor["description"].as_str().unwrap_or("").to_string();
    let existing = sqlx::query!(
        r#"SELECT id, friendly_name, vcpus, ram_mib, disk_mb FROM flavors
           WHERE source_cloud = $1 AND source_id = $2"#,
        cloud,
        id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let list = match existing {
        None => {
            sqlx::query!(
                r#"INSERT INTO flavors (id, friendly_name, description, flavor_type, ram_mib, vcpus,
                       disk_mb, source_cloud, source_id)
                   VALUES ($1, $2, $3, 'vm', $4, $5, $6, $7, $8)"#,
                Uuid::now_v7(),
                name,
                description,
                ram_mib,
                vcpus,
                disk_mb,
                cloud,
                id
            )
            .execute(&mut **tx)
            .await?;
            &mut report.flavors_added
        }
        Some(row)
            if row.friendly_name == name
                && row.vcpus == vcpus
                && row.ram_mib == ram_mib
                && row.disk_mb == disk_mb =>
        {
            &mut report.flavors_unchanged
        }
        Some(row) => {
            sqlx::query!(
                r#"UPDATE flavors SET friendly_name = $2, vcpus = $3, ram_mib = $4, disk_mb = $5
                   WHERE id = $1"#,
                row.id,
                name,
                vcpus,
                ram_mib,
                disk_mb
            )
            .execute(&mut **tx)
            .await?;
            &mut report.flavors_updated
        }
    };
    list.push(entry(name, id));
    Ok(())
}

/// Imports from a cloud of the operator's `SITE_CLOUDS_YAML` (its first cloud when `cloud`
/// is `None`). 409 (`cloud`) when no site cloud is configured; 422 (`cloud`) for an unknown
/// name; 503 when the file cannot be read or the cloud does not answer.
pub async fn import_site_cloud(
    pool: &PgPool,
    client: &OpenStackClient,
    actor: &Actor,
    site_clouds_yaml: Option<&Path>,
    cloud: Option<&str>,
) -> Result<ImportReport, AppError> {
    // Not a server failure but the site's state: 409, like any request the state refuses.
    let path = site_clouds_yaml.ok_or_else(|| AppError::Conflict {
        field: "cloud".into(),
        message: "no site cloud is configured: set SITE_CLOUDS_YAML to the operator's clouds.yaml"
            .into(),
    })?;
    let text =
        zeroize::Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(|e| {
            AppError::Unavailable(format!("SITE_CLOUDS_YAML {}: {e}", path.display()))
        })?);
    let file = parse(&text).map_err(|e| {
        AppError::Unavailable(format!(
            "SITE_CLOUDS_YAML {} is invalid: {e}",
            path.display()
        ))
    })?;
    let chosen = match cloud.map(str::trim).filter(|c| !c.is_empty()) {
        Some(name) => file.get(name).ok_or_else(|| {
            AppError::invalid(
                "cloud",
                format!(
                    "SITE_CLOUDS_YAML has no cloud `{name}` (it has: {})",
                    file.clouds
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        None => file
            .clouds
            .first()
            .ok_or_else(|| AppError::Unavailable("SITE_CLOUDS_YAML defines no cloud".into()))?,
    };
    let report = import(pool, client, actor, chosen).await?;
    tracing::info!(
        cloud = %report.cloud,
        images_added = report.images_added.len(),
        images_updated = report.images_updated.len(),
        flavors_added = report.flavors_added.len(),
        flavors_updated = report.flavors_updated.len(),
        "catalog imported"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_guessed_from_distribution_names() {
        for (image, user) in [
            ("Ubuntu 24.04 LTS", "ubuntu"),
            ("debian-12-genericcloud", "debian"),
            ("cirros-0.6.2", "cirros"),
            ("AlmaLinux-9", "almalinux"),
            ("tiny", "root"),
        ] {
            assert_eq!(guess_username(image), user, "{image}");
        }
        assert_eq!(mib(-5), 0);
        assert_eq!(mib(i64::MAX), i32::MAX);
    }
}
