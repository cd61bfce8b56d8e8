//! One workspace's data plane: a pulled batch is mapped, cut into chunks, and each chunk sent
//! until it is settled: acked (2xx), split (413), dead-lettered (rejected or unmappable), or
//! kept for later (paused destination, shutdown). Held messages are kept alive while waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use rc_common::Shutdown;

use super::batch::{self, Item};
use super::circuit::{self, Circuit, Runtime};
use super::dataplane::{self, Answer};
use super::reconciler::Ctx;
use crate::mapping;
use crate::store::Integration;

fn now_rfc3339() -> String {
    mapping::rfc3339(time::OffsetDateTime::now_utc())
}

/// What became of one chunk.
enum Settled {
    Done,
    Split(Vec<Item>, Vec<Item>),
    Paused(String, Vec<Item>),
    Stopped(Vec<Item>),
}

pub(super) struct Destination {
    ctx: Arc<Ctx>,
    ws: String,
    url: String,
    write_key: String,
    version: u64,
    runtime: Arc<Runtime>,
    /// Consecutive transient failures.
    failures: u32,
    stop: Shutdown,
}

impl Destination {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        ws: &str,
        integ: &Integration,
        write_key: String,
        stop: Shutdown,
    ) -> Self {
        Self {
            runtime: ctx.runtime(ws),
            ctx,
            ws: ws.to_string(),
            url: format!("{}/v1/batch", integ.data_plane_url.trim_end_matches('/')),
            write_key,
            version: integ.version,
            failures: 0,
            stop,
        }
    }

    /// Publishes each message to the dead-letter stream, then acks it; one whose publish fails
    /// is nak'ed to come back (never acked while stored nowhere).
    async fn dead_letter(&self, items: Vec<Message>, reason: &str) {
        let n = items.len();
        for message in items {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            match rc_common::consumer::dead_letter_for(
                &self.ctx.js,
                crate::SERVICE,
                &message,
                delivered,
                reason,
            )
            .await
            {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(err) => {
                    tracing::error!(workspace = %self.ws, error = %err, "Dead-letter publish failed; message will be redelivered");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
        metrics::counter!("forwarder_events_dead_lettered_total", "workspace" => self.ws.clone())
            .increment(n as u64);
        self.ctx
            .store
            .record_error(&self.ws, n, reason, &now_rfc3339())
            .await;
        tracing::warn!(workspace = %self.ws, events = n, reason, "Events dead-lettered");
    }

    /// Delivers one pulled batch; `Err(reason)` when the destination got paused.
    pub(super) async fn deliver(&mut self, pulled: Vec<Message>) -> Result<(), String> {
        let now = time::OffsetDateTime::now_utc();
        let mut items = Vec::with_capacity(pulled.len());
        let mut poison = Vec::new();
        for message in pulled {
            match batch::event_json(message.subject.as_str(), &message.payload, now) {
                Ok(Some(json)) => items.push(Item { json, message }),
                // Not a kind this integration sends: nothing to do.
                Ok(None) => {
                    let _ = message.ack().await;
                }
                Err(reason) => poison.push((message, reason)),
            }
        }
        for (message, reason) in poison {
            self.dead_letter(vec![message], &reason).await;
        }
        let max_bytes = batch::max_body_bytes(self.ctx.settings.batch_max_bytes);
        let mut queue = batch::chunks(items, max_bytes, |i: &Item| i.json.len());
        while let Some(chunk) = queue.pop_front() {
            match self.send_until_settled(chunk, &queue).await {
                Settled::Done => {}
                Settled::Split(a, b) => {
                    queue.push_front(b);
                    queue.push_front(a);
                }
                Settled::Paused(reason, rest) => {
                    // Kept: nak'ed now so they are there again as soon as the fix lands.
                    for item in rest.into_iter().chain(queue.into_iter().flatten()) {
                        let _ = item.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return Err(reason);
                }
                Settled::Stopped(rest) => {
                    for item in rest.into_iter().chain(queue.into_iter().flatten()) {
                        let _ = item.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn set_circuit(&self, state: Circuit) {
        let old = self.runtime.set_circuit(state);
        metrics::gauge!("forwarder_circuit_state", "workspace" => self.ws.clone())
            .set(f64::from(state as u8));
        if old != state {
            tracing::info!(workspace = %self.ws, circuit = state.as_str(), "Circuit state changed");
        }
    }

    /// Sends one chunk, retrying transient failures for as long as it takes.
    async fn send_until_settled(
        &mut self,
        chunk: Vec<Item>,
        queued: &VecDeque<Vec<Item>>,
    ) -> Settled {
        loop {
            if self.stop.is_triggered() {
                return Settled::Stopped(chunk);
            }
            let started = Instant::now();
            let body = dataplane::batch_body(chunk.iter().map(|i| i.json.as_slice()));
            metrics::histogram!("forwarder_batch_bytes").record(body.len() as f64);
            let to = dataplane::Target {
                url: &self.url,
                write_key: &self.write_key,
                allow_private_networks: self.ctx.outbound.allow_private_networks,
            };
            let answer = dataplane::post_batch(&self.ctx.http, &to, &body).await;
            metrics::histogram!("forwarder_dataplane_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("forwarder_dataplane_requests_total", "workspace" => self.ws.clone(), "outcome" => answer.label()).increment(1);
            match answer {
                Answer::Ok => {
                    let n = chunk.len();
                    for item in chunk {
                        if let Err(err) = item.message.ack().await {
                            tracing::warn!(workspace = %self.ws, error = %err, "Ack failed; the event may be sent again (same messageId)");
                        }
                    }
                    self.failures = 0;
                    self.set_circuit(Circuit::Closed);
                    metrics::counter!("forwarder_events_delivered_total", "workspace" => self.ws.clone()).increment(n as u64);
                    metrics::histogram!("forwarder_batch_events").record(n as f64);
                    self.ctx
                        .store
                        .record_delivered(&self.ws, n, &now_rfc3339())
                        .await;
                    return Settled::Done;
                }
                Answer::TooLarge(body) => match batch::split(chunk) {
                    Ok((a, b)) => {
                        tracing::info!(workspace = %self.ws, "Data plane answered 413; splitting the batch");
                        return Settled::Split(a, b);
                    }
                    Err(single) => {
                        let reason = format!("data plane answered 413 for a single event: {body}");
                        self.dead_letter(single.into_iter().map(|i| i.message).collect(), &reason)
                            .await;
                        return Settled::Done;
                    }
                },
                Answer::Rejected(reason) => {
                    self.dead_letter(chunk.into_iter().map(|i| i.message).collect(), &reason)
                        .await;
                    return Settled::Done;
                }
                Answer::Refused(reason) => {
                    self.ctx
                        .store
                        .record_error(&self.ws, 0, &reason, &now_rfc3339())
                        .await;
                    if let Err(err) = self.ctx.store.pause(&self.ws, self.version, &reason).await {
                        tracing::error!(workspace = %self.ws, error = %err, "Could not store the pause; retrying later");
                        self.wait(Duration::from_secs(5), &chunk, queued).await;
                        continue;
                    }
                    metrics::counter!("forwarder_pauses_total", "workspace" => self.ws.clone())
                        .increment(1);
                    return Settled::Paused(reason, chunk);
                }
                Answer::Retry { error, after } => {
                    self.failures += 1;
                    self.ctx
                        .store
                        .record_error(&self.ws, 0, &error, &now_rfc3339())
                        .await;
                    let (delay, opens) =
                        circuit::retry_delay(&self.ctx.settings, self.failures, after);
                    if opens {
                        self.set_circuit(Circuit::Open);
                    }
                    tracing::warn!(workspace = %self.ws, error = %error, failures = self.failures, retry_in_ms = delay.as_millis() as u64, "Data plane delivery failed; retrying");
                    self.wait(delay, &chunk, queued).await;
                    if self.runtime.circuit() == Circuit::Open {
                        self.set_circuit(Circuit::HalfOpen);
                    }
                }
            }
        }
    }

    /// Sleeps `delay`, keeping every held message alive (`AckKind::Progress`), until done or
    /// stopped.
    async fn wait(&self, delay: Duration, chunk: &[Item], queued: &VecDeque<Vec<Item>>) {
        let tick = progress_tick(self.ctx.settings.ack_wait_ms);
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            for item in chunk.iter().chain(queued.iter().flatten()) {
                let _ = item.message.ack_with(AckKind::Progress).await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let next = (now + tick).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.stop.triggered() => return,
            }
        }
    }
}

/// How often held messages are kept alive: every third of the ack wait (at least 100 ms), so
/// two ticks may be lost before the server redelivers.
fn progress_tick(ack_wait_ms: u64) -> Duration {
    Duration::from_millis((ack_wait_ms / 3).max(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_are_touched_well_within_the_ack_wait() {
        assert_eq!(progress_tick(30_000), Duration::from_secs(10));
        assert_eq!(progress_tick(0), Duration::from_millis(100));
        for ack_wait in [300, 3_000, 30_000] {
            assert!(progress_tick(ack_wait) * 2 < Duration::from_millis(ack_wait));
        }
    }
}
