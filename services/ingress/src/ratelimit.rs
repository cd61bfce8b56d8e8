//! Per-workspace rate limit: a token bucket per workspace, in this replica's memory (N replicas
//! allow N× the rate). A request costs its event count, taken whole or not at all, so a batch is
//! never half-published; the burst is at least `max_batch_events`, so a legal batch always fits
//! an idle bucket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Workspaces whose buckets are kept at once. A bucket left alone long enough to refill is
/// dropped (a full bucket and no bucket are the same), so only workspaces active within the
/// last refill time count; past this bound the least recently used is dropped early, which
/// can only ever grant more, never refuse wrongly.
const MAX_WORKSPACES: u64 = 100_000;

pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `None` when `per_sec` is 0 (disabled). The burst is raised to `min_burst` when lower.
    pub fn new(per_sec: u32, burst: u32, min_burst: usize) -> Option<Self> {
        if per_sec == 0 {
            return None;
        }
        let per_sec = f64::from(per_sec);
        let burst = f64::from(burst).max(min_burst as f64).max(1.0);
        let refill = Duration::from_secs_f64(burst / per_sec);
        Some(Self {
            per_sec,
            burst,
            // moka (already the auth cache's) gives the bounded, idle-expiring map; the state
            // per entry is two words behind a lock held for a few instructions.
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_WORKSPACES)
                .time_to_idle(refill)
                .build(),
        })
    }

    /// Takes `cost` tokens from the workspace's bucket, or none: `Err(seconds)` until enough
    /// have refilled (at least 1).
    pub fn take(&self, workspace: &str, cost: usize) -> Result<(), u64> {
        self.take_at(workspace, cost, Instant::now())
    }

    fn take_at(&self, workspace: &str, cost: usize, now: Instant) -> Result<(), u64> {
        let bucket = self.buckets.get_with_by_ref(workspace, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: now,
            }))
        });
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        let cost = cost as f64;
        if cost <= b.tokens {
            b.tokens -= cost;
            return Ok(());
        }
        // A cost above the burst never fits: the batch cap keeps that from happening.
        let missing = cost.min(self.burst) - b.tokens;
        Err(((missing / self.per_sec).ceil() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_disables_and_burst_fits_a_batch() {
        assert!(RateLimit::new(0, 10, 5).is_none());
        let limit = RateLimit::new(10, 1, 5_000).unwrap();
        assert_eq!(
            limit.take("a", 5_000),
            Ok(()),
            "an idle bucket holds a whole batch"
        );
    }

    #[test]
    fn over_the_rate_waits_for_refill_and_takes_nothing() {
        let limit = RateLimit::new(100, 200, 1).unwrap();
        let t0 = Instant::now();
        assert_eq!(limit.take_at("a", 150, t0), Ok(()));
        // 50 left: 120 does not fit, and taking nothing leaves 50 for a smaller request.
        assert_eq!(limit.take_at("a", 120, t0), Err(1));
        assert_eq!(limit.take_at("a", 50, t0), Ok(()));
        assert_eq!(limit.take_at("a", 200, t0), Err(2), "200 tokens at 100/s");
        // Another workspace has its own bucket.
        assert_eq!(limit.take_at("b", 200, t0), Ok(()));
        // Refilled after a second: 100 tokens.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limit.take_at("a", 100, t1), Ok(()));
        assert_eq!(limit.take_at("a", 1, t1), Err(1));
    }
}
