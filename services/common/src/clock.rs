//! Wall-clock helpers: epoch milliseconds and protobuf timestamps.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A protobuf timestamp of epoch milliseconds (negative values included).
pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp of a date-time (full nanosecond precision).
pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

/// Epoch milliseconds of a protobuf timestamp, if there is one.
pub fn ms_of(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
}

/// A protobuf timestamp of now.
pub fn timestamp_now() -> prost_types::Timestamp {
    timestamp(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_timestamps_floor_toward_the_past() {
        let t = timestamp_ms(1_772_442_011_006);
        assert_eq!((t.seconds, t.nanos), (1_772_442_011, 6_000_000));
        let t = timestamp_ms(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_500_000_000_123_456_789).unwrap();
        assert_eq!(timestamp(at).nanos, 123_456_789);
        assert!(now_ms() > 1_700_000_000_000);
        assert_eq!(ms_of(Some(&timestamp_ms(-1))), Some(-1));
        assert_eq!(ms_of(None), None);
    }
}
