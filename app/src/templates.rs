//! Templates ("profiles"): a named, versioned set of resources with parameters
//! (../shared/slices-api.md, "Lifecycle, templates, logs, audit"; issue 15). The wire types
//! and the pure part shared by the API, the dashboard and the tests: checking a definition,
//! filling in parameters, and rendering a version into the resources it requests.
//!
//! A version's `resources` are JSON objects whose strings may name parameters as
//! `{{name}}`; each is replaced by the parameter's value as text (`8443`, `true`, an empty
//! string for an unset optional one), and the numeric fields (`ports[].port`, `count`) take
//! a number or its text, so `"port": "{{kme_port}}"` works. `{{index}}` is the 1-based copy
//! number of a resource with `count`. After
//! substitution each object is a [`TemplateResource`]: `friendly_name`, `disk_image` and
//! `flavor` (catalog id or name), optional `network_name`, `userdata`, the Pod options
//! (`env`, `command`, `args`, `ports`), `count` (0-50, default 1) and `when` (the resource is
//! left out when it renders empty, `false` or `0`).

use crate::error::AppError;
use crate::pod_options::{EnvEntry, PortSpec};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[cfg(feature = "ssr")]
use utoipa::ToSchema;

/// Most parameters of a version.
pub const MAX_PARAMETERS: usize = 40;
/// Most resources one instantiation may request (as `POST /resources`).
pub const MAX_RESOURCES: usize = 50;
/// Longest template name.
pub const MAX_NAME: usize = 64;

/// Who may see and use a template.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(feature = "ssr", derive(ToSchema, sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "text", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TemplateScope {
    /// Everyone on the site; published by site admins.
    Site,
    /// The members of one project.
    Project,
    /// The members of one experiment (the default).
    #[default]
    Experiment,
}

impl TemplateScope {
    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a parameter holds; the dashboard builds its form field from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParameterType {
    /// Free text (`max_length`, default 255).
    #[default]
    String,
    /// A whole number within `min`..=`max`.
    Integer,
    Boolean,
    /// One of `choices`.
    Choice,
    /// A catalog disk image, by id or name (of `flavor_type` when given).
    DiskImage,
    /// A catalog flavor, by id or name (of `flavor_type` when given).
    Flavor,
}

/// One parameter of a template version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TemplateParameter {
    /// `[a-z][a-z0-9_]*`, at most 40 characters; `index` is taken.
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ParameterType,
    /// What it is for (shown as the form field's hint).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Used when the instantiation does not give the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// May be left empty (`""`); otherwise a parameter without default must be given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// `choice`: the allowed values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// `integer`: bounds (inclusive).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub min: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub max: Option<i64>,
    /// `string`: longest value, characters (default and limit 255).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    #[cfg_attr(feature = "ssr", schema(minimum = 0, maximum = 255))]
    pub max_length: Option<i64>,
    /// `disk_image`/`flavor`: only entries of this flavor type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor_type: Option<crate::model::FlavorType>,
}

/// A rendered resource of a template (after substitution); see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateResource {
    pub friendly_name: String,
    /// A catalog disk image id or friendly name.
    pub disk_image: String,
    /// A catalog flavor id or friendly name.
    pub flavor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userdata: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<TemplatePort>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_count"
    )]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Value>,
}

/// A port of a rendered resource: [`PortSpec`] whose `port` may also be written as text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatePort {
    pub name: String,
    #[serde(deserialize_with = "lenient_u32")]
    pub port: u32,
    #[serde(default)]
    pub protocol: crate::pod_options::PortProtocol,
}

impl From<TemplatePort> for PortSpec {
    fn from(p: TemplatePort) -> Self {
        PortSpec {
            name: p.name,
            port: p.port,
            protocol: p.protocol,
        }
    }
}

/// An optional whole number as JSON Schema's `integer` allows it: `64` or `64.0` (some JSON
/// writers send integers so); `null` is `None`.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    crate::model::whole_number(&n)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {n}")))
}

/// A whole number ≥ 0 as a JSON number or as text (`"8443"`).
fn lenient_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom("expected a whole number (or its text)"))
}

fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient_u32(d).map(Some)
}

/// One immutable version of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct TemplateVersion {
    /// 1, 2, … in order of publication.
    pub version: i32,
    pub parameters: Vec<TemplateParameter>,
    /// Resource objects with `{{parameter}}` placeholders (module docs of `app::templates`).
    #[cfg_attr(feature = "ssr", schema(value_type = Vec<Object>))]
    pub resources: Vec<Value>,
    /// What changed in this version.
    #[serde(default)]
    pub notes: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A template (`template_<site>_<suffix>`) with its newest version (`GET /templates`) or all
/// its versions, newest first (`GET /templates/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct Template {
    pub id: String,
    pub name: String,
    pub description: String,
    pub scope: TemplateScope,
    /// The owning project (`project` scope) or the experiment's project.
    pub project_id: Option<String>,
    /// The owning experiment (`experiment` scope).
    pub experiment_id: Option<String>,
    /// Shipped with slices-blueprint (the QKD link); admins publish new versions of it.
    pub builtin: bool,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub latest: TemplateVersion,
    /// Every version, newest first (`GET /templates/{id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<TemplateVersion>,
}

/// Body of `POST /templates`: the template and its version 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// 1-64 characters, not only spaces, no control or bidirectional formatting characters;
    /// unique within its scope and owner.
    #[cfg_attr(
        feature = "ssr",
        schema(
            min_length = 1,
            max_length = 64,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"
        )
    )]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Default `experiment` (the caller's experiment); `project` is the experiment's project;
    /// `site` needs an admin.
    #[serde(default)]
    pub scope: TemplateScope,
    pub parameters: Vec<TemplateParameter>,
    #[cfg_attr(feature = "ssr", schema(value_type = Vec<Object>, min_items = 1, max_items = 50))]
    pub resources: Vec<Value>,
    #[serde(default)]
    pub notes: String,
}

/// Body of `POST /templates/{id}/versions`: the next version (earlier ones never change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewVersionRequest {
    pub parameters: Vec<TemplateParameter>,
    #[cfg_attr(feature = "ssr", schema(value_type = Vec<Object>, min_items = 1, max_items = 50))]
    pub resources: Vec<Value>,
    #[serde(default)]
    pub notes: String,
    /// A new description for the template (default: unchanged).
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `POST /templates/{id}/instantiate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(ToSchema))]
pub struct InstantiateRequest {
    /// Default: the newest version.
    #[serde(default, deserialize_with = "whole")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<i32>, minimum = 1))]
    pub version: Option<i64>,
    /// Parameter values by name; missing ones take their defaults.
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(value_type = Object))]
    pub parameters: Map<String, Value>,
    /// As in `POST /resources`.
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub tokens: Vec<crate::model::TokenRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<uuid::Uuid>,
}

/// A rendered resource and the placeholder its `disk_image`/`flavor` came from (to name the
/// parameter when the catalog does not know the value).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub resource: TemplateResource,
    pub image_parameter: Option<String>,
    pub flavor_parameter: Option<String>,
}

/// Checks a version's definition: parameter names, types and defaults, 1-50 resource
/// objects, every placeholder declared, and that the resources render (with the defaults
/// and sample values) into [`TemplateResource`]s. Errors name `parameters[i].<field>` or
/// `resources[i]`.
pub fn check_definition(
    parameters: &[TemplateParameter],
    resources: &[Value],
) -> Result<(), AppError> {
    check_parameters(parameters)?;
    if resources.is_empty() || resources.len() > MAX_RESOURCES {
        return Err(AppError::invalid(
            "resources",
            format!("1 to {MAX_RESOURCES} resource objects"),
        ));
    }
    let mut sample = Map::new();
    for p in parameters {
        sample.insert(
            p.name.clone(),
            p.default.clone().unwrap_or_else(|| sample_value(p)),
        );
    }
    for (i, r) in resources.iter().enumerate() {
        if !r.is_object() {
            return Err(AppError::invalid(
                format!("resources[{i}]"),
                "must be an object",
            ));
        }
        let mut names = Vec::new();
        placeholders(r, &mut names);
        if let Some(unknown) = names
            .iter()
            .find(|n| *n != "index" && !parameters.iter().any(|p| &p.name == *n))
        {
            return Err(AppError::invalid(
                format!("resources[{i}]"),
                format!("`{{{{{unknown}}}}}` names no parameter of this version"),
            ));
        }
        let mut values = sample.clone();
        values.insert("index".into(), Value::from(1));
        let rendered = substitute(r, &values);
        serde_json::from_value::<TemplateResource>(rendered)
            .map_err(|e| AppError::invalid(format!("resources[{i}]"), e.to_string()))?;
    }
    Ok(())
}

fn check_parameters(parameters: &[TemplateParameter]) -> Result<(), AppError> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(AppError::invalid(
            "parameters",
            format!("at most {MAX_PARAMETERS}"),
        ));
    }
    for (i, p) in parameters.iter().enumerate() {
        let f = |field: &str| format!("parameters[{i}].{field}");
        let good_name = p.name.len() <= 40
            && p.name.starts_with(|c: char| c.is_ascii_lowercase())
            && p.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !good_name || p.name == "index" {
            return Err(AppError::invalid(f("name"), "lowercase letters, digits and `_`, starting with a letter, at most 40 characters; `index` is taken"));
        }
        if parameters[..i].iter().any(|q| q.name == p.name) {
            return Err(AppError::invalid(
                f("name"),
                format!("`{}` appears twice", p.name),
            ));
        }
        if p.kind == ParameterType::Choice && p.choices.is_empty() {
            return Err(AppError::invalid(
                f("choices"),
                "a choice needs at least one choice",
            ));
        }
        if p.max_length.is_some_and(|l| !(0..=255).contains(&l)) {
            return Err(AppError::invalid(f("max_length"), "between 0 and 255"));
        }
        if let (Some(min), Some(max)) = (p.min, p.max) {
            if min > max {
                return Err(AppError::invalid(f("min"), "greater than `max`"));
            }
        }
        if let Some(default) = &p.default {
            coerce(p, default).map_err(|why| AppError::invalid(f("default"), why))?;
        }
    }
    Ok(())
}

/// A value of the parameter's type for [`check_definition`]'s trial rendering.
fn sample_value(p: &TemplateParameter) -> Value {
    match p.kind {
        ParameterType::Integer => {
            let v = p.min.unwrap_or(1);
            Value::from(p.max.map_or(v, |max| v.min(max)))
        }
        ParameterType::Boolean => Value::Bool(true),
        ParameterType::Choice => Value::from(p.choices.first().cloned().unwrap_or_default()),
        _ => Value::from("sample"),
    }
}

/// The value a parameter takes from `given` (JSON as sent; form fields send strings), or
/// why it cannot: the type, the bounds, the choices, the length.
pub fn coerce(p: &TemplateParameter, given: &Value) -> Result<Value, String> {
    match p.kind {
        ParameterType::Integer => {
            let n = match given {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(|| "a whole number".to_string())?;
            if p.min.is_some_and(|min| n < min) || p.max.is_some_and(|max| n > max) {
                return Err(format!(
                    "between {} and {}",
                    p.min.map_or("-∞".into(), |v| v.to_string()),
                    p.max.map_or("∞".into(), |v| v.to_string())
                ));
            }
            Ok(Value::from(n))
        }
        ParameterType::Boolean => match given {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) if matches!(s.as_str(), "true" | "on" | "1") => Ok(Value::Bool(true)),
            Value::String(s) if matches!(s.as_str(), "false" | "off" | "0" | "") => {
                Ok(Value::Bool(false))
            }
            _ => Err("true or false".into()),
        },
        _ => {
            let Value::String(s) = given else {
                return Err("a string".into());
            };
            let limit = p.max_length.unwrap_or(255).clamp(0, 255) as usize;
            if s.chars().count() > limit {
                return Err(format!("at most {limit} characters"));
            }
            if p.kind == ParameterType::Choice
                && !p.choices.contains(s)
                && !(p.optional && s.is_empty())
            {
                return Err(format!("one of: {}", p.choices.join(", ")));
            }
            Ok(Value::String(s.clone()))
        }
    }
}

/// The parameter values of an instantiation: `given` checked against the definition,
/// defaults filled in. Errors name `parameters.<name>`.
pub fn fill_parameters(
    definition: &[TemplateParameter],
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, AppError> {
    if let Some(unknown) = given
        .keys()
        .find(|k| !definition.iter().any(|p| &p.name == *k))
    {
        return Err(AppError::invalid(
            format!("parameters.{unknown}"),
            "this template has no such parameter",
        ));
    }
    let mut values = Map::new();
    for p in definition {
        let field = format!("parameters.{}", p.name);
        let value = match given.get(&p.name) {
            // An optional parameter left empty stays empty (e.g. "no SAE hosts").
            Some(v) if p.optional && is_blank(v) => Value::from(""),
            Some(v) if !is_blank(v) || p.kind == ParameterType::Boolean => v.clone(),
            _ => match &p.default {
                Some(default) => default.clone(),
                None if p.optional => Value::from(""),
                None if p.kind == ParameterType::Boolean => Value::Bool(false),
                None => return Err(AppError::invalid(field, "required")),
            },
        };
        let value = if p.optional && is_blank(&value) {
            value
        } else {
            coerce(p, &value).map_err(|why| AppError::invalid(field, why))?
        };
        values.insert(p.name.clone(), value);
    }
    Ok(values)
}

fn is_blank(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str().is_some_and(|s| s.trim().is_empty())
}

/// Renders a version's resources with filled-in `values`: `when` applied, `count` expanded
/// (`{{index}}` = 1, 2, …). Errors name `resources[i]` (of the version).
pub fn render(resources: &[Value], values: &Map<String, Value>) -> Result<Vec<Rendered>, AppError> {
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let field = format!("resources[{i}]");
        let mut first = values.clone();
        first.insert("index".into(), Value::from(1));
        let probe: TemplateResource = serde_json::from_value(substitute(r, &first))
            .map_err(|e| AppError::invalid(&field, e.to_string()))?;
        if probe.when.as_ref().is_some_and(|w| !truthy(w)) {
            continue;
        }
        let count = probe.count.unwrap_or(1);
        if count as usize > MAX_RESOURCES {
            return Err(AppError::invalid(
                format!("{field}.count"),
                format!("at most {MAX_RESOURCES}"),
            ));
        }
        let source = |key: &str| {
            r.get(key)
                .and_then(Value::as_str)
                .and_then(whole_placeholder)
                .map(str::to_string)
        };
        for index in 1..=count {
            let mut these = values.clone();
            these.insert("index".into(), Value::from(index));
            let resource: TemplateResource = serde_json::from_value(substitute(r, &these))
                .map_err(|e| AppError::invalid(&field, e.to_string()))?;
            out.push(Rendered {
                resource,
                image_parameter: source("disk_image"),
                flavor_parameter: source("flavor"),
            });
        }
        if out.len() > MAX_RESOURCES {
            return Err(AppError::invalid(
                "resources",
                format!("renders into more than {MAX_RESOURCES} resources"),
            ));
        }
    }
    if out.is_empty() {
        return Err(AppError::invalid(
            "parameters",
            "with these parameters the template requests no resource",
        ));
    }
    Ok(out)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.trim().is_empty() && s != "false" && s != "0",
        _ => true,
    }
}

/// `name` when `s` is exactly `{{name}}` (spaces inside allowed).
fn whole_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    (!inner.is_empty() && !inner.contains(['{', '}'])).then_some(inner)
}

/// Every `{{name}}` in the strings of `v`.
fn placeholders(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(len) = rest[start + 2..].find("}}") else {
                    break;
                };
                out.push(rest[start + 2..start + 2 + len].trim().to_string());
                rest = &rest[start + 2 + len + 2..];
            }
        }
        Value::Array(items) => items.iter().for_each(|i| placeholders(i, out)),
        Value::Object(map) => map.values().for_each(|i| placeholders(i, out)),
        _ => {}
    }
}

/// `v` with its placeholders replaced (module docs); unknown names are left as written.
fn substitute(v: &Value, values: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            let mut text = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                text.push_str(&rest[..start]);
                let Some(len) = rest[start + 2..].find("}}") else {
                    rest = &rest[start..];
                    break;
                };
                let name = rest[start + 2..start + 2 + len].trim();
                match values.get(name) {
                    Some(Value::String(v)) => text.push_str(v),
                    Some(Value::Null) => {}
                    Some(other) => text.push_str(&other.to_string()),
                    None => text.push_str(&rest[start..start + 2 + len + 2]),
                }
                rest = &rest[start + 2 + len + 2..];
            }
            text.push_str(rest);
            Value::String(text)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| substitute(i, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| (k.clone(), substitute(i, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> Vec<TemplateParameter> {
        serde_json::from_value(json!([
            {"name": "prefix", "default": "qkd"},
            {"name": "port", "type": "integer", "min": 1024, "max": 65535, "default": 8443},
            {"name": "image", "type": "disk_image"},
            {"name": "sae", "type": "flavor", "optional": true},
            {"name": "n", "type": "integer", "min": 0, "max": 5, "default": 2}
        ]))
        .expect("parameters")
    }

    fn resources() -> Vec<Value> {
        vec![
            json!({"friendly_name": "{{prefix}}-kme-{{index}}", "disk_image": "{{image}}", "flavor": "small",
                   "count": "{{n}}", "env": [{"name": "PORT", "value": "{{port}}"}],
                   "ports": [{"name": "etsi014", "port": "{{port}}"}]}),
            json!({"when": "{{sae}}", "friendly_name": "{{prefix}}-sae", "disk_image": "{{image}}", "flavor": "{{sae}}"}),
        ]
    }

    #[test]
    fn renders_counts_numbers_and_conditions() {
        check_definition(&params(), &resources()).expect("definition");
        let given: Map<String, Value> =
            serde_json::from_value(json!({"image": "kme:1", "port": "9443"})).expect("ok");
        let values = fill_parameters(&params(), &given).expect("values");
        let out = render(&resources(), &values).expect("render");
        assert_eq!(out.len(), 2, "two KMEs, no SAE host without its flavor");
        assert_eq!(out[1].resource.friendly_name, "qkd-kme-2");
        assert_eq!(out[0].resource.ports[0].port, 9443);
        assert_eq!(out[0].resource.env[0].value, "9443");
        assert_eq!(out[0].image_parameter.as_deref(), Some("image"));
        let mut given = given;
        given.insert("sae".into(), json!("vm.small"));
        let out = render(
            &resources(),
            &fill_parameters(&params(), &given).expect("ok"),
        )
        .expect("ok");
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].resource.flavor, "vm.small");
        assert_eq!(out[2].flavor_parameter.as_deref(), Some("sae"));
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let field = |given: Value| {
            let given: Map<String, Value> = serde_json::from_value(given).expect("ok");
            fill_parameters(&params(), &given)
                .expect_err("an error")
                .field()
                .map(String::from)
        };
        assert_eq!(field(json!({})).as_deref(), Some("parameters.image"));
        assert_eq!(
            field(json!({"image": "x", "port": 80})).as_deref(),
            Some("parameters.port")
        );
        assert_eq!(
            field(json!({"image": "x", "nope": 1})).as_deref(),
            Some("parameters.nope")
        );
        assert_eq!(
            field(json!({"image": 5})).as_deref(),
            Some("parameters.image")
        );
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let p: TemplateParameter = serde_json::from_value(
            json!({"name": "n", "type": "integer", "min": 2.0, "max": null}),
        )
        .expect("parameter");
        assert_eq!((p.min, p.max), (Some(2), None));
        let bad = serde_json::from_value::<TemplateParameter>(json!({"name": "n", "min": 2.5}));
        assert!(bad.is_err());
    }

    #[test]
    fn definitions_are_checked() {
        let err = |p: Vec<TemplateParameter>, r: Vec<Value>| {
            check_definition(&p, &r)
                .expect_err("an error")
                .field()
                .map(String::from)
        };
        let mut p = params();
        p[0].name = "Bad".into();
        assert_eq!(err(p, resources()).as_deref(), Some("parameters[0].name"));
        let mut p = params();
        p[1].default = Some(json!("eighty"));
        assert_eq!(
            err(p, resources()).as_deref(),
            Some("parameters[1].default")
        );
        let r = vec![json!({"friendly_name": "{{missing}}", "disk_image": "a", "flavor": "b"})];
        assert_eq!(err(params(), r).as_deref(), Some("resources[0]"));
        let r =
            vec![json!({"friendly_name": "a", "disk_image": "a", "flavor": "b", "colour": "red"})];
        assert_eq!(err(params(), r).as_deref(), Some("resources[0]"));
        assert_eq!(err(params(), Vec::new()).as_deref(), Some("resources"));
    }
}
