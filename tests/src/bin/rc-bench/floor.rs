//! The floors: what nats-server and redis-server cost per event when one minimal client process
//! drives them with the same operations the services perform, at the same offered rate, count
//! and sizes. The client runs the services' own code for each share, over one NATS and one Redis
//! connection per service as they have, each durable created with its service's configuration
//! (`ConsumerSpec::consumer_config`), pulled with its batch and handled with its concurrency, on
//! one tokio worker thread as the services run (`runtime.worker_threads`).
//!
//! Identify (`rc-bench --floor-worker …`):
//! - the ingress's share: the event normalized by the ingress's own parser into the same
//!   envelope, published to `events.<ws>.identify` with its `Nats-Msg-Id`, the ack awaited
//!   (512 in flight; no HTTP);
//! - profiles' share: its identify durable running profiles' own identify handler (its merge
//!   script, the `profile.updated` publish awaiting its ack), then the ack;
//! - automations' share: its events durable running automations' own event handler (the catalog
//!   tally flushed once a second, the mapping looked up in its cache), then the ack.
//!
//! The mapped track (`rc-bench --floor-worker-track …`): the same publish, automations' share
//! (the run executes in the client), delivery's own worker on its `message.requested` durable,
//! and the forwarder's own mapping and batch POST to the fake data plane.
//!
//! Not included: HTTP, authentication, the shared consumer's bookkeeping (in-flight set, spill
//! lane, progress acks), metrics and logs. The client runs as a child process so its CPU is
//! counted apart from the load generator's. The same run reads nats-server's `/varz` and Redis
//! `INFO commandstats`, so the bench's table shows the floor sends the messages and commands the
//! services did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use prost::Message as _;
use rc_common::consumer::{ConsumerSpec, Handler as _};
use rc_common::subjects;
use rc_tests::Stack;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::e2e::RawRedis as _;
use crate::e2e::{Scenario, WORKSPACE, inbox_provider, welcome_automation, welcome_notification};
use crate::procfs::{CpuSnapshot, Watched};
use crate::redis_stats::CommandStats;
use crate::varz::Traffic;

pub struct FloorResult {
    /// nats-server, redis-server, the floor client: CPU µs per event.
    pub cpu_us: [f64; 3],
    pub events_per_s: f64,
    /// Every Redis command, per event (`INFO commandstats`).
    pub commands: String,
    /// nats-server's traffic over the floor.
    pub nats: Traffic,
}

/// A fresh nats-server and redis-server with the streams the services provision.
async fn fresh_stack() -> Stack {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    rc_common::nats::ensure_streams(&js, &stack.nats.settings())
        .await
        .expect("streams");
    stack
}

/// Runs the floor on a fresh nats-server and redis-server: `count` identify events at `rate`.
pub async fn run(count: u64, rate: f64, ticks: f64, http: bool, per_service: bool) -> FloorResult {
    let stack = fresh_stack().await;
    // The bench's effect watcher, as in the end-to-end phase (nats-server delivers to it).
    let nats = stack.nats_client().await;
    let mut effects = nats
        .subscribe(subjects::courier_subject(
            WORKSPACE,
            subjects::kinds::PROFILE_UPDATED,
        ))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let seen = Arc::new(AtomicU64::new(0));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while effects.next().await.is_some() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let args = ["--floor-worker", &stack.nats.url(), &stack.redis.url()];
    let http = http.then_some(Scenario::Identify);
    let roles = per_service.then_some(&["ingress", "profiles", "automations"][..]);
    let result = measure(&stack, &args, count, rate, ticks, http, roles, async || {
        // Every profile.updated reached the watcher too.
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    watcher.abort();
    result
}

/// Runs the client (`args`, then count and rate, then `extra`) and reads the servers' CPU from
/// its start until it reports and `settle` returns. With `http`, the client takes the events
/// over HTTP (see [`ingress_share`]) and this process offers them, as the load generator offers
/// them to the ingress. With `roles`, one client process per service (that service's share
/// each), their CPU summed.
#[allow(clippy::too_many_arguments)]
async fn measure(
    stack: &Stack,
    args: &[&str],
    count: u64,
    rate: f64,
    ticks: f64,
    http: Option<Scenario>,
    roles: Option<&[&str]>,
    settle: impl AsyncFnOnce(),
) -> FloorResult {
    let servers = [
        Watched::nodes("nats-server", &stack.nats.pids()),
        Watched::new("redis-server", stack.redis.pid().expect("redis pid")),
    ];
    let monitor_ports = stack.nats.monitor_ports();
    let mut redis = stack.redis_conn_raw().await;
    let stats0 = CommandStats::read(&mut redis).await;
    let traffic0 = Traffic::read(&monitor_ports).await;
    let before = CpuSnapshot::take(&servers);
    let started = Instant::now();
    let (count_arg, rate_arg) = (count.to_string(), rate.to_string());
    let mut all: Vec<&str> = args[..3].to_vec();
    all.extend([count_arg.as_str(), rate_arg.as_str()]);
    all.extend(&args[3..]);
    let port = http.map(|_| rc_tests::free_port());
    let mut workers: Vec<Worker> = match roles {
        None => vec![Worker::spawn(&all, port, None)],
        Some(roles) => roles
            .iter()
            .map(|r| Worker::spawn(&all, port.filter(|_| *r == "ingress"), Some(r)))
            .collect(),
    };
    if let (Some(scenario), Some(port)) = (http, port) {
        for w in workers.iter_mut().filter(|w| w.serves) {
            w.wait_for("listening").await;
        }
        let sent_at = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let url = format!("http://127.0.0.1:{port}/inbound/rudderstack");
        let body = scenario.body("floor");
        let sent =
            crate::load::paced(&url, "", count, rate, 512, body, Instant::now(), sent_at).await;
        assert_eq!(
            sent.non_2xx + sent.errors,
            0,
            "the floor's HTTP share failed requests"
        );
    }
    let mut client_ticks = 0u64;
    for w in &mut workers {
        client_ticks += w
            .wait_for("done ")
            .await
            .trim()
            .parse::<u64>()
            .expect("ticks");
    }
    settle().await;
    let seconds = started.elapsed().as_secs_f64();
    let after = CpuSnapshot::take(&servers);
    let traffic1 = Traffic::read(&monitor_ports).await;
    let stats1 = CommandStats::read(&mut redis).await;
    let servers_us = before.per_event_us(&after, count, ticks);
    FloorResult {
        cpu_us: [
            servers_us[0],
            servers_us[1],
            client_ticks as f64 / ticks * 1e6 / count as f64,
        ],
        events_per_s: count as f64 / seconds,
        commands: stats0.summary(&stats1, count, usize::MAX),
        nats: traffic1.since(&traffic0),
    }
}

/// The identify floor's client (`rc-bench --floor-worker NATS_URL REDIS_URL COUNT RATE`).
pub async fn worker(nats_url: &str, redis_url: &str, count: u64, rate: f64) {
    // One NATS and one Redis connection per service, as each service has its own.
    let (js, redis) = connect(nats_url, redis_url).await;
    let settings = profiles::Settings::default();
    let [spec, _] = profiles::consumer_specs(&settings, &redis);
    let identify = Arc::new(profiles::events::IdentifyHandler {
        redis,
        publisher: profiles::Publisher { js: js.clone() },
        max_profile_bytes: settings.profiles.max_profile_bytes,
    });
    let p = if role("profiles") {
        Some(
            each_message(&js, &spec, count, move |m| {
                let identify = identify.clone();
                async move {
                    identify.handle(&m).await;
                    m
                }
            })
            .await,
        )
    } else {
        None
    };
    let (js, redis) = connect(nats_url, redis_url).await;
    let a = if role("automations") {
        Some(automations_share(&js, &redis, count).await)
    } else {
        None
    };
    if role("ingress") {
        let (js, _) = connect(nats_url, redis_url).await;
        ingress_share(&js, Scenario::Identify, "identify", count, rate).await;
    }
    for share in [p, a].into_iter().flatten() {
        share.await.expect("share");
    }
    report_and_wait().await;
}

/// Which services' shares this client runs (`ROLES_VAR`, comma-separated; all when unset):
/// the bench runs the floor as one process, or as one process per service.
fn role(name: &str) -> bool {
    std::env::var(ROLES_VAR).map_or(true, |roles| roles.split(',').any(|r| r == name))
}

const ROLES_VAR: &str = "RC_BENCH_FLOOR_ROLES";

/// Automations' share: its own event handler (catalog tally flushed once a second, mappings from
/// its cache, runs executed in this process) on a durable of its subjects.
async fn automations_share(
    js: &async_nats::jetstream::Context,
    redis: &rc_common::redis::RedisConn,
    count: u64,
) -> tokio::task::JoinHandle<()> {
    rc_common::outbound::install_default_crypto_provider();
    let engine = automations::Engine {
        redis: redis.clone(),
        js: js.clone(),
        http: reqwest::Client::new(),
        lease_ms: 30_000,
        retention_ms: 86_400_000,
        allow_private_networks: true,
        config: Default::default(),
    };
    let tally = Arc::new(automations::catalog::Tally::default());
    // Never triggered: the flush runs until the bench kills this process.
    let shutdown = rc_common::Shutdown::new();
    tokio::spawn(automations::catalog::flush_every(
        tally.clone(),
        redis.clone(),
        shutdown,
    ));
    let events = Arc::new(automations::events::EventHandler { engine, tally });
    let spec = automations::consumer_spec(&automations::Settings::default());
    each_message(js, &spec, count, move |m| {
        let events = events.clone();
        async move {
            events.handle(&m).await;
            m
        }
    })
    .await
}

/// The client's connections to the floor's servers.
async fn connect(
    nats_url: &str,
    redis_url: &str,
) -> (async_nats::jetstream::Context, rc_common::redis::RedisConn) {
    let client = async_nats::connect(rc_common::nats::server_list(nats_url))
        .await
        .expect("nats");
    let redis = rc_common::redis::connect(&rc_common::config::RedisSettings {
        url: redis_url.to_string(),
        ..Default::default()
    })
    .await
    .expect("redis");
    (async_nats::jetstream::new(client), redis)
}

/// Prints the client's CPU ticks for the bench, then keeps the connections open until the bench
/// has read the servers' CPU and kills it.
async fn report_and_wait() {
    println!("done {}", crate::procfs::cpu_ticks(std::process::id()));
    std::future::pending::<()>().await;
}

/// The ingress's share: `count` events of `scenario`, paced at `rate`, normalized by the
/// ingress's own parser and published to `events.<ws>.<kind>` with their `Nats-Msg-Id`, acks
/// awaited (512 in flight, as the ingress allows).
async fn publish_paced(
    js: &async_nats::jetstream::Context,
    scenario: Scenario,
    kind: &str,
    count: u64,
    rate: f64,
) {
    let normalizer = ingress::event::Normalizer {
        max_event_bytes: 32 * 1024,
        max_batch_events: 1,
    };
    let body = scenario.body("floor");
    let in_flight = Arc::new(Semaphore::new(512));
    let base = Instant::now();
    for i in 0..count {
        let at = base + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let raw = bytes::Bytes::from(body(i));
        let Ok(ingress::event::Parsed::Single(event)) =
            normalizer.parse_body(WORKSPACE, &raw, time::OffsetDateTime::now_utc())
        else {
            panic!("the bench's events are valid, one at a time")
        };
        let envelope = event.envelope;
        let subject = subjects::event_subject(WORKSPACE, kind);
        let msg_id = subjects::event_msg_id(WORKSPACE, &envelope.message_id);
        let permit = in_flight.clone().acquire_owned().await.expect("open");
        let ack: PublishAckFuture = js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(envelope.encode_to_vec().into())
                    .message_id(msg_id),
            )
            .await
            .expect("publish");
        tokio::spawn(async move {
            ack.await.expect("stored");
            drop(permit);
        });
    }
    // Every ack back.
    let _ = in_flight.acquire_many(512).await.expect("open");
}

/// The track path's floor: a track mapped to an automation that sends to the inbox, with the
/// forwarder on. The client runs automations' own event handler (its run executes in the same
/// process), delivery's own worker on `message.requested`, and for the forwarder a durable
/// consumer of the same subjects whose messages are turned into RudderStack events by the
/// forwarder's own functions and POSTed to the fake data plane in batches (the forwarder's default
/// size and linger). Setup goes through the services' store functions.
pub async fn run_track(
    count: u64,
    rate: f64,
    ticks: f64,
    http: bool,
    per_service: bool,
) -> FloorResult {
    let stack = fresh_stack().await;
    let redis = stack.redis_conn().await;
    let ws = WORKSPACE;
    let (welcome, notification) = (welcome_automation(), welcome_notification());
    use automations::store;
    store::put_doc(&redis, &store::templates_key(ws), "welcome", &welcome)
        .await
        .expect("template");
    store::put_doc(
        &redis,
        &store::notifications_key(ws),
        "WELCOME",
        &notification,
    )
    .await
    .expect("notification");
    let entry = automations::catalog::entry_key(rc_proto::EventType::Track, "Order Completed");
    store::link(&redis, ws, &entry, "welcome")
        .await
        .expect("mapping");
    let key = rc_tests::forwarder::new_encryption_key();
    let cipher = rc_common::secrets::Cipher::from_settings(&rc_common::secrets::SecretsSettings {
        encryption_key: key.clone(),
    })
    .expect("cipher");
    let input: delivery::providers::ProviderInput =
        serde_json::from_value(inbox_provider()).expect("provider");
    delivery::providers::Registry::new(redis.clone(), cipher, true)
        .put(ws, "inbox", input)
        .await
        .expect("inbox provider");
    let data_plane = rc_tests::dataplane::DataPlane::start(TRACK_WRITE_KEY).await;

    let nats_url = stack.nats.url();
    let redis_url = stack.redis.url();
    let batch_url = format!("{}/v1/batch", data_plane.url());
    let args = [
        "--floor-worker-track",
        nats_url.as_str(),
        redis_url.as_str(),
        key.as_str(),
        batch_url.as_str(),
    ];
    let http = http.then_some(Scenario::MappedTrack);
    let roles = per_service.then_some(&["ingress", "automations", "delivery", "forwarder"][..]);
    let result = measure(&stack, &args, count, rate, ticks, http, roles, async || {}).await;
    let delivered = data_plane.count_where(|e| e["event"] == "Message Delivered") as u64;
    assert!(
        delivered >= count,
        "the track floor forwarded {delivered} of {count} Message Delivered"
    );
    result
}

const TRACK_WRITE_KEY: &str = "floor-write-key";

/// A floor client process (`rc-bench <args>`), killed when dropped.
struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// It takes the events over HTTP.
    serves: bool,
}

impl Worker {
    /// With `http_port`, the client takes its events over HTTP on that port; with `role`, it
    /// runs that service's share only.
    fn spawn(args: &[&str], http_port: Option<u16>, role: Option<&str>) -> Self {
        let exe = std::env::current_exe().expect("own path");
        let mut command = tokio::process::Command::new(exe);
        command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(port) = http_port {
            command.env(HTTP_PORT_VAR, port.to_string());
        }
        if let Some(role) = role {
            command.env(ROLES_VAR, role);
        }
        let mut child = command.spawn().expect("floor worker");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Worker {
            child,
            lines,
            serves: http_port.is_some(),
        }
    }

    /// The rest of the first line the client prints that starts with `prefix`.
    async fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .expect("worker output")
                .expect("the floor worker ended without its result");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Set for a floor client that takes its events over HTTP on this port.
const HTTP_PORT_VAR: &str = "RC_BENCH_FLOOR_HTTP_PORT";

/// The ingress's share: over HTTP when the bench asked for it (`HTTP_PORT_VAR`), else
/// published from here at `rate`.
async fn ingress_share(
    js: &async_nats::jetstream::Context,
    scenario: Scenario,
    kind: &'static str,
    count: u64,
    rate: f64,
) {
    match std::env::var(HTTP_PORT_VAR)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        Some(port) => serve_ingress_share(js.clone(), kind, port, count).await,
        None => publish_paced(js, scenario, kind, count, rate).await,
    }
}

/// The ingress's share behind HTTP, as the bare handler of the raw limits does it but with the
/// ingress's own parser and envelope: `POST /inbound/rudderstack` → parse, normalize, publish
/// with the `Nats-Msg-Id`, await the ack, 200. No authentication, batches or limits.
async fn serve_ingress_share(
    js: async_nats::jetstream::Context,
    kind: &'static str,
    port: u16,
    count: u64,
) {
    use axum::{Router, extract::State, http::StatusCode, routing::post};
    type Share = (async_nats::jetstream::Context, &'static str, Arc<AtomicU64>);
    async fn handle(State((js, kind, stored)): State<Share>, body: bytes::Bytes) -> StatusCode {
        let normalizer = ingress::event::Normalizer {
            max_event_bytes: 32 * 1024,
            max_batch_events: 1,
        };
        let Ok(ingress::event::Parsed::Single(event)) =
            normalizer.parse_body(WORKSPACE, &body, time::OffsetDateTime::now_utc())
        else {
            return StatusCode::BAD_REQUEST;
        };
        let envelope = event.envelope;
        let msg_id = subjects::event_msg_id(WORKSPACE, &envelope.message_id);
        let publish = js
            .send_publish(
                subjects::event_subject(WORKSPACE, kind),
                PublishMessage::build()
                    .payload(envelope.encode_to_vec().into())
                    .message_id(msg_id),
            )
            .await;
        let ok = match publish {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if ok {
            stored.fetch_add(1, Ordering::Relaxed);
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
    let stored = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/inbound/rudderstack", post(handle))
        .with_state((js, kind, stored.clone()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("listening");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    while stored.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `handle` on every message of the service's durable (`spec`: created with its
/// configuration, pulled with its batch, its concurrency of handlers in flight), acking after
/// each, until `count` were handled.
async fn each_message<F, Fut>(
    js: &async_nats::jetstream::Context,
    spec: &ConsumerSpec,
    count: u64,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(async_nats::jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = async_nats::jetstream::Message> + Send + 'static,
{
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(spec.stream)
        .await
        .expect("stream")
        .create_consumer(spec.consumer_config())
        .await
        .expect("consumer");
    let (batch, concurrency) = (spec.pull_batch(), spec.concurrency.max(1));
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .expect("pull");
        let slots = Arc::new(Semaphore::new(concurrency));
        let done = Arc::new(AtomicU64::new(0));
        for _ in 0..count {
            let message = messages.next().await.expect("open").expect("message");
            let permit = slots.clone().acquire_owned().await.expect("open");
            let (handle, done) = (handle.clone(), done.clone());
            tokio::spawn(async move {
                let message = handle(message).await;
                message.ack().await.expect("ack");
                done.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        while done.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The track floor's client (`rc-bench --floor-worker-track NATS REDIS COUNT RATE KEY URL`).
pub async fn worker_track(args: &[String]) {
    let (nats_url, redis_url) = (&args[0], &args[1]);
    let count: u64 = args[2].parse().expect("count");
    let rate: f64 = args[3].parse().expect("rate");
    let (encryption_key, batch_url) = (&args[4], &args[5]);
    rc_common::outbound::install_default_crypto_provider();

    // Automations: its own event handler; runs execute in this process.
    let (js, redis) = connect(nats_url, redis_url).await;
    let a = if role("automations") {
        Some(automations_share(&js, &redis, count).await)
    } else {
        None
    };

    // Delivery: its own worker.
    let mut settings = delivery::Settings::default();
    settings.secrets.encryption_key = encryption_key.clone();
    settings.outbound.allow_private_networks = true;
    let cipher = rc_common::secrets::Cipher::from_settings(&settings.secrets).expect("cipher");
    let (js, redis) = connect(nats_url, redis_url).await;
    let worker = delivery::worker(&settings, redis, js.clone(), cipher).expect("worker");
    let d = if role("delivery") {
        Some(
            each_message(&js, &delivery::consumer_spec(&settings), count, move |m| {
                let worker = worker.clone();
                async move {
                    worker.handle(&m).await;
                    m
                }
            })
            .await,
        )
    } else {
        None
    };

    // Forwarder: its own durable for an integration sending every status, its events mapped by
    // its own functions, batched as it batches.
    let f = if !role("forwarder") {
        None
    } else {
        let (js, _) = connect(nats_url, redis_url).await;
        let defaults = forwarder::ForwarderSettings::default();
        let integration = forwarder::store::Integration {
            write_key_sealed: String::new(),
            data_plane_url: batch_url.clone(),
            enabled: true,
            statuses: forwarder::mapping::SENDABLE_STATUSES
                .iter()
                .map(|(s, _)| s.to_string())
                .collect(),
            profile_updates: false,
            tenant_updates: false,
            paused_reason: None,
            updated_at: String::new(),
            version: 1,
        };
        let config = forwarder::worker::consumer_config(
            &defaults,
            WORKSPACE,
            &integration,
            DeliverPolicy::All,
        );
        let consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(subjects::COURIER_STREAM)
            .await
            .expect("stream")
            .create_consumer(config)
            .await
            .expect("consumer");
        let url = batch_url.clone();
        let (max_events, linger_for) = (
            defaults.batch_max_events,
            Duration::from_millis(defaults.linger_ms),
        );
        Some(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(max_events)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .expect("pull");
            let mut delivered = 0;
            while delivered < count {
                let mut batch = Vec::new();
                let linger = tokio::time::sleep(linger_for);
                tokio::pin!(linger);
                while batch.len() < max_events {
                    tokio::select! {
                        m = messages.next() => batch.push(m.expect("open").expect("message")),
                        _ = &mut linger => break,
                    }
                }
                let now = time::OffsetDateTime::now_utc();
                let events: Vec<Vec<u8>> = batch
                    .iter()
                    .filter_map(|m| {
                        if m.subject.ends_with(".message.delivered") {
                            delivered += 1;
                        }
                        forwarder::worker::batch::event_json(&m.subject, &m.payload, now)
                            .ok()
                            .flatten()
                    })
                    .collect();
                if !events.is_empty() {
                    let body =
                        forwarder::worker::dataplane::batch_body(events.iter().map(Vec::as_slice));
                    let target = forwarder::worker::dataplane::Target {
                        url: &url,
                        write_key: TRACK_WRITE_KEY,
                        allow_private_networks: true,
                    };
                    forwarder::worker::dataplane::post_batch(&http, &target, &body).await;
                }
                for m in batch {
                    m.ack().await.expect("ack");
                }
            }
        }))
    };

    // The ingress's share, as for identify.
    let (js, _) = connect(nats_url, redis_url).await;
    if role("ingress") {
        ingress_share(&js, Scenario::MappedTrack, "track", count, rate).await;
    }
    for share in [a, d, f].into_iter().flatten() {
        share.await.expect("share");
    }
    report_and_wait().await;
}
