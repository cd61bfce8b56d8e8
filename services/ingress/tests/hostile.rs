//! The event parser against hostile bodies: whatever the bytes, it answers (never panics,
//! never recurses unboundedly), and what it accepts the consumers can parse.

use bytes::Bytes;
use ingress::event::{Normalizer, Parsed, Rejection};
use proptest::prelude::*;

fn normalizer() -> Normalizer {
    Normalizer {
        max_event_bytes: 64 * 1024,
        max_batch_events: 5_000,
    }
}

fn parse(body: &[u8]) -> Result<Parsed, Rejection> {
    normalizer().parse_body(
        "ws",
        &Bytes::copy_from_slice(body),
        time::OffsetDateTime::UNIX_EPOCH,
    )
}

/// Every free-form part of an accepted event parses as a `serde_json::Value`, as profiles,
/// accounts and automations parse it.
fn consumers_can_parse(parsed: Parsed) {
    let events: Vec<_> = match parsed {
        Parsed::Single(e) => vec![*e],
        Parsed::Batch(results) => results.into_iter().filter_map(Result::ok).collect(),
    };
    for e in events {
        for part in [
            &e.envelope.traits,
            &e.envelope.properties,
            &e.envelope.context,
            &e.envelope.raw,
        ] {
            if !part.is_empty() {
                serde_json::from_slice::<serde_json::Value>(part).expect("a consumer can parse it");
            }
        }
    }
}

#[test]
fn deep_and_huge_bodies_are_answered() {
    for n in [100, 10_000, 1_000_000] {
        let deep = format!(
            r#"{{"type":"track","event":"e","userId":"u","properties":{}{}}}"#,
            r#"{"a":"#.repeat(n),
            "}".repeat(n)
        );
        assert!(parse(deep.as_bytes()).is_err(), "depth {n}");
        let arrays = format!(
            r#"{{"type":"track","event":"e","userId":"u","x":{}"#,
            "[".repeat(n)
        );
        assert!(parse(arrays.as_bytes()).is_err(), "unclosed depth {n}");
    }
    // Many tiny events: refused by count before any is normalized.
    let many = format!(r#"{{"batch":[{}{{}}]}}"#, "{},".repeat(100_000));
    match parse(many.as_bytes()) {
        Err(Rejection::TooLarge(m)) => assert!(m.contains("5000"), "{m}"),
        other => panic!("expected 413, got {:?}", other.err()),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(parsed) = parse(&body) {
            consumers_can_parse(parsed);
        }
    }

    /// Valid-looking events with hostile values in every free-form field.
    #[test]
    fn hostile_values_are_refused_or_parseable(
        value in prop_oneof![
            Just(r#""\ud800""#.to_string()),
            Just(r#""\udfff\ud800""#.to_string()),
            Just("1e999".to_string()),
            Just(format!("[{}]", "9".repeat(500))),
            (1usize..200).prop_map(|n| format!("{}0{}", "[".repeat(n), "]".repeat(n))),
            "[a-z\\\\\"]{0,20}".prop_map(|s| format!("{s:?}")),
        ],
        field in prop_oneof![Just("traits"), Just("properties"), Just("context")],
    ) {
        let body = format!(
            r#"{{"type":"identify","userId":"u","{field}":{{"k":{value}}},"other":{value}}}"#
        );
        if let Ok(parsed) = parse(body.as_bytes()) {
            consumers_can_parse(parsed);
        }
    }
}
