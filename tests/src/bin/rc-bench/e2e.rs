//! End to end: the six release service binaries as processes, a fake data plane, one workspace
//! wired track → automation → send → inbox → lifecycle events → forwarder → data plane. Each
//! scenario offers its events over HTTP and waits for their effects, which it observes on the
//! `courier.<ws>.…` subjects the services publish (a core NATS subscription) and, for sends, at
//! the data plane.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rc_proto::{Message, MessageEvent, ProfileUpdated, TenantUpdated};
use rc_tests::Stack;
use rc_tests::dataplane::DataPlane;
use serde_json::{Value, json};

use crate::load::{self, Body, percentile_ms};
use crate::procfs::{CpuSnapshot, Watched};
use crate::redis_stats::CommandStats;
use crate::varz::Traffic;

pub const WORKSPACE: &str = "bench";
const WRITE_KEY: &str = "bench-write-key";

/// The services in the order of the table's columns.
pub const SERVICES: [&str; 6] = [
    "ingress",
    "profiles",
    "accounts",
    "automations",
    "delivery",
    "forwarder",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    Identify,
    Group,
    MappedTrack,
    InlineTrack,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Identify,
        Scenario::Group,
        Scenario::MappedTrack,
        Scenario::InlineTrack,
    ];

    pub fn from_flag(s: &str) -> Option<Self> {
        match s {
            "identify" => Some(Scenario::Identify),
            "group" => Some(Scenario::Group),
            "track" => Some(Scenario::MappedTrack),
            "inline" => Some(Scenario::InlineTrack),
            _ => None,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Identify => "identify → profile",
            Scenario::Group => "group → tenant",
            Scenario::MappedTrack => {
                "track mapped to an automation → send → inbox DELIVERED → forwarder → data plane"
            }
            Scenario::InlineTrack => {
                "inline track (properties.courier.automation) → send → inbox DELIVERED → forwarder → data plane"
            }
        }
    }

    /// The subject kind whose arrival is the effect.
    /// The scenario in a column header.
    pub fn short(self) -> &'static str {
        match self {
            Scenario::Identify => "identify",
            Scenario::Group => "group",
            Scenario::MappedTrack => "mapped track",
            Scenario::InlineTrack => "inline track",
        }
    }

    fn effect_kind(self) -> &'static str {
        match self {
            Scenario::Identify => "profile.updated",
            Scenario::Group => "tenant.updated",
            Scenario::MappedTrack | Scenario::InlineTrack => "message.delivered",
        }
    }

    /// The id an effect names (user id, tenant id or recipient), from its protobuf payload.
    fn effect_id(self, payload: &[u8]) -> Option<String> {
        match self {
            Scenario::Identify => ProfileUpdated::decode(payload).ok().map(|p| p.user_id),
            Scenario::Group => TenantUpdated::decode(payload).ok().map(|t| t.tenant_id),
            Scenario::MappedTrack | Scenario::InlineTrack => MessageEvent::decode(payload)
                .ok()
                .filter(|m| m.status == "DELIVERED")
                .map(|m| m.recipient),
        }
    }

    fn forwarded(self) -> bool {
        matches!(self, Scenario::MappedTrack | Scenario::InlineTrack)
    }

    /// Event `i` of a phase tagged `tag`; its effect names `{tag}-{i}`. ~0.8–1 KB, like what
    /// RudderStack sends.
    pub fn body(self, tag: &str) -> Body {
        let tag = tag.to_string();
        Arc::new(move |i| {
            let id = format!("{tag}-{i}");
            let context = json!({
                "library": {"name": "analytics-node", "version": "1.3.0"},
                "ip": "203.0.113.24",
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            });
            let common = json!({
                "messageId": format!("m-{id}"),
                "anonymousId": "0b6f3c2e-91d4-4a57-8e1f-5c2a7d90b318",
                "channel": "server",
                "originalTimestamp": "2026-03-02T09:14:05.120Z",
                "sentAt": "2026-03-02T09:14:05.300Z",
                "context": context,
                "integrations": {"All": true},
            });
            let mut event = match self {
                Scenario::Identify => json!({
                    "type": "identify", "userId": id,
                    "traits": {"email": format!("{id}@example.org"), "name": "Ada Byron", "plan": "team", "company": "Analytical Engines Ltd", "logins": i},
                }),
                Scenario::Group => json!({
                    "type": "group", "userId": format!("u-{id}"), "groupId": id,
                    "traits": {"name": format!("Group {id}"), "plan": "enterprise", "employees": 42, "industry": "Engines"},
                }),
                Scenario::MappedTrack => json!({
                    "type": "track", "event": "Order Completed", "userId": id,
                    "properties": order(i),
                }),
                Scenario::InlineTrack => {
                    let mut properties = order(i);
                    properties["courier"] = json!({"automation": {"steps": [
                        {"action": "send", "recipient": "refs.data.userId", "template": "WELCOME"}
                    ]}});
                    json!({"type": "track", "event": "Inline Bench", "userId": id, "properties": properties})
                }
            };
            if let (Some(e), Some(c)) = (event.as_object_mut(), common.as_object()) {
                e.extend(c.clone());
            }
            event.to_string()
        })
    }
}

fn order(i: u64) -> Value {
    json!({
        "order_id": format!("ord_{i}"), "total": 42.5, "currency": "EUR", "coupon": "WELCOME10",
        "products": [
            {"sku": "sku-1", "name": "Widget", "price": 20.0, "quantity": 1},
            {"sku": "sku-2", "name": "Gadget", "price": 22.5, "quantity": 1}
        ],
    })
}

/// The running stack: services as processes, their ports, the data plane, the API key.
pub struct Deployment {
    pub children: Vec<(&'static str, Child)>,
    pub ports: BTreeMap<&'static str, u16>,
    pub data_plane: DataPlane,
    pub key: String,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Deployment {
    pub fn watched(&self, stack: &Stack) -> Vec<Watched> {
        let mut w: Vec<Watched> = self
            .children
            .iter()
            .map(|(name, c)| Watched::new(name, c.id()))
            .collect();
        w.push(Watched::nodes("nats-server", &stack.nats.pids()));
        w.push(Watched::new(
            "redis-server",
            stack.redis.pid().expect("redis pid"),
        ));
        w
    }

    fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }
}

/// Starts a release binary next to this one (`rc-<name>`) on a free port and waits for
/// `/readyz`.
pub async fn start_service(name: &str, env: &[(&str, String)]) -> (Child, u16) {
    let bin = std::env::current_exe()
        .expect("current exe")
        .parent()
        .expect("bin dir")
        .join(format!("rc-{name}"));
    let port = rc_tests::free_port();
    let mut cmd = Command::new(&bin);
    cmd.env("RC_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RC_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "start {}: {e} (run `cargo build --release --bins`)",
            bin.display()
        )
    });
    wait_ready(port, name).await;
    (child, port)
}

pub async fn wait_ready(port: u16, what: &str) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&url)
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "{what} not ready on :{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every service on `stack`, the data plane, and the workspace's configuration.
/// The mapped track's inbox provider, notification template and automation template (the
/// end-to-end setup and the floor's).
pub fn inbox_provider() -> Value {
    json!({"type": "inbox", "channels": ["inbox", "email", "sms", "push", "chat"]})
}

pub fn welcome_notification() -> Value {
    json!({"id": "WELCOME", "name": "Welcome", "published": true,
           "channels": {"inbox": {"title": "Welcome", "body": "Hello {{userId}}, your order {{order_id}}"}}})
}

pub fn welcome_automation() -> Value {
    json!({"id": "welcome", "name": "Welcome", "steps": [
        {"action": "send", "recipient": "refs.data.userId", "template": "WELCOME"}]})
}

pub async fn deploy(stack: &Stack) -> Deployment {
    let key = stack.workspace(WORKSPACE).await;
    let data_plane = DataPlane::start(WRITE_KEY).await;
    let mut env = stack.service_env();
    env.extend([
        (
            "RC_SECRETS__ENCRYPTION_KEY",
            rc_tests::forwarder::new_encryption_key(),
        ),
        // The fake data plane is plain http on loopback.
        ("RC_OUTBOUND__ALLOW_PRIVATE_NETWORKS", "true".into()),
        ("RC_FORWARDER__ALLOW_HTTP", "true".into()),
        // The bench offers one workspace more than its rate limit: it measures capacity.
        ("RC_INGRESS__WORKSPACE_EVENTS_PER_SEC", "0".into()),
    ]);
    let mut children = Vec::new();
    let mut ports = BTreeMap::new();
    for name in SERVICES {
        let (child, port) = start_service(name, &env).await;
        children.push((name, child));
        ports.insert(name, port);
    }
    let d = Deployment {
        children,
        ports,
        data_plane,
        key,
    };
    let client = reqwest::Client::new();
    let setup = [
        (
            reqwest::Method::PUT,
            d.url("delivery", "/providers/inbox"),
            inbox_provider(),
        ),
        (
            reqwest::Method::POST,
            d.url("automations", "/notifications/templates"),
            welcome_notification(),
        ),
        (
            reqwest::Method::POST,
            d.url("automations", "/automations/templates"),
            welcome_automation(),
        ),
        (
            reqwest::Method::POST,
            d.url("automations", "/automations/mappings"),
            json!({"event": "Order Completed", "template_id": "welcome"}),
        ),
        (
            reqwest::Method::PUT,
            d.url("forwarder", "/integrations/rudderstack"),
            json!({"writeKey": WRITE_KEY, "dataPlaneUrl": d.data_plane.url()}),
        ),
    ];
    for (method, url, body) in setup {
        let r = client
            .request(method, &url)
            .bearer_auth(&d.key)
            .json(&body)
            .send()
            .await
            .expect("setup request");
        let status = r.status();
        assert!(
            status.is_success(),
            "setup {url}: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }
    // The forwarder and the consumers pick the configuration up on their own schedule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    d
}

/// One phase of a scenario: offered at a fixed rate (latency is meaningful) or as a burst
/// (throughput at saturation).
#[derive(Clone, Copy)]
pub enum Phase {
    Paced {
        rate: f64,
    },
    Burst,
    /// Paced at the target rate, which may be above capacity: p99 there, and memory
    /// while the backlog it builds waits.
    Target {
        rate: f64,
    },
    /// Paced at twice the saturation rate (or more): memory while that backlog waits.
    Overload {
        rate: f64,
    },
}

pub struct PhaseResult {
    pub scenario: Scenario,
    pub phase: Phase,
    pub accepted: u64,
    pub rejected_requests: u64,
    pub effects: u64,
    pub forwarded: u64,
    /// From the first request to the last effect.
    pub seconds: f64,
    pub cpu_us: Vec<f64>,
    pub p50: f64,
    pub p99: f64,
    pub redis: String,
    /// Every Redis command per event (the floor's table compares them).
    pub commands: String,
    /// nats-server's traffic over the phase.
    pub nats: Traffic,
    /// Each watched process's highest RSS (MiB) seen during the phase, sampled every 100 ms.
    pub peak_rss: Vec<f64>,
    /// The most events accepted but not yet effected at one sample: the backlog the phase built.
    pub peak_backlog: u64,
}

impl PhaseResult {
    pub fn complete(&self) -> bool {
        self.effects == self.accepted
            && (!self.scenario.forwarded() || self.forwarded >= self.accepted)
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run_phase(
    stack: &Stack,
    d: &Deployment,
    watched: &[Watched],
    ticks: f64,
    scenario: Scenario,
    phase: Phase,
    tag: &str,
    n: u64,
) -> PhaseResult {
    let nats = stack.nats_client().await;
    let mut effects_sub = nats
        .subscribe(format!("courier.{WORKSPACE}.{}", scenario.effect_kind()))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let effect_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let seen = Arc::new(AtomicU64::new(0));
    let prefix = format!("{tag}-");
    let watcher = {
        let (effect_at, seen, prefix) = (effect_at.clone(), seen.clone(), prefix.clone());
        tokio::spawn(async move {
            while let Some(m) = effects_sub.next().await {
                let Some(i) = scenario
                    .effect_id(&m.payload)
                    .and_then(|id| id.strip_prefix(&prefix)?.parse::<usize>().ok())
                else {
                    continue;
                };
                let at = base.elapsed().as_micros() as u64 + 1;
                if let Some(slot) = effect_at.get(i)
                    && slot
                        .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut redis = stack.redis_conn_raw().await;
    let stats0 = CommandStats::read(&mut redis).await;
    let monitor_ports = stack.nats.monitor_ports();
    let traffic0 = Traffic::read(&monitor_ports).await;
    let cpu0 = CpuSnapshot::take(watched);
    let url = d.url("ingress", "/inbound/rudderstack");
    let body = scenario.body(tag);
    let sampler = Sampler::start(watched, sent_at.clone(), seen.clone());
    let sent = match phase {
        Phase::Paced { rate } | Phase::Target { rate } | Phase::Overload { rate } => {
            load::paced(&url, &d.key, n, rate, 512, body, base, sent_at.clone()).await
        }
        Phase::Burst => load::burst(&url, &d.key, n, 20, 16, body).await,
    };
    let accepted = sent.accepted.iter().filter(|a| **a).count() as u64;
    // Wait for every accepted event's effect (and, for sends, its lifecycle event at the data
    // plane), or until nothing has moved for 30 s.
    let delivered_here = |e: &Value| {
        e["event"] == "Message Delivered"
            && e["userId"].as_str().is_some_and(|u| u.starts_with(&prefix))
    };
    let mut last = (0, 0);
    let mut last_move = Instant::now();
    let mut forwarded = 0;
    for poll in 0u64.. {
        let effects = seen.load(Ordering::Relaxed);
        // Counting at the data plane scans every event it kept: not on every poll, the bench
        // shares the cores with what it measures.
        if scenario.forwarded() && (effects >= accepted || poll % 10 == 0) {
            forwarded = d.data_plane.count_where(delivered_here) as u64;
        }
        if effects >= accepted && (!scenario.forwarded() || forwarded >= accepted) {
            break;
        }
        if (effects, forwarded) != last {
            last = (effects, forwarded);
            last_move = Instant::now();
        } else if last_move.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{tag}: stalled at {effects}/{accepted} effects, {forwarded} at the data plane"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seconds = base.elapsed().as_secs_f64();
    let cpu1 = CpuSnapshot::take(watched);
    let stats1 = CommandStats::read(&mut redis).await;
    let traffic1 = Traffic::read(&monitor_ports).await;
    watcher.abort();
    let (peak_rss, peak_backlog) = sampler.finish().await;
    let mut latencies: Vec<u32> = (0..n as usize)
        .filter_map(|i| {
            let s = sent_at[i].load(Ordering::Relaxed);
            let e = effect_at[i].load(Ordering::Relaxed);
            (s > 0 && e > 0).then(|| e.saturating_sub(s).min(u32::MAX as u64) as u32)
        })
        .collect();
    latencies.sort_unstable();
    PhaseResult {
        scenario,
        phase,
        accepted,
        rejected_requests: sent.non_2xx + sent.errors,
        effects: seen.load(Ordering::Relaxed),
        forwarded,
        seconds,
        cpu_us: cpu0.per_event_us(&cpu1, accepted, ticks),
        p50: percentile_ms(&latencies, 0.50),
        p99: percentile_ms(&latencies, 0.99),
        redis: stats0.summary(&stats1, accepted, 4),
        commands: stats0.summary(&stats1, accepted, usize::MAX),
        nats: traffic1.since(&traffic0),
        peak_rss,
        peak_backlog,
    }
}

/// Samples the watched processes' RSS and the backlog (requests sent, effects not yet seen)
/// every 100 ms over a phase: memory at overload is read while the backlog is there, not after.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<f64>, u64)>,
}

impl Sampler {
    fn start(watched: &[Watched], sent_at: Arc<Vec<AtomicU64>>, seen: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = vec![0.0f64; pids.len()];
                let mut backlog = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (p, pid) in peak.iter_mut().zip(&pids) {
                        *p = p.max(crate::procfs::memory_mib(*pid, "VmRSS"));
                    }
                    let sent = sent_at
                        .iter()
                        .filter(|s| s.load(Ordering::Relaxed) > 0)
                        .count() as u64;
                    backlog = backlog.max(sent.saturating_sub(seen.load(Ordering::Relaxed)));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (peak, backlog)
            }
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> (Vec<f64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

/// The bench's own redis connection (for INFO), not the services' wrapper.
pub trait RawRedis {
    async fn redis_conn_raw(&self) -> redis::aio::MultiplexedConnection;
}

impl RawRedis for Stack {
    async fn redis_conn_raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }
}
