//! `INFO commandstats` of redis-server: calls and µs spent per command, so a scenario's Redis
//! cost splits into commands per event × µs per command.

use std::collections::BTreeMap;

/// command → (calls, usec) as redis-server counts them.
#[derive(Default, Clone)]
pub struct CommandStats(BTreeMap<String, (u64, u64)>);

impl CommandStats {
    pub async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Self {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap_or_default();
        Self::parse(&info)
    }

    /// Lines like `cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,...`.
    fn parse(info: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let mut calls = 0;
            let mut usec = 0;
            for kv in rest.split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => calls = v.trim().parse().unwrap_or(0),
                    Some(("usec", v)) => usec = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            out.insert(name.to_string(), (calls, usec));
        }
        CommandStats(out)
    }

    /// The commands that ran between `self` and `later`, most expensive first, as
    /// "evalsha 2.6/event × 146 µs" (calls per event, µs per call inside redis-server).
    pub fn summary(&self, later: &CommandStats, events: u64, top: usize) -> String {
        let mut rows: Vec<(String, u64, u64)> = later
            .0
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, (calls, usec))| {
                let (c0, u0) = self.0.get(name).copied().unwrap_or((0, 0));
                (name.clone(), calls - c0.min(*calls), usec - u0.min(*usec))
            })
            .filter(|(_, calls, _)| *calls > 0)
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        let events = events.max(1) as f64;
        rows.iter()
            .take(top)
            .map(|(name, calls, usec)| {
                // Redis 7 names subcommands `script|load`: a `|` would split a Markdown cell.
                format!(
                    "{} {:.2}/event × {:.1} µs",
                    name.replace('|', " "),
                    *calls as f64 / events,
                    *usec as f64 / *calls as f64
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_summarises() {
        let a = CommandStats::parse(
            "# Commandstats\r\ncmdstat_hset:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n",
        );
        let b = CommandStats::parse(
            "cmdstat_hset:calls=30,usec=60,usec_per_call=2.00\r\ncmdstat_evalsha:calls=20,usec=2000,usec_per_call=100.00\r\ncmdstat_info:calls=3,usec=1\r\n",
        );
        assert_eq!(
            a.summary(&b, 10, 5),
            "evalsha 2.00/event × 100.0 µs; hset 2.00/event × 2.0 µs"
        );
    }
}
