//! Channel order and Courier's routing `method`, through the real automations and delivery
//! services: a notification template's channels are its order of preference (as written, not
//! alphabetical), `single` sends on the first channel that works and falls back when one fails
//! for good, `all` sends on every routable channel.

use std::time::Duration;

use rc_tests::delivery::{SmtpSink, WebhookReceiver, put_provider};
use rc_tests::forwarder::eventually;
use rc_tests::{Service, Stack, call};
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_signing_secret_0123456789";

/// Writes the notification template, then sends it to `user` (who has an email address).
async fn send_template(automations: &Service, key: &str, template: Value, user: &str) {
    let (s, body) = call(
        automations,
        key,
        reqwest::Method::POST,
        "/notifications/templates",
        Some(template.clone()),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = call(
        automations,
        key,
        reqwest::Method::POST,
        "/automations/invoke",
        Some(
            json!({"automation": {"steps": [{"action": "send", "template": template["id"]}]},
                    "recipient": user, "profile": {"email": format!("{user}@example.org")}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// The message sent to `user`, once it reached `status`.
async fn message_of(delivery: &Service, key: &str, user: &str, status: &str) -> Value {
    let path = format!("/messages?recipient={user}");
    let mut found = Value::Null;
    eventually(
        &format!("{user}'s message {status}"),
        Duration::from_secs(20),
        async || {
            let (s, body) = call(delivery, key, reqwest::Method::GET, &path, None).await;
            found = body["results"][0].clone();
            s == 200 && found["status"] == status
        },
    )
    .await;
    found
}

fn channels_of(message: &Value) -> Vec<(String, String)> {
    message["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("channel"), s("status"))
        })
        .collect()
}

async fn inbox_has(delivery: &Service, key: &str, user: &str) -> bool {
    let path = format!("/inbox/{user}");
    let (s, body) = call(delivery, key, reqwest::Method::GET, &path, None).await;
    s == 200 && body["messages"].as_array().is_some_and(|m| !m.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_goes_out_on_its_first_channel_and_on_all_with_method_all() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let sink = SmtpSink::start().await;
    put_provider(
        &delivery,
        &key,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox"]}),
    )
    .await;
    put_provider(
        &delivery,
        &key,
        "mail",
        json!({"type": "smtp", "channels": ["email"],
               "config": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "from": "a@b.org"}}),
    )
    .await;

    // Written inbox first: inbox it is (alphabetical order picked email).
    send_template(
        &automations,
        &key,
        json!({"id": "ORDERED", "published": true, "channels": {
            "inbox": {"title": "Hi", "body": "in the app"},
            "email": {"subject": "Hi", "text": "by mail"}}}),
        "u_1",
    )
    .await;
    let message = message_of(&delivery, &key, "u_1", "DELIVERED").await;
    assert_eq!(
        channels_of(&message),
        [("inbox".to_string(), "DELIVERED".to_string())],
        "{message}"
    );
    assert!(inbox_has(&delivery, &key, "u_1").await);

    // The template's routing method `all`: both channels.
    send_template(
        &automations,
        &key,
        json!({"id": "BOTH", "published": true, "routing": {"method": "all"}, "channels": {
            "inbox": {"title": "Hi", "body": "in the app"},
            "email": {"subject": "Hi", "text": "by mail"}}}),
        "u_2",
    )
    .await;
    let message = message_of(&delivery, &key, "u_2", "DELIVERED").await;
    let mut got: Vec<String> = channels_of(&message).into_iter().map(|c| c.0).collect();
    got.sort();
    assert_eq!(got, ["email", "inbox"], "{message}");
    eventually("the mail", Duration::from_secs(10), async || {
        sink.mails().len() == 1
    })
    .await;
    assert!(inbox_has(&delivery, &key, "u_2").await);
    assert_eq!(sink.mails().len(), 1, "u_1 got no mail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_falls_back_to_the_next_channel_when_one_fails_for_good() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let hook = WebhookReceiver::start(SECRET).await;
    hook.answer(400, "bad payload", None);
    put_provider(
        &delivery,
        &key,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox"]}),
    )
    .await;
    put_provider(
        &delivery,
        &key,
        "hook",
        json!({"type": "webhook", "channels": ["webhook"],
               "config": {"url": hook.url(), "secret": SECRET}}),
    )
    .await;

    send_template(
        &automations,
        &key,
        json!({"id": "FALLBACK", "published": true, "routing": {"method": "single"}, "channels": {
            "webhook": {"title": "Hi", "body": "hooked"},
            "inbox": {"title": "Hi", "body": "in the app"}}}),
        "u_3",
    )
    .await;
    let message = message_of(&delivery, &key, "u_3", "DELIVERED").await;
    assert_eq!(
        channels_of(&message),
        [
            ("webhook".to_string(), "UNDELIVERABLE".to_string()),
            ("inbox".to_string(), "DELIVERED".to_string())
        ],
        "the webhook was tried first, then the inbox: {message}"
    );
    assert_eq!(hook.received_count(), 1);
    assert!(inbox_has(&delivery, &key, "u_3").await);
}
