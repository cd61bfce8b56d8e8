//! Ingress over real HTTP, NATS and Redis.

use std::time::Duration;

use prost::Message;
use rc_proto::{Envelope, EventType};
use rc_tests::{Stack, stored_messages};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EVENTS: &str = "EVENTS";

async fn post(
    url: &str,
    key: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "RudderLabs")
        .body(body);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text:?}"));
    (status, body, headers)
}

async fn envelopes(stack: &Stack, subject: &str) -> Vec<(String, Envelope)> {
    let js = stack.jetstream().await;
    stored_messages(&js, EVENTS, subject)
        .await
        .into_iter()
        .map(|m| {
            (
                m.subject.to_string(),
                Envelope::decode(m.payload.clone()).expect("envelope"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_from_the_courier_destination_is_stored_normalized() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    // As the Courier destination sends a browser-SDK identify: traits at root and in context.
    let event = json!({"type":"identify","userId":"u_4fa21","anonymousId":"0b6f3c2e-91d4",
        "context":{"traits":{"email":"ada@example.org","name":"Ada Byron","plan":"team"},"ip":"203.0.113.24"},
        "traits":{"email":"ada@example.org","name":"Ada Byron","plan":"team"},
        "channel":"web","messageId":"5e0b7f7a-3c1d","rudderId":"d5c9a0f2","request_ip":"203.0.113.24",
        "originalTimestamp":"2026-03-02T09:14:05.120Z","sentAt":"2026-03-02T09:14:05.300Z",
        "receivedAt":"2026-03-02T09:14:05.412Z","timestamp":"2026-03-02T09:14:05.232Z"});
    let body = serde_json::to_vec(&event).unwrap();
    let (status, resp, _) = post(
        &ingress.url("/inbound/rudderstack"),
        Some(&key),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp, json!({"messageId": "5e0b7f7a-3c1d"}));

    let stored = envelopes(&stack, "events.acme.>").await;
    assert_eq!(stored.len(), 1);
    let (subject, env) = &stored[0];
    assert_eq!(subject, "events.acme.identify");
    assert_eq!(env.r#type(), EventType::Identify);
    assert_eq!(env.workspace_id, "acme");
    assert_eq!(env.user_id, "u_4fa21");
    assert_eq!(env.anonymous_id, "0b6f3c2e-91d4");
    assert_eq!(env.message_id, "5e0b7f7a-3c1d");
    let traits: Value = serde_json::from_slice(&env.traits).unwrap();
    assert_eq!(traits, event["traits"]);
    let context: Value = serde_json::from_slice(&env.context).unwrap();
    assert_eq!(context, event["context"]);
    assert_eq!(&env.raw[..], &body[..], "raw event kept byte for byte");
    assert_eq!(env.timestamp.unwrap().nanos, 232_000_000);
    assert!(env.received_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_with_automation_data_and_group_are_stored_on_their_subjects() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let props =
        r#"{"days_left":3,"courier":{"automation":{"data":{"userId":"u_4fa21","days_left":3}}}}"#;
    let track = format!(
        r#"{{"type":"track","event":"trial-ending","userId":"u_4fa21","messageId":"8f2d6b1a","properties":{props}}}"#
    );
    let (status, _, _) = post(&url, Some(&key), track).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let group = json!({"type":"group","groupId":"acct_northwind","userId":"u_4fa21","messageId":"1b7e4c9d",
        "traits":{"name":"Northwind Traders","plan":"enterprise","seats":40}});
    let (status, resp, _) = post(&url, Some(&key), group.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(resp["messageId"], "1b7e4c9d");

    let track_env = envelopes(&stack, "events.acme.track").await;
    assert_eq!(track_env.len(), 1);
    assert_eq!(track_env[0].1.event, "trial-ending");
    assert_eq!(&track_env[0].1.properties[..], props.as_bytes());
    let group_env = envelopes(&stack, "events.acme.group").await;
    assert_eq!(group_env.len(), 1);
    assert_eq!(group_env[0].1.group_id, "acct_northwind");
    assert_eq!(
        serde_json::from_slice::<Value>(&group_env[0].1.traits).unwrap(),
        group["traits"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_json_with_the_right_status() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            r#"{"type":"pageview","userId":"u","name":"Home"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown event type \"pageview\"",
        ),
        (
            r#"{"type":"alias","userId":"u"}"#.into(),
            StatusCode::BAD_REQUEST,
            "previousId",
        ),
        (
            "{\"type\":\"track\",\n\"event\":}".into(),
            StatusCode::BAD_REQUEST,
            "invalid JSON at line 2, column",
        ),
        (
            r#"{"type":"track","event":"e"}"#.into(),
            StatusCode::BAD_REQUEST,
            "userId or anonymousId",
        ),
        (
            r#"{"type":"track","userId":"u"}"#.into(),
            StatusCode::BAD_REQUEST,
            "`event`",
        ),
        (
            r#"{"type":"group","userId":"u"}"#.into(),
            StatusCode::BAD_REQUEST,
            "groupId",
        ),
        ("[]".into(), StatusCode::BAD_REQUEST, "JSON object"),
        (
            format!(
                r#"{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}}"#,
                "x".repeat(65 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit is 65536 bytes per event",
        ),
        (
            format!(
                r#"{{"batch":[{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}}]}}"#,
                "x".repeat(4_100_000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body exceeds 4096000 bytes",
        ),
    ];
    for (body, want, fragment) in cases {
        let (status, resp, _) = post(&url, Some(&key), body.clone()).await;
        assert_eq!(status, want, "{resp} for {}", &body[..body.len().min(80)]);
        let message = resp["message"].as_str().expect("message");
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    let ok = r#"{"type":"track","event":"e","userId":"u"}"#;
    let (status, resp, headers) = post(&url, None, ok).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(resp["message"].as_str().unwrap().contains("Authorization"));
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(&url, Some("pk_prod_wrong"), ok).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        envelopes(&stack, "events.>").await.is_empty(),
        "nothing stored for rejected events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_message_ids_are_accepted_and_stored_once() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let other_key = stack.workspace("other").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let event = r#"{"type":"track","event":"Order Completed","userId":"u","messageId":"dup-1"}"#;
    for _ in 0..3 {
        let (status, resp, _) = post(&url, Some(&key), event).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(resp["messageId"], "dup-1");
    }
    // Same messageId in another workspace is a different event.
    let (status, _, _) = post(&url, Some(&other_key), event).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Without a messageId, the same bytes derive the same id.
    let anon = r#"{"type":"track","event":"x","anonymousId":"a"}"#;
    let (_, first, _) = post(&url, Some(&key), anon).await;
    let (_, second, _) = post(&url, Some(&key), anon).await;
    assert_eq!(first["messageId"], second["messageId"]);
    assert!(first["messageId"].as_str().unwrap().starts_with("derived-"));

    assert_eq!(envelopes(&stack, "events.acme.>").await.len(), 2);
    assert_eq!(envelopes(&stack, "events.other.>").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_all_or_nothing_and_report_bad_events_by_index() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let bad = json!({"batch":[
        {"type":"track","event":"a","userId":"u","messageId":"b1"},
        {"type":"identify","traits":{"x":1}},
        {"type":"group","userId":"u","groupId":"g","messageId":"b3"}]});
    let (status, resp, _) = post(&url, Some(&key), bad.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(resp["errors"][0]["index"], 1);
    assert!(
        resp["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("userId or anonymousId")
    );
    assert!(envelopes(&stack, "events.>").await.is_empty());

    let good = json!({"batch":[
        {"type":"track","event":"a","userId":"u","messageId":"b1"},
        {"type":"identify","userId":"u","traits":{"x":1},"messageId":"b2"},
        {"type":"group","userId":"u","groupId":"g","messageId":"b3"}]});
    let (status, resp, _) = post(&url, Some(&key), good.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["messageIds"], json!(["b1", "b2", "b3"]));
    let stored = envelopes(&stack, "events.acme.>").await;
    let subjects: Vec<&str> = stored.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "events.acme.track",
            "events.acme.identify",
            "events.acme.group"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_gives_a_fast_503_then_202_after_restart() {
    let mut stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let event = r#"{"type":"track","event":"e","userId":"u","messageId":"during-outage"}"#;

    stack.nats.kill();
    let started = std::time::Instant::now();
    let (status, resp, headers) = post(&url, Some(&key), event).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered well inside RudderStack's 10 s"
    );
    let ready = reqwest::get(ingress.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    stack.nats.restart();
    ingress.wait_ready(Duration::from_secs(20)).await;
    let (status, _, _) = post(&url, Some(&key), event).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(envelopes(&stack, "events.acme.>").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_429_with_retry_after() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let mut settings = stack.ingress_settings();
    // No publish slot frees up within the publish deadline: a retryable 503.
    settings.ingress.max_inflight_publishes = 0;
    settings.ingress.publish_deadline_ms = 300;
    let ingress = stack.ingress_with(settings).await;
    let (status, _, headers) = post(
        &ingress.url("/inbound/rudderstack"),
        Some(&key),
        r#"{"type":"track","event":"e","userId":"u"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "2");

    // Memory bound: bodies buffered at once are capped in bytes.
    let mut settings = stack.ingress_settings();
    settings.ingress.max_buffered_body_bytes = 8 * 1024;
    let ingress = stack.ingress_with(settings).await;
    let url = ingress.url("/inbound/rudderstack");
    let small = r#"{"type":"track","event":"e","userId":"u"}"#;
    assert_eq!(post(&url, Some(&key), small).await.0, StatusCode::ACCEPTED);
    let big = format!(
        r#"{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}}"#,
        "x".repeat(20 * 1024)
    );
    let (status, resp, _) = post(&url, Some(&key), big).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_stop_working_and_redis_outage_is_retryable() {
    let mut stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let event = r#"{"type":"track","event":"e","userId":"u"}"#;
    assert_eq!(post(&url, Some(&key), event).await.0, StatusCode::ACCEPTED);

    let store = rc_common::auth::WorkspaceStore::new(stack.redis_conn().await);
    let list = store.list_workspaces().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].keys[0].key_id, rc_common::auth::key_id_of(&key));
    assert!(
        store
            .revoke_key("acme", &list[0].keys[0].key_id)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // past the test cache TTL
    assert_eq!(
        post(&url, Some(&key), event).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Unknown key while Redis is down: we cannot tell, so the caller must retry.
    stack.redis.kill();
    let (status, _, headers) = post(&url, Some("rck_00000000_unknown"), event).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_and_graceful_shutdown() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let health = reqwest::get(ingress.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = reqwest::get(ingress.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"], json!({"nats": "ok", "redis": "ok"}));
    post(
        &ingress.url("/inbound/rudderstack"),
        Some(&key),
        r#"{"type":"track","event":"e","userId":"u"}"#,
    )
    .await;
    let metrics = reqwest::get(ingress.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ingress_events_accepted_total"),
        "{metrics}"
    );
    assert!(metrics.contains("http_requests_total"));

    ingress.shutdown.start_draining();
    let ready = reqwest::get(ingress.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness fails first"
    );
    let addr = ingress.addr;
    tokio::time::timeout(Duration::from_secs(5), ingress.stop())
        .await
        .expect("bounded drain")
        .expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_admin_store() {
    let stack = Stack::start();
    let store = rc_common::auth::WorkspaceStore::new(stack.redis_conn().await);
    store.create_workspace("dev", "Dev").await.unwrap();
    assert!(matches!(
        store.create_workspace("dev", "Dev").await,
        Err(rc_common::auth::StoreError::Exists(_))
    ));
    assert!(store.create_workspace("Bad.Id", "x").await.is_err());
    let imported = store.add_key("dev", Some("pk_prod_dev")).await.unwrap();
    assert_eq!(imported, "pk_prod_dev");
    assert_eq!(
        store.add_key("dev", Some("pk_prod_dev")).await.unwrap(),
        "pk_prod_dev",
        "idempotent"
    );
    store.create_workspace("other", "Other").await.unwrap();
    assert!(matches!(
        store.add_key("other", Some("pk_prod_dev")).await,
        Err(rc_common::auth::StoreError::KeyInUse)
    ));
    // Only hashes are stored.
    let mut conn = stack.redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in &keys {
        assert!(
            !k.contains("pk_prod_dev"),
            "plain key in a Redis key name: {k}"
        );
        let dump: Vec<String> = match redis::cmd("TYPE")
            .arg(k)
            .query_async::<String>(&mut conn)
            .await
            .unwrap()
            .as_str()
        {
            "hash" => redis::cmd("HVALS")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => vec![],
        };
        assert!(
            dump.iter().all(|v| !v.contains("pk_prod_dev")),
            "plain key stored in {k}"
        );
    }
}
