//! The delivery error type and its one mapping to HTTP (`{"message", "type"}` bodies).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rc_common::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 503 + Retry-After.
    #[error("temporarily unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl From<redis::RedisError> for DeliveryError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "Redis call failed");
        DeliveryError::Unavailable("the message store is unreachable".into())
    }
}

impl From<crate::providers::RegistryError> for DeliveryError {
    fn from(e: crate::providers::RegistryError) -> Self {
        match e {
            crate::providers::RegistryError::Invalid(m) => DeliveryError::Invalid(m),
            crate::providers::RegistryError::Redis(r) => r.into(),
        }
    }
}

impl IntoResponse for DeliveryError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self {
            DeliveryError::Auth(_) => {
                if let DeliveryError::Auth(a) = self {
                    return a.into_response();
                }
                unreachable!()
            }
            DeliveryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            DeliveryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DeliveryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let mut response = (
            status,
            Json(serde_json::json!({"message": self.to_string(), "type": kind})),
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
