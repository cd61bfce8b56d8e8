//! Readings from /proc: CPU time (utime + stime, every thread) and memory of a process, and the
//! machine's load average.

use std::process::Command;

/// A process the bench watches (its memory is `pid`'s; its CPU also counts `also`: the other
/// nodes of a cluster).
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: &'static str,
    pub pid: u32,
    pub also: Vec<u32>,
}

impl Watched {
    pub fn new(name: &'static str, pid: u32) -> Self {
        Watched {
            name,
            pid,
            also: Vec::new(),
        }
    }

    /// Every node of a server: `pids[0]` for memory, all of them for CPU.
    pub fn nodes(name: &'static str, pids: &[u32]) -> Self {
        Watched {
            name,
            pid: pids[0],
            also: pids[1..].to_vec(),
        }
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.pid) + self.also.iter().map(|p| cpu_ticks(*p)).sum::<u64>()
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; `unsafe` is forbidden here, so no sysconf).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` in clock ticks (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// `VmRSS` or `VmHWM` of `pid` in MiB (0 if it is gone).
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU ticks of every watched process at one moment.
pub struct CpuSnapshot(Vec<u64>);

impl CpuSnapshot {
    pub fn take(watched: &[Watched]) -> Self {
        CpuSnapshot(watched.iter().map(Watched::cpu_ticks).collect())
    }

    /// CPU µs per event of each watched process between `self` and `later`.
    pub fn per_event_us(&self, later: &CpuSnapshot, events: u64, ticks: f64) -> Vec<f64> {
        self.0
            .iter()
            .zip(&later.0)
            .map(|(a, b)| {
                let seconds = b.saturating_sub(*a) as f64 / ticks;
                if events == 0 {
                    0.0
                } else {
                    seconds * 1e6 / events as f64
                }
            })
            .collect()
    }
}
