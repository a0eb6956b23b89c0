//! `/templates` (the gallery: every template the user sees, with its description) and
//! `/templates/:id` (a form generated from the newest version's parameters; "Preview" is a
//! GET of the same page that renders what would be created, "Launch" requests it exactly as
//! `POST /templates/{id}/instantiate` would and opens the experiment's picture).

use super::{short_time, ErrorBox, FieldError, FormError, SignedIn};
use crate::error::AppError;
use crate::model::{DiskImage, Flavor, ResourceSpec, Viewer};
use crate::templates::{ParameterType, Template, TemplateParameter};
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_params_map, use_query_map};
use std::collections::BTreeMap;

/// The templates the session sees (site, project, experiment), built-in first.
#[server(endpoint = "templates")]
pub async fn list_templates() -> Result<Vec<Template>, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    crate::ssr::templates::list(&state.pool, state.site(), &auth.acting()).await
}

/// One template with the catalog its form picks from.
#[server(endpoint = "template")]
pub async fn template_form(
    id: String,
) -> Result<(Template, Vec<DiskImage>, Vec<Flavor>), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let principal = auth.acting();
    let template = crate::ssr::templates::get(&state.pool, state.site(), &principal, &id).await?;
    let images =
        crate::ssr::catalog::list_images(&state.pool, state.site(), principal.is_admin).await?;
    let flavors = crate::ssr::catalog::list_flavors(&state.pool, state.site()).await?;
    Ok((template, images, flavors))
}

/// What launching with `parameters` would request (names resolved, nothing created).
#[server(endpoint = "template-preview")]
pub async fn preview_template(
    id: String,
    parameters: BTreeMap<String, String>,
) -> Result<Vec<ResourceSpec>, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let given = parameters
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    crate::ssr::templates::preview(&state.pool, state.site(), &auth.acting(), &id, None, &given)
        .await
}

/// Launches the newest version with `parameters` as the session's experiment (the answer of
/// `POST /templates/{id}/instantiate`), then opens `/experiment`.
#[server(endpoint = "template-launch")]
pub async fn launch_template(
    id: String,
    expires_at: String,
    #[server(default)] ssh_authorized_keys: String,
    #[server(default)] parameters: BTreeMap<String, String>,
) -> Result<usize, AppError> {
    use crate::templates::InstantiateRequest;
    let (state, auth) = crate::ssr::session::require().await?;
    let Some(experiment) = auth.experiment.as_ref() else {
        return Err(AppError::Forbidden(
            "launching needs an experiment: attach one on your account page (/account) with an experiment token".into(),
        ));
    };
    let request = InstantiateRequest {
        version: None,
        parameters: parameters
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        expires_at: super::resources::parse_expiry(&expires_at)?,
        ssh_authorized_keys: super::resources::key_lines(&ssh_authorized_keys),
        tokens: Vec::new(),
        request_id: None,
    };
    let created =
        crate::ssr::templates::instantiate(&state.resources(), experiment, &id, &request).await?;
    leptos_axum::redirect("/experiment");
    Ok(created.resources.len())
}

/// `/templates`.
#[component]
pub fn TemplatesPage() -> impl IntoView {
    view! { <SignedIn page=|_viewer| view! { <Gallery /> } /> }
}

#[component]
fn Gallery() -> impl IntoView {
    let templates = Resource::new(|| (), |_| list_templates());
    view! {
        <h1>"Templates"</h1>
        <p class="hint">"A template requests a whole experiment's nodes in one step. Pick one, fill in its parameters, preview, launch."</p>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match templates.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok(list) if list.is_empty() => view! { <p class="empty">"No templates yet."</p> }.into_any(),
                    Ok(list) => view! {
                        <div class="gallery" data-testid="template-gallery">
                            {list.into_iter().map(|t| view! { <TemplateCard t /> }).collect_view()}
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn TemplateCard(t: Template) -> impl IntoView {
    let href = format!("/templates/{}", t.id);
    let nodes = t.latest.resources.len();
    view! {
        <article class="card template-card" data-testid="template-card" data-name=t.name.clone()>
            <h2><a href=href.clone()>{t.name.clone()}</a></h2>
            <p>
                <span class="badge">{t.scope.as_str()}</span>
                {t.builtin.then(|| view! { <span class="badge">"built-in"</span> })}
                <span class="hint small">{format!(" version {} · {} resource entries · {} parameters", t.latest.version, nodes, t.latest.parameters.len())}</span>
            </p>
            <p class="small">{t.description.clone()}</p>
            <a href=href class="button primary" data-testid="template-open">"Use this template"</a>
        </article>
    }
}

/// `/templates/:id`.
#[component]
pub fn TemplatePage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <TemplateLaunch viewer /> } /> }
}

/// The values the page was asked with (`p.<name>` in the query), and whether to preview.
fn asked() -> (BTreeMap<String, String>, bool) {
    let query = use_query_map();
    query.with_untracked(|q| {
        let values = q
            .clone()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("p.").map(|n| (n.to_string(), v)))
            .collect();
        (values, q.get("preview").is_some())
    })
}

#[component]
fn TemplateLaunch(viewer: Viewer) -> impl IntoView {
    let params = use_params_map();
    let id = params.with_untracked(|p| p.get("id").unwrap_or_default());
    let (values, previewing) = asked();
    let form = Resource::new(
        {
            let id = id.clone();
            move || id.clone()
        },
        template_form,
    );
    let preview = Resource::new(
        {
            let (id, values) = (id.clone(), values.clone());
            move || (id.clone(), values.clone(), previewing)
        },
        |(id, values, previewing)| async move {
            match previewing {
                true => Some(preview_template(id, values).await),
                false => None,
            }
        },
    );
    let expiry = viewer
        .experiment
        .as_ref()
        .map(super::resources::default_expiry);
    view! {
        <p><A href="/templates">"← Templates"</A></p>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || {
                let (values, expiry) = (values.clone(), expiry.clone());
                Suspend::new(async move {
                    match (form.await, preview.await) {
                        (Err(e), _) => view! { <ErrorBox error=e /> }.into_any(),
                        (Ok((template, images, flavors)), preview) => view! {
                            <h1 data-testid="template-name">{template.name.clone()}</h1>
                            <p class="hint">{template.description.clone()}</p>
                            <p class="hint small">{format!("Version {} of {} · {}", template.latest.version, short_time(&template.latest.created_at), template.latest.notes)}</p>
                            <ParameterForm parameters=template.latest.parameters.clone() images flavors values=values.clone() />
                            {preview.map(|p| view! { <Preview id=template.id.clone() result=p values=values.clone() expiry=expiry.clone() /> })}
                        }.into_any(),
                    }
                })
            }}
        </Suspense>
    }
}

/// The parameter form (GET, works without JavaScript): one field per parameter, typed by it.
#[component]
fn ParameterForm(
    parameters: Vec<TemplateParameter>,
    images: Vec<DiskImage>,
    flavors: Vec<Flavor>,
    values: BTreeMap<String, String>,
) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Parameters"</h2>
            <form method="get" data-testid="template-form">
                <input type="hidden" name="preview" value="1" />
                {parameters.into_iter().map(|p| {
                    let value = values.get(&p.name).cloned().or_else(|| p.default.as_ref().map(plain)).unwrap_or_default();
                    view! { <ParameterField p value images=images.clone() flavors=flavors.clone() /> }
                }).collect_view()}
                <button type="submit" data-testid="template-preview">"Preview"</button>
            </form>
        </section>
    }
}

/// A JSON value as a form field shows it.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[component]
fn ParameterField(
    p: TemplateParameter,
    value: String,
    images: Vec<DiskImage>,
    flavors: Vec<Flavor>,
) -> impl IntoView {
    let name = format!("p.{}", p.name);
    let testid = format!("param-{}", p.name);
    let label = p.name.replace('_', " ");
    let hint = p.description.clone();
    let required = !p.optional && p.default.is_none();
    let options = |entries: Vec<(String, String)>| {
        let value = value.clone();
        let none = (p.optional || value.is_empty()).then(
            || view! { <option value="">{if p.optional { "(none)" } else { "(choose)" }}</option> },
        );
        view! {
            <select id=name.clone() name=name.clone() data-testid=testid.clone() required=required>
                {none}
                {entries.into_iter().map(|(id, text)| {
                    let selected = id == value || text == value;
                    view! { <option value=id selected=selected>{text}</option> }
                }).collect_view()}
            </select>
        }
        .into_any()
    };
    let field = match p.kind {
        ParameterType::DiskImage => options(images.iter()
            .map(|i| (i.id.clone(), format!("{} ({})", i.friendly_name, i.location))).collect()),
        ParameterType::Flavor => options(flavors.iter()
            .filter(|f| p.flavor_type.is_none_or(|t| t == f.flavor_type))
            .map(|f| (f.id.clone(), format!("{} — {}: {} vCPU, {} MiB", f.friendly_name, f.flavor_type.as_str(), f.vcpus, f.ram_mib))).collect()),
        ParameterType::Choice => options(p.choices.iter().map(|c| (c.clone(), c.clone())).collect()),
        ParameterType::Boolean => view! {
            <input type="hidden" name=name.clone() value="false" />
            <input type="checkbox" id=name.clone() name=name.clone() value="true" data-testid=testid.clone() checked=value == "true" />
        }.into_any(),
        ParameterType::Integer => view! {
            <input type="number" id=name.clone() name=name.clone() value=value.clone() data-testid=testid.clone()
                min=p.min.map(|v| v.to_string()) max=p.max.map(|v| v.to_string()) required=required />
        }.into_any(),
        ParameterType::String => view! {
            <input id=name.clone() name=name.clone() value=value.clone() data-testid=testid.clone() autocomplete="off"
                maxlength=p.max_length.unwrap_or(255).to_string() required=required />
        }.into_any(),
    };
    view! {
        <label for=name.clone()>{label}{p.optional.then_some(" (optional)")}</label>
        {field}
        {(!hint.is_empty()).then(|| view! { <p class="hint small">{hint}</p> })}
    }
}

/// What the launch would request, or why it cannot; with the Launch form.
#[component]
fn Preview(
    id: String,
    result: Result<Vec<ResourceSpec>, AppError>,
    values: BTreeMap<String, String>,
    expiry: Option<String>,
) -> impl IntoView {
    match result {
        Err(e) => view! { <section class="card" data-testid="template-preview-error"><ErrorBox error=e /></section> }.into_any(),
        Ok(specs) => view! {
            <section class="card" data-testid="template-plan">
                <h2>{format!("Will request {} resources", specs.len())}</h2>
                <div class="table-wrap">
                    <table>
                        <thead><tr><th>"Name"</th><th>"Image"</th><th>"Flavor"</th><th>"Ports"</th><th>"Environment"</th></tr></thead>
                        <tbody>
                            {specs.into_iter().map(|s| view! {
                                <tr data-testid="plan-row">
                                    <td>{s.friendly_name.clone()}</td>
                                    <td><code>{s.disk_image_id.clone()}</code></td>
                                    <td><code>{s.flavor_id.clone()}</code></td>
                                    <td>{s.ports.iter().map(|p| format!("{}:{}", p.name, p.port)).collect::<Vec<_>>().join(", ")}</td>
                                    <td class="small">{s.env.iter().map(|e| format!("{}={}", e.name, e.value)).collect::<Vec<_>>().join(" ")}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                </div>
                {match expiry {
                    Some(expiry) => view! { <LaunchForm id values expiry /> }.into_any(),
                    None => view! { <p class="warning">"Launching needs an experiment: attach one on " <A href="/account">"your account"</A> "."</p> }.into_any(),
                }}
            </section>
        }.into_any(),
    }
}

/// "Launch": the previewed values as hidden fields, the expiry and SSH keys.
#[island(lazy)]
fn LaunchForm(id: String, values: BTreeMap<String, String>, expiry: String) -> impl IntoView {
    super::island_hydrated();
    let action = ServerAction::<LaunchTemplate>::new();
    let result = Signal::derive(move || action.value().get());
    view! {
        <ActionForm action>
            <input type="hidden" name="id" value=id />
            {values.into_iter().map(|(k, v)| view! { <input type="hidden" name=format!("parameters[{k}]") value=v /> }).collect_view()}
            <div class="grid2">
                <div>
                    <label for="expires_at">"Expires at (UTC)"</label>
                    <input id="expires_at" name="expires_at" type="datetime-local" value=expiry required data-testid="launch-expires" />
                    <FieldError result field="expires_at" />
                </div>
                <div>
                    <label for="ssh_authorized_keys">"SSH public keys (one per line)"</label>
                    <textarea id="ssh_authorized_keys" name="ssh_authorized_keys" rows="2" spellcheck="false"></textarea>
                    <FieldError result field="ssh_authorized_keys" />
                </div>
            </div>
            <FormError result fields=&["expires_at", "ssh_authorized_keys"] />
            <button type="submit" class="primary" data-testid="template-launch" disabled=move || action.pending().get()>
                {move || if action.pending().get() { "Launching…" } else { "Launch" }}
            </button>
        </ActionForm>
    }
}
