//! nats-server's `/varz` message and byte counters (summed over a cluster's nodes), so a
//! scenario's NATS traffic reads as messages and bytes per event, in and out of the server.

use serde_json::Value;

/// Counters as nats-server keeps them: everything its clients (and routes) sent it (`in`) and
/// everything it sent them (`out`), JetStream API calls, acks and pull requests included.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl Traffic {
    /// The sum of every node's `/varz` (zero for a node that does not answer).
    pub async fn read(monitor_ports: &[u16]) -> Self {
        let mut sum = Traffic::default();
        for port in monitor_ports {
            let varz: Value = match reqwest::get(format!("http://127.0.0.1:{port}/varz")).await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            let t = Self::parse(&varz);
            sum.in_msgs += t.in_msgs;
            sum.out_msgs += t.out_msgs;
            sum.in_bytes += t.in_bytes;
            sum.out_bytes += t.out_bytes;
        }
        sum
    }

    fn parse(varz: &Value) -> Self {
        let n = |k: &str| varz[k].as_u64().unwrap_or(0);
        Traffic {
            in_msgs: n("in_msgs"),
            out_msgs: n("out_msgs"),
            in_bytes: n("in_bytes"),
            out_bytes: n("out_bytes"),
        }
    }

    /// What flowed between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            in_msgs: self.in_msgs.saturating_sub(earlier.in_msgs),
            out_msgs: self.out_msgs.saturating_sub(earlier.out_msgs),
            in_bytes: self.in_bytes.saturating_sub(earlier.in_bytes),
            out_bytes: self.out_bytes.saturating_sub(earlier.out_bytes),
        }
    }

    /// Per event: (messages in, messages out, bytes in, bytes out).
    pub fn per_event(&self, events: u64) -> [f64; 4] {
        let e = events.max(1) as f64;
        [
            self.in_msgs as f64 / e,
            self.out_msgs as f64 / e,
            self.in_bytes as f64 / e,
            self.out_bytes as f64 / e,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_subtracts_the_counters() {
        let a = Traffic::parse(
            &serde_json::json!({"in_msgs": 10, "out_msgs": 20, "in_bytes": 1000, "out_bytes": 3000, "cpu": 3}),
        );
        let b = Traffic::parse(
            &serde_json::json!({"in_msgs": 40, "out_msgs": 50, "in_bytes": 4000, "out_bytes": 9000}),
        );
        assert_eq!(b.since(&a).per_event(10), [3.0, 3.0, 300.0, 600.0]);
        assert_eq!(Traffic::parse(&Value::Null), Traffic::default());
    }
}
