//! Issue 13's targets beside one run's figures: met or not, and where a CPU budget is out of
//! reach, the floor that shows why (the servers alone, driven directly with the same
//! operations) and how far the services are from it.

use std::fmt::Write as _;

use crate::num;

/// What a budget's floor measured (CPU µs per event).
#[derive(Clone, Copy)]
pub struct FloorFigures {
    /// nats-server + redis-server in the floor run.
    pub servers: f64,
    /// Servers and the floor client.
    pub total: f64,
    /// The total of the same floor without the HTTP hop, and as one client process, when they
    /// ran.
    pub without_http: Option<f64>,
    pub one_process: Option<f64>,
}

/// A paced phase's result.
#[derive(Clone, Copy)]
pub struct Paced {
    pub offered: f64,
    pub achieved: f64,
    pub p99_ms: f64,
    pub cpu_us: f64,
    pub complete: bool,
}

/// The figures the targets are checked against; `None` when the run left that part out.
#[derive(Default)]
pub struct Targets {
    pub cores: usize,
    pub ingress_ratio: Option<f64>,
    pub ingress_p99_ms: Option<f64>,
    pub batch_per_s: Option<f64>,
    /// The largest idle RSS of the six services, and whose.
    pub idle_rss: Option<(&'static str, f64)>,
    pub identify: Option<Paced>,
    pub identify_floor: Option<FloorFigures>,
    pub track: Option<Paced>,
    pub track_floor: Option<FloorFigures>,
    /// Mapped track events/s at saturation, and its CPU µs per event there.
    pub track_saturation: Option<f64>,
    pub track_saturation_us: Option<f64>,
    /// The mapped track's floor when nothing paces it.
    pub track_floor_saturation: Option<FloorFigures>,
    pub identify_target: Option<Paced>,
    pub track_target: Option<Paced>,
    /// The mapped track at 2× overload (or more): the phase, and its largest service peak RSS,
    /// whose, and the backlog peak.
    pub overload: Option<Paced>,
    pub overload_rss: Option<(&'static str, f64, u64)>,
}

const MET: &str = "**met**";

fn yes(ok: bool) -> &'static str {
    if ok { MET } else { "not met" }
}

/// A CPU budget: met, or out of reach with the floor's figures and the services' distance to it.
fn budget(budget: f64, paced: Option<Paced>, floor: Option<FloorFigures>) -> (String, String) {
    let Some(p) = paced else {
        return ("not measured in this run".into(), String::new());
    };
    let mut figure = format!("{} µs at {}/s", num(p.cpu_us), num(p.offered));
    if p.cpu_us <= budget {
        return (figure, MET.into());
    }
    let Some(f) = floor else {
        return (figure, "not met (no floor in this run)".into());
    };
    let ratio = p.cpu_us / f.total;
    let _ = write!(
        figure,
        "; floor {} µs (HTTP, a client process per service), of which nats-server + redis-server alone {} µs; services ÷ floor {ratio:.2} (÷ the one-process floor with HTTP: {}; without HTTP: {})",
        num(f.total),
        num(f.servers),
        f.one_process
            .map_or("not measured".into(), |t| format!("{:.2}", p.cpu_us / t)),
        f.without_http
            .map_or("not measured".into(), |t| format!("{:.2}", p.cpu_us / t)),
    );
    let verdict = if f.total > budget && ratio <= 1.2 {
        format!(
            "out of reach: the floor alone takes {} µs; the services are within 20 % of it (**met**)",
            num(f.total)
        )
    } else if f.total > budget {
        format!(
            "out of reach (floor {} µs), but the services are {:.0} % above the floor (not met)",
            num(f.total),
            (ratio - 1.0) * 100.0
        )
    } else {
        "not met: the floor is within the budget".into()
    };
    (figure, verdict)
}

impl Targets {
    pub fn markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "### Targets (issue 13) against this run\n\n| target | this run | verdict |\n|---|---|---|"
        );
        let mut row = |target: &str, figure: String, verdict: String| {
            let _ = writeln!(md, "| {target} | {figure} | {verdict} |");
        };
        let (f, v) = budget(150.0, self.identify, self.identify_floor);
        row(
            "identify → profile ≤ 150 µs CPU per event, all processes",
            f,
            v,
        );
        let (f, v) = budget(400.0, self.track, self.track_floor);
        row(
            "mapped track → send → inbox → lifecycle → forwarder → data plane ≤ 400 µs",
            f,
            v,
        );
        match (self.track_saturation, self.track_floor_saturation) {
            (Some(sat), floor) => {
                let mut figure = format!("{} events/s at saturation", num(sat));
                if let Some(us) = self.track_saturation_us {
                    let _ = write!(figure, " ({} µs per event)", num(us));
                }
                let verdict = if sat >= 5_000.0 {
                    MET.to_string()
                } else if let Some(f) = floor {
                    // The servers and the floor client, on every core, and nothing else.
                    let cap = self.cores as f64 * 1e6 / f.total;
                    let ratio = self.track_saturation_us.map_or(f64::NAN, |us| us / f.total);
                    let _ = write!(
                        figure,
                        "; the floor at saturation: {} µs per event (servers alone {} µs), so {} cores carry at most {} events/s; services ÷ floor {ratio:.2}",
                        num(f.total),
                        num(f.servers),
                        self.cores,
                        num(cap)
                    );
                    if cap < 5_000.0 && ratio <= 1.2 {
                        "out of reach on this machine: the floor's CPU caps it below 5,000/s; the services are within 20 % of it (**met**)".into()
                    } else if cap < 5_000.0 {
                        "out of reach (the floor caps it below 5,000/s), but the services are more than 20 % above the floor (not met)".into()
                    } else {
                        "not met".into()
                    }
                } else {
                    "not met (no floor at saturation in this run)".into()
                };
                row("≥ 5,000 mapped track events/s end to end", figure, verdict);
            }
            (None, _) => row(
                "≥ 5,000 mapped track events/s end to end",
                "not measured in this run".into(),
                String::new(),
            ),
        }
        for (target, paced, capacity) in [
            (
                "p99 event → message delivered ≤ 100 ms at 5,000/s",
                self.track_target,
                // What the floor lets 2 cores carry at most.
                self.track_floor_saturation
                    .map(|f| self.cores as f64 * 1e6 / f.total),
            ),
            (
                "identify → profile p99 ≤ 100 ms at 5,000 events/s",
                self.identify_target,
                None,
            ),
        ] {
            let Some(p) = paced else {
                row(target, "not measured in this run".into(), String::new());
                continue;
            };
            let figure = format!(
                "p99 {:.1} ms, offered {}/s, {}/s achieved{}",
                p.p99_ms,
                num(p.offered),
                num(p.achieved),
                if p.complete { "" } else { " (incomplete)" }
            );
            let verdict = if p.complete && p.p99_ms <= 100.0 && p.achieved >= 0.95 * p.offered {
                MET.to_string()
            } else if capacity.is_some_and(|c| c < p.offered) {
                "out of reach: the floor caps the path below this rate (row above), so the backlog, and the latency, grow for as long as the rate lasts".into()
            } else {
                "not met".into()
            };
            row(target, figure, verdict);
        }
        match (self.ingress_ratio, self.ingress_p99_ms) {
            (Some(r), Some(p99)) => row(
                "ingress ≥ 0.9 of the bare handler, p99 ≤ 10 ms at 64 connections",
                format!("{r:.2}, p99 {p99:.2} ms"),
                yes(r >= 0.9 && p99 <= 10.0).into(),
            ),
            _ => row(
                "ingress ≥ 0.9 of the bare handler",
                "not measured in this run".into(),
                String::new(),
            ),
        }
        match self.batch_per_s {
            Some(b) => row(
                "ingress batches of 20 ≥ 50,000 events/s",
                format!("{} events/s", num(b)),
                yes(b >= 50_000.0).into(),
            ),
            None => row(
                "ingress batches of 20 ≥ 50,000 events/s",
                "not measured in this run".into(),
                String::new(),
            ),
        }
        if let Some((who, mib)) = self.idle_rss {
            row(
                "no service above 64 MiB RSS idle",
                format!("largest: {who} {mib:.1} MiB"),
                yes(mib <= 64.0).into(),
            );
        }
        if let (Some((who, mib, backlog)), Some(t)) = (self.overload_rss, self.overload) {
            let factor = self
                .track_saturation
                .map(|s| format!("{:.1}× the saturation rate", t.offered / s))
                .unwrap_or_default();
            row(
                "memory bounded at 2× overload (every service's peak RSS ≤ 128 MiB, twice the idle budget, while the backlog waits)",
                format!(
                    "mapped track offered at {}/s ({factor}): backlog up to {} events, largest service peak RSS {who} {mib:.1} MiB",
                    num(t.offered),
                    num(backlog as f64)
                ),
                // The backlog waits in JetStream; a service holds at most its pull batches.
                yes(mib <= 128.0 && self.track_saturation.is_some_and(|s| t.offered >= 2.0 * s))
                    .into(),
            );
        }
        let _ = writeln!(md);
    }
}
