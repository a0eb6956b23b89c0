//! Per-user OpenStack credentials: each user's clouds.yaml (parsed by `cloud_config`),
//! stored sealed (XChaCha20-Poly1305, see `secrets`) next to a redacted summary, and the
//! Keystone connection test. The VM backend reads it through [`DbClouds`], its
//! [`CloudsSource`].

use crate::error::AppError;
use crate::model::{CloudsYamlSummary, ConnectionTest};
use crate::ssr::audit::{self, Actor, Event};
use crate::ssr::backend::CloudsSource;
use crate::ssr::cloud_config::{parse, Cloud, CloudsFile};
use crate::ssr::openstack::OpenStackClient;
use crate::ssr::secrets::SecretBox;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Keys for clouds.yaml at rest: the current one seals, the previous one (during a rotation)
/// still opens.
#[derive(Clone, Debug)]
pub struct CloudsKeys {
    pub current: SecretBox,
    pub previous: Option<SecretBox>,
}

impl CloudsKeys {
    /// Opens `user_id`'s sealed clouds.yaml (sealed for that user only: see [`context`]).
    fn open(&self, user_id: &str, sealed: &str) -> Result<String, AppError> {
        let context = context(user_id);
        let bytes = self
            .current
            .open_bound(&context, sealed)
            .or_else(|e| match &self.previous {
                Some(previous) => previous.open_bound(&context, sealed),
                None => Err(e),
            })
            .map_err(|e| {
                crate::ssr::internal(anyhow::anyhow!(
                    "a stored clouds.yaml cannot be opened ({e}); was CLOUDS_ENCRYPTION_KEY changed without CLOUDS_ENCRYPTION_KEY_PREVIOUS?"
                ))
            })?;
        String::from_utf8(bytes).map_err(crate::ssr::internal)
    }
}

/// What a user's sealed clouds.yaml is bound to (the AEAD's associated data): the file
/// belongs to this user, so the sealed bytes copied into another user's row do not open.
fn context(user_id: &str) -> String {
    format!("clouds.yaml/{user_id}")
}

fn summary_of(
    file: &CloudsFile,
    default_cloud: &str,
    uploaded_at: DateTime<Utc>,
) -> CloudsYamlSummary {
    CloudsYamlSummary {
        clouds: file.clouds.iter().map(Cloud::summary).collect(),
        default_cloud: default_cloud.to_string(),
        uploaded_at,
    }
}

fn pick_default(file: &CloudsFile, asked: Option<&str>) -> Result<String, AppError> {
    match asked.map(str::trim).filter(|a| !a.is_empty()) {
        Some(name) if file.get(name).is_some() => Ok(name.to_string()),
        Some(name) => Err(AppError::invalid(
            "default_cloud",
            format!(
                "`{name}` is not one of the clouds in the file ({})",
                file.clouds
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(file
            .clouds
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default()),
    }
}

/// The user a clouds.yaml request acts for: a user token's subject, or an experiment token's
/// Validates and stores (replacing) a user's clouds.yaml; answers with the redacted summary.
pub async fn store(
    pool: &PgPool,
    keys: &CloudsKeys,
    user_id: &str,
    text: &str,
    default_cloud: Option<&str>,
) -> Result<CloudsYamlSummary, AppError> {
    let file = parse(text)?;
    let default = pick_default(&file, default_cloud)?;
    let sealed = keys.current.seal_bound(&context(user_id), text.as_bytes());
    let summary = summary_of(&file, &default, Utc::now());
    let summary_json = serde_json::to_value(&summary.clouds).map_err(crate::ssr::internal)?;
    let mut tx = pool.begin().await?;
    let uploaded_at = sqlx::query_scalar!(
        r#"INSERT INTO user_clouds (user_id, sealed_yaml, summary, default_cloud)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id) DO UPDATE SET sealed_yaml = EXCLUDED.sealed_yaml,
               summary = EXCLUDED.summary, default_cloud = EXCLUDED.default_cloud,
               uploaded_at = now()
           RETURNING uploaded_at AS "uploaded_at: DateTime<Utc>""#,
        user_id,
        sealed,
        summary_json,
        default
    )
    .fetch_one(&mut *tx)
    .await?;
    let names: Vec<&str> = summary.clouds.iter().map(|c| c.name.as_str()).collect();
    let event = Event::new("clouds_yaml.upload")
        .object(format!("clouds-yaml:{user_id}"))
        .detail(serde_json::json!({"clouds": names, "default_cloud": default}));
    audit::commit(tx, &Actor::user(user_id), event).await?;
    tracing::info!(
        user = user_id,
        clouds = file.clouds.len(),
        "stored a clouds.yaml"
    );
    Ok(CloudsYamlSummary {
        uploaded_at,
        ..summary
    })
}

/// The redacted summary of a user's clouds.yaml; 404 when none is stored.
pub async fn summary(pool: &PgPool, user_id: &str) -> Result<CloudsYamlSummary, AppError> {
    let row = sqlx::query!(
        r#"SELECT summary, default_cloud, uploaded_at AS "uploaded_at: DateTime<Utc>"
           FROM user_clouds WHERE user_id = $1"#,
        user_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AppError::NotFound("no clouds.yaml uploaded yet".into()))?;
    Ok(CloudsYamlSummary {
        clouds: serde_json::from_value(row.summary).map_err(crate::ssr::internal)?,
        default_cloud: row.default_cloud,
        uploaded_at: row.uploaded_at,
    })
}

/// Picks the default cloud.
pub async fn set_default(
    pool: &PgPool,
    user_id: &str,
    name: &str,
) -> Result<CloudsYamlSummary, AppError> {
    let current = summary(pool, user_id).await?;
    if !current.clouds.iter().any(|c| c.name == name) {
        return Err(AppError::invalid(
            "default_cloud",
            format!("`{name}` is not one of your clouds"),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "UPDATE user_clouds SET default_cloud = $2 WHERE user_id = $1",
        user_id,
        name
    )
    .execute(&mut *tx)
    .await?;
    let event = Event::new("clouds_yaml.set_default")
        .object(format!("clouds-yaml:{user_id}"))
        .detail(serde_json::json!({"default_cloud": name}));
    audit::commit(tx, &Actor::user(user_id), event).await?;
    summary(pool, user_id).await
}

/// Forgets a user's clouds.yaml; 404 when none is stored.
pub async fn remove(pool: &PgPool, user_id: &str) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query!("DELETE FROM user_clouds WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound("no clouds.yaml uploaded yet".into()));
    }
    let event = Event::new("clouds_yaml.delete").object(format!("clouds-yaml:{user_id}"));
    audit::commit(tx, &Actor::user(user_id), event).await?;
    Ok(())
}

/// The user's parsed clouds.yaml and default cloud, when stored.
pub async fn load(
    pool: &PgPool,
    keys: &CloudsKeys,
    user_id: &str,
) -> Result<Option<(CloudsFile, String)>, AppError> {
    let row = sqlx::query!(
        "SELECT sealed_yaml, default_cloud FROM user_clouds WHERE user_id = $1",
        user_id
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text = zeroize::Zeroizing::new(keys.open(user_id, &row.sealed_yaml)?);
    Ok(Some((parse(&text)?, row.default_cloud)))
}

/// Re-seals every stored clouds.yaml with the current key (after a rotation). Returns the count.
pub async fn reseal_all(pool: &PgPool, keys: &CloudsKeys) -> Result<u64, AppError> {
    let rows = sqlx::query!("SELECT user_id, sealed_yaml FROM user_clouds")
        .fetch_all(pool)
        .await?;
    let mut count = 0;
    for row in rows {
        let text = zeroize::Zeroizing::new(keys.open(&row.user_id, &row.sealed_yaml)?);
        let sealed = keys
            .current
            .seal_bound(&context(&row.user_id), text.as_bytes());
        sqlx::query!(
            "UPDATE user_clouds SET sealed_yaml = $2 WHERE user_id = $1",
            row.user_id,
            sealed
        )
        .execute(pool)
        .await?;
        count += 1;
    }
    Ok(count)
}

/// Authenticates against Keystone with one of the user's clouds and lists the images it sees.
pub async fn test_connection(
    pool: &PgPool,
    keys: &CloudsKeys,
    client: &OpenStackClient,
    user_id: &str,
    cloud: Option<&str>,
) -> Result<ConnectionTest, AppError> {
    let (file, default) = load(pool, keys, user_id)
        .await?
        .ok_or_else(|| AppError::NotFound("no clouds.yaml uploaded yet".into()))?;
    let name = cloud.unwrap_or(&default).to_string();
    let cloud = file.get(&name).ok_or_else(|| {
        AppError::invalid("cloud", format!("no cloud `{name}` in your clouds.yaml"))
    })?;
    let result = match client.authenticate(cloud).await {
        Ok(token) => client.image_names(cloud, &token).await,
        Err(e) => Err(e),
    };
    let event = Event::new("clouds_yaml.test")
        .object(format!("clouds-yaml:{user_id}"))
        .detail(serde_json::json!({"cloud": name, "ok": result.is_ok()}));
    audit::record_alone(pool, &Actor::user(user_id), event).await;
    Ok(match result {
        Ok(images) => ConnectionTest {
            ok: true,
            cloud: name,
            images: Some(images),
            error: None,
        },
        Err(e) => ConnectionTest {
            ok: false,
            cloud: name,
            images: None,
            error: Some(e.to_string()),
        },
    })
}

/// The production source of clouds.yaml for the VM backend.
pub struct DbClouds {
    pub pool: PgPool,
    pub keys: CloudsKeys,
}

#[async_trait::async_trait]
impl CloudsSource for DbClouds {
    async fn clouds_of(&self, user_id: &str) -> Result<(CloudsFile, String), String> {
        match load(&self.pool, &self.keys, user_id).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(format!(
                "user `{user_id}` has no clouds.yaml: upload one (dashboard page Clouds, or PUT /clouds-yaml) and request the VM again"
            )),
            Err(e) => Err(format!("reading your clouds.yaml failed: {e}")),
        }
    }
}
