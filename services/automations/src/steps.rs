//! Step validation (the API refuses a bad template or run with the JSON path of the problem)
//! and the small parsers steps need (`delay` durations and instants).

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::refs::MERGE_STRATEGIES;

pub const ACTIONS: [&str; 7] = [
    "send",
    "send-list",
    "delay",
    "cancel",
    "update-profile",
    "invoke",
    "fetch-data",
];

/// `"5 minutes"`, `"2 days"`, `"1 hour 30 minutes"`, `"90s"` → milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let err = || format!("cannot parse {s:?}");
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
    Ok(total)
}

/// ISO 8601 / RFC 3339 instant → epoch milliseconds.
pub fn parse_until(s: &str) -> Result<i64, String> {
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

/// Validates a step list; the error starts with the JSON path (`steps[2].duration: …`).
pub fn validate_steps(steps: &Value, path: &str) -> Result<(), String> {
    let list = steps
        .as_array()
        .ok_or_else(|| format!("{path}: must be an array of steps"))?;
    for (i, step) in list.iter().enumerate() {
        validate_step(step, &format!("{path}[{i}]"))?;
    }
    Ok(())
}

fn validate_step(step: &Value, path: &str) -> Result<(), String> {
    let obj = step
        .as_object()
        .ok_or_else(|| format!("{path}: must be an object"))?;
    let action = obj
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}.action: required string"))?;
    if !ACTIONS.contains(&action) {
        return Err(format!(
            "{path}.action: unknown action {action:?} (one of {})",
            ACTIONS.join(", ")
        ));
    }
    if let Some(cond) = obj.get("if") {
        let src = cond
            .as_str()
            .ok_or_else(|| format!("{path}.if: must be a string expression"))?;
        crate::expr::parse(src).map_err(|e| format!("{path}.if: {e}"))?;
    }
    if let Some(r) = obj.get("ref")
        && !r
            .as_str()
            .is_some_and(|s| !s.is_empty() && !s.contains('.'))
    {
        return Err(format!("{path}.ref: must be a non-empty name without dots"));
    }
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let string_or_ref = |name: &str, required: bool| -> Result<(), String> {
        match field(name) {
            None if required => Err(format!("{path}.{name}: required")),
            None => Ok(()),
            Some(v) if v.is_string() || is_ref(v) => Ok(()),
            Some(_) => Err(format!("{path}.{name}: must be a string or a $ref")),
        }
    };
    let object_or_ref = |name: &str| -> Result<(), String> {
        match field(name) {
            None => Ok(()),
            Some(v) if v.is_object() => Ok(()),
            Some(_) => Err(format!("{path}.{name}: must be an object")),
        }
    };
    match action {
        "send" => {
            if let Some(m) = field("message") {
                if !m.is_object() {
                    return Err(format!("{path}.message: must be an object"));
                }
            } else {
                string_or_ref("template", true)?;
                string_or_ref("recipient", false)?;
                string_or_ref("brand", false)?;
                object_or_ref("data")?;
                object_or_ref("profile")?;
                object_or_ref("override")?;
            }
        }
        "send-list" => crate::send_list::validate(obj, path)?,
        "delay" => match (field("duration"), field("until")) {
            (Some(d), None) => {
                let d = d
                    .as_str()
                    .ok_or_else(|| format!("{path}.duration: must be a string"))?;
                parse_duration(d).map_err(|e| format!("{path}.duration: {e}"))?;
            }
            (None, Some(u)) => {
                let u = u
                    .as_str()
                    .ok_or_else(|| format!("{path}.until: must be a string"))?;
                parse_until(u).map_err(|e| format!("{path}.until: {e}"))?;
            }
            (Some(_), Some(_)) => {
                return Err(format!("{path}: give either duration or until, not both"));
            }
            (None, None) => return Err(format!("{path}.duration: required (or until)")),
        },
        "cancel" => {
            if cancelation_token(step).is_none_or(str::is_empty) {
                return Err(format!("{path}.cancelation_token: required string"));
            }
        }
        "update-profile" => {
            string_or_ref("recipient_id", false)?;
            match field("profile") {
                Some(v) if v.is_object() => {}
                _ => return Err(format!("{path}.profile: required object")),
            }
            if let Some(m) = field("merge")
                && !m.as_str().is_some_and(|m| MERGE_STRATEGIES.contains(&m))
            {
                return Err(format!(
                    "{path}.merge: must be one of {}",
                    MERGE_STRATEGIES.join(", ")
                ));
            }
        }
        "invoke" => {
            string_or_ref("template", true)?;
            object_or_ref("context")?;
        }
        "fetch-data" => {
            let hook = field("webhook")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("{path}.webhook: required object"))?;
            match hook.get("url").and_then(Value::as_str) {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => return Err(format!("{path}.webhook.url: required http(s) URL")),
            }
            if let Some(m) = hook.get("method") {
                let ok = m.as_str().is_some_and(|m| {
                    ["GET", "POST", "PUT", "PATCH", "DELETE"]
                        .contains(&m.to_ascii_uppercase().as_str())
                });
                if !ok {
                    return Err(format!(
                        "{path}.webhook.method: must be GET, POST, PUT, PATCH or DELETE"
                    ));
                }
            }
            for k in ["headers", "params"] {
                if let Some(h) = hook.get(k)
                    && !h.is_object()
                {
                    return Err(format!("{path}.webhook.{k}: must be an object"));
                }
            }
            if let Some(m) = field("merge_strategy")
                && !m.as_str().is_some_and(|m| MERGE_STRATEGIES.contains(&m))
            {
                return Err(format!(
                    "{path}.merge_strategy: must be one of {}",
                    MERGE_STRATEGIES.join(", ")
                ));
            }
        }
        _ => unreachable!("checked above"),
    }
    Ok(())
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
