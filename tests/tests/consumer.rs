//! The shared consumer plumbing (rc_common::consumer) against a real nats-server.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
            "always-fail" => Outcome::Retry("provider down".into()),
            "panic" => panic!("boom: a handler bug"),
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

    for payload in ["ok-1", "poison", "flaky-1", "always-fail", "panic", "ok-2"] {
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
    // A Retry is never dead-lettered, however many deliveries it takes (an outage is not bad
    // data): wait well past the old 10-delivery limit.
    wait_until("always-fail retried more than 10 times", || {
        recorder.attempts.lock().unwrap()["always-fail"] > 10
    })
    .await;
    let dlq = stored_messages(&js, "DLQ", "dlq.ctest.>").await;
    let by_payload: HashMap<String, &async_nats::jetstream::Message> = dlq
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).to_string(), m))
        .collect();
    assert_eq!(
        by_payload
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["panic", "poison"].into(),
        "only poison and the panicking message are dead-lettered"
    );
    assert_eq!(dlq.len(), 2);
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
    let panicked = by_payload["panic"].headers.as_ref().unwrap();
    assert_eq!(
        panicked.get(dlq_headers::REASON).unwrap().as_str(),
        "handler panicked: boom: a handler bug"
    );
    assert_eq!(recorder.attempts.lock().unwrap()["panic"], 1);
    assert_eq!(recorder.attempts.lock().unwrap()["flaky-1"], 3);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("bounded drain")
        .unwrap();
}

/// Answers Unavailable while `down` is set (a shared dependency is out), Done otherwise.
#[derive(Default)]
struct Outage {
    down: AtomicBool,
    calls: AtomicUsize,
    done: Mutex<HashSet<String>>,
}

impl Handler for Outage {
    async fn handle(&self, message: &Message) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Outcome::Unavailable("redis: connection refused".into());
        }
        let payload = String::from_utf8_lossy(&message.payload).to_string();
        self.done.lock().unwrap().insert(payload);
        Outcome::Done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_pauses_pulling_and_never_dead_letters() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let handler = Arc::new(Outage::default());
    handler.down.store(true, Ordering::SeqCst);
    let mut spec = spec();
    spec.base_backoff = Duration::from_millis(100);
    spec.max_backoff = Duration::from_millis(500);
    spec.max_probe_interval = Duration::from_millis(800);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(consumer::run(
        js.clone(),
        spec,
        handler.clone(),
        shutdown.clone(),
    ));
    for i in 0..50 {
        js.publish("events.acme.ctest", format!("m-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // 8 s of outage. Without pausing, 50 messages naked with a 100-500 ms backoff would be
    // handled well over 500 times; paused, it is the in-flight burst plus about one probe per
    // 800 ms.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = handler.calls.load(Ordering::SeqCst);
    assert!(during >= 2, "probes keep coming while paused ({during})");
    assert!(
        during <= 40,
        "a paused consumer handled {during} deliveries in 8 s"
    );
    handler.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while handler.done.lock().unwrap().len() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 50 handled after the outage",
            handler.done.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored_messages(&js, "DLQ", "dlq.ctest.>").await.is_empty(),
        "an outage dead-letters nothing"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("bounded drain")
        .unwrap();
}

/// Never answers for "crash" (the process died mid-message: no ack, no nak); Done otherwise.
#[derive(Default)]
struct Crasher {
    crash_entries: AtomicUsize,
    done: Mutex<HashSet<String>>,
}

impl Handler for Crasher {
    async fn handle(&self, message: &Message) -> Outcome {
        let payload = String::from_utf8_lossy(&message.payload).to_string();
        if payload == "crash" {
            self.crash_entries.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.done.lock().unwrap().insert(payload);
        Outcome::Done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_killing_the_consumer_is_quarantined() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let handler = Arc::new(Crasher::default());
    let mut spec = spec();
    spec.durable = "ctest-quarantine".into();
    spec.ack_wait = Duration::from_secs(1);
    spec.concurrency = 8;
    spec.quarantine = Some(consumer::Quarantine::new(stack.redis_conn().await, 3));
    js.publish("events.acme.ctest", "crash".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for i in 0..20 {
        js.publish("events.acme.ctest", format!("ok-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Each round: start the consumer, wait for the poison message to be taken (or
    // quarantined), then abort the consumer as a crash would, and start it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut dlq = Vec::new();
    for round in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "not quarantined after {round} restarts"
        );
        let entries = handler.crash_entries.load(Ordering::SeqCst);
        let task = tokio::spawn(consumer::run(
            js.clone(),
            spec.clone(),
            handler.clone(),
            Shutdown::new(),
        ));
        let round_end = std::time::Instant::now() + Duration::from_secs(15);
        while handler.crash_entries.load(Ordering::SeqCst) == entries
            && std::time::Instant::now() < round_end
        {
            dlq = stored_messages(&js, "DLQ", "dlq.ctest.>").await;
            if !dlq.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();
        if !dlq.is_empty() {
            break;
        }
    }
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload.as_ref(), b"crash");
    assert_eq!(
        dlq[0]
            .headers
            .as_ref()
            .unwrap()
            .get(dlq_headers::REASON)
            .unwrap()
            .as_str(),
        "quarantined: delivery died 3 times without an answer"
    );
    assert_eq!(
        handler.crash_entries.load(Ordering::SeqCst),
        3,
        "handled three times, never again"
    );
    // The others were handled (by the consumers between the crashes, or a last one now).
    let shutdown = Shutdown::new();
    let task = tokio::spawn(consumer::run(
        js.clone(),
        spec.clone(),
        handler.clone(),
        shutdown.clone(),
    ));
    wait_until("every other message", || {
        handler.done.lock().unwrap().len() == 20
    })
    .await;
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

/// Naks its first delivery of "nak-then-crash" (an answer), then never answers (the process
/// dies mid-message); handled from the fourth delivery on.
#[derive(Default)]
struct NakThenCrash {
    entries: AtomicUsize,
    done: AtomicBool,
}

impl Handler for NakThenCrash {
    async fn handle(&self, _message: &Message) -> Outcome {
        match self.entries.fetch_add(1, Ordering::SeqCst) {
            0 => Outcome::Retry("not yet".into()),
            1 | 2 => std::future::pending().await,
            _ => {
                self.done.store(true, Ordering::SeqCst);
                Outcome::Done
            }
        }
    }
}

/// Only deliveries that ended without any answer count toward the quarantine: one nak'ed
/// delivery and two deaths are not three deaths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nak_is_not_counted_as_a_death() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let handler = Arc::new(NakThenCrash::default());
    let mut spec = spec();
    spec.durable = "ctest-nak-death".into();
    spec.ack_wait = Duration::from_secs(1);
    spec.quarantine = Some(consumer::Quarantine::new(stack.redis_conn().await, 3));
    js.publish("events.acme.ctest", "nak-then-crash".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !handler.done.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "never handled");
        let entries = handler.entries.load(Ordering::SeqCst);
        let task = tokio::spawn(consumer::run(
            js.clone(),
            spec.clone(),
            handler.clone(),
            Shutdown::new(),
        ));
        // Until this run took its delivery (or quarantined it), then "crash".
        let round_end = std::time::Instant::now() + Duration::from_secs(15);
        while handler.entries.load(Ordering::SeqCst) == entries
            && std::time::Instant::now() < round_end
            && stored_messages(&js, "DLQ", "dlq.ctest.>").await.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The nak'ed delivery is an answer: let it be redelivered by the same run.
        if handler.entries.load(Ordering::SeqCst) == 1 {
            while handler.entries.load(Ordering::SeqCst) == 1
                && std::time::Instant::now() < round_end
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        assert!(
            stored_messages(&js, "DLQ", "dlq.ctest.>").await.is_empty(),
            "quarantined after {} deliveries, only two of which died",
            handler.entries.load(Ordering::SeqCst)
        );
    }
    assert_eq!(handler.entries.load(Ordering::SeqCst), 4);
}
