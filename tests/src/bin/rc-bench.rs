//! `make bench`: load figures for the ingress, as ratios against raw JetStream measured in the
//! same run on the same machine. Starts its own nats-server and redis-server (harness), runs
//! `rc-ingress` as a separate process (release build next to this binary), and prints a
//! Markdown table for BENCHMARKS.md.
//!
//! Usage: rc-bench [--seconds N] [--connections N] [--durable]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use rc_tests::{Stack, free_port};

#[derive(Clone, Copy)]
struct Args {
    seconds: u64,
    connections: usize,
    durable: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        connections: 64,
        durable: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).expect("flag value");
        match flag.as_str() {
            "--seconds" => a.seconds = value(),
            "--connections" => a.connections = value() as usize,
            "--durable" => a.durable = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A ~1 KB track event, shaped like what the Courier destination sends.
fn event(i: u64, run: u64) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","userId":"u_{u}","anonymousId":"0b6f3c2e-91d4-4a57-8e1f-5c2a7d90b318","channel":"server","messageId":"bench-{run}-{i}","rudderId":"d5c9a0f2-6b1e-4a37-9d84-0e7f3b2c1a59","request_ip":"203.0.113.24","originalTimestamp":"2026-03-02T09:14:05.120Z","sentAt":"2026-03-02T09:14:05.300Z","receivedAt":"2026-03-02T09:14:05.412Z","timestamp":"2026-03-02T09:14:05.232Z","context":{{"library":{{"name":"analytics-node","version":"1.3.0"}},"traits":{{"email":"ada@example.org","name":"Ada Byron","plan":"team"}},"ip":"203.0.113.24","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"}},"properties":{{"order_id":"ord_{i}","total":42.5,"currency":"EUR","products":[{{"sku":"sku-1","name":"Widget","price":20.0,"quantity":1}},{{"sku":"sku-2","name":"Gadget","price":22.5,"quantity":1}}],"coupon":"WELCOME10","courier":{{"automation":{{"data":{{"userId":"u_{u}","days_left":3}}}}}}}},"integrations":{{"All":true}}}}"#,
        u = i % 10_000
    )
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct LoadResult {
    requests: u64,
    events: u64,
    non_2xx: u64,
    errors: u64,
    elapsed: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn http_load(url: &str, key: &str, args: &Args, batch: usize, run: u64) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .http1_only()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let non_2xx = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (client, stop, counter, non_2xx, errors) = (
            client.clone(),
            stop.clone(),
            counter.clone(),
            non_2xx.clone(),
            errors.clone(),
        );
        let (url, auth) = (url.to_string(), format!("Bearer {key}"));
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(batch as u64, Ordering::Relaxed);
                let body = if batch == 1 {
                    event(i, run)
                } else {
                    let events: Vec<String> =
                        (0..batch as u64).map(|k| event(i + k, run)).collect();
                    format!(r#"{{"batch":[{}]}}"#, events.join(","))
                };
                let t = Instant::now();
                match client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        if !r.status().is_success() {
                            non_2xx.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let requests = all.len() as u64;
    LoadResult {
        requests,
        events: requests * batch as u64,
        non_2xx: non_2xx.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or(0) as f64 / 1000.0,
    }
}

/// Raw JetStream: the same payload sizes published with dedupe ids, bounded window of acks.
async fn raw_jetstream(stack: &Stack, seconds: u64) -> f64 {
    let js = stack.jetstream().await;
    let payload = bytes::Bytes::from(event(0, 0).into_bytes());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut n: u64 = 0;
    let mut inflight = futures::stream::FuturesUnordered::new();
    while Instant::now() < deadline {
        while inflight.len() < 512 {
            let ack = js
                .send_publish(
                    "events.rawbench.track",
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(format!("raw:{n}")),
                )
                .await
                .expect("publish");
            inflight.push(ack.into_future());
            n += 1;
        }
        inflight.next().await.unwrap().expect("ack");
    }
    while let Some(a) = inflight.next().await {
        a.expect("ack");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn start_ingress(stack: &Stack) -> (Child, u16) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().join("rc-ingress");
    let port = free_port();
    let child = Command::new(&bin)
        .env("RC_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RC_NATS__URL", stack.nats.url())
        .env("RC_REDIS__URL", stack.redis.url())
        .env("RC_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (run `cargo build --release --bins`)",
                bin.display()
            )
        });
    (child, port)
}

#[tokio::main]
async fn main() {
    let args = args();
    let stack = if args.durable {
        Stack::start_durable()
    } else {
        Stack::start()
    };
    let key = stack.workspace("bench").await;
    let (mut ingress, port) = start_ingress(&stack);
    let url = format!("http://127.0.0.1:{port}/inbound/rudderstack");
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(&ready)
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "ingress not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mib(ingress.id());

    let raw = raw_jetstream(&stack, args.seconds).await;
    let single = http_load(&url, &key, &args, 1, 1).await;
    let rss_single = rss_mib(ingress.id());
    let batch = http_load(
        &url,
        &key,
        &Args {
            connections: args.connections.min(16),
            ..args
        },
        20,
        2,
    )
    .await;
    let rss_batch = rss_mib(ingress.id());
    let _ = ingress.kill();
    let _ = ingress.wait();

    println!(
        "nats-server mode: {}",
        if args.durable {
            "durable (sync_interval: always)"
        } else {
            "default fsync"
        }
    );
    println!("| scenario | events/s | requests/s | p50 ms | p99 ms | max ms | non-2xx | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| raw JetStream async publish (1 KB, Nats-Msg-Id, 512 in flight) | {raw:.0} | | | | | | |"
    );
    for (name, r) in [
        ("ingress, 1 event/request", &single),
        ("ingress, batches of 20", &batch),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.events as f64 / r.elapsed,
            r.requests as f64 / r.elapsed,
            r.p50,
            r.p99,
            r.max,
            r.non_2xx,
            r.errors
        );
    }
    println!();
    println!(
        "ingress/raw ratio: single {:.0} %, batch {:.0} %",
        100.0 * single.events as f64 / single.elapsed / raw,
        100.0 * batch.events as f64 / batch.elapsed / raw
    );
    println!(
        "ingress RSS: idle {idle_rss:.1} MiB, after single-event load {rss_single:.1} MiB, after batch load {rss_batch:.1} MiB"
    );
}
