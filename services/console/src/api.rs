//! The console's client of the public API: every call carries the session's key as a bearer
//! token and answers the JSON body, or the API's own error message.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key was refused (401/403): the session is over.
    #[error("the API key was refused")]
    Unauthorized,
    /// Any other non-2xx: the status and the API's `message`.
    #[error("{status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("the API is unreachable: {0}")]
    Unreachable(String),
}

impl Api {
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        rc_common::outbound::install_default_crypto_provider();
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// `path` starts with `/`; `query` pairs are encoded here (a filter is one more pair).
    pub async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ApiError::Unauthorized);
        }
        if !status.is_success() {
            let message = json
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            return Err(ApiError::Status { status, message });
        }
        Ok(json)
    }

    pub async fn get(
        &self,
        key: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        self.call(key, Method::GET, path, query, None).await
    }

    /// Signs in: the key is good when an authenticated read succeeds.
    pub async fn verify(&self, key: &str) -> Result<(), ApiError> {
        self.get(key, "/automations/events", &[("limit", "1")])
            .await
            .map(|_| ())
    }
}

/// A path segment, percent-encoded (event names and ids are user strings).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
