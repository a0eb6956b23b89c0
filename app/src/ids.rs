//! Typed identifiers: `<type>_<site>_<suffix>`.
//!
//! Format (../shared/slices-api.md, "Identifiers"): the suffix is a UUID (v7 for new ids)
//! written as 26 lowercase Crockford base32 characters, the TypeID suffix encoding
//! (alphabet `0123456789abcdefghjkmnpqrstvwxyz`; 130 bits with two leading zero bits, so the
//! first character is `0`-`7`). The site part may contain `-`, `.` and digits
//! (`be-gent1-bi-vm1`), so an id is split at its first and its last `_`, not as strict TypeID.

use std::fmt;
use uuid::Uuid;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The kinds of typed id this backend issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `image_…`: a catalog disk image.
    Image,
    /// `flavor_…`: a catalog flavor.
    Flavor,
    /// `resource_…`: a requested VM or Pod.
    Resource,
    /// `task_…`: one asynchronous operation on a resource.
    Task,
    /// `template_…`: a named, versioned set of resources with parameters.
    Template,
}

impl IdKind {
    /// The type prefix as written in ids.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Image => "image",
            IdKind::Flavor => "flavor",
            IdKind::Resource => "resource",
            IdKind::Task => "task",
            IdKind::Template => "template",
        }
    }
}

/// Why a string is not a usable id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not of the shape `<type>_<site>_<26 base32 chars>`.
    #[error("`{0}` is not a typed id of the form <type>_<site>_<suffix>")]
    Malformed(String),
    /// Well formed, but of another type (e.g. a flavor id where an image id is expected).
    #[error("`{id}` is a {found} id, expected a {expected} id")]
    WrongType {
        id: String,
        found: String,
        expected: &'static str,
    },
    /// Well formed, but issued by another site.
    #[error("`{id}` belongs to site `{site}`, not to this site")]
    OtherSite { id: String, site: String },
}

/// A typed id split into its parts (no site check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedId<'a> {
    pub kind: &'a str,
    pub site: &'a str,
    pub uuid: Uuid,
}

/// Encodes a UUID as the 26-character TypeID suffix.
pub fn encode_suffix(uuid: Uuid) -> String {
    let value = uuid.as_u128();
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            ALPHABET[((value >> shift) & 0x1f) as usize] as char
        })
        .collect()
}

/// Decodes a 26-character TypeID suffix. Lowercase only, first character `0`-`7`.
pub fn decode_suffix(suffix: &str) -> Option<Uuid> {
    let bytes = suffix.as_bytes();
    if bytes.len() != 26 || bytes[0] > b'7' {
        return None;
    }
    let mut value: u128 = 0;
    for &b in bytes {
        let digit = ALPHABET.iter().position(|&a| a == b)? as u128;
        value = (value << 5) | digit;
    }
    Some(Uuid::from_u128(value))
}

/// Splits an id at its first and last `_` and decodes the suffix.
pub fn split_id(id: &str) -> Result<ParsedId<'_>, IdError> {
    let malformed = || IdError::Malformed(truncate(id));
    let first = id.find('_').ok_or_else(malformed)?;
    let last = id.rfind('_').ok_or_else(malformed)?;
    if last <= first + 1 {
        return Err(malformed());
    }
    let (kind, site, suffix) = (&id[..first], &id[first + 1..last], &id[last + 1..]);
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(malformed());
    }
    let uuid = decode_suffix(suffix).ok_or_else(malformed)?;
    Ok(ParsedId { kind, site, uuid })
}

/// Parses an id of the expected kind issued by `site`.
pub fn parse_id(kind: IdKind, site: &str, id: &str) -> Result<Uuid, IdError> {
    let parsed = split_id(id)?;
    if parsed.kind != kind.prefix() {
        return Err(IdError::WrongType {
            id: truncate(id),
            found: parsed.kind.to_string(),
            expected: kind.prefix(),
        });
    }
    if parsed.site != site {
        return Err(IdError::OtherSite {
            id: truncate(id),
            site: parsed.site.to_string(),
        });
    }
    Ok(parsed.uuid)
}

/// Formats `<kind>_<site>_<suffix>`.
pub fn format_id(kind: IdKind, site: &str, uuid: Uuid) -> String {
    format!("{}_{}_{}", kind.prefix(), site, encode_suffix(uuid))
}

/// Ids echoed in error messages are cut so a hostile 1 MB "id" does not come back whole.
fn truncate(s: &str) -> String {
    if s.len() <= 120 {
        s.to_string()
    } else {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typeid_spec_vectors() {
        // Vectors from the TypeID specification's valid.yml.
        let cases = [
            ("00000000000000000000000000", 0u128),
            ("00000000000000000000000001", 1),
            ("0000000000000000000000000a", 10),
            ("0000000000000000000000000z", 31),
            ("00000000000000000000000010", 32),
            ("7zzzzzzzzzzzzzzzzzzzzzzzzz", u128::MAX),
        ];
        for (suffix, value) in cases {
            assert_eq!(encode_suffix(Uuid::from_u128(value)), suffix);
            assert_eq!(decode_suffix(suffix), Some(Uuid::from_u128(value)));
        }
        let uuid = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").expect("uuid");
        assert_eq!(encode_suffix(uuid), "01h455vb4pex5vsknk084sn02q");
    }

    #[test]
    fn rejects_bad_suffixes() {
        for bad in [
            "",
            "0000000000000000000000000",   // 25 chars
            "000000000000000000000000000", // 27 chars
            "80000000000000000000000000",  // overflows 128 bits
            "0000000000000000000000000u",  // `u` is not in the alphabet
            "0000000000000000000000000A",  // uppercase
        ] {
            assert_eq!(decode_suffix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_sites_with_hyphens_and_checks_kind_and_site() {
        let uuid = Uuid::now_v7();
        let id = format_id(IdKind::Task, "be-gent1-bi-vm1", uuid);
        assert_eq!(parse_id(IdKind::Task, "be-gent1-bi-vm1", &id), Ok(uuid));
        assert!(matches!(
            parse_id(IdKind::Resource, "be-gent1-bi-vm1", &id),
            Err(IdError::WrongType { .. })
        ));
        assert!(matches!(
            parse_id(IdKind::Task, "tld-city-bp1", &id),
            Err(IdError::OtherSite { .. })
        ));
        for bad in [
            "task",
            "task_x",
            "task__00000000000000000000000000",
            "Task_s_00000000000000000000000000",
        ] {
            assert!(matches!(split_id(bad), Err(IdError::Malformed(_))), "{bad}");
        }
        // Sites with underscores are not ours to parse, but user ids with dots split fine.
        let user = "user_account.ilabt.imec.be_00sqtwepw69hev0qxd08d2f3dk";
        let parsed = split_id(user).expect("user id");
        assert_eq!(parsed.kind, "user");
        assert_eq!(parsed.site, "account.ilabt.imec.be");
    }
}
