//! The browser entry point: hydrates the server-rendered page.

// Leptos view types nest deeply; computing their layout under the size-optimised release
// profile exceeds rustc's default query depth of 128.
#![recursion_limit = "256"]

/// Called by the generated JS once the WASM module is loaded.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
