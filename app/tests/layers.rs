//! The shape of `app/src/ssr`, checked on its source (README, "Architecture"):
//!
//! - modules import only their own layer or the ones below (pure → ports → adapters →
//!   services → entry points), and never form a cycle;
//! - no function is longer than [`MAX_FUNCTION_LINES`], not counting SQL text, `view!`
//!   markup and tests.
//!
//! Run it alone with `cargo test -p app --features ssr --test layers`. A new module must be
//! given its layer in [`LAYERS`]. The reading is textual (`crate::ssr::…` and `super::…`
//! paths outside comments, brace groups expanded), which is all this codebase uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module of `app/src/ssr` (`""` is `ssr/mod.rs`) and its layer.
const LAYERS: &[(&str, u8, &str)] = &[
    ("", 0, "shared helpers"),
    ("cloud_config", 0, "pure"),
    ("names", 0, "pure"),
    ("egress", 0, "pure"),
    ("secrets", 0, "pure"),
    ("config", 0, "pure"),
    ("backend", 1, "ports"),
    ("backend::kubernetes", 2, "adapters"),
    ("backend::pod_feed", 2, "adapters"),
    ("backend::openstack", 2, "adapters"),
    ("openstack", 2, "adapters"),
    ("auth", 2, "adapters"),
    ("audit", 2, "adapters"),
    ("metrics", 2, "adapters"),
    ("access", 2, "adapters"),
    ("oidc", 2, "adapters"),
    ("list_cache", 2, "adapters"),
    ("rows", 2, "adapters"),
    ("queue", 2, "adapters"),
    ("singleton", 2, "adapters"),
    ("catalog", 3, "services"),
    ("accounts", 3, "services"),
    ("catalog_import", 3, "services"),
    ("clouds", 3, "services"),
    ("resources", 3, "services"),
    ("tasks", 3, "services"),
    ("worker", 3, "services"),
    ("reconcile", 3, "services"),
    ("templates", 3, "services"),
    ("spec_files", 3, "services"),
    ("session", 4, "entry points"),
    ("state", 4, "entry points"),
    ("api", 4, "entry points"),
    ("server", 4, "entry points"),
    ("web_security", 4, "entry points"),
    ("rate_limits", 4, "entry points"),
    ("audit_http", 4, "entry points"),
    ("dashboard_routes", 4, "entry points"),
];

/// The longest a function may be (lines, without SQL text, `view!` markup and tests).
const MAX_FUNCTION_LINES: usize = 80;

/// `app/src/ssr`, or the folder named by `LAYERS_SSR_DIR` (to check another tree, e.g. an
/// older commit's).
fn ssr_dir() -> PathBuf {
    std::env::var_os("LAYERS_SSR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ssr"))
}

/// Every `.rs` file under `dir`, with its module path relative to `ssr`.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read app/src/ssr")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else if name.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}::{name}")
            }
        };
        if path.is_dir() {
            modules(&path, &join(&stem), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = if stem == "mod" { join("") } else { join(&stem) };
            out.insert(name, std::fs::read_to_string(&path).expect("read"));
        }
    }
}

/// The source without its test module and with comments and string contents blanked
/// (line count kept).
fn code_of(source: &str) -> String {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(i) => &source[..i],
        None => source,
    };
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::ssr::…` and `super::…` paths a module names, as module names it depends on.
fn dependencies(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut paths = Vec::new();
    for (marker, base) in [("crate::ssr::", String::new()), ("super::", parent(module))] {
        let mut rest = code;
        while let Some(i) = rest.find(marker) {
            let after = &rest[i + marker.len()..];
            let before = rest[..i].chars().last();
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            expand(&base, after, &mut paths);
        }
    }
    for path in paths {
        // The longest known module the path starts with.
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let hit = (0..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|candidate| known.contains(candidate));
        if let Some(dep) = hit {
            if dep != module && !module.starts_with(&format!("{dep}::")) || dep.is_empty() {
                found.insert(dep);
            }
        }
    }
    found.remove(module);
    found
}

/// `a::b` → `a`; a top-level module's parent is the `ssr` root (`""`).
fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

/// Adds the paths written at `text` (a path, or a `{…}` group of paths) under `base`.
fn expand(base: &str, text: &str, out: &mut Vec<String>) {
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    };
    let head: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let head = head.trim_end_matches(':');
    let rest = &text[head.len()..].trim_start_matches(':');
    let prefix = join(base, head);
    if let Some(group) = rest.strip_prefix('{') {
        // Split the group at top-level commas.
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&prefix, group[start..i].trim(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&prefix, group[start..i].trim(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else {
        out.push(prefix);
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut sources = BTreeMap::new();
    modules(&ssr_dir(), "", &mut sources);
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(module, source)| {
            let code = code_of(source);
            (module.clone(), dependencies(module, &code, &known))
        })
        .collect()
}

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(name, ..)| *name == module)
        .map(|(_, layer, _)| *layer)
        .unwrap_or_else(|| {
            panic!("app/src/ssr module `{module}` has no layer in LAYERS (app/tests/layers.rs)")
        })
}

#[test]
fn every_import_points_down_or_sideways() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if layer(dep) > layer(module) {
                wrong.push(format!(
                    "{module} (layer {}) imports {dep} (layer {})",
                    layer(module),
                    layer(dep)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports upwards:\n{}", wrong.join("\n"));
    // The test reads what it should: the graph has the edges we know are there.
    assert!(graph["worker"].contains("queue"), "{:?}", graph["worker"]);
    assert!(graph["backend::kubernetes"].contains("backend::pod_feed"));
    assert!(
        graph["resources"].contains("rows"),
        "{:?}",
        graph["resources"]
    );
}

#[test]
fn no_import_cycle() {
    let graph = graph();
    // Kahn's algorithm: what cannot be ordered lies on a cycle.
    let mut remaining = graph.clone();
    loop {
        let leaves: Vec<String> = remaining
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !remaining.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            remaining.remove(&leaf);
        }
    }
    let cycle: Vec<String> = remaining
        .iter()
        .map(|(m, deps)| {
            format!(
                "{m} -> {}",
                deps.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        cycle.is_empty(),
        "modules on an import cycle:\n{}",
        cycle.join("\n")
    );
}

#[test]
fn the_layer_table_names_every_module_once() {
    let graph = graph();
    for module in graph.keys() {
        layer(module);
    }
    for (name, ..) in LAYERS {
        assert!(
            graph.contains_key(*name),
            "LAYERS names `{name}`, which is no module"
        );
    }
}

/// Functions of `source` as (name, first line, length), counting neither the lines inside
/// raw strings (SQL) nor those inside `view! { … }`.
fn function_lengths(source: &str) -> Vec<(String, usize, usize)> {
    let code = code_of(source);
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let signature = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(crate) async fn ",
        ]
        .iter()
        .find_map(|p| line.strip_prefix(p));
        let Some(rest) = signature else {
            i += 1;
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened, mut counted, mut in_raw, mut in_view) =
            (0i64, false, 0, false, 0i64);
        let mut j = i;
        while j < lines.len() {
            let text = lines[j];
            let raw_marks = text.matches("r#\"").count() + text.matches("\"#").count();
            let counts = !in_raw && in_view == 0;
            if counts {
                counted += 1;
            }
            if raw_marks % 2 == 1 {
                in_raw = !in_raw;
            }
            if !in_raw {
                if text.contains("view!") {
                    in_view = depth.max(0) + 1;
                }
                for c in text.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if in_view > 0 && depth < in_view {
                    in_view = 0;
                }
            }
            if opened && depth <= 0 {
                break;
            }
            if !opened && text.trim_end().ends_with(';') {
                break;
            }
            j += 1;
        }
        found.push((name, i + 1, counted));
        i += 1;
    }
    found
}

#[test]
fn no_function_needs_more_than_one_screen() {
    let mut sources = BTreeMap::new();
    modules(&ssr_dir(), "", &mut sources);
    let mut long = Vec::new();
    for (module, source) in &sources {
        for (name, line, length) in function_lengths(source) {
            if length > MAX_FUNCTION_LINES {
                long.push(format!(
                    "ssr::{module}::{name} (line {line}): {length} lines"
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines (split them into named steps):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_reading_counts_code_not_sql() {
    let sample = "fn a() {\n    let x = 1;\n    sqlx::query!(\n        r#\"SELECT 1\n           FROM t\n           WHERE x\"#\n    );\n}\nfn b() {}\n";
    let lengths = function_lengths(sample);
    assert_eq!(lengths[0], ("a".to_string(), 1, 6), "{lengths:?}");
    assert_eq!(lengths[1], ("b".to_string(), 9, 1), "{lengths:?}");
}
