//! Events as the ingress publishes them, for tests that feed the consumers directly.

use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;
use rc_common::subjects;
use rc_proto::{Envelope, EventType};
use serde_json::Value;

/// An envelope of `kind` from `user_id` in `ws`, stamped `ts_ms`, with `traits`.
pub fn envelope(
    ws: &str,
    message_id: &str,
    kind: EventType,
    user_id: &str,
    ts_ms: i64,
    traits: &Value,
) -> Envelope {
    Envelope {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: message_id.into(),
        r#type: kind as i32,
        user_id: user_id.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: ts_ms.div_euclid(1000),
            nanos: (ts_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        traits: serde_json::to_vec(traits).unwrap().into(),
        ..Default::default()
    }
}

/// Publishes `env` on its type's subject with the ingress's dedupe id; stored when this returns.
pub async fn publish_envelope(js: &async_nats::jetstream::Context, env: &Envelope) {
    let kind = EventType::try_from(env.r#type).expect("a known event type");
    js.send_publish(
        subjects::event_subject(&env.workspace_id, kind.subject_token()),
        PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(subjects::event_msg_id(&env.workspace_id, &env.message_id)),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}
