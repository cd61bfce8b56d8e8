//! `make bench`: what an event costs, end to end and per process, next to the raw limits
//! measured in the same run on the same machine.
//!
//! 1. Raw limits (their own nats-server and redis-server): JetStream async publish and pull
//!    consume (nats-server CPU per message), Redis HSET and EVALSHA (redis-server CPU per
//!    command), a bare parse-validate-publish-ack HTTP handler (its own process), and the
//!    release `rc-ingress` under the same load (single events and batches of 20).
//! 2. End to end (a fresh nats-server and redis-server): the six release service binaries and a
//!    fake data plane; each scenario is offered at a fixed rate (CPU µs per event per process
//!    from /proc, p50/p99 from the HTTP request to the effect), then as a burst (throughput at
//!    saturation). Redis `INFO commandstats` splits redis-server's share per command.
//!
//!    Identify and the mapped track are then offered at the target rate (`--target-rate`,
//!    5,000/s; `--overload-count` events, 0 to skip): p99 there, and each process's peak RSS
//!    while the backlog that rate builds is waiting (memory at overload).
//! 3. The identify and mapped-track floors (`floor.rs`): the same NATS and Redis operations per event,
//!    driven by one minimal client process at the same rate and count, beside the services'
//!    figures; `--skip-floor` leaves it out.
//! 4. Targets: issue 13's targets beside this run's figures, met or not, and for a budget the
//!    floor puts out of reach, the floor's figure.
//!
//! Prints Markdown (and writes it to `--out FILE`; scripts/bench.sh puts it into BENCHMARKS.md).
//!
//! Usage: rc-bench [--rate N] [--count N] [--scenario identify,group,track,inline] [--seconds N]
//!        [--connections N] [--topology r1,r1-fsync,r3] [--durable] [--skip-raw] [--skip-e2e]
//!        [--skip-floor] [--target-rate N] [--overload-count N] [--out FILE]
//!
//! `--topology` runs everything once per NATS setup, side by side (`--durable` = `r1-fsync`).

mod e2e;
mod floor;
mod load;
mod procfs;
mod raw;
mod redis_stats;
mod targets;
mod varz;

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use e2e::{Phase, PhaseResult, SERVICES, Scenario};
use load::{Body, LoadResult};
use procfs::{CpuSnapshot, Watched, memory_mib};
use rc_tests::Stack;
use targets::{FloorFigures, Paced, Targets};

/// How NATS runs under the stack (Redis is one node in each, so the rows isolate NATS).
#[derive(Clone, Copy, PartialEq)]
enum Topology {
    /// One nats-server, default fsync (streams at 1 replica).
    R1,
    /// One nats-server, `sync_interval: always` (fsync before every ack).
    R1Fsync,
    /// A 3-node JetStream cluster on this machine, streams at 3 replicas.
    R3,
}

impl Topology {
    fn from_flag(s: &str) -> Option<Self> {
        match s {
            "r1" => Some(Self::R1),
            "r1-fsync" => Some(Self::R1Fsync),
            "r3" => Some(Self::R3),
            _ => None,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::R1 => "R1: one nats-server, default fsync",
            Self::R1Fsync => "R1 fsync: one nats-server, sync_interval: always",
            Self::R3 => "R3: 3-node JetStream cluster on this machine, streams at 3 replicas",
        }
    }

    fn stack(self) -> Stack {
        match self {
            Self::R1 => Stack::start(),
            Self::R1Fsync => Stack::start_durable(),
            Self::R3 => Stack {
                nats: rc_tests::NatsServer::start_cluster(3),
                redis: rc_tests::RedisServer::start(),
            },
        }
    }
}

struct Args {
    seconds: u64,
    connections: usize,
    topologies: Vec<Topology>,
    rate: f64,
    count: u64,
    scenarios: Vec<Scenario>,
    raw: bool,
    e2e: bool,
    floor: bool,
    target_rate: f64,
    overload_count: u64,
    out: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5,
        connections: 64,
        topologies: vec![Topology::R1],
        rate: 2_000.0,
        count: 10_000,
        scenarios: Scenario::ALL.to_vec(),
        raw: true,
        e2e: true,
        floor: true,
        target_rate: 5_000.0,
        overload_count: 25_000,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--rate" => a.rate = value().parse().expect("--rate N"),
            "--count" => a.count = value().parse().expect("--count N"),
            "--scenario" => {
                a.scenarios = value()
                    .split(',')
                    .map(|s| {
                        Scenario::from_flag(s.trim()).unwrap_or_else(|| {
                            panic!("unknown scenario {s} (identify, group, track, inline)")
                        })
                    })
                    .collect()
            }
            "--durable" => a.topologies = vec![Topology::R1Fsync],
            "--skip-floor" => a.floor = false,
            "--target-rate" => a.target_rate = value().parse().expect("--target-rate N"),
            "--overload-count" => a.overload_count = value().parse().expect("--overload-count N"),
            "--topology" => {
                a.topologies = value()
                    .split(',')
                    .map(|s| {
                        Topology::from_flag(s.trim())
                            .unwrap_or_else(|| panic!("unknown topology {s} (r1, r1-fsync, r3)"))
                    })
                    .collect()
            }
            "--skip-raw" => a.raw = false,
            "--skip-e2e" => a.e2e = false,
            "--out" => a.out = Some(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A ~1 KB track event, shaped like what the Courier destination sends.
fn raw_event(i: u64, run: u64) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","userId":"u_{u}","anonymousId":"0b6f3c2e-91d4-4a57-8e1f-5c2a7d90b318","channel":"server","messageId":"bench-{run}-{i}","rudderId":"d5c9a0f2-6b1e-4a37-9d84-0e7f3b2c1a59","request_ip":"203.0.113.24","originalTimestamp":"2026-03-02T09:14:05.120Z","sentAt":"2026-03-02T09:14:05.300Z","receivedAt":"2026-03-02T09:14:05.412Z","timestamp":"2026-03-02T09:14:05.232Z","context":{{"library":{{"name":"analytics-node","version":"1.3.0"}},"traits":{{"email":"ada@example.org","name":"Ada Byron","plan":"team"}},"ip":"203.0.113.24","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"}},"properties":{{"order_id":"ord_{i}","total":42.5,"currency":"EUR","products":[{{"sku":"sku-1","name":"Widget","price":20.0,"quantity":1}},{{"sku":"sku-2","name":"Gadget","price":22.5,"quantity":1}}],"coupon":"WELCOME10","courier":{{"automation":{{"data":{{"userId":"u_{u}","days_left":3}}}}}}}},"integrations":{{"All":true}}}}"#,
        u = i % 10_000
    )
}

fn raw_body(run: u64) -> Body {
    Arc::new(move |i| raw_event(i, run))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This binary again, as the bare handler process.
async fn start_bare_handler(stack: &Stack) -> (Killed, u16) {
    let port = rc_tests::free_port();
    let child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--bare-handler",
            &format!("127.0.0.1:{port}"),
            &stack.nats.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bare handler");
    e2e::wait_ready(port, "bare handler").await;
    (Killed(child), port)
}

fn num(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// An HTTP closed-loop run with the CPU of `watched` over it.
async fn measured_load(
    watched: &[Watched],
    ticks: f64,
    run: impl std::future::Future<Output = LoadResult>,
) -> (LoadResult, Vec<f64>) {
    let cpu0 = CpuSnapshot::take(watched);
    let r = run.await;
    let cpu1 = CpuSnapshot::take(watched);
    let per = cpu0.per_event_us(&cpu1, r.events, ticks);
    (r, per)
}

async fn raw_limits(
    args: &Args,
    topology: Topology,
    ticks: f64,
    md: &mut String,
    targets: &mut Targets,
) {
    let stack = topology.stack();
    let key = stack.workspace("bench").await;
    let nats = Watched::nodes("nats-server", &stack.nats.pids());
    let redis = Watched::new("redis-server", stack.redis.pid().expect("redis pid"));
    let mut env = stack.service_env();
    // Capacity, not one workspace's rate limit, is measured here.
    env.push(("RC_INGRESS__WORKSPACE_EVENTS_PER_SEC", "0".into()));
    let (ingress, ingress_port) = e2e::start_service("ingress", &env).await;
    let ingress = Killed(ingress);
    let (bare, bare_port) = start_bare_handler(&stack).await;
    eprintln!("raw limits: JetStream, Redis, bare handler, ingress …");

    let payload = bytes::Bytes::from(raw_event(0, 0).into_bytes());
    let publish = raw::jetstream_publish(
        &stack,
        payload.clone(),
        "events.rawjs.track",
        args.seconds,
        ticks,
    )
    .await;
    let consume = raw::jetstream_consume(
        &stack,
        "events.rawjs.track",
        publish.ops.min(200_000),
        ticks,
    )
    .await;
    let hset = raw::redis_ops(&stack, raw::RedisOp::Hset, 100_000, ticks).await;
    let evalsha = raw::redis_ops(&stack, raw::RedisOp::Evalsha, 50_000, ticks).await;
    let replica = raw::attach_replica(&stack);
    let evalsha_wait = raw::redis_ops(&stack, raw::RedisOp::EvalshaWait, 50_000, ticks).await;
    drop(replica);

    let bare_w = [Watched::new("bare handler", bare.0.id()), nats.clone()];
    let (bare_r, bare_cpu) = measured_load(
        &bare_w,
        ticks,
        load::closed_loop(
            &format!("http://127.0.0.1:{bare_port}/inbound/rudderstack"),
            "",
            args.connections,
            args.seconds,
            1,
            raw_body(1),
        ),
    )
    .await;
    drop(bare);
    let ingress_w = [
        Watched::new("ingress", ingress.0.id()),
        nats.clone(),
        redis.clone(),
    ];
    let ingress_url = format!("http://127.0.0.1:{ingress_port}/inbound/rudderstack");
    let (single, single_cpu) = measured_load(
        &ingress_w,
        ticks,
        load::closed_loop(
            &ingress_url,
            &key,
            args.connections,
            args.seconds,
            1,
            raw_body(2),
        ),
    )
    .await;
    let (batch, batch_cpu) = measured_load(
        &ingress_w,
        ticks,
        load::closed_loop(
            &ingress_url,
            &key,
            args.connections.min(16),
            args.seconds,
            20,
            raw_body(3),
        ),
    )
    .await;

    let _ = writeln!(
        md,
        "### Raw limits (own nats-server and redis-server, same run)\n"
    );
    let _ = writeln!(
        md,
        "| what | ops/s | CPU µs per op (process) | p50 ms | p99 ms | non-2xx / errors |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| JetStream async publish, {} B, Nats-Msg-Id, 512 in flight | {} | nats-server {:.1} | | | |",
        payload.len(),
        num(publish.per_s()),
        publish.cpu_us_per_op()
    );
    let _ = writeln!(
        md,
        "| JetStream pull consume + ack (durable, batches of 500) | {} | nats-server {:.1} | | | |",
        num(consume.per_s()),
        consume.cpu_us_per_op()
    );
    let _ = writeln!(
        md,
        "| Redis HSET, pipelined 64 | {} | redis-server {:.1} | | | |",
        num(hset.per_s()),
        hset.cpu_us_per_op()
    );
    let _ = writeln!(
        md,
        "| Redis EVALSHA (SET NX EX + HSET + EXPIRE), pipelined 64 | {} | redis-server {:.1} | | | |",
        num(evalsha.per_s()),
        evalsha.cpu_us_per_op()
    );
    let _ = writeln!(
        md,
        "| Redis EVALSHA as above, each pipeline of 64 ending in WAIT 1 (a replica on this machine) | {} | redis-server {:.1} | | | |",
        num(evalsha_wait.per_s()),
        evalsha_wait.cpu_us_per_op()
    );
    let rows: [(&str, &LoadResult, &[Watched], &[f64]); 3] = [
        (
            "bare axum handler: parse, validate, publish, await ack (1 event/request, {c} connections)",
            &bare_r,
            &bare_w,
            &bare_cpu,
        ),
        (
            "rc-ingress, 1 event/request ({c} connections)",
            &single,
            &ingress_w,
            &single_cpu,
        ),
        (
            "rc-ingress, batches of 20 (16 connections)",
            &batch,
            &ingress_w,
            &batch_cpu,
        ),
    ];
    for (name, r, w, cpu) in rows {
        let cpu_text: Vec<String> = w
            .iter()
            .zip(cpu)
            .map(|(w, c)| format!("{} {c:.1}", w.name))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {} / {} |",
            name.replace("{c}", &args.connections.to_string()),
            num(r.events_per_s()),
            cpu_text.join(", "),
            r.p50,
            r.p99,
            r.non_2xx,
            r.errors
        );
    }
    if topology == Topology::R1 {
        targets.ingress_ratio = Some(single.events_per_s() / bare_r.events_per_s());
        targets.ingress_p99_ms = Some(single.p99);
        targets.batch_per_s = Some(batch.events_per_s());
    }
    let _ = writeln!(
        md,
        "\nIngress against the bare handler: **{:.2}** (single events; target ≥ 0.90). Ingress RSS after the load: {:.1} MiB.\n",
        single.events_per_s() / bare_r.events_per_s(),
        memory_mib(ingress.0.id(), "VmRSS"),
    );
}

fn phase_label(p: Phase) -> String {
    match p {
        Phase::Paced { rate } => format!("{}/s", num(rate)),
        Phase::Burst => "saturation (batches of 20, 16 connections)".into(),
        Phase::Target { rate } => format!("{}/s (the target rate)", num(rate)),
        Phase::Overload { rate } => format!("{}/s (2.1× saturation)", num(rate)),
    }
}

async fn end_to_end(
    args: &Args,
    topology: Topology,
    ticks: f64,
    md: &mut String,
    targets: &mut Targets,
) {
    let stack = topology.stack();
    let d = e2e::deploy(&stack).await;
    let watched = d.watched(&stack);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = watched.iter().map(|w| memory_mib(w.pid, "VmRSS")).collect();

    let mut results: Vec<PhaseResult> = Vec::new();
    for (k, scenario) in args.scenarios.iter().enumerate() {
        let mut phases = vec![
            (Phase::Paced { rate: args.rate }, args.count),
            (Phase::Burst, args.count),
        ];
        // The targets name identify's and the mapped track's p99 at the target rate.
        if args.overload_count > 0 && matches!(scenario, Scenario::Identify | Scenario::MappedTrack)
        {
            phases.push((
                Phase::Target {
                    rate: args.target_rate,
                },
                args.overload_count,
            ));
        }
        let mut p = 0;
        while p < phases.len() {
            let (phase, count) = phases[p];
            let tag = format!("s{k}p{p}");
            eprintln!(
                "end to end: {} at {} …",
                scenario.title(),
                phase_label(phase)
            );
            let r =
                e2e::run_phase(&stack, &d, &watched, ticks, *scenario, phase, &tag, count).await;
            // Memory at 2× overload needs twice the saturation rate; when the target rate is
            // less, the track gets one more phase at that rate.
            let overload = 2.1 * r.accepted as f64 / r.seconds;
            if matches!(phase, Phase::Burst)
                && *scenario == Scenario::MappedTrack
                && args.overload_count > 0
                && overload > args.target_rate
            {
                phases.push((
                    Phase::Overload {
                        rate: overload.ceil(),
                    },
                    args.overload_count,
                ));
            }
            results.push(r);
            p += 1;
        }
    }

    let _ = writeln!(
        md,
        "### End to end: CPU µs per event, per process\n\n{} events per phase ({} at the target rate); the six service binaries, nats-server, redis-server; a fake data plane and the load generator in the rc-bench process (not counted). CPU is utime+stime from /proc/<pid>/stat from the first request to the last effect, divided by the accepted events. Latency: HTTP request sent → effect seen on `courier.<ws>.profile.updated` / `tenant.updated` / `message.delivered` (a core NATS subscription). Sends also wait for `Message Delivered` at the data plane.\n",
        num(args.count as f64),
        num(args.overload_count as f64)
    );
    let mut header = String::from("| scenario | offered |");
    let mut rule = String::from("|---|---|");
    for w in &watched {
        let _ = write!(header, " {} |", w.name);
        rule.push_str("---:|");
    }
    header.push_str(" **total** | events/s | p50 ms | p99 ms |");
    rule.push_str("---:|---:|---:|---:|");
    let _ = writeln!(md, "{header}\n{rule}");
    for r in &results {
        let mut row = format!("| {} | {} |", r.scenario.title(), phase_label(r.phase));
        for c in &r.cpu_us {
            let _ = write!(row, " {} |", num(*c));
        }
        let total: f64 = r.cpu_us.iter().sum();
        let rate = r.accepted as f64 / r.seconds;
        let (p50, p99) = match r.phase {
            Phase::Paced { .. } | Phase::Target { .. } | Phase::Overload { .. } => {
                (format!("{:.1}", r.p50), format!("{:.1}", r.p99))
            }
            Phase::Burst => (String::new(), String::new()),
        };
        let mut note = String::new();
        if !r.complete() {
            note = format!(
                " (incomplete: {}/{} effects, {} at the data plane)",
                r.effects, r.accepted, r.forwarded
            );
        }
        if r.rejected_requests > 0 {
            let _ = write!(note, " ({} requests failed)", r.rejected_requests);
        }
        let _ = writeln!(
            md,
            "{row} **{}** | {}{note} | {p50} | {p99} |",
            num(total),
            num(rate)
        );
    }
    let _ = writeln!(
        md,
        "\nRedis commands per event (`INFO commandstats`: calls per event × µs per call inside redis-server, top 4), at the fixed rate:\n"
    );
    let _ = writeln!(md, "| scenario | commands |\n|---|---|");
    for r in results
        .iter()
        .filter(|r| matches!(r.phase, Phase::Paced { .. }))
    {
        let _ = writeln!(md, "| {} | {} |", r.scenario.title(), r.redis);
    }
    // Memory: idle, the peak over the whole run, and the peak while each target-rate phase's
    // backlog waited.
    let overload: Vec<&PhaseResult> = results
        .iter()
        .filter(|r| matches!(r.phase, Phase::Target { .. } | Phase::Overload { .. }))
        .collect();
    let mut header = String::from(
        "\nMemory (RSS MiB; at the target rate: the highest of samples every 100 ms while its backlog waited, the backlog being events answered 2xx whose effect was not seen yet):\n\n| process | idle | peak over the run (VmHWM) |",
    );
    let mut rule = String::from("|---|---:|---:|");
    for r in &overload {
        let _ = write!(
            header,
            " {} at {} (backlog up to {}) |",
            r.scenario.short(),
            phase_label(r.phase),
            num(r.peak_backlog as f64)
        );
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for (i, (w, idle)) in watched.iter().zip(&idle).enumerate() {
        let mut row = format!(
            "| {} | {idle:.1} | {:.1} |",
            w.name,
            memory_mib(w.pid, "VmHWM")
        );
        for r in &overload {
            let _ = write!(row, " {:.1} |", r.peak_rss[i]);
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);
    debug_assert_eq!(watched.len(), SERVICES.len() + 2);

    if topology == Topology::R1 {
        let n = SERVICES.len();
        targets.idle_rss = watched[..n]
            .iter()
            .zip(&idle)
            .map(|(w, m)| (w.name, *m))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let paced = |r: &PhaseResult| Paced {
            offered: match r.phase {
                Phase::Paced { rate } | Phase::Target { rate } | Phase::Overload { rate } => rate,
                Phase::Burst => 0.0,
            },
            achieved: r.accepted as f64 / r.seconds,
            p99_ms: r.p99,
            cpu_us: r.cpu_us.iter().sum(),
            complete: r.complete(),
        };
        let find = |scenario: Scenario, target: bool| {
            results.iter().find(|r| {
                r.scenario == scenario
                    && if target {
                        matches!(r.phase, Phase::Target { .. })
                    } else {
                        matches!(r.phase, Phase::Paced { .. })
                    }
            })
        };
        targets.identify = find(Scenario::Identify, false).map(paced);
        targets.track = find(Scenario::MappedTrack, false).map(paced);
        targets.identify_target = find(Scenario::Identify, true).map(paced);
        targets.track_target = find(Scenario::MappedTrack, true).map(paced);
        targets.track_saturation = results
            .iter()
            .find(|r| r.scenario == Scenario::MappedTrack && matches!(r.phase, Phase::Burst))
            .map(|r| r.accepted as f64 / r.seconds);
        // The memory check: the 2.1× phase when the track had one, else the target rate's.
        let overload = results
            .iter()
            .find(|r| {
                r.scenario == Scenario::MappedTrack && matches!(r.phase, Phase::Overload { .. })
            })
            .or_else(|| find(Scenario::MappedTrack, true));
        targets.overload = overload.map(paced);
        targets.overload_rss = overload.and_then(|r| {
            watched[..n]
                .iter()
                .zip(&r.peak_rss)
                .map(|(w, m)| (w.name, *m, r.peak_backlog))
                .max_by(|a, b| a.1.total_cmp(&b.1))
        });
    }

    if !args.floor || topology != Topology::R1 {
        return;
    }
    // Their own servers, after this stack is gone.
    drop(d);
    drop(stack);
    let mut header = false;
    // What the servers counted in each run, printed below the CPU table.
    let mut counts = String::new();
    for scenario in [Scenario::Identify, Scenario::MappedTrack] {
        let Some(services) = results.iter().find(|r| {
            r.scenario == scenario && matches!(r.phase, Phase::Paced { .. }) && r.complete()
        }) else {
            continue;
        };
        eprintln!("floor: {} …", scenario.title());
        // Without HTTP (the servers and the handlers alone), then with the HTTP hop every event
        // takes (the ingress's share behind a minimal handler, offered by this process).
        // Then with one client process per service, as the services are deployed.
        let [bare, one, f] = match scenario {
            Scenario::Identify => [
                floor::run(args.count, args.rate, ticks, false, false).await,
                floor::run(args.count, args.rate, ticks, true, false).await,
                floor::run(args.count, args.rate, ticks, true, true).await,
            ],
            _ => [
                floor::run_track(args.count, args.rate, ticks, false, false).await,
                floor::run_track(args.count, args.rate, ticks, true, false).await,
                floor::run_track(args.count, args.rate, ticks, true, true).await,
            ],
        };
        if !header {
            header = true;
            let _ = writeln!(
                md,
                "### Floor: the servers driven directly\n\n{} events at {}/s, CPU µs per event. Floor: one client process (`rc-bench --floor-worker…`) performs the services' NATS and Redis operations per event on a fresh nats-server and redis-server, over one NATS and one Redis connection per service as the services have, each durable configured, pulled and handled (its concurrency at a time) as its service does it, one tokio worker thread as the services run; none of the shared consumer's bookkeeping. Identify: the ingress's parser and JetStream publish (ack awaited), profiles' own identify handler on its durable, automations' own event handler on its durable (catalog tally, mapping lookup from its cache, ack). Mapped track: the same publish, automations' own event handler (the run executes in the client), delivery's own worker on `message.requested`, and a durable consumer of the forwarder's subjects whose events the forwarder's own functions map and POST to the fake data plane in batches (the forwarder's default size and linger). Each floor runs three times: without HTTP (the client publishes the events itself); with the HTTP hop every event takes (the client takes the events on `POST /inbound/rudderstack`: a minimal axum handler, the ingress's parser, publish, await the ack, 200; no authentication, batches or limits; offered by the same load generator at the same rate); and with HTTP as one client process per service (each its service's share only, their CPU summed), the process split the services are deployed with. The targets are checked against the last.\n",
                num(args.count as f64),
                num(args.rate),
            );
            let _ = writeln!(
                md,
                "| path | run | nats-server | redis-server | services / client | **total** | events/s |\n|---|---|---:|---:|---:|---:|---:|"
            );
        }
        let total = |x: &[f64; 3]| x.iter().sum::<f64>();
        let title = scenario.title();
        let s = services_row(md, title, "the services (end to end, above)", services);
        for (name, f) in [
            ("without HTTP, one client process", &bare),
            ("with the HTTP hop, one client process", &one),
            ("with the HTTP hop, one client process per service", &f),
        ] {
            floor_rows(md, title, name, &s, f);
        }
        let figures = Some(FloorFigures {
            servers: f.cpu_us[0] + f.cpu_us[1],
            total: total(&f.cpu_us),
            without_http: Some(total(&bare.cpu_us)),
            one_process: Some(total(&one.cpu_us)),
        });
        match scenario {
            Scenario::Identify => targets.identify_floor = figures,
            _ => targets.track_floor = figures,
        }
        for (who, nats, commands) in [
            (
                "the services",
                services.nats.per_event(services.accepted),
                &services.commands,
            ),
            (
                "floor (HTTP, a process per service)",
                f.nats.per_event(args.count),
                &f.commands,
            ),
        ] {
            let _ = writeln!(
                counts,
                "| {title} | {who} | {:.2} | {:.2} | {} | {} | {commands} |",
                nats[0],
                nats[1],
                num(nats[2]),
                num(nats[3])
            );
        }
        if scenario != Scenario::MappedTrack {
            continue;
        }
        // What 5,000 events/s asks: the floor's cost when nothing paces it.
        let Some(burst) = results
            .iter()
            .find(|r| r.scenario == scenario && matches!(r.phase, Phase::Burst) && r.complete())
        else {
            continue;
        };
        eprintln!("floor: {title} at saturation …");
        let f = floor::run_track(args.count, f64::INFINITY, ticks, false, false).await;
        let s = services_row(md, title, "the services at saturation (above)", burst);
        floor_rows(
            md,
            title,
            "at saturation (unpaced, 512 publishes in flight)",
            &s,
            &f,
        );
        targets.track_floor_saturation = Some(FloorFigures {
            servers: f.cpu_us[0] + f.cpu_us[1],
            total: total(&f.cpu_us),
            without_http: None,
            one_process: None,
        });
        targets.track_saturation_us = Some(total(&s));
    }
    if !counts.is_empty() {
        let _ = writeln!(
            md,
            "\nWhat the servers counted at {}/s, per event (nats-server `/varz`: messages and bytes from and to clients, JetStream API calls, acks, pull requests and heartbeats included; Redis `INFO commandstats`: calls per event × µs per call, the commands scripts run counted too):\n\n| path | run | NATS msgs in | NATS msgs out | NATS bytes in | NATS bytes out | Redis commands |\n|---|---|---:|---:|---:|---:|---|\n{counts}",
            num(args.rate)
        );
    }
    let _ = writeln!(md);
}

/// The services' row beside the floors: nats-server, redis-server, and the six services summed
/// (returned in that order).
fn services_row(md: &mut String, title: &str, name: &str, r: &PhaseResult) -> [f64; 3] {
    let n = SERVICES.len();
    let s = [r.cpu_us[n], r.cpu_us[n + 1], r.cpu_us[..n].iter().sum()];
    let _ = writeln!(
        md,
        "| {title} | {name} | {} | {} | {} | **{}** | {} |",
        num(s[0]),
        num(s[1]),
        num(s[2]),
        num(s.iter().sum()),
        num(r.accepted as f64 / r.seconds)
    );
    s
}

/// A floor's row and the services' ratio to it (`services`: nats-server, redis-server, own).
fn floor_rows(
    md: &mut String,
    title: &str,
    name: &str,
    services: &[f64; 3],
    f: &floor::FloorResult,
) {
    let total: f64 = f.cpu_us.iter().sum();
    let ratio = |a: f64, b: f64| format!("{:.2}", a / b.max(0.01));
    let _ = writeln!(
        md,
        "| {title} | floor {name} | {} | {} | {} | **{}** | {} |",
        num(f.cpu_us[0]),
        num(f.cpu_us[1]),
        num(f.cpu_us[2]),
        num(total),
        num(f.events_per_s)
    );
    let _ = writeln!(
        md,
        "| {title} | services ÷ floor {name} | {} | {} | {} | **{}** | |",
        ratio(services[0], f.cpu_us[0]),
        ratio(services[1], f.cpu_us[1]),
        ratio(services[2], f.cpu_us[2]),
        ratio(services.iter().sum(), total)
    );
}

fn main() {
    // The floor's client runs as the services do: one tokio worker (`runtime.worker_threads`).
    let floor = std::env::args()
        .nth(1)
        .is_some_and(|a| a.starts_with("--floor-worker"));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if floor {
        runtime.worker_threads(rc_common::config::RuntimeSettings::default().worker_threads);
    }
    runtime
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench());
}

async fn bench() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--floor-worker-track") {
        floor::worker_track(&argv[2..]).await;
        return;
    }
    if argv.get(1).map(String::as_str) == Some("--floor-worker") {
        let n = |i: usize| argv[i].parse::<f64>().expect("a number");
        floor::worker(&argv[2], &argv[3], n(4) as u64, n(5)).await;
        return;
    }
    if argv.get(1).map(String::as_str) == Some("--bare-handler") {
        raw::bare_handler(&argv[2], &argv[3]).await;
        return;
    }
    let args = args();
    let ticks = procfs::clock_ticks();
    let mut md = String::new();
    let load_start = procfs::load_average();
    let several = args.topologies.len() > 1;
    let mut targets = Targets {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Targets::default()
    };
    for &topology in &args.topologies {
        if several {
            let _ = writeln!(md, "## {}\n", topology.title());
        }
        if args.raw {
            raw_limits(&args, topology, ticks, &mut md, &mut targets).await;
        }
        if args.e2e {
            end_to_end(&args, topology, ticks, &mut md, &mut targets).await;
        }
    }
    let head = format!(
        "Load average (1/5/15 min) at the start: {load_start}; at the end: {}. NATS: {}.\n\n",
        procfs::load_average(),
        args.topologies
            .iter()
            .map(|t| t.title())
            .collect::<Vec<_>>()
            .join("; then ")
    );
    let mut summary = String::new();
    targets.markdown(&mut summary);
    let md = head + &summary + &md;
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, &md).expect("write --out");
    }
}
