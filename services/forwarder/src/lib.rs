//! The forwarder: Courier-generated events on JetStream `COURIER` → the workspace's RudderStack
//! data plane (`POST {dataPlaneUrl}/v1/batch`), with one durable consumer and one delivery task
//! per workspace, so one slow or dead data plane never delays another workspace.

pub mod api;
pub mod error;
pub mod mapping;
pub mod store;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use rc_common::Shutdown;
use rc_common::auth::Authenticator;
use rc_common::outbound::OutboundSettings;
use rc_common::secrets::{Cipher, SecretsSettings};
use rc_common::service::{Runtime, ServiceSettings};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::ForwarderError;

pub const SERVICE: &str = "forwarder";

pub use rc_common::service::BoxError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ForwarderSettings {
    /// Events per `/v1/batch` request (RudderStack SDKs use ≤ 500).
    pub batch_max_events: usize,
    /// Uncompressed bytes per request (always kept under the gateway's 4,096,000).
    pub batch_max_bytes: usize,
    /// How long a batch waits for more events after its first one.
    pub linger_ms: u64,
    /// Bound on one data-plane request (connect + answer).
    pub request_timeout_ms: u64,
    /// JetStream ack wait of the per-workspace consumers; held batches send `Progress` every third.
    pub ack_wait_ms: u64,
    /// Unacked events one workspace may have out.
    pub max_ack_pending: i64,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Consecutive failures that open a destination's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit waits before its half-open probe.
    pub circuit_cooldown_ms: u64,
    /// How often every replica re-reads the integrations from Redis.
    pub reconcile_interval_ms: u64,
    /// Accept `http://` data-plane URLs (local and test setups); off, only https is accepted,
    /// so a write key never crosses the network in clear by default.
    pub allow_http: bool,
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        Self {
            batch_max_events: 500,
            batch_max_bytes: 500_000,
            linger_ms: 200,
            request_timeout_ms: 10_000,
            ack_wait_ms: 30_000,
            max_ack_pending: 5_000,
            base_backoff_ms: 500,
            max_backoff_ms: 30_000,
            circuit_failures: 5,
            circuit_cooldown_ms: 30_000,
            reconcile_interval_ms: 2_000,
            allow_http: false,
        }
    }
}

rc_common::settings! {
    port: 8084;
    secrets: SecretsSettings,
    forwarder: ForwarderSettings,
    /// Outbound HTTP (data planes): TLS extra CA, connect timeout, SSRF guard.
    outbound: OutboundSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub ctx: Arc<worker::Ctx>,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// Runs the forwarder until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    // A missing key is fatal: nothing could be stored or sent.
    let cipher = Cipher::from_settings(&settings.secrets)?;
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let ctx = worker::Ctx::new(
        rt.js.clone(),
        store::Store::new(rt.redis.clone()),
        Some(cipher),
        settings.forwarder.clone(),
        settings.outbound.clone(),
        rt.shutdown.clone(),
    )?;
    // On shutdown, workers stop pulling and give back what they hold (nak), bounded.
    let supervisor = ctx.clone();
    rt.spawn_when_streams_ready(|_, _| async move { supervisor.supervise().await });

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        ctx,
    };
    let app = app(state);
    rt.serve(app).await
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
    api::router(state)
}
