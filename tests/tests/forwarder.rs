//! The forwarder against real nats-server/redis-server and a fake RudderStack data plane that
//! enforces the gateway's rules (tests/src/dataplane.rs).

use std::time::Duration;

use rc_common::subjects::{DLQ_STREAM, dlq_subject};
use rc_tests::dataplane::{DataPlane, Mode};
use rc_tests::forwarder::{
    eventually, get_json, message_event, new_encryption_key, post_json, publish_message_event,
    put_integration,
};
use rc_tests::{ServiceProcess, Stack, stored_messages};
use serde_json::json;

const WRITE_KEY: &str = "2AbcWriteKeyFromRudderStack9f2a";

fn config(dp: &DataPlane, key: &str) -> serde_json::Value {
    json!({"writeKey": key, "dataPlaneUrl": dp.url(), "enabled": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_delivered_reaches_the_data_plane_with_the_documented_shape() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;

    let r = put_integration(&fwd, &key, config(&dp, WRITE_KEY)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Not sent: ENQUEUED (not a sendable status) and message.requested (not a status).
    publish_message_event(&js, &message_event("acme", "m-0", "ENQUEUED", "u_1")).await;
    js.publish(
        "courier.acme.message.requested",
        "not a MessageEvent".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish_message_event(&js, &message_event("acme", "m-1", "DELIVERED", "u_4fa21")).await;
    publish_message_event(&js, &message_event("acme", "m-2", "UNROUTABLE", "")).await;

    eventually("two events", Duration::from_secs(10), async || {
        dp.events().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = dp.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let delivered = events
        .iter()
        .find(|e| e["event"] == "Message Delivered")
        .expect("Message Delivered");
    assert_eq!(delivered["type"], "track");
    assert_eq!(delivered["userId"], "u_4fa21");
    assert_eq!(delivered["messageId"], "m-1-DELIVERED");
    assert_eq!(delivered["originalTimestamp"], "2026-03-02T09:00:11.006Z");
    assert!(delivered["sentAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(delivered["context"]["library"]["name"], "rudder-courier");
    assert!(delivered["context"]["library"]["version"].is_string());
    let p = &delivered["properties"];
    assert_eq!(p["id"], "m-1");
    assert_eq!(p["status"], "DELIVERED");
    assert_eq!(p["notification"], "welcome-email");
    assert_eq!(p["channel"], "email");
    assert_eq!(p["provider"], "sendgrid");
    assert_eq!(p["tenant_id"], "acct_1");
    assert_eq!(p["run_id"], "run-1");
    assert_eq!(p["event"], "Signed Up");
    assert_eq!(p["delivered"], 1_772_442_011_006i64);
    // No recipient: a stable anonymousId instead of a batch the gateway would reject.
    let unroutable = events
        .iter()
        .find(|e| e["event"] == "Message Unroutable")
        .expect("Message Unroutable");
    assert_eq!(unroutable["anonymousId"], "courier-message-m-2");
    assert!(dp.gzip_requests() >= 1, "bodies are gzipped");

    // The write key: masked in GET, never in Redis in plain text.
    let (status, body) = get_json(&fwd, &key, "/integrations/rudderstack").await;
    assert_eq!(status, 200);
    assert_eq!(body["writeKey"], "••••9f2a");
    assert!(!body.to_string().contains(WRITE_KEY));
    let mut redis = stack.redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    for k in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&k)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(WRITE_KEY),
            "write key in plain text under {k}"
        );
    }

    let (status, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["state"], "active");
    assert_eq!(st["delivered"], 2);
    assert_eq!(st["circuit"], "closed");

    // The test call reports the data plane's answer.
    let (status, t) = post_json(&fwd, &key, "/integrations/rudderstack/test").await;
    assert_eq!(status, 200);
    assert_eq!(t["status"], 200);
    assert_eq!(t["body"], "ok");

    // Metrics.
    let metrics = rc_tests::metrics(&fwd).await;
    assert!(
        metrics.contains("forwarder_events_delivered_total{workspace=\"acme\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("forwarder_dataplane_request_duration_seconds"));

    // URL validation.
    for bad in [
        "ftp://dp.example",
        "https://user:pw@dp.example",
        "not a url",
    ] {
        let r = put_integration(&fwd, &key, json!({"writeKey": "k", "dataPlaneUrl": bad})).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    // Another workspace sees nothing.
    let other = stack.workspace("other").await;
    let (status, _) = get_json(&fwd, &other, "/integrations/rudderstack").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_data_plane_is_down() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    assert_eq!(
        put_integration(&fwd, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );

    dp.set_mode(Mode::Fail(503));
    for i in 0..30 {
        publish_message_event(
            &js,
            &message_event("acme", &format!("m-{i}"), "SENT", "u_1"),
        )
        .await;
    }
    // Down longer than ack_wait (3 s) and past the circuit threshold; 429 then 503.
    tokio::time::sleep(Duration::from_secs(2)).await;
    dp.set_mode(Mode::Fail(429));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert!(
        st["lastError"].as_str().unwrap_or("").contains("429"),
        "{st}"
    );
    assert_eq!(st["pending"], 30, "{st}");
    assert!(dp.events().is_empty());
    dp.set_mode(Mode::Normal);

    eventually("all 30 events", Duration::from_secs(15), async || {
        dp.message_ids().len() == 30
    })
    .await;
    let ids = dp.message_ids();
    for i in 0..30 {
        assert!(ids.contains(&format!("m-{i}-SENT")));
    }
    assert!(dp.answers().iter().filter(|&&s| s == 503).count() >= 2);
    // Nothing dead-lettered.
    assert!(
        stored_messages(&js, DLQ_STREAM, &dlq_subject("forwarder", "acme"))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_key_pauses_until_a_put_fixes_it() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    assert_eq!(
        put_integration(&fwd, &key, config(&dp, "wrong-key-123456"))
            .await
            .status(),
        200
    );
    for i in 0..5 {
        publish_message_event(
            &js,
            &message_event("acme", &format!("m-{i}"), "OPENED", "u_1"),
        )
        .await;
    }
    eventually("paused", Duration::from_secs(10), async || {
        let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
        st["state"] == "paused"
    })
    .await;
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert!(st["pausedReason"].as_str().unwrap().contains("401"), "{st}");
    assert!(
        st["pausedReason"]
            .as_str()
            .unwrap()
            .contains("invalid write key"),
        "{st}"
    );
    let (_, cfg) = get_json(&fwd, &key, "/integrations/rudderstack").await;
    assert_eq!(cfg["paused"], true);
    // Paused: no more requests, nothing delivered, nothing dead-lettered.
    let requests = dp.answers().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        dp.answers().len(),
        requests,
        "a paused destination is not called"
    );
    assert!(
        stored_messages(&js, DLQ_STREAM, &dlq_subject("forwarder", "acme"))
            .await
            .is_empty()
    );

    assert_eq!(
        put_integration(&fwd, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );
    eventually(
        "5 events after the fix",
        Duration::from_secs(10),
        async || dp.message_ids().len() == 5,
    )
    .await;
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert_eq!(st["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_batch_is_split() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    // Roughly 4 events fit in one request.
    dp.set_max_bytes(2_500);
    let mut settings = stack.forwarder_settings(&new_encryption_key());
    settings.forwarder.linger_ms = 300;
    let fwd = stack.forwarder_with(settings).await;
    assert_eq!(
        put_integration(&fwd, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );
    for i in 0..24 {
        publish_message_event(
            &js,
            &message_event("acme", &format!("m-{i}"), "CLICKED", "u_1"),
        )
        .await;
    }
    eventually("24 events", Duration::from_secs(10), async || {
        dp.message_ids().len() == 24
    })
    .await;
    assert!(dp.answers().contains(&413), "{:?}", dp.answers());
    assert!(
        dp.batch_sizes().iter().all(|&n| n <= 6),
        "{:?}",
        dp.batch_sizes()
    );
    assert!(
        stored_messages(&js, DLQ_STREAM, &dlq_subject("forwarder", "acme"))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_data_plane_does_not_delay_another_workspace() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key_a = stack.workspace("alpha").await;
    let key_b = stack.workspace("beta").await;
    let dead = DataPlane::start(WRITE_KEY).await;
    let healthy = DataPlane::start(WRITE_KEY).await;
    dead.set_mode(Mode::Hang);
    let mut settings = stack.forwarder_settings(&new_encryption_key());
    // Small window: the dead workspace fills its own quickly.
    settings.forwarder.max_ack_pending = 50;
    settings.forwarder.batch_max_events = 20;
    let fwd = stack.forwarder_with(settings).await;
    assert_eq!(
        put_integration(&fwd, &key_a, config(&dead, WRITE_KEY))
            .await
            .status(),
        200
    );
    assert_eq!(
        put_integration(&fwd, &key_b, config(&healthy, WRITE_KEY))
            .await
            .status(),
        200
    );

    for i in 0..200 {
        publish_message_event(
            &js,
            &message_event("alpha", &format!("a-{i}"), "SENT", "u_1"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        publish_message_event(
            &js,
            &message_event("beta", &format!("b-{i}"), "SENT", "u_2"),
        )
        .await;
    }
    // alpha's data plane hangs throughout (alpha has 200 events waiting and its window full):
    // beta's events still arrive.
    eventually("beta's events", Duration::from_secs(10), async || {
        healthy.message_ids().len() == 20
    })
    .await;
    assert!(dead.events().is_empty());
    dead.set_mode(Mode::Normal);
    eventually(
        "alpha's events once its data plane is back",
        Duration::from_secs(20),
        async || dead.message_ids().len() == 200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forwarder_loses_nothing() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let encryption_key = new_encryption_key();
    // The real rc-forwarder binary, configured like the in-process one (fast timings).
    let mut env = stack.service_env();
    env.extend([
        ("RC_SECRETS__ENCRYPTION_KEY", encryption_key.clone()),
        ("RC_OUTBOUND__ALLOW_PRIVATE_NETWORKS", "true".into()),
        ("RC_FORWARDER__ALLOW_HTTP", "true".into()),
        ("RC_FORWARDER__LINGER_MS", "50".into()),
        ("RC_FORWARDER__REQUEST_TIMEOUT_MS", "1000".into()),
        ("RC_FORWARDER__ACK_WAIT_MS", "3000".into()),
        ("RC_FORWARDER__RECONCILE_INTERVAL_MS", "300".into()),
    ]);
    let mut process = ServiceProcess::start("rc-forwarder", &env).await;
    assert_eq!(
        put_integration(&process, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );
    dp.set_mode(Mode::Hang);
    for i in 0..40 {
        publish_message_event(
            &js,
            &message_event("acme", &format!("m-{i}"), "DELIVERED", "u_1"),
        )
        .await;
    }
    // A batch is in flight (the request hangs), then the process is SIGKILLed.
    eventually("a request in flight", Duration::from_secs(5), async || {
        let (_, st) = get_json(&process, &key, "/integrations/rudderstack/status").await;
        st["pendingUnacked"].as_u64().unwrap_or(0) > 0
    })
    .await;
    process.kill();
    assert!(
        dp.message_ids().is_empty(),
        "nothing was accepted before the kill"
    );
    dp.set_mode(Mode::Normal);
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&encryption_key))
        .await;
    eventually(
        "all 40 after the restart",
        Duration::from_secs(15),
        async || dp.message_ids().len() == 40,
    )
    .await;
    drop(fwd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_are_dead_lettered_and_can_be_replayed() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let other = stack.workspace("other").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    assert_eq!(
        put_integration(&fwd, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );
    dp.set_mode(Mode::Fail(400));
    publish_message_event(&js, &message_event("acme", "m-1", "SENT", "u_1")).await;
    eventually("a dead letter", Duration::from_secs(10), async || {
        let (_, l) = get_json(&fwd, &key, "/integrations/rudderstack/dead-letters").await;
        l["total"] == 1
    })
    .await;
    let (_, list) = get_json(&fwd, &key, "/integrations/rudderstack/dead-letters").await;
    let dl = &list["deadLetters"][0];
    assert_eq!(dl["originalSubject"], "courier.acme.message.sent");
    assert!(dl["reason"].as_str().unwrap().contains("400"), "{dl}");
    assert_eq!(dl["event"]["messageId"], "m-1");
    let seq = dl["seq"].as_u64().unwrap();
    let (status, one) = get_json(
        &fwd,
        &key,
        &format!("/integrations/rudderstack/dead-letters/{seq}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["rudderstackEvent"]["messageId"], "m-1-SENT");
    // Not another workspace's.
    let (status, _) = get_json(
        &fwd,
        &other,
        &format!("/integrations/rudderstack/dead-letters/{seq}"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post_json(
        &fwd,
        &other,
        &format!("/integrations/rudderstack/dead-letters/{seq}/replay"),
    )
    .await;
    assert_eq!(status, 404);

    dp.set_mode(Mode::Normal);
    let (status, _) = post_json(
        &fwd,
        &key,
        &format!("/integrations/rudderstack/dead-letters/{seq}/replay"),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the replayed event", Duration::from_secs(10), async || {
        dp.message_ids().contains("m-1-SENT")
    })
    .await;
    let (_, list) = get_json(&fwd, &key, "/integrations/rudderstack/dead-letters").await;
    assert_eq!(list["total"], 0);

    // Purge.
    dp.set_mode(Mode::Fail(400));
    publish_message_event(&js, &message_event("acme", "m-2", "SENT", "u_1")).await;
    eventually(
        "a second dead letter",
        Duration::from_secs(10),
        async || {
            let (_, l) = get_json(&fwd, &key, "/integrations/rudderstack/dead-letters").await;
            l["total"] == 1
        },
    )
    .await;
    let r = reqwest::Client::new()
        .delete(fwd.url("/integrations/rudderstack/dead-letters"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, list) = get_json(&fwd, &key, "/integrations/rudderstack/dead-letters").await;
    assert_eq!(list["total"], 0);
}

/// Measurement, not a check: `cargo test --release -p rc-tests --test forwarder -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_throughput_and_isolation_latency() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key_a = stack.workspace("alpha").await;
    let key_b = stack.workspace("beta").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    dp.set_latency(Duration::from_millis(10));
    let dead = DataPlane::start(WRITE_KEY).await;
    let mut settings = stack.forwarder_settings(&new_encryption_key());
    settings.forwarder.linger_ms = 200;
    settings.forwarder.request_timeout_ms = 10_000;
    settings.forwarder.max_ack_pending = 5_000;
    let fwd = stack.forwarder_with(settings).await;
    assert_eq!(
        put_integration(&fwd, &key_b, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );

    // Throughput: a backlog of N events, data plane answering in 10 ms.
    let n = 20_000;
    let payloads: Vec<_> = (0..n)
        .map(|i| message_event("beta", &format!("t-{i}"), "DELIVERED", "u_1"))
        .collect();
    // In chunks: the context bounds acks in flight.
    for chunk in payloads.chunks(1_000) {
        let mut acks = Vec::new();
        for ev in chunk {
            use prost::Message as _;
            acks.push(
                js.publish("courier.beta.message.delivered", ev.encode_to_vec().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
    }
    println!("published {n} events");
    let started = std::time::Instant::now();
    eventually("backlog", Duration::from_secs(300), async || {
        dp.message_ids().len() == n
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput: {n} events in {secs:.2} s = {:.0} events/s ({} requests)",
        n as f64 / secs,
        dp.batch_sizes().len()
    );

    // Latency of a healthy workspace while another's data plane hangs.
    dead.set_mode(Mode::Hang);
    assert_eq!(
        put_integration(&fwd, &key_a, config(&dead, WRITE_KEY))
            .await
            .status(),
        200
    );
    for i in 0..2_000 {
        publish_message_event(
            &js,
            &message_event("alpha", &format!("a-{i}"), "SENT", "u_1"),
        )
        .await;
    }
    let mut latencies = Vec::new();
    for i in 0..50 {
        let id = format!("l-{i}-SENT");
        let t = std::time::Instant::now();
        publish_message_event(
            &js,
            &message_event("beta", &format!("l-{i}"), "SENT", "u_2"),
        )
        .await;
        eventually("latency probe", Duration::from_secs(30), async || {
            dp.message_ids().contains(&id)
        })
        .await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "healthy workspace latency while another's data plane hangs: p50 {:?}, p95 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 95 / 100],
        latencies[latencies.len() - 1]
    );
}

/// The breaker as the status API shows it: closed → open after `circuit_failures` consecutive
/// failures (no request during the cool-down) → half-open probe; a failed probe re-opens it, a
/// successful one closes it and the held event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_probes_and_closes() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let mut settings = stack.forwarder_settings(&new_encryption_key());
    settings.forwarder.circuit_failures = 3;
    settings.forwarder.circuit_cooldown_ms = 1_500;
    let fwd = stack.forwarder_with(settings).await;
    assert_eq!(
        put_integration(&fwd, &key, config(&dp, WRITE_KEY))
            .await
            .status(),
        200
    );
    let circuit = async || {
        let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
        st["circuit"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(circuit().await, "closed");

    dp.set_mode(Mode::Fail(503));
    publish_message_event(&js, &message_event("acme", "m-1", "DELIVERED", "u_1")).await;
    eventually("open", Duration::from_secs(10), async || {
        circuit().await == "open"
    })
    .await;
    assert_eq!(dp.answers(), [503, 503, 503], "opens after 3 failures");
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert!(st["lastError"].as_str().unwrap().contains("503"), "{st}");
    assert_eq!(st["state"], "active", "an open circuit is not a pause");
    // Cool-down: the data plane is left alone.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(dp.answers().len(), 3, "no request while open");

    // The probe hangs (timeout 1 s): half-open while it runs, open again when it fails.
    dp.set_mode(Mode::Hang);
    eventually("half-open probe", Duration::from_secs(5), async || {
        circuit().await == "half_open"
    })
    .await;
    eventually(
        "re-opened after a failed probe",
        Duration::from_secs(5),
        async || circuit().await == "open",
    )
    .await;

    // A successful probe (slow enough to be seen) closes it.
    dp.set_latency(Duration::from_millis(600));
    dp.set_mode(Mode::Normal);
    eventually(
        "second half-open probe",
        Duration::from_secs(5),
        async || circuit().await == "half_open",
    )
    .await;
    eventually("closed", Duration::from_secs(5), async || {
        circuit().await == "closed"
    })
    .await;
    assert_eq!(dp.events().len(), 1, "the held event arrives once");
    assert_eq!(dp.events()[0]["messageId"], "m-1-DELIVERED");
    let metrics = rc_tests::metrics(&fwd).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("forwarder_circuit_state{workspace=\"acme\"} 0")),
        "gauge back to closed (0)"
    );
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// Opt-in kinds: `ProfileUpdated` → `identify`, `TenantUpdated` → `group` (the README's
/// shapes); deletions are not sent; a workspace that did not opt in gets no such calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_and_tenant_updates_are_forwarded_when_enabled() {
    use prost::Message as _;
    use rc_common::subjects::kinds::{PROFILE_UPDATED, TENANT_UPDATED};
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let key_b = stack.workspace("beta").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let dp_b = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    let r = put_integration(
        &fwd,
        &key,
        json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(),
               "events": {"statuses": ["DELIVERED"], "profileUpdates": true, "tenantUpdates": true}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (_, cfg) = get_json(&fwd, &key, "/integrations/rudderstack").await;
    assert_eq!(cfg["events"]["profileUpdates"], true, "{cfg}");
    // beta: statuses only (the default kinds).
    assert_eq!(
        put_integration(&fwd, &key_b, config(&dp_b, WRITE_KEY))
            .await
            .status(),
        200
    );

    let profile = |ws: &str, user: &str, deleted: bool, cause: &str| rc_proto::ProfileUpdated {
        schema_version: 1,
        workspace_id: ws.into(),
        user_id: user.into(),
        profile: if deleted {
            Vec::new().into()
        } else {
            br#"{"name":"Ada","email":"ada@example.com","plan":"pro"}"#
                .to_vec()
                .into()
        },
        deleted,
        source: "event".into(),
        cause_id: cause.into(),
        updated_at: ts(1_772_442_011),
    };
    let tenant = |member: &str, cause: &str| rc_proto::TenantUpdated {
        schema_version: 1,
        workspace_id: "acme".into(),
        tenant_id: "acct_1".into(),
        tenant: br#"{"name":"Acme Inc","properties":{"tier":"gold"}}"#
            .to_vec()
            .into(),
        member_user_id: member.into(),
        source: "api".into(),
        cause_id: cause.into(),
        updated_at: ts(1_772_442_012),
        ..Default::default()
    };
    for (kind, payload) in [
        (
            PROFILE_UPDATED,
            profile("acme", "u_1", false, "evt-1").encode_to_vec(),
        ),
        (
            PROFILE_UPDATED,
            profile("acme", "u_gone", true, "evt-2").encode_to_vec(),
        ),
        (TENANT_UPDATED, tenant("", "req-1").encode_to_vec()),
        (TENANT_UPDATED, tenant("u_1", "req-2").encode_to_vec()),
    ] {
        rc_tests::forwarder::publish_courier(&js, "acme", kind, payload).await;
    }
    publish_message_event(&js, &message_event("acme", "m-1", "DELIVERED", "u_1")).await;
    rc_tests::forwarder::publish_courier(
        &js,
        "beta",
        PROFILE_UPDATED,
        profile("beta", "u_9", false, "evt-9").encode_to_vec(),
    )
    .await;
    publish_message_event(&js, &message_event("beta", "m-9", "DELIVERED", "u_9")).await;

    eventually(
        "4 events at acme's data plane",
        Duration::from_secs(10),
        async || dp.events().len() >= 4,
    )
    .await;
    eventually(
        "beta's message event",
        Duration::from_secs(10),
        async || !dp_b.events().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = dp.events();
    assert_eq!(events.len(), 4, "the deletion is not sent: {events:#?}");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["messageId"] == id)
            .unwrap_or_else(|| panic!("{id} in {events:#?}"))
    };
    let identify = by_id("profile-u_1-evt-1");
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["userId"], "u_1");
    assert_eq!(identify["traits"]["email"], "ada@example.com");
    assert_eq!(identify["traits"]["plan"], "pro");
    assert_eq!(identify["originalTimestamp"], "2026-03-02T09:00:11.000Z");
    assert_eq!(identify["context"]["library"]["name"], "rudder-courier");

    let group = by_id("tenant-acct_1-req-1");
    assert_eq!(group["type"], "group");
    assert_eq!(group["groupId"], "acct_1");
    assert_eq!(
        group["anonymousId"], "courier-tenant-acct_1",
        "no member: anonymous"
    );
    assert_eq!(group["traits"]["name"], "Acme Inc");
    let membership = by_id("tenant-acct_1-u_1-req-2");
    assert_eq!(membership["type"], "group");
    assert_eq!(membership["userId"], "u_1");
    assert_eq!(membership["groupId"], "acct_1");
    assert_eq!(by_id("m-1-DELIVERED")["type"], "track");

    let beta = dp_b.events();
    assert_eq!(
        beta.len(),
        1,
        "beta did not opt in to profile updates: {beta:#?}"
    );
    assert_eq!(beta[0]["type"], "track");
}

/// `enabled: false` sends nothing and keeps the events (the consumer stays); re-enabling sends
/// them all, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_integration_sends_nothing_and_keeps_events() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    let r = put_integration(
        &fwd,
        &key,
        json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": false}),
    )
    .await;
    assert_eq!(r.status(), 200);
    for i in 0..3 {
        publish_message_event(
            &js,
            &message_event("acme", &format!("m-{i}"), "SENT", "u_1"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        dp.answers().is_empty(),
        "a disabled integration sends nothing"
    );
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert_eq!(st["state"], "disabled", "{st}");
    assert_eq!(st["pending"], 3, "the events are kept: {st}");

    // Re-enabled without resending the write key (the stored one is kept).
    let r = put_integration(
        &fwd,
        &key,
        json!({"dataPlaneUrl": dp.url(), "enabled": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    eventually("the kept events", Duration::from_secs(10), async || {
        dp.message_ids().len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dp.events().len(), 3, "each once");
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    assert_eq!(st["state"], "active");
    assert_eq!(st["delivered"], 3, "{st}");
}

/// A partial PUT changes what it names and keeps the rest (it used to reset `enabled`, the
/// statuses and the opt-ins to their defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_put_keeps_what_it_does_not_name() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    let full = json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": false,
        "events": {"statuses": ["SENT"], "profileUpdates": true, "tenantUpdates": true}});
    let r = put_integration(&fwd, &key, full).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    let moved = format!("{}/moved", dp.url());
    let r = put_integration(&fwd, &key, json!({"dataPlaneUrl": moved})).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (_, cfg) = get_json(&fwd, &key, "/integrations/rudderstack").await;
    assert_eq!(cfg["dataPlaneUrl"], moved.as_str(), "{cfg}");
    assert_eq!(cfg["enabled"], false, "{cfg}");
    assert_eq!(cfg["events"]["statuses"], json!(["SENT"]), "{cfg}");
    assert_eq!(cfg["events"]["profileUpdates"], true, "{cfg}");
    assert_eq!(cfg["events"]["tenantUpdates"], true, "{cfg}");
    assert_eq!(cfg["writeKey"], "••••9f2a", "{cfg}");

    let r = put_integration(&fwd, &key, json!({"events": {"profileUpdates": false}})).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (_, cfg) = get_json(&fwd, &key, "/integrations/rudderstack").await;
    assert_eq!(cfg["events"]["profileUpdates"], false, "{cfg}");
    assert_eq!(cfg["events"]["tenantUpdates"], true, "{cfg}");
    assert_eq!(cfg["enabled"], false, "{cfg}");

    // The first PUT still needs what has no stored value.
    let other = stack.workspace("other").await;
    let r = put_integration(&fwd, &other, json!({"writeKey": WRITE_KEY})).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("dataPlaneUrl is required"),
        "{body}"
    );
}
