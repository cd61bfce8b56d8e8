//! Serving an axum app with a bounded graceful drain.

use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use tokio::net::TcpListener;

use crate::Shutdown;

/// `x-should-retry: false` on an answer a retry cannot change (a 409 `idempotency_error`):
/// Courier's Stainless-generated SDKs retry 409s unless this header says otherwise.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Serves `app` until `shutdown` triggers, then lets in-flight requests finish for at most
/// `drain_timeout` (axum's own graceful shutdown has no bound: a keep-alive client could hold
/// it open forever).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: Shutdown,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.triggered());
    let bound = async {
        shutdown.triggered().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        result = server => result,
        _ = bound => {
            tracing::warn!(timeout_ms = drain_timeout.as_millis() as u64, "HTTP drain timed out; closing remaining connections");
            Ok(())
        }
    }
}
