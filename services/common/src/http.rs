//! The HTTP edge every service shares: serving with a header-read timeout, a body-read timeout
//! and a bounded graceful drain; `Content-Encoding: gzip` decoded; and every error answer, the
//! framework's own included, in the one JSON error shape `{"message": …, "type": …}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::Shutdown;
use crate::config::HttpSettings;

/// Seconds a client should wait before retrying a 503 the edge produced (request timeout).
const RETRY_AFTER_SECS: &str = "2";
/// Framework error bodies are short texts; a longer one is not read (its status still counts).
const MAX_ERROR_TEXT: usize = 4 * 1024;

/// `x-should-retry: false` on an answer a retry cannot change (a 409 `idempotency_error`):
/// Courier's Stainless-generated SDKs retry 409s unless this header says otherwise.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Serves `app` until `shutdown` triggers, then lets in-flight requests finish for at most
/// `drain_timeout` (axum's own graceful shutdown has no bound: a keep-alive client could hold
/// it open forever).
///
/// A connection that has not sent a whole request head within `header_read_timeout_ms` is
/// closed (a byte-by-byte client would otherwise hold it for as long as it likes), and a
/// request body that stalls for `body_read_timeout_ms` fails to read.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &HttpSettings,
    shutdown: Shutdown,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let service = ServiceBuilder::new()
        .map_future(|answer| async move {
            let response = IntoResponse::into_response(answer.await?);
            Ok::<_, Infallible>(json_errors(response).await)
        })
        // Only gzip is compiled in (the one encoding RudderStack and the SDKs send): others get 415.
        .layer(RequestDecompressionLayer::new())
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
            settings.body_read_timeout_ms,
        )))
        .service(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %err, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.triggered() => break,
        };
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        tokio::spawn(async move {
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            // Errors here are the client's (reset, header timeout): nothing to act on.
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(timeout_ms = drain_timeout.as_millis() as u64, "HTTP drain timed out; closing remaining connections");
        }
    }
    Ok(())
}

/// Rewrites an error answer that is not JSON (axum's extractor rejections, the 404 fallback,
/// 405, 413 from body limits, 415 from decompression, the request timeout's empty 503) into
/// the JSON error shape; a timeout's 503 also gets `Retry-After`. JSON answers pass untouched.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // HTML is the console's own error pages (a form to retry), already shaped for people.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let (kind, fallback) = describe(status);
    let message = text.unwrap_or_else(|| fallback.to_owned());
    if status == StatusCode::SERVICE_UNAVAILABLE && !parts.headers.contains_key(header::RETRY_AFTER)
    {
        parts.headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({"message": message, "type": kind}).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// The error `type` and a default message for a status the framework produced.
fn describe(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::NOT_FOUND => ("invalid_request_error", "no such path"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request_error",
            "method not allowed on this path (see the Allow header)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request_error",
            "unsupported Content-Encoding: send identity or gzip",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "invalid_request_error",
            "the request was not received in time; retry",
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            "unavailable",
            "the request did not complete in time; retry shortly",
        ),
        s if s.is_server_error() => ("internal_error", "internal error"),
        _ => ("invalid_request_error", "invalid request"),
    }
}

/// For handler errors built from a request body that failed to read: a stalled body (the
/// body-read timeout) is the network's fault and worth a retry, anything else (a body labelled
/// gzip that is not) is the request's.
pub fn body_read_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}
