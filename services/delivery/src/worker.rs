//! The `delivery` consumer: one `MessageRequest` → a message record, routing, provider calls
//! under a lease, status transitions and lifecycle events. Idempotent on the message id.
//!
//! No provider can hold shared capacity: each message gets one provider call per delivery
//! (bounded by the provider timeout), and only while its workspace is under its in-flight cap
//! and the provider's circuit is closed. Anything else (a retryable failure, an open circuit,
//! a workspace at its cap) is scheduled in the workspace's due index in Redis and the
//! JetStream message is acked once that is stored; `scheduler` picks it up when due.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Message, message::PublishMessage};
use prost::Message as _;
use rc_common::consumer::{Handler, Outcome};
use rc_common::subjects::{self, courier_subject, kinds};
use rc_proto::{MessageEvent, MessageRequest};

use crate::limits::{Circuits, Gate, WorkspaceLimiter};
use crate::providers::{Kind, Registry, RegistryError};
use crate::routing::{Method, Prepared, Route, route};
use crate::send::{Outgoing, SendResult, Senders};
use crate::store::{Claim, Meta, ProviderEntry, Record, StatusChange, Store, now_ms};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub lease: Duration,
    /// First retry wait after a failed provider call (doubles per attempt, up to 25 % jitter).
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Retries stop (UNDELIVERABLE) once the next one would fall this long after enqueueing.
    pub retry_window: Duration,
    /// How long a message of a workspace at its in-flight cap waits before it is tried again.
    pub defer: Duration,
}

pub struct Worker {
    pub store: Store,
    pub registry: Registry,
    pub senders: Senders,
    pub publisher: Publisher,
    pub config: WorkerConfig,
    pub limiter: WorkspaceLimiter,
    pub circuits: Circuits,
}

#[derive(Debug)]
pub enum Error {
    /// Redis or NATS is down: every message needs them, so the consumer waits.
    Unavailable(String),
    Retry(String),
    Poison(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unavailable(e) | Error::Retry(e) | Error::Poison(e) => f.write_str(e),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if rc_common::redis::is_unavailable(&e) {
            Error::Unavailable(format!("redis: {e}"))
        } else {
            Error::Retry(format!("redis: {e}"))
        }
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Redis(r) => r.into(),
            RegistryError::Invalid(m) => Error::Retry(m),
        }
    }
}

impl Handler for Worker {
    async fn handle(&self, message: &Message) -> Outcome {
        match self.process(message).await {
            Ok(()) => Outcome::Done,
            Err(Error::Unavailable(r)) => Outcome::Unavailable(r),
            Err(Error::Retry(r)) => Outcome::Retry(r),
            Err(Error::Poison(r)) => Outcome::Poison(r),
        }
    }
}

/// Where a delivery attempt comes from: the JetStream request (acked after it) or the due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Stream,
    Due,
}

/// The retry a message needs after this attempt.
struct Later {
    error: String,
    after: Duration,
    attempts: u32,
}

use rc_common::backoff::later as jittered;

impl Worker {
    async fn process(&self, message: &Message) -> Result<(), Error> {
        let req = MessageRequest::decode(message.payload.clone())
            .map_err(|e| Error::Poison(format!("not a MessageRequest: {e}")))?;
        let subject_ws = subjects::workspace_of(&message.subject).unwrap_or_default();
        if req.workspace_id.is_empty() || req.workspace_id != subject_ws {
            return Err(Error::Poison(format!(
                "workspace_id {:?} does not match the subject {}",
                req.workspace_id, message.subject
            )));
        }
        if req.message_id.is_empty() || req.message_id.len() > 256 {
            return Err(Error::Poison("message_id must be 1-256 characters".into()));
        }
        let ws = req.workspace_id.as_str();
        let id = req.message_id.as_str();
        let prepared = Prepared::from_request(&req);
        if prepared.is_tenant_send() {
            return self.fan_out(ws, id, &req, &prepared).await;
        }
        let meta = Meta {
            recipient: prepared.recipient.clone(),
            event: req.event.clone(),
            notification: prepared.template.clone(),
            run_id: req.run_id.clone(),
            tenant_id: prepared.tenant_id.clone(),
            automation_template: req.automation_template.clone(),
            brand: req.brand.clone(),
        };
        let lease = self.config.lease.as_millis() as u64;
        let claimed = self.store.create_claimed(ws, id, &meta, lease).await?;
        if claimed.is_some() {
            metrics::counter!("delivery_messages_total").increment(1);
            // New (and claimed by the same script): ENQUEUED is its only status; it goes out
            // with the attempt's statuses (one read, one mark, acks awaited together), every
            // way out of `attempt` publishes.
        } else {
            // A redelivery: publish what an earlier attempt recorded but did not publish.
            self.publish_pending(ws, id).await?;
        }
        let source = Source::Stream;
        self.attempt(ws, id, &req, &prepared, &message.payload, source, claimed)
            .await
    }

    /// A due retry (claimed by `scheduler`, which holds the workspace's slot for it).
    pub async fn run_due(&self, ws: &str, id: &str) -> Result<(), Error> {
        let Some(bytes) = self.store.request(ws, id).await? else {
            // Done (the request is dropped then) or gone: nothing to retry.
            self.store.unschedule(ws, id).await?;
            return Ok(());
        };
        let req = match MessageRequest::decode(bytes.as_slice()) {
            Ok(r) if r.workspace_id == ws && r.message_id == id => r,
            _ => {
                // Checked before it was stored, so only a damaged record gets here.
                tracing::error!(workspace = ws, message_id = id, "Stored request unreadable");
                let failed = StatusChange {
                    status: "UNDELIVERABLE",
                    reason: "PROVIDER_ERROR".into(),
                    error: "the stored request could not be read".into(),
                };
                return self.finish(ws, id, None, vec![failed], Source::Due).await;
            }
        };
        let prepared = Prepared::from_request(&req);
        self.attempt(ws, id, &req, &prepared, &bytes, Source::Due, None)
            .await
    }

    /// Claims the message (unless `claimed` holds it, created claimed) and makes one provider
    /// call per target still to send; records the answers, then finishes it or schedules its
    /// retry.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        ws: &str,
        id: &str,
        req: &MessageRequest,
        prepared: &Prepared,
        payload: &[u8],
        source: Source,
        claimed: Option<Box<Record>>,
    ) -> Result<(), Error> {
        // The request is kept in Redis only when a retry needs it; the due index has it already.
        let keep = (source == Source::Stream).then_some(payload);
        let claim = match claimed {
            Some(record) => Claim::Claimed(record),
            None => {
                self.store
                    .claim(ws, id, self.config.lease.as_millis() as u64)
                    .await?
            }
        };
        let record = match claim {
            Claim::Claimed(record) => record,
            Claim::Done | Claim::Missing if source == Source::Due => {
                self.store.unschedule(ws, id).await?;
                return Ok(());
            }
            Claim::Done => return self.publish_pending(ws, id).await,
            Claim::Missing => return Err(Error::Retry("message record vanished".into())),
            // Another worker holds the lease, or a retry is due later: make sure the due index
            // has it then (a crashed lease holder's message comes back), and let go.
            Claim::Busy(at) | Claim::Wait(at) => {
                self.store.schedule(ws, id, keep, at).await?;
                return self.publish_pending(ws, id).await;
            }
        };

        let providers = self.registry.load(ws).await?;
        let done = |status: &'static str, reason: &str, error: String| StatusChange {
            status,
            reason: reason.to_string(),
            error,
        };
        let targets = match route(prepared, &providers) {
            Route::Unmapped(error) => {
                let change = done("UNMAPPED", "", error);
                return self.finish(ws, id, None, vec![change], source).await;
            }
            Route::Unroutable { reason, error } => {
                let change = done("UNROUTABLE", reason, error);
                return self.finish(ws, id, None, vec![change], source).await;
            }
            Route::Targets(targets) => targets,
        };
        // Third-party providers can hang: a workspace's calls to them share its cap (the
        // scheduler takes the slot for due messages). The inbox is our own Redis, bounded by
        // its response timeout, and needs none.
        let _slot =
            if source == Source::Stream && targets.iter().any(|t| t.provider.kind != Kind::Inbox) {
                let Some(slot) = self.limiter.try_acquire(ws) else {
                    // At its cap: park it in Redis and ack, rather than hold a shared handler (or
                    // the consumer's pending window) for it.
                    metrics::counter!("delivery_deferred_total", "cause" => "workspace_cap")
                        .increment(1);
                    let due = now_ms() + jittered(self.config.defer).as_millis() as i64;
                    let fields = [
                        ("phase", "scheduled".to_string()),
                        ("not_before", due.to_string()),
                    ];
                    self.store.transition(ws, id, &fields, &[], &[]).await?;
                    self.store.schedule(ws, id, keep, due).await?;
                    return self.publish_pending(ws, id).await;
                };
                Some(slot)
            } else {
                None
            };
        let mut entries = record.providers.clone();
        let mut later: Option<Later> = None;
        let single = prepared.method == Method::Single;
        for target in &targets {
            // `single`: one channel goes out; the next is only a fallback for one that failed.
            if single && entries.iter().any(|e| e.sent.is_some()) {
                break;
            }
            let pos = entries
                .iter()
                .position(|e| e.channel == target.channel && e.provider == target.provider.name)
                .unwrap_or_else(|| {
                    entries.push(ProviderEntry {
                        channel: target.channel.clone(),
                        provider: target.provider.name.clone(),
                        provider_type: target.provider.kind.as_str().into(),
                        status: "ENQUEUED".into(),
                        ..Default::default()
                    });
                    entries.len() - 1
                });
            let entry = &mut entries[pos];
            if matches!(
                entry.status.as_str(),
                "SENT" | "DELIVERED" | "UNDELIVERABLE"
            ) {
                continue;
            }
            let kind = target.provider.kind;
            // The inbox is our own Redis: its failures are an outage, not a failing provider.
            let circuit = kind != Kind::Inbox;
            if circuit && let Gate::Wait(wait) = self.circuits.gate(ws, &target.provider.name) {
                metrics::counter!("delivery_deferred_total", "cause" => "circuit_open")
                    .increment(1);
                let error = entry
                    .error
                    .clone()
                    .unwrap_or_else(|| "provider circuit open".into());
                // Backing off per claim too: a long outage's backlog is looked at about once
                // per `max_backoff`, not at every cooldown.
                let wait = wait.max(self.backoff(record.claims));
                later = merge(later, error, wait, entry.attempts);
                if single {
                    // Waits for its channel rather than skip to a lower preference.
                    break;
                }
                continue;
            }
            let (title, body) = prepared.content(&target.channel);
            let out = Outgoing {
                workspace: ws.to_string(),
                message_id: id.to_string(),
                channel: target.channel.clone(),
                address: target.address.clone(),
                recipient: prepared.recipient.clone(),
                to: prepared.to_json(),
                title,
                body,
                data: prepared.data.clone(),
                event: req.event.clone(),
                notification: prepared.template.clone(),
                run_id: req.run_id.clone(),
                tenant_id: prepared.tenant_id.clone(),
            };
            entry.attempts += 1;
            let result = self.senders.send(&target.provider, &out).await;
            if circuit {
                let ok = !matches!(result, SendResult::Retry { .. });
                self.circuits.record(ws, &target.provider.name, ok);
            }
            let now = now_ms();
            let label = kind.as_str();
            match result {
                SendResult::Sent {
                    reference,
                    delivered,
                } => {
                    entry.status = if delivered { "DELIVERED" } else { "SENT" }.into();
                    entry.sent = Some(now);
                    entry.delivered = delivered.then_some(now);
                    entry.reference = reference;
                    entry.error = None;
                    metrics::counter!("delivery_sends_total", "provider" => label, "result" => "sent").increment(1);
                }
                SendResult::Failed { error } => {
                    entry.status = "UNDELIVERABLE".into();
                    entry.error = Some(error);
                    metrics::counter!("delivery_sends_total", "provider" => label, "result" => "failed").increment(1);
                }
                SendResult::Retry { error, retry_after } => {
                    metrics::counter!("delivery_sends_total", "provider" => label, "result" => "retry").increment(1);
                    let backoff = self.backoff(entry.attempts);
                    let wait = retry_after.unwrap_or_default().max(backoff);
                    entry.error = Some(error.clone());
                    later = merge(later, error, wait, entry.attempts);
                    if single {
                        break;
                    }
                }
            }
        }
        let sent = entries.iter().any(|e| e.sent.is_some());
        let delivered_any = entries.iter().any(|e| e.delivered.is_some());
        let mut statuses = Vec::new();
        if sent {
            statuses.push(StatusChange::plain("SENT"));
        }
        if delivered_any {
            statuses.push(StatusChange::plain("DELIVERED"));
        }
        let providers_json = serde_json::to_string(&entries).expect("serializable");
        match later {
            Some(later) => {
                let due = now_ms() + jittered(later.after).as_millis() as i64;
                let window_end =
                    record.ts("enqueued") + self.config.retry_window.as_millis() as i64;
                if due <= window_end {
                    // Give the message to the due index; the next attempt retries what did
                    // not go out. Recorded first: a crash before indexing leaves a
                    // `scheduled` record that a redelivery (or the lease's end) re-indexes.
                    let fields = [
                        ("providers", providers_json),
                        ("phase", "scheduled".to_string()),
                        ("not_before", due.to_string()),
                    ];
                    self.store
                        .transition(ws, id, &fields, &[], &statuses)
                        .await?;
                    self.store.schedule(ws, id, keep, due).await?;
                    return self.publish_pending(ws, id).await;
                }
                if !sent {
                    statuses.push(done(
                        "UNDELIVERABLE",
                        "PROVIDER_ERROR",
                        format!(
                            "gave up after {} attempts in {:?}: {}",
                            later.attempts, self.config.retry_window, later.error
                        ),
                    ));
                }
            }
            None if !sent => {
                let error = entries
                    .iter()
                    .filter_map(|e| e.error.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                statuses.push(done("UNDELIVERABLE", "PROVIDER_ERROR", error));
            }
            None => {}
        }
        self.finish(ws, id, Some(providers_json), statuses, source)
            .await
    }

    /// Publishes the message's statuses not published yet (see [`Publisher::publish_pending`]).
    async fn publish_pending(&self, ws: &str, id: &str) -> Result<(), Error> {
        self.publisher
            .publish_pending(&self.store, ws, id)
            .await
            .map_err(Error::Unavailable)
    }

    /// `retry_base × 2^(attempts-1)`, at most `max_backoff`.
    fn backoff(&self, attempts: u32) -> Duration {
        rc_common::backoff::Backoff::new(self.config.retry_base, self.config.max_backoff)
            .delay(attempts)
    }

    /// `to.tenant_id` without a user: one request per member of the tenant (accounts' read
    /// contract), message id `<id>:<user id>`, published back to `message.requested` with a
    /// Nats-Msg-Id per child, so a redelivered parent re-publishes nothing new. A tenant with no
    /// members gets a message record of its own: UNROUTABLE / NO_CHANNELS.
    async fn fan_out(
        &self,
        ws: &str,
        id: &str,
        req: &MessageRequest,
        prepared: &Prepared,
    ) -> Result<(), Error> {
        let mut conn = self.store.redis();
        let members: Vec<String> = redis::AsyncCommands::zrange(
            &mut conn,
            crate::store::tenant_members_key(ws, &prepared.tenant_id),
            0,
            -1,
        )
        .await?;
        if members.is_empty() {
            let meta = Meta {
                event: req.event.clone(),
                notification: prepared.template.clone(),
                run_id: req.run_id.clone(),
                tenant_id: prepared.tenant_id.clone(),
                automation_template: req.automation_template.clone(),
                brand: req.brand.clone(),
                ..Default::default()
            };
            self.store.create(ws, id, &meta).await?;
            let error = format!("Tenant {:?} has no members", prepared.tenant_id);
            return self
                .finish(
                    ws,
                    id,
                    None,
                    vec![StatusChange {
                        status: "UNROUTABLE",
                        reason: "NO_CHANNELS".into(),
                        error,
                    }],
                    Source::Stream,
                )
                .await;
        }
        let base_profile: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&req.profile).unwrap_or_default();
        let mut acks = Vec::with_capacity(members.len());
        for uid in &members {
            let stored: Option<String> =
                redis::AsyncCommands::get(&mut conn, crate::store::profile_key(ws, uid)).await?;
            let mut profile: serde_json::Map<String, serde_json::Value> = stored
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            for (k, v) in &base_profile {
                profile.insert(k.clone(), v.clone());
            }
            let mut child = req.clone();
            child.message_id = format!("{id}:{uid}");
            child.recipient = uid.clone();
            child.tenant_id = prepared.tenant_id.clone();
            child.profile = serde_json::to_vec(&profile).unwrap_or_default().into();
            let subject = courier_subject(ws, kinds::MESSAGE_REQUESTED);
            let publish = PublishMessage::build()
                .payload(child.encode_to_vec().into())
                .message_id(format!("{ws}:{}:requested", child.message_id));
            let ack = self
                .publisher
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| Error::Unavailable(format!("fan-out publish: {e}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| Error::Unavailable(format!("fan-out publish ack: {e}")))?;
        }
        metrics::counter!("delivery_tenant_fanout_total").increment(members.len() as u64);
        Ok(())
    }

    async fn finish(
        &self,
        ws: &str,
        id: &str,
        providers_json: Option<String>,
        statuses: Vec<StatusChange>,
        source: Source,
    ) -> Result<(), Error> {
        let mut fields = vec![("phase", "done".to_string())];
        if let Some(p) = providers_json {
            fields.push(("providers", p));
        }
        // The script answers what publishing needs: no read-back.
        let snapshot = self
            .store
            .transition_snapshot(ws, id, &fields, &["request", "not_before"], &statuses)
            .await?;
        self.publisher
            .publish_snapshot(&self.store, ws, id, snapshot)
            .await
            .map_err(Error::Unavailable)?;
        if source == Source::Due {
            self.store.unschedule(ws, id).await?;
        }
        Ok(())
    }
}

/// Keeps the later of two retries (the message waits for its slowest target).
fn merge(current: Option<Later>, error: String, after: Duration, attempts: u32) -> Option<Later> {
    match current {
        Some(c) if c.after >= after => Some(Later {
            attempts: c.attempts.max(attempts),
            ..c
        }),
        Some(c) => Some(Later {
            error,
            after,
            attempts: c.attempts.max(attempts),
        }),
        None => Some(Later {
            error,
            after,
            attempts,
        }),
    }
}

/// Publishes each reached status once as a `MessageEvent`.
#[derive(Clone)]
pub struct Publisher {
    pub js: jetstream::Context,
}

impl Publisher {
    /// Publishes every status in the message's history that is not marked published yet.
    /// `Nats-Msg-Id: <ws>:<id>:<STATUS>` makes a repeat (crash between ack and marking) a no-op.
    pub async fn publish_pending(&self, store: &Store, ws: &str, id: &str) -> Result<(), String> {
        let snapshot = store.snapshot(ws, id).await.map_err(redis_err)?;
        self.publish_snapshot(store, ws, id, snapshot).await
    }

    /// [`Publisher::publish_pending`] from a snapshot the caller already has.
    pub async fn publish_snapshot(
        &self,
        store: &Store,
        ws: &str,
        id: &str,
        (history, published, record): crate::store::Snapshot,
    ) -> Result<(), String> {
        let pending: Vec<&serde_json::Value> = history
            .iter()
            .filter(|h| {
                h.get("status")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| !published.iter().any(|p| p == s))
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let Some(record) = record else {
            return Ok(());
        };
        // Sent in order, acks awaited together, then marked in one command.
        let mut acks = Vec::with_capacity(pending.len());
        let mut statuses = Vec::with_capacity(pending.len());
        for h in pending {
            let status = h["status"].as_str().unwrap_or_default();
            let at = h["at"].as_i64().unwrap_or_else(now_ms);
            let provider = record.main_provider();
            let event = MessageEvent {
                schema_version: 1,
                workspace_id: ws.to_string(),
                message_id: id.to_string(),
                status: status.to_string(),
                run_id: record.meta.run_id.clone(),
                template: record.meta.notification.clone(),
                recipient: record.meta.recipient.clone(),
                channel: provider.map(|p| p.channel.clone()).unwrap_or_default(),
                provider: provider.map(|p| p.provider.clone()).unwrap_or_default(),
                reason: h["reason"].as_str().unwrap_or_default().to_string(),
                error: h["error"].as_str().unwrap_or_default().to_string(),
                tenant_id: record.meta.tenant_id.clone(),
                event: record.meta.event.clone(),
                status_at: Some(rc_common::clock::timestamp_ms(at)),
                enqueued_ms: record.ts("enqueued"),
                sent_ms: record.ts("sent"),
                delivered_ms: record.ts("delivered"),
                opened_ms: record.ts("opened"),
                clicked_ms: record.ts("clicked"),
            };
            let subject = courier_subject(ws, &kinds::message_status(status));
            let publish = PublishMessage::build()
                .payload(event.encode_to_vec().into())
                .message_id(format!("{ws}:{id}:{status}"));
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| format!("lifecycle event publish failed: {e}"))?;
            acks.push(ack);
            statuses.push(status.to_string());
        }
        for ack in acks {
            ack.await
                .map_err(|e| format!("lifecycle event not acknowledged: {e}"))?;
        }
        store
            .mark_published(ws, id, &statuses)
            .await
            .map_err(redis_err)?;
        metrics::counter!("delivery_events_published_total").increment(statuses.len() as u64);
        Ok(())
    }
}

fn redis_err(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

pub type SharedWorker = Arc<Worker>;
