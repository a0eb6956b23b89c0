//! `/admin/audit`: the audit log for site admins, with filters (user, experiment, object,
//! action, outcome, time range), pages of 50 and a JSON-lines export of what the filters
//! select (`/admin/audit.jsonl`). Plain server HTML: the filter form is a GET form, so the
//! page works without JavaScript and every view has its own URL.

use super::{ErrorBox, SignedIn};
use crate::error::AppError;
use crate::model::{AuditEntry, AuditFilter};
use leptos::prelude::*;

/// Entries on one page of `/admin/audit`.
pub const PAGE: i64 = 50;

/// One page of the audit log (admins only).
#[server(endpoint = "audit-entries")]
pub async fn audit_entries(filter: AuditFilter) -> Result<Vec<AuditEntry>, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    crate::ssr::access::require(&auth.user, crate::ssr::access::Right::ReadAudit)?;
    crate::ssr::audit::check_filter(&filter)?;
    Ok(crate::ssr::audit::list(&state.pool, &filter).await?)
}

/// The filter of the page's URL: empty fields are no filter; times as the form's
/// `datetime-local` (UTC) or RFC 3339. A time that does not parse is an error to show.
fn filter_of(q: &leptos_router::params::ParamsMap) -> Result<AuditFilter, AppError> {
    let text = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let time = |k: &'static str| -> Result<_, AppError> {
        text(k)
            .map(|v| {
                super::resources::parse_expiry(&v).map_err(|_| {
                    AppError::invalid(k, "expected a date and time such as 2026-12-01T12:00 (UTC)")
                })
            })
            .transpose()
    };
    let offset = text("offset")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    Ok(AuditFilter {
        user_id: text("user_id"),
        experiment_id: text("experiment_id"),
        object_id: text("object_id"),
        action: text("action"),
        outcome: text("outcome").filter(|o| o == "ok" || o == "refused"),
        since: time("since")?,
        until: time("until")?,
        limit: Some(PAGE),
        offset: Some(offset),
    })
}

/// `/admin/audit`.
#[component]
pub fn AuditPage() -> impl IntoView {
    view! {
        <SignedIn page=|viewer: crate::model::Viewer| {
            if viewer.is_admin {
                view! { <AuditLog /> }.into_any()
            } else {
                view! {
                    <p class="warning" data-testid="audit-forbidden">"The audit log is for site admins only."</p>
                }.into_any()
            }
        } />
    }
}

#[component]
fn AuditLog() -> impl IntoView {
    let query = leptos_router::hooks::use_query_map();
    let filter = query.with_untracked(filter_of);
    let form = filter.clone().unwrap_or_default();
    let entries = Resource::new(
        move || filter.clone(),
        |filter| async move {
            match filter {
                Ok(f) => audit_entries(f.clone()).await.map(|e| (e, f)),
                Err(e) => Err(e),
            }
        },
    );
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let local = |t: &Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
            .unwrap_or_default()
    };
    view! {
        <div class="page-head"><h1>"Audit log"</h1></div>
        <form method="get" action="/admin/audit" class="card filters" data-testid="audit-filters">
            <label>"User" <input name="user_id" value=value(&form.user_id) data-testid="audit-user" /></label>
            <label>"Experiment" <input name="experiment_id" value=value(&form.experiment_id) /></label>
            <label>"Object" <input name="object_id" value=value(&form.object_id) data-testid="audit-object" /></label>
            <label>"Action" <input name="action" value=value(&form.action) placeholder="resource.*" data-testid="audit-action" /></label>
            <label>"Outcome"
                <select name="outcome">
                    <option value="" selected=form.outcome.is_none()>"any"</option>
                    <option value="ok" selected=form.outcome.as_deref() == Some("ok")>"ok"</option>
                    <option value="refused" selected=form.outcome.as_deref() == Some("refused")>"refused"</option>
                </select>
            </label>
            <label>"From (UTC)" <input type="datetime-local" name="since" value=local(&form.since) /></label>
            <label>"Until (UTC)" <input type="datetime-local" name="until" value=local(&form.until) /></label>
            <div class="filter-actions">
                <button type="submit" class="primary" data-testid="audit-apply">"Filter"</button>
                <a href="/admin/audit">"Clear"</a>
            </div>
        </form>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match entries.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok((items, filter)) => view! { <AuditTable items filter /> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn AuditTable(items: Vec<AuditEntry>, filter: AuditFilter) -> impl IntoView {
    let offset = filter.offset.unwrap_or(0);
    let page_link = |offset: i64| {
        let f = AuditFilter {
            offset: Some(offset),
            limit: None,
            ..filter.clone()
        };
        format!("/admin/audit?{}", f.query_string())
    };
    let export = format!(
        "/admin/audit.jsonl?{}",
        AuditFilter {
            offset: None,
            limit: None,
            ..filter.clone()
        }
        .query_string()
    );
    let prev = (offset > 0).then(|| page_link((offset - PAGE).max(0)));
    let next = (items.len() as i64 == PAGE).then(|| page_link(offset + PAGE));
    let empty = items.is_empty();
    let rows = items
        .into_iter()
        .map(|e| {
            let detail = e.detail.to_string();
            let class = format!("outcome-{}", e.outcome);
            view! {
                <tr data-testid="audit-row" class=class>
                    <td>{super::short_time(&e.at)}</td>
                    <td><code>{e.user_id.unwrap_or_default()}</code></td>
                    <td><code>{e.experiment_id.unwrap_or_default()}</code></td>
                    <td data-testid="audit-row-action">{e.action}</td>
                    <td><code data-testid="audit-row-object">{e.object_id.unwrap_or_default()}</code></td>
                    <td>{e.outcome}</td>
                    <td>{e.via} " " {e.client_ip.unwrap_or_default()}</td>
                    <td class="detail"><code>{detail}</code></td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <p>
            <a href=export class="button" rel="external" data-testid="audit-export">"Export as JSON lines"</a>
        </p>
        {if empty {
            view! { <p class="empty" data-testid="audit-empty">"No entries match."</p> }.into_any()
        } else {
            view! {
                <table class="table" data-testid="audit-table">
                    <thead><tr>
                        <th>"When"</th><th>"User"</th><th>"Experiment"</th><th>"Action"</th>
                        <th>"Object"</th><th>"Outcome"</th><th>"From"</th><th>"Detail"</th>
                    </tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            }.into_any()
        }}
        <nav class="pager">
            {prev.map(|href| view! { <a href=href data-testid="audit-prev">"← Newer"</a> })}
            " "
            {next.map(|href| view! { <a href=href data-testid="audit-next">"Older →"</a> })}
        </nav>
    }
}
