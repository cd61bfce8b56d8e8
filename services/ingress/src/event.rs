//! Parsing, validation and normalization of RudderStack events into the EVENTS envelope.
//!
//! Pure functions over the request bytes: free-form JSON (traits, properties, context, the raw
//! event) is never re-serialized, only sliced out of the body (`Bytes::slice_ref`), so the
//! envelope keeps it byte for byte and the hot path copies nothing it does not have to.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use rc_proto::{Envelope, EventType};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Why an event was refused; the text is meant for the person reading the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the event is wrong and a retry cannot fix it.
    Invalid(String),
    /// 413: the event is larger than the per-event cap.
    TooLarge(String),
}

impl Rejection {
    pub fn message(&self) -> &str {
        match self {
            Rejection::Invalid(m) | Rejection::TooLarge(m) => m,
        }
    }
}

/// A string id that senders may also give as a number (the SDK validators allow both).
struct Id<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Id<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = Id<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Id(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// The fields we route on; everything else stays in the raw bytes. Unknown keys are normal.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<Id<'a>>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<Id<'a>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(rename = "groupId", borrow, default)]
    group_id: Option<Id<'a>>,
    /// page / screen: the page or screen name.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// alias: the earlier id (often the anonymousId) of `userId`.
    #[serde(rename = "previousId", borrow, default)]
    previous_id: Option<Id<'a>>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<Id<'a>>,
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "originalTimestamp", borrow, default)]
    original_timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "receivedAt", borrow, default)]
    received_at: Option<Cow<'a, str>>,
    /// Only meaningful at the top level: `{"batch": [...]}` from direct callers.
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct WireContext<'a> {
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
}

/// A validated event, ready to publish.
#[derive(Debug)]
pub struct Normalized {
    pub envelope: Envelope,
}

impl Normalized {
    pub fn event_type(&self) -> EventType {
        self.envelope.r#type()
    }
}

/// What a request body holds.
pub enum Parsed {
    Single(Box<Normalized>),
    /// Every event of the batch, in order; rejections carry their index.
    Batch(Vec<Result<Normalized, Rejection>>),
}

pub struct Normalizer {
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
}

fn json_error(err: &serde_json::Error) -> String {
    format!(
        "invalid JSON at line {}, column {}: {}",
        err.line(),
        err.column(),
        strip_position(&err.to_string())
    )
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

impl Normalizer {
    /// Parses a request body: one event, or `{"batch": [...]}`.
    pub fn parse_body(
        &self,
        workspace: &str,
        body: &Bytes,
        received_at: OffsetDateTime,
    ) -> Result<Parsed, Rejection> {
        let trimmed = body.trim_ascii_start();
        if trimmed.first() != Some(&b'{') {
            return Err(if trimmed.is_empty() {
                Rejection::Invalid("empty body: send one event as a JSON object".into())
            } else {
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Err(e) => Rejection::Invalid(json_error(&e)),
                    Ok(_) => Rejection::Invalid(
                        "the body must be a JSON object (one event, or {\"batch\": [...]})".into(),
                    ),
                }
            });
        }
        let wire: WireEvent =
            serde_json::from_slice(body).map_err(|e| Rejection::Invalid(json_error(&e)))?;
        if let Some(items) = wire.batch {
            if wire.kind.is_some() {
                return Err(Rejection::Invalid(
                    "an object with `batch` is a batch wrapper and cannot also have `type`".into(),
                ));
            }
            if items.is_empty() {
                return Err(Rejection::Invalid(
                    "empty batch: `batch` has no events".into(),
                ));
            }
            if items.len() > self.max_batch_events {
                return Err(Rejection::TooLarge(format!(
                    "the batch has {} events; the limit is {} per request: split it",
                    items.len(),
                    self.max_batch_events
                )));
            }
            let events = items
                .into_iter()
                .map(|raw| {
                    let bytes = body.slice_ref(raw.get().as_bytes());
                    self.parse_one(workspace, body, &bytes, received_at)
                })
                .collect();
            return Ok(Parsed::Batch(events));
        }
        if body.len() > self.max_event_bytes {
            return Err(self.too_large(body.len()));
        }
        crate::scan::check(body).map_err(Rejection::Invalid)?;
        self.normalize(workspace, body, body.clone(), wire, received_at)
            .map(|n| Parsed::Single(Box::new(n)))
    }

    fn too_large(&self, len: usize) -> Rejection {
        Rejection::TooLarge(format!(
            "event is {len} bytes; the limit is {} bytes per event",
            self.max_event_bytes
        ))
    }

    fn parse_one(
        &self,
        workspace: &str,
        body: &Bytes,
        raw: &Bytes,
        received_at: OffsetDateTime,
    ) -> Result<Normalized, Rejection> {
        if raw.len() > self.max_event_bytes {
            return Err(self.too_large(raw.len()));
        }
        if raw.first() != Some(&b'{') {
            return Err(Rejection::Invalid("event must be a JSON object".into()));
        }
        crate::scan::check(raw).map_err(Rejection::Invalid)?;
        let wire: WireEvent = serde_json::from_slice(raw).map_err(|e| {
            Rejection::Invalid(format!("invalid event: {}", strip_position(&e.to_string())))
        })?;
        if wire.batch.is_some() {
            return Err(Rejection::Invalid("batches cannot be nested".into()));
        }
        self.normalize(workspace, body, raw.clone(), wire, received_at)
    }

    fn normalize(
        &self,
        workspace: &str,
        body: &Bytes,
        raw: Bytes,
        wire: WireEvent<'_>,
        received_at: OffsetDateTime,
    ) -> Result<Normalized, Rejection> {
        let event_type = parse_type(wire.kind.as_deref())?;
        let user_id = non_empty(wire.user_id);
        let anonymous_id = non_empty(wire.anonymous_id);
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(Rejection::Invalid(
                "userId or anonymousId is required (a non-empty string or number)".into(),
            ));
        }
        let mut event = String::new();
        let mut group_id = String::new();
        let mut previous_id = String::new();
        match event_type {
            EventType::Track => match wire.event.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => event = wire.event.unwrap().into_owned(),
                _ => {
                    return Err(Rejection::Invalid(
                        "track events need a non-empty `event` name".into(),
                    ));
                }
            },
            EventType::Group => match non_empty(wire.group_id) {
                Some(id) => group_id = id.into_owned(),
                None => {
                    return Err(Rejection::Invalid(
                        "group events need a non-empty `groupId`".into(),
                    ));
                }
            },
            // The name is optional (RudderStack's spec); it keys the catalog entry when given.
            EventType::Page | EventType::Screen => {
                if let Some(name) = wire.name.filter(|n| !n.trim().is_empty()) {
                    if name.len() > MAX_NAME_BYTES {
                        return Err(Rejection::Invalid(format!(
                            "`name` must be at most {MAX_NAME_BYTES} bytes"
                        )));
                    }
                    event = name.into_owned();
                }
            }
            EventType::Alias => match (non_empty(wire.previous_id), &user_id) {
                (Some(prev), Some(_)) => previous_id = prev.into_owned(),
                _ => {
                    return Err(Rejection::Invalid(
                        "alias events need a non-empty `previousId` and `userId`".into(),
                    ));
                }
            },
            EventType::Identify | EventType::Unspecified => {}
        }

        let context = object_field("context", wire.context)?;
        let properties = object_field("properties", wire.properties)?;
        if event_type == EventType::Track
            && let Some(props) = properties
        {
            check_inline_automation(props)?;
        }
        let mut traits = object_field("traits", wire.traits)?;
        if traits.is_none() && event_type == EventType::Identify {
            // Browser SDKs put identify traits only in context.traits.
            if let Some(ctx) = context {
                let ctx: WireContext = serde_json::from_str(ctx.get()).map_err(|e| {
                    Rejection::Invalid(format!(
                        "invalid `context`: {}",
                        strip_position(&e.to_string())
                    ))
                })?;
                traits = object_field("context.traits", ctx.traits)?;
            }
        }

        let message_id = match non_empty(wire.message_id) {
            Some(id) => {
                if id.len() > 256 || id.chars().any(char::is_control) {
                    return Err(Rejection::Invalid(
                        "`messageId` must be at most 256 characters with no control characters"
                            .into(),
                    ));
                }
                id.into_owned()
            }
            None => derive_message_id(&raw),
        };

        let timestamp = [
            ("timestamp", wire.timestamp.as_deref()),
            ("originalTimestamp", wire.original_timestamp.as_deref()),
            ("receivedAt", wire.received_at.as_deref()),
        ]
        .into_iter()
        .find_map(|(name, value)| value.map(|v| (name, v)))
        .map(|(name, value)| {
            parse_time(value).ok_or_else(|| {
                Rejection::Invalid(format!(
                    "`{name}` is not an ISO 8601 / RFC 3339 time: {value:?}"
                ))
            })
        })
        .transpose()?
        .unwrap_or(received_at);

        let slice = |v: Option<&RawValue>| {
            v.map_or_else(Bytes::new, |v| body.slice_ref(v.get().as_bytes()))
        };
        let envelope = Envelope {
            schema_version: 1,
            workspace_id: workspace.to_owned(),
            message_id,
            r#type: event_type as i32,
            user_id: user_id.map(Cow::into_owned).unwrap_or_default(),
            anonymous_id: anonymous_id.map(Cow::into_owned).unwrap_or_default(),
            event,
            group_id,
            timestamp: Some(to_proto_time(timestamp)),
            received_at: Some(to_proto_time(received_at)),
            traits: slice(traits),
            properties: slice(properties),
            context: slice(context),
            raw,
            previous_id,
        };
        Ok(Normalized { envelope })
    }
}

/// The longest page / screen `name` (it becomes a catalog and mapping key, as track names do).
pub const MAX_NAME_BYTES: usize = 1024;

const TYPES: &str = "identify, track, group, page, screen or alias";

fn parse_type(kind: Option<&str>) -> Result<EventType, Rejection> {
    let Some(kind) = kind else {
        return Err(Rejection::Invalid(format!(
            "missing `type`: expected {TYPES}"
        )));
    };
    // RudderStack matches the type case-insensitively.
    EventType::from_name(kind)
        .ok_or_else(|| Rejection::Invalid(format!("unknown event type {kind:?}: expected {TYPES}")))
}

fn non_empty(id: Option<Id<'_>>) -> Option<Cow<'_, str>> {
    id.map(|i| i.0).filter(|s| !s.is_empty())
}

fn object_field<'a>(
    name: &str,
    value: Option<&'a RawValue>,
) -> Result<Option<&'a RawValue>, Rejection> {
    match value {
        Some(v) if v.get().as_bytes().first() == Some(&b'{') => Ok(Some(v)),
        Some(_) => Err(Rejection::Invalid(format!(
            "`{name}` must be a JSON object"
        ))),
        None => Ok(None),
    }
}

#[derive(Deserialize)]
struct WireProperties<'a> {
    #[serde(borrow, default)]
    courier: Option<&'a RawValue>,
}

/// An inline automation (`properties.courier.automation`) must pass the contract the
/// automations consumer applies (`rc_common::automation`), so it is refused here with a 400
/// and its path instead of being accepted and dead-lettered later.
fn check_inline_automation(properties: &RawValue) -> Result<(), Rejection> {
    let text = properties.get();
    // Most events carry no `courier` key: skip them without parsing (`\u` could spell one).
    if !text.contains("courier") && !text.contains("\\u") {
        return Ok(());
    }
    let invalid = |what: &str, e: serde_json::Error| {
        Rejection::Invalid(format!(
            "invalid `{what}`: {}",
            strip_position(&e.to_string())
        ))
    };
    let props: WireProperties = serde_json::from_str(text).map_err(|e| invalid("properties", e))?;
    let Some(courier) = props.courier else {
        return Ok(());
    };
    let courier: serde_json::Value =
        serde_json::from_str(courier.get()).map_err(|e| invalid("properties.courier", e))?;
    match courier.get("automation").filter(|a| !a.is_null()) {
        Some(a) => rc_common::automation::validate_inline(a).map_err(Rejection::Invalid),
        None => Ok(()),
    }
}

/// `derived-<32 hex>`: the same event bytes always give the same id, so a caller's retries of
/// an event without `messageId` still dedupe.
pub fn derive_message_id(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut id = String::with_capacity(8 + 32);
    id.push_str("derived-");
    id.push_str(&hex::encode(&digest[..16]));
    id
}

fn parse_time(value: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(value, &Iso8601::DEFAULT))
        .ok()
        .or_else(|| {
            // ISO 8601 without an offset: read as UTC.
            time::PrimitiveDateTime::parse(value, &Iso8601::DEFAULT)
                .ok()
                .map(|t| t.assume_utc())
        })
}

pub fn to_proto_time(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm() -> Normalizer {
        Normalizer {
            max_event_bytes: 64 * 1024,
            max_batch_events: 5_000,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_772_442_000).unwrap()
    }

    fn single(body: &str) -> Result<Envelope, Rejection> {
        match norm().parse_body("ws1", &Bytes::copy_from_slice(body.as_bytes()), now())? {
            Parsed::Single(n) => Ok(n.envelope),
            Parsed::Batch(_) => panic!("expected a single event"),
        }
    }

    fn invalid(body: &str) -> String {
        match single(body) {
            Err(Rejection::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn identify_takes_root_traits_and_keeps_raw() {
        let body = r#"{"type":"identify","userId":"u1","traits":{"email":"a@b.c"},"context":{"traits":{"email":"other"}},"messageId":"m1","timestamp":"2026-03-02T09:14:05.232Z","extra":[1,2]}"#;
        let env = single(body).unwrap();
        assert_eq!(env.r#type(), EventType::Identify);
        assert_eq!(env.user_id, "u1");
        assert_eq!(env.message_id, "m1");
        assert_eq!(&env.traits[..], br#"{"email":"a@b.c"}"#);
        assert_eq!(&env.context[..], br#"{"traits":{"email":"other"}}"#);
        assert_eq!(&env.raw[..], body.as_bytes());
        let ts = env.timestamp.unwrap();
        assert_eq!(ts.seconds, 1_772_442_845);
        assert_eq!(ts.nanos, 232_000_000);
        assert_eq!(env.workspace_id, "ws1");
    }

    #[test]
    fn identify_falls_back_to_context_traits() {
        let env = single(r#"{"type":"Identify","anonymousId":"a1","context":{"ip":"1.2.3.4","traits":{"plan":"team"}}}"#).unwrap();
        assert_eq!(&env.traits[..], br#"{"plan":"team"}"#);
        assert_eq!(env.anonymous_id, "a1");
        assert!(env.user_id.is_empty());
        assert!(env.message_id.starts_with("derived-"));
    }

    #[test]
    fn null_traits_fall_back_too() {
        let env = single(
            r#"{"type":"identify","userId":"u","traits":null,"context":{"traits":{"x":1}}}"#,
        )
        .unwrap();
        assert_eq!(&env.traits[..], br#"{"x":1}"#);
    }

    #[test]
    fn track_keeps_properties_losslessly() {
        let props = r#"{"total":42.50,"courier":{"automation":{"data":{"userId":"u_4fa21","days_left":3}}},"big":12345678901234567890}"#;
        let body = format!(
            r#"{{"type":"track","event":"trial-ending","userId":"u","properties":{props}}}"#
        );
        let env = single(&body).unwrap();
        assert_eq!(env.event, "trial-ending");
        assert_eq!(
            &env.properties[..],
            props.as_bytes(),
            "numbers keep their exact text"
        );
    }

    #[test]
    fn group_needs_group_id() {
        let env =
            single(r#"{"type":"group","groupId":42,"userId":7,"traits":{"name":"N"}}"#).unwrap();
        assert_eq!(env.group_id, "42");
        assert_eq!(env.user_id, "7");
        assert!(invalid(r#"{"type":"group","userId":"u"}"#).contains("groupId"));
        assert!(invalid(r#"{"type":"group","userId":"u","groupId":""}"#).contains("groupId"));
    }

    #[test]
    fn page_screen_and_alias_as_the_webhook_destination_sends_them() {
        let env = single(r#"{"type":"Page","name":"Pricing","anonymousId":"a1","properties":{"path":"/pricing"},"context":{"ip":"203.0.113.24"}}"#).unwrap();
        assert_eq!(env.r#type(), EventType::Page);
        assert_eq!(env.event, "Pricing");
        assert_eq!(&env.properties[..], br#"{"path":"/pricing"}"#);
        let env = single(r#"{"type":"screen","userId":"u","properties":{"x":1}}"#).unwrap();
        assert_eq!((env.r#type(), env.event.as_str()), (EventType::Screen, ""));
        let env = single(r#"{"type":"alias","userId":"u","previousId":"anon-1"}"#).unwrap();
        assert_eq!(env.r#type(), EventType::Alias);
        assert_eq!(
            (env.user_id.as_str(), env.previous_id.as_str()),
            ("u", "anon-1")
        );
        assert!(invalid(r#"{"type":"alias","userId":"u"}"#).contains("previousId"));
        assert!(
            invalid(r#"{"type":"alias","anonymousId":"a","previousId":"p"}"#).contains("userId")
        );
        let long = format!(
            r#"{{"type":"page","userId":"u","name":"{}"}}"#,
            "n".repeat(2000)
        );
        assert!(invalid(&long).contains("`name`"));
        assert!(invalid(r#"{"type":"page","userId":"u","name":7}"#).contains("invalid"));
    }

    #[test]
    fn rejections_say_what_is_wrong() {
        assert!(invalid(r#"{"type":"bogus","userId":"u"}"#).contains("unknown event type"));
        assert!(invalid(r#"{"userId":"u"}"#).contains("missing `type`"));
        assert!(invalid(r#"{"type":"track","event":"x"}"#).contains("userId or anonymousId"));
        assert!(
            invalid(r#"{"type":"track","event":"x","userId":""}"#)
                .contains("userId or anonymousId")
        );
        assert!(invalid(r#"{"type":"track","userId":"u"}"#).contains("`event`"));
        assert!(
            invalid(r#"{"type":"track","event":"x","userId":"u","properties":[1]}"#)
                .contains("`properties` must be a JSON object")
        );
        assert!(
            invalid(r#"{"type":"track","event":"x","userId":"u","timestamp":"yesterday"}"#)
                .contains("`timestamp`")
        );
        assert!(invalid(r#"{"type":"track","event":"x","userId":{"a":1}}"#).contains("invalid"));
        assert!(invalid("[1,2]").contains("JSON object"));
        assert!(invalid("").contains("empty body"));
    }

    #[test]
    fn malformed_json_says_where() {
        let m = invalid("{\"type\":\"track\",\n \"event\": }");
        assert!(m.contains("line 2, column"), "{m}");
    }

    #[test]
    fn oversized_event_is_413() {
        let big = "x".repeat(70 * 1024);
        let body =
            format!(r#"{{"type":"track","event":"e","userId":"u","properties":{{"p":"{big}"}}}}"#);
        assert!(matches!(single(&body), Err(Rejection::TooLarge(_))));
    }

    #[test]
    fn batch_reports_each_event_by_index() {
        let body = Bytes::from_static(br#"{"batch":[{"type":"track","event":"a","userId":"u"},{"type":"alias","userId":"u"},7]}"#);
        let Parsed::Batch(events) = norm().parse_body("ws", &body, now()).unwrap() else {
            panic!("expected batch")
        };
        assert_eq!(events.len(), 3);
        assert!(events[0].is_ok());
        assert!(
            events[1]
                .as_ref()
                .unwrap_err()
                .message()
                .contains("previousId")
        );
        assert!(
            events[2]
                .as_ref()
                .unwrap_err()
                .message()
                .contains("JSON object")
        );
        assert_eq!(
            &events[0].as_ref().unwrap().envelope.raw[..],
            br#"{"type":"track","event":"a","userId":"u"}"#
        );
    }

    #[test]
    fn derived_ids_are_stable() {
        let a = single(r#"{"type":"track","event":"a","userId":"u"}"#).unwrap();
        let b = single(r#"{"type":"track","event":"a","userId":"u"}"#).unwrap();
        let c = single(r#"{"type":"track","event":"b","userId":"u"}"#).unwrap();
        assert_eq!(a.message_id, b.message_id);
        assert_ne!(a.message_id, c.message_id);
    }

    #[test]
    fn timestamps_fall_back_in_order() {
        let env = single(r#"{"type":"track","event":"a","userId":"u","originalTimestamp":"2026-03-02T09:14:05Z"}"#).unwrap();
        assert_eq!(env.timestamp.unwrap().seconds, 1_772_442_845);
        let env = single(r#"{"type":"track","event":"a","userId":"u"}"#).unwrap();
        assert_eq!(
            env.timestamp.unwrap().seconds,
            1_772_442_000,
            "received time"
        );
        let env = single(
            r#"{"type":"track","event":"a","userId":"u","timestamp":"2026-03-02T09:14:05.5"}"#,
        )
        .unwrap();
        assert_eq!(
            env.timestamp.unwrap().seconds,
            1_772_442_845,
            "no offset reads as UTC"
        );
    }

    #[test]
    fn invalid_inline_automations_are_refused_with_their_path() {
        let track = |automation: &str| {
            format!(
                r#"{{"type":"track","event":"e","userId":"u","properties":{{"courier":{{"automation":{automation}}}}}}}"#
            )
        };
        let deep = format!(r#""{}a{}""#, "(".repeat(5_000), ")".repeat(5_000));
        for (automation, expected) in [
            (
                format!(
                    r#"{{"steps":[{{"action":"cancel","cancelation_token":"t","if":{deep}}}]}}"#
                ),
                "properties.courier.automation.steps[0].if: expression is 10001 bytes",
            ),
            (
                r#"{"steps":[{"action":"fly"}]}"#.to_string(),
                "properties.courier.automation.steps[0].action: unknown action",
            ),
            (
                r#""run it""#.to_string(),
                "properties.courier.automation: must be an object",
            ),
        ] {
            let m = invalid(&track(&automation));
            assert!(m.starts_with(expected), "{m}");
        }
        // Valid, absent, null, or in a non-track event: accepted.
        assert!(single(&track(r#"{"steps":[{"action":"send","template":"T"}]}"#)).is_ok());
        assert!(single(&track("null")).is_ok());
        assert!(
            single(r#"{"type":"track","event":"e","userId":"u","properties":{"courier":{}}}"#)
                .is_ok()
        );
        assert!(
            single(r#"{"type":"identify","userId":"u","traits":{"courier":{"automation":7}}}"#)
                .is_ok()
        );
    }

    #[test]
    fn message_ids_cannot_inject_headers() {
        assert!(
            invalid(
                "{\"type\":\"track\",\"event\":\"a\",\"userId\":\"u\",\"messageId\":\"x\\r\\ny\"}"
            )
            .contains("messageId")
        );
    }
}
