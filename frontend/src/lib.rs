//! The browser entry point: hydrates the islands of the server-rendered page (see `app::ui`).

// Leptos view types nest deeply; computing their layout under the size-optimised release
// profile exceeds rustc's default query depth of 128.
#![recursion_limit = "256"]

/// Called by Leptos's island loader once the main WASM module is loaded, before it walks the
/// page and hydrates each `<leptos-island>` (the islands are exported by `app` and load their
/// own code on demand: `#[island(lazy)]`, built with `cargo leptos build --split`).
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_islands();
    app::ui::start_hydration();
}
