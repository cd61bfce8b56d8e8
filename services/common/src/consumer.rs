//! Durable JetStream pull consumers, written once for every consumer service.
//!
//! - bounded concurrency (a semaphore permit is taken *before* a message is pulled);
//! - a handler's [`Outcome`] decides: ack, nak with backoff, or dead-letter then ack;
//! - the last allowed delivery of a failing message is dead-lettered too (`max_deliver` alone
//!   only emits an advisory and leaves the message behind);
//! - the message stream is supervised: when it ends or fails (consumer deleted, NATS restarted,
//!   no responders) it is re-created with backoff, so a consumer never stalls silently;
//! - on shutdown it stops pulling and waits (bounded) for in-flight handlers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::Semaphore;

use crate::Shutdown;
use crate::subjects::{self, dlq_headers};

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Outcome {
    /// The effect is durable: ack.
    Done,
    /// This message cannot be handled yet (a workspace's provider or data plane is down):
    /// redeliver it later with backoff. Never dead-lettered for it: an outage is not bad data.
    Retry(String),
    /// A dependency every message needs (Redis, NATS) is unavailable: redeliver later and
    /// pause pulling until it is back. Never dead-lettered for it.
    Unavailable(String),
    /// Can never succeed (undecodable, invalid): dead-letter with this reason, then ack.
    Poison(String),
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Message) -> impl Future<Output = Outcome> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Service name: metrics label and the `<service>` of `dlq.<service>.<ws>`.
    pub service: &'static str,
    pub stream: &'static str,
    /// Durable consumer name, shared by every replica of the service.
    pub durable: String,
    pub filter_subjects: Vec<String>,
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: i64,
    /// Must exceed the slowest handler.
    pub ack_wait: Duration,
    /// Unacked messages the server lets this consumer have out (across replicas).
    pub max_ack_pending: i64,
    /// First nak delay; doubles per delivery (with jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on waiting for in-flight handlers at shutdown.
    pub drain_timeout: Duration,
}

impl ConsumerSpec {
    pub fn new(service: &'static str, stream: &'static str, filter: impl Into<String>) -> Self {
        Self {
            service,
            stream,
            durable: service.to_string(),
            filter_subjects: vec![filter.into()],
            concurrency: 64,
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4_096,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: self.filter_subjects.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    fn backoff(&self, delivered: i64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        let base = self
            .base_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff);
        // ±20 % jitter so redeliveries of a burst do not arrive together.
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

/// Runs the consumer until `shutdown` triggers. Never returns early on NATS trouble.
pub async fn run<H: Handler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let spec = Arc::new(spec);
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    let mut retry_delay = Duration::from_millis(100);
    'supervise: while !shutdown.is_triggered() {
        let mut messages = match open(&js, &spec).await {
            Ok(m) => {
                retry_delay = Duration::from_millis(100);
                m
            }
            Err(err) => {
                tracing::warn!(service = spec.service, error = %err, retry_in_ms = retry_delay.as_millis() as u64, "Consumer could not start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay) => {}
                    _ = shutdown.triggered() => break 'supervise,
                }
                retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(service = spec.service, durable = %spec.durable, "Consumer started");
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.triggered() => break 'supervise,
            };
            let next = tokio::select! {
                n = messages.next() => n,
                _ = shutdown.triggered() => break 'supervise,
            };
            match next {
                Some(Ok(message)) => {
                    let (js, spec, handler) = (js.clone(), spec.clone(), handler.clone());
                    tokio::spawn(async move {
                        process(&js, &spec, handler.as_ref(), message).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) if err.kind() == MessagesErrorKind::MissingHeartbeat => {
                    // The stream carries on; the client re-issues pulls.
                    tracing::debug!(service = spec.service, "Missed consumer heartbeat");
                }
                Some(Err(err)) => {
                    tracing::warn!(service = spec.service, error = %err, "Consumer stream failed; re-creating");
                    metrics::counter!("consumer_restarts_total", "service" => spec.service)
                        .increment(1);
                    break;
                }
                None => {
                    tracing::warn!(service = spec.service, "Consumer stream ended; re-creating");
                    metrics::counter!("consumer_restarts_total", "service" => spec.service)
                        .increment(1);
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_delay) => {}
            _ = shutdown.triggered() => break 'supervise,
        }
    }
    // Drain: every permit back means every handler finished (and acked or nak'ed).
    let all = u32::try_from(spec.concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(spec.drain_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            service = spec.service,
            "Consumer drain timed out; unfinished messages will be redelivered"
        );
    }
    tracing::info!(service = spec.service, "Consumer stopped");
}

async fn open(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<pull::Stream, Box<dyn std::error::Error + Send + Sync>> {
    let stream = js.get_stream(spec.stream).await?;
    // Create-or-update: a changed filter or limit takes effect on deploy.
    let consumer: jetstream::consumer::PullConsumer =
        stream.create_consumer(spec.consumer_config()).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(spec.concurrency.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    Ok(messages)
}

async fn process<H: Handler>(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &H,
    message: Message,
) {
    let started = Instant::now();
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let outcome = handler.handle(&message).await;
    metrics::histogram!("consumer_handle_duration_seconds", "service" => spec.service)
        .record(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Outcome::Done => "done",
        Outcome::Retry(_) => "retry",
        Outcome::Unavailable(_) => "unavailable",
        Outcome::Poison(_) => "poison",
    };
    metrics::counter!("consumer_messages_total", "service" => spec.service, "outcome" => label)
        .increment(1);
    let result = match outcome {
        Outcome::Done => message.ack().await,
        Outcome::Retry(reason) | Outcome::Unavailable(reason) if delivered >= spec.max_deliver => {
            let reason = format!("gave up after {delivered} deliveries: {reason}");
            dead_letter_then_ack(js, spec, &message, delivered, &reason).await
        }
        Outcome::Retry(reason) | Outcome::Unavailable(reason) => {
            let delay = spec.backoff(delivered);
            tracing::warn!(service = spec.service, subject = %message.subject, delivered, retry_in_ms = delay.as_millis() as u64, reason = %reason, "Message failed; will be redelivered");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Poison(reason) => {
            dead_letter_then_ack(js, spec, &message, delivered, &reason).await
        }
    };
    if let Err(err) = result {
        // The server redelivers after ack_wait; handlers are idempotent.
        tracing::warn!(service = spec.service, error = %err, "Ack failed");
    }
}

async fn dead_letter_then_ack(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    message: &Message,
    delivered: i64,
    reason: &str,
) -> Result<(), async_nats::Error> {
    match dead_letter(js, spec, message, delivered, reason).await {
        Ok(()) => {
            tracing::warn!(service = spec.service, subject = %message.subject, reason, "Message dead-lettered");
            metrics::counter!("consumer_dead_letters_total", "service" => spec.service)
                .increment(1);
            message.ack().await
        }
        Err(err) => {
            // Never ack what is not stored anywhere: let it come back.
            tracing::error!(service = spec.service, error = %err, "Dead-letter publish failed; message will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(spec.backoff(delivered))))
                .await
        }
    }
}

/// Publishes the original payload to `dlq.<service>.<workspace>` with the reason in headers.
pub async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    message: &Message,
    delivered: i64,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let workspace = subjects::workspace_of(&message.subject).unwrap_or("unknown");
    let mut headers = HeaderMap::new();
    headers.insert(dlq_headers::ORIGINAL_SUBJECT, message.subject.as_str());
    if let Ok(info) = message.info() {
        headers.insert(
            dlq_headers::ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
    }
    headers.insert(dlq_headers::DELIVERY_COUNT, delivered.to_string().as_str());
    // Header values cannot hold line breaks.
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    headers.insert(dlq_headers::REASON, one_line.as_str());
    headers.insert(dlq_headers::SERVICE, spec.service);
    js.publish_with_headers(
        subjects::dlq_subject(spec.service, workspace),
        headers,
        message.payload.clone(),
    )
    .await?
    .await?;
    Ok(())
}
