//! Cross-service Redis read contracts over real NATS and Redis: what one service writes under
//! `rc_common::keys`, another reads, for ids holding `%`, `{`, `}` and `:` (escaped in keys,
//! never moving a key to another hash slot or onto another id's key).

use rc_tests::delivery::{
    inbox_titles, inline_request, publish_request, put_provider, wait_message,
};
use rc_tests::{Stack, call};
use reqwest::Method;
use serde_json::json;

/// A path segment with every byte outside `[A-Za-z0-9_-]` percent-encoded.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_accounts_writes_are_what_delivery_reads_for_hostile_ids() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let (profiles, accounts, delivery) = (
        stack.profiles().await,
        stack.accounts().await,
        stack.delivery().await,
    );
    let (uid, other, tid) = ("u%{}:1", "u%7B%7D%3A1", "t}{:%1");
    // Two users whose ids differ only by what the escape produces: they must not share keys.
    for (id, name) in [(uid, "Ann"), (other, "Bob")] {
        let (s, b) = call(
            &profiles,
            &key,
            Method::POST,
            &format!("/profiles/{}", segment(id)),
            Some(json!({"profile": {"name": name}})),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = call(
        &accounts,
        &key,
        Method::PUT,
        &format!("/tenants/{}", segment(tid)),
        Some(json!({"name": "Tenant"})),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let (s, b) = call(
        &accounts,
        &key,
        Method::PUT,
        &format!("/users/{}/tenants/{}", segment(uid), segment(tid)),
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");

    put_provider(&delivery, &key, "inbox", json!({"type": "inbox"})).await;
    let req = inline_request(
        "acme",
        "c-1",
        json!({"to": {"tenant_id": tid}, "content": {"title": "Hi {{name}}", "body": "b"}, "routing": {"channels": ["inbox"]}}),
        json!({}),
        json!({}),
    );
    publish_request(&js, &req, "c-1").await;
    let child = format!("c-1:{uid}");
    let m = wait_message(
        &delivery,
        &key,
        &segment(&child),
        "the member's message DELIVERED",
        |m| m["status"] == "DELIVERED",
    )
    .await;
    assert_eq!(
        (m["recipient"].as_str(), m["tenant_id"].as_str()),
        (Some(uid), Some(tid))
    );
    let (s, inbox) = call(
        &delivery,
        &key,
        Method::GET,
        &format!("/inbox/{}", segment(uid)),
        None,
    )
    .await;
    assert_eq!(s, 200, "{inbox}");
    let titles = inbox_titles(&inbox);
    assert_eq!(
        titles,
        ["Hi Ann"],
        "rendered with the profile profiles wrote"
    );
    let (_, inbox) = call(
        &delivery,
        &key,
        Method::GET,
        &format!("/inbox/{}", segment(other)),
        None,
    )
    .await;
    assert_eq!(
        inbox["messages"],
        json!([]),
        "the look-alike id got nothing"
    );

    // The keys themselves: one per id, in the documented layout.
    let mut redis = stack.redis_conn().await;
    let stored: String = redis::cmd("GET")
        .arg("{ws:acme:user:u%25%7B%7D%3A1}:profile")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored).unwrap()["name"],
        "Ann"
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(rc_common::keys::tenant_members("acme", tid))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members, [uid]);
}
