//! Delivery: consumes `MessageRequest`s (`courier.<ws>.message.requested`, durable consumer
//! `delivery` on COURIER), routes and renders them, sends them through the workspace's providers
//! (webhook, SMTP, inbox), stores each message with its history in Redis, publishes every status
//! change once as a `MessageEvent` (`courier.<ws>.message.<status>`), and serves the message,
//! provider and inbox API.

pub mod api;
pub mod error;
pub mod limits;
pub mod providers;
pub mod render;
pub mod routing;
pub mod scheduler;
pub mod send;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post, put};
use rc_common::auth::Authenticator;
use rc_common::consumer::ConsumerSpec;
use rc_common::outbound::{ClientSpec, OutboundSettings};
use rc_common::secrets::{Cipher, SecretsSettings};
use rc_common::service::{Runtime, ServiceSettings};
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::DeliveryError;

pub const SERVICE: &str = "delivery";
pub const DURABLE: &str = subjects::durables::DELIVERY_REQUESTS;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DeliverySettings {
    /// JetStream requests handled at once (consumer concurrency), and due retries handled at
    /// once (scheduler), each.
    pub concurrency: usize,
    /// Provider calls in flight per workspace in this process; a workspace's messages over it
    /// are scheduled in Redis instead of waiting in a shared handler.
    pub workspace_concurrency: usize,
    /// JetStream ack wait; keep it above the longest handling (one provider call).
    pub ack_wait_ms: u64,
    /// Send lease: while held, no other worker calls a provider for the message.
    pub lease_ms: u64,
    /// Provider call timeout unless the provider sets `timeout_ms`.
    pub provider_timeout_ms: u64,
    /// First retry wait after a failed provider call (doubles per attempt).
    pub retry_base_ms: u64,
    /// Longest wait between two provider attempts of a message, and longest circuit cooldown.
    pub max_backoff_ms: u64,
    /// Retries stop (UNDELIVERABLE) this long after the message was enqueued.
    pub retry_window_ms: u64,
    /// How often the retry scheduler looks for due messages.
    pub due_poll_ms: u64,
    /// Retryable failures in a row that open a (workspace, provider) circuit.
    pub circuit_failures: u32,
    /// First cooldown of an open circuit (doubles per failed probe, up to `max_backoff_ms`).
    pub circuit_cooldown_ms: u64,
    /// JetStream redelivery backoff (first) of a request that could not be handled.
    pub base_backoff_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            workspace_concurrency: 16,
            ack_wait_ms: 60_000,
            lease_ms: 60_000,
            provider_timeout_ms: 10_000,
            retry_base_ms: 1_000,
            max_backoff_ms: 60_000,
            retry_window_ms: 24 * 3_600_000,
            due_poll_ms: 100,
            circuit_failures: 5,
            circuit_cooldown_ms: 5_000,
            base_backoff_ms: 1_000,
        }
    }
}

rc_common::settings! {
    port: 8085;
    secrets: SecretsSettings,
    delivery: DeliverySettings,
    /// Outbound HTTP (webhook providers): TLS extra CA, connect timeout, SSRF guard.
    outbound: OutboundSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub store: store::Store,
    pub registry: providers::Registry,
    pub publisher: worker::Publisher,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

pub use rc_common::service::BoxError;

/// The `message.requested` consumer, with the shutdown drain bound shared by the scheduler.
pub fn consumer_spec(settings: &Settings) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        SERVICE,
        subjects::COURIER_STREAM,
        subjects::courier_of_kind(subjects::kinds::MESSAGE_REQUESTED),
    );
    let d = &settings.delivery;
    spec.durable = DURABLE.to_string();
    spec.concurrency = d.concurrency.max(1);
    spec.ack_wait = Duration::from_millis(d.ack_wait_ms);
    spec.base_backoff = Duration::from_millis(d.base_backoff_ms);
    spec.max_backoff = Duration::from_millis(d.max_backoff_ms);
    spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
    spec
}

/// The delivery worker as the service runs it (also used by `rc-bench`'s floor).
pub fn worker(
    settings: &Settings,
    redis: rc_common::redis::RedisConn,
    js: async_nats::jetstream::Context,
    cipher: Cipher,
) -> Result<Arc<worker::Worker>, BoxError> {
    let store = store::Store::new(redis.clone());
    let registry = providers::Registry::new(
        redis.clone(),
        cipher,
        settings.outbound.allow_private_networks,
    );
    let publisher = worker::Publisher { js };
    let d = &settings.delivery;
    let http = rc_common::outbound::client(
        &settings.outbound,
        &ClientSpec {
            user_agent: concat!("rudder-courier-delivery/", env!("CARGO_PKG_VERSION")),
            timeout: Duration::from_millis(d.provider_timeout_ms),
            follow_redirects: false,
        },
    )?;
    let provider_timeout = Duration::from_millis(d.provider_timeout_ms);
    let max_backoff = Duration::from_millis(d.max_backoff_ms);
    let lease = Duration::from_millis(d.lease_ms);
    Ok(Arc::new(worker::Worker {
        store,
        registry,
        senders: send::Senders {
            http,
            allow_private_networks: settings.outbound.allow_private_networks,
            redis: redis.clone(),
            default_timeout: provider_timeout,
        },
        publisher,
        config: worker::WorkerConfig {
            lease,
            retry_base: Duration::from_millis(d.retry_base_ms),
            max_backoff,
            retry_window: Duration::from_millis(d.retry_window_ms),
            defer: Duration::from_millis(d.due_poll_ms),
        },
        limiter: limits::WorkspaceLimiter::new(d.workspace_concurrency),
        circuits: limits::Circuits::new(
            d.circuit_failures,
            Duration::from_millis(d.circuit_cooldown_ms),
            max_backoff,
            // A provider's own timeout may be longer (at most 60 s); a probe past this simply
            // lets one more probe start.
            provider_timeout,
        ),
    }))
}

/// Runs the delivery service until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let cipher = Cipher::from_settings(&settings.secrets)?;
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let worker = worker(&settings, rt.redis.clone(), rt.js.clone(), cipher)?;
    let (store, registry, publisher) = (
        worker.store.clone(),
        worker.registry.clone(),
        worker.publisher.clone(),
    );
    let d = &settings.delivery;
    let lease = Duration::from_millis(d.lease_ms);
    let mut spec = consumer_spec(&settings);
    spec.quarantine = Some(rc_common::consumer::Quarantine::new(rt.redis.clone(), 3));
    let scheduler = scheduler::Scheduler {
        worker: worker.clone(),
        poll: Duration::from_millis(d.due_poll_ms.max(1)),
        concurrency: d.concurrency,
        lease,
        drain_timeout: spec.drain_timeout,
    };
    rt.spawn_when_streams_ready(|js, shutdown| {
        rc_common::consumer::run(js, spec, worker, shutdown)
    });
    rt.spawn_when_streams_ready(move |_, shutdown| scheduler.run(shutdown));

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        store,
        registry,
        publisher,
    };
    let app = app(state);
    rt.serve(app).await
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/providers", get(api::list_providers))
        .route(
            "/providers/{name}",
            put(api::put_provider)
                .get(api::get_provider)
                .delete(api::delete_provider),
        )
        .route("/messages", get(api::list_messages))
        .route("/messages/render", post(api::render_preview))
        .route("/messages/{id}", get(api::get_message))
        .route("/messages/{id}/history", get(api::get_history))
        .route("/messages/{id}/events", post(api::post_event))
        .route("/inbox/{user_id}", get(api::get_inbox))
        .merge(rc_common::deadletters::router(
            rc_common::deadletters::DlqService::Delivery,
            state.publisher.js.clone(),
            state.auth.clone(),
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_drains_within_the_configured_shutdown_bound() {
        let mut settings = Settings::default();
        settings.shutdown.drain_timeout_ms = 1_234;
        assert_eq!(
            consumer_spec(&settings).drain_timeout,
            Duration::from_millis(1_234)
        );
    }
}
