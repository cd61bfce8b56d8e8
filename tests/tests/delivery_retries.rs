//! Delivery retries in Redis over real NATS and Redis with the real delivery service: a
//! workspace over its in-flight cap waits in Redis, the due index's leases, and a Redis outage
//! while retries are due. (The isolation test has its own binary, `delivery_isolation`, so it
//! runs alone.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use rc_tests::Stack;
use rc_tests::delivery::{inline_request, publish_request, put_provider, watch_lifecycle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

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

/// A webhook that answers after `delay`, recording the most requests it had at once.
#[derive(Default)]
struct SlowState {
    now: AtomicUsize,
    peak: AtomicUsize,
    ids: Mutex<Vec<String>>,
}

async fn slow_answer(State(state): State<Arc<SlowState>>, body: Bytes) -> &'static str {
    let n = state.now.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(n, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = body["data"]["id"].as_str().unwrap_or_default().to_string();
    state.ids.lock().unwrap().push(id);
    state.now.fetch_sub(1, Ordering::SeqCst);
    r#"{"id":"ok"}"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_over_its_cap_waits_in_redis_and_is_delivered() {
    let stack = Stack::start();
    let key = stack.workspace("ws-a").await;
    let js = stack.jetstream().await;
    let client = stack.nats_client().await;
    let mut settings = stack.delivery_settings();
    settings.delivery.workspace_concurrency = 2;
    let svc = stack.delivery_with(settings).await;
    let state = Arc::new(SlowState::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(slow_answer))
        .with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    put_provider(
        &svc,
        &key,
        "hook",
        json!({"type": "webhook", "config": {"url": url}}),
    )
    .await;
    let seen = watch_lifecycle(&client, "ws-a").await;
    const N: usize = 30;
    for i in 0..N {
        let id = format!("c-{i}");
        publish_request(&js, &webhook_request("ws-a", &id), &format!("ws-a:{id}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = {
            let seen = seen.lock().unwrap();
            (0..N)
                .filter(|i| seen.contains_key(&(format!("c-{i}"), "DELIVERED".to_string())))
                .count()
        };
        if delivered == N {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered} of {N} delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        state.peak.load(Ordering::SeqCst) <= 2,
        "the webhook had {} requests at once",
        state.peak.load(Ordering::SeqCst)
    );
    let mut ids = state.ids.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every message sent");
    let seen = seen.lock().unwrap();
    assert!(
        seen.values().all(|(n, _)| *n == 1),
        "each status published once"
    );
}

/// The due index against real Redis: a claimed retry is leased (not claimed twice) and comes
/// back when the lease ends (a crashed claimer); the workspace hint follows the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_retries_are_leased_and_come_back() {
    use delivery::store::{Meta, Store, due_workspaces_key, now_ms};
    let stack = Stack::start();
    let redis = stack.redis_conn().await;
    let store = Store::new(redis.clone());
    // Ids that would break a hash tag unescaped.
    let ids = ["m-{1}", "m-%7B2"];
    for id in ids {
        store.create("ws-d", id, &Meta::default()).await.unwrap();
        assert!(
            store
                .schedule("ws-d", id, Some(b"req"), now_ms())
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.request("ws-d", "m-{1}").await.unwrap().as_deref(),
        Some(&b"req"[..])
    );
    assert_eq!(store.due_workspaces(now_ms(), 10).await.unwrap(), ["ws-d"]);
    let mut claimed = store.claim_due("ws-d", 10, 300, now_ms()).await.unwrap();
    claimed.sort();
    assert_eq!(claimed, ["m-%7B2", "m-{1}"]);
    assert!(
        store
            .claim_due("ws-d", 10, 300, now_ms())
            .await
            .unwrap()
            .is_empty(),
        "leased: not claimed twice"
    );
    // The hint moved to the lease's end, so the workspace is not polled meanwhile.
    assert!(store.due_workspaces(now_ms(), 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.due_workspaces(now_ms(), 10).await.unwrap(),
        ["ws-d"],
        "due again after the lease"
    );
    assert_eq!(
        store
            .claim_due("ws-d", 1, 300, now_ms())
            .await
            .unwrap()
            .len(),
        1
    );
    for id in ids {
        store.unschedule("ws-d", id).await.unwrap();
    }
    assert!(
        store
            .claim_due("ws-d", 10, 300, now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    let mut conn = redis.clone();
    let hint: Option<f64> = redis::AsyncCommands::zscore(&mut conn, due_workspaces_key(), "ws-d")
        .await
        .unwrap();
    assert_eq!(hint, None, "an empty index drops the workspace's hint");
}

/// Retries wait in Redis: a Redis outage while they are due is waited out (the scheduler backs
/// off), nothing is dead-lettered, and each message is delivered once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retries_survive_a_redis_outage() {
    use rc_tests::delivery::{WebhookReceiver, wait_message};
    let mut stack = Stack::start();
    let key = stack.workspace("ws-r").await;
    let js = stack.jetstream().await;
    let client = stack.nats_client().await;
    let mut settings = stack.delivery_settings();
    // Due ~2 s after the first failure, i.e. while Redis is down.
    settings.delivery.retry_base_ms = 2_000;
    settings.delivery.max_backoff_ms = 2_000;
    let svc = stack.delivery_with(settings).await;
    let secret = "whsec_outage_test_secret_0123456789";
    let hook = WebhookReceiver::start(secret).await;
    put_provider(
        &svc,
        &key,
        "hook",
        json!({"type": "webhook", "config": {"url": hook.url(), "secret": secret}}),
    )
    .await;
    let seen = watch_lifecycle(&client, "ws-r").await;
    const N: usize = 5;
    for _ in 0..N {
        hook.answer(503, "down for maintenance", None);
    }
    for i in 0..N {
        let id = format!("r-{i}");
        publish_request(&js, &webhook_request("ws-r", &id), &format!("ws-r:{id}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.received_count() < N {
        assert!(Instant::now() < deadline, "first attempts not made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past Redis's one-second AOF fsync, then down for 4 s across the retries' due time.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    stack.redis.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.redis.restart();

    for i in 0..N {
        wait_message(&svc, &key, &format!("r-{i}"), "DELIVERED", |m| {
            m["status"] == "DELIVERED"
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.received();
    for i in 0..N {
        let id = format!("r-{i}");
        let calls = got.iter().filter(|r| r.body["data"]["id"] == id).count();
        assert_eq!(calls, 2, "{id}: one 503, then one delivery");
    }
    assert!(
        seen.lock().unwrap().values().all(|(n, _)| *n == 1),
        "each status published once"
    );
    let dead = rc_tests::stored_messages(&js, "DLQ", "dlq.delivery.>").await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}
