//! Retry timing shared by every loop that waits after a failure: exponential backoff with
//! jitter, and the `Retry-After` a remote endpoint sends (seconds or HTTP-date).

use std::time::{Duration, SystemTime};

use rand::Rng;

/// `base × 2^(attempt−1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait after the `attempt`-th failure (1-based; 0 counts as 1), no jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << exp).min(self.max)
    }

    /// [`Self::delay`] with ±20 % jitter, so the retries of a burst do not arrive together.
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt)
            .mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// Up to 25 % later, never earlier (a Retry-After is a minimum), so a burst's retries spread.
pub fn later(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(1.0..1.25))
}

/// A reconnect loop's wait: 100 ms doubling to 5 s, back to the start after a success.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    attempt: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
    }
}

impl Reconnect {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            attempt: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.backoff.delay(self.attempt)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The longest `Retry-After` honoured: a remote asking for more is capped (a retry loop must
/// not sleep for a year on a hostile header).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`; a date
/// in the past is zero, anything unparseable is `None`, and the result is at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The `Retry-After` of an HTTP answer, if it has a valid one.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        for attempt in 1..10 {
            let j = b.jittered(attempt);
            assert!(j >= b.delay(attempt).mul_f64(0.8) && j <= b.delay(attempt).mul_f64(1.2));
        }
        let l = later(Duration::from_secs(4));
        assert!(l >= Duration::from_secs(4) && l <= Duration::from_secs(5));
    }

    #[test]
    fn reconnect_resets_after_success() {
        let mut r = Reconnect::default();
        assert_eq!(r.next_delay(), Duration::from_millis(100));
        assert_eq!(r.next_delay(), Duration::from_millis(200));
        r.reset();
        assert_eq!(r.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        for hostile in [
            "",
            "-1",
            "1.5",
            "soon",
            "Wed, 99 Oct 2015 07:28:30 GMT",
            &"9".repeat(100),
        ] {
            assert_eq!(
                parse_retry_after(hostile, now).filter(|d| *d < MAX_RETRY_AFTER),
                None,
                "{hostile:?}"
            );
        }
    }
}
