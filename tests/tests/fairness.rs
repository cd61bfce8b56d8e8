//! One workspace's flood stays its own: a backlog of one workspace in the shared EVENTS
//! durable does not delay another workspace's events (rc_common::consumer's spill lane).

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use prost::Message;
use rc_proto::{Envelope, EventType};
use rc_tests::Stack;
use rc_tests::profiles::eventually;
use serde_json::json;

const FLOOD: usize = 20_000;

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
async fn a_flood_is_skipped_and_another_workspace_served_beside_it() {
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
    let missing: Vec<usize> = futures::stream::iter(0..FLOOD)
        .map(|i| {
            let (http, url, key) = (&http, profiles.url(&format!("/profiles/fu{i}")), &flood_key);
            async move { (!profile_exists(http, &url, key).await).then_some(i) }
        })
        .buffer_unordered(32)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    assert!(missing.is_empty(), "flood events not applied: {missing:?}");
}
