//! `/admin`: the catalog editor (images and flavors: create, edit, hide, delete), shown to
//! admins only (`ADMIN_USER_IDS`); every server function checks the right again.

// The save functions take one argument per form field (ActionForm posts fields flat), and
// `#[server]` does not carry an item-level `allow` over to the client function it generates.
#![expect(
    clippy::too_many_arguments,
    reason = "one argument per form field: ActionForm posts fields flat"
)]

use super::{ErrorBox, FieldError, FormError, SignedIn};
use crate::error::AppError;
use crate::model::{DiskImage, Flavor};
use leptos::prelude::*;

#[cfg(feature = "ssr")]
async fn admin() -> Result<(crate::ssr::state::AppState, crate::ssr::auth::Principal), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let principal = auth.acting();
    crate::ssr::access::require(&principal, crate::ssr::access::Right::ChangeCatalog)?;
    Ok((state, principal))
}

/// Parses a whole number from a form field.
pub fn form_number(field: &str, value: &str) -> Result<i32, AppError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(0);
    }
    value
        .parse()
        .map_err(|_| AppError::invalid(field, format!("`{value}` is not a whole number")))
}

/// The value of a field of the entry being edited, or empty for a new one.
fn field<T>(item: &Option<T>, get: fn(&T) -> String) -> String {
    item.as_ref().map(get).unwrap_or_default()
}

/// `/admin?edit_flavor=<id>` or `?edit_image=<id>`: the entry of `items` being edited.
fn editing<T: Clone>(query: &str, items: &[T], id: fn(&T) -> &str) -> Option<T> {
    items.iter().find(|i| id(i) == query).cloned()
}

/// Every image (hidden too) and flavor.
#[server(endpoint = "admin-catalog")]
pub async fn admin_catalog() -> Result<(Vec<DiskImage>, Vec<Flavor>), AppError> {
    let (state, _principal) = admin().await?;
    let images = crate::ssr::catalog::list_images(&state.pool, state.site(), true).await?;
    let flavors = crate::ssr::catalog::list_flavors(&state.pool, state.site()).await?;
    Ok((images, flavors))
}

/// Creates (empty `id`) or edits a flavor.
#[server(endpoint = "admin-save-flavor")]
pub async fn save_flavor(
    id: String,
    friendly_name: String,
    description: String,
    flavor_type: String,
    vcpus: String,
    ram_mib: String,
    disk_mb: String,
) -> Result<Flavor, AppError> {
    use crate::model::{FlavorInput, FlavorPatch, FlavorType};
    let (state, principal) = admin().await?;
    let flavor_type: FlavorType = flavor_type
        .parse()
        .map_err(|_| AppError::invalid("flavor_type", "`vm` or `k8s`"))?;
    let vcpus = form_number("vcpus", &vcpus)?;
    let ram_mib = form_number("ram_mib", &ram_mib)?;
    let disk_mb = form_number("disk_mb", &disk_mb)?;
    if id.is_empty() {
        let input = FlavorInput {
            friendly_name,
            description,
            flavor_type,
            ram_mib,
            vcpus,
            disk_mb,
        };
        let created =
            crate::ssr::catalog::create_flavor(&state.pool, state.site(), &principal, &input)
                .await?;
        leptos_axum::redirect("/admin");
        Ok(created)
    } else {
        let patch = FlavorPatch {
            friendly_name: Some(friendly_name),
            description: Some(description),
            flavor_type: Some(flavor_type),
            ram_mib: Some(ram_mib),
            vcpus: Some(vcpus),
            disk_mb: Some(disk_mb),
        };
        let updated =
            crate::ssr::catalog::update_flavor(&state.pool, state.site(), &principal, &id, &patch)
                .await?;
        leptos_axum::redirect("/admin");
        Ok(updated)
    }
}

/// Creates (empty `id`) or edits an image.
#[server(endpoint = "admin-save-image")]
pub async fn save_image(
    id: String,
    friendly_name: String,
    location: String,
    default_username: String,
    cluster_id: String,
    short_description: String,
    min_disk_mb: String,
    min_ram_mib: String,
) -> Result<DiskImage, AppError> {
    use crate::model::{DiskImageInput, DiskImagePatch};
    let (state, principal) = admin().await?;
    let min_disk_mb = form_number("min_disk_mb", &min_disk_mb)?;
    let min_ram_mib = form_number("min_ram_mib", &min_ram_mib)?;
    let cluster_id = Some(cluster_id.trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "default".into());
    if id.is_empty() {
        let input = DiskImageInput {
            friendly_name,
            cluster_id,
            location,
            default_username,
            min_disk_mb,
            min_ram_mib,
            short_description,
            ..DiskImageInput::default()
        };
        let created =
            crate::ssr::catalog::create_image(&state.pool, state.site(), &principal, &input)
                .await?;
        leptos_axum::redirect("/admin");
        Ok(created)
    } else {
        let patch = DiskImagePatch {
            friendly_name: Some(friendly_name),
            cluster_id: Some(cluster_id),
            location: Some(location),
            default_username: Some(default_username),
            min_disk_mb: Some(min_disk_mb),
            min_ram_mib: Some(min_ram_mib),
            short_description: Some(short_description),
            ..DiskImagePatch::default()
        };
        let updated =
            crate::ssr::catalog::update_image(&state.pool, state.site(), &principal, &id, &patch)
                .await?;
        leptos_axum::redirect("/admin");
        Ok(updated)
    }
}

/// Hides or shows an image.
#[server(endpoint = "admin-hide-image")]
pub async fn set_image_hidden(id: String, hidden: bool) -> Result<(), AppError> {
    let (state, principal) = admin().await?;
    let patch = crate::model::DiskImagePatch {
        hidden: Some(hidden),
        ..Default::default()
    };
    crate::ssr::catalog::update_image(&state.pool, state.site(), &principal, &id, &patch).await?;
    leptos_axum::redirect("/admin");
    Ok(())
}

/// Deletes a catalog entry (`kind` = `image` or `flavor`).
#[server(endpoint = "admin-delete")]
pub async fn delete_entry(kind: String, id: String) -> Result<(), AppError> {
    let (state, principal) = admin().await?;
    match kind.as_str() {
        "image" => {
            crate::ssr::catalog::delete_image(&state.pool, state.site(), &principal, &id).await?
        }
        "flavor" => {
            crate::ssr::catalog::delete_flavor(&state.pool, state.site(), &principal, &id).await?
        }
        _ => return Err(AppError::invalid("kind", "`image` or `flavor`")),
    }
    leptos_axum::redirect("/admin");
    Ok(())
}

/// Imports the Glance images and Nova flavors of a site cloud (`SITE_CLOUDS_YAML`); `cloud`
/// may be empty (the file's first cloud).
#[server(endpoint = "admin-import")]
pub async fn import_catalog(cloud: String) -> Result<crate::model::ImportReport, AppError> {
    let (state, principal) = admin().await?;
    let cloud = Some(cloud.trim()).filter(|c| !c.is_empty());
    crate::ssr::catalog_import::import_site_cloud(
        &state.pool,
        &state.openstack,
        &crate::ssr::audit::Actor::of(&principal),
        state.config.site_clouds_yaml.as_deref(),
        cloud,
    )
    .await
}

/// The outcome of an import, one line per group.
#[component]
fn ImportSummary(report: crate::model::ImportReport) -> impl IntoView {
    let groups = [
        ("Images added", report.images_added),
        ("Images updated", report.images_updated),
        ("Images unchanged", report.images_unchanged),
        ("Images skipped (not public)", report.images_skipped),
        ("Flavors added", report.flavors_added),
        ("Flavors updated", report.flavors_updated),
        ("Flavors unchanged", report.flavors_unchanged),
    ];
    view! {
        <div class="ok report" data-testid="import-report">
            <strong>{format!("Imported from cloud `{}`", report.cloud)}</strong>
            <ul class="report-list">
                {groups.into_iter().map(|(label, entries)| {
                    let names = entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>().join(", ");
                    view! {
                        <li data-testid="import-group" data-label=label>
                            {format!("{label}: {}", entries.len())}
                            {(!names.is_empty()).then(|| format!(" — {names}"))}
                        </li>
                    }
                }).collect_view()}
            </ul>
        </div>
    }
}

/// `/admin`.
#[component]
pub fn AdminPage() -> impl IntoView {
    view! {
        <SignedIn page=|viewer: crate::model::Viewer| {
                if viewer.is_admin {
                    view! { <AdminCatalog /> }.into_any()
                } else {
                    view! {
                        <p class="warning" data-testid="admin-forbidden">
                            "The catalog editor is for site admins only."
                        </p>
                    }
                        .into_any()
                }
            } />
    }
}

/// The catalog editor. The entry forms, tables and hide/delete buttons are server HTML
/// (plain forms that post to the server functions, which redirect back here); only the
/// import is an island, so its progress and report show without a reload. "Edit" is a
/// link (`?edit_flavor=<id>`, `?edit_image=<id>`) that opens the form on that entry.
#[component]
fn AdminCatalog() -> impl IntoView {
    use leptos_router::hooks::use_query_map;
    let query = use_query_map();
    let catalog = Resource::new(|| (), |_| admin_catalog());
    // Errors of the no-JavaScript forms come back in the URL (Leptos's `ServerActionError`).
    let hide = ServerAction::<SetImageHidden>::new();
    let delete = ServerAction::<DeleteEntry>::new();
    view! {
        <div data-testid="admin-panel">
            <h1>"Catalog admin"</h1>
            {move || delete.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
            {move || hide.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorBox error=e /> })}
            <ImportForm />
            <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match catalog.await {
                        Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                        Ok((images, flavors)) => {
                            let (edit_flavor, edit_image) = query.with_untracked(|q| {
                                (
                                    q.get("edit_flavor").and_then(|id| editing(&id, &flavors, |f| &f.id)),
                                    q.get("edit_image").and_then(|id| editing(&id, &images, |i| &i.id)),
                                )
                            });
                            view! {
                                <EntryForms edit_flavor edit_image />
                                <CatalogTables images flavors hide delete />
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </div>
    }
}

/// The flavor and image tables (server HTML).
#[component]
fn CatalogTables(
    images: Vec<DiskImage>,
    flavors: Vec<Flavor>,
    hide: ServerAction<SetImageHidden>,
    delete: ServerAction<DeleteEntry>,
) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Flavors"</h2>
            <div class="table-wrap"><table data-testid="admin-flavors">
                <thead><tr><th>"Name"</th><th>"Type"</th><th>"vCPUs"</th><th>"RAM"</th><th>"Disk"</th><th></th></tr></thead>
                <tbody>
                    {flavors.into_iter().map(|f| view! {
                        <tr data-testid="admin-flavor-row" data-name=f.friendly_name.clone()>
                            <td>{f.friendly_name.clone()}</td>
                            <td>{f.flavor_type.as_str()}</td>
                            <td>{f.vcpus}</td>
                            <td>{format!("{} MiB", f.ram_mib)}</td>
                            <td>{format!("{} MB", f.disk_mb)}</td>
                            <td class="actions">
                                <a class="button" href=format!("/admin?edit_flavor={}", f.id)>"Edit"</a>
                                <ActionForm action=delete attr:class="inline">
                                    <input type="hidden" name="kind" value="flavor" />
                                    <input type="hidden" name="id" value=f.id.clone() />
                                    <button type="submit" class="danger">"Delete"</button>
                                </ActionForm>
                            </td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table></div>
        </section>
        <section class="card">
            <h2>"Disk images"</h2>
            <div class="table-wrap"><table data-testid="admin-images">
                <thead><tr><th>"Name"</th><th>"Location"</th><th>"User"</th><th>"Visible"</th><th></th></tr></thead>
                <tbody>
                    {images.into_iter().map(|i| {
                        let id = i.id.clone();
                        view! {
                        <tr data-testid="admin-image-row" data-name=i.friendly_name.clone()>
                            <td>{i.friendly_name.clone()}</td>
                            <td><code>{i.location.clone()}</code></td>
                            <td>{i.default_username.clone()}</td>
                            <td>{if i.hidden { "hidden" } else { "listed" }}</td>
                            <td class="actions">
                                <a class="button" href=format!("/admin?edit_image={}", i.id)>"Edit"</a>
                                <ActionForm action=hide attr:class="inline">
                                    <input type="hidden" name="id" value=i.id.clone() />
                                    <input type="hidden" name="hidden" value=(!i.hidden).to_string() />
                                    <button type="submit">{if i.hidden { "Show" } else { "Hide" }}</button>
                                </ActionForm>
                                <ActionForm action=delete attr:class="inline">
                                    <input type="hidden" name="kind" value="image" />
                                    <input type="hidden" name="id" value=id />
                                    <button type="submit" class="danger">"Delete"</button>
                                </ActionForm>
                            </td>
                        </tr>
                    }}).collect_view()}
                </tbody>
            </table></div>
        </section>
    }
}

/// Import from a site cloud, with progress and the report (an island).
#[island(lazy)]
fn ImportForm() -> impl IntoView {
    super::island_hydrated();
    let import = ServerAction::<ImportCatalog>::new();
    view! {
        <section class="card">
            <h2>"Import from OpenStack"</h2>
            <p class="hint">
                "Adds or updates catalog entries from the public Glance images and the Nova flavors of a site cloud ("
                <code>"SITE_CLOUDS_YAML"</code>"). Safe to repeat: entries remember where they came from."
            </p>
            <ActionForm action=import attr:class="inline-form">
                <label>"Cloud"<input name="cloud" placeholder="first cloud of SITE_CLOUDS_YAML" data-testid="import-cloud" /></label>
                <button type="submit" class="primary" data-testid="import-submit">"Import catalog"</button>
            </ActionForm>
            {move || import.pending().get().then(|| view! { <p class="loading">"Asking Glance and Nova…"</p> })}
            {move || import.value().get().map(|r| match r {
                Ok(report) => view! { <ImportSummary report /> }.into_any(),
                Err(e) => view! { <ErrorBox error=e /> }.into_any(),
            })}
            {move || import.value().get().is_some_and(|r| r.is_ok()).then(|| view! {
                <p class="hint"><a href="/admin" data-testid="import-reload">"Reload the tables"</a></p>
            })}
        </section>
    }
}

/// The flavor and image forms, server HTML: plain forms that post to [`save_flavor`] /
/// [`save_image`], which redirect back to `/admin`. A rejected save comes back as Leptos's
/// URL error (`__err`, read by `ServerAction::new`), shown next to its field. They are not an
/// island on purpose: the page then downloads only the import's code (issue 2's 250 KB
/// bundle target); the browser's own checks (`required`, `min`) catch most mistakes before
/// the round trip. With `edit_*` set they edit that entry (the `?edit_*=` link survives
/// an error redirect, so the form reopens on the same entry).
#[component]
fn EntryForms(edit_flavor: Option<Flavor>, edit_image: Option<DiskImage>) -> impl IntoView {
    let save_flavor = ServerAction::<SaveFlavor>::new();
    let save_image = ServerAction::<SaveImage>::new();
    let flavor_result = Signal::derive(move || save_flavor.value().get());
    let image_result = Signal::derive(move || save_image.value().get());
    let f = edit_flavor;
    let i = edit_image;
    view! {
        <div class="grid2">
            <section class="card">
                <h2>{if f.is_some() { "Edit flavor" } else { "New flavor" }}</h2>
                <ActionForm action=save_flavor>
                    <input type="hidden" name="id" value=field(&f, |f| f.id.clone()) />
                    <label>"Name"<input name="friendly_name" data-testid="flavor-name" required value=field(&f, |f| f.friendly_name.clone()) /></label>
                    <FieldError result=flavor_result field="friendly_name" />
                    <label>"Description"<input name="description" data-testid="flavor-description" value=field(&f, |f| f.description.clone()) /></label>
                    <label>"Type"
                        <select name="flavor_type" data-testid="flavor-type">
                            <option value="k8s" selected=f.as_ref().is_none_or(|f| f.flavor_type == crate::model::FlavorType::K8s)>"k8s (Kubernetes pod)"</option>
                            <option value="vm" selected=f.as_ref().is_some_and(|f| f.flavor_type == crate::model::FlavorType::Vm)>"vm (OpenStack server)"</option>
                        </select>
                    </label>
                    <div class="grid3">
                        <label>"vCPUs"<input name="vcpus" type="number" min="1" data-testid="flavor-vcpus" required value=f.as_ref().map(|f| f.vcpus.to_string()).unwrap_or_else(|| "1".into()) /></label>
                        <label>"RAM (MiB)"<input name="ram_mib" type="number" min="1" data-testid="flavor-ram" required value=f.as_ref().map(|f| f.ram_mib.to_string()).unwrap_or_else(|| "256".into()) /></label>
                        <label>"Disk (MB)"<input name="disk_mb" type="number" min="0" data-testid="flavor-disk" value=f.as_ref().map(|f| f.disk_mb.to_string()).unwrap_or_else(|| "0".into()) /></label>
                    </div>
                    <FieldError result=flavor_result field="vcpus" />
                    <FieldError result=flavor_result field="ram_mib" />
                    <FieldError result=flavor_result field="disk_mb" />
                    <FormError result=flavor_result fields=&["friendly_name", "vcpus", "ram_mib", "disk_mb"] />
                    <button type="submit" class="primary" data-testid="flavor-submit">"Save flavor"</button>
                    {f.is_some().then(|| view! { <a class="button" href="/admin">"Cancel"</a> })}
                </ActionForm>
            </section>
            <section class="card">
                <h2>{if i.is_some() { "Edit disk image" } else { "New disk image" }}</h2>
                <ActionForm action=save_image>
                    <input type="hidden" name="id" value=field(&i, |i| i.id.clone()) />
                    <label>"Name"<input name="friendly_name" data-testid="image-name" required value=field(&i, |i| i.friendly_name.clone()) /></label>
                    <FieldError result=image_result field="friendly_name" />
                    <label>"Location (Glance name/id, or container image)"<input name="location" data-testid="image-location" required value=field(&i, |i| i.location.clone()) /></label>
                    <FieldError result=image_result field="location" />
                    <div class="grid3">
                        <label>"Default user"<input name="default_username" data-testid="image-username" value=field(&i, |i| i.default_username.clone()) /></label>
                        <label>"Cloud"<input name="cluster_id" placeholder="default" value=field(&i, |i| i.cluster_id.clone()) /></label>
                        <label>"Min disk (MB)"<input name="min_disk_mb" type="number" min="0" value=field(&i, |i| i.min_disk_mb.to_string()) /></label>
                    </div>
                    <label>"Min RAM (MiB)"<input name="min_ram_mib" type="number" min="0" value=field(&i, |i| i.min_ram_mib.to_string()) /></label>
                    <label>"Short description"<input name="short_description" value=field(&i, |i| i.short_description.clone()) /></label>
                    <FormError result=image_result fields=&["friendly_name", "location"] />
                    <button type="submit" class="primary" data-testid="image-submit">"Save image"</button>
                    {i.is_some().then(|| view! { <a class="button" href="/admin">"Cancel"</a> })}
                </ActionForm>
            </section>
        </div>
    }
}
