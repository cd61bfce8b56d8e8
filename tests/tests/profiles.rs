//! The profiles service over real NATS and Redis.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use proptest::prelude::*;
use prost::Message;
use rc_common::subjects::{COURIER_STREAM, DLQ_STREAM, dlq_headers};
use rc_proto::{Envelope, EventType, ProfileUpdateRequest, ProfileUpdated};
use rc_tests::call_url as call;
use rc_tests::events::{envelope, publish_envelope};
use rc_tests::profiles::eventually;
use rc_tests::{ServiceProcess, Stack, stored_messages};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn get_profile(url: &str, key: &str) -> Option<Value> {
    let (status, body) = call(reqwest::Method::GET, url, key, None, &[]).await;
    match status {
        StatusCode::OK => Some(body["profile"].clone()),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET {url}: {other} {body}"),
    }
}

fn identify(ws: &str, message_id: &str, user_id: &str, ts_ms: i64, traits: Value) -> Envelope {
    envelope(ws, message_id, EventType::Identify, user_id, ts_ms, &traits)
}

async fn profile_updates(stack: &Stack, ws: &str) -> Vec<ProfileUpdated> {
    let js = stack.jetstream().await;
    stored_messages(
        &js,
        COURIER_STREAM,
        &format!("courier.{ws}.profile.updated"),
    )
    .await
    .into_iter()
    .map(|m| ProfileUpdated::decode(m.payload.clone()).expect("ProfileUpdated"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_through_the_ingress_becomes_a_readable_profile() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    // As RudderStack's Courier destination sends it: traits at root and in context.
    let event = json!({"type":"identify","userId":"u_4fa21","anonymousId":"0b6f3c2e-91d4",
        "context":{"traits":{"email":"ada@example.org","firstName":"Ada","lastName":"Byron","phone":"+33 6 12"},
            "ip":"203.0.113.24","library":{"name":"rudder-analytics-js"}},
        "traits":{"email":"ada@example.org","firstName":"Ada","lastName":"Byron","phone":"+33 6 12",
            "plan":"team","address":{"city":"Paris","country":"FR"}},
        "channel":"web","messageId":"5e0b7f7a-3c1d","rudderId":"d5c9a0f2",
        "originalTimestamp":"2026-03-02T09:14:05.120Z","sentAt":"2026-03-02T09:14:05.300Z",
        "receivedAt":"2026-03-02T09:14:05.412Z","timestamp":"2026-03-02T09:14:05.232Z"});
    let resp = reqwest::Client::new()
        .post(ingress.url("/inbound/rudderstack"))
        .header("authorization", format!("Bearer {key}"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let url = profiles.url("/profiles/u_4fa21");
    let profile = eventually("profile", WAIT, || get_profile(&url, &key)).await;
    assert_eq!(profile["email"], "ada@example.org");
    assert_eq!(profile["phone_number"], "+33 6 12");
    assert_eq!(profile["phone"], "+33 6 12");
    assert_eq!(profile["given_name"], "Ada");
    assert_eq!(profile["family_name"], "Byron");
    assert_eq!(profile["name"], "Ada Byron");
    assert_eq!(profile["plan"], "team");
    assert_eq!(profile["address"]["locality"], "Paris");
    assert_eq!(profile["address"]["country"], "FR");

    // The read contract: the same object, at the documented key.
    let mut redis = stack.redis_conn().await;
    let stored: String = redis::cmd("GET")
        .arg("{ws:acme:user:u_4fa21}:profile")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), profile);

    // A trait sent as null removes the key; an anonymous-only identify keys by anonymousId.
    let batch = json!({"batch":[
        {"type":"identify","userId":"u_4fa21","messageId":"m2","traits":{"plan":null},
         "timestamp":"2026-03-02T09:15:00Z"},
        {"type":"identify","anonymousId":"anon-7","messageId":"m3","traits":{"email":"x@example.org"}}]});
    let resp = reqwest::Client::new()
        .post(ingress.url("/inbound/rudderstack"))
        .header("authorization", format!("Bearer {key}"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    eventually("plan removed", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("plan").is_none())
    })
    .await;
    let anon = profiles.url("/profiles/anon-7");
    let p = eventually("anonymous profile", WAIT, || get_profile(&anon, &key)).await;
    assert_eq!(p, json!({"email":"x@example.org"}));

    // One ProfileUpdated per change, with the profile and the cause.
    let updates = eventually("3 ProfileUpdated", WAIT, || async {
        let u = profile_updates(&stack, "acme").await;
        (u.len() >= 3).then_some(u)
    })
    .await;
    assert_eq!(updates.len(), 3);
    let first = &updates
        .iter()
        .find(|u| u.cause_id == "5e0b7f7a-3c1d")
        .unwrap();
    assert_eq!(first.user_id, "u_4fa21");
    assert_eq!(first.source, "event");
    assert!(!first.deleted);
    let p: Value = serde_json::from_slice(&first.profile).unwrap();
    assert_eq!(p["plan"], "team");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_verbs_follow_courier_semantics() {
    use reqwest::Method;
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let profiles = stack.profiles().await;
    let url = profiles.url("/profiles/u%401");
    let ok = json!({"status":"SUCCESS"});

    assert_eq!(get_profile(&url, &key).await, None);
    let (s, b) = call(Method::GET, &url, &key, None, &[]).await;
    assert_eq!(
        (s, b["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("invalid_request_error"))
    );

    // POST merges (creating), null removes, omitted keys are kept.
    let body = json!({"profile":{"email":"a@x.org","plan":"team","tags":["a"]}});
    assert_eq!(
        call(Method::POST, &url, &key, Some(body), &[]).await,
        (StatusCode::OK, ok.clone())
    );
    let body = json!({"profile":{"plan":null,"locale":"fr"}});
    assert_eq!(
        call(Method::POST, &url, &key, Some(body), &[]).await,
        (StatusCode::OK, ok.clone())
    );
    let (s, b) = call(Method::GET, &url, &key, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b["profile"],
        json!({"email":"a@x.org","locale":"fr","tags":["a"]})
    );
    assert!(b["preferences"].is_object());
    // {"profile":{}} changes nothing.
    call(Method::POST, &url, &key, Some(json!({"profile":{}})), &[]).await;
    assert_eq!(get_profile(&url, &key).await.unwrap()["locale"], "fr");

    // PUT replaces; PUT {} empties (the profile still exists).
    let body = json!({"profile":{"email":"b@x.org"}});
    assert_eq!(
        call(Method::PUT, &url, &key, Some(body), &[]).await,
        (StatusCode::OK, ok.clone())
    );
    assert_eq!(
        get_profile(&url, &key).await,
        Some(json!({"email":"b@x.org"}))
    );
    call(Method::PUT, &url, &key, Some(json!({"profile":{}})), &[]).await;
    assert_eq!(get_profile(&url, &key).await, Some(json!({})));

    // PATCH (RFC 6902), creating the fields; a failed test changes nothing.
    let patch = json!({"patch":[{"op":"add","path":"/email","value":"c@x.org"},
        {"op":"add","path":"/tags","value":["x"]},{"op":"add","path":"/tags/-","value":"y"},
        {"op":"copy","from":"/email","path":"/backup_email"},{"op":"move","from":"/backup_email","path":"/alt"}]});
    assert_eq!(
        call(Method::PATCH, &url, &key, Some(patch), &[]).await,
        (StatusCode::OK, ok.clone())
    );
    assert_eq!(
        get_profile(&url, &key).await,
        Some(json!({"email":"c@x.org","alt":"c@x.org","tags":["x","y"]}))
    );
    let patch = json!({"patch":[{"op":"remove","path":"/alt"},{"op":"test","path":"/email","value":"nope"}]});
    let (s, b) = call(Method::PATCH, &url, &key, Some(patch), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["type"], "invalid_request_error");
    assert!(
        b["message"].as_str().unwrap().contains("test failed"),
        "{b}"
    );
    assert_eq!(get_profile(&url, &key).await.unwrap()["alt"], "c@x.org");
    let (s, _) = call(Method::PATCH, &url, &key, Some(json!({"patch":[]})), &[]).await;
    assert_eq!(s, StatusCode::OK);

    // Bad input: 400 with a message.
    for bad in [json!({"profile":"x"}), json!({"nope":{}}), json!([1])] {
        let (s, b) = call(Method::POST, &url, &key, Some(bad), &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(b["type"], "invalid_request_error");
        assert!(!b["message"].as_str().unwrap().is_empty());
    }
    let resp = reqwest::Client::new()
        .post(&url)
        .header("authorization", format!("Bearer {key}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, _) = call(Method::GET, &url, "wrong-key", None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Idempotency-Key: a repeat returns the first answer and has no second effect.
    let idem = [("idempotency-key", "k-1")];
    let first = call(
        Method::POST,
        &url,
        &key,
        Some(json!({"profile":{"n":1}})),
        &idem,
    )
    .await;
    assert_eq!(first, (StatusCode::OK, ok.clone()));
    let again = call(
        Method::POST,
        &url,
        &key,
        Some(json!({"profile":{"n":2}})),
        &idem,
    )
    .await;
    assert_eq!(again, first);
    assert_eq!(get_profile(&url, &key).await.unwrap()["n"], 1);
    // Keys are per workspace: the same key for another user is refused, nothing is written;
    // another workspace has its own keys.
    let other_url = profiles.url("/profiles/u_other");
    let (s, b) = call(
        Method::POST,
        &other_url,
        &key,
        Some(json!({"profile":{"n":3}})),
        &idem,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["type"], "idempotency_error");
    assert_eq!(get_profile(&other_url, &key).await, None);
    let key_b = stack.workspace("beta").await;
    let (s, _) = call(
        Method::POST,
        &other_url,
        &key_b,
        Some(json!({"profile":{"n":4}})),
        &idem,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let past = [
        ("idempotency-key", "k-2"),
        ("x-idempotency-expiration", "1000"),
    ];
    let (s, _) = call(Method::POST, &url, &key, Some(json!({"profile":{}})), &past).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // DELETE removes it: GET is 404 again.
    assert_eq!(
        call(Method::DELETE, &url, &key, None, &[]).await,
        (StatusCode::OK, ok)
    );
    assert_eq!(get_profile(&url, &key).await, None);

    // Every change announced once, with source "api"; the replayed POST and no-ops not at all.
    let updates = profile_updates(&stack, "acme").await;
    assert!(
        updates
            .iter()
            .all(|u| u.source == "api" && u.user_id == "u@1")
    );
    // POST, POST, PUT, PUT {}, PATCH, POST n=1, DELETE.
    assert_eq!(updates.len(), 7, "{updates:?}");
    assert!(updates.last().unwrap().deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_writes_coexist_with_event_lww() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let profiles = stack.profiles().await;
    let url = profiles.url("/profiles/u1");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    // An API write now wins over an event stamped an hour ago, whatever the arrival order.
    call(
        reqwest::Method::POST,
        &url,
        &key,
        Some(json!({"profile":{"email":"api@x.org"}})),
        &[],
    )
    .await;
    publish_envelope(
        &js,
        &identify(
            "acme",
            "old",
            "u1",
            now - 3_600_000,
            json!({"email":"old@x.org","plan":"a"}),
        ),
    )
    .await;
    eventually("old event applied", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("plan").is_some())
    })
    .await;
    assert_eq!(get_profile(&url, &key).await.unwrap()["email"], "api@x.org");
    // A DELETE is a tombstone: a late older event does not resurrect deleted fields.
    call(reqwest::Method::DELETE, &url, &key, None, &[]).await;
    publish_envelope(
        &js,
        &identify("acme", "older", "u1", now - 7_200_000, json!({"plan":"b"})),
    )
    .await;
    publish_envelope(
        &js,
        &identify("acme", "newer", "u1", now + 60_000, json!({"plan":"c"})),
    )
    .await;
    let p = eventually("newer event applied", WAIT, || get_profile(&url, &key)).await;
    assert_eq!(p, json!({"plan":"c"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workspace_cannot_reach_another() {
    use reqwest::Method;
    let stack = Stack::start();
    let key_a = stack.workspace("ws-a").await;
    let key_b = stack.workspace("ws-b").await;
    let profiles = stack.profiles().await;
    let url = profiles.url("/profiles/same-user");
    call(
        Method::POST,
        &url,
        &key_a,
        Some(json!({"profile":{"email":"a@x.org"}})),
        &[],
    )
    .await;
    assert_eq!(get_profile(&url, &key_b).await, None);
    call(
        Method::POST,
        &url,
        &key_b,
        Some(json!({"profile":{"email":"b@x.org"}})),
        &[],
    )
    .await;
    call(Method::DELETE, &url, &key_b, None, &[]).await;
    assert_eq!(
        get_profile(&url, &key_a).await,
        Some(json!({"email":"a@x.org"}))
    );
    // Events of workspace b never land in workspace a either (stamped after b's DELETE).
    let js = stack.jetstream().await;
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 60) * 1000;
    publish_envelope(
        &js,
        &identify("ws-b", "m1", "same-user", later, json!({"plan":"b"})),
    )
    .await;
    eventually("b's event", WAIT, || get_profile(&url, &key_b)).await;
    assert_eq!(
        get_profile(&url, &key_a).await,
        Some(json!({"email":"a@x.org"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_identify_is_dead_lettered_with_its_reason() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let profiles = stack.profiles().await;
    js.publish(
        "events.acme.identify",
        bytes::Bytes::from_static(b"\xff\x00garbage"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // The consumer goes on with the next message.
    publish_envelope(
        &js,
        &identify("acme", "m1", "u1", 1_000, json!({"plan":"ok"})),
    )
    .await;
    let url = profiles.url("/profiles/u1");
    eventually("profile after poison", WAIT, || get_profile(&url, &key)).await;
    let dead = eventually("dead letter", WAIT, || async {
        let m = stored_messages(&js, DLQ_STREAM, "dlq.profiles.acme").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].payload[..], b"\xff\x00garbage");
    let headers = dead[0].headers.as_ref().unwrap();
    let reason = headers.get(dlq_headers::REASON).unwrap().as_str();
    assert!(reason.contains("undecodable envelope"), "{reason}");
    assert_eq!(
        headers.get(dlq_headers::ORIGINAL_SUBJECT).unwrap().as_str(),
        "events.acme.identify"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_loses_nothing_and_duplicates_nothing() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    const N: usize = 3_000;
    // A backlog first, so the kill lands while the consumer is working through it.
    for i in 0..N {
        let env = identify(
            "acme",
            &format!("m{i}"),
            &format!("u{}", i % 10),
            1_000 + i as i64,
            json!({format!("k{i}"): i}),
        );
        publish_envelope(&js, &env).await;
    }
    // The real rc-profiles binary, SIGKILLed while it works through the backlog.
    // Unacked messages come back after ack_wait: keep it as short as the in-process settings.
    let mut env = stack.service_env();
    env.push(("RC_PROFILES__ACK_WAIT_MS", "2000".into()));
    let mut process = ServiceProcess::start("rc-profiles", &env).await;
    eventually("first updates", WAIT, || async {
        (!profile_updates(&stack, "acme").await.is_empty()).then_some(())
    })
    .await;
    process.kill();
    let done = profile_updates(&stack, "acme").await.len();
    eprintln!("SIGKILLed after {done} of {N} updates");
    assert!(done < N, "killed too late to prove anything");
    let profiles = stack.profiles().await;
    for u in 0..10 {
        let url = profiles.url(&format!("/profiles/u{u}"));
        let p = eventually("all fields", WAIT, || async {
            get_profile(&url, &key)
                .await
                .filter(|p| p.as_object().unwrap().len() == N / 10)
        })
        .await;
        for (k, v) in p.as_object().unwrap() {
            assert_eq!(format!("k{v}"), *k);
        }
    }
    // Exactly one ProfileUpdated per event: every event changed its profile once.
    let updates = eventually("all updates", WAIT, || async {
        let u = profile_updates(&stack, "acme").await;
        (u.len() >= N).then_some(u)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(updates.len(), N);
    assert_eq!(profile_updates(&stack, "acme").await.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_a_nats_restart() {
    let mut stack = Stack::start();
    let key = stack.workspace("acme").await;
    let profiles = stack.profiles().await;
    {
        let js = stack.jetstream().await;
        publish_envelope(&js, &identify("acme", "m1", "u1", 1_000, json!({"a":1}))).await;
    }
    let url = profiles.url("/profiles/u1");
    eventually("first event", WAIT, || get_profile(&url, &key)).await;
    stack.nats.restart();
    let js = stack.jetstream().await;
    for i in 2..=20 {
        publish_envelope(
            &js,
            &identify(
                "acme",
                &format!("m{i}"),
                "u1",
                1_000 + i,
                json!({format!("k{i}"): i}),
            ),
        )
        .await;
    }
    eventually("events after the restart", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("k20").is_some() && p.get("k2").is_some())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_profile_requests_apply_merge_strategies_once() {
    use reqwest::Method;
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let profiles = stack.profiles().await;
    let url = profiles.url("/profiles/u1");
    call(
        Method::PUT,
        &url,
        &key,
        Some(json!({"profile":{"email":"a@x.org","plan":"team"}})),
        &[],
    )
    .await;
    let send = |request_id: &str, merge: &str, profile: Value| {
        let req = ProfileUpdateRequest {
            schema_version: 1,
            workspace_id: "acme".into(),
            request_id: request_id.into(),
            user_id: "u1".into(),
            profile: serde_json::to_vec(&profile).unwrap().into(),
            merge: merge.into(),
            run_id: "run-1".into(),
            requested_at: None,
        };
        let js = js.clone();
        async move {
            js.publish("courier.acme.profile.update", req.encode_to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    send(
        "r1",
        "soft-merge",
        json!({"email":"new@x.org","locale":"fr"}),
    )
    .await;
    let p = eventually("soft-merge", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("locale").is_some())
    })
    .await;
    assert_eq!(p, json!({"email":"a@x.org","plan":"team","locale":"fr"}));
    send("r2", "overwrite", json!({"email":"o@x.org"})).await;
    let p = eventually("overwrite", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p["email"] == "o@x.org")
    })
    .await;
    assert_eq!(p, json!({"email":"o@x.org","plan":"team","locale":"fr"}));
    send("r3", "none", json!({"email":"none@x.org"})).await;
    send("r4", "replace", json!({"email":"r@x.org","n":1})).await;
    let p = eventually("replace", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("n").is_some())
    })
    .await;
    assert_eq!(
        p,
        json!({"email":"r@x.org","n":1}),
        "none never applies to a non-empty profile"
    );
    // r4 again with another body: applied once, the repeat has no effect.
    send("r4", "overwrite", json!({"n":2})).await;
    send("r5", "overwrite", json!({"done":true})).await;
    eventually("r5", WAIT, || async {
        get_profile(&url, &key)
            .await
            .filter(|p| p.get("done").is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_profile(&url, &key).await.unwrap()["n"], 1);
    let updates = profile_updates(&stack, "acme").await;
    assert!(
        updates
            .iter()
            .any(|u| u.source == "automation" && u.cause_id == "r1")
    );
    assert_eq!(updates.iter().filter(|u| u.cause_id == "r4").count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Property: the merged profile depends only on the set of events, not on their order or on
// duplicates. Runs the real Lua merge against the real Redis.

#[derive(Debug, Clone)]
struct Ev {
    id: String,
    ts: i64,
    fields: Vec<(String, Option<i64>)>,
}

fn ev_strategy() -> impl Strategy<Value = Vec<Ev>> {
    let field = (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop::option::of(0i64..4),
    );
    prop::collection::vec((0i64..4, prop::collection::vec(field, 1..4)), 1..12).prop_map(|evs| {
        evs.into_iter()
            .enumerate()
            .map(|(i, (ts, fields))| Ev {
                id: format!("msg-{i}"),
                ts,
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })
            .collect()
    })
}

#[test]
fn merge_is_independent_of_order_and_duplicates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = Stack::start();
    let conn = rt.block_on(stack.redis_conn());
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let apply_all = |uid: &str, evs: &[Ev]| {
        rt.block_on(async {
            for e in evs {
                let write = profiles::store::Write::new(
                    profiles::store::Stamp::Event {
                        ts_ms: e.ts,
                        tiebreak: profiles::store::tiebreak(&e.id),
                    },
                    e.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.map(Value::from)))
                        .collect(),
                );
                profiles::store::apply(&conn, "prop", uid, &write)
                    .await
                    .unwrap();
            }
            let mut c = conn.clone();
            let profile: Option<String> = profiles::store::get(&conn, "prop", uid).await.unwrap();
            let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(profiles::store::fields_key("prop", uid))
                .query_async(&mut c)
                .await
                .unwrap();
            fields.sort();
            (profile, fields)
        })
    };
    let config = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    proptest!(config, |(evs in ev_strategy(), seed in any::<u64>(), dups in prop::collection::vec(any::<prop::sample::Index>(), 0..8))| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let canonical = apply_all(&format!("canon-{n}"), &evs);
        // Shuffle (deterministically from the seed) and add duplicates.
        let mut shuffled = evs.clone();
        for d in &dups {
            shuffled.push(d.get(&evs).clone());
        }
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let other = apply_all(&format!("perm-{n}"), &shuffled);
        prop_assert_eq!(&canonical, &other);
        // And the profile is what per-field LWW says it is.
        let mut expected = serde_json::Map::new();
        let mut best: std::collections::HashMap<String, (i64, String, Option<i64>)> = Default::default();
        for e in &evs {
            let tb = profiles::store::tiebreak(&e.id);
            for (k, v) in &e.fields {
                let cand = (e.ts, tb.clone(), *v);
                match best.get(k) {
                    Some(cur) if (cur.0, &cur.1) >= (cand.0, &cand.1) => {}
                    _ => { best.insert(k.clone(), cand); }
                }
            }
        }
        for (k, (_, _, v)) in best {
            if let Some(v) = v { expected.insert(k, Value::from(v)); }
        }
        let got: Option<Value> = canonical.0.as_deref().map(|p| serde_json::from_str(p).unwrap());
        let want = (!expected.is_empty()).then_some(Value::Object(expected));
        prop_assert_eq!(got, want);
    });
}

// ---------------------------------------------------------------------------------------------
// Measurement (not a test: never asserts on timings). Run with
//   cargo test --release -p rc-tests --test profiles measure -- --ignored --nocapture
// Env: MEASURE_EVENTS (backlog size, default 20000), MEASURE_RATE (events/s, default 2000),
// MEASURE_SECS (default 5).

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn measure_consumer_throughput_and_identify_latency() {
    use futures::StreamExt;
    let stack = Stack::start();
    let key = stack.workspace("bench").await;
    let js = stack.jetstream().await;

    // 1. Consumer throughput: a backlog of identifies, drained by one service instance.
    let n = env_or("MEASURE_EVENTS", 20_000) as usize;
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let env = identify(
            "bench",
            &format!("b{i}"),
            &format!("user-{}", i % 5_000),
            1_000 + i as i64,
            json!({"email": format!("u{i}@example.org"), "plan": "team", "n": i}),
        );
        acks.push(
            js.send_publish(
                "events.bench.identify",
                PublishMessage::build().payload(env.encode_to_vec().into()),
            )
            .await
            .unwrap(),
        );
        // The client bounds acks in flight: await them in chunks or publishing stalls.
        if acks.len() == 1_000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let started = std::time::Instant::now();
    let profiles = stack.profiles().await;
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .get_consumer(profiles::DURABLE_EVENTS)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "consumer throughput: {n} identify events into Redis in {secs:.2} s = {:.0} events/s (incl. ~service start)",
        n as f64 / secs
    );

    // 2. identify → profile readable: ingress POST sent → ProfileUpdated received (published
    //    only after the Redis write, so the profile is readable by then).
    let ingress = stack.ingress().await;
    let client = stack.nats_client().await;
    let mut sub = client
        .subscribe("courier.bench.profile.updated")
        .await
        .unwrap();
    let rate = env_or("MEASURE_RATE", 2_000);
    let total = rate * env_or("MEASURE_SECS", 5);
    let sent: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    > = Default::default();
    let http = reqwest::Client::new();
    let url = ingress.url("/inbound/rudderstack");
    let producer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut tasks = Vec::new();
            for i in 0..total {
                tick.tick().await;
                let id = format!("lat-{i}");
                sent.lock()
                    .unwrap()
                    .insert(id.clone(), std::time::Instant::now());
                let body = json!({"type":"identify","userId":format!("lat-user-{i}"),"messageId":id,
                    "traits":{"email":format!("l{i}@example.org"),"firstName":"Ada"}});
                let (http, url, key) = (http.clone(), url.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    http.post(url)
                        .header("authorization", format!("Bearer {key}"))
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }));
            }
            let mut non_2xx = 0;
            for t in tasks {
                if t.await.unwrap() != 202 {
                    non_2xx += 1;
                }
            }
            non_2xx
        })
    };
    let mut latencies = Vec::with_capacity(total as usize);
    let deadline = std::time::Instant::now() + Duration::from_secs(60 + total / rate.max(1));
    while latencies.len() < total as usize && std::time::Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else {
            break;
        };
        let u = ProfileUpdated::decode(msg.payload.clone()).unwrap();
        if let Some(at) = sent.lock().unwrap().get(&u.cause_id) {
            latencies.push(at.elapsed());
        }
    }
    let non_2xx = producer.await.unwrap();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "identify → profile readable at {rate} events/s for {total} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} measured, {non_2xx} non-2xx)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );
    drop(profiles);
}
