//! The accounts service: group events (`events.*.group`) upsert tenants and memberships in
//! Redis with per-field last-writer-wins (order- and duplicate-independent); a Courier-compatible
//! `/tenants` + `/users/{id}/tenants` API (and the legacy `/accounts` paths) reads and writes
//! them; every change is announced on `courier.<ws>.tenant.updated`.

pub mod api;
pub mod error;
pub mod events;
pub mod lists;
pub mod store;

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

pub use error::AccountsError;

pub const SERVICE: &str = "accounts";
/// Durable consumer of `events.*.group`.
pub const DURABLE_EVENTS: &str = subjects::durables::ACCOUNTS_EVENTS;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AccountsSettings {
    /// Messages handled at once by the consumer in this process.
    pub concurrency: usize,
    /// Deliveries that died without an answer (process crash) before a message is
    /// dead-lettered as a crash-loop. Failures that answer (an outage) never dead-letter.
    pub quarantine_after: u32,
    pub ack_wait_ms: u64,
    /// Largest tenant document, and largest membership profile (compact JSON bytes): a write
    /// that would grow one past it is refused (API: 413; group event: dead-lettered).
    pub max_tenant_bytes: usize,
}

impl Default for AccountsSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            quarantine_after: 3,
            ack_wait_ms: 30_000,
            max_tenant_bytes: 256 * 1024,
        }
    }
}

rc_common::settings! {
    port: 8082;
    accounts: AccountsSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub redis: RedisConn,
    pub publisher: Publisher,
    pub max_tenant_bytes: usize,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

pub use rc_common::service::BoxError;

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
            updated_at: Some(rc_common::clock::timestamp_now()),
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

/// Runs the service (API + the group consumer) until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let mut rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let publisher = Publisher { js: rt.js.clone() };
    let group = Arc::new(events::GroupHandler {
        redis: rt.redis.clone(),
        publisher: publisher.clone(),
        max_tenant_bytes: settings.accounts.max_tenant_bytes,
    });
    let spec = consumer_spec(&settings, &rt.redis);
    rt.spawn_when_streams_ready(|js, shutdown| consumer::run(js, spec, group, shutdown));

    let state = AppState {
        auth: rt.authenticator(&settings.auth),
        redis: rt.redis.clone(),
        publisher,
        max_tenant_bytes: settings.accounts.max_tenant_bytes,
    };
    let app = app(state);
    rt.serve(app).await
}

fn consumer_spec(settings: &Settings, redis: &RedisConn) -> ConsumerSpec {
    let p = &settings.accounts;
    let mut spec = ConsumerSpec::new(
        SERVICE,
        subjects::EVENTS_STREAM,
        subjects::events_of_type("group"),
    );
    spec.durable = DURABLE_EVENTS.to_string();
    spec.concurrency = p.concurrency.max(1);
    spec.fairness = Some(consumer::Fairness::for_concurrency(spec.concurrency));
    spec.quarantine = Some(Quarantine::new(redis.clone(), p.quarantine_after));
    spec.ack_wait = Duration::from_millis(p.ack_wait_ms.max(1000));
    spec.drain_timeout = Duration::from_millis(settings.shutdown.drain_timeout_ms);
    spec
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
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
        .route("/lists", get(lists::list_lists))
        .route(
            "/lists/{id}",
            get(lists::get_list)
                .put(lists::put_list)
                .delete(lists::delete_list),
        )
        .route(
            "/lists/{id}/subscriptions",
            get(lists::list_subscriptions)
                .post(lists::add_subscriptions)
                .put(lists::replace_subscriptions),
        )
        .route(
            "/lists/{id}/subscriptions/{user_id}",
            axum::routing::put(lists::subscribe_user).delete(lists::unsubscribe_user),
        )
        .merge(rc_common::deadletters::router(
            rc_common::deadletters::DlqService::Accounts,
            state.publisher.js.clone(),
            state.auth.clone(),
        ))
        .with_state(state)
}
