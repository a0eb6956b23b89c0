//! The clouds.yaml model and its parser (pure: no I/O). A `clouds.yaml` is the
//! os-client-config / openstacksdk format ("Configuring os-client-config Applications");
//! users upload one (stored by `clouds`), operators name one in `SITE_CLOUDS_YAML`
//! (`catalog_import`).
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
use crate::model::CloudSummary;
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// Largest accepted clouds.yaml, bytes.
pub const MAX_BYTES: usize = 64 * 1024;
/// Deepest accepted nesting of mappings and sequences.
pub const MAX_DEPTH: usize = 12;
/// Most YAML nodes accepted.
pub const MAX_NODES: usize = 4000;
/// Longest mapping key accepted, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most bytes of key paths the scan keeps (for error messages), in all.
pub const MAX_PATH_BYTES: usize = 256 * 1024;

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

/// One open mapping or sequence of the event stream.
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

/// Walks the YAML event stream (yaml-rust2's `Parser`, no tree built) and records the line of
/// every mapping key, enforcing [`MAX_DEPTH`], [`MAX_NODES`] and "no aliases" on the way.
#[derive(Default)]
struct Scanner {
    stack: Vec<Frame>,
    lines: KeyLines,
    nodes: usize,
    /// Bytes of the paths in `lines`, bounded by [`MAX_PATH_BYTES`].
    path_bytes: usize,
}

impl Scanner {
    /// The dotted path of the node about to start (its parent's key or index).
    fn child_path(&self) -> String {
        match self.stack.last() {
            Some(Frame::Map {
                path, key: Some(k), ..
            }) if path.is_empty() => k.clone(),
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => format!("{path}.{k}"),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
            _ => String::new(),
        }
    }

    /// After a value completes inside its parent.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
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

    /// A scalar: a key (its line is recorded) or a value. Keys are bounded by
    /// [`MAX_KEY_BYTES`], the paths kept by [`MAX_PATH_BYTES`].
    fn scalar(&mut self, value: String, line: usize) -> Result<(), AppError> {
        match self.stack.last_mut() {
            Some(Frame::Map {
                path,
                key,
                expecting_key,
            }) if *expecting_key => {
                if value.len() > MAX_KEY_BYTES {
                    return Err(invalid(
                        format!("line {line}"),
                        format!("a key longer than {MAX_KEY_BYTES} bytes"),
                    ));
                }
                let full = if path.is_empty() {
                    value.clone()
                } else {
                    format!("{path}.{value}")
                };
                self.path_bytes += full.len();
                if self.path_bytes > MAX_PATH_BYTES {
                    return Err(invalid(
                        format!("line {line}"),
                        "too many or too deeply nested keys",
                    ));
                }
                self.lines.entry(full).or_insert(line);
                *key = Some(value);
                *expecting_key = false;
            }
            _ => self.value_done(),
        }
        Ok(())
    }

    /// A mapping or sequence starts: refused past [`MAX_DEPTH`].
    fn open(&mut self, mapping: bool, line: usize) -> Result<(), AppError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(invalid(
                format!("line {line}"),
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let path = self.child_path();
        self.stack.push(if mapping {
            Frame::Map {
                path,
                key: None,
                expecting_key: true,
            }
        } else {
            Frame::Seq { path, index: 0 }
        });
        Ok(())
    }

    /// Handles one event; `Ok(false)` at the end of the stream.
    fn event(&mut self, event: Event, line: usize) -> Result<bool, AppError> {
        match event {
            Event::StreamEnd => return Ok(false),
            Event::Alias(_) => {
                return Err(invalid(
                    format!("line {line}"),
                    "YAML aliases (*name) are not accepted in clouds.yaml",
                ))
            }
            Event::Scalar(value, ..) => {
                self.nodes += 1;
                self.scalar(value, line)?;
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                self.nodes += 1;
                self.open(matches!(event, Event::MappingStart(..)), line)?;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::DocumentStart if self.lines.contains_key("clouds") => {
                return Err(invalid(format!("line {line}"), "one YAML document only"));
            }
            _ => {}
        }
        if self.nodes > MAX_NODES {
            return Err(invalid(
                format!("line {line}"),
                format!("more than {MAX_NODES} YAML nodes"),
            ));
        }
        Ok(true)
    }
}

/// Scans the event stream: limits and aliases are checked before anything is built.
fn scan(text: &str) -> Result<KeyLines, AppError> {
    let mut parser = Parser::new_from_str(text);
    let mut scanner = Scanner::default();
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| invalid("clouds.yaml", format!("not valid YAML: {e}")))?;
        if !scanner.event(event, mark.line())? {
            return Ok(scanner.lines);
        }
    }
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
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| invalid("clouds.yaml", format!("not valid YAML: {e}")))?;
    let root = docs
        .first()
        .ok_or_else(|| invalid("clouds.yaml", "the file is empty"))?;
    let doc = Doc { lines: &lines };
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
                doc.at("clouds"),
                "must map cloud names to their settings",
            ))
        }
    };
    let clouds = clouds
        .iter()
        .map(|(name, cloud)| doc.cloud(name, cloud))
        .collect::<Result<_, _>>()?;
    Ok(CloudsFile { clouds })
}

/// The parsed document with its key lines, for error messages that name field and line.
struct Doc<'a> {
    lines: &'a KeyLines,
}

/// The settings of one cloud (`clouds.<name>`), read with their paths for errors.
struct CloudNode<'a> {
    doc: &'a Doc<'a>,
    base: String,
    node: &'a Yaml,
}

impl Doc<'_> {
    /// `path (line N)` when the scan saw that key, else `path`.
    fn at(&self, path: &str) -> String {
        match self.lines.get(path) {
            Some(line) => format!("{path} (line {line})"),
            None => path.to_string(),
        }
    }

    /// A scalar as trimmed text; absent, null and empty are `None`; a mapping or list is an error.
    fn text(&self, path: &str, node: &Yaml) -> Result<Option<String>, AppError> {
        match node {
            Yaml::BadValue | Yaml::Null => Ok(None),
            Yaml::String(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Yaml::Integer(i) => Ok(Some(i.to_string())),
            Yaml::Real(r) => Ok(Some(r.clone())),
            Yaml::Boolean(b) => Ok(Some(b.to_string())),
            _ => Err(invalid(self.at(path), "must be text")),
        }
    }

    /// One `clouds.<name>` entry.
    fn cloud(&self, name: &Yaml, node: &Yaml) -> Result<Cloud, AppError> {
        let Some(name) = name.as_str().map(str::to_string) else {
            return Err(invalid(self.at("clouds"), "cloud names must be text"));
        };
        if name.is_empty() || name.len() > 64 {
            return Err(invalid(
                self.at("clouds"),
                "cloud names have 1 to 64 characters",
            ));
        }
        if let Some(why) = crate::ssr::names::unsafe_character(&name) {
            return Err(invalid(self.at("clouds"), format!("cloud names {why}")));
        }
        let c = CloudNode {
            doc: self,
            base: format!("clouds.{name}"),
            node,
        };
        if !matches!(node, Yaml::Hash(_)) {
            return Err(invalid(self.at(&c.base), "must be a mapping of settings"));
        }
        if !matches!(node["auth"], Yaml::Hash(_)) {
            return Err(invalid(
                c.at("auth"),
                "an `auth:` mapping with auth_url and credentials is required",
            ));
        }
        let auth_url = c
            .auth("auth_url")?
            .ok_or_else(|| invalid(c.at("auth"), "auth.auth_url is required"))?;
        check_auth_url(&auth_url).map_err(|why| invalid(c.at("auth.auth_url"), why))?;
        Ok(Cloud {
            name,
            auth_url,
            auth: c.credentials()?,
            region_name: c.field("region_name")?,
            interface: c.interface()?,
            verify: c.verify()?,
        })
    }
}

impl CloudNode<'_> {
    /// `clouds.<name>.<key>` with its line.
    fn at(&self, key: &str) -> String {
        self.doc.at(&format!("{}.{key}", self.base))
    }

    /// A setting of the cloud (`clouds.<name>.<key>`).
    fn field(&self, key: &str) -> Result<Option<String>, AppError> {
        self.doc
            .text(&format!("{}.{key}", self.base), &self.node[key])
    }

    /// A setting of its `auth:` mapping.
    fn auth(&self, key: &str) -> Result<Option<String>, AppError> {
        self.doc.text(
            &format!("{}.auth.{key}", self.base),
            &self.node["auth"][key],
        )
    }

    /// `auth.<id_key>` as an id, else `auth.<name_key>` as a name.
    fn either(&self, name_key: &str, id_key: &str) -> Result<Option<NameOrId>, AppError> {
        Ok(match (self.auth(id_key)?, self.auth(name_key)?) {
            (Some(id), _) => Some(NameOrId::Id(id)),
            (None, Some(name)) => Some(NameOrId::Name(name)),
            (None, None) => None,
        })
    }

    /// The identity method (`auth_type`, default password) and its credentials.
    fn credentials(&self) -> Result<CloudAuth, AppError> {
        let default_domain = self
            .either("domain_name", "domain_id")?
            .or(self.either("default_domain_name", "default_domain_id")?);
        let user = self.either("username", "user_id")?;
        let user_domain = self
            .either("user_domain_name", "user_domain_id")?
            .or(default_domain.clone());
        let auth_type = self
            .field("auth_type")?
            .unwrap_or_else(|| "password".into());
        match auth_type.as_str() {
            "password" | "v3password" => self.password(user, user_domain, default_domain),
            "v3applicationcredential" => self.application_credential(user, user_domain),
            other => Err(invalid(
                self.at("auth_type"),
                format!("`{other}` is not supported (password or v3applicationcredential)"),
            )),
        }
    }

    /// Keystone "Password authentication with scoped authorization".
    fn password(
        &self,
        user: Option<NameOrId>,
        user_domain: Option<NameOrId>,
        default_domain: Option<NameOrId>,
    ) -> Result<CloudAuth, AppError> {
        let required = |what: &str| {
            invalid(
                self.at("auth"),
                format!("{what} is required for password auth"),
            )
        };
        let user = user.ok_or_else(|| required("auth.username (or auth.user_id)"))?;
        let password = self
            .auth("password")?
            .ok_or_else(|| required("auth.password"))?;
        Ok(CloudAuth::Password {
            user,
            user_domain,
            password: Secret::new(password),
            project: self
                .either("project_name", "project_id")?
                .or(self.either("tenant_name", "tenant_id")?),
            project_domain: self
                .either("project_domain_name", "project_domain_id")?
                .or(default_domain),
        })
    }

    /// Keystone "Authenticating with an Application Credential".
    fn application_credential(
        &self,
        user: Option<NameOrId>,
        user_domain: Option<NameOrId>,
    ) -> Result<CloudAuth, AppError> {
        let secret = self.auth("application_credential_secret")?.ok_or_else(|| {
            invalid(
                self.at("auth"),
                "auth.application_credential_secret is required",
            )
        })?;
        let credential = self
            .either("application_credential_name", "application_credential_id")?
            .ok_or_else(|| {
                invalid(
                    self.at("auth"),
                    "auth.application_credential_id (or _name with auth.username) is required",
                )
            })?;
        if matches!(credential, NameOrId::Name(_)) && user.is_none() {
            return Err(invalid(
                self.at("auth"),
                "an application credential given by name needs auth.username or auth.user_id",
            ));
        }
        Ok(CloudAuth::ApplicationCredential {
            credential,
            user,
            user_domain,
            secret: Secret::new(secret),
        })
    }

    /// `interface` (or the older `endpoint_type`, `publicURL` style): public, internal, admin.
    fn interface(&self) -> Result<String, AppError> {
        let interface = self
            .field("interface")?
            .or(self.field("endpoint_type")?)
            .unwrap_or_else(|| "public".into());
        let interface = interface.trim_end_matches("URL").to_string();
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(invalid(self.at("interface"), "public, internal or admin"));
        }
        Ok(interface)
    }

    /// `verify`: a boolean, or a CA bundle path (verification stays on with system roots).
    fn verify(&self) -> Result<bool, AppError> {
        match &self.node["verify"] {
            Yaml::Boolean(b) => Ok(*b),
            Yaml::BadValue | Yaml::Null | Yaml::String(_) => Ok(true),
            _ => Err(invalid(self.at("verify"), "true, false or a CA file")),
        }
    }
}

/// `auth.auth_url` must be a plain `http(s)://host[:port]/path` URL: no user name or password
/// (they would be logged and sent to the host), no query and no fragment (a `#/v3` tail made
/// the request go to a different path than the one shown, and a query is never part of a
/// Keystone base URL). The Keystone path (`/v3`) is added when missing.
fn check_auth_url(auth_url: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(auth_url).map_err(|_| "must be an http(s) URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http(s) URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password (put them under `auth:`)");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query (`?`) or fragment (`#`)");
    }
    Ok(())
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
        for (url, why) in [
            ("http://127.0.0.1:5000/x#/v3", "fragment"),
            ("http://127.0.0.1:5000/v3?x=1", "query"),
            ("http://admin:pw@keystone:5000/v3", "password"),
        ] {
            let doc =
                format!("clouds:\n  a: {{auth: {{auth_url: '{url}', username: u, password: p}}}}");
            let e = parse(&doc).expect_err(url);
            assert!(e.to_string().contains(why), "{url}: {e}");
            assert!(!e.to_string().contains("pw"), "{url}: {e}");
        }
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

        let long_key = format!("clouds:\n  {}: {{}}\n", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(parse(&long_key)
            .expect_err("long key")
            .to_string()
            .contains("key longer"));
        let control =
            "clouds:\n  \"a\\u202Eb\": {auth: {auth_url: http://x, username: u, password: p}}\n";
        assert!(parse(control)
            .expect_err("bidi name")
            .to_string()
            .contains("bidirectional"));

        let huge = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(
            parse(&huge),
            Err(AppError::PayloadTooLarge { .. })
        ));
    }
}
