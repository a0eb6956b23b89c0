//! `/account`: who is signed in and how, the experiments attached to the account (switch,
//! attach with an experiment token, detach), sign-out and sign-out everywhere.

use super::{ErrorBox, FieldError, SignedIn};
use crate::error::AppError;
use crate::model::Viewer;
use leptos::prelude::*;

/// Attaches the experiment of a pasted experiment token and makes it current.
#[server(endpoint = "attach-experiment")]
pub async fn attach_experiment(experiment_token: String) -> Result<(), AppError> {
    let (state, session, auth) = crate::ssr::session::require_with_session().await?;
    if experiment_token.trim().is_empty() {
        return Err(AppError::invalid(
            "experiment_token",
            "paste an experiment token (`slices experiment jwt <name>`)",
        ));
    }
    crate::ssr::session::attach_experiment(&state, &session, &auth, &experiment_token).await?;
    leptos_axum::redirect("/resources");
    Ok(())
}

/// Makes one of the attached experiments current (empty: none).
#[server(endpoint = "switch-experiment")]
pub async fn switch_experiment(experiment_id: String) -> Result<(), AppError> {
    let (_state, session, auth) = crate::ssr::session::require_with_session().await?;
    let id = Some(experiment_id.trim()).filter(|s| !s.is_empty());
    crate::ssr::session::switch_experiment(&session, &auth, id).await?;
    leptos_axum::redirect("/resources");
    Ok(())
}

/// Forgets an attached experiment.
#[server(endpoint = "detach-experiment")]
pub async fn detach_experiment(experiment_id: String) -> Result<(), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    crate::ssr::accounts::detach(&state.pool, &auth.user.subject, experiment_id.trim()).await?;
    leptos_axum::redirect("/account");
    Ok(())
}

/// Ends every session of the signed-in user (all browsers), this one included.
#[server(endpoint = "sign-out-everywhere")]
pub async fn sign_out_everywhere() -> Result<(), AppError> {
    let (state, session, auth) = crate::ssr::session::require_with_session().await?;
    crate::ssr::session::sign_out_everywhere(&state, &session, &auth).await?;
    leptos_axum::redirect("/login");
    Ok(())
}

/// `/account`.
#[component]
pub fn AccountPage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <Account viewer /> } /> }
}

#[component]
fn Account(viewer: Viewer) -> impl IntoView {
    let current = viewer.experiment.as_ref().map(|e| e.experiment_id.clone());
    let rows = viewer
        .experiments
        .iter()
        .map(|e| {
            let is_current = Some(&e.experiment_id) == current.as_ref();
            let id = e.experiment_id.clone();
            view! {
                <tr data-testid="account-experiment">
                    <td>
                        <code>{e.name.clone().unwrap_or_else(|| e.experiment_id.clone())}</code>
                        {is_current.then(|| view! { <span class="badge ok">"current"</span> })}
                    </td>
                    <td><code>{e.project_id.clone()}</code></td>
                    <td>{super::short_time(&e.max_expires_at)}</td>
                    <td class="actions">
                        <ExperimentActions id is_current />
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h1>"Account"</h1>
        <section class="card">
            <p data-testid="account-user">
                "Signed in as " <strong>{viewer.display_name.clone()}</strong> " ("
                <code>{viewer.user_id.clone()}</code> ") with "
                <span data-testid="account-method">{viewer.signed_in_with.clone()}</span> "."
            </p>
            <SignOutEverywhereButton />
        </section>
        <section class="card">
            <h2>"Experiments"</h2>
            <p class="hint">
                "An experiment stays attached until it expires: the dashboard keeps acting for you after the experiment token's few minutes are over."
            </p>
            {if viewer.experiments.is_empty() {
                view! { <p class="empty" data-testid="account-no-experiments">"No experiment attached yet."</p> }.into_any()
            } else {
                view! {
                    <table class="table">
                        <thead><tr><th>"Experiment"</th><th>"Project"</th><th>"Until"</th><th></th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                }.into_any()
            }}
            <AttachForm />
        </section>
    }
}

#[island]
fn ExperimentActions(id: String, is_current: bool) -> impl IntoView {
    super::island_hydrated();
    let switch = ServerAction::<SwitchExperiment>::new();
    let detach = ServerAction::<DetachExperiment>::new();
    let errors = move || {
        switch
            .value()
            .get()
            .and_then(|r| r.err())
            .or_else(|| detach.value().get().and_then(|r| r.err()))
            .map(|e| view! { <ErrorBox error=e /> })
    };
    let switch_id = id.clone();
    view! {
        {(!is_current).then(|| view! {
            <ActionForm action=switch attr:class="inline">
                <input type="hidden" name="experiment_id" value=switch_id />
                <button type="submit" data-testid="account-switch">"Act for this one"</button>
            </ActionForm>
        })}
        <ActionForm action=detach attr:class="inline">
            <input type="hidden" name="experiment_id" value=id />
            <button type="submit" class="danger" data-testid="account-detach">"Detach"</button>
        </ActionForm>
        {errors}
    }
}

#[island]
fn AttachForm() -> impl IntoView {
    super::island_hydrated();
    let attach = ServerAction::<AttachExperiment>::new();
    let result = Signal::derive(move || attach.value().get());
    view! {
        <ActionForm action=attach>
            <label for="experiment_token">"Attach an experiment"</label>
            <p class="hint"><code>"slices experiment jwt <experiment name>"</code></p>
            <textarea
                id="experiment_token"
                name="experiment_token"
                rows="3"
                required
                autocomplete="off"
                spellcheck="false"
                data-testid="attach-token"
            ></textarea>
            <FieldError result field="experiment_token" />
            {move || result.get().and_then(|r| r.err()).filter(|e| e.field().is_none()).map(|e| view! { <ErrorBox error=e /> })}
            <button type="submit" class="primary" data-testid="attach-submit">"Attach"</button>
        </ActionForm>
    }
}

#[island]
fn SignOutEverywhereButton() -> impl IntoView {
    super::island_hydrated();
    let action = ServerAction::<SignOutEverywhere>::new();
    view! {
        <ActionForm action attr:class="inline">
            <button type="submit" class="danger" data-testid="sign-out-everywhere">
                "Sign out everywhere"
            </button>
        </ActionForm>
        {move || action.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
    }
}
