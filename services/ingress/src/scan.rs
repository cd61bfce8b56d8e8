//! One cheap pass over an event's bytes for what the consumers' parser (`serde_json` into a
//! `Value`) refuses later but the ingress's borrowed, `RawValue`-based parse lets through:
//! nesting deeper than [`MAX_DEPTH`], a string holding a lone UTF-16 surrogate escape
//! (`"\ud800"`), and a number beyond `f64` (`1e400`). Refused here, RudderStack sees a 400 and
//! nothing accepted as good reaches a dead-letter queue.
//!
//! Iterative (no recursion), O(length), no allocation. Syntax errors are left to the parser
//! that runs after it; on malformed input the scan just stops early or ends.

/// Nesting bound of one event (objects and arrays, the event itself counting as 1). Profiles
/// and accounts parse with serde_json's limit of 128; half of it leaves room for the envelope
/// around traits and for whatever re-embeds an event (automation data, templates).
pub const MAX_DEPTH: usize = 64;

/// Numbers longer than this (or with an exponent) are checked against `f64`'s range; shorter
/// plain integers and decimals always fit.
const SHORT_NUMBER: usize = 300;

pub fn check(json: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "the event is nested deeper than {MAX_DEPTH} levels of objects and arrays"
                    ));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = string_end(json, i + 1)?,
            b'-' | b'0'..=b'9' => i = number_end(json, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index after the string starting at `i` (just past its opening quote).
fn string_end(json: &[u8], mut i: usize) -> Result<usize, String> {
    loop {
        let Some(at) = json
            .get(i..)
            .unwrap_or_default()
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
        else {
            return Ok(json.len());
        };
        i += at;
        if json[i] == b'"' {
            return Ok(i + 1);
        }
        // A backslash: `\uXXXX` needs a look, any other escape is two bytes.
        if json.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex4(json, i + 2) else {
            i += 2;
            continue;
        };
        i += 6;
        match unit {
            0xD800..=0xDBFF => {
                let low = (json.get(i) == Some(&b'\\') && json.get(i + 1) == Some(&b'u'))
                    .then(|| hex4(json, i + 2))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(lone_surrogate(unit));
                }
                i += 6;
            }
            0xDC00..=0xDFFF => return Err(lone_surrogate(unit)),
            _ => {}
        }
    }
}

fn hex4(json: &[u8], at: usize) -> Option<u16> {
    let digits = json.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u16::from_str_radix(text, 16).ok()
}

fn lone_surrogate(unit: u16) -> String {
    format!(
        "a string holds the lone UTF-16 surrogate \\u{unit:04x}, which is not a character \
         (pair a high surrogate with a low one)"
    )
}

/// The index after the number starting at `i`.
fn number_end(json: &[u8], i: usize) -> Result<usize, String> {
    let len = json[i..]
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(json.len() - i);
    let number = &json[i..i + len];
    if len > SHORT_NUMBER || number.iter().any(|b| matches!(b, b'e' | b'E')) {
        // ASCII by construction; a malformed number is the parser's to report.
        let text = std::str::from_utf8(number).unwrap_or_default();
        if text.parse::<f64>().is_ok_and(f64::is_infinite) {
            let shown: String = text.chars().take(24).collect();
            return Err(format!(
                "the number {shown}{} is beyond the range of a 64-bit float",
                if text.len() > 24 { "…" } else { "" }
            ));
        }
    }
    Ok(i + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> bool {
        check(s.as_bytes()).is_ok()
    }

    #[test]
    fn depth_is_bounded() {
        let at = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(ok(&at(MAX_DEPTH)));
        assert!(!ok(&at(MAX_DEPTH + 1)));
        let nested = format!(
            r#"{{"traits":{}1{}}}"#,
            r#"{"a":"#.repeat(MAX_DEPTH),
            "}".repeat(MAX_DEPTH)
        );
        assert!(check(nested.as_bytes()).unwrap_err().contains("deeper"));
        // Brackets inside strings are text, not nesting.
        assert!(ok(&format!(r#"{{"a":"{}"}}"#, "[{".repeat(10_000))));
        // Huge depth costs one pass and no stack.
        assert!(!ok(&"[".repeat(10_000_000)));
    }

    #[test]
    fn lone_surrogates_are_refused_pairs_are_not() {
        for bad in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\uDBFFx"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"a":"x\ud800"#,
        ] {
            assert!(!ok(bad), "{bad}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
        for good in [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\\ud800"}"#,
            r#"{"a":"\u00e9\n\"\\"}"#,
            r#"{"a":"\\\ud83d\ude00"}"#,
        ] {
            assert!(ok(good), "{good}");
            assert!(serde_json::from_str::<serde_json::Value>(good).is_ok());
        }
    }

    #[test]
    fn numbers_beyond_f64_are_refused() {
        for bad in [
            "[1e400]",
            "[-1E309]",
            "[1.5e+999]",
            &format!("[{}]", "9".repeat(400)),
        ] {
            assert!(!ok(bad), "{bad}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
        for good in ["[1e308]", "[1e-400]", "[12345678901234567890]", "[-0.5]"] {
            assert!(ok(good), "{good}");
            assert!(serde_json::from_str::<serde_json::Value>(good).is_ok());
        }
    }

    /// JSON text built from pieces the scan cares about: deep nesting, surrogate escapes,
    /// extreme numbers, backslashes.
    fn hostile_json() -> impl Strategy<Value = String> {
        let string = prop::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("\\\\".to_string()),
                Just("\\\"".to_string()),
                Just("[{".to_string()),
                (0xD7F0u32..0xE010).prop_map(|u| format!("\\u{u:04x}")),
                Just("\\ud83d\\ude00".to_string()),
            ],
            0..6,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let number = prop_oneof![
            (-400i32..400).prop_map(|e| format!("1.5e{e}")),
            (1usize..400).prop_map(|n| "7".repeat(n)),
            Just("-0".to_string()),
        ];
        let leaf = prop_oneof![string.clone(), number, Just("null".to_string())];
        leaf.prop_recursive(80, 400, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((string.clone(), inner), 0..4).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// What the scan lets through, the consumers' parser accepts: the ingress never answers
        /// 202 for an event a consumer must dead-letter for its JSON. And what it refuses,
        /// serde_json refuses too, unless the refusal is for depth alone.
        #[test]
        fn the_scan_agrees_with_serde_json(text in hostile_json()) {
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            match check(text.as_bytes()) {
                Ok(()) => prop_assert!(parsed.is_ok(), "{text}: {parsed:?}"),
                Err(reason) if reason.contains("deeper") => {}
                Err(reason) => prop_assert!(parsed.is_err(), "{text}: refused for {reason}"),
            }
        }

        /// Arbitrary bytes never panic and never loop.
        #[test]
        fn arbitrary_bytes_are_scanned_safely(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
        }
    }
}
