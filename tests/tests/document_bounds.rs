//! Profile and tenant size bounds (issue 14 item 4), against real Redis and NATS: JSON-patch
//! `copy` amplification is refused before it is built (Redis memory does not grow), oversized
//! writes answer 413 in the JSON error shape, an oversized identify or group is dead-lettered
//! with its reason, and random patch sequences never yield a document over the bound.

use std::time::Duration;

use proptest::prelude::*;
use prost::Message as _;
use rc_proto::{Envelope, EventType};
use rc_tests::{Stack, call, stored_messages};
use reqwest::Method;
use serde_json::{Value, json};

use profiles::patch::{self, Limits, Operation, PatchError};

async fn used_memory(stack: &Stack) -> i64 {
    let mut conn = stack.redis_conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_amplification_and_oversized_profiles_are_refused() {
    let stack = Stack::start();
    let key = stack.workspace("bounds").await;
    let profiles = stack.profiles().await;
    let (s, _) = call(
        &profiles,
        &key,
        Method::POST,
        "/profiles/u_1",
        Some(json!({"profile": {"blob": "x".repeat(1_700)}})),
    )
    .await;
    assert_eq!(s, 200);
    let before = used_memory(&stack).await;

    // The attack: each copy of the root doubles the profile (1.7 KB → 16.9 MB and more).
    let ops: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
        .collect();
    let (s, body) = call(
        &profiles,
        &key,
        Method::PATCH,
        "/profiles/u_1",
        Some(json!({"patch": ops})),
    )
    .await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["type"], "invalid_request_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("patch operation")
    );

    // More operations than allowed: refused before any is applied.
    let many: Vec<Value> = (0..1_001)
        .map(|i| json!({"op": "add", "path": format!("/k{i}"), "value": 1}))
        .collect();
    let (s, body) = call(
        &profiles,
        &key,
        Method::PATCH,
        "/profiles/u_1",
        Some(json!({"patch": many})),
    )
    .await;
    assert_eq!(s, 413, "{body}");

    // A profile over the bound by POST, PUT, or grown there by merges.
    let big = "y".repeat(300 * 1024);
    for method in [Method::POST, Method::PUT] {
        let (s, body) = call(
            &profiles,
            &key,
            method.clone(),
            "/profiles/u_2",
            Some(json!({"profile": {"big": big}})),
        )
        .await;
        assert_eq!(s, 413, "{method}: {body}");
    }
    let chunk = "z".repeat(100 * 1024);
    for (i, expected) in [(0, 200), (1, 200), (2, 413)] {
        let (s, body) = call(
            &profiles,
            &key,
            Method::POST,
            "/profiles/u_3",
            Some(json!({"profile": {format!("f{i}"): chunk}})),
        )
        .await;
        assert_eq!(s, expected, "merge {i}: {body}");
    }
    // Rewriting a field of a profile near the bound with a value of the same size still works.
    let (s, _) = call(
        &profiles,
        &key,
        Method::POST,
        "/profiles/u_3",
        Some(json!({"profile": {"f1": "w".repeat(100 * 1024)}})),
    )
    .await;
    assert_eq!(
        s, 200,
        "an update that does not grow the profile is accepted"
    );
    let (_, got) = call(&profiles, &key, Method::GET, "/profiles/u_3", None).await;
    assert!(got["profile"].get("f2").is_none());

    let after = used_memory(&stack).await;
    assert!(
        after - before < 2 * 1024 * 1024,
        "Redis grew by {} bytes",
        after - before
    );
    let (_, got) = call(&profiles, &key, Method::GET, "/profiles/u_1", None).await;
    assert_eq!(got["profile"].as_object().unwrap().len(), 1, "unchanged");
}

fn envelope(kind: EventType, id: &str, traits: Value) -> Envelope {
    Envelope {
        group_id: "t_big".into(),
        ..rc_tests::events::envelope("bounds", id, kind, "u_big", 1_700_000_000_000, &traits)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_identify_and_group_are_dead_lettered_and_tenants_bounded() {
    let stack = Stack::start();
    let key = stack.workspace("bounds").await;
    let _profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let js = stack.jetstream().await;
    let big = json!({"blob": "q".repeat(300 * 1024)});
    for (subject, env) in [
        (
            "events.bounds.identify",
            envelope(EventType::Identify, "big-i", big.clone()),
        ),
        (
            "events.bounds.group",
            envelope(EventType::Group, "big-g", big.clone()),
        ),
    ] {
        js.publish(subject, env.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut reasons = Vec::new();
    for _ in 0..200 {
        let dead = stored_messages(&js, "DLQ", "dlq.>").await;
        reasons = dead
            .iter()
            .map(|m| {
                m.headers
                    .as_ref()
                    .unwrap()
                    .get(rc_common::subjects::dlq_headers::REASON)
                    .unwrap()
                    .as_str()
                    .to_string()
            })
            .collect();
        if reasons.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("profile would be")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("tenant would be")),
        "{reasons:?}"
    );

    // PUT /tenants and a membership profile over the bound: 413 in the JSON error shape.
    let (s, body) = call(
        &accounts,
        &key,
        Method::PUT,
        "/tenants/t_1",
        Some(json!({"name": "T", "properties": big})),
    )
    .await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["type"], "invalid_request_error");
    let (s, _) = call(
        &accounts,
        &key,
        Method::PUT,
        "/tenants/t_1",
        Some(json!({"name": "T"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = call(
        &accounts,
        &key,
        Method::PUT,
        "/users/u_1/tenants/t_1",
        Some(json!({"profile": big})),
    )
    .await;
    assert_eq!(s, 413, "{body}");
}

fn op_strategy() -> impl Strategy<Value = Operation> {
    let path = prop_oneof![
        Just(String::new()),
        "(/[abc]){1,3}",
        "(/[abc]){0,2}/(0|1|-)",
    ];
    let value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,200}".prop_map(Value::from),
        Just(json!({"a": {"b": [1, 2, 3]}, "c": "x"})),
        Just(json!([[["deep"]]])),
    ];
    (
        prop_oneof![
            Just("add"),
            Just("copy"),
            Just("copy"),
            Just("move"),
            Just("replace"),
            Just("remove"),
            Just("test")
        ],
        path.clone(),
        path,
        value,
    )
        .prop_map(|(op, path, from, value)| Operation {
            op: op.into(),
            path,
            from: Some(from),
            value: Some(value),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the operations, an accepted patch never yields a document over the bounds, and
    /// a refusal is only ever Invalid or TooLarge (no panic, no stack overflow).
    #[test]
    fn random_patches_never_pass_the_bounds(ops in prop::collection::vec(op_strategy(), 0..60)) {
        let limits = Limits { max_ops: 50, max_bytes: 4 * 1024, max_depth: 8 };
        let doc = json!({"a": {"b": "x".repeat(300)}, "c": [1, 2]});
        match patch::apply(&doc, &ops, limits) {
            Ok(out) => {
                let len = serde_json::to_vec(&out).unwrap().len();
                prop_assert!(len <= limits.max_bytes, "{len} bytes");
                prop_assert!(ops.len() <= limits.max_ops);
                prop_assert!(depth(&out) <= limits.max_depth);
            }
            Err(PatchError::Invalid(_)) | Err(PatchError::TooLarge(_)) => {}
        }
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
