//! The ingress error type and its one mapping to HTTP.
//!
//! RudderStack drops an event for good on 3xx and most 4xx, and retries 408/429/5xx (see
//! `reference/rudderstack.md` §2), so the status must say exactly whether a retry can help.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct EventError {
    pub index: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400: fix the event; a retry will not help.
    #[error("{0}")]
    Invalid(String),
    /// 400 for a batch: every bad event, by index (nothing was stored).
    #[error("{} event(s) in the batch are invalid; nothing was stored", .0.len())]
    InvalidBatch(Vec<EventError>),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 408: the body stalled past `http.body_read_timeout_ms`; a retry can succeed.
    #[error("the request body stalled; send it again")]
    BodyTimeout,
    /// 409 on `/inbound/courier`: this `messageId` was already received (Courier's answer).
    #[error("messageId {0:?} was already received")]
    Duplicate(String),
    /// 429: too many publishes in flight; retry shortly.
    #[error("ingress is at capacity; retry shortly")]
    Overloaded,
    /// 503: NATS unreachable, or the JetStream ack did not come in time; nothing is promised.
    #[error("event store unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<crate::event::Rejection> for IngressError {
    fn from(r: crate::event::Rejection) -> Self {
        match r {
            crate::event::Rejection::Invalid(m) => IngressError::Invalid(m),
            crate::event::Rejection::TooLarge(m) => IngressError::TooLarge(m),
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        if let IngressError::Auth(auth) = self {
            return auth.into_response();
        }
        let message = self.to_string();
        let (status, kind, retry_after) = match &self {
            IngressError::Auth(_) => unreachable!("handled above"),
            IngressError::Invalid(_) | IngressError::InvalidBatch(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None)
            }
            IngressError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None)
            }
            IngressError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some("1"),
            ),
            IngressError::Duplicate(_) => (StatusCode::CONFLICT, "idempotency_error", None),
            IngressError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded", Some("1")),
            IngressError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some("2"))
            }
        };
        metrics::counter!("ingress_requests_rejected_total", "reason" => kind).increment(1);
        let body = match self {
            IngressError::InvalidBatch(errors) => {
                serde_json::json!({"message": message, "type": kind, "errors": errors})
            }
            _ => serde_json::json!({"message": message, "type": kind}),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::CONFLICT {
            // Stainless-generated SDKs (Courier's) retry a 409 unless told not to.
            response.headers_mut().insert(
                rc_common::http::SHOULD_RETRY,
                HeaderValue::from_static("false"),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        response
    }
}
