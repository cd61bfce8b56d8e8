//! Harness helpers for the automations service.

use std::time::{Duration, Instant};

use crate::{Service, Stack, stack_settings, stored_messages};

impl Stack {
    pub fn automations_settings(&self) -> automations::Settings {
        let mut s = stack_settings!(self, automations::Settings);
        s.automations.poll_interval_ms = 100;
        s.automations.lease_ms = 3_000;
        // fetch-data steps call local fakes on 127.0.0.1.
        s.outbound.allow_private_networks = true;
        s
    }

    pub async fn automations(&self) -> Service {
        Service::run(self.automations_settings(), automations::run).await
    }
}

/// Waits until at least `n` messages are stored under `subject` and returns them all.
pub async fn wait_for_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    n: usize,
    timeout: Duration,
) -> Vec<async_nats::jetstream::Message> {
    let deadline = Instant::now() + timeout;
    loop {
        let msgs = stored_messages(js, stream, subject).await;
        if msgs.len() >= n || Instant::now() > deadline {
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a track event straight to EVENTS, past the ingress's checks, as an older or
/// hostile producer could: the envelope the ingress would build for it.
pub async fn publish_track(
    js: &async_nats::jetstream::Context,
    ws: &str,
    message_id: &str,
    event: &str,
    properties: &serde_json::Value,
) {
    use prost::Message as _;
    let raw = serde_json::json!({"type": "track", "event": event, "userId": "u_1",
        "messageId": message_id, "properties": properties});
    let envelope = rc_proto::Envelope {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: message_id.into(),
        r#type: rc_proto::EventType::Track as i32,
        user_id: "u_1".into(),
        event: event.into(),
        properties: serde_json::to_vec(properties).unwrap().into(),
        raw: serde_json::to_vec(&raw).unwrap().into(),
        ..Default::default()
    };
    js.send_publish(
        rc_common::subjects::event_subject(ws, "track"),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(envelope.encode_to_vec().into())
            .message_id(rc_common::subjects::event_msg_id(ws, message_id)),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}

/// A run as the engine creates it (id `r<i>`, created at `created` ms, in `state`), for tests
/// that write runs straight through the store.
/// An engine on the stack's servers whose lease ends at once, standing for a replica that
/// takes runs and dies: whatever it leaves, the live service's scheduler takes over.
pub async fn dead_replica(stack: &Stack) -> automations::Engine {
    automations::Engine {
        redis: stack.redis_conn().await,
        js: stack.jetstream().await,
        http: reqwest::Client::new(),
        lease_ms: 0,
        retention_ms: 60_000,
        allow_private_networks: true,
        config: Default::default(),
    }
}

pub fn fixture_run(
    ws: &str,
    i: usize,
    created: i64,
    state: automations::store::RunState,
    fields: [&str; 4],
) -> automations::store::Run {
    let [event, recipient, template, message_id] = fields;
    automations::store::Run {
        id: format!("r{i:06}"),
        workspace: ws.into(),
        state,
        template: template.into(),
        steps: Vec::new(),
        cancelation_token: None,
        context: serde_json::json!({"recipient": recipient}),
        step: 0,
        wake_at_ms: None,
        event: event.into(),
        source_message_id: message_id.into(),
        timeline: Vec::new(),
        created_at_ms: created,
        updated_at_ms: created,
        started_at_ms: None,
        error: None,
        depth: 0,
        retries: 0,
    }
}
