//! The shared consumer plumbing (rc_common::consumer) against a real nats-server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;
use rc_common::Shutdown;
use rc_common::consumer::{self, ConsumerSpec, Handler, Outcome};
use rc_common::subjects::{EVENTS_STREAM, dlq_headers};
use rc_tests::{Stack, stored_messages};

#[derive(Default)]
struct Recorder {
    done: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, i64>>,
}

impl Handler for Recorder {
    async fn handle(&self, message: &Message) -> Outcome {
        let payload = String::from_utf8_lossy(&message.payload).to_string();
        let attempt = {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(payload.clone()).or_default();
            *n += 1;
            *n
        };
        match payload.as_str() {
            "poison" => Outcome::Poison("not an envelope".into()),
            "always-fail" => Outcome::Retry("redis down".into()),
            p if p.starts_with("flaky") && attempt < 3 => Outcome::Retry("try again".into()),
            _ => {
                self.done.lock().unwrap().push(payload);
                Outcome::Done
            }
        }
    }
}

fn spec() -> ConsumerSpec {
    let mut spec = ConsumerSpec::new("ctest", EVENTS_STREAM, "events.*.ctest");
    spec.max_deliver = 3;
    spec.base_backoff = Duration::from_millis(50);
    spec.max_backoff = Duration::from_millis(200);
    spec.ack_wait = Duration::from_secs(2);
    spec.concurrency = 4;
    spec
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_ack_retry_and_dead_letter() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let recorder = Arc::new(Recorder::default());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(consumer::run(
        js.clone(),
        spec(),
        recorder.clone(),
        shutdown.clone(),
    ));

    for payload in ["ok-1", "poison", "flaky-1", "always-fail", "ok-2"] {
        js.publish("events.acme.ctest", payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_until("three successes", || {
        recorder.done.lock().unwrap().len() == 3
    })
    .await;
    let js2 = js.clone();
    let mut dlq = Vec::new();
    for _ in 0..100 {
        dlq = stored_messages(&js2, "DLQ", "dlq.ctest.>").await;
        if dlq.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dlq.len(), 2, "poison and always-fail dead-lettered");
    let by_payload: HashMap<String, &async_nats::jetstream::Message> = dlq
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).to_string(), m))
        .collect();
    let poison = by_payload["poison"];
    assert_eq!(poison.subject.as_str(), "dlq.ctest.acme");
    let headers = poison.headers.as_ref().unwrap();
    assert_eq!(
        headers.get(dlq_headers::REASON).unwrap().as_str(),
        "not an envelope"
    );
    assert_eq!(
        headers.get(dlq_headers::ORIGINAL_SUBJECT).unwrap().as_str(),
        "events.acme.ctest"
    );
    assert_eq!(
        headers.get(dlq_headers::DELIVERY_COUNT).unwrap().as_str(),
        "1"
    );
    let failed = by_payload["always-fail"].headers.as_ref().unwrap();
    assert!(
        failed
            .get(dlq_headers::REASON)
            .unwrap()
            .as_str()
            .contains("gave up after 3 deliveries")
    );
    assert_eq!(recorder.attempts.lock().unwrap()["always-fail"], 3);
    assert_eq!(recorder.attempts.lock().unwrap()["flaky-1"], 3);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("bounded drain")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_a_nats_restart() {
    let mut stack = Stack::start();
    let js = stack.jetstream().await;
    let recorder = Arc::new(Recorder::default());
    let shutdown = Shutdown::new();
    let consumer_js = rc_common::nats::jetstream(
        rc_common::nats::connect(&stack.nats.settings(), "ctest")
            .await
            .unwrap(),
        &stack.nats.settings(),
    );
    let task = tokio::spawn(consumer::run(
        consumer_js,
        spec(),
        recorder.clone(),
        shutdown.clone(),
    ));
    js.publish("events.acme.ctest", "before".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until("first message", || recorder.done.lock().unwrap().len() == 1).await;

    stack.nats.restart();
    let js = stack.jetstream().await;
    for i in 0..20 {
        js.publish("events.acme.ctest", format!("after-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_until("messages after the restart", || {
        recorder.done.lock().unwrap().len() == 21
    })
    .await;
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("bounded drain")
        .unwrap();
}
