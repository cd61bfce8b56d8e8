//! The automations service: automation and notification templates, event → template mappings,
//! the received-events catalog and the durable run engine (see README.md).

pub mod api;
pub mod catalog;
pub mod engine;
pub mod error;
pub mod events;
pub mod expr;
pub mod refs;
pub mod scheduler;
pub mod steps;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use rc_common::auth::{Authenticator, WorkspaceStore};
use rc_common::config::{
    AuthSettings, HttpSettings, LogSettings, NatsSettings, RedisSettings, ShutdownSettings,
};
use rc_common::consumer::{self, ConsumerSpec};
use rc_common::ops::Readiness;
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

pub use engine::Engine;
pub use error::AutomationError;

pub const SERVICE: &str = "automations";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AutomationsSettings {
    /// How often every replica polls the due index for delayed runs.
    pub poll_interval_ms: u64,
    /// A claim on a due run lasts this long; a crashed claimer's run is retried after it.
    pub lease_ms: u64,
    /// Runs executing at once from the scheduler in this process.
    pub scheduler_concurrency: usize,
    /// EVENTS messages handled at once in this process.
    pub consumer_concurrency: usize,
    /// Durable consumer name on EVENTS (shared by replicas).
    pub consumer_name: String,
}

impl Default for AutomationsSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 200,
            lease_ms: 30_000,
            scheduler_concurrency: 256,
            consumer_concurrency: 64,
            consumer_name: SERVICE.to_string(),
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
    pub automations: AutomationsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings::on_port(8083),
            nats: NatsSettings::default(),
            redis: RedisSettings::default(),
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
            auth: AuthSettings::default(),
            automations: AutomationsSettings::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub engine: Engine,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the service until `shutdown` triggers: HTTP API, the EVENTS consumer and the scheduler.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.http.listen).await?,
    };
    tracing::info!(addr = %listener.local_addr()?, "Automations listening");
    let nats = rc_common::nats::connect(&settings.nats, SERVICE).await?;
    let js = rc_common::nats::jetstream(nats.clone(), &settings.nats);
    let redis = rc_common::redis::connect_until_ready(&settings.redis, &shutdown)
        .await
        .ok_or("shut down before Redis was reachable")?;
    let cfg = &settings.automations;
    let engine = Engine {
        redis: redis.clone(),
        js: js.clone(),
        http: reqwest::Client::new(),
        lease_ms: cfg.lease_ms as i64,
    };

    let streams_ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    {
        let (js, nats_settings, flag, shutdown) = (
            js.clone(),
            settings.nats.clone(),
            streams_ready.clone(),
            shutdown.clone(),
        );
        let mut spec = ConsumerSpec::new(SERVICE, subjects::EVENTS_STREAM, "events.*.track");
        spec.durable = cfg.consumer_name.clone();
        spec.filter_subjects = vec![
            "events.*.track".into(),
            "events.*.identify".into(),
            "events.*.group".into(),
        ];
        spec.concurrency = cfg.consumer_concurrency;
        spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
        let handler = Arc::new(events::EventHandler {
            engine: engine.clone(),
        });
        tasks.push(tokio::spawn(async move {
            if rc_common::nats::provision_streams_until_ready(&js, &nats_settings, &shutdown).await
            {
                flag.store(true, Ordering::Release);
                consumer::run(js, spec, handler, shutdown).await;
            }
        }));
    }
    tasks.push(tokio::spawn(scheduler::run(
        engine.clone(),
        Duration::from_millis(cfg.poll_interval_ms),
        cfg.scheduler_concurrency,
        shutdown.clone(),
    )));

    let state = AppState {
        auth: Arc::new(Authenticator::new(
            WorkspaceStore::new(redis.clone()),
            &settings.auth,
        )),
        engine,
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
    for t in tasks {
        let _ = t.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
    tracing::info!("Automations stopped");
    Ok(())
}

pub fn app(state: AppState, readiness: Readiness, request_timeout: Duration) -> Router {
    api::routes()
        .with_state(state)
        .merge(rc_common::ops::router(readiness))
        .layer(axum::middleware::from_fn(rc_common::ops::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}
