//! The forwarder's error type and its one mapping to HTTP.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("storage unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<redis::RedisError> for ForwarderError {
    fn from(err: redis::RedisError) -> Self {
        ForwarderError::Unavailable(format!("redis: {}", err.kind_str()))
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        if self.is_timeout() {
            "timeout".into()
        } else if self.is_connection_dropped() || self.is_io_error() {
            "connection".into()
        } else {
            "error".into()
        }
    }
}

impl IntoResponse for ForwarderError {
    fn into_response(self) -> Response {
        if let ForwarderError::Auth(auth) = self {
            return auth.into_response();
        }
        let message = self.to_string();
        let (status, kind) = match &self {
            ForwarderError::Auth(_) => unreachable!("handled above"),
            ForwarderError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ForwarderError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ForwarderError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        if matches!(self, ForwarderError::Unavailable(_)) {
            tracing::warn!(error = %message, "Request failed: dependency unavailable");
        }
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
