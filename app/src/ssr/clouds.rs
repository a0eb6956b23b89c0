//! Per-user OpenStack credentials: a `clouds.yaml` (the os-client-config / openstacksdk
//! format, "Configuring os-client-config Applications") uploaded once per user, validated,
//! summarised without secrets, and stored sealed (see `secrets`).
//!
//! Parsing is hardened: the text is at most [`MAX_BYTES`]; before any tree is built, the YAML
//! event stream is scanned and rejected when it uses aliases (`*name`: the billion-laughs
//! expansion needs them, and clouds.yaml never does), nests deeper than [`MAX_DEPTH`] or holds
//! more than [`MAX_NODES`] nodes. Errors name the field and its line.
//!
//! Supported per cloud (`clouds.<name>`): `auth.auth_url` (required); password auth
//! (`auth.username` or `auth.user_id`, `auth.password`, `auth.project_name` or
//! `auth.project_id`, `auth.user_domain_name|id`, `auth.project_domain_name|id`,
//! `auth.domain_name|id` as the default for both) and application credentials
//! (`auth_type: v3applicationcredential`, `auth.application_credential_id` or
//! `auth.application_credential_name` + `auth.username`/`user_id`, and
//! `auth.application_credential_secret`); `region_name`, `interface` (public, internal,
//! admin; default public), `verify`.

use crate::error::AppError;
use crate::model::{CloudSummary, CloudsYamlSummary, ConnectionTest};
use crate::ssr::secrets::SecretBox;
use crate::ssr::state::AppState;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// Largest accepted clouds.yaml, bytes.
pub const MAX_BYTES: usize = 64 * 1024;
/// Deepest accepted nesting of mappings and sequences.
pub const MAX_DEPTH: usize = 12;
/// Most YAML nodes accepted.
pub const MAX_NODES: usize = 4000;

/// A secret string: never printed by `Debug`, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }

    /// The secret itself, for the one place that must send it (Keystone).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A name or an id (Keystone accepts either for users, projects and domains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    Name(String),
    Id(String),
}

/// How a cloud authenticates (Keystone v3 `POST /v3/auth/tokens` identity methods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudAuth {
    Password {
        user: NameOrId,
        user_domain: Option<NameOrId>,
        password: Secret,
        project: Option<NameOrId>,
        project_domain: Option<NameOrId>,
    },
    ApplicationCredential {
        /// By id, or by name with the owning user.
        credential: NameOrId,
        user: Option<NameOrId>,
        user_domain: Option<NameOrId>,
        secret: Secret,
    },
}

/// One cloud of a clouds.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    pub name: String,
    /// Keystone URL as given (with or without `/v3`).
    pub auth_url: String,
    pub auth: CloudAuth,
    pub region_name: Option<String>,
    /// Endpoint interface from the service catalog: `public` (default), `internal`, `admin`.
    pub interface: String,
    /// TLS verification (default true).
    pub verify: bool,
}

impl Cloud {
    /// The redacted view of this cloud.
    pub fn summary(&self) -> CloudSummary {
        let (auth_type, project, user, credential) = match &self.auth {
            CloudAuth::Password { project, user, .. } => {
                ("password", project.clone(), Some(user), None)
            }
            CloudAuth::ApplicationCredential {
                user, credential, ..
            } => (
                "v3applicationcredential",
                None,
                user.as_ref(),
                Some(match credential {
                    NameOrId::Name(n) | NameOrId::Id(n) => n.clone(),
                }),
            ),
        };
        CloudSummary {
            name: self.name.clone(),
            auth_url: self.auth_url.clone(),
            auth_type: auth_type.into(),
            project_name: match &project {
                Some(NameOrId::Name(n)) => Some(n.clone()),
                _ => None,
            },
            project_id: match &project {
                Some(NameOrId::Id(i)) => Some(i.clone()),
                _ => None,
            },
            username: match user {
                Some(NameOrId::Name(n)) => Some(n.clone()),
                Some(NameOrId::Id(i)) => Some(i.clone()),
                None => None,
            },
            application_credential: credential,
            region_name: self.region_name.clone(),
            interface: self.interface.clone(),
        }
    }
}

/// A parsed clouds.yaml: its clouds in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudsFile {
    pub clouds: Vec<Cloud>,
}

impl CloudsFile {
    /// The cloud called `name`.
    pub fn get(&self, name: &str) -> Option<&Cloud> {
        self.clouds.iter().find(|c| c.name == name)
    }
}

/// Lines of mapping keys by dotted path (`clouds.ostest.auth.auth_url` → 7), from the scan.
type KeyLines = HashMap<String, usize>;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AppError {
    AppError::invalid(field, message)
}

/// Scans the event stream: limits and aliases are checked before anything is built.
fn scan(text: &str) -> Result<KeyLines, AppError> {
    enum Frame {
        Map {
            path: String,
            key: Option<String>,
            expecting_key: bool,
        },
        Seq {
            path: String,
            index: usize,
        },
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut lines = KeyLines::new();
    let mut nodes = 0usize;
    // The path of the node about to start (its parent's key or index).
    fn child_path(stack: &[Frame]) -> String {
        match stack.last() {
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => {
                if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                }
            }
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
            _ => String::new(),
        }
    }
    // After a value completes inside its parent.
    fn value_done(stack: &mut [Frame]) {
        match stack.last_mut() {
            Some(Frame::Map {
                expecting_key, key, ..
            }) => {
                *expecting_key = true;
                *key = None;
            }
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| invalid("clouds.yaml", format!("not valid YAML: {e}")))?;
        let line = mark.line();
        match event {
            Event::StreamEnd => break,
            Event::Alias(_) => {
                return Err(invalid(
                    format!("line {line}"),
                    "YAML aliases (*name) are not accepted in clouds.yaml",
                ))
            }
            Event::Scalar(value, ..) => {
                nodes += 1;
                match stack.last_mut() {
                    Some(Frame::Map {
                        path,
                        key,
                        expecting_key,
                    }) if *expecting_key => {
                        let full = if path.is_empty() {
                            value.clone()
                        } else {
                            format!("{path}.{value}")
                        };
                        lines.entry(full).or_insert(line);
                        *key = Some(value);
                        *expecting_key = false;
                    }
                    _ => value_done(&mut stack),
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(invalid(
                        format!("line {line}"),
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let path = child_path(&stack);
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        key: None,
                        expecting_key: true,
                    }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                value_done(&mut stack);
            }
            Event::DocumentStart if lines.contains_key("clouds") => {
                return Err(invalid(format!("line {line}"), "one YAML document only"));
            }
            _ => {}
        }
        if nodes > MAX_NODES {
            return Err(invalid(
                format!("line {line}"),
                format!("more than {MAX_NODES} YAML nodes"),
            ));
        }
    }
    Ok(lines)
}

/// Parses and validates a clouds.yaml. Errors: 413 when too large, 422 naming the field
/// (`clouds.mycloud.auth.auth_url (line 4)`).
pub fn parse(text: &str) -> Result<CloudsFile, AppError> {
    if text.len() > MAX_BYTES {
        return Err(AppError::PayloadTooLarge {
            limit_bytes: MAX_BYTES,
        });
    }
    let lines = scan(text)?;
    let at = |path: &str| match lines.get(path) {
        Some(line) => format!("{path} (line {line})"),
        None => path.to_string(),
    };
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| invalid("clouds.yaml", format!("not valid YAML: {e}")))?;
    let root = docs
        .first()
        .ok_or_else(|| invalid("clouds.yaml", "the file is empty"))?;
    let clouds = match &root["clouds"] {
        Yaml::Hash(h) if !h.is_empty() => h,
        Yaml::BadValue | Yaml::Null => {
            return Err(invalid(
                "clouds",
                "a top-level `clouds:` mapping is required",
            ))
        }
        _ => {
            return Err(invalid(
                at("clouds"),
                "must map cloud names to their settings",
            ))
        }
    };
    let mut out = Vec::new();
    for (name, cloud) in clouds {
        let Some(name) = name.as_str().map(str::to_string) else {
            return Err(invalid(at("clouds"), "cloud names must be text"));
        };
        if name.is_empty() || name.len() > 64 {
            return Err(invalid(at("clouds"), "cloud names have 1 to 64 characters"));
        }
        let base = format!("clouds.{name}");
        if !matches!(cloud, Yaml::Hash(_)) {
            return Err(invalid(at(&base), "must be a mapping of settings"));
        }
        let text_at = |path: &str, node: &Yaml| -> Result<Option<String>, AppError> {
            match node {
                Yaml::BadValue | Yaml::Null => Ok(None),
                Yaml::String(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
                Yaml::Integer(i) => Ok(Some(i.to_string())),
                Yaml::Real(r) => Ok(Some(r.clone())),
                Yaml::Boolean(b) => Ok(Some(b.to_string())),
                _ => Err(invalid(at(path), "must be text")),
            }
        };
        let field = |key: &str| text_at(&format!("{base}.{key}"), &cloud[key]);
        let auth = &cloud["auth"];
        if !matches!(auth, Yaml::Hash(_)) {
            return Err(invalid(
                at(&format!("{base}.auth")),
                "an `auth:` mapping with auth_url and credentials is required",
            ));
        }
        let a = |key: &str| text_at(&format!("{base}.auth.{key}"), &auth[key]);
        let auth_url = a("auth_url")?
            .ok_or_else(|| invalid(at(&format!("{base}.auth")), "auth.auth_url is required"))?;
        if !(auth_url.starts_with("http://") || auth_url.starts_with("https://")) {
            return Err(invalid(
                at(&format!("{base}.auth.auth_url")),
                "must be an http(s) URL",
            ));
        }
        let either = |name_key: &str, id_key: &str| -> Result<Option<NameOrId>, AppError> {
            Ok(match (a(id_key)?, a(name_key)?) {
                (Some(id), _) => Some(NameOrId::Id(id)),
                (None, Some(name)) => Some(NameOrId::Name(name)),
                (None, None) => None,
            })
        };
        let default_domain = either("domain_name", "domain_id")?
            .or(either("default_domain_name", "default_domain_id")?);
        let user = either("username", "user_id")?;
        let user_domain = either("user_domain_name", "user_domain_id")?.or(default_domain.clone());
        let auth_type = field("auth_type")?.unwrap_or_else(|| "password".into());
        let auth = match auth_type.as_str() {
            "password" | "v3password" => {
                let user = user.ok_or_else(|| {
                    invalid(
                        at(&format!("{base}.auth")),
                        "auth.username (or auth.user_id) is required for password auth",
                    )
                })?;
                let password = a("password")?.ok_or_else(|| {
                    invalid(
                        at(&format!("{base}.auth")),
                        "auth.password is required for password auth",
                    )
                })?;
                CloudAuth::Password {
                    user,
                    user_domain,
                    password: Secret::new(password),
                    project: either("project_name", "project_id")?
                        .or(either("tenant_name", "tenant_id")?),
                    project_domain: either("project_domain_name", "project_domain_id")?
                        .or(default_domain),
                }
            }
            "v3applicationcredential" => {
                let secret = a("application_credential_secret")?.ok_or_else(|| {
                    invalid(
                        at(&format!("{base}.auth")),
                        "auth.application_credential_secret is required",
                    )
                })?;
                let credential =
                    either("application_credential_name", "application_credential_id")?
                        .ok_or_else(|| {
                            invalid(
                        at(&format!("{base}.auth")),
                        "auth.application_credential_id (or _name with auth.username) is required",
                    )
                        })?;
                if matches!(credential, NameOrId::Name(_)) && user.is_none() {
                    return Err(invalid(
                        at(&format!("{base}.auth")),
                        "an application credential given by name needs auth.username or auth.user_id",
                    ));
                }
                CloudAuth::ApplicationCredential {
                    credential,
                    user,
                    user_domain,
                    secret: Secret::new(secret),
                }
            }
            other => {
                return Err(invalid(
                    at(&format!("{base}.auth_type")),
                    format!("`{other}` is not supported (password or v3applicationcredential)"),
                ))
            }
        };
        let interface = field("interface")?
            .or(field("endpoint_type")?)
            .unwrap_or_else(|| "public".into());
        let interface = interface.trim_end_matches("URL").to_string();
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(invalid(
                at(&format!("{base}.interface")),
                "public, internal or admin",
            ));
        }
        let verify = match &cloud["verify"] {
            Yaml::Boolean(b) => *b,
            Yaml::BadValue | Yaml::Null => true,
            // A CA bundle path: verification stays on (system roots are used).
            Yaml::String(_) => true,
            _ => {
                return Err(invalid(
                    at(&format!("{base}.verify")),
                    "true, false or a CA file",
                ))
            }
        };
        out.push(Cloud {
            name,
            auth_url,
            auth,
            region_name: field("region_name")?,
            interface,
            verify,
        });
    }
    Ok(CloudsFile { clouds: out })
}

// ---------------------------------------------------------------------------------------------
// Storage: one clouds.yaml per user, sealed at rest.
// ---------------------------------------------------------------------------------------------

/// Keys for clouds.yaml at rest: the current one seals, the previous one (during a rotation)
/// still opens.
#[derive(Clone, Debug)]
pub struct CloudsKeys {
    pub current: SecretBox,
    pub previous: Option<SecretBox>,
}

impl CloudsKeys {
    fn open(&self, sealed: &str) -> Result<String, AppError> {
        let bytes = self
            .current
            .open(sealed)
            .or_else(|e| match &self.previous {
                Some(previous) => previous.open(sealed),
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
/// acting user (`user_id` claim). 403 when the token names no user.
pub fn owner(p: &crate::ssr::auth::Principal) -> Result<&str, AppError> {
    p.user_id.as_deref().filter(|u| !u.is_empty()).ok_or_else(|| {
        AppError::Forbidden(
            "clouds.yaml belongs to a user: use a user token (`slices auth id-token`) or an experiment token that names its acting user".into(),
        )
    })
}

/// Validates and stores (replacing) a user's clouds.yaml; answers with the redacted summary.
pub async fn store(
    state: &AppState,
    user_id: &str,
    text: &str,
    default_cloud: Option<&str>,
) -> Result<CloudsYamlSummary, AppError> {
    let file = parse(text)?;
    let default = pick_default(&file, default_cloud)?;
    let sealed = state.clouds_keys.current.seal(text.as_bytes());
    let summary = summary_of(&file, &default, Utc::now());
    let summary_json = serde_json::to_value(&summary.clouds).map_err(crate::ssr::internal)?;
    let uploaded_at = sqlx::query_scalar!(
        r#"INSERT INTO user_clouds (user_id, sealed_yaml, summary, default_cloud)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id) DO UPDATE SET sealed_yaml = EXCLUDED.sealed_yaml,
               summary = EXCLUDED.summary, default_cloud = EXCLUDED.default_cloud,
               uploaded_at = now(), updated_at = now()
           RETURNING uploaded_at AS "uploaded_at: DateTime<Utc>""#,
        user_id,
        sealed,
        summary_json,
        default
    )
    .fetch_one(&state.pool)
    .await?;
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
    sqlx::query!(
        "UPDATE user_clouds SET default_cloud = $2, updated_at = now() WHERE user_id = $1",
        user_id,
        name
    )
    .execute(pool)
    .await?;
    summary(pool, user_id).await
}

/// Forgets a user's clouds.yaml; 404 when none is stored.
pub async fn remove(pool: &PgPool, user_id: &str) -> Result<(), AppError> {
    let done = sqlx::query!("DELETE FROM user_clouds WHERE user_id = $1", user_id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound("no clouds.yaml uploaded yet".into()));
    }
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
    let text = zeroize::Zeroizing::new(keys.open(&row.sealed_yaml)?);
    Ok(Some((parse(&text)?, row.default_cloud)))
}

/// Re-seals every stored clouds.yaml with the current key (after a rotation). Returns the count.
pub async fn reseal_all(pool: &PgPool, keys: &CloudsKeys) -> Result<u64, AppError> {
    let rows = sqlx::query!("SELECT user_id, sealed_yaml FROM user_clouds")
        .fetch_all(pool)
        .await?;
    let mut count = 0;
    for row in rows {
        let text = zeroize::Zeroizing::new(keys.open(&row.sealed_yaml)?);
        let sealed = keys.current.seal(text.as_bytes());
        sqlx::query!(
            "UPDATE user_clouds SET sealed_yaml = $2, updated_at = now() WHERE user_id = $1",
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
    state: &AppState,
    user_id: &str,
    cloud: Option<&str>,
) -> Result<ConnectionTest, AppError> {
    let (file, default) = load(&state.pool, &state.clouds_keys, user_id)
        .await?
        .ok_or_else(|| AppError::NotFound("no clouds.yaml uploaded yet".into()))?;
    let name = cloud.unwrap_or(&default).to_string();
    let cloud = file.get(&name).ok_or_else(|| {
        AppError::invalid("cloud", format!("no cloud `{name}` in your clouds.yaml"))
    })?;
    let result = match state.openstack.authenticate(cloud).await {
        Ok(token) => state.openstack.image_names(cloud, &token).await,
        Err(e) => Err(e),
    };
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
impl crate::ssr::backend::openstack::CloudsSource for DbClouds {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
clouds:
  ostest:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: demo
      password: s3cret-pass
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
  ostest-appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://127.0.0.1:5000/v3
      application_credential_id: abc123
      application_credential_secret: very-secret
";

    #[test]
    fn parses_both_auth_types_and_redacts() {
        let file = parse(GOOD).expect("valid");
        assert_eq!(file.clouds.len(), 2);
        let pw = file.get("ostest").expect("ostest");
        assert!(
            matches!(&pw.auth, CloudAuth::Password { project: Some(NameOrId::Name(p)), .. } if p == "demo")
        );
        let summary =
            serde_json::to_string(&file.clouds.iter().map(Cloud::summary).collect::<Vec<_>>())
                .expect("json");
        assert!(
            !summary.contains("s3cret-pass") && !summary.contains("very-secret"),
            "{summary}"
        );
        assert!(summary.contains("v3applicationcredential") && summary.contains("RegionOne"));
        assert!(
            !format!("{file:?}").contains("s3cret-pass"),
            "Debug must not show secrets"
        );
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let missing_url = GOOD.replace(
            "      auth_url: http://127.0.0.1:5000/v3\n      username",
            "      username",
        );
        let e = parse(&missing_url).expect_err("no auth_url");
        assert_eq!(e.field(), Some("clouds.ostest.auth (line 3)"), "{e}");
        let bad_type = GOOD.replace("v3applicationcredential", "v3oidc");
        let e = parse(&bad_type).expect_err("auth type");
        assert!(
            e.field()
                .is_some_and(|f| f.starts_with("clouds.ostest-appcred.auth_type (line")),
            "{e}"
        );
        let e = parse("clouds: [1, 2]").expect_err("not a mapping");
        assert!(e.to_string().contains("cloud names"), "{e}");
        let e = parse("nothing: here").expect_err("no clouds");
        assert_eq!(e.field(), Some("clouds"));
        let e = parse("clouds:\n  a: {auth: {auth_url: ftp://x, username: u, password: p}}")
            .expect_err("url");
        assert!(e.to_string().contains("http(s)"), "{e}");
        let e = parse("clouds: {a: [").expect_err("syntax");
        assert!(e.to_string().contains("not valid YAML"), "{e}");
    }

    #[test]
    fn hostile_documents_are_rejected_quickly() {
        // Billion laughs: nine levels of nine aliases would expand to 10^9 nodes.
        let mut lol = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let letters = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in letters.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            lol.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        lol.push_str("clouds: *i\n");
        let started = std::time::Instant::now();
        let e = parse(&lol).expect_err("aliases");
        assert!(e.to_string().contains("aliases"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));

        let deep = format!("clouds: {}{}", "[".repeat(200), "]".repeat(200));
        let e = parse(&deep).expect_err("deep");
        assert!(e.to_string().contains("nested deeper"), "{e}");

        let wide = format!("clouds:\n  x: [{}]\n", vec!["1"; MAX_NODES + 10].join(","));
        assert!(parse(&wide)
            .expect_err("wide")
            .to_string()
            .contains("YAML nodes"));

        let huge = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(
            parse(&huge),
            Err(AppError::PayloadTooLarge { .. })
        ));
    }
}
