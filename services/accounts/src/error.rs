//! The accounts error type and its one mapping to HTTP (Courier-style JSON bodies).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400: the request can never succeed as sent.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413: the tenant document or membership profile would pass its documented bound.
    #[error("{0}")]
    TooLarge(String),
    /// 503: Redis unreachable or slow; nothing is promised.
    #[error("tenant store unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<redis::RedisError> for AccountsError {
    fn from(err: redis::RedisError) -> Self {
        AccountsError::Unavailable(err.to_string())
    }
}

impl IntoResponse for AccountsError {
    fn into_response(self) -> Response {
        if let AccountsError::Auth(auth) = self {
            return auth.into_response();
        }
        let message = self.to_string();
        let (status, kind, retry_after) = match &self {
            AccountsError::Auth(_) => unreachable!("handled above"),
            AccountsError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            AccountsError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            AccountsError::Conflict(_) => (StatusCode::CONFLICT, "conflict", Some("1")),
            AccountsError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None)
            }
            AccountsError::Unavailable(_) => {
                tracing::warn!(error = %message, "Accounts request failed");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some("2"))
            }
        };
        metrics::counter!("accounts_requests_rejected_total", "reason" => kind).increment(1);
        let mut response = (
            status,
            Json(serde_json::json!({"message": message, "type": kind})),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        response
    }
}
