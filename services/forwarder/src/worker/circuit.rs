//! Retry and circuit policy of one destination: exponential backoff with jitter for the first
//! failures, then an open circuit that waits its cooldown before a half-open probe.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::ForwarderSettings;

/// A destination's circuit (its discriminant is the `forwarder_circuit_state` gauge value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Circuit {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Circuit::Open,
            2 => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }
}

/// In-process state of one workspace's destination, shown by the status endpoint.
#[derive(Default)]
pub struct Runtime {
    circuit: AtomicU8,
}

impl Runtime {
    pub fn circuit(&self) -> Circuit {
        Circuit::from_u8(self.circuit.load(Ordering::Relaxed))
    }

    /// Sets the state; the previous one.
    pub fn set_circuit(&self, state: Circuit) -> Circuit {
        Circuit::from_u8(self.circuit.swap(state as u8, Ordering::Relaxed))
    }
}

/// Longest `Retry-After` honoured (a hostile or broken data plane cannot park a workspace).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long to wait after the `failures`-th consecutive transient failure, and whether that
/// failure opens the circuit. `Retry-After` is a minimum, capped at [`MAX_RETRY_AFTER`].
pub fn retry_delay(
    s: &ForwarderSettings,
    failures: u32,
    retry_after: Option<Duration>,
) -> (Duration, bool) {
    let opens = failures >= s.circuit_failures.max(1);
    let delay = if opens {
        Duration::from_millis(s.circuit_cooldown_ms)
    } else {
        rc_common::backoff::Backoff::new(
            Duration::from_millis(s.base_backoff_ms),
            Duration::from_millis(s.max_backoff_ms),
        )
        .jittered(failures)
    };
    let floor = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
    (delay.max(floor), opens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ForwarderSettings {
        ForwarderSettings {
            base_backoff_ms: 100,
            max_backoff_ms: 1_000,
            circuit_failures: 5,
            circuit_cooldown_ms: 30_000,
            ..Default::default()
        }
    }

    fn within(d: Duration, ms: u64) -> bool {
        let ms = ms as f64;
        (ms * 0.8..=ms * 1.2).contains(&(d.as_millis() as f64))
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_then_the_circuit_opens() {
        let s = settings();
        for (failures, ms) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
            let (d, opens) = retry_delay(&s, failures, None);
            assert!(within(d, ms), "{failures}: {d:?}");
            assert!(!opens);
        }
        let (d, opens) = retry_delay(&s, 5, None);
        assert!(opens);
        assert_eq!(d, Duration::from_secs(30));
        // Past the cap (circuit off): never above max_backoff (+ jitter), no overflow.
        let s = ForwarderSettings {
            circuit_failures: u32::MAX,
            ..settings()
        };
        assert!(within(retry_delay(&s, 40, None).0, 1_000));
    }

    #[test]
    fn retry_after_is_a_capped_minimum() {
        let s = settings();
        let (d, _) = retry_delay(&s, 1, Some(Duration::from_secs(9)));
        assert_eq!(d, Duration::from_secs(9));
        let (d, _) = retry_delay(&s, 1, Some(Duration::from_secs(86_400)));
        assert_eq!(d, MAX_RETRY_AFTER);
    }

    #[test]
    fn runtime_keeps_the_typed_state() {
        let r = Runtime::default();
        assert_eq!(r.circuit(), Circuit::Closed);
        assert_eq!(r.set_circuit(Circuit::Open), Circuit::Closed);
        assert_eq!(r.circuit(), Circuit::Open);
        r.set_circuit(Circuit::HalfOpen);
        assert_eq!(r.circuit().as_str(), "half_open");
    }
}
