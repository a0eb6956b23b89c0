//! Reading counters from a Prometheus text exposition (`/metrics` of the Kubernetes API test
//! server or of slices-blueprint), for the benches that compare them before and after a
//! phase (burst, scale_out).
//!
//! Included by path (`#[path = "common/prometheus.rs"] mod prometheus;`) by the benches that
//! use it, so the others carry none of it as dead code.

use std::collections::BTreeMap;

/// The samples of metric `name` in `text` (Prometheus text format 0.0.4): each one's labels
/// and value. Comment lines, other metrics and values that do not parse are left out.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (labels, value) = inner.rsplit_once('}')?;
                    (parse_labels(labels)?, value)
                }
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None,
            };
            // A timestamp may follow the value.
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// `a="x",b="y"` (values may hold escaped quotes and commas) as a map; `None` when malformed.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(labels)
}
