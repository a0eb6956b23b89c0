//! `/resources/import`: a SLICES CLI spec file, uploaded or pasted, checked entry by entry
//! (names resolved against the catalog, an error per entry) and then requested in one go.

use super::{ErrorBox, FieldError, FormError, SignedIn};
use crate::error::AppError;
use crate::model::Viewer;
use crate::spec_file::SpecCheck;
use leptos::prelude::*;

/// The entries of `spec` as they would be requested, or why each cannot be.
#[server(endpoint = "spec-check")]
pub async fn check_spec(spec: String) -> Result<Vec<SpecCheck>, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let parsed = crate::ssr::spec_files::parse(&spec)?;
    let (checks, _) =
        crate::ssr::spec_files::check(&state.pool, state.site(), &auth.acting(), &parsed).await?;
    Ok(checks)
}

/// Requests every entry of `spec` (all or nothing) for the session's experiment.
#[server(endpoint = "spec-import")]
pub async fn import_spec(
    spec: String,
    expires_at: String,
    #[server(default)] ssh_authorized_keys: String,
) -> Result<usize, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let Some(experiment) = auth.experiment.as_ref() else {
        return Err(AppError::Forbidden(
            "requesting resources needs an experiment: attach one on your account page (/account)"
                .into(),
        ));
    };
    let parsed = crate::ssr::spec_files::parse(&spec)?;
    let keys = super::resources::key_lines(&ssh_authorized_keys);
    let expires_at = super::resources::parse_expiry(&expires_at)?;
    let created =
        crate::ssr::spec_files::import(&state.resources(), experiment, &parsed, expires_at, keys)
            .await?;
    leptos_axum::redirect("/experiment");
    Ok(created.resources.len())
}

/// `/resources/import`.
#[component]
pub fn ImportPage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <Import viewer /> } /> }
}

#[component]
fn Import(viewer: Viewer) -> impl IntoView {
    let expiry = viewer
        .experiment
        .as_ref()
        .map(super::resources::default_expiry);
    view! {
        <h1>"Import a spec file"</h1>
        <p class="hint">"The SLICES CLI's resource spec ("<code>"slices bi create-from-file"</code>"): "
            <code>{r#"{"resources":[{"friendly_name","site_id","flavor","disk_image","cloudinit_file"}]}"#}</code>
            ", flavor and image by name. Paste the cloud-init text as "<code>"userdata"</code>"; pods may add "
            <code>"env"</code>", "<code>"command"</code>", "<code>"args"</code>", "<code>"ports"</code>"."</p>
        {match expiry {
            Some(expiry) => view! { <ImportForm expiry /> }.into_any(),
            None => view! { <p class="warning">"Importing needs an experiment: attach one on your account page."</p> }.into_any(),
        }}
    }
}

#[island(lazy)]
fn ImportForm(expiry: String) -> impl IntoView {
    super::island_hydrated();
    let (text, set_text) = signal(String::new());
    let check = Action::new(move |spec: &String| check_spec(spec.clone()));
    let import = ServerAction::<ImportSpec>::new();
    let result = Signal::derive(move || import.value().get());
    view! {
        <section class="card">
            <ActionForm action=import>
                <label for="spec-file">"Spec file"</label>
                <input type="file" id="spec-file" accept=".json,application/json" data-testid="spec-file"
                    on:change=move |ev| super::clouds::read_picked_file(ev, set_text) />
                <textarea id="spec" name="spec" rows="10" spellcheck="false" data-testid="spec-text"
                    prop:value=text on:input=move |ev| set_text.set(event_target_value(&ev))></textarea>
                <FieldError result field="spec" />
                <button type="button" data-testid="spec-check" on:click=move |_| { check.dispatch(text.get_untracked()); }>
                    "Check"
                </button>
                {move || check.value().get().map(|r| match r {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok(entries) => view! { <SpecTable entries /> }.into_any(),
                })}
                <div class="grid2">
                    <div>
                        <label for="expires_at">"Expires at (UTC)"</label>
                        <input id="expires_at" name="expires_at" type="datetime-local" value=expiry required />
                        <FieldError result field="expires_at" />
                    </div>
                    <div>
                        <label for="ssh_authorized_keys">"SSH public keys (one per line)"</label>
                        <textarea id="ssh_authorized_keys" name="ssh_authorized_keys" rows="2" spellcheck="false"></textarea>
                    </div>
                </div>
                <FormError result fields=&["spec", "expires_at"] />
                <button type="submit" class="primary" data-testid="spec-import" disabled=move || import.pending().get()>
                    {move || if import.pending().get() { "Requesting…" } else { "Request all" }}
                </button>
            </ActionForm>
        </section>
    }
}

#[component]
fn SpecTable(entries: Vec<SpecCheck>) -> impl IntoView {
    let bad = entries.iter().filter(|e| e.error.is_some()).count();
    view! {
        <p data-testid="spec-summary" class=if bad == 0 { "ok" } else { "warning" }>
            {if bad == 0 { format!("All {} entries can be requested.", entries.len()) } else { format!("{bad} of {} entries need fixing.", entries.len()) }}
        </p>
        <div class="table-wrap">
            <table data-testid="spec-table">
                <thead><tr><th>"Name"</th><th>"Image"</th><th>"Flavor"</th><th>"Type"</th><th>"Problem"</th></tr></thead>
                <tbody>
                    {entries.into_iter().map(|e| {
                        let class = if e.error.is_some() { "bad" } else { "" };
                        view! {
                        <tr data-testid="spec-row" class=class>
                            <td>{e.friendly_name}</td>
                            <td>{e.disk_image}</td>
                            <td>{e.flavor}</td>
                            <td>{e.flavor_type.map(|t| t.as_str()).unwrap_or("—")}</td>
                            <td data-testid="spec-error">{e.error.unwrap_or_default()}</td>
                        </tr>
                    }}).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
