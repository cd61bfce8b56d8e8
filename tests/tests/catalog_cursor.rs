//! Issue 12: a keyset cursor on the received-events catalog (`GET /automations/events`).

use std::collections::BTreeSet;
use std::time::Duration;

use rc_tests::automations::publish_track;
use rc_tests::profiles::eventually;
use rc_tests::{Stack, call};
use reqwest::Method;
use serde_json::{Value, json};

async fn total(svc: &rc_tests::Service, key: &str) -> usize {
    let (_, page) = call(
        svc,
        key,
        Method::GET,
        "/automations/events?limit=1000",
        None,
    )
    .await;
    page["results"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_pages_with_a_cursor_stable_under_inserts() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    for i in 0..7 {
        publish_track(
            &js,
            "acme",
            &format!("m-{i}"),
            &format!("Event {i}"),
            &json!({}),
        )
        .await;
    }
    eventually("7 catalog entries", Duration::from_secs(20), || async {
        (total(&svc, &key).await == 7).then_some(())
    })
    .await;
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!(
            "/automations/events?limit=3&mapped_first=false&cursor={}",
            urlencode(&cursor)
        );
        let (status, page) = call(&svc, &key, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["results"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|e| e["event"].as_str().unwrap().to_string()),
        );
        if seen.len() == 3 {
            // Received while paging: newer than the cursor, so it never shifts later pages.
            publish_track(&js, "acme", "m-late", "Late", &json!({})).await;
            eventually("the late entry", Duration::from_secs(20), || async {
                (total(&svc, &key).await == 8).then_some(())
            })
            .await;
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no repeats: {seen:?}");
    let expected: BTreeSet<String> = (0..7).map(|i| format!("Event {i}")).collect();
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let (_, first) = call(
        &svc,
        &key,
        Method::GET,
        "/automations/events?limit=1&mapped_first=false",
        None,
    )
    .await;
    assert_eq!(first["results"][0]["event"], "Late");
    assert!(first["next"].is_string());
    let (status, body) = call(
        &svc,
        &key,
        Method::GET,
        "/automations/events?cursor=nope",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], Value::from("invalid_request_error"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
