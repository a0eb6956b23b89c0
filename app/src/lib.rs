//! slices-blueprint's shared crate: wire types and ids (both builds), the Leptos UI with its
//! server functions (both builds; server bodies under `ssr`), and — with feature `ssr` — all
//! server-side services in [`ssr`].

// Leptos view types nest deeply (see frontend/src/lib.rs).
#![recursion_limit = "256"]

pub mod error;
pub mod ids;
pub mod model;
pub mod pod_options;
pub mod spec_file;
pub mod templates;
pub mod ui;

#[cfg(feature = "ssr")]
pub mod ssr;

pub use ui::{shell, App};
