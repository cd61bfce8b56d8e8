//! Courier lists: accounts writes them (`/lists…`), automations' `send-list` step reads them
//! through `rc_common::lists`; the two must agree on every key, whatever the ids hold. Plus the
//! bounds (recipients per request, subscribers per list) and malformed requests.

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message as _;
use rc_common::lists;
use rc_proto::MessageRequest;
use rc_tests::automations::wait_for_messages;
use rc_tests::{Stack, call};
use reqwest::Method;
use serde_json::{Value, json};

fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn recipients(ids: impl IntoIterator<Item = String>) -> Value {
    json!({"recipients": ids.into_iter().map(|id| json!({"recipientId": id})).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_and_reader_agree_on_every_list_key() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let accounts = stack.accounts().await;
    let redis = stack.redis_conn().await;

    // Ids that could break a hash tag or reach another list's keys if not escaped.
    let lists_and_users = [
        ("a", vec!["u1", "u:2"]),
        ("a:subscribers", vec!["u3"]),
        ("a:preferences", vec!["u4"]),
        ("x{y}%z", vec!["{u5}", "u%6"]),
    ];
    for (list, users) in &lists_and_users {
        let path = format!("/lists/{}", enc(list));
        let (s, b) = call(
            &accounts,
            &key,
            Method::PUT,
            &path,
            Some(json!({"name": list})),
        )
        .await;
        assert_eq!(s, 204, "{list}: {b}");
        let body = recipients(users.iter().map(|u| u.to_string()));
        let (s, b) = call(
            &accounts,
            &key,
            Method::POST,
            &format!("{path}/subscriptions"),
            Some(body),
        )
        .await;
        assert_eq!(s, 204, "{list}: {b}");
    }
    for (list, users) in &lists_and_users {
        let read: BTreeSet<String> = lists::subscribers(&redis, "acme", list)
            .await
            .unwrap()
            .expect("list exists")
            .into_iter()
            .collect();
        let want: BTreeSet<String> = users.iter().map(|u| u.to_string()).collect();
        assert_eq!(read, want, "list {list:?}");
        // The API's own view agrees.
        let (_, b) = call(
            &accounts,
            &key,
            Method::GET,
            &format!("/lists/{}/subscriptions", enc(list)),
            None,
        )
        .await;
        let api: BTreeSet<String> = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["recipientId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(api, want);
    }
    // Another workspace sees none of them.
    assert_eq!(
        lists::subscribers(&redis, "other", "a").await.unwrap(),
        None
    );
    // Unsubscribe, replace, delete: the reader follows.
    let (s, _) = call(
        &accounts,
        &key,
        Method::DELETE,
        &format!("/lists/a/subscriptions/{}", enc("u:2")),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        lists::subscribers(&redis, "acme", "a").await.unwrap(),
        Some(vec!["u1".to_owned()])
    );
    let (s, _) = call(
        &accounts,
        &key,
        Method::PUT,
        "/lists/a/subscriptions",
        Some(recipients(["n1".to_owned()])),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        lists::subscribers(&redis, "acme", "a").await.unwrap(),
        Some(vec!["n1".to_owned()])
    );
    let (s, _) = call(&accounts, &key, Method::DELETE, "/lists/a", None).await;
    assert_eq!(s, 204);
    assert_eq!(lists::subscribers(&redis, "acme", "a").await.unwrap(), None);
    assert_eq!(
        lists::subscribers(&redis, "acme", "a:subscribers")
            .await
            .unwrap(),
        Some(vec!["u3".to_owned()])
    );
    // Subscribing to a list that does not exist creates it, named after its id (as Courier does).
    let (s, _) = call(
        &accounts,
        &key,
        Method::PUT,
        "/lists/auto/subscriptions/u9",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(&accounts, &key, Method::GET, "/lists/auto", None).await;
    assert_eq!((s, &b["name"]), (200, &json!("auto")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_requests_are_bounded_and_malformed_ones_refused() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let accounts = stack.accounts().await;

    let too_many = recipients((0..1_001).map(|i| format!("u{i}")));
    let (s, b) = call(
        &accounts,
        &key,
        Method::POST,
        "/lists/big/subscriptions",
        Some(too_many),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("1000 recipients"),
        "{b}"
    );
    // Fill the list to its cap; one more subscriber is refused, a known one is not.
    for chunk in 0..(lists::MAX_SUBSCRIBERS / 1_000) {
        let body = recipients((0..1_000).map(|i| format!("u{}", chunk * 1_000 + i)));
        let (s, b) = call(
            &accounts,
            &key,
            Method::POST,
            "/lists/big/subscriptions",
            Some(body),
        )
        .await;
        assert_eq!(s, 204, "{b}");
    }
    let (s, b) = call(
        &accounts,
        &key,
        Method::PUT,
        "/lists/big/subscriptions/one-more",
        None,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000 subscribers"),
        "{b}"
    );
    let (s, _) = call(
        &accounts,
        &key,
        Method::PUT,
        "/lists/big/subscriptions/u5",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let redis = stack.redis_conn().await;
    let subs = lists::subscribers(&redis, "acme", "big")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(subs.len(), lists::MAX_SUBSCRIBERS);
    // Paging walks every subscriber once.
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..200 {
        let path = match &cursor {
            Some(c) => format!("/lists/big/subscriptions?cursor={c}"),
            None => "/lists/big/subscriptions".to_owned(),
        };
        let (_, b) = call(&accounts, &key, Method::GET, &path, None).await;
        for i in b["items"].as_array().unwrap() {
            assert!(seen.insert(i["recipientId"].as_str().unwrap().to_owned()));
        }
        if !b["paging"]["more"].as_bool().unwrap() {
            break;
        }
        cursor = b["paging"]["cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), lists::MAX_SUBSCRIBERS);

    // A send-list to the full list: one message request per subscriber, well inside the lease.
    let automations = stack.automations().await;
    let started = std::time::Instant::now();
    let (s, b) = call(
        &automations,
        &key,
        Method::POST,
        "/automations/invoke",
        Some(json!({
        "automation": {"steps": [{"action": "send-list", "list": "big", "template": "T"}]}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let path = format!("/automations/runs/{}", b["runId"].as_str().unwrap());
    rc_tests::forwarder::eventually(
        "send-list to 10,000 completed",
        Duration::from_secs(120),
        async || call(&automations, &key, Method::GET, &path, None).await.1["state"] == "completed",
    )
    .await;
    println!(
        "send-list to {} subscribers: {:?}",
        lists::MAX_SUBSCRIBERS,
        started.elapsed()
    );
    let js = stack.jetstream().await;
    let mut courier = js.get_stream("COURIER").await.unwrap();
    let n = courier.info().await.unwrap().state.messages;
    assert!(
        n >= lists::MAX_SUBSCRIBERS as u64,
        "{n} messages on COURIER"
    );

    let long = "l".repeat(1_025);
    let url = accounts.url("/lists/ok");
    for (body, fragment) in [
        ("{\"name\":".to_owned(), "invalid request body"),
        ("[]".to_owned(), "invalid request body"),
        (json!({"name": ""}).to_string(), "name must be"),
        (json!({"name": long}).to_string(), "name must be"),
        (
            json!({"name": "n", "preferences": "all"}).to_string(),
            "preferences must be an object",
        ),
        (
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "invalid request body",
        ),
    ] {
        let r = reqwest::Client::new()
            .put(&url)
            .bearer_auth(&key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert!(b["message"].as_str().unwrap().contains(fragment), "{b}");
        assert_eq!(b["type"], "invalid_request_error");
    }
    let (s, _) = call(
        &accounts,
        &key,
        Method::PUT,
        &format!("/lists/{long}"),
        Some(json!({"name": "n"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = call(&accounts, &key, Method::GET, "/lists?cursor=nope", None).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = call(&accounts, &key, Method::GET, "/lists/missing", None).await;
    assert_eq!((s, &b["type"]), (404, &json!("invalid_request_error")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_list_requests_one_message_per_subscriber() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let (s, _) = call(
        &accounts,
        &key,
        Method::POST,
        "/lists/beta/subscriptions",
        Some(recipients(["u1", "u2", "u3"].map(String::from))),
    )
    .await;
    assert_eq!(s, 204);

    let (s, b) = call(&automations, &key, Method::POST, "/automations/invoke", Some(json!({
        "automation": {"steps": [{"action": "send-list", "list": {"$ref": "data.list"}, "template": "T"}]},
        "data": {"list": "beta"}}))).await;
    assert_eq!(s, 200, "{b}");
    let run_id = b["runId"].as_str().unwrap().to_owned();
    let js = stack.jetstream().await;
    let msgs = wait_for_messages(
        &js,
        "COURIER",
        "courier.acme.message.requested",
        3,
        Duration::from_secs(20),
    )
    .await;
    let reqs: Vec<MessageRequest> = msgs
        .iter()
        .map(|m| MessageRequest::decode(m.payload.as_ref()).unwrap())
        .collect();
    let recipients: BTreeSet<&str> = reqs.iter().map(|r| r.recipient.as_str()).collect();
    assert_eq!(recipients, BTreeSet::from(["u1", "u2", "u3"]));
    let ids: BTreeSet<&str> = reqs.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "one message id per recipient");
    assert!(reqs.iter().all(|r| r.run_id == run_id && r.template == "T"));

    // A missing list fails the run with the reason; a step without `list` is refused up front.
    let (_, b) = call(
        &automations,
        &key,
        Method::POST,
        "/automations/invoke",
        Some(json!({
        "automation": {"steps": [{"action": "send-list", "list": "nope", "template": "T"}]}})),
    )
    .await;
    let path = format!("/automations/runs/{}", b["runId"].as_str().unwrap());
    rc_tests::forwarder::eventually("run failed", Duration::from_secs(20), async || {
        let (_, run) = call(&automations, &key, Method::GET, &path, None).await;
        run["state"] == "failed" && run.to_string().contains("list \\\"nope\\\" not found")
    })
    .await;
    let (s, b) = call(
        &automations,
        &key,
        Method::POST,
        "/automations/invoke",
        Some(json!({
        "automation": {"steps": [{"action": "send-list", "template": "T"}]}})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("list: required"),
        "{b}"
    );
}
