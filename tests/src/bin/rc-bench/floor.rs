//! The identify path's floor: what nats-server and redis-server cost per event when one minimal
//! client process drives them with the same operations the services perform for an identify, at
//! the same offered rate, count and sizes, one message at a time per consumer as the services
//! handle them:
//!
//! - the ingress's share: the event normalized by the ingress's own parser into the same
//!   envelope, published to `events.<ws>.identify` with its `Nats-Msg-Id`, the ack awaited
//!   (512 in flight; no HTTP);
//! - profiles' share: a durable pull consumer on EVENTS running profiles' own identify handler
//!   (its merge script, the `profile.updated` publish awaiting its ack), then the ack;
//! - automations' share: a second durable consumer on the same subjects: decode, ack (the
//!   mappings are answered from memory, the catalog counts flushed once a second).
//!
//! Not included: HTTP, authentication, the shared consumer's bookkeeping (in-flight set, spill
//! lane, progress acks), metrics and logs. The client runs as a child process (`rc-bench
//! --floor-worker …`) so its CPU is counted apart from the load generator's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use prost::Message as _;
use rc_common::consumer::Handler as _;
use rc_common::subjects;
use rc_proto::Envelope;
use rc_tests::Stack;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::e2e::{Scenario, WORKSPACE};
use crate::procfs::{CpuSnapshot, Watched};

/// Handlers in flight per consumer, as `consumer_concurrency` defaults to in the services.
pub const CONCURRENCY: usize = 64;

pub struct FloorResult {
    /// nats-server, redis-server, the floor client: CPU µs per event.
    pub cpu_us: [f64; 3],
    pub events_per_s: f64,
}

/// Runs the floor on a fresh nats-server and redis-server: `count` identify events at `rate`.
pub async fn run(count: u64, rate: f64, ticks: f64) -> FloorResult {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    rc_common::nats::ensure_streams(&js, &stack.nats.settings())
        .await
        .expect("streams");
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

    let servers = [
        Watched::nodes("nats-server", &stack.nats.pids()),
        Watched::new("redis-server", stack.redis.pid().expect("redis pid")),
    ];
    let before = CpuSnapshot::take(&servers);
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--floor-worker",
            &stack.nats.url(),
            &stack.redis.url(),
            &count.to_string(),
            &rate.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("floor worker");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The worker prints its own CPU ticks once both consumers have handled every event.
    let client_ticks: u64 = loop {
        let line = lines
            .next_line()
            .await
            .expect("worker output")
            .expect("the floor worker ended without its result");
        if let Some(t) = line.strip_prefix("done ") {
            break t.trim().parse().expect("ticks");
        }
    };
    // Every profile.updated reached the watcher too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = CpuSnapshot::take(&servers);
    let _ = child.kill().await;
    watcher.abort();
    let servers_us = before.per_event_us(&after, count, ticks);
    FloorResult {
        cpu_us: [
            servers_us[0],
            servers_us[1],
            client_ticks as f64 / ticks * 1e6 / count as f64,
        ],
        events_per_s: count as f64 / seconds,
    }
}

/// The floor client (`rc-bench --floor-worker NATS_URL REDIS_URL COUNT RATE`).
pub async fn worker(nats_url: &str, redis_url: &str, count: u64, rate: f64) {
    let client = async_nats::connect(rc_common::nats::server_list(nats_url))
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let redis = rc_common::redis::connect(&rc_common::config::RedisSettings {
        url: redis_url.to_string(),
        ..Default::default()
    })
    .await
    .expect("redis");
    let stream = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .expect("EVENTS");
    let mut consumers = Vec::new();
    for (durable, filters) in [
        ("floor-profiles", vec![subjects::events_of_type("identify")]),
        ("floor-automations", automations::event_filters()),
    ] {
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(durable.into()),
                filter_subjects: filters,
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                max_deliver: -1,
                max_ack_pending: 5_000,
                ..Default::default()
            })
            .await
            .expect("consumer");
        consumers.push(consumer);
    }
    let identify = Arc::new(profiles::events::IdentifyHandler {
        redis,
        publisher: profiles::Publisher { js: js.clone() },
        max_profile_bytes: 64 * 1024,
    });

    let done = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for (i, consumer) in consumers.into_iter().enumerate() {
        let (identify, done) = (identify.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(CONCURRENCY)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .expect("pull");
            let slots = Arc::new(Semaphore::new(CONCURRENCY));
            let mut handled = 0;
            while handled < count {
                let message = messages.next().await.expect("open").expect("message");
                let permit = slots.clone().acquire_owned().await.expect("open");
                let (identify, done) = (identify.clone(), done.clone());
                tokio::spawn(async move {
                    if i == 0 {
                        identify.handle(&message).await;
                    } else {
                        Envelope::decode(message.payload.as_ref()).expect("envelope");
                    }
                    message.ack().await.expect("ack");
                    done.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
                handled += 1;
            }
        }));
    }

    // The ingress's share, paced like the end-to-end phase.
    let normalizer = ingress::event::Normalizer {
        max_event_bytes: 32 * 1024,
        max_batch_events: 1,
    };
    let body = Scenario::Identify.body("floor");
    let in_flight = Arc::new(Semaphore::new(512));
    let base = Instant::now();
    for i in 0..count {
        let at = base + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let raw = bytes::Bytes::from(body(i));
        let Ok(ingress::event::Parsed::Single(event)) =
            normalizer.parse_body(WORKSPACE, &raw, time::OffsetDateTime::now_utc())
        else {
            panic!("the bench's identify is one valid event")
        };
        let envelope = event.envelope;
        let subject = subjects::event_subject(WORKSPACE, "identify");
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
    for l in loops {
        l.await.expect("consumer loop");
    }
    while done.load(Ordering::Relaxed) < 2 * count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("done {}", crate::procfs::cpu_ticks(std::process::id()));
    // Kept alive (connections open) until the bench has read the servers' CPU.
    std::future::pending::<()>().await;
}
