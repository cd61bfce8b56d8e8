//! Redis down for minutes under load (issue 14): events keep flowing through the ingress
//! (identify, group, a track with an inline automation) before, during and after the outage;
//! Redis comes back on the same port with the same AOF. Then: no dead letter at all, and every
//! effect applied (profiles, tenants, runs).
//!
//! The outage lasts `RC_TEST_REDIS_OUTAGE_SECS` seconds (default 300, as the issue requires).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rc_proto::RunEvent;
use rc_tests::{Stack, stored_messages};
use serde_json::{Value, json};

const WS: &str = "outage";
/// Offered load: one event per tick.
const TICK: Duration = Duration::from_millis(50);

fn outage() -> Duration {
    let secs = std::env::var("RC_TEST_REDIS_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// What the load generator got accepted (202), by kind.
#[derive(Default)]
struct Accepted {
    identify: Mutex<BTreeSet<u64>>,
    group: Mutex<BTreeSet<u64>>,
    track: Mutex<BTreeSet<u64>>,
    during_outage: Mutex<u64>,
}

fn event(i: u64) -> Value {
    let user = format!("u_{i}");
    match i % 3 {
        0 => json!({"type": "identify", "userId": user, "messageId": format!("m-{i}"),
            "traits": {"email": format!("{user}@example.org"), "seq": i}}),
        1 => json!({"type": "group", "userId": user, "groupId": format!("t_{i}"),
            "messageId": format!("m-{i}"), "traits": {"name": format!("Tenant {i}"), "seq": i}}),
        _ => json!({"type": "track", "userId": user, "event": "Outage Probe",
            "messageId": format!("m-{i}"),
            "properties": {"courier": {"automation": {"steps": [
                {"action": "send", "template": "OUTAGE"}]}}}}),
    }
}

/// Sends event `i` until the ingress accepts it, retrying a retryable answer (503/429) the way
/// RudderStack does.
async fn send(
    http: reqwest::Client,
    url: String,
    key: String,
    i: u64,
    accepted: Arc<Accepted>,
    redis_down: Arc<Mutex<bool>>,
) {
    let body = event(i);
    let deadline = Instant::now() + outage() + Duration::from_secs(120);
    loop {
        let answer = http
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer.map(|r| r.status().as_u16()) {
            Ok(202) => break,
            Ok(503 | 429) | Err(_) => {}
            Ok(other) => panic!("event {i}: unexpected answer {other}"),
        }
        assert!(Instant::now() < deadline, "event {i} never accepted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if *redis_down.lock().unwrap() {
        *accepted.during_outage.lock().unwrap() += 1;
    }
    let set = match i % 3 {
        0 => &accepted.identify,
        1 => &accepted.group,
        _ => &accepted.track,
    };
    set.lock().unwrap().insert(i);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_minutes_dead_letters_nothing_and_every_effect_lands() {
    let outage = outage();
    let mut stack = Stack::start();
    let key = stack.workspace(WS).await;
    let uncached_key = rc_common::auth::WorkspaceStore::new(stack.redis_conn().await)
        .add_key(WS, None)
        .await
        .expect("second key");
    // The ingress needs only NATS for a key it verified before the outage: the key's cache
    // entry (200 ms in tests) is used past its TTL while Redis is unavailable.
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let js = stack.jetstream().await;

    let accepted = Arc::new(Accepted::default());
    let redis_down = Arc::new(Mutex::new(false));
    let http = reqwest::Client::new();
    let url = ingress.url("/inbound/rudderstack");
    let generator = {
        let (accepted, redis_down, http, key) = (
            accepted.clone(),
            redis_down.clone(),
            http.clone(),
            key.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            let mut senders = Vec::new();
            for i in 0.. {
                tick.tick().await;
                senders.push(tokio::spawn(send(
                    http.clone(),
                    url.clone(),
                    key.clone(),
                    i,
                    accepted.clone(),
                    redis_down.clone(),
                )));
                senders.retain(|s: &tokio::task::JoinHandle<()>| !s.is_finished());
            }
        })
    };

    // Before: 10 s of load with Redis up.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.redis.stop();
    *redis_down.lock().unwrap() = true;
    let down_at = Instant::now();

    // During: the ingress still accepts (cached key, NATS up); an uncached key gets a
    // retryable 503 in the JSON error shape, never a 401.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refused = http
        .post(ingress.url("/inbound/rudderstack"))
        .bearer_auth(&uncached_key)
        .json(&event(1_000_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].is_string(), "JSON error shape: {body}");
    let (s, _) = rc_tests::call(&profiles, &key, reqwest::Method::GET, "/profiles/u_0", None).await;
    assert_eq!(s, 503, "the profile API answers 503 while Redis is down");

    let remaining = outage.saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    stack.redis.start_again();
    *redis_down.lock().unwrap() = false;
    let during = *accepted.during_outage.lock().unwrap();
    let expected_min = (outage.as_secs() * 1000 / TICK.as_millis() as u64) / 2;
    assert!(
        during >= expected_min,
        "the ingress accepted only {during} events during the outage"
    );

    // After: 10 s more load, then stop the generator once everything sent is accepted.
    tokio::time::sleep(Duration::from_secs(10)).await;
    generator.abort();
    let _ = generator.await;
    // In-flight senders finish on their own (Redis is back).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let identify = accepted.identify.lock().unwrap().clone();
    let group = accepted.group.lock().unwrap().clone();
    let track = accepted.track.lock().unwrap().clone();
    assert!(!identify.is_empty() && !group.is_empty() && !track.is_empty());

    // Every effect lands (consumers naked with up to 60 s of backoff and probe every ≤ 10 s).
    let redis = stack.redis_conn().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut missing_profiles: Vec<u64> = identify.iter().copied().collect();
    let mut missing_tenants: Vec<u64> = group.iter().copied().collect();
    let mut missing_runs: HashSet<String> = track.iter().map(|i| format!("m-{i}")).collect();
    loop {
        let mut conn = redis.clone();
        let mut still = Vec::new();
        for i in missing_profiles {
            let raw: Option<String> = redis::cmd("GET")
                .arg(profiles::store::profile_key(WS, &format!("u_{i}")))
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            let ok = raw
                .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                .is_some_and(|p| p["seq"] == json!(i));
            if !ok {
                still.push(i);
            }
        }
        missing_profiles = still;
        let mut still = Vec::new();
        for i in missing_tenants {
            let raw: Option<String> = redis::cmd("GET")
                .arg(accounts::store::doc_key(WS, &format!("t_{i}")))
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            let ok = raw
                .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                .is_some_and(|t| t["properties"]["seq"] == json!(i));
            if !ok {
                still.push(i);
            }
        }
        missing_tenants = still;
        if !missing_runs.is_empty() {
            for m in stored_messages(&js, "COURIER", &format!("courier.{WS}.run.started")).await {
                let run = RunEvent::decode(m.payload.as_ref()).unwrap();
                missing_runs.remove(&run.source_message_id);
            }
        }
        if missing_profiles.is_empty() && missing_tenants.is_empty() && missing_runs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "effects missing after the outage: {} profiles, {} tenants, {} runs",
            missing_profiles.len(),
            missing_tenants.len(),
            missing_runs.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let dead = stored_messages(&js, "DLQ", "dlq.>").await;
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|m| m.headers.as_ref())
        .filter_map(|h| h.get(rc_common::subjects::dlq_headers::REASON))
        .map(|r| r.as_str().to_string())
        .collect();
    assert!(
        dead.is_empty(),
        "an outage dead-lettered {}: {reasons:?}",
        dead.len()
    );
    eprintln!(
        "outage {} s: {} identify, {} group, {} track accepted ({during} while Redis was down); 0 dead letters",
        outage.as_secs(),
        identify.len(),
        group.len(),
        track.len()
    );
    drop((profiles, accounts, automations, ingress));
}

/// A known key keeps working while Redis is down, past its cache TTL (the ingress needs only
/// NATS); an unknown key gets a retryable 503, never 401; once Redis is back the events are
/// applied and a revoked key stops working within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_outlive_their_cache_ttl_only_while_redis_is_down() {
    let mut stack = Stack::start();
    let key = stack.workspace("keys").await;
    let store = rc_common::auth::WorkspaceStore::new(stack.redis_conn().await);
    let revoked = store.add_key("keys", None).await.expect("second key");
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let http = reqwest::Client::new();
    let post = |key: &str, user: &str| {
        http.post(ingress.url("/inbound/rudderstack"))
            .bearer_auth(key)
            .json(
                &json!({"type": "identify", "userId": user, "messageId": user,
                "traits": {"plan": "team"}}),
            )
            .send()
    };
    // Both keys verified (and cached) while Redis is up.
    assert_eq!(post(&key, "before").await.unwrap().status().as_u16(), 202);
    assert_eq!(
        post(&revoked, "before-2").await.unwrap().status().as_u16(),
        202
    );

    stack.redis.stop();
    // Well past the 200 ms cache TTL of the tests' settings.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        let answer = post(&key, &format!("during-{i}")).await.unwrap();
        assert_eq!(answer.status().as_u16(), 202, "known key during the outage");
    }
    let unknown = post("rck_00000000_never-issued", "x").await.unwrap();
    assert_eq!(
        unknown.status().as_u16(),
        503,
        "an unknown key is not invalid yet"
    );
    assert!(unknown.headers().contains_key("retry-after"));
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["type"], "unavailable", "{body}");

    stack.redis.start_again();
    for i in 0..5 {
        let path = format!("/profiles/during-{i}");
        rc_tests::profiles::eventually("an outage event applied", Duration::from_secs(60), || {
            let path = path.clone();
            let (profiles, key) = (&profiles, &key);
            async move {
                let (s, _) = rc_tests::call(profiles, key, reqwest::Method::GET, &path, None).await;
                (s == 200).then_some(())
            }
        })
        .await;
    }
    // Redis answers again: a revoked key stops working once its entry is past the TTL.
    let key_id = rc_common::auth::key_id_of(&revoked);
    let store = rc_common::auth::WorkspaceStore::new(stack.redis_conn().await);
    assert!(store.revoke_key("keys", &key_id).await.expect("revoke"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        post(&revoked, "after").await.unwrap().status().as_u16(),
        401
    );
    assert_eq!(post(&key, "after").await.unwrap().status().as_u16(), 202);
}
