//! The automations service: automation and notification templates, event → template mappings,
//! the received-events catalog and the durable run engine (see README.md).

pub mod api;
pub mod cached;
pub mod catalog;
pub mod engine;
pub mod error;
pub mod events;
pub mod refs;
pub mod scheduler;
pub mod steps;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use rc_common::auth::Authenticator;
use rc_common::consumer::{self, ConsumerSpec};
use rc_common::service::{Runtime, ServiceSettings};
use rc_common::{Shutdown, subjects};
use rc_proto::EventType;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

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
    /// Finished runs (completed, failed, canceled) stay readable this long, then expire.
    pub run_retention_secs: u64,
}

impl Default for AutomationsSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 200,
            lease_ms: 30_000,
            scheduler_concurrency: 256,
            consumer_concurrency: 64,
            consumer_name: subjects::durables::AUTOMATIONS_EVENTS.to_string(),
            run_retention_secs: 7 * 24 * 3600,
        }
    }
}

rc_common::settings! {
    port: 8083;
    automations: AutomationsSettings,
    /// Outbound HTTP (fetch-data steps): TLS extra CA, connect timeout, SSRF guard.
    outbound: rc_common::outbound::OutboundSettings,
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

pub use rc_common::service::BoxError;

/// The EVENTS subjects the automations consumer reads: every event type (any can be mapped).
pub fn event_filters() -> Vec<String> {
    [
        EventType::Track,
        EventType::Identify,
        EventType::Group,
        EventType::Page,
        EventType::Screen,
        EventType::Alias,
    ]
    .into_iter()
    .map(|t| subjects::events_of_type(t.subject_token()))
    .collect()
}

/// The EVENTS consumer as `run` starts it, before its quarantine (rc-bench's floor creates the
/// same durable).
pub fn consumer_spec(settings: &Settings) -> ConsumerSpec {
    let cfg = &settings.automations;
    let mut spec = ConsumerSpec::new(
        SERVICE,
        subjects::EVENTS_STREAM,
        subjects::events_of_type("track"),
    );
    spec.durable = cfg.consumer_name.clone();
    spec.filter_subjects = event_filters();
    spec.concurrency = cfg.consumer_concurrency;
    spec.fairness = Some(consumer::Fairness::for_concurrency(spec.concurrency));
    spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
    spec
}

/// Runs the service until `shutdown` triggers: HTTP API, the EVENTS consumer and the scheduler.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let cfg = &settings.automations;
    let engine = Engine {
        redis: rt.redis.clone(),
        js: rt.js.clone(),
        http: rc_common::outbound::client(
            &settings.outbound,
            &rc_common::outbound::ClientSpec {
                user_agent: concat!("rudder-courier-automations/", env!("CARGO_PKG_VERSION")),
                // fetch-data sets its own per-request bound.
                timeout: std::time::Duration::from_secs(10),
                follow_redirects: true,
            },
        )?,
        lease_ms: cfg.lease_ms as i64,
        retention_ms: cfg
            .run_retention_secs
            .saturating_mul(1000)
            .min(i64::MAX as u64) as i64,
        allow_private_networks: settings.outbound.allow_private_networks,
        config: Arc::new(cached::Config::default()),
    };

    let mut spec = consumer_spec(&settings);
    spec.quarantine = Some(consumer::Quarantine::new(rt.redis.clone(), 3));
    let tally = Arc::new(catalog::Tally::default());
    let changes = cached::subscribe(&rt.nats).await?;
    rt.spawn(cached::listen(
        engine.config.clone(),
        changes,
        rt.shutdown.clone(),
    ));
    let handler = Arc::new(events::EventHandler {
        engine: engine.clone(),
        tally: tally.clone(),
    });
    let redis = rt.redis.clone();
    rt.spawn(catalog::flush_every(
        tally.clone(),
        redis.clone(),
        rt.shutdown.clone(),
    ));
    rt.spawn_when_streams_ready(|js, shutdown| async move {
        consumer::run(js, spec, handler, shutdown).await;
        // The last acked events' counts.
        if let Err(e) = tally.flush(&redis).await {
            tracing::warn!(error = %e, "Catalog counts not written at shutdown");
        }
    });
    rt.spawn(scheduler::run(
        engine.clone(),
        Duration::from_millis(cfg.poll_interval_ms),
        cfg.scheduler_concurrency,
        rt.shutdown.clone(),
    ));

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        engine,
    };
    let app = app(state);
    rt.serve(app).await
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
    api::routes()
        .merge(rc_common::deadletters::router(
            rc_common::deadletters::DlqService::Automations,
            state.engine.js.clone(),
            state.auth.clone(),
        ))
        .with_state(state)
}
