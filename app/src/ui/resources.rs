//! `/resources` (live list with delete), `/resources/new` (request form) and
//! `/resources/:id` (detail with the task history).

use super::{live, short_time, ticker, ErrorBox, FieldError, FormError, SignedIn};
use crate::error::AppError;
use crate::model::{DiskImage, Flavor, Resource as ComputeResource, Task, Viewer};
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;

/// The resources the dashboard may show: the session experiment's (or, without a valid
/// experiment token, the ones this user requested).
#[server(endpoint = "resources")]
pub async fn list_my_resources() -> Result<Vec<ComputeResource>, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let query = crate::ssr::resources::ListQuery {
        limit: Some(crate::ssr::resources::MAX_PAGE),
        ..Default::default()
    };
    crate::ssr::resources::list_resources(&state.pool, state.site(), &auth.acting(), &query).await
}

/// One resource and its tasks.
#[server(endpoint = "resource-detail")]
pub async fn resource_detail(id: String) -> Result<(ComputeResource, Vec<Task>), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let principal = auth.acting();
    let resource =
        crate::ssr::resources::get_resource(&state.pool, state.site(), &principal, &id).await?;
    let tasks = crate::ssr::tasks::list_tasks(&state.pool, state.site(), &principal, &id).await?;
    Ok((resource, tasks))
}

/// The tail of a VM's console (Nova `os-getConsoleOutput`), read with the requesting user's
/// clouds.yaml.
#[server(endpoint = "console-log")]
pub async fn console_log(id: String) -> Result<crate::model::ConsoleLog, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    crate::ssr::resources::console_log(&state.resources(), &auth.acting(), &id, Some(CONSOLE_LINES))
        .await
}

/// Lines of console output the detail page shows.
pub const CONSOLE_LINES: u32 = 200;

/// The request form's fields (named `form[<field>]` in the HTML form); the Pod options are
/// text: `NAME=value` lines, shell words, `name:port[/protocol]` lines.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RequestForm {
    pub disk_image_id: String,
    pub flavor_id: String,
    pub friendly_name: String,
    pub expires_at: String,
    #[serde(default)]
    pub network_name: String,
    #[serde(default)]
    pub ssh_authorized_keys: String,
    #[serde(default)]
    pub userdata: String,
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub args: String,
    #[serde(default)]
    pub ports: String,
}

impl RequestForm {
    /// The `POST /resources` body it stands for; the text fields' own mistakes are 422s
    /// naming the field (`env`: "line 2: expected NAME=value").
    pub fn request(self) -> Result<crate::model::CreateResourcesRequest, AppError> {
        use crate::model::{CreateResourcesRequest, ResourceSpec};
        use crate::pod_options::{parse_env_lines, parse_port_lines, split_words};
        Ok(CreateResourcesRequest {
            expires_at: parse_expiry(&self.expires_at)?,
            resources: vec![ResourceSpec {
                friendly_name: self.friendly_name,
                disk_image_id: self.disk_image_id,
                flavor_id: self.flavor_id,
                network_name: Some(self.network_name.trim().to_string()).filter(|n| !n.is_empty()),
                userdata: Some(self.userdata).filter(|u| !u.trim().is_empty()),
                env: parse_env_lines(&self.env).map_err(|m| AppError::invalid("env", m))?,
                command: split_words(&self.command).map_err(|m| AppError::invalid("command", m))?,
                args: split_words(&self.args).map_err(|m| AppError::invalid("args", m))?,
                ports: parse_port_lines(&self.ports).map_err(|m| AppError::invalid("ports", m))?,
            }],
            ssh_authorized_keys: key_lines(&self.ssh_authorized_keys),
            // The session's user requests it: no user token travels (the session proved who
            // it is).
            tokens: Vec::new(),
            request_id: None,
        })
    }
}

/// Requests one resource, exactly as `POST /resources` would with the session's
/// experiment token and the user token in `tokens`.
#[server(endpoint = "request-resource")]
pub async fn request_resource(form: RequestForm) -> Result<String, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let Some(experiment) = auth.experiment.as_ref() else {
        return Err(AppError::Forbidden(
            "requesting resources needs an experiment: attach one on your account page (/account) with an experiment token".into(),
        ));
    };
    let request = form.request()?;
    let created =
        crate::ssr::resources::create_resources(&state.resources(), experiment, &request).await?;
    leptos_axum::redirect("/resources");
    Ok(created
        .resources
        .first()
        .map(|r| r.id.clone())
        .unwrap_or_default())
}

/// The expiry a form starts with: one day, or the experiment's end if sooner (UTC, minute
/// precision, as an `<input type="datetime-local">` value).
pub fn default_expiry(experiment: &crate::model::ExperimentInfo) -> String {
    (chrono::Utc::now() + chrono::Duration::days(1))
        .min(experiment.max_expires_at)
        .format("%Y-%m-%dT%H:%M")
        .to_string()
}

/// The non-empty lines of an SSH keys text area, trimmed (one public key per line).
pub fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `YYYY-MM-DDTHH:MM[:SS]` (an `<input type="datetime-local">`, read as UTC) or RFC 3339.
pub fn parse_expiry(value: &str) -> Result<chrono::DateTime<chrono::Utc>, AppError> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc());
        }
    }
    Err(AppError::invalid(
        "expires_at",
        "expected a date and time such as 2026-12-01T12:00 (UTC)",
    ))
}

/// Extends a resource, as `PATCH /resources/{id}` would: `by` is `1h`, `1d` or `7d` (added to
/// its current expiry), or `custom` with `until` (an `<input type="datetime-local">` value, UTC).
#[server(endpoint = "extend-resource")]
pub async fn extend_resource(
    id: String,
    by: String,
    until: String,
) -> Result<ComputeResource, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let principal = auth.acting();
    crate::ssr::access::require(&principal, crate::ssr::access::Right::WriteResources)?;
    let current =
        crate::ssr::resources::get_resource(&state.pool, state.site(), &principal, &id).await?;
    let expires_at = match by.as_str() {
        "1h" => current.expires_at + chrono::Duration::hours(1),
        "1d" => current.expires_at + chrono::Duration::days(1),
        "7d" => current.expires_at + chrono::Duration::days(7),
        "custom" => parse_expiry(&until).map_err(|e| match e {
            AppError::Invalid { message, .. } => AppError::invalid("until", message),
            other => other,
        })?,
        _ => {
            return Err(AppError::invalid(
                "by",
                "choose 1 hour, 1 day, 7 days or a date",
            ))
        }
    };
    let patch = crate::model::ResourcePatch { expires_at };
    crate::ssr::resources::extend_resource(&state.resources(), &principal, &id, &patch).await
}

/// Requests deletion of a resource.
#[server(endpoint = "delete-resource")]
pub async fn delete_resource(id: String) -> Result<Task, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    crate::ssr::resources::delete_resource(&state.resources(), &auth.acting(), &id).await
}

/// Catalog entries offered in the request form.
#[server(endpoint = "request-options")]
pub async fn request_options() -> Result<(Vec<DiskImage>, Vec<Flavor>), AppError> {
    super::catalog::list_catalog().await
}

pub(crate) fn state_class(r: &ComputeResource) -> &'static str {
    use crate::model::{AllocationState as A, OperationalState as O};
    match (r.allocation_state, r.operational_state) {
        (A::Failed, _) | (_, O::Error) => "state state-bad",
        (A::Provisioned, O::Ready) => "state state-ok",
        (A::Deleting | A::Deleted | A::Expired, _) => "state state-gone",
        _ => "state state-busy",
    }
}

/// `/resources`.
#[component]
pub fn ResourcesPage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <ResourcesList viewer /> } /> }
}

/// The page around the live table (server-rendered only).
#[component]
fn ResourcesList(viewer: Viewer) -> impl IntoView {
    let list = Resource::new(|| (), |_| list_my_resources());
    let can_write = viewer.experiment.is_some();
    view! {
        <div class="page-head">
            <h1>"Resources"</h1>
            {can_write.then(|| view! {
                <span>
                    <A href="/resources/import" attr:class="button" attr:data-testid="import-link">"Import a spec file"</A>
                    " "
                    <A href="/resources/new" attr:class="button primary">"Request a resource"</A>
                </span>
            })}
        </div>
        {viewer.experiment.clone().map(|e| view! {
            <p class="hint">
                "Experiment " <code>{e.name.clone().unwrap_or(e.experiment_id.clone())}</code>
                " · project " <code>{e.project_id.clone()}</code>
                " · resources may live until " {short_time(&e.max_expires_at)}
            </p>
        })}
        {viewer.experiment_ended.then(|| view! {
            <p class="warning" data-testid="experiment-ended">"The experiment you were acting for has ended (expired or detached): the list shows what you requested; attach a current experiment on " <A href="/account">"your account"</A> " to make changes."</p>
        })}
        {(!can_write && !viewer.experiment_ended).then(|| view! {
            <p class="warning" data-testid="no-experiment">"No experiment attached: you can look, but requesting and deleting needs an experiment. Attach one on " <A href="/account">"your account"</A> " with an experiment token."</p>
        })}
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok(initial) => view! { <ResourcesTable initial can_write /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The resource table: refreshes itself every [`super::REFRESH_MS`] and after a deletion.
#[island(lazy)]
fn ResourcesTable(initial: Vec<ComputeResource>, can_write: bool) -> impl IntoView {
    super::island_hydrated();
    let tick = ticker();
    let delete = ServerAction::<DeleteResource>::new();
    // Which row asks "delete for good?": kept here because rows are rebuilt on every refresh.
    let confirming = RwSignal::new(None::<String>);
    let (items, error) = live(
        initial,
        move || (tick.get(), delete.version().get()),
        list_my_resources,
    );
    view! {
        {move || delete.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || items.with(|items| expiry_banner(items))}
        {move || {
            let items = items.get();
            if items.is_empty() {
                view! {
                    <p class="empty" data-testid="resources-empty">"No resources yet."</p>
                    <table data-testid="resources-table" class="hidden"><tbody></tbody></table>
                }.into_any()
            } else {
                view! {
                    <div class="table-wrap">
                        <table data-testid="resources-table">
                            <thead><tr><th>"Name"</th><th>"Type"</th><th>"State"</th><th>"Address"</th><th>"Expires"</th><th></th></tr></thead>
                            <tbody>
                                {items.into_iter().map(|r| view! { <ResourceRow resource=r delete can_write confirming /> }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }.into_any()
            }
        }}
    }
}

/// Whether a resource still holds (or is getting) its Pod or server.
pub(crate) fn is_live(r: &ComputeResource) -> bool {
    use crate::model::AllocationState as A;
    matches!(
        r.allocation_state,
        A::Requested | A::Provisioning | A::Provisioned
    )
}

/// A warning when any live resource expires within 24 h, naming the first to go.
fn expiry_banner(items: &[ComputeResource]) -> Option<impl IntoView> {
    let now = chrono::Utc::now();
    let mut soon: Vec<&ComputeResource> = items
        .iter()
        .filter(|r| is_live(r) && super::within_a_day(&r.expires_at, &now))
        .collect();
    soon.sort_by_key(|r| r.expires_at);
    let first = soon.first()?;
    let text = match soon.len() {
        1 => format!(
            "{} expires {} ({}).",
            first.friendly_name,
            super::time_left(&first.expires_at, &now),
            short_time(&first.expires_at)
        ),
        n => format!(
            "{n} resources expire within 24 h; the first, {}, {} ({}).",
            first.friendly_name,
            super::time_left(&first.expires_at, &now),
            short_time(&first.expires_at)
        ),
    };
    Some(view! {
        <p class="warning" data-testid="expiry-banner">
            {text} " Open a resource to extend it; at its expiry it is deleted."
        </p>
    })
}

#[component]
fn ResourceRow(
    resource: ComputeResource,
    delete: ServerAction<DeleteResource>,
    can_write: bool,
    confirming: RwSignal<Option<String>>,
) -> impl IntoView {
    let id = resource.id.clone();
    let asking = {
        let id = id.clone();
        move || confirming.with(|c| c.as_deref() == Some(id.as_str()))
    };
    let name = resource.friendly_name.clone();
    let deletable = !matches!(
        resource.allocation_state,
        crate::model::AllocationState::Deleting
            | crate::model::AllocationState::Deleted
            | crate::model::AllocationState::Expired
    );
    let address = resource
        .details
        .addresses
        .first()
        .cloned()
        .or_else(|| resource.details.pod_ip.clone())
        .unwrap_or_default();
    let class = state_class(&resource);
    let state_text = format!(
        "{} · {}",
        resource.allocation_state.as_str(),
        resource.operational_state.as_str()
    );
    let href = format!("/resources/{}", resource.id);
    let label = resource.friendly_name.clone();
    let flavor = resource.flavor_type.as_str();
    let message = resource.status_message.clone();
    let expires = short_time(&resource.expires_at);
    let left =
        is_live(&resource).then(|| super::time_left(&resource.expires_at, &chrono::Utc::now()));
    view! {
        <tr data-testid="resource-row" data-name=name>
            <td>
                <a href=href data-testid="resource-link">
                    {label}
                </a>
            </td>
            <td><span class="badge">{flavor}</span></td>
            <td>
                <span class=class data-testid="resource-state">
                    {state_text}
                </span>
                <div class="hint small">{message}</div>
            </td>
            <td><code>{address}</code></td>
            <td>
                {expires}
                {left.map(|left| view! { <div class="hint small" data-testid="resource-time-left">{left}</div> })}
            </td>
            <td class="actions">
                {(can_write && deletable).then(|| {
                    let id = id.clone();
                    view! {
                        <Show
                            when=asking.clone()
                            fallback={
                                let id = id.clone();
                                move || {
                                    let id = id.clone();
                                    view! {
                                        <button class="danger" data-testid="resource-delete" on:click=move |_| confirming.set(Some(id.clone()))>
                                            "Delete"
                                        </button>
                                    }
                                }
                            }
                        >
                            <span class="confirm">
                                "Delete for good? "
                                <button
                                    class="danger"
                                    data-testid="resource-delete-confirm"
                                    on:click={
                                        let id = id.clone();
                                        move |_| {
                                            delete.dispatch(DeleteResource { id: id.clone() });
                                            confirming.set(None);
                                        }
                                    }
                                >
                                    "Yes, delete"
                                </button>
                                <button on:click=move |_| confirming.set(None)>"Cancel"</button>
                            </span>
                        </Show>
                    }
                })}
            </td>
        </tr>
    }
}

/// `/resources/new`.
#[component]
pub fn RequestPage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <RequestForm viewer /> } /> }
}

#[component]
fn RequestForm(viewer: Viewer) -> impl IntoView {
    let options = Resource::new(|| (), |_| request_options());
    let Some(experiment) = viewer.experiment.clone() else {
        return view! {
            <h1>"Request a resource"</h1>
            <p class="warning">"Requesting resources needs an experiment token: sign out, then sign in again and paste one (`slices experiment jwt <name>`)."</p>
        }
        .into_any();
    };
    let default_expiry = default_expiry(&experiment);
    let max_expiry = experiment
        .max_expires_at
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    view! {
        <h1>"Request a resource"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading the catalog…"</p> }>
            {move || {
                let default_expiry = default_expiry.clone();
                let max_expiry = max_expiry.clone();
                Suspend::new(async move {
                match options.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok((images, flavors)) => view! {
                        <RequestFields images flavors default_expiry max_expiry />
                    }.into_any(),
                }
            })}}
        </Suspense>
    }
    .into_any()
}

/// The request form: field errors appear next to their fields without a reload.
#[island(lazy)]
fn RequestFields(
    images: Vec<DiskImage>,
    flavors: Vec<Flavor>,
    default_expiry: String,
    max_expiry: String,
) -> impl IntoView {
    super::island_hydrated();
    let action = ServerAction::<RequestResource>::new();
    let result = Signal::derive(move || action.value().get());
    view! {
        <section class="card">
            <ActionForm action>
                <div class="grid2">
                    <div>
                        <label for="disk_image_id">"Disk image"</label>
                        <select id="disk_image_id" name="form[disk_image_id]" data-testid="req-image" required>
                            {images.into_iter().map(|i| view! {
                                <option value=i.id.clone()>{format!("{} ({})", i.friendly_name, i.location)}</option>
                            }).collect_view()}
                        </select>
                        <FieldError result field="disk_image_id" />
                    </div>
                    <div>
                        <label for="flavor_id">"Flavor"</label>
                        <select id="flavor_id" name="form[flavor_id]" data-testid="req-flavor" required>
                            {flavors.into_iter().map(|f| view! {
                                <option value=f.id.clone()>{format!("{} — {}: {} vCPU, {} MiB", f.friendly_name, f.flavor_type.as_str(), f.vcpus, f.ram_mib)}</option>
                            }).collect_view()}
                        </select>
                        <FieldError result field="flavor_id" />
                    </div>
                    <div>
                        <label for="friendly_name">"Name"</label>
                        <input id="friendly_name" name="form[friendly_name]" data-testid="req-name" required maxlength="63"
                            placeholder="qkd-alice" autocomplete="off" />
                        <p class="hint small">"Pods: lowercase letters, digits and -, e.g. qkd-alice."</p>
                        <FieldError result field="friendly_name" />
                    </div>
                    <div>
                        <label for="expires_at">"Expires at (UTC)"</label>
                        <input id="expires_at" name="form[expires_at]" type="datetime-local" data-testid="req-expires"
                            value=default_expiry max=max_expiry required />
                        <FieldError result field="expires_at" />
                    </div>
                </div>
                <label for="network_name">"Network (VMs; empty: the project's only network)"</label>
                <input id="network_name" name="form[network_name]" data-testid="req-network" autocomplete="off"
                    placeholder="private" />
                <FieldError result field="network_name" />
                <label for="ssh_authorized_keys">"SSH public keys (one per line)"</label>
                <textarea id="ssh_authorized_keys" name="form[ssh_authorized_keys]" rows="3" data-testid="req-ssh-keys"
                    placeholder="ssh-ed25519 AAAA… you@laptop" spellcheck="false"></textarea>
                <FieldError result field="ssh_authorized_keys" />
                <label for="userdata">"User data (cloud-init for VMs; handed to pods as USERDATA)"</label>
                <textarea id="userdata" name="form[userdata]" rows="5" data-testid="req-userdata"
                    placeholder="#cloud-config" spellcheck="false"></textarea>
                <FieldError result field="userdata" />
                <details class="pod-options" data-testid="req-pod-options">
                    <summary>"Pod options (pods only)"</summary>
                    <label for="env">"Environment (NAME=value, one per line)"</label>
                    <textarea id="env" name="form[env]" rows="3" data-testid="req-env" spellcheck="false"
                        placeholder="KME_ID=alice"></textarea>
                    <FieldError result field="env" />
                    <div class="grid2">
                        <div>
                            <label for="command">"Command (replaces the image's entrypoint)"</label>
                            <input id="command" name="form[command]" data-testid="req-command" autocomplete="off"
                                spellcheck="false" placeholder="/usr/bin/kme" />
                            <FieldError result field="command" />
                        </div>
                        <div>
                            <label for="args">"Arguments"</label>
                            <input id="args" name="form[args]" data-testid="req-args" autocomplete="off"
                                spellcheck="false" placeholder="--port 8443" />
                            <FieldError result field="args" />
                        </div>
                    </div>
                    <label for="ports">"Ports (name:port or name:port/UDP, one per line; exposed by a Service named after the pod)"</label>
                    <textarea id="ports" name="form[ports]" rows="2" data-testid="req-ports" spellcheck="false"
                        placeholder="etsi014:8443"></textarea>
                    <FieldError result field="ports" />
                </details>
                <FormError result fields=&["disk_image_id", "flavor_id", "friendly_name", "expires_at", "network_name", "ssh_authorized_keys", "userdata", "env", "command", "args", "ports"] />
                <button type="submit" class="primary" data-testid="req-submit" disabled=move || action.pending().get()>
                    {move || if action.pending().get() { "Requesting…" } else { "Request" }}
                </button>
            </ActionForm>
        </section>
    }
}

/// `/resources/:id`.
#[component]
pub fn ResourceDetailPage() -> impl IntoView {
    view! { <SignedIn page=|_viewer| view! { <ResourceDetail /> } /> }
}

#[component]
fn ResourceDetail() -> impl IntoView {
    let params = use_params_map();
    let detail = Resource::new(
        move || params.with(|p| p.get("id").unwrap_or_default()),
        resource_detail,
    );
    // `?console=1` (the console panel's form): the VM's console log is read for this render.
    let query = leptos_router::hooks::use_query_map();
    let console_asked = move || query.with_untracked(|q| q.get("console").is_some());
    // `?logs=1&tail=N` (the log panel's form): a Pod's last N lines are read for this render.
    let logs_asked = move || query.with_untracked(|q| q.get("logs").is_some());
    let tail = move || {
        query
            .with_untracked(|q| q.get("tail").and_then(|t| t.parse::<i64>().ok()))
            .unwrap_or(super::pod_log::DEFAULT_TAIL)
    };
    view! {
        <p><A href="/resources">"← Resources"</A></p>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok((resource, tasks)) => {
                        let id = resource.id.clone();
                        // Only a VM has a console; this component is server HTML, so the
                        // server function runs here directly (Nova is asked once, on demand).
                        let console = if resource.flavor_type == crate::model::FlavorType::Vm {
                            let log = match console_asked() {
                                true => Some(console_log(id.clone()).await),
                                false => None,
                            };
                            view! { <ConsolePanel log /> }.into_any()
                        } else {
                            let tail = tail();
                            let log = match logs_asked() {
                                true => Some(super::pod_log::pod_log(id.clone(), tail).await),
                                false => None,
                            };
                            view! { <super::pod_log::PodLogPanel id=id.clone() tail log /> }.into_any()
                        };
                        view! { <ResourceDetailLive id resource tasks /> {console} }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// A resource's facts and task history, refreshed every [`super::REFRESH_MS`].
#[island(lazy)]
fn ResourceDetailLive(id: String, resource: ComputeResource, tasks: Vec<Task>) -> impl IntoView {
    super::island_hydrated();
    let tick = ticker();
    let extend = ServerAction::<ExtendResource>::new();
    let (detail, error) = live(
        (resource, tasks),
        move || (tick.get(), extend.version().get()),
        {
            let id = id.clone();
            move || resource_detail(id.clone())
        },
    );
    let live_now = move || detail.with(|(r, _)| is_live(r));
    view! {
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || {
            let r = detail.with(|(r, _)| r.clone());
            let d = r.details.clone();
            view! {
                <section class="card" data-testid="resource-detail">
                    <h1>{r.friendly_name.clone()}</h1>
                    <dl class="facts">
                        <dt>"State"</dt>
                        <dd><span class=state_class(&r) data-testid="detail-state">{format!("{} · {}", r.allocation_state.as_str(), r.operational_state.as_str())}</span>
                            <div class="hint">{r.status_message.clone()}</div></dd>
                        <dt>"Id"</dt><dd><code>{r.id.clone()}</code></dd>
                        <dt>"Type"</dt><dd>{r.flavor_type.as_str()}</dd>
                        <dt>"Experiment"</dt><dd><code>{r.experiment_id.clone()}</code></dd>
                        <dt>"Requested by"</dt><dd>{r.requested_by.clone().unwrap_or_else(|| "—".into())}</dd>
                        {if r.flavor_type == crate::model::FlavorType::Vm {
                            view! {
                                <dt>"Server"</dt><dd><code data-testid="detail-server-id">{d.server_id.clone().unwrap_or_default()}</code></dd>
                            }.into_any()
                        } else {
                            view! {
                                <dt>"Namespace"</dt><dd><code data-testid="detail-namespace">{d.namespace.clone().unwrap_or_default()}</code></dd>
                                <dt>"Pod"</dt><dd><code data-testid="detail-pod-name">{d.pod_name.clone().unwrap_or_default()}</code></dd>
                                <dt>"Node"</dt><dd>{d.node_name.clone().unwrap_or_default()}</dd>
                                <PodOptionFacts pod=r.pod.clone() service=d.service_name.clone() />
                            }.into_any()
                        }}
                        <dt>"IP"</dt><dd><code data-testid="detail-ip">{d.pod_ip.clone().or_else(|| d.addresses.first().cloned()).unwrap_or_default()}</code></dd>
                        {r.ssh_command.clone().map(|c| view! { <dt>"SSH"</dt><dd><code data-testid="detail-ssh">{c}</code></dd> })}
                        <dt>"Expires"</dt><dd data-testid="detail-expires">{short_time(&r.expires_at)}
                            {is_live(&r).then(|| view! { " · " <span data-testid="detail-time-left">{super::time_left(&r.expires_at, &chrono::Utc::now())}</span> })}</dd>
                        <dt>"Created"</dt><dd>{short_time(&r.created_at)}</dd>
                    </dl>
                </section>
            }
        }}
        <Show when=live_now>
            <ExtendForm id=id.clone() extend />
        </Show>
        {move || {
            let tasks = detail.with(|(_, t)| t.clone());
            view! {
                <section class="card">
                    <h2>"Tasks"</h2>
                    <div class="table-wrap">
                        <table data-testid="task-history">
                            <thead><tr><th>"Task"</th><th>"Status"</th><th>"Progress"</th><th>"Message"</th><th>"Attempts"</th><th>"Updated"</th></tr></thead>
                            <tbody>
                                {tasks.into_iter().rev().map(|t| view! {
                                    <tr data-testid="task-row">
                                        <td>{t.kind.as_str()}</td>
                                        <td>{t.status.as_str()}</td>
                                        <td><progress max="100" value=t.completed></progress>{format!(" {}%", t.completed)}</td>
                                        <td>{t.message.clone()}</td>
                                        <td>{t.attempts}</td>
                                        <td>{short_time(&t.updated_at)}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                </section>
            }
        }}
    }
}

/// A Pod's `env`, `command`/`args`, `ports` and Service as facts of its detail page (nothing
/// for options not set).
#[component]
fn PodOptionFacts(pod: crate::model::PodOptions, service: Option<String>) -> impl IntoView {
    let words = |list: &[String]| {
        list.iter()
            .map(|w| {
                shlex::try_quote(w)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| w.clone())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let command = (!pod.command.is_empty()).then(|| words(&pod.command));
    let args = (!pod.args.is_empty()).then(|| words(&pod.args));
    let env = (!pod.env.is_empty()).then(|| {
        pod.env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let ports = (!pod.ports.is_empty()).then(|| {
        pod.ports
            .iter()
            .map(|p| format!("{} {}/{}", p.name, p.port, p.protocol.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    });
    view! {
        {command.map(|c| view! { <dt>"Command"</dt><dd><code data-testid="detail-command">{c}</code></dd> })}
        {args.map(|a| view! { <dt>"Args"</dt><dd><code data-testid="detail-args">{a}</code></dd> })}
        {env.map(|e| view! { <dt>"Environment"</dt><dd><pre class="env" data-testid="detail-env">{e}</pre></dd> })}
        {ports.map(|p| view! { <dt>"Ports"</dt><dd data-testid="detail-ports">{p}</dd> })}
        {service.map(|s| view! { <dt>"Service"</dt><dd><code data-testid="detail-service">{s}</code></dd> })}
    }
}

/// "Extend by" 1 hour / 1 day / 7 days / a chosen date, as `PATCH /resources/{id}`; the
/// refusal (after the experiment's end, more than 89 days ahead) shows under the form.
#[component]
fn ExtendForm(id: String, extend: ServerAction<ExtendResource>) -> impl IntoView {
    let result = Signal::derive(move || extend.value().get());
    let done = move || {
        extend.value().with(|r| match r {
            Some(Ok(r)) => Some(view! {
                <p class="ok small" data-testid="extend-done">{format!("Extended to {}.", short_time(&r.expires_at))}</p>
            }),
            _ => None,
        })
    };
    view! {
        <section class="card" data-testid="extend">
            <h2>"Extend"</h2>
            <ActionForm action=extend>
                <input type="hidden" name="id" value=id />
                <div class="inline-choices">
                    <label><input type="radio" name="by" value="1h" data-testid="extend-1h" checked />" 1 hour"</label>
                    <label><input type="radio" name="by" value="1d" data-testid="extend-1d" />" 1 day"</label>
                    <label><input type="radio" name="by" value="7d" data-testid="extend-7d" />" 7 days"</label>
                    <label><input type="radio" name="by" value="custom" data-testid="extend-custom" />" until (UTC) "</label>
                    <input type="datetime-local" name="until" aria-label="Extend until (UTC)" data-testid="extend-until" />
                    <button type="submit" data-testid="extend-submit" disabled=move || extend.pending().get()>
                        {move || if extend.pending().get() { "Extending…" } else { "Extend" }}
                    </button>
                </div>
                <FieldError result field="expires_at" />
                <FieldError result field="until" />
                <FormError result fields=&["expires_at", "until"] />
                {done}
            </ActionForm>
        </section>
    }
}

/// A VM's console log (Nova `os-getConsoleOutput`), server HTML: "Show console log" is a
/// GET form (`?console=1`) and the page comes back with the log (`log`, read while rendering),
/// "Refresh" sends it again. Not an island, so the detail page downloads no code for it.
/// Before Nova has a server the answer is a 409, shown in the panel.
#[component]
fn ConsolePanel(log: Option<Result<crate::model::ConsoleLog, AppError>>) -> impl IntoView {
    let shown = log.is_some();
    view! {
        <section class="card" data-testid="console-panel">
            <form method="get" class="page-head">
                <h2>"Console log"</h2>
                <input type="hidden" name="console" value="1" />
                <button type="submit" data-testid="console-show">
                    {if shown { "Refresh" } else { "Show console log" }}
                </button>
            </form>
            {log.map(|r| match r {
                Ok(log) if log.output.is_empty() => view! {
                    <p class="empty" data-testid="console-output">"(no output yet)"</p>
                }.into_any(),
                Ok(log) => view! { <pre class="console" data-testid="console-output">{log.output}</pre> }.into_any(),
                Err(e) => view! { <ErrorBox error=e /> }.into_any(),
            })}
            <p class="hint">{format!("The last {CONSOLE_LINES} lines, as Nova reports them.")}</p>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_form_and_rfc3339() {
        let a = parse_expiry("2026-12-01T12:30").expect("form");
        assert_eq!(a.to_rfc3339(), "2026-12-01T12:30:00+00:00");
        let b = parse_expiry("2026-12-01T13:30:00+01:00").expect("rfc3339");
        assert_eq!(a, b);
        let e = parse_expiry("tomorrow").expect_err("bad");
        assert_eq!(e.field(), Some("expires_at"));
    }
}
