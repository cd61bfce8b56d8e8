//! The automation contract, in one place for every service that reads automations: what an
//! automation (inline in a track event's `properties.courier.automation`, an automation
//! template, an ad-hoc invoke) and a notification template may contain, and the bounds on them.
//!
//! The ingress calls [`validate_inline`] so that it refuses with a 400 what the automations
//! consumer would later dead-letter; automations calls the same functions on its API and again
//! on every event (older or hostile producers publish to NATS directly). The typed steps are in
//! [`steps`] (parsing them is their validation); their execution stays in the automations
//! service.
//!
//! Every check is bounded and non-recursive, and runs before any other work: document size and
//! nesting, step count, `$ref` paths, expressions ([`expr`]), durations. Errors start with the
//! JSON path of the problem (`properties.courier.automation.steps[2].duration: …`).

pub mod expr;
pub mod steps;

pub use steps::{Action, Step, fetch_data_urls, parse_steps};

use std::io;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Steps in one automation (inline, template or ad-hoc invoke).
pub const MAX_STEPS: usize = 100;
/// An automation document (inline automation, automation template), as compact JSON.
pub const MAX_AUTOMATION_BYTES: usize = 64 * 1024;
/// An inline automation's `data` or `profile` object, as compact JSON.
pub const MAX_DATA_BYTES: usize = 32 * 1024;
/// Nesting of objects and arrays in an automation or notification template document.
pub const MAX_JSON_DEPTH: usize = 32;
/// A `$ref` path (`data.order.total`), an expression path or a `refs.` string field: bytes.
pub const MAX_REF_BYTES: usize = 256;
/// Dot-separated segments of such a path.
pub const MAX_REF_SEGMENTS: usize = 16;
/// A `delay` duration (`"1 hour 30 minutes"`) or `until` instant, in bytes.
pub const MAX_DELAY_TEXT_BYTES: usize = 64;
/// The longest `delay` duration: 366 days.
pub const MAX_DELAY_MS: u64 = 366 * 86_400_000;
/// A notification template document, as compact JSON.
pub const MAX_NOTIFICATION_BYTES: usize = 64 * 1024;
/// Channels of one notification template.
pub const MAX_CHANNELS: usize = 16;

/// Where an inline automation sits in a track event.
pub const INLINE_PATH: &str = "properties.courier.automation";

/// Counts bytes and gives up once past the limit, so measuring a huge value stops early.
struct Budget {
    used: usize,
    max: usize,
}

impl io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.used += buf.len();
        if self.used > self.max {
            return Err(io::Error::other("over budget"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True when objects and arrays nest deeper than `max` in `v` (walked without recursion).
pub fn deeper_than(v: &Value, max: usize) -> bool {
    let container = |c: &&Value| c.is_array() || c.is_object();
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(a) if depth <= max => {
                stack.extend(a.iter().filter(container).map(|c| (c, depth + 1)));
            }
            Value::Object(o) if depth <= max => {
                stack.extend(o.values().filter(container).map(|c| (c, depth + 1)));
            }
            Value::Array(_) | Value::Object(_) => return true,
            _ => {}
        }
    }
    false
}

/// True when `v` serializes to more than `max` bytes of compact JSON (stops counting there).
/// Call only on a value whose depth is bounded (serializing recurses).
pub fn larger_than(v: &Value, max: usize) -> bool {
    serde_json::to_writer(&mut Budget { used: 0, max }, v).is_err()
}

/// Nesting at most [`MAX_JSON_DEPTH`], then size at most `max_bytes`; the error names `path`.
pub fn check_document(v: &Value, path: &str, max_bytes: usize) -> Result<(), String> {
    if deeper_than(v, MAX_JSON_DEPTH) {
        return Err(format!(
            "{path}: nested deeper than {MAX_JSON_DEPTH} levels"
        ));
    }
    if larger_than(v, max_bytes) {
        return Err(format!(
            "{path}: larger than the limit of {max_bytes} bytes (as JSON)"
        ));
    }
    Ok(())
}

/// A context path (`data.items.0.sku`, without `refs.`): bounded length and segment count.
pub fn check_ref_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_REF_BYTES {
        return Err(format!(
            "path is {} bytes; the limit is {MAX_REF_BYTES}",
            path.len()
        ));
    }
    if path.split('.').count() > MAX_REF_SEGMENTS {
        return Err(format!("path has more than {MAX_REF_SEGMENTS} segments"));
    }
    Ok(())
}

/// `"5 minutes"`, `"2 days"`, `"1 hour 30 minutes"`, `"90s"` → milliseconds, at most
/// [`MAX_DELAY_MS`].
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let err = || format!("cannot parse {s:?}");
    if s.len() > MAX_DELAY_TEXT_BYTES {
        return Err(format!(
            "duration is {} bytes; the limit is {MAX_DELAY_TEXT_BYTES}",
            s.len()
        ));
    }
    let mut total: u64 = 0;
    let mut tokens = Vec::new();
    // Split "90s" / "5m" into number and unit tokens.
    for word in s.split_whitespace() {
        let split = word
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(word.len());
        if split > 0 {
            tokens.push(&word[..split]);
        }
        if split < word.len() {
            tokens.push(&word[split..]);
        }
    }
    if tokens.is_empty() || tokens.len() % 2 != 0 {
        return Err(err());
    }
    for pair in tokens.chunks(2) {
        let n: f64 = pair[0].parse().map_err(|_| err())?;
        let unit = pair[1].trim_end_matches(',').to_ascii_lowercase();
        let ms: f64 = match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => 1.0,
            "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
            "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600e3,
            "d" | "day" | "days" => 86_400e3,
            "w" | "week" | "weeks" => 604_800e3,
            _ => return Err(err()),
        };
        if !(n.is_finite() && n >= 0.0) {
            return Err(err());
        }
        total = total.saturating_add((n * ms) as u64);
    }
    if total > MAX_DELAY_MS {
        return Err(format!("{s:?} is longer than the limit of 366 days"));
    }
    Ok(total)
}

/// ISO 8601 / RFC 3339 instant → epoch milliseconds.
pub fn parse_until(s: &str) -> Result<i64, String> {
    if s.len() > MAX_DELAY_TEXT_BYTES {
        return Err(format!(
            "until is {} bytes; the limit is {MAX_DELAY_TEXT_BYTES}",
            s.len()
        ));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("cannot parse {s:?} as an ISO 8601 date-time"))
}

fn is_ref(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("$ref").is_some_and(Value::is_string))
}

/// The cancelation token of a step or automation (both spellings accepted).
pub fn cancelation_token(v: &Value) -> Option<&str> {
    v.get("cancelation_token")
        .or_else(|| v.get("cancellation_token"))
        .and_then(Value::as_str)
}

/// Validates an inline automation (`properties.courier.automation`, the ad-hoc invoke shape):
/// size and nesting first, then its steps or template, data and tokens.
pub fn validate_inline(a: &Value) -> Result<(), String> {
    parse_inline(a).map(drop)
}

/// [`validate_inline`], giving the parsed steps when the automation has its own (rather than
/// naming a template).
pub fn parse_inline(a: &Value) -> Result<Option<Vec<Step>>, String> {
    const P: &str = INLINE_PATH;
    let o = a
        .as_object()
        .ok_or_else(|| format!("{P}: must be an object"))?;
    check_document(a, P, MAX_AUTOMATION_BYTES)?;
    let present = |k: &str| o.get(k).filter(|v| !v.is_null());
    let mut parsed = None;
    if let Some(steps) = present("steps") {
        parsed = Some(parse_steps(steps, &format!("{P}.steps"))?);
    } else if let Some(inner) = present("automation") {
        let steps = inner
            .as_object()
            .and_then(|i| i.get("steps"))
            .ok_or_else(|| format!("{P}.automation.steps: required"))?;
        parsed = Some(parse_steps(steps, &format!("{P}.automation.steps"))?);
    }
    for k in ["template", "recipient", "brand"] {
        if let Some(v) = present(k)
            && v.as_str().is_none_or(str::is_empty)
        {
            return Err(format!("{P}.{k}: must be a non-empty string"));
        }
    }
    for k in ["data", "profile"] {
        if let Some(v) = present(k) {
            if !v.is_object() {
                return Err(format!("{P}.{k}: must be an object"));
            }
            if larger_than(v, MAX_DATA_BYTES) {
                return Err(format!(
                    "{P}.{k}: larger than the limit of {MAX_DATA_BYTES} bytes (as JSON)"
                ));
            }
        }
    }
    for k in ["cancelation_token", "cancellation_token"] {
        if let Some(v) = present(k)
            && v.as_str().is_none_or(str::is_empty)
        {
            return Err(format!("{P}.{k}: must be a non-empty string"));
        }
    }
    Ok(parsed)
}

/// Validates a notification template body: size, nesting, `channels` (an object of at most
/// [`MAX_CHANNELS`] objects) and `published`.
pub fn validate_notification(b: &Value) -> Result<(), String> {
    check_document(b, "body", MAX_NOTIFICATION_BYTES)?;
    match b.get("channels") {
        Some(Value::Object(chs)) => {
            if chs.len() > MAX_CHANNELS {
                return Err(format!(
                    "channels: {} channels; the limit is {MAX_CHANNELS}",
                    chs.len()
                ));
            }
            for (name, c) in chs {
                if !c.is_object() {
                    return Err(format!("channels.{name}: must be an object"));
                }
            }
        }
        None => {}
        Some(_) => return Err("channels: must be an object".into()),
    }
    if let Some(p) = b.get("published")
        && !p.is_boolean()
    {
        return Err("published: must be a boolean".into());
    }
    Ok(())
}

/// Validates a step list by parsing it ([`parse_steps`]); the error starts with the JSON path
/// (`steps[2].duration: …`). The caller has bounded the document's nesting ([`check_document`]).
pub fn validate_steps(steps: &Value, path: &str) -> Result<(), String> {
    parse_steps(steps, path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5 minutes"), Ok(300_000));
        assert_eq!(parse_duration("2 days"), Ok(172_800_000));
        assert_eq!(parse_duration("1 hour 30 minutes"), Ok(5_400_000));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert!(parse_duration("5 minuts").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn paths_in_errors() {
        let steps = json!([
            {"action": "send", "template": "T", "recipient": "u"},
            {"action": "delay", "duration": "1 day"},
            {"action": "delay", "duration": "5 minuts"}
        ]);
        assert_eq!(
            validate_steps(&steps, "steps").unwrap_err(),
            "steps[2].duration: cannot parse \"5 minuts\""
        );
        let bad_if = json!([{"action": "cancel", "cancellation_token": "t", "if": "data.x =="}]);
        assert!(
            validate_steps(&bad_if, "steps")
                .unwrap_err()
                .starts_with("steps[0].if:")
        );
        assert!(validate_steps(&json!([{"action": "fly"}]), "steps").is_err());
    }
}

#[cfg(test)]
mod send_list_tests {
    use super::validate_steps;
    use serde_json::{Value, json};

    fn check(step: Value) -> Result<(), String> {
        validate_steps(&json!([step]), "steps")
    }

    #[test]
    fn send_list_steps() {
        assert!(check(json!({"action": "send-list", "list": "beta-users"})).is_ok());
        assert!(
            check(
                json!({"action": "send-list", "list": {"$ref": "data.list"}, "template": "T",
                "data": {"a": 1}})
            )
            .is_ok()
        );
        assert_eq!(
            check(json!({"action": "send-list"})).unwrap_err(),
            "steps[0].list: required"
        );
        assert!(check(json!({"action": "send-list", "list": ""})).is_err());
        assert!(check(json!({"action": "send-list", "list": "l", "data": [1]})).is_err());
        assert!(check(json!({"action": "send-list", "list": "l", "template": 5})).is_err());
    }
}
