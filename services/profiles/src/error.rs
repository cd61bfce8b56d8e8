//! The profiles error type and its one mapping to HTTP (Courier-style JSON bodies).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400: the request can never succeed as sent.
    #[error("{0}")]
    Invalid(String),
    /// 413: the request, or the profile it would make, passes a documented bound.
    #[error("{0}")]
    TooLarge(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: concurrent writes kept changing the profile (PATCH); retry.
    #[error("{0}")]
    Conflict(String),
    /// 409: the Idempotency-Key was already used in this workspace for another request.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// 503: Redis unreachable or slow; nothing is promised.
    #[error("profile store unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<redis::RedisError> for ProfilesError {
    fn from(err: redis::RedisError) -> Self {
        ProfilesError::Unavailable(err.to_string())
    }
}

impl IntoResponse for ProfilesError {
    fn into_response(self) -> Response {
        if let ProfilesError::Auth(auth) = self {
            return auth.into_response();
        }
        let message = self.to_string();
        let (status, kind, retry_after) = match &self {
            ProfilesError::Auth(_) => unreachable!("handled above"),
            ProfilesError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ProfilesError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None)
            }
            ProfilesError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            ProfilesError::Conflict(_) => (StatusCode::CONFLICT, "conflict", Some("1")),
            // Retrying cannot help: the key is taken until it expires.
            ProfilesError::IdempotencyKeyReused(_) => {
                (StatusCode::CONFLICT, "idempotency_error", None)
            }
            ProfilesError::Unavailable(_) => {
                tracing::warn!(error = %message, "Profile request failed");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some("2"))
            }
        };
        metrics::counter!("profiles_requests_rejected_total", "reason" => kind).increment(1);
        let mut response = (
            status,
            Json(serde_json::json!({"message": message, "type": kind})),
        )
            .into_response();
        if matches!(self, ProfilesError::IdempotencyKeyReused(_)) {
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
