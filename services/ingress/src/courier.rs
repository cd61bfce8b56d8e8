//! `POST /inbound/courier`: Courier's own inbound API (the Node SDK's `inbound.trackEvent`).
//!
//! Body `{type: "track", event, messageId, properties, userId?}`, the same track event
//! `/inbound/rudderstack` takes, stored the same way (one envelope on `events.<ws>.track`).
//! Courier's documented answers: `202 {"messageId"}`, and `409` for a `messageId` already
//! received (inside the JetStream dedupe window), where `/inbound/rudderstack` answers 202.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use rc_common::auth::Workspace;
use rc_proto::EventType;
use serde::Deserialize;

use crate::event::Parsed;
use crate::{AppState, IngressError, accepted, buffered_body, publish_all};

/// The fields Courier requires that the RudderStack shape leaves optional.
#[derive(Deserialize)]
struct CourierTrack<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "messageId", default)]
    message_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    batch: Option<serde::de::IgnoredAny>,
}

pub async fn inbound_courier(
    State(state): State<AppState>,
    Workspace(workspace): Workspace,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngressError> {
    let (body, _permit) = buffered_body(&state, &headers, body).await?;
    // Shape errors (not JSON, not an object) are reported by the shared parser below.
    if let Ok(c) = serde_json::from_slice::<CourierTrack>(&body) {
        if c.batch.is_some() {
            return Err(IngressError::Invalid(
                "/inbound/courier takes one event, not a batch".into(),
            ));
        }
        if c.kind.as_deref() != Some("track") {
            return Err(IngressError::Invalid(
                "`type` must be \"track\" on /inbound/courier".into(),
            ));
        }
        if c.message_id.is_none() {
            return Err(IngressError::Invalid(
                "`messageId` is required on /inbound/courier".into(),
            ));
        }
    }
    let received_at = time::OffsetDateTime::now_utc();
    let event = match state
        .normalizer
        .parse_body(&workspace, &body, received_at)?
    {
        Parsed::Single(event) if event.event_type() == EventType::Track => event,
        _ => {
            return Err(IngressError::Invalid(
                "/inbound/courier takes one track event".into(),
            ));
        }
    };
    let duplicates = publish_all(&state, std::slice::from_ref(&*event)).await?;
    if duplicates > 0 {
        return Err(IngressError::Idempotency(format!(
            "messageId {:?} was already received",
            event.envelope.message_id
        )));
    }
    Ok(accepted(
        serde_json::json!({"messageId": event.envelope.message_id}),
    ))
}
