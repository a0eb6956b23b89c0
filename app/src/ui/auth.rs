//! Sign-in by pasting SLICES tokens, the dev sign-in, sign-out.

use super::{ErrorBox, FieldError};
use crate::error::AppError;
use crate::model::Viewer;
use leptos::prelude::*;

/// The signed-in user (never a token), or `None`.
#[server(endpoint = "viewer")]
pub async fn get_viewer() -> Result<Option<Viewer>, AppError> {
    use crate::ssr::session;
    let state = crate::ssr::state::app_state()?;
    let session = crate::ssr::session::extract().await?;
    Ok(session::current(&state, &session)
        .await?
        .map(|a| a.viewer()))
}

/// Which sign-ins the site offers: (the dev issuer's one-click sign-in, "Sign in with
/// SLICES").
#[server(endpoint = "sign-in-options")]
pub async fn sign_in_options() -> Result<(bool, bool), AppError> {
    let state = crate::ssr::state::app_state()?;
    Ok((state.auth.dev_issuer().is_some(), state.oidc.is_some()))
}

/// Signs in with a user token and, optionally, an experiment token.
#[server(endpoint = "sign-in")]
pub async fn sign_in(user_token: String, experiment_token: String) -> Result<(), AppError> {
    let state = crate::ssr::state::app_state()?;
    let session = crate::ssr::session::extract().await?;
    if user_token.trim().is_empty() {
        return Err(AppError::invalid(
            "user_token",
            "paste your user token (`slices auth id-token <url>`)",
        ));
    }
    let experiment = Some(experiment_token.trim()).filter(|t| !t.is_empty());
    crate::ssr::session::sign_in(
        &state,
        &session,
        &user_token,
        experiment,
        crate::ssr::session::SignInMethod::Token,
    )
    .await?;
    leptos_axum::redirect("/resources");
    Ok(())
}

/// One-click sign-in with dev tokens (dev issuer only): `admin` or `user`.
#[server(endpoint = "dev-sign-in")]
pub async fn dev_sign_in(role: String) -> Result<(), AppError> {
    use std::time::Duration;
    let state = crate::ssr::state::app_state()?;
    let session = crate::ssr::session::extract().await?;
    let dev = state
        .auth
        .dev_issuer()
        .ok_or_else(|| AppError::Forbidden("the dev issuer is off on this site".into()))?;
    let (user_id, name) = match role.as_str() {
        "admin" => (crate::ssr::config::DEV_ADMIN_USER_ID, "Dev Admin"),
        "user" => ("user_dev.local_alice", "Alice (dev)"),
        _ => return Err(AppError::invalid("role", "`admin` or `user`")),
    };
    let audience = state.auth.audience().to_string();
    let mint = |r| dev.mint(&r).map_err(crate::ssr::internal);
    let user_token = mint(dev.user_token(&audience, user_id, Some(name)))?;
    let experiment_token = mint(dev.experiment_token(
        &audience,
        &state.config.auth.claims,
        "exp_dev.local_demo",
        "proj_dev.local_qkd",
        Some(user_id),
        None,
        Duration::from_secs(8 * 3600),
    ))?;
    crate::ssr::session::sign_in(
        &state,
        &session,
        &user_token,
        Some(&experiment_token),
        crate::ssr::session::SignInMethod::Dev,
    )
    .await?;
    leptos_axum::redirect("/resources");
    Ok(())
}

/// Signs out.
#[server(endpoint = "sign-out")]
pub async fn sign_out() -> Result<(), AppError> {
    let session = crate::ssr::session::extract().await?;
    let state = crate::ssr::state::app_state()?;
    crate::ssr::session::sign_out(&state, &session).await?;
    leptos_axum::redirect("/login");
    Ok(())
}

/// `/login`.
#[component]
pub fn LoginPage() -> impl IntoView {
    let options = Resource::new(|| (), |_| sign_in_options());
    let query = leptos_router::hooks::use_query_map();
    let error = move || query.with(|q| q.get("error"));
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                let (dev_enabled, oidc_enabled) = options.await.unwrap_or((false, false));
                view! {
                    {error().map(|e| view! {
                        <section class="card narrow">
                            <p class="error" role="alert" data-testid="login-oidc-error">{e}</p>
                        </section>
                    })}
                    {oidc_enabled.then(|| view! {
                        <section class="card narrow">
                            <h1>"Sign in with SLICES"</h1>
                            <p class="hint">"Your SLICES account, through the SLICES portal."</p>
                            <a href="/auth/login" rel="external" class="button primary" data-testid="login-oidc">
                                "Sign in with SLICES"
                            </a>
                        </section>
                    })}
                    <SignInForms dev_enabled />
                }
            })}
        </Suspense>
    }
}

/// The sign-in forms. Both answer with a redirect to `/resources` (a full page load, which
/// also renders the navigation for the new session); errors stay next to the fields.
#[island(lazy)]
fn SignInForms(dev_enabled: bool) -> impl IntoView {
    super::island_hydrated();
    let sign_in = ServerAction::<SignIn>::new();
    let dev = ServerAction::<DevSignIn>::new();
    let result = Signal::derive(move || sign_in.value().get());
    view! {
        <section class="card narrow">
            <h1>"Sign in"</h1>
            <p class="hint">
                "Paste your SLICES tokens. Your user token says who you are: it is checked once and only your user id is kept in the session. An experiment token attaches its experiment to your account until the experiment expires, so you can request and delete its resources after the token itself has run out."
            </p>
            <ActionForm action=sign_in>
                <label for="user_token">"User token"</label>
                <p class="hint"><code>"slices auth id-token <this site's URL>"</code></p>
                <textarea
                    id="user_token"
                    name="user_token"
                    rows="3"
                    required
                    autocomplete="off"
                    spellcheck="false"
                    data-testid="login-user-token"
                ></textarea>
                <FieldError result field="user_token" />
                <label for="experiment_token">"Experiment token (optional)"</label>
                <p class="hint"><code>"slices experiment jwt <experiment name>"</code></p>
                <textarea
                    id="experiment_token"
                    name="experiment_token"
                    rows="3"
                    autocomplete="off"
                    spellcheck="false"
                    data-testid="login-experiment-token"
                ></textarea>
                <FieldError result field="experiment_token" />
                <div data-testid="login-error-box">
                    {move || {
                        result.with(|r| match r {
                            Some(Err(e)) => Some(view! {
                                <p class="error" role="alert" data-testid="login-error">{e.to_string()}</p>
                            }),
                            _ => None,
                        })
                    }}
                </div>
                <button type="submit" class="primary" data-testid="login-submit">
                    "Sign in"
                </button>
            </ActionForm>
            {dev_enabled.then(|| view! {
                <div class="dev-signin">
                    <p class="hint">"Dev issuer is on (local runs only):"</p>
                    <ActionForm action=dev attr:class="inline">
                        <input type="hidden" name="role" value="admin" />
                        <button type="submit" data-testid="dev-signin-admin">"Dev sign-in as admin"</button>
                    </ActionForm>
                    <ActionForm action=dev attr:class="inline">
                        <input type="hidden" name="role" value="user" />
                        <button type="submit" data-testid="dev-signin-user">"Dev sign-in as user"</button>
                    </ActionForm>
                    {move || dev.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
                </div>
            })}
        </section>
    }
}
