//! The raw limits, measured in the same run: JetStream publish and consume, Redis commands, and a
//! bare HTTP handler (parse, validate, publish, await the JetStream ack) that the ingress is
//! compared against.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use futures::StreamExt;
use rc_common::subjects::{EVENTS_STREAM, event_msg_id, event_subject};
use rc_proto::EventType;
use rc_tests::Stack;

/// A raw figure: how many operations, how fast, and the server's CPU for them.
pub struct RawResult {
    pub ops: u64,
    pub seconds: f64,
    /// CPU seconds of the server process that did the work.
    pub server_cpu_s: f64,
}

impl RawResult {
    pub fn per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    pub fn cpu_us_per_op(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.ops.max(1) as f64
    }
}

/// CPU seconds of every node of a server.
fn cpu_s_all(pids: &[u32], ticks: f64) -> f64 {
    pids.iter().map(|p| cpu_s(*p, ticks)).sum()
}

fn cpu_s(pid: u32, ticks: f64) -> f64 {
    crate::procfs::cpu_ticks(pid) as f64 / ticks
}

/// Async publish of `payload` with a `Nats-Msg-Id` each (as the ingress does), 512 acks in
/// flight, for `seconds`.
pub async fn jetstream_publish(
    stack: &Stack,
    payload: bytes::Bytes,
    subject: &str,
    seconds: u64,
    ticks: f64,
) -> RawResult {
    let js = stack.jetstream().await;
    let pids = stack.nats.pids();
    let cpu0 = cpu_s_all(&pids, ticks);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut n: u64 = 0;
    let mut inflight = futures::stream::FuturesUnordered::new();
    while Instant::now() < deadline {
        while inflight.len() < 512 {
            let ack = js
                .send_publish(
                    subject.to_string(),
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(format!("raw:{n}")),
                )
                .await
                .expect("publish");
            inflight.push(ack.into_future());
            n += 1;
        }
        inflight.next().await.expect("ack").expect("ack");
    }
    while let Some(a) = inflight.next().await {
        a.expect("ack");
    }
    RawResult {
        ops: n,
        seconds: start.elapsed().as_secs_f64(),
        server_cpu_s: cpu_s_all(&pids, ticks) - cpu0,
    }
}

/// A durable pull consumer reads `count` stored messages of `subject` and acks each (as the
/// services' consumers do, without their work).
pub async fn jetstream_consume(stack: &Stack, subject: &str, count: u64, ticks: f64) -> RawResult {
    let js = stack.jetstream().await;
    let pids = stack.nats.pids();
    let stream = js.get_stream(EVENTS_STREAM).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("rawbench".into()),
            filter_subject: subject.to_string(),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let cpu0 = cpu_s_all(&pids, ticks);
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .expect("messages");
    let mut n = 0;
    while n < count {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await
        else {
            break;
        };
        m.ack().await.expect("ack");
        n += 1;
    }
    RawResult {
        ops: n,
        seconds: start.elapsed().as_secs_f64(),
        server_cpu_s: cpu_s_all(&pids, ticks) - cpu0,
    }
}

/// SET NX (an idempotency marker) + HSET + EXPIRE in one script: the shape of the services'
/// EVALSHA calls.
const SCRIPT: &str = "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then redis.call('HSET', KEYS[2], 'last', ARGV[1], 'n', ARGV[2]) redis.call('EXPIRE', KEYS[2], 3600) return 1 end return 0";

#[derive(Clone, Copy)]
pub enum RedisOp {
    Hset,
    Evalsha,
    /// EVALSHA pipelined, each pipeline of 64 ending in `WAIT 1`: what a consumer with
    /// `redis.wait_replicas = 1` adds (one WAIT per group of acks).
    EvalshaWait,
}

/// `count` commands pipelined 64 at a time from 4 connections' worth of work on one
/// multiplexed connection; redis-server's CPU per command.
/// Attaches a replica (a redis-server of its own on this machine) to the stack's Redis and
/// waits until it has synced.
pub fn attach_replica(stack: &Stack) -> rc_tests::RedisServer {
    let replica = rc_tests::RedisServer::start();
    let mut conn = redis::Client::open(replica.url())
        .expect("replica url")
        .get_connection()
        .expect("replica");
    let port = stack.redis.url().rsplit(':').next().unwrap().to_string();
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query(&mut conn)
        .expect("REPLICAOF");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .expect("INFO");
        if info.contains("master_link_status:up") {
            return replica;
        }
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn redis_ops(stack: &Stack, op: RedisOp, count: u64, ticks: f64) -> RawResult {
    let client = redis::Client::open(stack.redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut conn)
        .await
        .expect("script load");
    let pid = stack.redis.pid().expect("redis-server pid");
    let cpu0 = cpu_s(pid, ticks);
    let start = Instant::now();
    // Fresh keys for each run, so a later run does not find the earlier one's (SET NX).
    let prefix = match op {
        RedisOp::EvalshaWait => "rawbench-wait",
        _ => "rawbench",
    };
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (mut conn, sha) = (conn.clone(), sha.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < count {
                let mut p = redis::pipe();
                for _ in 0..64 {
                    if i >= count {
                        break;
                    }
                    match op {
                        RedisOp::Hset => {
                            p.cmd("HSET")
                                .arg(format!("rawbench:{{u{}}}:profile", i % 10_000))
                                .arg("email")
                                .arg("ada@example.org")
                                .arg("plan")
                                .arg(i)
                                .ignore();
                        }
                        RedisOp::Evalsha | RedisOp::EvalshaWait => {
                            p.cmd("EVALSHA")
                                .arg(&sha)
                                .arg(2)
                                .arg(format!("{prefix}:{{u{i}}}:seen"))
                                .arg(format!("{prefix}:{{u{i}}}:state"))
                                .arg(i)
                                .arg("x")
                                .ignore();
                        }
                    }
                    i += 4;
                }
                if matches!(op, RedisOp::EvalshaWait) {
                    p.cmd("WAIT").arg(1).arg(1_000).ignore();
                }
                let () = p.query_async(&mut conn).await.expect("pipeline");
            }
        }));
    }
    for t in tasks {
        t.await.expect("redis worker");
    }
    RawResult {
        ops: count,
        seconds: start.elapsed().as_secs_f64(),
        server_cpu_s: cpu_s(pid, ticks) - cpu0,
    }
}

/// `rc-bench --bare-handler <listen> <nats url>`: the ingress's limit, run as a process of its
/// own like the ingress. POST /inbound/rudderstack: parse the JSON, check `type` and
/// `messageId`, publish the body to `events.rawbench.<type>` with a `Nats-Msg-Id`, await the
/// JetStream ack, answer 200. No auth, no envelope, no batches.
pub async fn bare_handler(listen: &str, nats_url: &str) {
    let client = async_nats::connect(rc_common::nats::server_list(nats_url))
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let app = Router::new()
        .route("/inbound/rudderstack", post(bare))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .with_state(js);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

async fn bare(
    State(js): State<async_nats::jetstream::Context>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid json"}"#);
    };
    let (Some(kind), Some(id)) = (
        event
            .get("type")
            .and_then(|t| t.as_str())
            .and_then(EventType::from_name),
        event.get("messageId").and_then(|m| m.as_str()),
    ) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"type and messageId"}"#);
    };
    let message = PublishMessage::build()
        .payload(body.clone())
        .message_id(event_msg_id("rawbench", id));
    let acked = match js
        .send_publish(event_subject("rawbench", kind.subject_token()), message)
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if acked {
        (StatusCode::OK, r#"{"ok":true}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"unavailable"}"#,
        )
    }
}
