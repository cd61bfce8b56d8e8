//! The group consumer: tenant upsert + membership.

use async_nats::jetstream::Message;
use prost::Message as _;
use rc_common::consumer::{Handler, Outcome};
use rc_common::redis::RedisConn;
use rc_common::subjects;
use rc_proto::{Envelope, EventType};
use serde_json::{Map, Value, json};

use crate::store::{self, Applied, Reset, Stamp, Write};
use crate::{Change, Publisher};

pub struct GroupHandler {
    pub redis: RedisConn,
    pub publisher: Publisher,
    /// The tenant size bound: a group event that would pass it is dead-lettered.
    pub max_tenant_bytes: usize,
}

fn ts_ms(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    rc_common::clock::ms_of(ts.as_ref())
}

/// Tenant fields from group traits: `name` → name, everything else → properties (a `null`
/// removes the property). The tenant is marked as existing even without traits.
pub fn tenant_fields(traits: &Map<String, Value>) -> Vec<(String, Option<Value>)> {
    let mut fields = vec![("x:seen".to_string(), Some(Value::Bool(true)))];
    for (k, v) in traits {
        let v = (!v.is_null()).then(|| v.clone());
        if k == "name" {
            fields.push(("t:name".into(), v));
        } else {
            fields.push((format!("p:{k}"), v));
        }
    }
    fields
}

impl Handler for GroupHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let envelope = match Envelope::decode(message.payload.clone()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(format!("undecodable envelope: {e}")),
        };
        if envelope.r#type() != EventType::Group {
            return Outcome::Poison(format!(
                "expected a group envelope, got type {}",
                envelope.r#type
            ));
        }
        let ws = subjects::workspace_of(&message.subject).unwrap_or("");
        if ws.is_empty() || (!envelope.workspace_id.is_empty() && envelope.workspace_id != ws) {
            return Outcome::Poison("workspace of the payload does not match the subject".into());
        }
        if envelope.group_id.is_empty() {
            return Outcome::Poison("group without groupId".into());
        }
        let Some(member) = [envelope.user_id.as_str(), envelope.anonymous_id.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
        else {
            return Outcome::Poison("group without userId or anonymousId".into());
        };
        let traits = if envelope.traits.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(&envelope.traits) {
                Ok(Value::Object(m)) => m,
                _ => return Outcome::Poison("traits is not a JSON object".into()),
            }
        };
        let Some(ts) = ts_ms(&envelope.timestamp).or_else(|| ts_ms(&envelope.received_at)) else {
            return Outcome::Poison("envelope has no timestamp".into());
        };
        let mut fields = tenant_fields(&traits);
        fields.push((format!("m:{member}"), Some(json!({}))));
        let write = Write {
            stamp: Stamp::Event {
                ts_ms: ts,
                tiebreak: store::tiebreak(&envelope.message_id),
            },
            reset: Reset::None,
            require_existing: false,
            fields,
            max_bytes: self.max_tenant_bytes,
        };
        let tid = envelope.group_id.as_str();
        let (doc, changed, touched) = match store::apply(&self.redis, ws, tid, &write).await {
            Ok(Applied::Ok {
                doc,
                changed,
                touched,
            }) => (doc, changed, touched),
            Ok(Applied::Missing) => return Outcome::Retry("unexpected missing tenant".into()),
            Ok(Applied::TooLarge(bytes)) => {
                return Outcome::Poison(format!(
                    "the tenant would be about {bytes} bytes of JSON, more than {}",
                    self.max_tenant_bytes
                ));
            }
            Err(e) => return rc_common::redis::outcome(&e),
        };
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        // On a redelivery, the indexes and the publish may be what the first attempt missed.
        let all_touched = if delivered > 1 {
            vec![member.to_string()]
        } else {
            touched.clone()
        };
        if let Err(e) =
            store::update_indexes(&self.redis, ws, tid, doc.is_some(), &all_touched).await
        {
            return rc_common::redis::outcome(&e);
        }
        if changed || !touched.is_empty() || delivered > 1 {
            let change = Change {
                tenant_id: tid,
                doc: doc.as_deref(),
                member_user_id: member,
                member_removed: false,
                source: "event",
                cause_id: &envelope.message_id,
            };
            if let Err(e) = self.publisher.tenant_updated(ws, change).await {
                return Outcome::Unavailable(format!("publish TenantUpdated: {e}"));
            }
        }
        Outcome::Done
    }
}
