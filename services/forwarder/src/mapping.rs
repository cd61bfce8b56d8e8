//! COURIER events → RudderStack events (the shapes are documented in the README).
//!
//! - `MessageEvent` → `track` named after the status (`SENT` → `Message Sent`, …), `messageId`
//!   `<message id>-<STATUS>` (stable across retries and redeliveries, so RudderStack dedupes).
//! - `ProfileUpdated` → `identify` (traits = the profile), opt-in.
//! - `TenantUpdated` → `group` (groupId = tenant id, traits = the tenant), opt-in.

use rc_proto::{MessageEvent, ProfileUpdated, TenantUpdated};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

pub const LIBRARY_NAME: &str = "rudder-courier";
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Courier statuses that are sent, with their event names.
pub const SENDABLE_STATUSES: [(&str, &str); 6] = [
    ("SENT", "Message Sent"),
    ("DELIVERED", "Message Delivered"),
    ("OPENED", "Message Opened"),
    ("CLICKED", "Message Clicked"),
    ("UNDELIVERABLE", "Message Undeliverable"),
    ("UNROUTABLE", "Message Unroutable"),
];

pub fn event_name(status: &str) -> Option<&'static str> {
    SENDABLE_STATUSES
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(status))
        .map(|(_, name)| *name)
}

/// Always three fractional digits and `Z` (`2026-03-02T09:00:11.000Z`), as RudderStack SDKs
/// send; the well-known `Rfc3339` format would drop trailing zeros (`…:11Z`, `…:11.5Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let t = t?;
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos.max(0));
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

fn context() -> Value {
    json!({"library": {"name": LIBRARY_NAME, "version": LIBRARY_VERSION}})
}

fn json_object(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// The `anonymousId` used when an event has no user: RudderStack rejects a whole batch when one
/// event has neither id, so such events carry a stable anonymous id instead.
pub fn anonymous_id_for_message(message_id: &str) -> String {
    format!("courier-message-{message_id}")
}

fn set_identity(event: &mut Map<String, Value>, user_id: &str, anonymous: impl FnOnce() -> String) {
    if user_id.is_empty() {
        event.insert("anonymousId".into(), Value::String(anonymous()));
    } else {
        event.insert("userId".into(), Value::String(user_id.to_string()));
    }
}

/// `None` when the status is not one that is sent.
pub fn message_event(ev: &MessageEvent, now: OffsetDateTime) -> Option<Value> {
    let name = event_name(&ev.status)?;
    let status = ev.status.to_ascii_uppercase();
    let mut props = Map::new();
    props.insert("id".into(), json!(ev.message_id));
    props.insert("status".into(), json!(status));
    if !ev.recipient.is_empty() {
        props.insert("recipient".into(), json!(ev.recipient));
    }
    let strings = [
        ("notification", &ev.template),
        ("event", &ev.event),
        ("reason", &ev.reason),
        ("error", &ev.error),
        ("channel", &ev.channel),
        ("provider", &ev.provider),
        ("tenant_id", &ev.tenant_id),
        ("run_id", &ev.run_id),
    ];
    for (key, value) in strings {
        if !value.is_empty() {
            props.insert(key.into(), json!(value));
        }
    }
    let stamps = [
        ("enqueued", ev.enqueued_ms),
        ("sent", ev.sent_ms),
        ("delivered", ev.delivered_ms),
        ("opened", ev.opened_ms),
        ("clicked", ev.clicked_ms),
    ];
    for (key, ms) in stamps {
        if ms > 0 {
            props.insert(key.into(), json!(ms));
        }
    }
    let at = ts(ev.status_at.as_ref()).unwrap_or(now);
    let mut event = Map::new();
    event.insert("type".into(), json!("track"));
    event.insert("event".into(), json!(name));
    set_identity(&mut event, &ev.recipient, || {
        anonymous_id_for_message(&ev.message_id)
    });
    event.insert(
        "messageId".into(),
        json!(format!("{}-{}", ev.message_id, status)),
    );
    event.insert("originalTimestamp".into(), json!(rfc3339(at)));
    event.insert("sentAt".into(), json!(rfc3339(now)));
    event.insert("channel".into(), json!("server"));
    event.insert("context".into(), context());
    event.insert("properties".into(), Value::Object(props));
    Some(Value::Object(event))
}

/// `None` for deletions (RudderStack has no "delete traits" call; they are not sent).
pub fn profile_event(ev: &ProfileUpdated, now: OffsetDateTime) -> Option<Value> {
    if ev.deleted || ev.user_id.is_empty() {
        return None;
    }
    let at = ts(ev.updated_at.as_ref()).unwrap_or(now);
    let cause = if ev.cause_id.is_empty() {
        (at.unix_timestamp_nanos() / 1_000_000).to_string()
    } else {
        ev.cause_id.clone()
    };
    Some(json!({
        "type": "identify",
        "userId": ev.user_id,
        "messageId": format!("profile-{}-{}", ev.user_id, cause),
        "traits": json_object(&ev.profile),
        "originalTimestamp": rfc3339(at),
        "sentAt": rfc3339(now),
        "channel": "server",
        "context": context(),
    }))
}

/// `None` for deletions.
pub fn tenant_event(ev: &TenantUpdated, now: OffsetDateTime) -> Option<Value> {
    if ev.deleted || ev.tenant_id.is_empty() {
        return None;
    }
    let at = ts(ev.updated_at.as_ref()).unwrap_or(now);
    let cause = if ev.cause_id.is_empty() {
        (at.unix_timestamp_nanos() / 1_000_000).to_string()
    } else {
        ev.cause_id.clone()
    };
    let mut event = Map::new();
    event.insert("type".into(), json!("group"));
    event.insert("groupId".into(), json!(ev.tenant_id));
    set_identity(&mut event, &ev.member_user_id, || {
        format!("courier-tenant-{}", ev.tenant_id)
    });
    let member = if ev.member_user_id.is_empty() {
        String::new()
    } else {
        format!("-{}", ev.member_user_id)
    };
    event.insert(
        "messageId".into(),
        json!(format!("tenant-{}{}-{}", ev.tenant_id, member, cause)),
    );
    event.insert("traits".into(), json_object(&ev.tenant));
    event.insert("originalTimestamp".into(), json!(rfc3339(at)));
    event.insert("sentAt".into(), json!(rfc3339(now)));
    event.insert("channel".into(), json!("server"));
    event.insert("context".into(), context());
    Some(Value::Object(event))
}

/// RudderStack's rule: every event has a non-empty `userId` or `anonymousId`.
pub fn has_identity(event: &Value) -> bool {
    let ok = |k: &str| {
        event
            .get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    ok("userId") || ok("anonymousId")
}

/// A test event for `POST /integrations/rudderstack/test`.
pub fn test_event(now: OffsetDateTime, nonce: &str) -> Value {
    json!({
        "type": "track",
        "event": "Courier Test Event",
        "userId": "rudder-courier-test",
        "messageId": format!("rudder-courier-test-{nonce}"),
        "originalTimestamp": rfc3339(now),
        "sentAt": rfc3339(now),
        "channel": "server",
        "context": context(),
        "properties": {"test": true},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(status: &str, recipient: &str) -> MessageEvent {
        MessageEvent {
            schema_version: 1,
            workspace_id: "acme".into(),
            message_id: "1-abc".into(),
            status: status.into(),
            run_id: "run-1".into(),
            template: "welcome".into(),
            recipient: recipient.into(),
            channel: "email".into(),
            provider: "sendgrid".into(),
            tenant_id: "t1".into(),
            status_at: Some(prost_types::Timestamp {
                seconds: 1_772_442_011,
                nanos: 6_000_000,
            }),
            enqueued_ms: 1_772_442_010_000,
            delivered_ms: 1_772_442_011_006,
            ..Default::default()
        }
    }

    #[test]
    fn delivered_maps_to_message_delivered() {
        let now = OffsetDateTime::from_unix_timestamp(1_772_442_100).unwrap();
        let v = message_event(&ev("DELIVERED", "u_1"), now).unwrap();
        assert_eq!(v["event"], "Message Delivered");
        assert_eq!(v["userId"], "u_1");
        assert_eq!(v["messageId"], "1-abc-DELIVERED");
        assert_eq!(v["originalTimestamp"], "2026-03-02T09:00:11.006Z");
        assert_eq!(v["context"]["library"]["name"], "rudder-courier");
        assert_eq!(v["properties"]["notification"], "welcome");
        assert_eq!(v["properties"]["channel"], "email");
        assert_eq!(v["properties"]["delivered"], 1_772_442_011_006i64);
        assert!(v["properties"].get("opened").is_none());
        assert!(has_identity(&v));
    }

    #[test]
    fn timestamps_always_have_milliseconds() {
        let at = |nanos: i128| OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
        let s = 1_772_442_011i128 * 1_000_000_000;
        assert_eq!(rfc3339(at(s)), "2026-03-02T09:00:11.000Z");
        assert_eq!(rfc3339(at(s + 500_000_000)), "2026-03-02T09:00:11.500Z");
        assert_eq!(rfc3339(at(s + 6_999_999)), "2026-03-02T09:00:11.006Z");
        let offset = at(s).to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339(offset), "2026-03-02T09:00:11.000Z");
    }

    #[test]
    fn unsent_statuses_and_anonymous_fallback() {
        let now = OffsetDateTime::now_utc();
        assert!(message_event(&ev("ENQUEUED", "u"), now).is_none());
        assert!(message_event(&ev("CANCELED", "u"), now).is_none());
        let v = message_event(&ev("unroutable", ""), now).unwrap();
        assert_eq!(v["event"], "Message Unroutable");
        assert_eq!(v["messageId"], "1-abc-UNROUTABLE");
        assert_eq!(v["anonymousId"], "courier-message-1-abc");
        assert!(has_identity(&v));
    }
}
