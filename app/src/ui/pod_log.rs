//! A Pod's log on its detail page, in the same look as a VM's console log: the last N lines
//! read while the page renders (a GET form, `?logs=1&tail=N`: works without JavaScript), a
//! download of the same lines (`/resources/{id}/log.txt`), and "Follow", an island that
//! streams new lines as server-sent events from `/resources/{id}/log?follow=true`.

use super::ErrorBox;
use crate::error::AppError;
use leptos::prelude::*;

/// Lines shown when the form does not say.
pub const DEFAULT_TAIL: i64 = 200;
/// Most lines the follow view keeps (older ones scroll out).
pub const FOLLOW_KEEP: usize = 5000;

/// The last `tail_lines` lines of a Pod resource's container, as `GET /resources/{id}/logs`
/// answers them (same checks and errors).
#[server(endpoint = "pod-log")]
pub async fn pod_log(id: String, tail_lines: i64) -> Result<String, AppError> {
    use crate::ssr::backend::{LogOutput, LogQuery};
    let (state, auth) = crate::ssr::session::require().await?;
    let query = LogQuery {
        tail_lines: Some(tail_lines),
        ..LogQuery::default()
    };
    match crate::ssr::resources::pod_logs(&state.resources(), &auth.acting(), &id, &query).await? {
        LogOutput::Text(text) => Ok(text),
        LogOutput::Lines(_) => Err(AppError::BadRequest("a followed log is not text".into())),
    }
}

/// The panel: `log` is what this render read (None: not asked for yet).
#[component]
pub fn PodLogPanel(id: String, tail: i64, log: Option<Result<String, AppError>>) -> impl IntoView {
    let shown = log.is_some();
    let download = format!("/resources/{id}/log.txt?tail_lines={tail}");
    view! {
        <section class="card" data-testid="pod-log-panel">
            <form method="get" class="page-head">
                <h2>"Log"</h2>
                <input type="hidden" name="logs" value="1" />
                <label class="inline small">"Last "
                    <input type="number" name="tail" min="1" max="100000" value=tail
                        class="narrow" aria-label="Lines" data-testid="pod-log-tail" />
                    " lines of container main"</label>
                <button type="submit" data-testid="pod-log-show">
                    {if shown { "Refresh" } else { "Show log" }}
                </button>
                <a href=download class="button" download data-testid="pod-log-download">"Download"</a>
            </form>
            {log.map(|r| match r {
                Ok(text) if text.is_empty() => view! {
                    <p class="empty" data-testid="pod-log-output">"(no output yet)"</p>
                }.into_any(),
                Ok(text) => view! { <pre class="console" data-testid="pod-log-output">{text}</pre> }.into_any(),
                Err(e) => view! { <ErrorBox error=e /> }.into_any(),
            })}
            <PodLogFollow id tail />
        </section>
    }
}

/// "Follow": opens an `EventSource` on the log (starting with the last `tail` lines) and
/// appends each line as it comes; "Stop" (or leaving the page) closes it. An `error` event
/// from the server (the log could not be read on) is shown under the lines.
#[island(lazy)]
fn PodLogFollow(id: String, tail: i64) -> impl IntoView {
    super::island_hydrated();
    let lines = RwSignal::new(Vec::<String>::new());
    let state = RwSignal::new(FollowState::Idle);
    let url = format!("/resources/{id}/log?follow=true&tail_lines={tail}");
    let source = follow_source(url, lines, state);
    let toggle = move |_| source.toggle();
    view! {
        <div class="follow">
            <button type="button" data-testid="pod-log-follow" on:click=toggle>
                {move || if state.get() == FollowState::Following { "Stop following" } else { "Follow" }}
            </button>
            <span class="hint small" data-testid="pod-log-follow-state">{move || state.get().label()}</span>
            <Show when=move || !lines.with(Vec::is_empty)>
                <pre class="console" data-testid="pod-log-stream">{move || lines.with(|l| l.join("\n"))}</pre>
            </Show>
        </div>
    }
}

/// Where the follow view is.
#[derive(Debug, Clone, PartialEq)]
enum FollowState {
    Idle,
    Following,
    Ended(String),
}

impl FollowState {
    fn label(&self) -> String {
        match self {
            FollowState::Idle => String::new(),
            FollowState::Following => "following…".into(),
            FollowState::Ended(why) => why.clone(),
        }
    }
}

/// The browser's `EventSource` behind "Follow" (nothing on the server).
#[derive(Clone, Copy)]
struct FollowSource {
    #[cfg(feature = "hydrate")]
    open: StoredValue<Option<web_sys::EventSource>, LocalStorage>,
    url: StoredValue<String>,
    lines: RwSignal<Vec<String>>,
    state: RwSignal<FollowState>,
}

fn follow_source(
    url: String,
    lines: RwSignal<Vec<String>>,
    state: RwSignal<FollowState>,
) -> FollowSource {
    let source = FollowSource {
        #[cfg(feature = "hydrate")]
        open: StoredValue::new_local(None),
        url: StoredValue::new(url),
        lines,
        state,
    };
    on_cleanup(move || source.stop(None));
    source
}

impl FollowSource {
    fn toggle(self) {
        if self.state.get_untracked() == FollowState::Following {
            self.stop(Some("stopped".into()));
        } else {
            self.start();
        }
    }

    #[cfg(feature = "hydrate")]
    fn start(self) {
        use wasm_bindgen::closure::Closure;
        use wasm_bindgen::JsCast as _;
        let Ok(events) = web_sys::EventSource::new(&self.url.get_value()) else {
            self.state.set(FollowState::Ended(
                "the browser refused to open the stream".into(),
            ));
            return;
        };
        self.lines.set(Vec::new());
        let lines = self.lines;
        let on_line =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                if let Some(line) = e.data().as_string() {
                    lines.update(|l| {
                        l.push(line);
                        if l.len() > FOLLOW_KEEP {
                            l.drain(..l.len() - FOLLOW_KEEP);
                        }
                    });
                }
            });
        events.set_onmessage(Some(on_line.as_ref().unchecked_ref()));
        on_line.forget();
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
            let why = e
                .dyn_ref::<web_sys::MessageEvent>()
                .and_then(|m| m.data().as_string())
                .unwrap_or_else(|| {
                    "the stream ended (the container stopped, or the connection dropped)".into()
                });
            self.stop(Some(why));
        });
        // A server `error` event carries the reason; a transport error is a plain Event.
        let _ = events.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref());
        on_error.forget();
        self.open.set_value(Some(events));
        self.state.set(FollowState::Following);
    }

    #[cfg(not(feature = "hydrate"))]
    fn start(self) {
        let _ = (self.url, self.lines);
    }

    fn stop(self, why: Option<String>) {
        #[cfg(feature = "hydrate")]
        if let Some(events) = self.open.try_update_value(Option::take).flatten() {
            events.close();
        }
        if let Some(why) = why {
            let _ = self.state.try_set(FollowState::Ended(why));
        }
    }
}
