//! One workspace's hanging webhook never stalls another workspace's delivery (issue 14, item 10),
//! over real NATS and Redis with the real delivery service. The hanging provider is a fake
//! third-party endpoint: it accepts requests and never answers until told to recover.
//!
//! Prints B's p50/p99 alone, beside A's trouble, and after it (this binary holds only this
//! test, so it runs alone):
//! `cargo test -p rc-tests --test delivery_isolation -- --nocapture`

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use rc_tests::Stack;
use rc_tests::delivery::{
    SeenEvents as Seen, inline_request, publish_request, put_provider, watch_lifecycle,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A webhook endpoint that hangs (reads the request, never answers) until `recover`.
#[derive(Default)]
struct HangState {
    recovered: AtomicBool,
    /// Requests that hung (never answered).
    hung: AtomicUsize,
    /// Message ids answered 200, with how many times each.
    answered: Mutex<HashMap<String, usize>>,
}

async fn hang_or_answer(State(state): State<Arc<HangState>>, body: Bytes) -> &'static str {
    if !state.recovered.load(Ordering::SeqCst) {
        state.hung.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = body["data"]["id"].as_str().unwrap_or_default().to_string();
    *state.answered.lock().unwrap().entry(id).or_default() += 1;
    r#"{"id":"ok"}"#
}

async fn start_hanging_webhook() -> (String, Arc<HangState>) {
    let state = Arc::new(HangState::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hang_or_answer))
        .with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state)
}

fn inbox_request(ws: &str, id: &str) -> rc_proto::MessageRequest {
    inline_request(
        ws,
        id,
        json!({"to": {"user_id": "u_b"}, "content": {"title": "Hi", "body": "B's message"},
               "routing": {"method": "single", "channels": ["inbox"]}}),
        json!({}),
        json!({}),
    )
}

fn webhook_request(ws: &str, id: &str) -> rc_proto::MessageRequest {
    inline_request(
        ws,
        id,
        json!({"to": {"user_id": "u_a"}, "content": {"title": "Hi", "body": "A's message"},
               "routing": {"method": "single", "channels": ["webhook"]}}),
        json!({}),
        json!({}),
    )
}

/// Sends `n` inbox messages to B at `every` and returns each one's publish → DELIVERED event
/// latency (all must arrive within a generous deadline).
async fn b_latencies(
    js: &async_nats::jetstream::Context,
    seen: &Seen,
    prefix: &str,
    n: usize,
    every: Duration,
) -> Vec<Duration> {
    let mut sent = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(every);
    for i in 0..n {
        tick.tick().await;
        let id = format!("{prefix}-{i}");
        let start = Instant::now();
        publish_request(js, &inbox_request("ws-b", &id), &format!("ws-b:{id}")).await;
        sent.push((id, start));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<Option<Duration>> = {
            let seen = seen.lock().unwrap();
            sent.iter()
                .map(|(id, start)| {
                    seen.get(&(id.clone(), "DELIVERED".to_string()))
                        .map(|(_, at)| at.saturating_duration_since(*start))
                })
                .collect()
        };
        let missing = got.iter().filter(|g| g.is_none()).count();
        if missing == 0 {
            let mut l: Vec<Duration> = got.into_iter().flatten().collect();
            l.sort();
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of B's {n} {prefix} messages never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_never_stalls_another_workspace() {
    let stack = Stack::start();
    let key_a = stack.workspace("ws-a").await;
    let key_b = stack.workspace("ws-b").await;
    let js = stack.jetstream().await;
    let client = stack.nats_client().await;
    let mut settings = stack.delivery_settings();
    // Realistic provider bounds (Courier: 10 s): a hung call holds A's slot this long.
    settings.delivery.provider_timeout_ms = 5_000;
    settings.delivery.circuit_cooldown_ms = 1_000;
    settings.delivery.max_backoff_ms = 2_000;
    let svc = stack.delivery_with(settings.clone()).await;
    let (hook_url, hook) = start_hanging_webhook().await;
    put_provider(
        &svc,
        &key_a,
        "hook",
        json!({"type": "webhook", "config": {"url": hook_url}}),
    )
    .await;
    put_provider(&svc, &key_b, "inbox", json!({"type": "inbox"})).await;
    let seen_a = watch_lifecycle(&client, "ws-a").await;
    let seen_b = watch_lifecycle(&client, "ws-b").await;

    // B alone.
    let alone = b_latencies(&js, &seen_b, "alone", 40, Duration::from_millis(50)).await;

    // A sends 100 messages/s for 10 s to its hanging webhook; B keeps sending meanwhile.
    const A_COUNT: usize = 1_000;
    let a_sender = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..A_COUNT {
                tick.tick().await;
                let id = format!("a-{i}");
                publish_request(&js, &webhook_request("ws-a", &id), &format!("ws-a:{id}")).await;
            }
        })
    };
    // The consumer's pending window while A is in trouble.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (js, sampling) = (js.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut max_ack_pending = 0;
            let mut max_pending = 0;
            while sampling.load(Ordering::SeqCst) {
                let stream = js.get_stream("COURIER").await.unwrap();
                if let Ok(info) = stream.consumer_info("delivery").await {
                    max_ack_pending = max_ack_pending.max(info.num_ack_pending);
                    max_pending = max_pending.max(info.num_pending);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (max_ack_pending, max_pending)
        })
    };
    let beside = b_latencies(&js, &seen_b, "beside", 100, Duration::from_millis(100)).await;
    a_sender.await.unwrap();
    let after = b_latencies(&js, &seen_b, "after", 40, Duration::from_millis(50)).await;
    sampling.store(false, Ordering::SeqCst);
    let (max_ack_pending, max_pending) = sampler.await.unwrap();
    let hung = hook.hung.load(Ordering::SeqCst);

    for (name, l) in [
        ("alone", &alone),
        ("beside A", &beside),
        ("after A", &after),
    ] {
        println!(
            "B {name}: n={} p50={:?} p99={:?} max={:?}",
            l.len(),
            pct(l, 0.50),
            pct(l, 0.99),
            l.last().unwrap()
        );
    }
    println!(
        "consumer: max num_ack_pending={max_ack_pending} max num_pending={max_pending}; \
         A's webhook got {hung} calls while hanging"
    );
    for (name, l) in [("beside A", &beside), ("after A", &after)] {
        assert!(
            pct(l, 0.99) < Duration::from_secs(1),
            "B's p99 {name} is {:?}",
            pct(l, 0.99)
        );
    }
    // A's messages are parked in Redis and acked, not held in the shared pending window
    // (max_ack_pending 4096; A alone sent 1,000): about the handlers and one pulled batch, with
    // room for a loaded machine.
    let bound = 8 * settings.delivery.concurrency;
    assert!(
        max_ack_pending <= bound,
        "ack pending reached {max_ack_pending}"
    );
    // An open circuit stops the calls: far fewer than A's 1000 messages reached the dead host.
    assert!(hung < 200, "the hanging webhook was called {hung} times");

    // A's webhook recovers: every message is delivered (at least once) and each status of each
    // message is published once.
    hook.recovered.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = {
            let seen = seen_a.lock().unwrap();
            (0..A_COUNT)
                .filter(|i| seen.contains_key(&(format!("a-{i}"), "DELIVERED".to_string())))
                .count()
        };
        if delivered == A_COUNT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} of A's {A_COUNT} messages delivered after recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered = hook.answered.lock().unwrap().clone();
    assert_eq!(
        (0..A_COUNT)
            .filter(|i| answered.contains_key(&format!("a-{i}")))
            .count(),
        A_COUNT,
        "every A message reached the webhook"
    );
    let seen = seen_a.lock().unwrap().clone();
    for i in 0..A_COUNT {
        for status in ["ENQUEUED", "SENT", "DELIVERED"] {
            let n = seen
                .get(&(format!("a-{i}"), status.to_string()))
                .map_or(0, |(n, _)| *n);
            assert_eq!(n, 1, "a-{i} {status} published {n} times");
        }
    }
    assert!(
        !seen.keys().any(|(_, s)| s == "UNDELIVERABLE"),
        "nothing given up"
    );
    // Nothing left behind: the consumer is drained and A's retry index is empty.
    let info = js
        .get_stream("COURIER")
        .await
        .unwrap()
        .consumer_info("delivery")
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 0);
    let mut redis = stack.redis_conn().await;
    let due: usize = redis::AsyncCommands::zcard(&mut redis, delivery::store::due_key("ws-a"))
        .await
        .unwrap();
    assert_eq!(due, 0, "A's due index is empty");
}
