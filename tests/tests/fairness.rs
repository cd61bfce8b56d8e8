//! One workspace's flood stays its own: the ingress holds each workspace to its rate (429 +
//! Retry-After), and a backlog of one workspace in the shared EVENTS durable does not delay
//! another workspace's events (rc_common::consumer's spill lane).

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use prost::Message;
use rc_proto::{Envelope, EventType};
use rc_tests::Stack;
use rc_tests::profiles::eventually;
use serde_json::json;

const FLOOD: usize = 20_000;

/// The two flood tests measure latency on a 2-core box: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Messages ever stored in the spill lane (work-queue: its sequence only grows).
async fn spilled(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream(rc_common::subjects::SPILL_STREAM).await {
        Ok(mut stream) => stream.info().await.expect("SPILL info").state.last_sequence,
        Err(_) => 0,
    }
}

/// The flood users (`<prefix><i>`, i < n) whose profile is not readable.
async fn missing_profiles(
    http: &reqwest::Client,
    profiles: &rc_tests::Service,
    key: &str,
    prefix: &str,
    n: usize,
) -> Vec<usize> {
    futures::stream::iter(0..n)
        .map(|i| {
            let url = profiles.url(&format!("/profiles/{prefix}{i}"));
            async move { (!profile_exists(http, &url, key).await).then_some(i) }
        })
        .buffer_unordered(32)
        .filter_map(|m| async move { m })
        .collect()
        .await
}

fn identify(ws: &str, message_id: &str, user_id: &str) -> Envelope {
    let now = time::OffsetDateTime::now_utc();
    Envelope {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: message_id.into(),
        r#type: EventType::Identify as i32,
        user_id: user_id.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: now.unix_timestamp(),
            nanos: 0,
        }),
        traits: serde_json::to_vec(&json!({"plan": "team", "id": message_id}))
            .unwrap()
            .into(),
        ..Default::default()
    }
}

/// Publishes as the ingress would: stored (acked) before this returns.
async fn publish(js: &async_nats::jetstream::Context, env: &Envelope) {
    send(js, env).await.await.expect("stored");
}

async fn send(
    js: &async_nats::jetstream::Context,
    env: &Envelope,
) -> async_nats::jetstream::context::PublishAckFuture {
    js.send_publish(
        rc_common::subjects::event_subject(&env.workspace_id, "identify"),
        PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(rc_common::subjects::event_msg_id(
                &env.workspace_id,
                &env.message_id,
            )),
    )
    .await
    .expect("publish")
}

async fn profile_exists(http: &reqwest::Client, url: &str, key: &str) -> bool {
    let resp = http.get(url).bearer_auth(key).send().await.expect("GET");
    match resp.status() {
        reqwest::StatusCode::OK => true,
        reqwest::StatusCode::NOT_FOUND => false,
        other => panic!("GET {url}: {other}"),
    }
}

/// Messages the profiles durables (main and spill lane) still have to handle.
async fn backlog(js: &async_nats::jetstream::Context) -> u64 {
    let mut left = 0;
    for (stream, durable) in [("EVENTS", "profiles"), ("SPILL", "profiles-spill")] {
        let Ok(stream) = js.get_stream(stream).await else {
            continue;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
            .await
        else {
            continue;
        };
        let info = consumer.info().await.expect("consumer info");
        left += info.num_pending + info.num_ack_pending as u64;
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_already_in_the_stream_is_skipped_and_another_workspace_served_beside_it() {
    let _heavy = HEAVY.lock().await;
    let stack = Stack::start();
    let flood_key = stack.workspace("flood").await;
    let quiet_key = stack.workspace("quiet").await;
    let js = stack.jetstream().await;

    // Workspace "flood" puts 20,000 identifies in the stream, as the ingress would.
    let mut acks = Vec::with_capacity(1_000);
    for i in 0..FLOOD {
        acks.push(send(&js, &identify("flood", &format!("f{i}"), &format!("fu{i}"))).await);
        // The client bounds acks in flight: await them in chunks.
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }

    let profiles = stack.profiles().await;
    let http = reqwest::Client::new();
    // The service is at work on the flood.
    eventually("the flood being applied", Duration::from_secs(60), || {
        let (http, url, key) = (&http, profiles.url("/profiles/fu0"), &flood_key);
        async move { profile_exists(http, &url, key).await.then_some(()) }
    })
    .await;

    // Alone, the backlog is handled where it is: spilling it would only add work.
    assert_eq!(spilled(&js).await, 0, "a lone backlog was spilled");

    // Workspace "quiet" sends one event at a time: event → profile readable.
    let mut latencies = Vec::new();
    let mut left_at_first = None;
    for i in 0..40 {
        let user = format!("q{i}");
        let url = profiles.url(&format!("/profiles/{user}"));
        let sent = Instant::now();
        publish(&js, &identify("quiet", &format!("q{i}"), &user)).await;
        while !profile_exists(&http, &url, &quiet_key).await {
            assert!(
                sent.elapsed() < Duration::from_secs(120),
                "quiet's event {i} never applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(sent.elapsed());
        if left_at_first.is_none() {
            left_at_first = Some(backlog(&js).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left_at_first = left_at_first.expect("measured");
    let left_at_last = backlog(&js).await;
    let first = latencies[0];
    latencies.sort();
    println!(
        "quiet's event -> profile: first {first:?}, p50 {:?}, p95 {:?}, max {:?}; flood messages \
         left when the first was applied {left_at_first}, after the last {left_at_last}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 95 / 100],
        latencies[latencies.len() - 1]
    );
    // In stream order, quiet's first event would be applied only after the whole flood: here
    // it waits only for the main durable to skip the flood into the spill lane.
    assert!(
        left_at_first > 0,
        "quiet's first event waited for the whole flood to be handled ({first:?})"
    );
    assert!(
        left_at_last > 0,
        "the flood was drained before quiet finished: this run measured nothing"
    );
    // Once the main durable is past the flood, quiet is served beside it.
    let p95 = latencies[latencies.len() * 95 / 100];
    assert!(
        p95 <= Duration::from_secs(1),
        "quiet waited behind the flood: p95 {p95:?}"
    );

    // Every flood event is applied in the end.
    eventually("the flood drained", Duration::from_secs(600), || {
        let js = &js;
        async move { (backlog(js).await == 0).then_some(()) }
    })
    .await;
    let missing = missing_profiles(&http, &profiles, &flood_key, "fu", FLOOD).await;
    println!("spilled: {}", spilled(&js).await);
    assert!(missing.is_empty(), "flood events not applied: {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// The ingress's per-workspace rate limit.

fn track_batch(prefix: &str, range: std::ops::Range<usize>) -> String {
    let events: Vec<serde_json::Value> = range
        .map(|i| json!({"type": "track", "event": "e", "userId": "u", "messageId": format!("{prefix}-{i}")}))
        .collect();
    json!({ "batch": events }).to_string()
}

async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
) -> (reqwest::StatusCode, serde_json::Value, Option<u64>) {
    let resp = rc_tests::post_json_as(http, url, key, body).await;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    let body = resp.json().await.expect("a JSON answer");
    (status, body, retry_after)
}

async fn stored(js: &async_nats::jetstream::Context, ws: &str) -> usize {
    rc_tests::stored_messages(js, "EVENTS", &format!("events.{ws}.>"))
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_over_its_rate_gets_429_and_the_others_are_served() {
    let stack = Stack::start();
    let (a, b) = (stack.workspace("rl-a").await, stack.workspace("rl-b").await);
    let js = stack.jetstream().await;
    let mut settings = stack.ingress_settings();
    settings.ingress.max_batch_events = 200;
    settings.ingress.workspace_events_per_sec = 100;
    // Below the batch cap: raised to it, so a whole batch fits an idle bucket.
    settings.ingress.workspace_events_burst = 10;
    let ingress = stack.ingress_with(settings).await;
    let url = ingress.url("/inbound/rudderstack");
    let http = reqwest::Client::new();

    let (status, body, _) = post_batch(&http, &url, &a, track_batch("a", 0..200)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    // The bucket is empty: the next batch is refused whole, with how long to wait.
    let (status, body, retry_after) = post_batch(&http, &url, &a, track_batch("a", 200..350)).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["type"], "rate_limit_error", "{body}");
    let wait = retry_after.expect("Retry-After");
    assert!((1..=2).contains(&wait), "150 events at 100/s: {wait} s");
    // Another workspace is answered at once meanwhile.
    let started = Instant::now();
    let (status, body, _) = post_batch(&http, &url, &b, track_batch("b", 0..200)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        stored(&js, "rl-a").await,
        200,
        "nothing of the refused batch stored"
    );

    // Half refilled: a batch larger than what is left is still refused whole.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = post_batch(&http, &url, &a, track_batch("a", 200..350)).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stored(&js, "rl-a").await, 200, "never half-published");

    // After the Retry-After it told, the batch fits.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body, _) = post_batch(&http, &url, &a, track_batch("a", 200..350)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(stored(&js, "rl-a").await, 350);

    let metrics = rc_tests::metrics(&ingress).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ingress_rate_limited_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// The point of issue 14: a workspace flooding the public ingress does not raise another
// workspace's event → effect p99 above 1 s.

/// Events workspace "a" sends through the ingress, and the batch size it sends them in.
const INGRESS_FLOOD: usize = 20_000;
const FLOOD_BATCH: usize = 100;
/// Connections "a" floods with.
const FLOOD_CONNECTIONS: usize = 16;

fn identify_batch(prefix: &str, range: std::ops::Range<usize>) -> String {
    let events: Vec<serde_json::Value> = range
        .map(|i| json!({"type": "identify", "userId": format!("{prefix}{i}"), "messageId": format!("{prefix}{i}"), "traits": {"plan": "team"}}))
        .collect();
    json!({ "batch": events }).to_string()
}

/// Sends `body` until it is accepted, waiting out each 429/503 for its Retry-After, as
/// RudderStack's webhook destination does. Answers how many times it was refused.
async fn send_until_accepted(http: &reqwest::Client, url: &str, key: &str, body: String) -> u32 {
    let mut refused = 0;
    loop {
        let (status, answer, retry_after) = post_batch(http, url, key, body.clone()).await;
        if status == reqwest::StatusCode::ACCEPTED {
            return refused;
        }
        assert!(
            status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{status}: {answer}"
        );
        refused += 1;
        let wait = retry_after.expect("a retryable answer carries Retry-After");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_flooding_the_ingress_does_not_delay_another() {
    let _heavy = HEAVY.lock().await;
    let stack = Stack::start();
    let (a, b) = (stack.workspace("ia").await, stack.workspace("ib").await);
    let js = stack.jetstream().await;
    let mut settings = stack.ingress_settings();
    // A debug build's profiles consumer drains ~650 identifies/s here while "b" is served
    // beside it (measured by this test at 700/s: 20,000 applied 31 s after the start); the
    // flood is held below that. The burst lets the connections, which each sleep a whole
    // Retry-After second, use the rate (with a burst of one batch they reached only ~300/s).
    settings.ingress.max_batch_events = FLOOD_BATCH;
    // 400/s: at 500/s a run on a busier box (others building) fell behind (p99 1.24 s).
    settings.ingress.workspace_events_per_sec = 400;
    settings.ingress.workspace_events_burst = 1_000;
    let ingress = stack.ingress_with(settings).await;
    let profiles = stack.profiles().await;
    let url = ingress.url("/inbound/rudderstack");
    let http = reqwest::Client::new();

    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let (next, url, key) = (next.clone(), url.clone(), a.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut refused = 0;
                loop {
                    let from = next.fetch_add(FLOOD_BATCH, std::sync::atomic::Ordering::Relaxed);
                    if from >= INGRESS_FLOOD {
                        return refused;
                    }
                    let body = identify_batch("fa", from..(from + FLOOD_BATCH).min(INGRESS_FLOOD));
                    refused += send_until_accepted(&http, &url, &key, body).await;
                }
            })
        })
        .collect();

    // "b" sends one event every ~50 ms while "a" floods (and at least 100).
    let mut latencies = Vec::new();
    let mut i = 0;
    while i < 100 || flood.iter().any(|f| !f.is_finished()) {
        let user = format!("b{i}");
        let profile = profiles.url(&format!("/profiles/{user}"));
        let event = json!({"type": "identify", "userId": user, "messageId": user}).to_string();
        let sent = Instant::now();
        assert_eq!(
            send_until_accepted(&http, &url, &b, event).await,
            0,
            "b was refused"
        );
        while !profile_exists(&http, &profile, &b).await {
            assert!(
                sent.elapsed() < Duration::from_secs(120),
                "b's event {i} never applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(sent.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = 0;
    for f in flood {
        refused += f.await.expect("flood connection");
    }
    let sent_in = started.elapsed();
    eventually("a's flood applied", Duration::from_secs(300), || {
        let js = &js;
        async move { (backlog(js).await == 0).then_some(()) }
    })
    .await;
    let drained_in = started.elapsed();
    let missing = missing_profiles(&http, &profiles, &a, "fa", INGRESS_FLOOD).await;
    assert!(missing.is_empty(), "a's events not applied: {missing:?}");

    latencies.sort();
    let p = |q: usize| latencies[(latencies.len() * q).div_ceil(100) - 1];
    println!(
        "{} events of b beside a's {INGRESS_FLOOD} through the ingress: p50 {:?}, p99 {:?}, max \
         {:?}; a sent in {sent_in:?} ({refused} requests refused 429 and retried), all applied \
         after {drained_in:?}; spilled {}",
        latencies.len(),
        p(50),
        p(99),
        latencies[latencies.len() - 1],
        spilled(&js).await
    );
    assert!(
        refused > 0,
        "a was never held to its rate: this run measured nothing"
    );
    assert!(p(99) <= Duration::from_secs(1), "b's p99 {:?}", p(99));
}
