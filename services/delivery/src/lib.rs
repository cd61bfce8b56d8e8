//! Delivery: consumes `MessageRequest`s (`courier.<ws>.message.requested`, durable consumer
//! `delivery` on COURIER), routes and renders them, sends them through the workspace's providers
//! (webhook, SMTP, inbox), stores each message with its history in Redis, publishes every status
//! change once as a `MessageEvent` (`courier.<ws>.message.<status>`), and serves the message,
//! provider and inbox API.

pub mod api;
pub mod error;
pub mod providers;
pub mod render;
pub mod routing;
pub mod send;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use rc_common::auth::Authenticator;
use rc_common::config::{
    AuthSettings, HttpSettings, LogSettings, NatsSettings, RedisSettings, ShutdownSettings,
};
use rc_common::consumer::ConsumerSpec;
use rc_common::ops::Readiness;
use rc_common::outbound::{ClientSpec, OutboundSettings};
use rc_common::secrets::{Cipher, SecretsSettings};
use rc_common::service::{Runtime, ServiceSettings};
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

pub use error::DeliveryError;

pub const SERVICE: &str = "delivery";
pub const DURABLE: &str = "delivery";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DeliverySettings {
    /// Messages handled at once (consumer concurrency).
    pub concurrency: usize,
    /// JetStream deliveries of one request before the message is marked UNDELIVERABLE.
    pub max_deliver: i64,
    /// JetStream ack wait; keep it above the longest handling (provider timeout × attempts).
    pub ack_wait_ms: u64,
    /// Send lease: while held, a redelivered request does not call the provider.
    pub lease_ms: u64,
    /// Provider call timeout unless the provider sets `timeout_ms`.
    pub provider_timeout_ms: u64,
    /// Provider calls per delivery before handing the retry back to JetStream.
    pub inline_attempts: u32,
    /// First in-handler retry wait (doubles).
    pub retry_base_ms: u64,
    /// Longest in-handler wait (Retry-After or backoff); longer waits go back to JetStream.
    pub max_inline_wait_ms: u64,
    /// JetStream redelivery backoff (first, cap).
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            max_deliver: 10,
            ack_wait_ms: 60_000,
            lease_ms: 60_000,
            provider_timeout_ms: 10_000,
            inline_attempts: 3,
            retry_base_ms: 500,
            max_inline_wait_ms: 5_000,
            base_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    pub http: HttpSettings,
    pub nats: NatsSettings,
    pub redis: RedisSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub auth: AuthSettings,
    pub secrets: SecretsSettings,
    pub delivery: DeliverySettings,
    /// Outbound HTTP (webhook providers): TLS extra CA, connect timeout, SSRF guard.
    pub outbound: OutboundSettings,
}

rc_common::service_settings!(Settings);

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings::on_port(8085),
            nats: NatsSettings::default(),
            redis: RedisSettings::default(),
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
            auth: AuthSettings::default(),
            secrets: SecretsSettings::default(),
            delivery: DeliverySettings::default(),
            outbound: OutboundSettings::default(),
        }
    }
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

pub fn consumer_spec(settings: &DeliverySettings) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        SERVICE,
        subjects::COURIER_STREAM,
        format!("courier.*.{}", subjects::kinds::MESSAGE_REQUESTED),
    );
    spec.durable = DURABLE.to_string();
    spec.concurrency = settings.concurrency.max(1);
    spec.ack_wait = Duration::from_millis(settings.ack_wait_ms);
    spec.base_backoff = Duration::from_millis(settings.base_backoff_ms);
    spec.max_backoff = Duration::from_millis(settings.max_backoff_ms);
    spec
}

/// Runs the delivery service until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let cipher = Cipher::from_settings(&settings.secrets)?;
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let store = store::Store::new(rt.redis.clone());
    let registry = providers::Registry::new(
        rt.redis.clone(),
        cipher,
        settings.outbound.allow_private_networks,
    );
    let publisher = worker::Publisher { js: rt.js.clone() };
    let d = &settings.delivery;
    let http = rc_common::outbound::client(
        &settings.outbound,
        &ClientSpec {
            user_agent: concat!("rudder-courier-delivery/", env!("CARGO_PKG_VERSION")),
            timeout: Duration::from_millis(d.provider_timeout_ms),
            follow_redirects: false,
        },
    )?;
    let worker = Arc::new(worker::Worker {
        store: store.clone(),
        registry: registry.clone(),
        senders: send::Senders {
            http,
            redis: rt.redis.clone(),
            default_timeout: Duration::from_millis(d.provider_timeout_ms),
        },
        publisher: publisher.clone(),
        config: worker::WorkerConfig {
            lease: Duration::from_millis(d.lease_ms),
            inline_attempts: d.inline_attempts.max(1),
            retry_base: Duration::from_millis(d.retry_base_ms),
            max_inline_wait: Duration::from_millis(d.max_inline_wait_ms),
            max_deliver: d.max_deliver.max(1),
        },
    });
    let mut spec = consumer_spec(&settings.delivery);
    spec.quarantine = Some(rc_common::consumer::Quarantine::new(rt.redis.clone(), 3));
    rt.spawn_when_streams_ready(|js, shutdown| {
        rc_common::consumer::run(js, spec, worker, shutdown)
    });

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        store,
        registry,
        publisher,
    };
    let app = app(
        state,
        rt.readiness(),
        Duration::from_millis(settings.http.request_timeout_ms),
    );
    rt.serve(app).await
}

pub fn app(state: AppState, readiness: Readiness, request_timeout: Duration) -> Router {
    Router::new()
        .route("/providers", get(api::list_providers))
        .route(
            "/providers/{name}",
            put(api::put_provider)
                .get(api::get_provider)
                .delete(api::delete_provider),
        )
        .route("/messages", get(api::list_messages))
        .route("/messages/{id}", get(api::get_message))
        .route("/messages/{id}/history", get(api::get_history))
        .route("/messages/{id}/events", post(api::post_event))
        .route("/inbox/{user_id}", get(api::get_inbox))
        .with_state(state)
        .merge(rc_common::ops::router(readiness))
        .layer(axum::middleware::from_fn(rc_common::ops::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}
