//! A workspace task's loop: wait (long poll) for the first message, top up for at most
//! `linger`, hand the batch to the destination; re-open the consumer when it goes away.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use rc_common::Shutdown;
use rc_common::backoff::Reconnect;
use rc_common::subjects::COURIER_STREAM;

use super::destination::Destination;
use super::reconciler::{Ctx, consumer_name};
use crate::store::Integration;

/// How long a pull waits for its first message before asking again.
const LONG_POLL: Duration = Duration::from_secs(5);

/// Events per request: the setting, kept within 1..=10,000.
fn max_events(setting: usize) -> usize {
    setting.clamp(1, 10_000)
}

pub(super) async fn run_worker(
    ctx: Arc<Ctx>,
    ws: String,
    integ: Integration,
    write_key: String,
    stop: Shutdown,
) {
    let mut dest = Destination::new(ctx.clone(), &ws, &integ, write_key, stop.clone());
    let max_events = max_events(ctx.settings.batch_max_events);
    let linger = Duration::from_millis(ctx.settings.linger_ms);
    let mut reopen = Reconnect::default();
    'supervise: while !stop.is_triggered() {
        let consumer: Result<jetstream::consumer::PullConsumer, crate::BoxError> = async {
            let stream = ctx.js.get_stream(COURIER_STREAM).await?;
            stream.get_consumer(&consumer_name(&ws)).await
        }
        .await;
        let consumer = match consumer {
            Ok(c) => {
                reopen.reset();
                c
            }
            Err(err) => {
                tracing::warn!(workspace = %ws, error = %err, "Consumer unavailable; retrying");
                if let Err(err) = ctx.ensure_consumer(&ws, &integ).await {
                    tracing::debug!(workspace = %ws, error = %err, "Consumer re-creation failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(reopen.next_delay()) => {}
                    _ = stop.triggered() => break 'supervise,
                }
                continue;
            }
        };
        loop {
            let mut batch: Vec<Message> = Vec::new();
            let first = tokio::select! {
                r = pull(&consumer, 1, LONG_POLL) => r,
                _ = stop.triggered() => break 'supervise,
            };
            match first {
                Ok(msgs) => batch.extend(msgs),
                Err(err) => {
                    tracing::warn!(workspace = %ws, error = %err, "Pull failed; re-creating the consumer handle");
                    metrics::counter!("forwarder_consumer_restarts_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(reopen.next_delay()) => {}
                        _ = stop.triggered() => break 'supervise,
                    }
                    continue 'supervise;
                }
            }
            if batch.is_empty() {
                continue;
            }
            if max_events > 1 {
                match pull(&consumer, max_events - 1, linger).await {
                    Ok(more) => batch.extend(more),
                    Err(err) => {
                        tracing::debug!(workspace = %ws, error = %err, "Top-up pull failed")
                    }
                }
            }
            if let Err(paused) = dest.deliver(batch).await {
                tracing::warn!(workspace = %ws, reason = %paused, "Destination paused");
                break 'supervise;
            }
        }
    }
}

/// Up to `max` messages within `expires`; an error only when nothing came.
async fn pull(
    consumer: &jetstream::consumer::PullConsumer,
    max: usize,
    expires: Duration,
) -> Result<Vec<Message>, crate::BoxError> {
    let mut out = Vec::with_capacity(max);
    let mut batch = consumer
        .batch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await?;
    while let Some(next) = batch.next().await {
        match next {
            Ok(m) => out.push(m),
            Err(err) => {
                if out.is_empty() {
                    return Err(err);
                }
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_per_request_are_bounded() {
        assert_eq!(max_events(0), 1);
        assert_eq!(max_events(500), 500);
        assert_eq!(max_events(usize::MAX), 10_000);
    }
}
