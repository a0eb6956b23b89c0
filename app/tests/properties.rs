//! Property tests (proptest) over the parsers that take user input: typed ids, clouds.yaml,
//! the `POST /resources` body and its checks, and the outbound address rule. Each property runs
//! `PROPTEST_CASES` cases (proptest's default, 256, in the test command); a longer run:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p app --features ssr --test properties --release
//! ```
//!
//! A failure prints the smallest input found (add it to the unit tests of the parser).
#![cfg(feature = "ssr")]

use app::ids::{format_id, parse_id, split_id, IdKind};
use app::model::CreateResourcesRequest;
use app::ssr::auth::{Principal, TokenKind};
use app::ssr::egress::{denied_range, EgressPolicy};
use app::ssr::resources::check_request;
use chrono::{Duration, Utc};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};

const KINDS: [IdKind; 4] = [
    IdKind::Image,
    IdKind::Flavor,
    IdKind::Resource,
    IdKind::Task,
];

fn principal() -> Principal {
    Principal {
        kind: TokenKind::Experiment,
        subject: "exp_test.portal_e1".into(),
        user_id: Some("user_test.portal_alice".into()),
        experiment_id: Some("exp_test.portal_e1".into()),
        project_id: Some("proj_test.portal_qkd".into()),
        experiment_name: None,
        experiment_expires_at: Some(Utc::now() + Duration::days(30)),
        token_expires_at: Utc::now() + Duration::hours(1),
        display_name: None,
        is_admin: false,
    }
}

/// The fields a `POST /resources` error may name.
fn known_field(field: &str) -> bool {
    field == "resources" || field == "expires_at" || field.starts_with("ssh_authorized_keys")
}

proptest! {
    /// Any id this site formats parses back to the same UUID, for its own kind and site only.
    #[test]
    fn typed_ids_round_trip(bytes in any::<[u8; 16]>(), kind in 0usize..4, site in "[a-z0-9][a-z0-9.-]{0,20}") {
        let uuid = uuid::Uuid::from_bytes(bytes);
        let kind = KINDS[kind];
        let id = format_id(kind, &site, uuid);
        prop_assert_eq!(parse_id(kind, &site, &id).ok(), Some(uuid));
        let other = KINDS.iter().copied().find(|k| *k != kind).unwrap_or(kind);
        prop_assert!(parse_id(other, &site, &id).is_err());
        let other_site = format!("{site}x");
        prop_assert!(parse_id(kind, &other_site, &id).is_err());
    }

    /// Arbitrary text never panics the id parser, and what it accepts formats back to itself.
    #[test]
    fn typed_id_parser_takes_any_text(text in "\\PC{0,80}", kind in 0usize..4) {
        let _ = split_id(&text);
        if let Ok(uuid) = parse_id(KINDS[kind], "tld-city-bp1", &text) {
            prop_assert_eq!(format_id(KINDS[kind], "tld-city-bp1", uuid), text);
        }
    }

    /// Arbitrary text never panics the clouds.yaml parser; a refusal is a 4xx that names a
    /// field under `clouds` or the line of a syntax error.
    #[test]
    fn clouds_yaml_parser_takes_any_text(text in "\\PC{0,400}") {
        if let Err(e) = app::ssr::cloud_config::parse(&text) {
            prop_assert!((400..500).contains(&e.status()), "{e:?}");
            if let Some(field) = e.field() {
                // A YAML syntax error names its line.
                prop_assert!(field.starts_with("clouds") || field.starts_with("line "), "{field}");
            }
        }
    }

    /// Documents shaped like clouds.yaml with arbitrary names, URLs and values: parsed, or
    /// refused naming the cloud's field; a parsed file never keeps an auth_url with a query,
    /// fragment or user name.
    #[test]
    fn clouds_yaml_shaped_documents(
        name in "[A-Za-z0-9_.\\-\u{202e}\u{7}]{1,12}",
        url in prop_oneof![
            Just("http://127.0.0.1:5000/v3".to_string()),
            "https?://[a-z0-9.:@#?/%\\[\\]-]{0,40}",
            "\\PC{0,30}",
        ],
        user in "[a-z]{0,8}",
        verify in prop_oneof![Just("true"), Just("false"), Just("maybe")],
    ) {
        let doc = format!(
            "clouds:\n  \"{name}\":\n    auth:\n      auth_url: \"{url}\"\n      username: \"{user}\"\n      password: p\n      project_name: q\n    verify: {verify}\n"
        );
        match app::ssr::cloud_config::parse(&doc) {
            Ok(file) => {
                for cloud in &file.clouds {
                    let parsed = url::Url::parse(&cloud.auth_url);
                    prop_assert!(parsed.is_ok(), "{}", cloud.auth_url);
                    let parsed = parsed.expect("checked");
                    prop_assert!(parsed.query().is_none() && parsed.fragment().is_none());
                    prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
                }
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 422, "{:?}", e);
                let field = e.field().unwrap_or_default().to_string();
                prop_assert!(field.starts_with("clouds"), "{field}");
            }
        }
    }

    /// Arbitrary JSON text never panics the body parser, and a parsed body gets either
    /// accepted or a 422 that names one of the request's fields.
    #[test]
    fn resource_requests_are_parsed_and_checked(
        count in 0usize..60,
        hours in -5i64..2000,
        keys in prop::collection::vec("(ssh-ed25519|ecdsa-sha2-nistp256|rsa|sk-x)( [A-Za-z0-9+/=]{0,20}){0,2}\n?", 0..35),
        junk in "\\PC{0,60}",
    ) {
        let _ = serde_json::from_str::<CreateResourcesRequest>(&junk);
        let body = serde_json::json!({
            "expires_at": (Utc::now() + Duration::hours(hours)).to_rfc3339(),
            "resources": (0..count).map(|i| serde_json::json!({
                "friendly_name": format!("n{i}"), "disk_image_id": "x", "flavor_id": "y"
            })).collect::<Vec<_>>(),
            "ssh_authorized_keys": keys,
        });
        let request: CreateResourcesRequest = serde_json::from_value(body).expect("well-formed body");
        match check_request(&principal(), &request) {
            Ok(()) => {
                prop_assert!((1..=50).contains(&count));
                prop_assert!((1..=30 * 24).contains(&hours));
                prop_assert!(keys.len() <= 32);
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 422);
                let field = e.field().unwrap_or_default().to_string();
                prop_assert!(known_field(&field), "{field}");
            }
        }
    }

    /// The outbound rule: an IPv4 address and its IPv4-mapped IPv6 form get the same verdict;
    /// a listed `host:port` is allowed exactly on that port; the allow-list parser never panics.
    #[test]
    fn egress_rule_is_consistent(octets in any::<[u8; 4]>(), port in 1u16.., other in 1u16.., list in "\\PC{0,60}") {
        let v4 = Ipv4Addr::from(octets);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(denied_range(IpAddr::V4(v4)), denied_range(mapped));
        let _ = EgressPolicy::parse(&list, false);
        let policy = EgressPolicy::parse(&format!("{v4}:{port}"), false).expect("valid entry");
        prop_assert!(policy.check_addr(&v4.to_string(), port, IpAddr::V4(v4)).is_ok());
        if other != port {
            prop_assert_eq!(
                policy.check_addr(&v4.to_string(), other, IpAddr::V4(v4)).is_ok(),
                denied_range(IpAddr::V4(v4)).is_none()
            );
        }
    }
}
