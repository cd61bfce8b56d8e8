//! The `delivery` consumer: one `MessageRequest` → a message record, routing, provider calls
//! under a lease, status transitions and lifecycle events. Idempotent on the message id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message, message::PublishMessage};
use prost::Message as _;
use rc_common::consumer::{Handler, Outcome};
use rc_common::subjects::{self, courier_subject, kinds};
use rc_proto::{MessageEvent, MessageRequest};

use crate::providers::Registry;
use crate::routing::{Prepared, Route, route};
use crate::send::{Outgoing, SendResult, Senders};
use crate::store::{Claim, Meta, ProviderEntry, StatusChange, Store, now_ms};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub lease: Duration,
    pub inline_attempts: u32,
    pub retry_base: Duration,
    pub max_inline_wait: Duration,
    pub max_deliver: i64,
}

pub struct Worker {
    pub store: Store,
    pub registry: Registry,
    pub senders: Senders,
    pub publisher: Publisher,
    pub config: WorkerConfig,
}

#[derive(Debug)]
enum Error {
    Retry(String),
    Poison(String),
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Retry(format!("redis: {e}"))
    }
}

impl Handler for Worker {
    async fn handle(&self, message: &Message) -> Outcome {
        match self.process(message).await {
            Ok(()) => Outcome::Done,
            Err(Error::Retry(r)) => Outcome::Retry(r),
            Err(Error::Poison(r)) => Outcome::Poison(r),
        }
    }
}

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
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
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
        if self.store.create(ws, id, &meta).await? {
            metrics::counter!("delivery_messages_total").increment(1);
        }
        // Publish what an earlier attempt may have recorded but not published.
        self.publisher
            .publish_pending(&self.store, ws, id)
            .await
            .map_err(Error::Retry)?;

        // Claim the message: only the lease holder calls providers.
        loop {
            match self
                .store
                .claim(ws, id, self.config.lease.as_millis() as u64)
                .await?
            {
                Claim::Claimed => break,
                Claim::Done => return Ok(()),
                Claim::Missing => return Err(Error::Retry("message record vanished".into())),
                Claim::Busy => {
                    return Err(Error::Retry("another worker holds the send lease".into()));
                }
                Claim::Wait(ms) if Duration::from_millis(ms) <= self.config.max_inline_wait => {
                    let _ = message.ack_with(AckKind::Progress).await;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Claim::Wait(ms) => {
                    return Err(Error::Retry(format!("provider asked to wait {ms} ms")));
                }
            }
        }

        let providers = self
            .registry
            .load(ws)
            .await
            .map_err(|e| Error::Retry(e.to_string()))?;
        let done = |status: &'static str, reason: &str, error: String| StatusChange {
            status,
            reason: reason.to_string(),
            error,
        };
        match route(&prepared, &providers) {
            Route::Unmapped(error) => {
                self.finish(ws, id, None, vec![done("UNMAPPED", "", error)])
                    .await?;
            }
            Route::Unroutable { reason, error } => {
                self.finish(ws, id, None, vec![done("UNROUTABLE", reason, error)])
                    .await?;
            }
            Route::Targets(targets) => {
                let record = self
                    .store
                    .load(ws, id)
                    .await?
                    .ok_or_else(|| Error::Retry("message record vanished".into()))?;
                let mut entries = record.providers.clone();
                let mut pending_retry: Option<(String, Option<Duration>)> = None;
                for target in &targets {
                    let pos = entries
                        .iter()
                        .position(|e| {
                            e.channel == target.channel && e.provider == target.provider.name
                        })
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
                    if matches!(
                        entries[pos].status.as_str(),
                        "SENT" | "DELIVERED" | "UNDELIVERABLE"
                    ) {
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
                    let result = self
                        .send_with_retries(message, &target.provider, &out, &mut entries[pos])
                        .await;
                    let entry = &mut entries[pos];
                    let now = now_ms();
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
                            metrics::counter!("delivery_sends_total", "provider" => target.provider.kind.as_str(), "result" => "sent").increment(1);
                        }
                        SendResult::Failed { error } => {
                            entry.status = "UNDELIVERABLE".into();
                            entry.error = Some(error);
                            metrics::counter!("delivery_sends_total", "provider" => target.provider.kind.as_str(), "result" => "failed").increment(1);
                        }
                        SendResult::Retry { error, retry_after } => {
                            entry.error = Some(error.clone());
                            metrics::counter!("delivery_sends_total", "provider" => target.provider.kind.as_str(), "result" => "retry").increment(1);
                            pending_retry = Some((error, retry_after));
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
                match pending_retry {
                    Some((error, retry_after)) if delivered < self.config.max_deliver => {
                        // Give the message back: the next delivery retries what did not go out.
                        let not_before =
                            now_ms() + retry_after.map(|d| d.as_millis() as i64).unwrap_or(0);
                        self.store
                            .transition(
                                ws,
                                id,
                                &[
                                    ("providers", providers_json),
                                    ("phase", "enqueued".into()),
                                    ("not_before", not_before.to_string()),
                                ],
                                &statuses,
                            )
                            .await?;
                        self.publisher
                            .publish_pending(&self.store, ws, id)
                            .await
                            .map_err(Error::Retry)?;
                        return Err(Error::Retry(error));
                    }
                    Some((error, _)) if !sent => {
                        statuses.push(done(
                            "UNDELIVERABLE",
                            "PROVIDER_ERROR",
                            format!("gave up after {delivered} deliveries: {error}"),
                        ));
                    }
                    _ if !sent => {
                        let error = entries
                            .iter()
                            .filter_map(|e| e.error.clone())
                            .collect::<Vec<_>>()
                            .join("; ");
                        statuses.push(done("UNDELIVERABLE", "PROVIDER_ERROR", error));
                    }
                    _ => {}
                }
                self.finish(ws, id, Some(providers_json), statuses).await?;
            }
        }
        Ok(())
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
            format!(
                "{{ws:{ws}:tenant:{}}}:members",
                rc_common::redis::escape_key_id(&prepared.tenant_id)
            ),
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
                )
                .await;
        }
        let base_profile: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&req.profile).unwrap_or_default();
        let mut acks = Vec::with_capacity(members.len());
        for uid in &members {
            let stored: Option<String> = redis::AsyncCommands::get(
                &mut conn,
                format!(
                    "{{ws:{ws}:user:{}}}:profile",
                    rc_common::redis::escape_key_id(uid)
                ),
            )
            .await?;
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
                .map_err(|e| Error::Retry(format!("fan-out publish: {e}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| Error::Retry(format!("fan-out publish ack: {e}")))?;
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
    ) -> Result<(), Error> {
        let mut fields = vec![("phase", "done".to_string())];
        if let Some(p) = providers_json {
            fields.push(("providers", p));
        }
        self.store.transition(ws, id, &fields, &statuses).await?;
        self.publisher
            .publish_pending(&self.store, ws, id)
            .await
            .map_err(Error::Retry)?;
        Ok(())
    }

    /// Up to `inline_attempts` calls, waiting `max(Retry-After, backoff)` between them when that
    /// wait is short (≤ `max_inline_wait`); otherwise the retry goes back to JetStream.
    async fn send_with_retries(
        &self,
        message: &Message,
        provider: &crate::providers::Provider,
        out: &Outgoing,
        entry: &mut ProviderEntry,
    ) -> SendResult {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            entry.attempts += 1;
            let result = self.senders.send(provider, out).await;
            let SendResult::Retry { retry_after, .. } = &result else {
                return result;
            };
            let backoff = self
                .config
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(10));
            let wait = retry_after.unwrap_or_default().max(backoff);
            if attempt >= self.config.inline_attempts || wait > self.config.max_inline_wait {
                return result;
            }
            let _ = message.ack_with(AckKind::Progress).await;
            tokio::time::sleep(wait).await;
        }
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
        let redis_err = |e: redis::RedisError| format!("redis: {e}");
        let (history, published, record) = store.snapshot(ws, id).await.map_err(redis_err)?;
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
                status_at: Some(prost_types::Timestamp {
                    seconds: at.div_euclid(1000),
                    nanos: (at.rem_euclid(1000) * 1_000_000) as i32,
                }),
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

pub type SharedWorker = Arc<Worker>;
