//! RudderStack's Webhook destination through the front door: a real nginx on the `make run`
//! config (`scripts/front-door.conf.in`) in front of the services, fed requests shaped as the
//! destination sends them (reference/rudderstack.md §1b: lower-case header names, top-level
//! nulls removed, `context.ip` added, identify traits only in `context.traits`; every type).

use std::time::Duration;

use rc_tests::forwarder::eventually;
use rc_tests::frontdoor::FrontDoor;
use rc_tests::{Endpoint, Stack, call};
use reqwest::Method;
use serde_json::{Value, json};

/// One request as rudder-server sends it for the Webhook destination.
async fn webhook(base: &str, key: &str, event: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/inbound/rudderstack"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("user-agent", "RudderLabs")
        .body(event.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The enrichment RudderStack adds, with top-level nulls removed and `context.ip` set.
fn enriched(mut event: Value, message_id: &str) -> Value {
    let o = event.as_object_mut().unwrap();
    o.insert("messageId".into(), json!(message_id));
    o.insert("channel".into(), json!("web"));
    o.insert(
        "rudderId".into(),
        json!("d5c9a0f2-6b1e-4a37-9d84-0e7f3b2c1a59"),
    );
    o.insert("request_ip".into(), json!("203.0.113.24"));
    o.insert(
        "originalTimestamp".into(),
        json!("2026-03-02T09:14:05.120Z"),
    );
    o.insert("sentAt".into(), json!("2026-03-02T09:14:05.300Z"));
    o.insert("receivedAt".into(), json!("2026-03-02T09:14:05.412Z"));
    o.insert("timestamp".into(), json!("2026-03-02T09:14:05.232Z"));
    let ctx = o.entry("context").or_insert_with(|| json!({}));
    ctx["ip"] = json!("203.0.113.24");
    ctx["library"] = json!({"name": "RudderLabs JavaScript SDK", "version": "3.0.0"});
    o.retain(|_, v| !v.is_null());
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_destination_events_through_the_front_door() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let door = FrontDoor::start(&[
        ("ingress", &ingress),
        ("profiles", &profiles),
        ("accounts", &accounts),
        ("automations", &automations),
    ]);
    let base = door.base_url();

    // page "Pricing" is mapped to an automation by name, through the front door like the rest.
    let (s, body) = call(
        &door,
        &key,
        Method::POST,
        "/automations/mappings",
        Some(
            json!({"type": "page", "event": "Pricing", "template": {"id": "pricing-page",
            "name": "Pricing visit", "steps": [{"action": "delay", "duration": "1 day"}]}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["key"], "page:Pricing");
    let (s, body) = call(
        &door,
        &key,
        Method::POST,
        "/automations/mappings",
        Some(
            json!({"type": "screen", "event": "Checkout", "template": {"id": "checkout-screen",
            "steps": [{"action": "delay", "duration": "1 day"}]}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");

    let events = [
        // identify from a browser SDK: traits only in context.traits; a null at the top level
        // is removed, nested nulls stay.
        json!({"type": "identify", "userId": "u_1", "anonymousId": "anon-1", "traits": null,
            "context": {"traits": {"email": "ada@example.org", "name": "Ada", "phone": null}}}),
        // identify with no traits at all: the user exists, with no field.
        json!({"type": "identify", "userId": "u_bare"}),
        json!({"type": "track", "event": "Order Completed", "userId": "u_1",
            "properties": {"order_id": "ord_1", "total": 42.5}}),
        json!({"type": "group", "groupId": "acct_northwind", "userId": "u_1",
            "traits": {"name": "Northwind Traders", "plan": "enterprise"}}),
        // group of an anonymous visitor: the anonymousId becomes the member.
        json!({"type": "group", "groupId": "acct_northwind", "anonymousId": "anon-2",
            "traits": {"name": "Northwind Traders"}}),
        json!({"type": "page", "name": "Pricing", "userId": "u_1", "category": null,
            "properties": {"path": "/pricing", "title": "Pricing"}}),
        json!({"type": "screen", "name": "Checkout", "anonymousId": "anon-3",
            "properties": {"name": "Checkout"}}),
        json!({"type": "page", "anonymousId": "anon-4", "properties": {"path": "/"}}),
        json!({"type": "alias", "userId": "u_1", "previousId": "anon-1"}),
    ];
    for (i, event) in events.iter().enumerate() {
        let (s, body) = webhook(&base, &key, &enriched(event.clone(), &format!("m-{i}"))).await;
        assert_eq!(s, 202, "{event}: {body}");
        assert_eq!(body["messageId"], format!("m-{i}"));
    }
    // What a retry cannot fix is a 400 with the reason (RudderStack drops it).
    for (event, reason) in [
        (json!({"userId": "u_1"}), "missing `type`"),
        (json!({"type": "track", "userId": "u_1"}), "`event`"),
        (
            json!({"type": "identify", "userId": "u_1", "traits": "text"}),
            "`traits`",
        ),
        (json!({"type": "alias", "userId": "u_1"}), "previousId"),
    ] {
        let (s, body) = webhook(&base, &key, &enriched(event.clone(), "bad")).await;
        assert_eq!(s, 400, "{event}: {body}");
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }

    let wait = Duration::from_secs(20);
    eventually("identify → profile", wait, async || {
        call(&door, &key, Method::GET, "/profiles/u_1", None)
            .await
            .1["profile"]["email"]
            == "ada@example.org"
    })
    .await;
    eventually("empty identify → empty profile", wait, async || {
        let (s, b) = call(&door, &key, Method::GET, "/profiles/u_bare", None).await;
        s == 200 && b["profile"] == json!({})
    })
    .await;
    eventually("group → tenant with both members", wait, async || {
        let (s, b) = call(
            &door,
            &key,
            Method::GET,
            "/tenants/acct_northwind/users",
            None,
        )
        .await;
        let members: Vec<&str> = b["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["user_id"].as_str())
            .collect();
        s == 200 && members.contains(&"u_1") && members.contains(&"anon-2")
    })
    .await;
    let (s, tenant) = call(&door, &key, Method::GET, "/tenants/acct_northwind", None).await;
    assert_eq!((s, &tenant["name"]), (200, &json!("Northwind Traders")));

    // page / screen start their mapped runs; every type is in the received-events catalog.
    eventually("page and screen runs", wait, async || {
        let (_, runs) = call(
            &door,
            &key,
            Method::GET,
            "/automations/runs?limit=100",
            None,
        )
        .await;
        let templates: Vec<&str> = runs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["template"].as_str())
            .collect();
        templates.contains(&"pricing-page") && templates.contains(&"checkout-screen")
    })
    .await;
    eventually("catalog", wait, async || {
        let (_, c) = call(&door, &key, Method::GET, "/automations/events", None).await;
        let keys: Vec<&str> = c["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["key"].as_str())
            .collect();
        [
            "identify",
            "track:Order Completed",
            "group",
            "page:Pricing",
            "screen:Checkout",
            "page",
            "alias",
        ]
        .iter()
        .all(|k| keys.contains(k))
    })
    .await;
    let (s, entry) = call(
        &door,
        &key,
        Method::GET,
        "/automations/events/page:Pricing",
        None,
    )
    .await;
    assert_eq!(s, 200, "{entry}");
    assert_eq!(
        (entry["type"].as_str(), entry["mapped"].as_bool()),
        (Some("page"), Some(true))
    );
    assert_eq!(entry["last_payload"]["context"]["ip"], "203.0.113.24");

    // Courier's own inbound API: 202, then 409 idempotency_error for the same messageId.
    let track = json!({"type": "track", "event": "Order Completed", "messageId": "c-1",
        "properties": {"order_id": "ord_2"}, "userId": "u_1"});
    let (s, body) = call(
        &door,
        &key,
        Method::POST,
        "/inbound/courier",
        Some(track.clone()),
    )
    .await;
    assert_eq!((s, &body["messageId"]), (202, &json!("c-1")));
    let r = reqwest::Client::new()
        .post(door.url("/inbound/courier"))
        .bearer_auth(&key)
        .json(&track)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "idempotency_error", "{body}");
    let (s, body) = call(
        &door,
        &key,
        Method::POST,
        "/inbound/courier",
        Some(json!({"type": "identify", "messageId": "c-2", "userId": "u"})),
    )
    .await;
    assert_eq!(s, 400, "{body}");

    // Unknown routes answer JSON 404s: the front door's own, and a service's fallback.
    for path in ["/nope", "/tenants/acct_northwind/users/u_1/extra"] {
        let (s, body) = call(&door, &key, Method::GET, path, None).await;
        assert_eq!(s, 404, "{path}");
        assert_eq!(body["type"], "invalid_request_error", "{path}: {body}");
    }
    // Ops paths stay on the services' own ports, as in a cluster.
    let (s, _) = call(&door, &key, Method::GET, "/readyz", None).await;
    assert_eq!(s, 404);
}
