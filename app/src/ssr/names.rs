//! Naming rules shared by validation and the adapters (pure).

/// RFC 1123 DNS label: what a Pod or Namespace name must be (Kubernetes API conventions,
/// "Object Names and IDs": at most 63 lowercase letters, digits and `-`, starting and ending
/// with a letter or digit).
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why a display name (a VM's or catalog entry's `friendly_name`, a network or cloud name) is
/// refused: it holds a control character (Unicode category Cc: newlines, escapes, NUL) or a
/// bidirectional formatting character (Unicode TR9: the embeddings, overrides and isolates
/// U+202A–U+202E, U+2066–U+2069, and the marks U+200E, U+200F, U+061C), which can make a
/// name display as another one ("Trojan Source", CVE-2021-42574). `None` when it is fine.
pub fn unsafe_character(name: &str) -> Option<String> {
    name.chars().find_map(|c| {
        let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}');
        (c.is_control() || bidi).then(|| {
            format!(
                "must not contain control or bidirectional formatting characters (found U+{:04X})",
                c as u32
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_refused() {
        for ok in ["qkd-alice", "Ubuntu 24.04 LTS", "m1.nano", "réseau-ü"] {
            assert_eq!(unsafe_character(ok), None, "{ok}");
        }
        for bad in [
            "a\nb",
            "tab\there",
            "nul\0",
            "esc\u{1b}[31m",
            "abc\u{202E}cba",
            "x\u{2066}y",
            "\u{200F}",
        ] {
            assert!(unsafe_character(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "pod-1", "0abc", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
