//! Forwarder helpers: test settings, publishing COURIER events, the integration API.

use std::time::Duration;

use prost::Message as _;
use rc_common::secrets::{Cipher, SecretsSettings};

use crate::{Endpoint, Service, Stack, stack_settings};

impl Stack {
    /// Fast timings so retries, pauses and redeliveries happen within seconds.
    pub fn forwarder_settings(&self, encryption_key: &str) -> forwarder::Settings {
        let mut s = stack_settings!(self, forwarder::Settings);
        s.secrets = SecretsSettings {
            encryption_key: encryption_key.to_string(),
        };
        s.forwarder = forwarder::ForwarderSettings {
            linger_ms: 50,
            request_timeout_ms: 1_000,
            ack_wait_ms: 3_000,
            base_backoff_ms: 50,
            max_backoff_ms: 400,
            circuit_failures: 4,
            circuit_cooldown_ms: 600,
            reconcile_interval_ms: 300,
            // The fake data planes speak plain http.
            allow_http: true,
            ..forwarder::ForwarderSettings::default()
        };
        // The fake data planes listen on 127.0.0.1.
        s.outbound.allow_private_networks = true;
        s
    }

    pub async fn forwarder_with(&self, settings: forwarder::Settings) -> Service {
        Service::run(settings, forwarder::run).await
    }
}

pub fn new_encryption_key() -> String {
    Cipher::generate_key()
}

/// A `MessageEvent` as the delivery service publishes it.
pub fn message_event(
    ws: &str,
    message_id: &str,
    status: &str,
    recipient: &str,
) -> rc_proto::MessageEvent {
    rc_proto::MessageEvent {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: message_id.into(),
        status: status.into(),
        run_id: "run-1".into(),
        template: "welcome-email".into(),
        recipient: recipient.into(),
        channel: "email".into(),
        provider: "sendgrid".into(),
        tenant_id: "acct_1".into(),
        event: "Signed Up".into(),
        status_at: Some(prost_types::Timestamp {
            seconds: 1_772_442_011,
            nanos: 6_000_000,
        }),
        enqueued_ms: 1_772_442_010_000,
        sent_ms: 1_772_442_010_500,
        delivered_ms: if status == "DELIVERED" {
            1_772_442_011_006
        } else {
            0
        },
        ..Default::default()
    }
}

pub async fn publish_message_event(
    js: &async_nats::jetstream::Context,
    event: &rc_proto::MessageEvent,
) {
    let subject = rc_common::subjects::courier_subject(
        &event.workspace_id,
        &rc_common::subjects::kinds::message_status(&event.status),
    );
    js.publish(subject, event.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

/// Publishes a protobuf payload on `courier.<ws>.<kind>` (e.g. `profile.updated`), as the
/// profiles and accounts services do.
pub async fn publish_courier(
    js: &async_nats::jetstream::Context,
    ws: &str,
    kind: &str,
    payload: Vec<u8>,
) {
    js.publish(
        rc_common::subjects::courier_subject(ws, kind),
        payload.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

/// `PUT /integrations/rudderstack`.
pub async fn put_integration(
    service: &impl Endpoint,
    api_key: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .put(service.url("/integrations/rudderstack"))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await
        .expect("request")
}

pub async fn get_json(
    service: &impl Endpoint,
    api_key: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    crate::call(service, api_key, reqwest::Method::GET, path, None).await
}

pub async fn post_json(
    service: &impl Endpoint,
    api_key: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    crate::call(service, api_key, reqwest::Method::POST, path, None).await
}

/// Polls `check` every 50 ms until it holds, failing after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
