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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use rc_common::auth::{Authenticator, WorkspaceStore};
use rc_common::config::{
    AuthSettings, HttpSettings, LogSettings, NatsSettings, RedisSettings, ShutdownSettings,
};
use rc_common::consumer::ConsumerSpec;
use rc_common::ops::Readiness;
use rc_common::secrets::{Cipher, SecretsSettings};
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
}

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

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn consumer_spec(settings: &DeliverySettings) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        SERVICE,
        subjects::COURIER_STREAM,
        format!("courier.*.{}", subjects::kinds::MESSAGE_REQUESTED),
    );
    spec.durable = DURABLE.to_string();
    spec.concurrency = settings.concurrency.max(1);
    // One more delivery than the worker's own limit, so the worker (not the dead-letter path)
    // decides the final UNDELIVERABLE.
    spec.max_deliver = settings.max_deliver.max(1) + 1;
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
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.http.listen).await?,
    };
    tracing::info!(addr = %listener.local_addr()?, "Delivery listening");
    let nats = rc_common::nats::connect(&settings.nats, SERVICE).await?;
    let js = rc_common::nats::jetstream(nats.clone(), &settings.nats);
    let redis = rc_common::redis::connect_until_ready(&settings.redis, &shutdown)
        .await
        .ok_or("shut down before Redis was reachable")?;

    let store = store::Store::new(redis.clone());
    let registry = providers::Registry::new(redis.clone(), cipher);
    let publisher = worker::Publisher { js: js.clone() };
    let http = reqwest::Client::builder()
        .user_agent("rudder-courier-delivery")
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let d = &settings.delivery;
    let worker = Arc::new(worker::Worker {
        store: store.clone(),
        registry: registry.clone(),
        senders: send::Senders {
            http,
            redis: redis.clone(),
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

    let streams_ready = Arc::new(AtomicBool::new(false));
    let consumer_task = {
        let (js, nats_settings, flag, shutdown) = (
            js.clone(),
            settings.nats.clone(),
            streams_ready.clone(),
            shutdown.clone(),
        );
        let spec = consumer_spec(&settings.delivery);
        tokio::spawn(async move {
            if rc_common::nats::provision_streams_until_ready(&js, &nats_settings, &shutdown).await
            {
                flag.store(true, Ordering::Release);
                rc_common::consumer::run(js, spec, worker, shutdown).await;
            }
        })
    };

    let state = AppState {
        auth: Arc::new(Authenticator::new(
            WorkspaceStore::new(redis.clone()),
            &settings.auth,
        )),
        store,
        registry,
        publisher,
    };
    let readiness = Readiness::new(shutdown.clone())
        .with_nats(nats.clone())
        .with_redis(redis)
        .with_streams_flag(streams_ready);
    let app = app(
        state,
        readiness,
        Duration::from_millis(settings.http.request_timeout_ms),
    );
    rc_common::http::serve(
        listener,
        app,
        shutdown.clone(),
        Duration::from_millis(settings.shutdown.drain_timeout_ms),
    )
    .await?;
    shutdown.trigger();
    let _ = consumer_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
    tracing::info!("Delivery stopped");
    Ok(())
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
