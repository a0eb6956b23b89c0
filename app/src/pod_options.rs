//! Container options a Pod resource may carry (../shared/slices-api.md, "Lifecycle,
//! templates, logs, audit"): `env`, `command`, `args` and `ports`, with the checks the API,
//! the template engine and the dashboard form share, and the line formats the dashboard's
//! text areas use (`NAME=value`, `name:port/protocol`).
//!
//! The rules follow the Kubernetes API validation of core/v1 `Container` (`env[].name`:
//! "a valid environment variable name", `ports[].name`: an IANA_SVC_NAME, RFC 6335 section 5.1)
//! so that a request accepted here is never refused by the API server.

use crate::error::AppError;
use serde::{Deserialize, Serialize};

#[cfg(feature = "ssr")]
use utoipa::ToSchema;

/// Most environment variables per Pod (besides the site's own).
pub const MAX_ENV: usize = 100;
/// Most `command` or `args` entries.
pub const MAX_ARGV: usize = 100;
/// Longest single `command`/`args` entry or env value, bytes.
pub const MAX_ITEM_BYTES: usize = 8192;
/// Most ports per Pod.
pub const MAX_PORTS: usize = 20;
/// Environment variables the site sets itself; a request may not set them.
pub const RESERVED_ENV: [&str; 4] = [
    "SLICES_RESOURCE_ID",
    "SLICES_EXPERIMENT_ID",
    "SSH_AUTHORIZED_KEYS",
    "USERDATA",
];

/// One environment variable of the Pod's container (core/v1 `EnvVar`, a literal value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct EnvEntry {
    /// Letters, digits, `_`, `.` and `-`, not starting with a digit; at most 256 characters.
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Transport protocol of a port (core/v1 `ContainerPort.protocol`); default `TCP`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub enum PortProtocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

impl PortProtocol {
    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::TCP => "TCP",
            PortProtocol::UDP => "UDP",
            PortProtocol::SCTP => "SCTP",
        }
    }
}

/// A port the container listens on, exposed by the Service named after the resource
/// (ClusterIP; Service port = container port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct PortSpec {
    /// IANA service name (RFC 6335 5.1): 1-15 lowercase letters, digits and `-`, at least one
    /// letter, no `-` at either end or twice in a row.
    pub name: String,
    /// 1-65535.
    pub port: u32,
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// The container options of one Pod resource; all empty for a VM (and for a Pod that takes
/// the image's own entrypoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(default)]
pub struct PodOptions {
    /// Environment variables, after the site's own (`SLICES_RESOURCE_ID`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvEntry>,
    /// Replaces the image's entrypoint (core/v1 `Container.command`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's cmd (core/v1 `Container.args`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Ports, each exposed by the resource's Service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

impl PodOptions {
    /// No option set.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.command.is_empty()
            && self.args.is_empty()
            && self.ports.is_empty()
    }

    /// The first option set, by its field name (for "VMs take no `env`").
    pub fn first_set(&self) -> Option<&'static str> {
        [
            ("env", self.env.is_empty()),
            ("command", self.command.is_empty()),
            ("args", self.args.is_empty()),
            ("ports", self.ports.is_empty()),
        ]
        .into_iter()
        .find(|(_, empty)| !empty)
        .map(|(name, _)| name)
    }

    /// Checks every option; the error is a 422 naming `<prefix>.<field>[i]...` (e.g.
    /// `resources[0].env[2].name`).
    pub fn check(&self, prefix: &str) -> Result<(), AppError> {
        let f = |rest: String| format!("{prefix}.{rest}");
        check_env(&self.env, &f)?;
        for (field, list) in [("command", &self.command), ("args", &self.args)] {
            if list.len() > MAX_ARGV {
                return Err(AppError::invalid(
                    f(field.into()),
                    format!("at most {MAX_ARGV} entries"),
                ));
            }
            if let Some(i) = list.iter().position(|a| a.len() > MAX_ITEM_BYTES) {
                return Err(AppError::invalid(
                    f(format!("{field}[{i}]")),
                    format!("at most {MAX_ITEM_BYTES} bytes"),
                ));
            }
        }
        check_ports(&self.ports, &f)
    }
}

fn check_env(env: &[EnvEntry], f: &impl Fn(String) -> String) -> Result<(), AppError> {
    if env.len() > MAX_ENV {
        return Err(AppError::invalid(
            f("env".into()),
            format!("at most {MAX_ENV} variables"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, e) in env.iter().enumerate() {
        let name = f(format!("env[{i}].name"));
        if !is_env_name(&e.name) {
            return Err(AppError::invalid(
                name,
                "an environment variable name: letters, digits, `_`, `.` and `-`, not starting with a digit, at most 256 characters",
            ));
        }
        if RESERVED_ENV.contains(&e.name.as_str()) {
            return Err(AppError::invalid(
                name,
                format!("`{}` is set by the site", e.name),
            ));
        }
        if !seen.insert(e.name.as_str()) {
            return Err(AppError::invalid(
                name,
                format!("`{}` appears twice", e.name),
            ));
        }
        if e.value.len() > MAX_ITEM_BYTES {
            return Err(AppError::invalid(
                f(format!("env[{i}].value")),
                format!("at most {MAX_ITEM_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_ports(ports: &[PortSpec], f: &impl Fn(String) -> String) -> Result<(), AppError> {
    if ports.len() > MAX_PORTS {
        return Err(AppError::invalid(
            f("ports".into()),
            format!("at most {MAX_PORTS} ports"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut numbers = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        if !is_port_name(&p.name) {
            return Err(AppError::invalid(
                f(format!("ports[{i}].name")),
                "an IANA service name: 1-15 lowercase letters, digits and `-`, with at least one letter, no `-` at either end or twice in a row",
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(AppError::invalid(
                f(format!("ports[{i}].name")),
                format!("`{}` appears twice", p.name),
            ));
        }
        if !(1..=65535).contains(&p.port) {
            return Err(AppError::invalid(
                f(format!("ports[{i}].port")),
                "between 1 and 65535",
            ));
        }
        if !numbers.insert((p.port, p.protocol)) {
            return Err(AppError::invalid(
                f(format!("ports[{i}].port")),
                format!("{}/{} appears twice", p.port, p.protocol.as_str()),
            ));
        }
    }
    Ok(())
}

/// Kubernetes' environment variable name rule before 1.34 (`[-._a-zA-Z][-._a-zA-Z0-9]*`),
/// which every supported API server accepts.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 256
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '-'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// IANA_SVC_NAME (RFC 6335 section 5.1, as Kubernetes validates `ports[].name`).
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Parses `NAME=value` lines (the dashboard's env text area); blank lines are skipped. The
/// error names the line (1-based).
pub fn parse_env_lines(text: &str) -> Result<Vec<EnvEntry>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| match line.split_once('=') {
            Some((name, value)) => Ok(EnvEntry {
                name: name.trim().to_string(),
                value: value.to_string(),
            }),
            None => Err(format!("line {}: expected NAME=value", n + 1)),
        })
        .collect()
}

/// Parses `name:port` or `name:port/protocol` lines (the dashboard's ports text area).
pub fn parse_port_lines(text: &str) -> Result<Vec<PortSpec>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let bad = || {
                format!(
                    "line {}: expected name:port or name:port/TCP|UDP|SCTP",
                    n + 1
                )
            };
            let (name, rest) = line.trim().split_once(':').ok_or_else(bad)?;
            let (port, protocol) = rest.split_once('/').unwrap_or((rest, "TCP"));
            let protocol = match protocol.trim().to_ascii_uppercase().as_str() {
                "TCP" => PortProtocol::TCP,
                "UDP" => PortProtocol::UDP,
                "SCTP" => PortProtocol::SCTP,
                _ => return Err(bad()),
            };
            Ok(PortSpec {
                name: name.trim().to_string(),
                port: port.trim().parse().map_err(|_| bad())?,
                protocol,
            })
        })
        .collect()
}

/// Splits a command line into words as a POSIX shell would for plain words and quotes
/// (`'…'`, `"…"`, `\` escapes; the `shlex` crate), without expansion. `Err` on an unclosed
/// quote.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    shlex::split(text).ok_or_else(|| "unclosed quote or trailing `\\`".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PodOptions {
        PodOptions {
            env: vec![EnvEntry {
                name: "PEER".into(),
                value: "kme-b".into(),
            }],
            command: vec!["/bin/kme".into()],
            args: vec!["--port".into(), "8443".into()],
            ports: vec![PortSpec {
                name: "etsi014".into(),
                port: 8443,
                protocol: PortProtocol::TCP,
            }],
        }
    }

    #[test]
    fn good_options_pass() {
        assert!(options().check("resources[0]").is_ok());
        assert!(PodOptions::default().is_empty());
        assert_eq!(options().first_set(), Some("env"));
    }

    #[test]
    fn bad_options_name_the_field() {
        let field = |o: PodOptions| {
            o.check("resources[1]")
                .expect_err("an error")
                .field()
                .map(String::from)
        };
        let mut o = options();
        o.env[0].name = "1BAD".into();
        assert_eq!(field(o).as_deref(), Some("resources[1].env[0].name"));
        let mut o = options();
        o.env.push(EnvEntry {
            name: "USERDATA".into(),
            value: String::new(),
        });
        assert_eq!(field(o).as_deref(), Some("resources[1].env[1].name"));
        let mut o = options();
        o.ports[0].port = 70000;
        assert_eq!(field(o).as_deref(), Some("resources[1].ports[0].port"));
        let mut o = options();
        o.ports[0].name = "Has_Upper".into();
        assert_eq!(field(o).as_deref(), Some("resources[1].ports[0].name"));
        let mut o = options();
        o.ports.push(PortSpec {
            name: "other".into(),
            port: 8443,
            protocol: PortProtocol::TCP,
        });
        assert_eq!(field(o).as_deref(), Some("resources[1].ports[1].port"));
        let mut o = options();
        o.args = vec!["x".repeat(MAX_ITEM_BYTES + 1)];
        assert_eq!(field(o).as_deref(), Some("resources[1].args[0]"));
    }

    #[test]
    fn port_names_follow_rfc_6335() {
        for good in ["http", "etsi-014", "a1"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in ["", "1234", "-a", "a-", "a--b", "sixteen-chars-xx", "UP"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn form_lines_parse() {
        let env = parse_env_lines("A=1\n\nB= two = 2\n").expect("ok");
        assert_eq!(env[1].name, "B");
        assert_eq!(env[1].value, " two = 2");
        assert!(parse_env_lines("novalue")
            .expect_err("an error")
            .contains("line 1"));
        let ports = parse_port_lines("kms:8443\nsync:9000/udp").expect("ok");
        assert_eq!(ports[1].protocol, PortProtocol::UDP);
        assert!(parse_port_lines("kms:x").is_err());
        assert_eq!(
            split_words("kme --id 'a b'").expect("ok"),
            vec!["kme", "--id", "a b"]
        );
    }
}
