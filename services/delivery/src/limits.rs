//! What keeps one workspace's trouble its own, in this process: a cap on each workspace's
//! provider calls in flight, and a circuit per (workspace, provider) that stops calling a
//! provider that keeps failing. Both are per replica (no coordination), and both only decide
//! *when* a message is tried: a message that may not be tried now is scheduled in Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-workspace count of provider calls in flight. Entries exist only while a workspace has
/// calls in flight, so the map is bounded by the process's concurrency.
#[derive(Clone)]
pub struct WorkspaceLimiter {
    cap: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One call slot of a workspace; released on drop.
pub struct Slot {
    ws: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().expect("not poisoned");
        if let Some(n) = map.get_mut(&self.ws) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ws);
            }
        }
    }
}

impl WorkspaceLimiter {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            in_flight: Arc::default(),
        }
    }

    /// A slot when the workspace is under its cap; never waits.
    pub fn try_acquire(&self, ws: &str) -> Option<Slot> {
        let mut map = self.in_flight.lock().expect("not poisoned");
        let n = map.get(ws).copied().unwrap_or(0);
        if n >= self.cap {
            return None;
        }
        map.insert(ws.to_string(), n + 1);
        Some(Slot {
            ws: ws.to_string(),
            in_flight: self.in_flight.clone(),
        })
    }

    /// Slots the workspace could still take.
    pub fn free(&self, ws: &str) -> usize {
        let map = self.in_flight.lock().expect("not poisoned");
        self.cap - map.get(ws).copied().unwrap_or(0)
    }
}

/// Whether a provider may be called now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Call,
    /// Open circuit: do not call it; try again after this long.
    Wait(Duration),
}

#[derive(Debug)]
struct Circuit {
    /// Retryable failures in a row.
    failures: u32,
    /// Open until then (set once `failures` reaches the threshold).
    open_until: Option<Instant>,
    /// The last cooldown, doubled on each failed probe.
    cooldown: Duration,
    /// A half-open probe is in flight until then (one call at a time after a cooldown).
    probe_until: Option<Instant>,
}

/// Circuits per (workspace, provider name): after `threshold` retryable failures in a row the
/// provider is not called for a cooldown (`base`, doubling per failed probe up to `max`); then
/// one call probes it; a success closes the circuit. Only failing providers have an entry.
#[derive(Clone)]
pub struct Circuits {
    threshold: u32,
    base: Duration,
    max: Duration,
    /// How long a probe may take before another caller may probe (the provider call timeout).
    probe_timeout: Duration,
    map: Arc<Mutex<HashMap<String, Circuit>>>,
}

fn circuit_key(ws: &str, provider: &str) -> String {
    // A provider name has no '/', so the pair is unambiguous.
    format!("{ws}/{provider}")
}

impl Circuits {
    pub fn new(threshold: u32, base: Duration, max: Duration, probe_timeout: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base,
            max: max.max(base),
            probe_timeout,
            map: Arc::default(),
        }
    }

    pub fn gate(&self, ws: &str, provider: &str) -> Gate {
        let mut map = self.map.lock().expect("not poisoned");
        if map.is_empty() {
            return Gate::Call;
        }
        let Some(c) = map.get_mut(&circuit_key(ws, provider)) else {
            return Gate::Call;
        };
        let now = Instant::now();
        match c.open_until {
            None => Gate::Call,
            Some(until) if until > now => Gate::Wait(until - now),
            Some(_) => match c.probe_until {
                Some(p) if p > now => Gate::Wait(p - now),
                _ => {
                    c.probe_until = Some(now + self.probe_timeout);
                    Gate::Call
                }
            },
        }
    }

    /// Records a call's result: `ok` for any answer that shows the provider works (a 2xx, or a
    /// 4xx refusal), not ok for retryable failures (timeouts, connection errors, 5xx, 408, 429).
    pub fn record(&self, ws: &str, provider: &str, ok: bool) {
        let mut map = self.map.lock().expect("not poisoned");
        if ok {
            if !map.is_empty() {
                map.remove(&circuit_key(ws, provider));
            }
            return;
        }
        let c = map
            .entry(circuit_key(ws, provider))
            .or_insert_with(|| Circuit {
                failures: 0,
                open_until: None,
                cooldown: Duration::ZERO,
                probe_until: None,
            });
        c.failures = c.failures.saturating_add(1);
        if c.failures < self.threshold {
            return;
        }
        let now = Instant::now();
        // A failed probe (or a failure while open) doubles the cooldown; the first opening
        // starts at `base`.
        c.cooldown = if c.open_until.is_some() {
            (c.cooldown * 2).clamp(self.base, self.max)
        } else {
            self.base
        };
        if c.open_until.is_none() {
            tracing::warn!(
                workspace = ws,
                provider,
                failures = c.failures,
                "Provider keeps failing; circuit open"
            );
            metrics::counter!("delivery_circuit_opened_total").increment(1);
        }
        c.open_until = Some(now + c.cooldown);
        c.probe_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_workspace_and_slots_return() {
        let l = WorkspaceLimiter::new(2);
        let a1 = l.try_acquire("a").unwrap();
        let _a2 = l.try_acquire("a").unwrap();
        assert!(l.try_acquire("a").is_none());
        assert!(l.try_acquire("b").is_some(), "b has its own slots");
        assert_eq!(l.free("a"), 0);
        drop(a1);
        assert_eq!(l.free("a"), 1);
        assert!(l.try_acquire("a").is_some());
    }

    #[test]
    fn a_failing_provider_opens_then_probes_once_then_closes() {
        let c = Circuits::new(
            3,
            Duration::from_millis(40),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        for _ in 0..2 {
            c.record("a", "hook", false);
            assert_eq!(c.gate("a", "hook"), Gate::Call);
        }
        c.record("a", "hook", false);
        assert!(matches!(c.gate("a", "hook"), Gate::Wait(_)));
        assert_eq!(
            c.gate("b", "hook"),
            Gate::Call,
            "other workspaces unaffected"
        );
        assert_eq!(
            c.gate("a", "other"),
            Gate::Call,
            "other providers unaffected"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.gate("a", "hook"), Gate::Call, "one probe");
        assert!(matches!(c.gate("a", "hook"), Gate::Wait(_)), "only one");
        // The probe fails: open again, for longer.
        c.record("a", "hook", false);
        let Gate::Wait(w) = c.gate("a", "hook") else {
            panic!("open")
        };
        assert!(w > Duration::from_millis(40), "{w:?}");
        c.record("a", "hook", true);
        assert_eq!(c.gate("a", "hook"), Gate::Call);
        assert!(
            c.map.lock().unwrap().is_empty(),
            "closed circuits hold nothing"
        );
    }
}
