//! The dashboard: one module per feature area, each with its server functions next to the
//! components that use them.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod clouds;
pub mod resources;

use crate::error::AppError;
use crate::model::Viewer;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Redirect, Route, Router, Routes, A};
use leptos_router::{path, SsrMode};

/// The HTML document around the app (server side).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

/// The signed-in user, shared by every page; refetched after sign-in/out.
#[derive(Clone, Copy)]
pub struct ViewerContext(pub Resource<Result<Option<Viewer>, AppError>>);

/// The root component.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let sign_out = ServerAction::<auth::SignOut>::new();
    let viewer = Resource::new(move || sign_out.version().get(), |_| auth::get_viewer());
    provide_context(ViewerContext(viewer));

    // Marks the page as hydrated, so browser tests (and people) know the live parts work.
    Effect::new(move |_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });

    view! {
        <Stylesheet id="leptos" href="/pkg/slices-blueprint.css" />
        <Title text="SLICES blueprint" />
        <Router>
            <header class="topbar">
                <A href="/" attr:class="brand">
                    "SLICES blueprint"
                </A>
                <Nav sign_out />
            </header>
            <main class="page">
                // Async SSR: a page is sent once its data is loaded, so it reads complete
                // without JavaScript; hydration then adds the live parts.
                <Routes fallback=|| view! { <p class="empty">"Page not found."</p> }>
                    <Route path=path!("/") view=|| view! { <Redirect path="/resources" /> } />
                    <Route path=path!("/login") view=auth::LoginPage ssr=SsrMode::Async />
                    <Route path=path!("/catalog") view=catalog::CatalogPage ssr=SsrMode::Async />
                    <Route path=path!("/resources") view=resources::ResourcesPage ssr=SsrMode::Async />
                    <Route path=path!("/resources/new") view=resources::RequestPage ssr=SsrMode::Async />
                    <Route path=path!("/resources/:id") view=resources::ResourceDetailPage ssr=SsrMode::Async />
                    <Route path=path!("/clouds") view=clouds::CloudsPage ssr=SsrMode::Async />
                    <Route path=path!("/admin") view=admin::AdminPage ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn Nav(sign_out: ServerAction<auth::SignOut>) -> impl IntoView {
    let ViewerContext(viewer) = expect_context();
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                match viewer.await {
                    Ok(Some(v)) => {
                        let admin = v.is_admin;
                        view! {
                            <nav class="nav">
                                <A href="/resources" attr:data-testid="nav-resources">
                                    "Resources"
                                </A>
                                <A href="/resources/new" attr:data-testid="nav-new">
                                    "Request"
                                </A>
                                <A href="/catalog" attr:data-testid="nav-catalog">
                                    "Catalog"
                                </A>
                                <A href="/clouds" attr:data-testid="nav-clouds">
                                    "Clouds"
                                </A>
                                <Show when=move || admin>
                                    <A href="/admin" attr:data-testid="nav-admin">
                                        "Admin"
                                    </A>
                                </Show>
                                <span class="nav-user" data-testid="nav-user" title=v.user_id.clone()>
                                    {v.display_name.clone()}
                                    {v.experiment.as_ref().map(|e| view! {
                                        <span class="nav-exp">
                                            {" · "}{e.name.clone().unwrap_or_else(|| e.experiment_id.clone())}
                                        </span>
                                    })}
                                </span>
                                <ActionForm action=sign_out attr:class="inline">
                                    <button type="submit" class="link" data-testid="nav-signout">
                                        "Sign out"
                                    </button>
                                </ActionForm>
                            </nav>
                        }
                            .into_any()
                    }
                    _ => {
                        view! {
                            <nav class="nav">
                                <A href="/login">"Sign in"</A>
                            </nav>
                        }
                            .into_any()
                    }
                }
            })}
        </Transition>
    }
}

/// Shows `page(viewer)` to a signed-in viewer; redirects to `/login` otherwise.
#[component]
pub fn SignedIn<F, IV>(page: F) -> impl IntoView
where
    F: Fn(Viewer) -> IV + Send + Sync + 'static,
    IV: IntoView + 'static,
{
    let ViewerContext(viewer) = expect_context();
    let page = std::sync::Arc::new(page);
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {
                let page = page.clone();
                move || {
                    let page = page.clone();
                    Suspend::new(async move {
                        match viewer.await {
                            Ok(Some(v)) => page(v).into_any(),
                            Ok(None) => view! { <Redirect path="/login" /> }.into_any(),
                            Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                        }
                    })
                }
            }
        </Suspense>
    }
}

/// A red box with an error message.
#[component]
pub fn ErrorBox(error: AppError) -> impl IntoView {
    view! {
        <p class="error" role="alert">
            {error.to_string()}
        </p>
    }
}

/// The message of `error` when it is about `field` (e.g. `resources[0].friendly_name` is
/// about `friendly_name`).
pub fn field_message(error: &AppError, field: &str) -> Option<String> {
    let at = error.field()?;
    let base = at.rsplit('.').next().unwrap_or(at);
    let base = base.split('[').next().unwrap_or(base);
    (base == field).then(|| error.message())
}

/// Renders the error of the last submission when it names `field`.
#[component]
pub fn FieldError<T: Send + Sync + 'static>(
    result: Signal<Option<Result<T, AppError>>>,
    field: &'static str,
) -> impl IntoView {
    move || {
        result.with(|r| match r {
            Some(Err(e)) => field_message(e, field).map(|m| {
                view! {
                    <p class="field-error" data-testid=format!("err-{field}")>
                        {m}
                    </p>
                }
            }),
            _ => None,
        })
    }
}

/// Renders an error of the last submission that no field claims.
#[component]
pub fn FormError<T: Send + Sync + 'static>(
    result: Signal<Option<Result<T, AppError>>>,
    fields: &'static [&'static str],
) -> impl IntoView {
    move || {
        result.with(|r| match r {
            Some(Err(e)) if !fields.iter().any(|f| field_message(e, f).is_some()) => {
                Some(view! { <ErrorBox error=e.clone() /> })
            }
            _ => None,
        })
    }
}

/// `2026-11-22 10:30 UTC`.
pub fn short_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_messages_match_nested_paths() {
        let e = AppError::invalid("resources[0].friendly_name", "bad");
        assert_eq!(field_message(&e, "friendly_name").as_deref(), Some("bad"));
        assert_eq!(field_message(&e, "flavor_id"), None);
        let e = AppError::invalid("ssh_authorized_keys[2]", "not a key");
        assert_eq!(
            field_message(&e, "ssh_authorized_keys").as_deref(),
            Some("not a key")
        );
        assert_eq!(field_message(&AppError::NotFound("x".into()), "x"), None);
    }
}
