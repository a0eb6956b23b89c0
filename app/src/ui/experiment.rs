//! `/experiment`: the session experiment's live resources as a picture — nodes are Pods and
//! VMs, coloured by state and labelled with name, address and time left, each a link to its
//! detail page; edges are Services (a node whose `env`/`command`/`args` names another
//! node's Service) and shared networks (VMs on the same network). The SVG is written by
//! [`picture_svg`] on the server (the page works without JavaScript) and again in the
//! browser by the live island. Below it: SSH commands, the `ssh_config` download and the
//! export as a SLICES CLI spec file.

use super::{time_left, ErrorBox, SignedIn};
use crate::error::AppError;
use crate::model::{FlavorType, Resource as ComputeResource, Viewer};
use leptos::prelude::*;
use leptos_router::components::A;

/// Width and height of the picture, SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const NODE_W: f64 = 170.0;
const NODE_H: f64 = 58.0;

/// The jump host SSH commands go through (`SSH_PROXY_JUMP`), if the site has one.
#[server(endpoint = "ssh-proxy-jump")]
pub async fn ssh_proxy_jump() -> Result<Option<String>, AppError> {
    let (state, _) = crate::ssr::session::require().await?;
    Ok(state.config.ssh_proxy_jump.clone())
}

/// `ssh user@ip` with `-J <jump>` when the site has a jump host.
pub fn with_jump(command: &str, jump: Option<&str>) -> String {
    match (jump, command.strip_prefix("ssh ")) {
        (Some(jump), Some(target)) => format!("ssh -J {jump} {target}"),
        _ => command.to_string(),
    }
}

/// Saves the experiment's live resources as a new template (`experiment` or `project`
/// scope) and answers its id.
#[server(endpoint = "save-as-template")]
pub async fn save_as_template(name: String, scope: String) -> Result<String, AppError> {
    let (state, auth) = crate::ssr::session::require().await?;
    let Some(experiment) = auth.experiment.as_ref() else {
        return Err(AppError::Forbidden(
            "saving a template needs an attached experiment".into(),
        ));
    };
    let scope = scope
        .parse::<crate::templates::TemplateScope>()
        .map_err(|_| AppError::invalid("scope", "experiment or project"))?;
    let template = crate::ssr::spec_files::save_as_template(
        &state.pool,
        state.site(),
        experiment,
        name.trim(),
        scope,
    )
    .await?;
    Ok(template.id)
}

/// `/experiment`.
#[component]
pub fn ExperimentPage() -> impl IntoView {
    view! { <SignedIn page=|viewer| view! { <Experiment viewer /> } /> }
}

#[component]
fn Experiment(viewer: Viewer) -> impl IntoView {
    let list = Resource::new(
        || (),
        |_| async {
            let list = super::resources::list_my_resources().await?;
            let jump = ssh_proxy_jump().await?;
            Ok::<_, AppError>((list, jump))
        },
    );
    let title = viewer
        .experiment
        .as_ref()
        .map(|e| e.name.clone().unwrap_or_else(|| e.experiment_id.clone()))
        .unwrap_or_else(|| "Your resources".into());
    view! {
        <div class="page-head">
            <h1>"Experiment " <code>{title}</code></h1>
            <A href="/templates" attr:class="button">"Launch a template"</A>
        </div>
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <ErrorBox error=e /> }.into_any(),
                    Ok((initial, jump)) => view! {
                        <LivePicture initial jump />
                        <section class="card">
                            <h2>"Take it with you"</h2>
                            <p>
                                <a href="/experiment/ssh_config" class="button" download data-testid="ssh-config">"Download ssh_config"</a>
                                " "
                                <a href="/experiment/spec.json" class="button" download data-testid="export-spec">"Export as spec file"</a>
                            </p>
                            <p class="hint small">"The spec file is the SLICES CLI's resource spec (flavor and image by name): request the same nodes again with it, here or with the CLI."</p>
                            <SaveAsTemplate />
                        </section>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The picture, redrawn every [`super::REFRESH_MS`] from the resource list.
#[island(lazy)]
fn LivePicture(initial: Vec<ComputeResource>, jump: Option<String>) -> impl IntoView {
    super::island_hydrated();
    let tick = super::ticker();
    let (list, error) = super::live(
        initial,
        move || tick.get(),
        super::resources::list_my_resources,
    );
    let svg = move || list.with(|l| picture_svg(l, &chrono::Utc::now()));
    let jump = StoredValue::new(jump);
    let ssh = move || {
        list.with(|l| {
            l.iter()
                .filter(|r| super::resources::is_live(r))
                .filter_map(|r| {
                    let command = jump.with_value(|j| {
                        r.ssh_command.as_deref().map(|c| with_jump(c, j.as_deref()))
                    });
                    Some((r.friendly_name.clone(), command?))
                })
                .collect::<Vec<_>>()
        })
    };
    view! {
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        <section class="card">
            <div class="picture" data-testid="experiment-picture" inner_html=svg></div>
        </section>
        <Show when=move || !ssh().is_empty()>
            <section class="card">
                <h2>"SSH"</h2>
                <ul class="plain">
                    {move || ssh().into_iter().map(|(name, command)| view! {
                        <li><span class="small">{name}</span> " " <code data-testid="ssh-command">{command}</code></li>
                    }).collect_view()}
                </ul>
            </section>
        </Show>
    }
}

/// "Save as template": a name and who may use it; the new template's page is linked.
#[island(lazy)]
fn SaveAsTemplate() -> impl IntoView {
    super::island_hydrated();
    let save = ServerAction::<SaveAsTemplate>::new();
    let result = Signal::derive(move || save.value().get());
    view! {
        <ActionForm action=save attr:class="inline-choices">
            <label for="template-name">"Save as template "</label>
            <input id="template-name" name="name" required maxlength="64" placeholder="my QKD setup"
                autocomplete="off" data-testid="save-template-name" />
            <select name="scope" aria-label="Who may use it" data-testid="save-template-scope">
                <option value="experiment">"this experiment"</option>
                <option value="project">"my project"</option>
            </select>
            <button type="submit" data-testid="save-template" disabled=move || save.pending().get()>"Save"</button>
        </ActionForm>
        <super::FieldError result field="name" />
        <super::FormError result fields=&["name"] />
        {move || save.value().get().and_then(Result::ok).map(|id| view! {
            <p class="ok small" data-testid="save-template-done">"Saved: " <a href=format!("/templates/{id}")>"open the template"</a></p>
        })}
    }
}

/// An edge of the picture: two node indexes and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub label: String,
}

/// The edges among `nodes`: a Service of node B named in node A's env/command/args (label:
/// its ports), and VMs sharing a network (label: the network), each pair once.
pub fn edges(nodes: &[&ComputeResource]) -> Vec<Edge> {
    let mut out: Vec<Edge> = Vec::new();
    let mut add = |from: usize, to: usize, label: String| {
        if from != to
            && !out
                .iter()
                .any(|e| (e.from, e.to) == (from, to) || (e.from, e.to) == (to, from))
        {
            out.push(Edge { from, to, label });
        }
    };
    for (a, ra) in nodes.iter().enumerate() {
        let words: Vec<&str> = ra
            .pod
            .env
            .iter()
            .map(|e| e.value.as_str())
            .chain(ra.pod.command.iter().map(String::as_str))
            .chain(ra.pod.args.iter().map(String::as_str))
            .collect();
        for (b, rb) in nodes.iter().enumerate() {
            let Some(service) = rb.details.service_name.as_deref() else {
                continue;
            };
            if words.iter().any(|w| mentions(w, service)) {
                let ports = rb
                    .pod
                    .ports
                    .iter()
                    .map(|p| p.port.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                add(a, b, ports);
            }
        }
        if ra.flavor_type == FlavorType::Vm {
            let network = ra.network_name.as_deref().unwrap_or("default network");
            if let Some(b) = nodes[..a].iter().position(|rb| {
                rb.flavor_type == FlavorType::Vm
                    && rb.network_name.as_deref().unwrap_or("default network") == network
            }) {
                add(b, a, network.to_string());
            }
        }
    }
    out
}

/// Whether `text` names `host` as a whole host name (`host`, `host:port`, `https://host/…`,
/// `host.namespace.svc`).
fn mentions(text: &str, host: &str) -> bool {
    text.match_indices(host).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + host.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
        edge(before) && edge(after)
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where node `i` of `n` sits: on an ellipse (one node: the middle), centre coordinates.
fn position(i: usize, n: usize) -> (f64, f64) {
    if n == 1 {
        return (WIDTH / 2.0, HEIGHT / 2.0);
    }
    let angle = std::f64::consts::PI + 2.0 * std::f64::consts::PI * i as f64 / n as f64;
    let (rx, ry) = (
        WIDTH / 2.0 - NODE_W / 2.0 - 10.0,
        HEIGHT / 2.0 - NODE_H / 2.0 - 10.0,
    );
    (
        WIDTH / 2.0 + rx * angle.cos(),
        HEIGHT / 2.0 + ry * angle.sin(),
    )
}

/// The picture of the live resources in `list` as an SVG document fragment (`<svg>…</svg>`),
/// seen at `now` (for the time left). Node classes: `node state-ok|state-busy|state-bad`.
pub fn picture_svg(list: &[ComputeResource], now: &chrono::DateTime<chrono::Utc>) -> String {
    let nodes: Vec<&ComputeResource> = list
        .iter()
        .filter(|r| super::resources::is_live(r))
        .collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{} nodes of the experiment" class="experiment-graph">"#,
        nodes.len()
    );
    if nodes.is_empty() {
        svg.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="middle" class="empty">No live resources: launch a template or request one.</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        ));
        return svg;
    }
    let at: Vec<(f64, f64)> = (0..nodes.len()).map(|i| position(i, nodes.len())).collect();
    for e in edges(&nodes) {
        let ((x1, y1), (x2, y2)) = (at[e.from], at[e.to]);
        svg.push_str(&format!(
            r#"<g class="edge" data-from="{}" data-to="{}"><line x1="{x1:.0}" y1="{y1:.0}" x2="{x2:.0}" y2="{y2:.0}"/><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text></g>"#,
            escape(&nodes[e.from].friendly_name),
            escape(&nodes[e.to].friendly_name),
            (x1 + x2) / 2.0,
            (y1 + y2) / 2.0 - 4.0,
            escape(&e.label)
        ));
    }
    for (r, (cx, cy)) in nodes.iter().zip(at) {
        let state = super::resources::state_class(r).trim_start_matches("state ");
        let address = r
            .details
            .pod_ip
            .clone()
            .or_else(|| r.details.addresses.first().cloned())
            .unwrap_or_else(|| "no address yet".into());
        let kind = match r.flavor_type {
            FlavorType::K8s => "pod",
            FlavorType::Vm => "VM",
        };
        let (x, y) = (cx - NODE_W / 2.0, cy - NODE_H / 2.0);
        svg.push_str(&format!(
            r#"<a href="/resources/{id}" class="node {state}" data-name="{name}" data-state="{state}"><title>{name}: {alloc} · {op}</title><rect x="{x:.0}" y="{y:.0}" width="{NODE_W}" height="{NODE_H}" rx="8"/><text x="{cx:.0}" y="{t1:.0}" text-anchor="middle" class="name">{name}</text><text x="{cx:.0}" y="{t2:.0}" text-anchor="middle" class="meta">{kind} · {address}</text><text x="{cx:.0}" y="{t3:.0}" text-anchor="middle" class="meta">{left}</text></a>"#,
            id = escape(&r.id),
            name = escape(&r.friendly_name),
            alloc = r.allocation_state.as_str(),
            op = r.operational_state.as_str(),
            t1 = y + 18.0,
            t2 = y + 35.0,
            t3 = y + 50.0,
            address = escape(&address),
            left = time_left(&r.expires_at, now),
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn node(name: &str, env: &[(&str, &str)], service: bool) -> ComputeResource {
        let now = chrono::Utc::now();
        ComputeResource {
            id: format!("resource_s_{name}"),
            friendly_name: name.into(),
            experiment_id: "e".into(),
            project_id: "p".into(),
            requested_by: None,
            disk_image_id: "i".into(),
            flavor_id: "f".into(),
            flavor_type: FlavorType::K8s,
            network_name: None,
            ssh_authorized_keys: Vec::new(),
            expires_at: now + chrono::Duration::hours(2),
            allocation_state: AllocationState::Provisioned,
            operational_state: OperationalState::Ready,
            status_message: String::new(),
            details: BackendDetails {
                pod_ip: Some("10.244.0.9".into()),
                service_name: service.then(|| name.to_string()),
                ..BackendDetails::default()
            },
            pod: PodOptions {
                env: env
                    .iter()
                    .map(|(n, v)| EnvEntry {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ports: vec![PortSpec {
                    name: "link".into(),
                    port: 9000,
                    protocol: PortProtocol::TCP,
                }],
                ..PodOptions::default()
            },
            ssh_command: None,
            last_task_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn services_named_in_env_become_one_edge() {
        let a = node("kme-a", &[("PEER", "kme-b:9000")], true);
        let b = node("kme-b", &[("PEER", "kme-a:9000")], true);
        let c = node("kme-b2", &[], false);
        let e = edges(&[&a, &b, &c]);
        assert_eq!(
            e,
            vec![Edge {
                from: 0,
                to: 1,
                label: "9000".into()
            }]
        );
        assert!(mentions("https://kme-a.ns.svc:8443/api", "kme-a"));
        assert!(!mentions("kme-ab", "kme-a"));
    }

    #[test]
    fn the_picture_links_colours_and_escapes() {
        let mut a = node("kme-a", &[("PEER", "kme-b")], true);
        let b = node("kme-b", &[], true);
        a.allocation_state = AllocationState::Provisioning;
        a.operational_state = OperationalState::Booting;
        let svg = picture_svg(&[a, b], &chrono::Utc::now());
        assert!(
            svg.contains(r#"href="/resources/resource_s_kme-a" class="node state-busy""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="node state-ok" data-name="kme-b""#),
            "{svg}"
        );
        assert!(svg.contains("10.244.0.9"), "{svg}");
        assert!(
            svg.contains("in 1 h 59 min") || svg.contains("in 2 h 0 min"),
            "{svg}"
        );
        assert_eq!(svg.matches("<line").count(), 1);
        assert!(picture_svg(&[], &chrono::Utc::now()).contains("No live resources"));
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
