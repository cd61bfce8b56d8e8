//! The profiles service: identify events (`events.*.identify`) and automation update-profile
//! steps (`courier.*.profile.update`) merge into per-user profiles in Redis, with per-field
//! last-writer-wins so the result never depends on delivery order or duplicates; a
//! Courier-compatible `/profiles/{user_id}` API reads and writes them; every change is announced
//! on `courier.<ws>.profile.updated`.

pub mod api;
pub mod error;
pub mod events;
pub mod patch;
pub mod store;
pub mod traits;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use prost::Message;
use rc_common::auth::Authenticator;
use rc_common::consumer::{self, ConsumerSpec, Quarantine};
use rc_common::redis::RedisConn;
use rc_common::service::{Runtime, ServiceSettings};
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::ProfilesError;

pub const SERVICE: &str = "profiles";
/// Durable consumer of `events.*.identify`.
pub const DURABLE_EVENTS: &str = subjects::durables::PROFILES_EVENTS;
/// Durable consumer of `courier.*.profile.update`.
pub const DURABLE_UPDATES: &str = subjects::durables::PROFILES_UPDATES;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ProfilesSettings {
    /// Messages handled at once per consumer in this process.
    pub concurrency: usize,
    /// Deliveries that died without an answer (process crash) before a message is
    /// dead-lettered as a crash-loop. Failures that answer (an outage) never dead-letter.
    pub quarantine_after: u32,
    pub ack_wait_ms: u64,
    /// Idempotency-Key retention when `x-idempotency-expiration` is absent (Courier: 25 h).
    pub idempotency_ttl_secs: u64,
    /// How long an applied update-profile request id is remembered (≥ the stream's max age).
    pub request_ttl_secs: u64,
    /// Largest stored profile (compact JSON bytes): a write that would grow a profile past it is
    /// refused (API: 413; identify or update-profile step: dead-lettered).
    pub max_profile_bytes: usize,
    /// Operations in one JSON Patch.
    pub max_patch_ops: usize,
}

impl ProfilesSettings {
    pub fn patch_limits(&self) -> patch::Limits {
        patch::Limits {
            max_ops: self.max_patch_ops,
            max_bytes: self.max_profile_bytes,
            max_depth: patch::MAX_DEPTH,
        }
    }
}

impl Default for ProfilesSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            quarantine_after: 3,
            ack_wait_ms: 30_000,
            idempotency_ttl_secs: 25 * 3600,
            request_ttl_secs: 8 * 24 * 3600,
            max_profile_bytes: 256 * 1024,
            max_patch_ops: 1_000,
        }
    }
}

rc_common::settings! {
    port: 8081;
    profiles: ProfilesSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub redis: RedisConn,
    pub publisher: Publisher,
    pub settings: Arc<ProfilesSettings>,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

pub use rc_common::service::BoxError;

/// Publishes `ProfileUpdated` with a Nats-Msg-Id derived from the cause, so republishing
/// after a redelivery is a no-op inside the dedupe window.
#[derive(Clone)]
pub struct Publisher {
    pub js: jetstream::Context,
}

impl Publisher {
    pub async fn profile_updated(
        &self,
        ws: &str,
        uid: &str,
        profile: Option<&str>,
        source: &str,
        cause_id: &str,
    ) -> Result<(), async_nats::Error> {
        let message = rc_proto::ProfileUpdated {
            schema_version: 1,
            workspace_id: ws.to_string(),
            user_id: uid.to_string(),
            profile: profile
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
                .unwrap_or_default(),
            deleted: profile.is_none(),
            source: source.to_string(),
            cause_id: cause_id.to_string(),
            updated_at: Some(rc_common::clock::timestamp_now()),
        };
        let subject = subjects::courier_subject(ws, subjects::kinds::PROFILE_UPDATED);
        let msg_id = format!("{ws}:profile:{uid}:{source}:{cause_id}");
        self.js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(message.encode_to_vec().into())
                    .message_id(msg_id),
            )
            .await?
            .await?;
        metrics::counter!("profiles_updates_published_total", "source" => source.to_string())
            .increment(1);
        Ok(())
    }
}

/// Runs the service (API + both consumers) until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let publisher = Publisher { js: rt.js.clone() };
    let cfg = Arc::new(settings.profiles.clone());
    let identify = Arc::new(events::IdentifyHandler {
        redis: rt.redis.clone(),
        publisher: publisher.clone(),
        max_profile_bytes: cfg.max_profile_bytes,
    });
    let updates = Arc::new(events::UpdateHandler {
        redis: rt.redis.clone(),
        publisher: publisher.clone(),
        request_ttl_secs: cfg.request_ttl_secs,
        max_profile_bytes: cfg.max_profile_bytes,
    });
    let [events_spec, updates_spec] = consumer_specs(&settings, &rt.redis);
    rt.spawn_when_streams_ready(|js, shutdown| async move {
        tokio::join!(
            consumer::run(js.clone(), events_spec, identify, shutdown.clone()),
            consumer::run(js, updates_spec, updates, shutdown),
        );
    });

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        redis: rt.redis.clone(),
        publisher,
        settings: cfg,
    };
    let app = app(state);
    rt.serve(app).await
}

/// The identify and update-profile consumers as `run` starts them (rc-bench's floor reads the
/// identify one's server-side configuration from here).
pub fn consumer_specs(settings: &Settings, redis: &RedisConn) -> [ConsumerSpec; 2] {
    let p = &settings.profiles;
    let tune = |mut spec: ConsumerSpec| {
        spec.concurrency = p.concurrency.max(1);
        spec.fairness = Some(consumer::Fairness::for_concurrency(spec.concurrency));
        spec.quarantine = Some(Quarantine::new(redis.clone(), p.quarantine_after));
        spec.ack_wait = Duration::from_millis(p.ack_wait_ms.max(1000));
        spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
        spec
    };
    let mut events_spec = tune(ConsumerSpec::new(
        SERVICE,
        subjects::EVENTS_STREAM,
        subjects::events_of_type("identify"),
    ));
    events_spec.durable = DURABLE_EVENTS.to_string();
    let mut updates_spec = tune(ConsumerSpec::new(
        SERVICE,
        subjects::COURIER_STREAM,
        subjects::courier_of_kind(subjects::kinds::PROFILE_UPDATE),
    ));
    updates_spec.durable = DURABLE_UPDATES.to_string();
    [events_spec, updates_spec]
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/profiles/{user_id}",
            get(api::get_profile)
                .post(api::post_profile)
                .put(api::put_profile)
                .patch(api::patch_profile)
                .delete(api::delete_profile),
        )
        .merge(rc_common::deadletters::router(
            rc_common::deadletters::DlqService::Profiles,
            state.publisher.js.clone(),
            state.auth.clone(),
        ))
        .with_state(state)
}
