//! The dashboard: one module per feature area, each with its server functions next to the
//! components that use them.
//!
//! Islands (Leptos `islands` mode): pages render on the server, and only the parts marked
//! `#[island]` — the live resource list and detail, and the forms — are hydrated in the
//! browser. Everything else (layout, navigation, catalog tables) is plain HTML that never
//! ships as WebAssembly, so the bundle holds just the interactive code. Islands get their
//! first data as props (serialized into the page by the server); live ones then refresh
//! themselves through server functions (see [`live`]).

pub mod account;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clouds;
pub mod experiment;
pub mod pod_log;
pub mod resources;
pub mod spec_import;
pub mod templates;

use crate::error::AppError;
use crate::model::Viewer;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Redirect, Route, Router, Routes, A};
use leptos_router::{path, SsrMode};

/// The HTML document around the app (server side).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    // The inline scripts carry the nonce the page's Content Security Policy names.
    #[cfg(feature = "ssr")]
    crate::ssr::web_security::use_page_nonce();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <AutoReload options=options.clone() />
                <HydrationScripts options islands=true />
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
                    <Route path=path!("/resources/import") view=spec_import::ImportPage ssr=SsrMode::Async />
                    <Route path=path!("/resources/:id") view=resources::ResourceDetailPage ssr=SsrMode::Async />
                    <Route path=path!("/experiment") view=experiment::ExperimentPage ssr=SsrMode::Async />
                    <Route path=path!("/templates") view=templates::TemplatesPage ssr=SsrMode::Async />
                    <Route path=path!("/templates/:id") view=templates::TemplatePage ssr=SsrMode::Async />
                    <Route path=path!("/clouds") view=clouds::CloudsPage ssr=SsrMode::Async />
                    <Route path=path!("/admin") view=admin::AdminPage ssr=SsrMode::Async />
                    <Route path=path!("/admin/audit") view=audit::AuditPage ssr=SsrMode::Async />
                    <Route path=path!("/account") view=account::AccountPage ssr=SsrMode::Async />
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
                                <A href="/experiment" attr:data-testid="nav-experiment">
                                    "Experiment"
                                </A>
                                <A href="/templates" attr:data-testid="nav-templates">
                                    "Templates"
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
                                    <A href="/admin" exact=true attr:data-testid="nav-admin">
                                        "Admin"
                                    </A>
                                    <A href="/admin/audit" attr:data-testid="nav-audit">
                                        "Audit"
                                    </A>
                                </Show>
                                <A href="/account" attr:class="nav-user" attr:data-testid="nav-user" attr:title=v.user_id.clone()>
                                    {v.display_name.clone()}
                                    {v.experiment.as_ref().map(|e| view! {
                                        <span class="nav-exp">
                                            {" · "}{e.name.clone().unwrap_or_else(|| e.experiment_id.clone())}
                                        </span>
                                    })}
                                </A>
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
    // A session that ended mid-use: sign in again in another tab, and this page (with what
    // was typed into it) stays as it is for a second try.
    let signed_out = matches!(error, AppError::Unauthenticated(_));
    view! {
        <p class="error" role="alert">
            {error.to_string()}
            {signed_out.then(|| view! {
                " "
                <a href="/login" target="_blank" rel="noopener" data-testid="sign-in-again">
                    "Sign in again (new tab)"
                </a>
                ", then send this form again: what you entered is kept."
            })}
        </p>
    }
}

/// The message of `error` when it is about `field` (e.g. `resources[0].friendly_name` is
/// about `friendly_name`).
pub fn field_message(error: &AppError, field: &str) -> Option<String> {
    let at = error.field()?;
    let base = at.rsplit('.').next().unwrap_or(at);
    let base = base.split('[').next().unwrap_or(base);
    // `resources[0].env[2].name` is about the `env` field of a one-resource form.
    let option = at
        .strip_prefix("resources[")
        .and_then(|rest| rest.split_once("].").map(|(_, rest)| rest))
        .map(|rest| rest.split(['.', '[']).next().unwrap_or(rest));
    (base == field || option == Some(field)).then(|| error.message())
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

/// How often live islands refresh, milliseconds.
pub const REFRESH_MS: u64 = 1500;

thread_local! {
    /// Islands of this page not yet hydrated (browser only; set by [`start_hydration`]).
    static ISLANDS_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks `<body data-hydrated="true">`, so browser tests (and people) know the live parts
/// work.
fn mark_hydrated() {
    if let Some(body) = document().body() {
        let _ = body.set_attribute("data-hydrated", "true");
    }
}

/// Called by the browser entry point before Leptos's loader hydrates the islands: counts the
/// page's `<leptos-island>` elements; a page without islands is marked hydrated at once.
/// (Islands are lazy: each loads its own code first, so "hydrated" means all of them ran.)
#[cfg(feature = "hydrate")]
pub fn start_hydration() {
    let islands = document()
        .query_selector_all("leptos-island")
        .map(|list| list.length())
        .unwrap_or(0);
    ISLANDS_LEFT.with(|left| left.set(islands));
    if islands == 0 {
        mark_hydrated();
    }
}

/// Every island calls this first: once the last island of the page has hydrated (its
/// effects run right after), the page is marked hydrated.
pub fn island_hydrated() {
    Effect::new(|_| {
        ISLANDS_LEFT.with(|left| {
            let now = left.get().saturating_sub(1);
            left.set(now);
            if now == 0 {
                mark_hydrated();
            }
        })
    });
}

/// A signal that ticks every [`REFRESH_MS`] in the browser (never on the server).
pub fn ticker() -> ReadSignal<u64> {
    let (tick, set_tick) = signal(0u64);
    Effect::new(move |_| {
        if let Ok(handle) = set_interval_with_handle(
            move || set_tick.update(|t| *t += 1),
            std::time::Duration::from_millis(REFRESH_MS),
        ) {
            on_cleanup(move || handle.clear());
        }
    });
    tick
}

/// A value an island got from the server as a prop, kept fresh in the browser: `fetch` runs
/// again whenever `deps` changes (e.g. a [`ticker`] or an action's version). Answers that
/// arrive out of order are dropped (only the newest request's answer is kept); a failed
/// refresh keeps the last good value and sets the error signal until the next success.
pub fn live<T, D, Fut>(
    initial: T,
    deps: impl Fn() -> D + 'static,
    fetch: impl Fn() -> Fut + 'static,
) -> (RwSignal<T>, RwSignal<Option<AppError>>)
where
    T: Send + Sync + 'static,
    D: 'static,
    Fut: std::future::Future<Output = Result<T, AppError>> + 'static,
{
    use std::cell::Cell;
    use std::rc::Rc;
    let value = RwSignal::new(initial);
    let error = RwSignal::new(None::<AppError>);
    let newest = Rc::new(Cell::new(0u64));
    Effect::watch(
        deps,
        move |_, _, _| {
            let ticket = newest.get() + 1;
            newest.set(ticket);
            let newest = newest.clone();
            let answer = fetch();
            leptos::task::spawn_local(async move {
                let answer = answer.await;
                if newest.get() != ticket {
                    return;
                }
                match answer {
                    Ok(v) => {
                        value.set(v);
                        error.set(None);
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        },
        false,
    );
    (value, error)
}

/// `2026-11-22 10:30 UTC`.
pub fn short_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long until `t`, seen at `now`, in words a glance takes in: `expired`, `in 40 s`,
/// `in 45 min`, `in 3 h 5 min`, `in 2 days 4 h`.
pub fn time_left(t: &chrono::DateTime<chrono::Utc>, now: &chrono::DateTime<chrono::Utc>) -> String {
    let secs = (*t - *now).num_seconds();
    if secs <= 0 {
        return "expired".into();
    }
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("in {secs} s"),
        (0, 0, m) => format!("in {m} min"),
        (0, h, m) => format!("in {h} h {m} min"),
        (1, h, _) => format!("in 1 day {h} h"),
        (d, h, _) => format!("in {d} days {h} h"),
    }
}

/// Whether `t` comes within the next 24 hours after `now` (and has not passed).
pub fn within_a_day(
    t: &chrono::DateTime<chrono::Utc>,
    now: &chrono::DateTime<chrono::Utc>,
) -> bool {
    *t > *now && *t - *now <= chrono::Duration::hours(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_at_a_glance() {
        let now = chrono::Utc::now();
        let at = |secs: i64| time_left(&(now + chrono::Duration::seconds(secs)), &now);
        assert_eq!(at(-5), "expired");
        assert_eq!(at(40), "in 40 s");
        assert_eq!(at(45 * 60 + 10), "in 45 min");
        assert_eq!(at(3 * 3600 + 5 * 60), "in 3 h 5 min");
        assert_eq!(at(86_400 + 2 * 3600), "in 1 day 2 h");
        assert_eq!(at(2 * 86_400 + 4 * 3600 + 59), "in 2 days 4 h");
        assert!(within_a_day(&(now + chrono::Duration::hours(23)), &now));
        assert!(!within_a_day(&(now + chrono::Duration::hours(25)), &now));
        assert!(!within_a_day(&(now - chrono::Duration::hours(1)), &now));
    }

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
