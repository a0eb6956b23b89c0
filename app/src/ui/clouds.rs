//! `/clouds`: the signed-in user's OpenStack `clouds.yaml` — upload (file picker or paste),
//! the redacted summary, the default cloud, "Test connection", delete. The file itself never
//! comes back to the browser: only [`CloudsYamlSummary`] does.

use super::{short_time, ErrorBox, FieldError, SignedIn};
use crate::error::AppError;
use crate::model::{CloudsYamlSummary, ConnectionTest};
use leptos::prelude::*;

#[cfg(feature = "ssr")]
async fn owner() -> Result<(crate::ssr::state::AppState, String), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let user = crate::ssr::access::credentials_owner(&auth.user)?.to_string();
    Ok((state, user))
}

/// The user's redacted clouds.yaml summary, `None` when nothing is uploaded.
#[server(endpoint = "my-clouds")]
pub async fn my_clouds() -> Result<Option<CloudsYamlSummary>, AppError> {
    let (state, user) = owner().await?;
    match crate::ssr::clouds::summary(&state.pool, &user).await {
        Ok(summary) => Ok(Some(summary)),
        Err(AppError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Validates and stores (replacing) the user's clouds.yaml; `default_cloud` may be empty.
#[server(endpoint = "upload-clouds")]
pub async fn upload_clouds(
    text: String,
    default_cloud: String,
) -> Result<CloudsYamlSummary, AppError> {
    let text = zeroize::Zeroizing::new(text);
    let (state, user) = owner().await?;
    if text.trim().is_empty() {
        return Err(AppError::invalid(
            "text",
            "paste your clouds.yaml or pick the file",
        ));
    }
    let default_cloud = Some(default_cloud.trim()).filter(|d| !d.is_empty());
    let summary =
        crate::ssr::clouds::store(&state.pool, &state.clouds_keys, &user, &text, default_cloud)
            .await?;
    leptos_axum::redirect("/clouds");
    Ok(summary)
}

/// Picks the default cloud.
#[server(endpoint = "default-cloud")]
pub async fn set_default_cloud(name: String) -> Result<CloudsYamlSummary, AppError> {
    let (state, user) = owner().await?;
    let summary = crate::ssr::clouds::set_default(&state.pool, &user, name.trim()).await?;
    leptos_axum::redirect("/clouds");
    Ok(summary)
}

/// Forgets the user's clouds.yaml.
#[server(endpoint = "delete-clouds")]
pub async fn delete_clouds() -> Result<(), AppError> {
    let (state, user) = owner().await?;
    crate::ssr::clouds::remove(&state.pool, &user).await?;
    leptos_axum::redirect("/clouds");
    Ok(())
}

/// The session key of the last connection test's answer (shown by `/clouds`).
#[cfg(feature = "ssr")]
const LAST_TEST_KEY: &str = "slices.cloud_test";

/// How long `/clouds` keeps showing the last connection test's answer, seconds.
#[cfg(feature = "ssr")]
const LAST_TEST_SHOWN_SECS: i64 = 300;

/// The cloud a connection test was for, and what it gave.
pub type TestedCloud = (String, Result<ConnectionTest, AppError>);

/// "Test connection": authenticates against Keystone with one cloud and lists the images it
/// sees. A POST (rate-limited: it makes the server call out); the answer (a
/// [`TestedCloud`], with the time) is kept in the session, replacing the one before, and the
/// page it redirects to (`/clouds`) shows it under that cloud for 5 minutes.
#[server(endpoint = "test-cloud")]
pub async fn test_cloud(cloud: String) -> Result<(), AppError> {
    let (state, user) = owner().await?;
    let cloud = cloud.trim().to_string();
    let result = crate::ssr::clouds::test_connection(
        &state.pool,
        &state.clouds_keys,
        &state.openstack,
        &user,
        Some(&cloud),
    )
    .await;
    let session = crate::ssr::session::extract().await?;
    let tested: TestedCloud = (cloud, result);
    session
        .insert(LAST_TEST_KEY, (tested, chrono::Utc::now()))
        .await
        .map_err(crate::ssr::internal)?;
    leptos_axum::redirect("/clouds");
    Ok(())
}

/// The answer of the last "Test connection" of this session, while it is recent. Read-only:
/// a page may ask more than once while it renders, and each time gets the same answer.
#[server(endpoint = "last-cloud-test")]
pub async fn last_cloud_test() -> Result<Option<TestedCloud>, AppError> {
    let _ = owner().await?;
    let session = crate::ssr::session::extract().await?;
    let kept = session
        .get::<(TestedCloud, chrono::DateTime<chrono::Utc>)>(LAST_TEST_KEY)
        .await
        .map_err(crate::ssr::internal)?;
    let recent = chrono::Duration::seconds(LAST_TEST_SHOWN_SECS);
    Ok(kept
        .filter(|(_, at)| chrono::Utc::now() - *at < recent)
        .map(|(tested, _)| tested))
}

#[component]
pub fn CloudsPage() -> impl IntoView {
    view! { <SignedIn page=|_viewer| view! { <CloudsLoader /> } /> }
}

/// The page: the summary and its buttons are server HTML (plain forms posting to the server
/// functions, which redirect back here; "Delete" confirms through a `<details>` disclosure);
/// "Test connection" posts too, and the page it comes back to shows the answer under that
/// cloud (no network call on GET); only the upload form is an island.
#[component]
fn CloudsLoader() -> impl IntoView {
    let current = Resource::new(|| (), |_| my_clouds());
    // No island, so the page downloads only the upload form's code.
    let tested = Resource::new(|| (), |_| async { last_cloud_test().await.ok().flatten() });
    // Errors of the no-JavaScript forms come back in the URL (Leptos's `ServerActionError`).
    let set_default = ServerAction::<SetDefaultCloud>::new();
    let remove = ServerAction::<DeleteClouds>::new();
    let test = ServerAction::<TestCloud>::new();
    view! {
        <h1>"OpenStack credentials"</h1>
        <p class="hint">
            "Your VMs are created with your own OpenStack account. Upload your "
            <code>"clouds.yaml"</code>
            " once (password or application credential clouds); it is stored encrypted and never shown again — only the summary below."
        </p>
        {move || set_default.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
        {move || remove.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
        {move || test.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (current, tested) = (current.await, tested.await);
                match current {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok(None) => view! {
                        <p class="empty" data-testid="clouds-none">"No clouds.yaml uploaded yet."</p>
                    }.into_any(),
                    Ok(Some(summary)) => view! { <CloudsSummary summary tested test set_default remove /> }.into_any(),
                }
            })}
        </Suspense>
        <UploadForm />
    }
}

/// Reads the picked file into the paste box (the browser reads it; nothing is sent yet).
#[cfg(feature = "hydrate")]
pub(crate) fn read_picked_file(ev: leptos::ev::Event, set_text: WriteSignal<String>) {
    use wasm_bindgen::JsCast as _;
    let Some(input) = ev
        .target()
        .and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
    else {
        return;
    };
    let Some(file) = input.files().and_then(|files| files.get(0)) else {
        return;
    };
    leptos::task::spawn_local(async move {
        if let Ok(value) = wasm_bindgen_futures::JsFuture::from(file.text()).await {
            if let Some(text) = value.as_string() {
                set_text.set(text);
            }
        }
    });
}

#[cfg(not(feature = "hydrate"))]
pub(crate) fn read_picked_file(_ev: leptos::ev::Event, _set_text: WriteSignal<String>) {}

/// The upload form (an island: the file picker fills the paste box, errors name the field
/// and line without a reload; a stored file reloads the page, which shows the new summary).
#[island(lazy)]
fn UploadForm() -> impl IntoView {
    super::island_hydrated();
    let upload = ServerAction::<UploadClouds>::new();
    let upload_result = Signal::derive(move || upload.value().get());
    let (text, set_text) = signal(String::new());
    view! {
        <section class="card">
            <h2>"Upload clouds.yaml"</h2>
            <ActionForm action=upload>
                <label>
                    "File"
                    <input type="file" accept=".yaml,.yml,text/yaml" data-testid="clouds-file"
                        on:change=move |ev| read_picked_file(ev, set_text) />
                </label>
                <label>
                    "…or paste it"
                    <textarea name="text" rows="12" spellcheck="false" class="mono" data-testid="clouds-text"
                        placeholder="clouds:\n  mycloud:\n    auth:\n      auth_url: https://keystone.example.org:5000/v3\n      …"
                        prop:value=move || text.get()
                        on:input=move |ev| set_text.set(event_target_value(&ev))></textarea>
                </label>
                <FieldError result=upload_result field="text" />
                <label>
                    "Default cloud (optional: the first cloud otherwise)"
                    <input name="default_cloud" data-testid="clouds-default-input" />
                </label>
                <FieldError result=upload_result field="default_cloud" />
                // Validation errors name the field and its line, e.g. `clouds.x.auth (line 3)`;
                // errors without a field (not signed in, too large) get the plain error box.
                {move || upload_result.get().and_then(|r| r.err()).and_then(|e| match e.field() {
                    Some("text" | "default_cloud") => None,
                    Some(field) => Some(view! {
                        <p class="field-error" data-testid="clouds-error">
                            <code>{field.to_string()}</code>": "{e.message()}
                        </p>
                    }.into_any()),
                    None => Some(view! { <ErrorBox error=e.clone() /> }.into_any()),
                })}
                <button type="submit" class="primary" data-testid="clouds-upload">"Upload"</button>
            </ActionForm>
        </section>
    }
}

/// The summary table (server HTML).
#[component]
fn CloudsSummary(
    summary: CloudsYamlSummary,
    /// The last "Test connection" of this session, shown under its cloud.
    tested: Option<TestedCloud>,
    test: ServerAction<TestCloud>,
    set_default: ServerAction<SetDefaultCloud>,
    remove: ServerAction<DeleteClouds>,
) -> impl IntoView {
    let default_cloud = summary.default_cloud.clone();
    view! {
        <section class="card" data-testid="clouds-summary">
            <h2>"Your clouds"</h2>
            <p class="hint">"Uploaded " {short_time(&summary.uploaded_at)}</p>
            <div class="table-wrap">
                <table data-testid="clouds-table">
                    <thead><tr>
                        <th>"Cloud"</th><th>"Keystone"</th><th>"Auth"</th><th>"Project"</th>
                        <th>"Region"</th><th>"Interface"</th><th></th>
                    </tr></thead>
                    <tbody>
                        {summary.clouds.into_iter().map(|c| {
                            let is_default = c.name == default_cloud;
                            let name = c.name.clone();
                            let test_name = c.name.clone();
                            let result = tested
                                .as_ref()
                                .filter(|(cloud, _)| *cloud == c.name)
                                .map(|(_, result)| result.clone());
                            view! {
                                <tr data-testid="cloud-row" data-name=c.name.clone()>
                                    <td>{c.name.clone()}{is_default.then(|| view! { <span class="badge" data-testid="cloud-default">" default"</span> })}</td>
                                    <td><code>{c.auth_url.clone()}</code></td>
                                    <td>{c.auth_type.clone()}</td>
                                    <td>{c.project_name.clone().or(c.project_id.clone()).unwrap_or_else(|| "(from the credential)".into())}</td>
                                    <td>{c.region_name.clone().unwrap_or_default()}</td>
                                    <td>{c.interface.clone()}</td>
                                    <td class="actions">
                                        <ActionForm action=test attr:class="inline">
                                            <input type="hidden" name="cloud" value=test_name />
                                            <button type="submit" data-testid="cloud-test">"Test connection"</button>
                                        </ActionForm>
                                        {(!is_default).then(|| view! {
                                            <ActionForm action=set_default attr:class="inline">
                                                <input type="hidden" name="name" value=name />
                                                <button type="submit" data-testid="cloud-make-default">"Make default"</button>
                                            </ActionForm>
                                        })}
                                    </td>
                                </tr>
                                // The answer gets the table's full width (the actions cell
                                // does not wrap).
                                {result.map(|result| view! {
                                    <tr class="test-result"><td colspan="7"><TestResult result /></td></tr>
                                })}
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
            <details class="confirm-delete">
                <summary class="button danger" data-testid="clouds-delete">"Delete clouds.yaml"</summary>
                // A <div>, not a <p>: HTML closes a <p> at a <form>, which pushed the button out.
                <div class="warning">
                    "Forget your clouds.yaml? Running VMs stay; new VMs need a new upload. "
                    <ActionForm action=remove attr:class="inline">
                        <button type="submit" class="danger" data-testid="clouds-delete-confirm">"Yes, delete"</button>
                    </ActionForm>
                </div>
            </details>
        </section>
    }
}

/// What "Test connection" found: Keystone's answer and the images Glance lists, or why not.
#[component]
fn TestResult(result: Result<ConnectionTest, AppError>) -> impl IntoView {
    match result {
        Ok(t) if t.ok => view! {
            <p class="ok" data-testid="cloud-test-result">
                {format!("Keystone accepted the credentials; {} image(s) visible: ", t.images.as_ref().map_or(0, Vec::len))}
                {t.images.unwrap_or_default().join(", ")}
            </p>
        }.into_any(),
        Ok(t) => view! {
            <p class="error" data-testid="cloud-test-result">{t.error.unwrap_or_default()}</p>
        }.into_any(),
        Err(e) => view! { <ErrorBox error=e /> }.into_any(),
    }
}
