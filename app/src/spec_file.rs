//! The SLICES CLI's resource spec file (`slices bi create-from-file`, ../shared/slices-api.md
//! "Resources and tasks"): `{"resources": [{"friendly_name", "site_id", "flavor",
//! "disk_image", "cloudinit_file"}]}` with flavor and image by name. The dashboard imports
//! it (preview with names resolved and an error per entry, then one request) and exports an
//! experiment as one. Ours on top, all optional: `userdata` (the cloud-init text itself: a
//! browser upload cannot read `cloudinit_file`, a path on the CLI user's machine) and the Pod
//! options `env`, `command`, `args`, `ports`.

use crate::pod_options::PodOptions;
use serde::{Deserialize, Serialize};

/// A spec file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecFile {
    pub resources: Vec<SpecEntry>,
}

/// One entry of a spec file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecEntry {
    pub friendly_name: String,
    /// The site the CLI sends the entry to; an entry for another site is refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// Flavor name (or id).
    pub flavor: String,
    /// Disk image name (or id).
    pub disk_image: String,
    /// A path on the CLI user's machine: not readable from here (use `userdata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudinit_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userdata: Option<String>,
    /// `env`, `command`, `args`, `ports` (Pods only), at the entry's top level.
    #[serde(flatten)]
    pub pod: PodOptions,
}

/// An entry as the import preview shows it: what it resolves to, or why it cannot be
/// requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecCheck {
    pub friendly_name: String,
    pub flavor: String,
    pub disk_image: String,
    /// `vm` or `k8s`, once the flavor is known.
    pub flavor_type: Option<crate::model::FlavorType>,
    /// What is wrong with this entry (None: it can be requested).
    pub error: Option<String>,
}
