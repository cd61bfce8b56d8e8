//! The accounts service over real NATS and Redis.

use std::time::Duration;

use prost::Message;
use rc_common::subjects::{COURIER_STREAM, DLQ_STREAM, dlq_headers};
use rc_proto::{Envelope, EventType, TenantUpdated};
use rc_tests::events::{envelope, publish_envelope as publish};
use rc_tests::profiles::eventually;
use rc_tests::{Service, Stack, stored_messages};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn call(method: Method, url: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
    rc_tests::call_url(method, url, key, body, &[]).await
}

async fn get_ok(url: &str, key: &str) -> Option<Value> {
    let (s, b) = call(Method::GET, url, key, None).await;
    (s == StatusCode::OK).then_some(b)
}

fn group(ws: &str, id: &str, gid: &str, uid: &str, ts_ms: i64, traits: Value) -> Envelope {
    Envelope {
        group_id: gid.into(),
        ..envelope(ws, id, EventType::Group, uid, ts_ms, &traits)
    }
}

async fn members(stack: &Stack, ws: &str, tid: &str) -> Vec<String> {
    let mut c = stack.redis_conn().await;
    redis::cmd("ZRANGE")
        .arg(rc_common::keys::tenant_members(ws, tid))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_through_the_ingress_upserts_tenant_and_member() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let accounts = stack.accounts().await;
    let batch = json!({"batch":[
        {"type":"group","groupId":"acct_1","userId":"u_1","messageId":"g1",
         "traits":{"name":"Acme","plan":"enterprise","seats":40},
         "context":{"library":{"name":"rudder-analytics-js"}},"timestamp":"2026-03-02T09:14:05Z"},
        {"type":"group","groupId":"acct_1","anonymousId":"anon-9","messageId":"g2",
         "traits":{"seats":41},"timestamp":"2026-03-02T09:15:05Z"},
        {"type":"group","groupId":"acct_2","userId":"u_1","messageId":"g3"}]});
    let resp = reqwest::Client::new()
        .post(ingress.url("/inbound/rudderstack"))
        .header("authorization", format!("Bearer {key}"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let url = accounts.url("/tenants/acct_1");
    let t = eventually("tenant", WAIT, || async {
        get_ok(&url, &key)
            .await
            .filter(|t| t["properties"]["seats"] == 41)
    })
    .await;
    assert_eq!(t["id"], "acct_1");
    assert_eq!(t["name"], "Acme");
    assert_eq!(t["type"], "tenant");
    assert_eq!(t["properties"], json!({"plan":"enterprise","seats":41}));
    let url2 = accounts.url("/tenants/acct_2");
    let t2 = eventually("tenant 2", WAIT, || get_ok(&url2, &key)).await;
    assert_eq!(t2["name"], "acct_2", "fallback name is the groupId");
    // Read contracts.
    assert_eq!(
        members(&stack, "acme", "acct_1").await,
        vec!["anon-9", "u_1"]
    );
    let mut c = stack.redis_conn().await;
    let doc: String = redis::cmd("GET")
        .arg("{ws:acme:tenant:acct_1}:doc")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&doc).unwrap(), t);
    // Over REST.
    let users = get_ok(&accounts.url("/tenants/acct_1/users"), &key)
        .await
        .unwrap();
    assert_eq!(users["type"], "list");
    assert_eq!(
        users["items"][0],
        json!({"tenant_id":"acct_1","user_id":"anon-9","profile":{},"type":"user"})
    );
    let mine = eventually("u_1 in 2 tenants", WAIT, || async {
        get_ok(&accounts.url("/users/u_1/tenants"), &key)
            .await
            .filter(|m| m["items"].as_array().unwrap().len() == 2)
    })
    .await;
    assert_eq!(mine["items"][1]["tenant_id"], "acct_2");
    // TenantUpdated per change.
    let js = stack.jetstream().await;
    let updates = eventually("TenantUpdated", WAIT, || async {
        let m = stored_messages(&js, COURIER_STREAM, "courier.acme.tenant.updated").await;
        (m.len() >= 3).then_some(m)
    })
    .await;
    let u = TenantUpdated::decode(updates[0].payload.clone()).unwrap();
    assert_eq!(u.source, "event");
    assert!(!u.deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_events_are_order_and_duplicate_independent() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let accounts = stack.accounts().await;
    // Newest first, then the older ones, then a duplicate of the newest (another stream message).
    publish(
        &js,
        &group(
            "acme",
            "e3",
            "t1",
            "u3",
            3_000,
            json!({"name":"New","plan":"b"}),
        ),
    )
    .await;
    publish(
        &js,
        &group(
            "acme",
            "e1",
            "t1",
            "u1",
            1_000,
            json!({"name":"Old","plan":"a","region":"eu"}),
        ),
    )
    .await;
    publish(
        &js,
        &group("acme", "e2", "t1", "u2", 2_000, json!({"region":null})),
    )
    .await;
    js.publish(
        "events.acme.group",
        group(
            "acme",
            "e3",
            "t1",
            "u3",
            3_000,
            json!({"name":"New","plan":"b"}),
        )
        .encode_to_vec()
        .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let url = accounts.url("/tenants/t1");
    // Members first: a member is indexed only after its event's tenant write, so three members
    // means every write has landed (reading the tenant first raced the last writes).
    let t = eventually("all applied", WAIT, || async {
        if members(&stack, "acme", "t1").await.len() < 3 {
            return None;
        }
        get_ok(&url, &key).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t2 = get_ok(&url, &key).await.unwrap();
    assert_eq!(t, t2);
    assert_eq!(t["name"], "New");
    assert_eq!(t["properties"], json!({"plan":"b"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_membership_routes() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let other = stack.workspace("other").await;
    let accounts = stack.accounts().await;
    let u = |p: &str| accounts.url(p);

    // PUT creates or replaces; name is required.
    let (s, b) = call(
        Method::PUT,
        &u("/tenants/t-1"),
        &key,
        Some(json!({"name":"One","properties":{"a":1},"brand_id":"b1"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"id":"t-1","name":"One","parent_tenant_id":null,"brand_id":"b1",
        "default_preferences":null,"user_profile":null,"properties":{"a":1},"type":"tenant"})
    );
    let (s, b) = call(
        Method::PUT,
        &u("/tenants/t-1"),
        &key,
        Some(json!({"name":"Uno","parent_tenant_id":"root"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["properties"], json!({}));
    assert_eq!(b["brand_id"], Value::Null);
    assert_eq!(b["parent_tenant_id"], "root");
    let (s, b) = call(
        Method::PUT,
        &u("/tenants/t-2"),
        &key,
        Some(json!({"properties":{}})),
    )
    .await;
    assert_eq!(
        (s, b["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request_error"))
    );
    assert_eq!(
        get_ok(&u("/tenants/t-1"), &key).await.unwrap()["name"],
        "Uno"
    );
    assert_eq!(
        call(Method::GET, &u("/tenants/t-1"), &other, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(Method::GET, &u("/tenants/nope"), &key, None).await.0,
        StatusCode::NOT_FOUND
    );

    // Pagination: 25 tenants, pages of 10.
    for i in 0..24 {
        let parent = if i % 2 == 0 { "root" } else { "other" };
        call(
            Method::PUT,
            &u(&format!("/tenants/p{i:02}")),
            &key,
            Some(json!({"name":"x","parent_tenant_id":parent})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/tenants?limit=10".to_string());
    while let Some(path) = next {
        let page = get_ok(&u(&path), &key).await.unwrap();
        assert_eq!(page["type"], "list");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        next = page["next_url"].as_str().map(str::to_string);
        assert_eq!(page["has_more"], next.is_some());
    }
    assert_eq!(seen.len(), 25);
    let default = get_ok(&u("/tenants"), &key).await.unwrap();
    assert_eq!(default["items"].as_array().unwrap().len(), 20);
    let roots = get_ok(&u("/tenants?parent_tenant_id=root&limit=100"), &key)
        .await
        .unwrap();
    assert_eq!(roots["items"].as_array().unwrap().len(), 13);
    assert_eq!(
        call(Method::GET, &u("/tenants?limit=101"), &key, None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get_ok(&u("/tenants"), &other).await.unwrap()["items"],
        json!([])
    );

    // Memberships: both body shapes, one, leave one, leave all.
    let (s, _) = call(
        Method::PUT,
        &u("/users/u1/tenants"),
        &key,
        Some(
            json!({"tenants":[{"tenant_id":"t-1","profile":{"role":"admin"}},{"tenant_id":"p00"}]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        Method::PUT,
        &u("/users/u2/tenants"),
        &key,
        Some(json!([{"tenant_id":"t-1"}])),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        Method::PUT,
        &u("/users/u3/tenants/t-1"),
        &key,
        Some(json!({"profile":{"x":1}})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(Method::PUT, &u("/users/u3/tenants/missing"), &key, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(members(&stack, "acme", "t-1").await, vec!["u1", "u2", "u3"]);
    let page = get_ok(&u("/tenants/t-1/users?limit=2"), &key)
        .await
        .unwrap();
    assert_eq!(
        page["items"][0],
        json!({"tenant_id":"t-1","user_id":"u1","profile":{"role":"admin"},"type":"user"})
    );
    assert_eq!(page["has_more"], true);
    let page2 = get_ok(&u(page["next_url"].as_str().unwrap()), &key)
        .await
        .unwrap();
    assert_eq!(page2["items"][0]["user_id"], "u3");
    assert_eq!(page2["has_more"], false);
    let one = get_ok(&u("/users/u1/tenants/t-1"), &key).await.unwrap();
    assert_eq!(one["profile"], json!({"role":"admin"}));
    assert_eq!(
        call(Method::DELETE, &u("/users/u2/tenants/t-1"), &key, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(members(&stack, "acme", "t-1").await, vec!["u1", "u3"]);
    assert_eq!(
        call(Method::DELETE, &u("/users/u1/tenants"), &key, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_ok(&u("/users/u1/tenants"), &key).await.unwrap()["items"],
        json!([])
    );
    assert_eq!(members(&stack, "acme", "t-1").await, vec!["u3"]);

    // Legacy paths answer with account naming.
    let legacy = get_ok(&u("/accounts/t-1"), &key).await.unwrap();
    assert_eq!(legacy["type"], "account");
    assert_eq!(legacy["parent_account_id"], "root");
    let lu = get_ok(&u("/accounts/t-1/users"), &key).await.unwrap();
    assert_eq!(lu["items"][0]["account_id"], "t-1");

    // DELETE removes the tenant and its members.
    assert_eq!(
        call(Method::DELETE, &u("/tenants/t-1"), &key, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(Method::GET, &u("/tenants/t-1"), &key, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(members(&stack, "acme", "t-1").await.is_empty());
    assert_eq!(
        get_ok(&u("/users/u3/tenants"), &key).await.unwrap()["items"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_group_is_dead_lettered_and_restart_loses_nothing() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    // A short ack wait: handlers cut off by the kill (as in a real crash) are redelivered soon.
    let spawn = || {
        let mut settings = stack.accounts_settings();
        settings.accounts.ack_wait_ms = 2_000;
        Service::spawn(|listener, shutdown| async move {
            accounts::run(settings, Some(listener), shutdown).await
        })
    };
    let accounts = spawn().await;
    js.publish("events.acme.group", bytes::Bytes::from_static(b"garbage"))
        .await
        .unwrap()
        .await
        .unwrap();
    const N: usize = 200;
    for i in 0..N {
        publish(
            &js,
            &group(
                "acme",
                &format!("g{i}"),
                "big",
                &format!("u{i:03}"),
                1_000 + i as i64,
                json!({format!("k{i}"): i}),
            ),
        )
        .await;
    }
    accounts.kill();
    let accounts = spawn().await;
    let url = accounts.url("/tenants/big");
    eventually("all members", WAIT, || async {
        let t = get_ok(&url, &key).await?;
        (t["properties"].as_object().unwrap().len() == N
            && members(&stack, "acme", "big").await.len() == N)
            .then_some(())
    })
    .await;
    let dead = stored_messages(&js, DLQ_STREAM, "dlq.accounts.acme").await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .headers
        .as_ref()
        .unwrap()
        .get(dlq_headers::REASON)
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    // One TenantUpdated per event: a handler cut off after its write publishes on redelivery,
    // and redeliveries of events already published add nothing (dedupe on the cause id).
    eventually("one TenantUpdated per event", WAIT, || async {
        let n = stored_messages(&js, COURIER_STREAM, "courier.acme.tenant.updated")
            .await
            .len();
        (n >= N).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let updates = stored_messages(&js, COURIER_STREAM, "courier.acme.tenant.updated").await;
    assert_eq!(updates.len(), N);
}
