//! The two consumers: identify events and update-profile requests.

use async_nats::jetstream::Message;
use prost::Message as _;
use rc_common::consumer::{Handler, Outcome};
use rc_common::redis::RedisConn;
use rc_common::subjects;
use rc_proto::{Envelope, EventType, ProfileUpdateRequest};
use serde_json::{Map, Value};

use crate::Publisher;
use crate::store::{self, Applied, Cond, Reset, Stamp, Write};

pub struct IdentifyHandler {
    pub redis: RedisConn,
    pub publisher: Publisher,
    /// The profile size bound: an identify that would pass it is dead-lettered.
    pub max_profile_bytes: usize,
}

fn too_large(bytes: usize, max: usize) -> Outcome {
    Outcome::Poison(format!(
        "the profile would be about {bytes} bytes of JSON, more than {max}"
    ))
}

fn ts_ms(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    rc_common::clock::ms_of(ts.as_ref())
}

fn workspace(message: &Message, declared: &str) -> Result<String, String> {
    let from_subject = subjects::workspace_of(&message.subject).unwrap_or("");
    if !declared.is_empty() && declared != from_subject {
        return Err(format!(
            "workspace {declared:?} in the payload does not match the subject {:?}",
            message.subject.as_str()
        ));
    }
    if from_subject.is_empty() {
        return Err("no workspace in the subject".into());
    }
    Ok(from_subject.to_string())
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, String> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what} is not a JSON object")),
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
    }
}

fn delivered(message: &Message) -> i64 {
    message.info().map(|i| i.delivered).unwrap_or(1)
}

/// The profile id of an identify: `userId`, else `anonymousId` (see the README).
pub fn profile_id(envelope: &Envelope) -> Option<&str> {
    [envelope.user_id.as_str(), envelope.anonymous_id.as_str()]
        .into_iter()
        .find(|s| !s.is_empty())
}

impl Handler for IdentifyHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let envelope = match Envelope::decode(message.payload.clone()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(format!("undecodable envelope: {e}")),
        };
        if envelope.r#type() != EventType::Identify {
            return Outcome::Poison(format!(
                "expected an identify envelope, got type {}",
                envelope.r#type
            ));
        }
        let ws = match workspace(message, &envelope.workspace_id) {
            Ok(ws) => ws,
            Err(reason) => return Outcome::Poison(reason),
        };
        let Some(uid) = profile_id(&envelope) else {
            return Outcome::Poison("identify without userId or anonymousId".into());
        };
        if envelope.user_id.is_empty() {
            metrics::counter!("profiles_identify_anonymous_total").increment(1);
        }
        let traits = match json_object(&envelope.traits, "traits") {
            Ok(t) => t,
            Err(reason) => return Outcome::Poison(reason),
        };
        let fields = crate::traits::profile_fields(&traits);
        let Some(ts) = ts_ms(&envelope.timestamp).or_else(|| ts_ms(&envelope.received_at)) else {
            return Outcome::Poison("envelope has no timestamp".into());
        };
        let mut write = Write::new(
            Stamp::Event {
                ts_ms: ts,
                tiebreak: store::tiebreak(&envelope.message_id),
            },
            store::object_fields(&fields),
        );
        write.max_bytes = self.max_profile_bytes;
        if fields.is_empty() {
            // The user exists, with no field (Courier's answer to an identify without traits).
            metrics::counter!("profiles_identify_without_traits_total").increment(1);
            write.cond = Cond::Touch;
        }
        let applied = match store::apply(&self.redis, &ws, uid, &write).await {
            Ok(Applied::TooLarge(bytes)) => return too_large(bytes, self.max_profile_bytes),
            Ok(a) => a,
            Err(e) => return rc_common::redis::outcome(&e),
        };
        let Applied::Ok { profile, changed } = applied else {
            return Outcome::Done;
        };
        metrics::counter!("profiles_identify_applied_total", "changed" => if changed { "true" } else { "false" }).increment(1);
        // A redelivery may follow a crash between the write and the publish: publish again
        // (the Nats-Msg-Id makes it a no-op when the first publish did happen).
        if (changed || delivered(message) > 1)
            && let Err(e) = self
                .publisher
                .profile_updated(&ws, uid, profile.as_deref(), "event", &envelope.message_id)
                .await
        {
            return Outcome::Unavailable(format!("publish ProfileUpdated: {e}"));
        }
        Outcome::Done
    }
}

pub struct UpdateHandler {
    pub redis: RedisConn,
    pub publisher: Publisher,
    pub request_ttl_secs: u64,
    pub max_profile_bytes: usize,
}

/// The write for one update-profile step, by Courier merge strategy.
pub fn update_write(
    strategy: &str,
    profile: &Map<String, Value>,
    now_ms: i64,
    request_id: &str,
) -> Result<Write, String> {
    let set_only: Vec<(String, Option<Value>)> = profile
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let stamp = Stamp::Api {
        now_ms,
        tiebreak: store::tiebreak(request_id),
    };
    let write = match strategy {
        "" | "replace" => {
            let mut w = Write::new(stamp, set_only);
            w.reset = Reset::Replace;
            w
        }
        "overwrite" => Write::new(stamp, store::object_fields(profile)),
        "soft-merge" => {
            let mut w = Write::new(stamp, set_only);
            w.cond = Cond::Soft;
            w
        }
        "none" => {
            let mut w = Write::new(stamp, set_only);
            w.cond = Cond::Init;
            w
        }
        other => {
            return Err(format!(
                "unknown merge strategy {other:?} (replace, soft-merge, overwrite, none)"
            ));
        }
    };
    Ok(write)
}

impl Handler for UpdateHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let request = match ProfileUpdateRequest::decode(message.payload.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::Poison(format!("undecodable ProfileUpdateRequest: {e}")),
        };
        let ws = match workspace(message, &request.workspace_id) {
            Ok(ws) => ws,
            Err(reason) => return Outcome::Poison(reason),
        };
        if request.user_id.is_empty() || request.request_id.is_empty() {
            return Outcome::Poison("user_id and request_id are required".into());
        }
        let profile = match json_object(&request.profile, "profile") {
            Ok(p) => p,
            Err(reason) => return Outcome::Poison(reason),
        };
        let now = time::OffsetDateTime::now_utc();
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut write = match update_write(&request.merge, &profile, now_ms, &request.request_id) {
            Ok(w) => w,
            Err(reason) => return Outcome::Poison(reason),
        };
        let uid = request.user_id.as_str();
        write.max_bytes = self.max_profile_bytes;
        write.marker = Some((
            store::request_key(&ws, uid, &request.request_id),
            self.request_ttl_secs,
            "1".into(),
        ));
        let (profile, changed) = match store::apply(&self.redis, &ws, uid, &write).await {
            Ok(Applied::Ok { profile, changed }) => (profile, changed),
            Ok(Applied::Duplicate(_)) => {
                if delivered(message) <= 1 {
                    return Outcome::Done;
                }
                match store::get(&self.redis, &ws, uid).await {
                    Ok(p) => (p, false),
                    Err(e) => return rc_common::redis::outcome(&e),
                }
            }
            Ok(Applied::Conflict) => return Outcome::Retry("unexpected conflict".into()),
            Ok(Applied::TooLarge(bytes)) => return too_large(bytes, self.max_profile_bytes),
            Err(e) => return rc_common::redis::outcome(&e),
        };
        if (changed || delivered(message) > 1)
            && let Err(e) = self
                .publisher
                .profile_updated(
                    &ws,
                    uid,
                    profile.as_deref(),
                    "automation",
                    &request.request_id,
                )
                .await
        {
            return Outcome::Unavailable(format!("publish ProfileUpdated: {e}"));
        }
        Outcome::Done
    }
}
