//! `/catalog`: the disk images and flavors a user can request.

use super::{ErrorBox, SignedIn};
use crate::error::AppError;
use crate::model::{DiskImage, Flavor};
use leptos::prelude::*;

/// Images (hidden ones only for admins) and flavors.
#[server(endpoint = "catalog")]
pub async fn list_catalog() -> Result<(Vec<DiskImage>, Vec<Flavor>), AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let admin = auth.acting().is_admin;
    let images = crate::ssr::catalog::list_images(&state.pool, state.site(), admin).await?;
    let flavors = crate::ssr::catalog::list_flavors(&state.pool, state.site()).await?;
    Ok((images, flavors))
}

/// `/catalog`.
#[component]
pub fn CatalogPage() -> impl IntoView {
    view! { <SignedIn page=|_viewer| view! { <CatalogTables /> } /> }
}

#[component]
fn CatalogTables() -> impl IntoView {
    let catalog = Resource::new(|| (), |_| list_catalog());
    view! {
        <h1>"Catalog"</h1>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match catalog.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok((images, flavors)) => view! {
                        <section class="card">
                            <h2>"Disk images"</h2>
                            <div class="table-wrap">
                                <table data-testid="images-table">
                                    <thead><tr><th>"Name"</th><th>"Location"</th><th>"Cloud"</th><th>"User"</th><th>"Min disk / RAM"</th><th>"Description"</th></tr></thead>
                                    <tbody>
                                        {images.into_iter().map(|i| view! {
                                            <tr data-testid="image-row" data-name=i.friendly_name.clone()>
                                                <td>{i.friendly_name.clone()}{i.hidden.then(|| view! { <span class="badge">"hidden"</span> })}</td>
                                                <td><code>{i.location.clone()}</code></td>
                                                <td>{i.cluster_id.clone()}</td>
                                                <td>{i.default_username.clone()}</td>
                                                <td>{format!("{} MB / {} MiB", i.min_disk_mb, i.min_ram_mib)}</td>
                                                <td>{i.short_description.clone()}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        </section>
                        <section class="card">
                            <h2>"Flavors"</h2>
                            <div class="table-wrap">
                                <table data-testid="flavors-table">
                                    <thead><tr><th>"Name"</th><th>"Type"</th><th>"vCPUs"</th><th>"RAM"</th><th>"Disk"</th><th>"Description"</th></tr></thead>
                                    <tbody>
                                        {flavors.into_iter().map(|f| view! {
                                            <tr data-testid="flavor-row" data-name=f.friendly_name.clone()>
                                                <td>{f.friendly_name.clone()}</td>
                                                <td><span class="badge">{f.flavor_type.as_str()}</span></td>
                                                <td>{f.vcpus}</td>
                                                <td>{format!("{} MiB", f.ram_mib)}</td>
                                                <td>{format!("{} MB", f.disk_mb)}</td>
                                                <td>{f.description.clone()}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        </section>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}
