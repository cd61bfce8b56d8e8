//! The automations error type and its one mapping to HTTP (`{"message", "type"}` bodies).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400: the request (template, step, body) is invalid; the message names the JSON path.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 503: Redis or NATS trouble; retry.
    #[error("temporarily unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<redis::RedisError> for AutomationError {
    fn from(e: redis::RedisError) -> Self {
        AutomationError::Unavailable(format!("redis: {e}"))
    }
}

impl IntoResponse for AutomationError {
    fn into_response(self) -> Response {
        if let AutomationError::Auth(auth) = self {
            return auth.into_response();
        }
        let message = self.to_string();
        let (status, kind) = match &self {
            AutomationError::Auth(_) => unreachable!("handled above"),
            AutomationError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            AutomationError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AutomationError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let mut response = (
            status,
            Json(serde_json::json!({"message": message, "type": kind})),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }
}
