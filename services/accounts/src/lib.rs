//! The accounts service: group events (`events.*.group`) upsert tenants and memberships in
//! Redis with per-field last-writer-wins (order- and duplicate-independent); a Courier-compatible
//! `/tenants` + `/users/{id}/tenants` API (and the legacy `/accounts` paths) reads and writes
//! them; every change is announced on `courier.<ws>.tenant.updated`.

pub mod api;
pub mod error;
pub mod events;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use axum::Router;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::get;
use prost::Message;
use rc_common::auth::{Authenticator, WorkspaceStore};
use rc_common::config::{
    AuthSettings, HttpSettings, LogSettings, NatsSettings, RedisSettings, ShutdownSettings,
};
use rc_common::consumer::{self, ConsumerSpec};
use rc_common::ops::Readiness;
use rc_common::redis::RedisConn;
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

pub use error::AccountsError;

pub const SERVICE: &str = "accounts";
/// Durable consumer of `events.*.group`.
pub const DURABLE_EVENTS: &str = "accounts";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AccountsSettings {
    /// Messages handled at once by the consumer in this process.
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: i64,
    pub ack_wait_ms: u64,
}

impl Default for AccountsSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            max_deliver: 10,
            ack_wait_ms: 30_000,
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
    pub accounts: AccountsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings::on_port(8082),
            nats: NatsSettings::default(),
            redis: RedisSettings::default(),
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
            auth: AuthSettings::default(),
            accounts: AccountsSettings::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub redis: RedisConn,
    pub publisher: Publisher,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes `TenantUpdated` with a Nats-Msg-Id derived from the cause, so republishing
/// after a redelivery is a no-op inside the dedupe window.
#[derive(Clone)]
pub struct Publisher {
    pub js: jetstream::Context,
}

pub struct Change<'a> {
    pub tenant_id: &'a str,
    pub doc: Option<&'a str>,
    pub member_user_id: &'a str,
    pub member_removed: bool,
    pub source: &'a str,
    pub cause_id: &'a str,
}

impl Publisher {
    pub async fn tenant_updated(
        &self,
        ws: &str,
        change: Change<'_>,
    ) -> Result<(), async_nats::Error> {
        let now = time::OffsetDateTime::now_utc();
        let message = rc_proto::TenantUpdated {
            schema_version: 1,
            workspace_id: ws.to_string(),
            tenant_id: change.tenant_id.to_string(),
            tenant: change
                .doc
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
                .unwrap_or_default(),
            deleted: change.doc.is_none(),
            member_user_id: change.member_user_id.to_string(),
            member_removed: change.member_removed,
            source: change.source.to_string(),
            cause_id: change.cause_id.to_string(),
            updated_at: Some(prost_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: now.nanosecond() as i32,
            }),
        };
        let subject = subjects::courier_subject(ws, subjects::kinds::TENANT_UPDATED);
        let msg_id = format!(
            "{ws}:tenant:{}:{}:{}:{}",
            change.tenant_id, change.member_user_id, change.source, change.cause_id
        );
        self.js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(message.encode_to_vec().into())
                    .message_id(msg_id),
            )
            .await?
            .await?;
        metrics::counter!("accounts_updates_published_total", "source" => change.source.to_string())
            .increment(1);
        Ok(())
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Runs the service (API + the group consumer) until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.http.listen).await?,
    };
    tracing::info!(addr = %listener.local_addr()?, "Accounts listening");
    let nats = rc_common::nats::connect(&settings.nats, SERVICE).await?;
    let js = rc_common::nats::jetstream(nats.clone(), &settings.nats);
    let redis = rc_common::redis::connect_until_ready(&settings.redis, &shutdown)
        .await
        .ok_or("shut down before Redis was reachable")?;
    let publisher = Publisher { js: js.clone() };

    let streams_ready = Arc::new(AtomicBool::new(false));
    // Aborted if this future is dropped (a killed service must not leave its consumer running).
    let mut consumers = Vec::new();
    {
        let (js, nats_settings, flag, shutdown) = (
            js.clone(),
            settings.nats.clone(),
            streams_ready.clone(),
            shutdown.clone(),
        );
        let group = Arc::new(events::GroupHandler {
            redis: redis.clone(),
            publisher: publisher.clone(),
        });
        let spec = consumer_spec(&settings);
        consumers.push(AbortOnDrop(Some(tokio::spawn(async move {
            if !rc_common::nats::provision_streams_until_ready(&js, &nats_settings, &shutdown).await
            {
                return;
            }
            flag.store(true, Ordering::Release);
            consumer::run(js, spec, group, shutdown).await;
        }))));
    }

    let state = AppState {
        auth: Arc::new(Authenticator::new(
            WorkspaceStore::new(redis.clone()),
            &settings.auth,
        )),
        redis: redis.clone(),
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
    for mut c in consumers {
        if let Some(handle) = c.0.take() {
            let _ = handle.await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
    tracing::info!("Accounts stopped");
    Ok(())
}

fn consumer_spec(settings: &Settings) -> ConsumerSpec {
    let p = &settings.accounts;
    let mut spec = ConsumerSpec::new(SERVICE, subjects::EVENTS_STREAM, "events.*.group");
    spec.concurrency = p.concurrency.max(1);
    spec.max_deliver = p.max_deliver.max(1);
    spec.ack_wait = Duration::from_millis(p.ack_wait_ms.max(1000));
    spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
    spec
}

pub fn app(state: AppState, readiness: Readiness, request_timeout: Duration) -> Router {
    Router::new()
        .route("/tenants", get(api::list_tenants))
        .route(
            "/tenants/{id}",
            get(api::get_tenant)
                .put(api::put_tenant)
                .delete(api::delete_tenant),
        )
        .route("/tenants/{id}/users", get(api::tenant_users))
        .route(
            "/users/{user_id}/tenants",
            get(api::user_tenants)
                .put(api::join_tenants)
                .delete(api::leave_all),
        )
        .route(
            "/users/{user_id}/tenants/{id}",
            get(api::user_tenant)
                .put(api::join_tenant)
                .delete(api::leave_tenant),
        )
        .route("/accounts", get(api::legacy::list_tenants))
        .route(
            "/accounts/{id}",
            get(api::legacy::get_tenant)
                .put(api::legacy::put_tenant)
                .delete(api::delete_tenant),
        )
        .route("/accounts/{id}/users", get(api::legacy::tenant_users))
        .route(
            "/users/{user_id}/accounts",
            get(api::legacy::user_tenants)
                .put(api::legacy::join_tenants)
                .delete(api::leave_all),
        )
        .route(
            "/users/{user_id}/accounts/{id}",
            get(api::legacy::user_tenant)
                .put(api::join_tenant)
                .delete(api::leave_tenant),
        )
        .with_state(state)
        .merge(rc_common::ops::router(readiness))
        .layer(axum::middleware::from_fn(rc_common::ops::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}
