//! The retry timer: every replica polls the workspaces with retries due
//! (`store::due_workspaces_key`) and, for each workspace under its in-flight cap, claims as many
//! due messages as it has free slots (a Lua script moves each claimed id to now + lease, so a
//! crashed claimer's messages come back). A workspace at its cap is looked at again one poll
//! later; its due messages never take another workspace's slots or the consumer's handlers.

use std::sync::Arc;
use std::time::Duration;

use rc_common::Shutdown;
use tokio::sync::{Notify, Semaphore};

use crate::store::now_ms;
use crate::worker::Worker;

/// Workspaces looked at per poll.
const WORKSPACES_PER_POLL: usize = 256;

pub struct Scheduler {
    pub worker: Arc<Worker>,
    pub poll: Duration,
    /// Due messages handled at once in this process (all workspaces).
    pub concurrency: usize,
    pub lease: Duration,
    pub drain_timeout: Duration,
}

impl Scheduler {
    pub async fn run(self, shutdown: Shutdown) {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        // A finished retry frees a slot: poll again at once instead of after `poll`.
        let wake = Arc::new(Notify::new());
        // Backs off while Redis is down (the retries wait in Redis; nothing is lost).
        let mut pause = rc_common::backoff::Reconnect::new(rc_common::backoff::Backoff::new(
            self.poll,
            Duration::from_secs(5),
        ));
        while !shutdown.is_triggered() {
            let wait = match self.poll_once(&permits, &wake).await {
                Ok(()) => {
                    pause.reset();
                    self.poll
                }
                Err(e) => {
                    let wait = pause.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "Could not poll due retries");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = shutdown.triggered() => break,
            }
        }
        let all = u32::try_from(self.concurrency.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.drain_timeout, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("Retry drain timed out; unfinished retries come back after their lease");
        }
    }

    async fn poll_once(
        &self,
        permits: &Arc<Semaphore>,
        wake: &Arc<Notify>,
    ) -> redis::RedisResult<()> {
        if permits.available_permits() == 0 {
            return Ok(());
        }
        let store = &self.worker.store;
        let now = now_ms();
        let lease_ms = self.lease.as_millis() as u64;
        for ws in store.due_workspaces(now, WORKSPACES_PER_POLL).await? {
            let free = self
                .worker
                .limiter
                .free(&ws)
                .min(permits.available_permits());
            if free == 0 {
                if permits.available_permits() == 0 {
                    break;
                }
                store
                    .defer_workspace(&ws, now + self.poll.as_millis() as i64)
                    .await?;
                continue;
            }
            for id in store.claim_due(&ws, free, lease_ms, now).await? {
                let slot = self.worker.limiter.try_acquire(&ws);
                let permit = permits.clone().try_acquire_owned().ok();
                let (Some(slot), Some(permit)) = (slot, permit) else {
                    // Taken meanwhile by the consumer: due again next poll, not after the lease.
                    store
                        .schedule(&ws, &id, None, now + self.poll.as_millis() as i64)
                        .await?;
                    continue;
                };
                let (worker, wake, ws) = (self.worker.clone(), wake.clone(), ws.clone());
                tokio::spawn(async move {
                    if let Err(e) = worker.run_due(&ws, &id).await {
                        // Its due entry stays leased: it is tried again when the lease ends.
                        tracing::warn!(workspace = %ws, message_id = %id, error = %e, "Retry failed");
                    }
                    drop(slot);
                    drop(permit);
                    wake.notify_one();
                });
            }
        }
        Ok(())
    }
}
