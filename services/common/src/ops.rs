//! `/healthz`, `/readyz`, `/metrics` and request metrics, the same in every service.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::Shutdown;
use crate::redis::RedisConn;

/// What `/readyz` checks: not draining, NATS connected (and streams provisioned), Redis
/// answering `PING`.
#[derive(Clone)]
pub struct Readiness {
    shutdown: Shutdown,
    nats: Option<async_nats::Client>,
    redis: Option<RedisConn>,
    /// Becomes true once the streams are provisioned (absent: nothing to wait for).
    streams_ready: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Readiness {
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            nats: None,
            redis: None,
            streams_ready: None,
        }
    }

    pub fn with_nats(mut self, client: async_nats::Client) -> Self {
        self.nats = Some(client);
        self
    }

    pub fn with_redis(mut self, conn: RedisConn) -> Self {
        self.redis = Some(conn);
        self
    }

    /// Readiness also waits for this to turn true (once streams are provisioned).
    pub fn with_streams(mut self, ready: tokio::sync::watch::Receiver<bool>) -> Self {
        self.streams_ready = Some(ready);
        self
    }

    pub async fn check(&self) -> (bool, serde_json::Value) {
        let mut ok = true;
        let mut checks = serde_json::Map::new();
        if self.shutdown.is_draining() {
            ok = false;
            checks.insert("shutdown".into(), json!("draining"));
        }
        if let Some(nats) = &self.nats {
            let connected = crate::nats::is_connected(nats);
            let streams = self.streams_ready.as_ref().is_none_or(|r| *r.borrow());
            ok &= connected && streams;
            checks.insert(
                "nats".into(),
                json!(match (connected, streams) {
                    (true, true) => "ok",
                    (true, false) => "streams not provisioned",
                    _ => "disconnected",
                }),
            );
        }
        if let Some(redis) = &self.redis {
            let up = crate::redis::ping(redis).await;
            ok &= up;
            checks.insert("redis".into(), json!(if up { "ok" } else { "unreachable" }));
        }
        (ok, serde_json::Value::Object(checks))
    }
}

/// The ops routes, to merge into a service's router.
pub fn router(readiness: Readiness) -> Router {
    // Install the recorder now, before the service records anything.
    let _ = crate::telemetry::metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Merged into every service's app: an unknown route answers a JSON 404 like every
        // other error, not an empty body.
        .fallback(not_found)
        .with_state(readiness)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": format!("no route for {}", uri.path()), "type": "invalid_request_error"})),
    )
        .into_response()
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ok, checks) = readiness.check().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ok { "ready" } else { "not ready" }, "checks": checks});
    (status, Json(body)).into_response()
}

async fn metrics() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
}

/// Middleware recording `http_requests_total` and `http_request_duration_seconds` by route
/// template (bounded labels: never the raw path).
pub async fn track_http(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
