//! The one API error type: every service answers its errors in the JSON shape
//! `{"message": …, "type": …}` (Courier's), with the status saying whether a retry can help and
//! `Retry-After` set here, and only here, on the answers worth retrying.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::auth::AuthError;

/// Seconds to wait before retrying a dependency outage (503).
pub const RETRY_AFTER_UNAVAILABLE: &str = "2";
/// Seconds to wait before retrying a conflict, a stalled body or an overload.
pub const RETRY_AFTER_SHORT: &str = "1";

/// One invalid item of a batch, by index.
#[derive(Debug, Clone, Serialize)]
pub struct ItemError {
    pub index: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400: the request can never succeed as sent; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// 400 for a batch: every bad item, by index (nothing was stored).
    #[error("{} item(s) in the batch are invalid; nothing was stored", .0.len())]
    InvalidBatch(Vec<ItemError>),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: concurrent writes kept changing the document; a retry can succeed.
    #[error("{0}")]
    Conflict(String),
    /// 409: an idempotency key or message id already used; a retry cannot change the answer.
    #[error("{0}")]
    Idempotency(String),
    /// 413: the request, or the document it would make, passes a documented bound.
    #[error("{0}")]
    TooLarge(String),
    /// 408: the body stalled past `http.body_read_timeout_ms`; a retry can succeed.
    #[error("the request body stalled; send it again")]
    BodyTimeout,
    /// 429: the service is at capacity; retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// 429: the workspace is over its rate; nothing was stored. Retry after this many seconds.
    #[error("{0}")]
    RateLimited(String, u64),
    /// 503: a dependency (Redis, NATS) is unreachable or slow; nothing is promised.
    #[error("temporarily unavailable: {0}; retry shortly")]
    Unavailable(String),
}

impl ApiError {
    /// The status, the error `type` and the `Retry-After` seconds, if a retry can help.
    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        match self {
            ApiError::Auth(_) => (StatusCode::UNAUTHORIZED, "authentication_error", None),
            ApiError::Invalid(_) | ApiError::InvalidBatch(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None)
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", Some(RETRY_AFTER_SHORT)),
            ApiError::Idempotency(_) => (StatusCode::CONFLICT, "idempotency_error", None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some(RETRY_AFTER_SHORT),
            ),
            ApiError::Overloaded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                Some(RETRY_AFTER_SHORT),
            ),
            // Its Retry-After is the computed wait, set in `into_response`.
            ApiError::RateLimited(..) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(RETRY_AFTER_UNAVAILABLE),
            ),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(AuthError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            _ => self.parts().0,
        }
    }
}

/// An unreachable or refusing Redis is an outage: 503, never the request's fault.
impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        ApiError::Unavailable(format!("redis: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Auth(auth) = self {
            return auth.into_response();
        }
        let (status, kind, retry_after) = self.parts();
        let wait = match &self {
            ApiError::RateLimited(_, secs) => Some(HeaderValue::from(*secs)),
            _ => retry_after.map(HeaderValue::from_static),
        };
        metrics::counter!("http_requests_rejected_total", "reason" => kind).increment(1);
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(error = %message, "Request failed: dependency unavailable");
        }
        let body = match self {
            ApiError::InvalidBatch(errors) => {
                serde_json::json!({"message": message, "type": kind, "errors": errors})
            }
            _ => serde_json::json!({"message": message, "type": kind}),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = wait {
            headers.insert(header::RETRY_AFTER, secs);
        }
        if kind == "idempotency_error" {
            // Stainless-generated SDKs (Courier's) retry a 409 unless told not to.
            headers.insert(crate::http::SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(err: ApiError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = err.into_response();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 4096).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn retry_after_only_where_a_retry_helps() {
        let (s, h, b) = answer(ApiError::Unavailable("redis: down".into())).await;
        assert_eq!(
            (s, b["type"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
        );
        assert_eq!(h[header::RETRY_AFTER], "2");
        let (s, h, _) = answer(ApiError::Idempotency("used".into())).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert!(!h.contains_key(header::RETRY_AFTER));
        assert_eq!(h[crate::http::SHOULD_RETRY], "false");
        let (_, h, _) = answer(ApiError::Conflict("busy".into())).await;
        assert_eq!(h[header::RETRY_AFTER], "1");
        let (s, h, b) = answer(ApiError::NotFound("no such thing".into())).await;
        assert_eq!(
            (s, b["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("no such thing"))
        );
        assert!(!h.contains_key(header::RETRY_AFTER));
        let (_, _, b) = answer(ApiError::InvalidBatch(vec![ItemError {
            index: 3,
            message: "bad".into(),
        }]))
        .await;
        assert_eq!(b["errors"][0]["index"], 3);
    }
}
