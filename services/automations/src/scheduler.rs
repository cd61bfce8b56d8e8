//! The durable timer: every replica polls the due index (`rc:automations:due`, score = epoch ms
//! when the run should next execute) and claims due runs atomically with a Lua script that moves
//! each claimed member's score to now + lease. A claimer that crashes simply lets the lease run
//! out, and the run becomes due again for any replica.
//!
//! Crash-loop guard: the claim script also counts claims per run (`{rc:automations:due}:claims`,
//! same cluster slot as the due index), and every execution that ends without the process dying
//! (finished, parked, or a transient error) clears the count. So the count is the number of
//! claimed executions in a row whose claimer died mid-run; past [`MAX_DEAD_CLAIMS`] the run is
//! failed as `quarantined: …` instead of executed again (a run that kills its executor would
//! otherwise take down every replica in turn).

use std::sync::Arc;
use std::time::Duration;

use rc_common::Shutdown;
use rc_common::redis::Lua;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::store::{CLAIMS_KEY, DUE_KEY, now_ms};

/// Claimed executions in a row that may die before the run is quarantined.
pub const MAX_DEAD_CLAIMS: i64 = 3;

/// KEYS: due index, claim counts. ARGV: now ms, lease ms, max. Returns member, count, …
static CLAIM: Lua = Lua::new(
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), m)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], m, 1)
end
return out
",
);

/// Claims up to `max` due runs: `(member, claims in a row without a clean finish)`.
pub async fn claim(engine: &Engine, max: usize) -> redis::RedisResult<Vec<(String, i64)>> {
    let mut conn = engine.redis.clone();
    CLAIM
        .script()
        .key(DUE_KEY)
        .key(CLAIMS_KEY)
        .arg(now_ms())
        .arg(engine.lease_ms)
        .arg(max)
        .invoke_async(&mut conn)
        .await
}

pub async fn run(engine: Engine, poll: Duration, concurrency: usize, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(concurrency));
    // While Redis is out: back off (doubling up to 5 s) and log the change, not every poll.
    let mut backoff = rc_common::backoff::Reconnect::new(rc_common::backoff::Backoff::new(
        poll,
        poll.max(Duration::from_secs(5)),
    ));
    let mut delay = poll;
    let mut failing_since: Option<std::time::Instant> = None;
    while !shutdown.is_triggered() {
        let free = permits.available_permits();
        if free > 0 {
            match claim(&engine, free).await {
                Ok(members) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            failing_ms = since.elapsed().as_millis() as u64,
                            "Polling due runs again"
                        );
                    }
                    backoff.reset();
                    delay = poll;
                    for (member, claims) in members {
                        let Some((ws, id)) = member.split_once('/') else {
                            continue;
                        };
                        let (ws, id) = (ws.to_string(), id.to_string());
                        let permit = permits.clone().acquire_owned().await.expect("open");
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            if claims > MAX_DEAD_CLAIMS {
                                engine.quarantine_logged(&ws, &id, claims - 1).await;
                            } else {
                                engine.execute_logged(&ws, &id).await;
                            }
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, "Could not poll due runs; backing off until Redis answers");
                    } else {
                        tracing::debug!(error = %e, "Could not poll due runs");
                    }
                    delay = backoff.next_delay();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => break,
        }
    }
}
