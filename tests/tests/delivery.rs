//! The delivery service over real NATS and Redis: MessageRequests published to JetStream,
//! a signed-webhook receiver and an SMTP sink as the third-party endpoints.

use std::time::Duration;

use rc_tests::delivery::{
    SmtpSink, WebhookReceiver, inbox_titles, inline_request, lifecycle_events, publish_request,
    put_provider, wait_message,
};
use rc_tests::{Service, Stack};
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_signing_secret_0123456789";

async fn webhook_provider(svc: &Service, key: &str, hook: &WebhookReceiver) {
    put_provider(
        svc,
        key,
        "hook",
        json!({"type": "webhook", "channels": ["webhook", "chat"],
               "config": {"url": hook.url(), "secret": SECRET}}),
    )
    .await;
}

async fn get_json(svc: &Service, key: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(svc.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_event(svc: &Service, key: &str, id: &str, status: &str) -> Value {
    let r = reqwest::Client::new()
        .post(svc.url(&format!("/messages/{id}/events")))
        .bearer_auth(key)
        .json(&json!({"status": status}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "report {status}");
    r.json().await.unwrap()
}

fn statuses(events: &[(String, rc_proto::MessageEvent)]) -> Vec<String> {
    events.iter().map(|(_, e)| e.status.clone()).collect()
}

async fn wait_events(
    js: &async_nats::jetstream::Context,
    ws: &str,
    id: &str,
    n: usize,
) -> Vec<(String, rc_proto::MessageEvent)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = lifecycle_events(js, ws, id).await;
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn webhook_message(id: &str) -> rc_proto::MessageRequest {
    inline_request(
        "acme",
        id,
        json!({"to": {"user_id": "u_1"},
               "content": {"title": "Order {{order_id}}", "body": "Hi {{profile.name}}, total {{data.total}}{{missing}}"},
               "routing": {"method": "single", "channels": ["email", "webhook"]}}),
        json!({"order_id": "ord_9", "total": 42.5}),
        json!({"name": "Ada"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_send_is_signed_delivered_and_published() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let hook = WebhookReceiver::start(SECRET).await;
    webhook_provider(&svc, &key, &hook).await;

    publish_request(&js, &webhook_message("m-1"), "acme:m-1:req").await;
    let msg = wait_message(&svc, &key, "m-1", "DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;

    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_valid, "HMAC signature verifies");
    assert_eq!(got[0].headers["idempotency-key"], "m-1");
    let data = &got[0].body["data"];
    assert_eq!(data["id"], "m-1");
    assert_eq!(data["channel"], "webhook", "email skipped: no address");
    assert_eq!(data["content"]["title"], "Order ord_9");
    assert_eq!(data["content"]["body"], "Hi Ada, total 42.5");
    assert_eq!(data["recipient"], "u_1");

    assert_eq!(msg["recipient"], "u_1");
    assert_eq!(msg["event"], "Order Completed");
    for f in ["enqueued", "sent", "delivered"] {
        assert!(msg[f].as_i64().unwrap() > 0, "{f} timestamp");
    }
    assert!(msg.get("opened").is_none());
    let p = &msg["providers"][0];
    assert_eq!(p["channel"], "webhook");
    assert_eq!(p["provider"], "hook");
    assert_eq!(p["status"], "DELIVERED");
    assert_eq!(p["reference"], "rcpt-1");

    let events = wait_events(&js, "acme", "m-1", 3).await;
    assert_eq!(statuses(&events), ["ENQUEUED", "SENT", "DELIVERED"]);
    assert_eq!(events[1].0, "courier.acme.message.sent");
    let sent = &events[1].1;
    assert_eq!(sent.run_id, "run-m-1");
    assert_eq!(sent.recipient, "u_1");
    assert_eq!(sent.channel, "webhook");
    assert_eq!(sent.provider, "hook");
    assert!(sent.sent_ms > 0 && sent.enqueued_ms > 0);

    let (_, history) = get_json(&svc, &key, "/messages/m-1/history").await;
    let h: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(h, ["ENQUEUED", "SENT", "DELIVERED"]);

    // Other workspaces cannot see it; no key, no access.
    let other = stack.workspace("other").await;
    assert_eq!(get_json(&svc, &other, "/messages/m-1").await.0, 404);
    let r = reqwest::get(svc.url("/messages/m-1")).await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_email_reaches_the_sink() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let sink = SmtpSink::start().await;
    put_provider(
        &svc,
        &key,
        "mail",
        json!({"type": "smtp", "config": {"host": "127.0.0.1", "port": sink.port, "tls": "none",
               "from": "Shop <shop@example.org>", "username": "u", "password": "smtp-pass-123456"}}),
    )
    .await;
    // Legacy form: recipient + stored template (content per channel) + profile + data.
    let req = rc_proto::MessageRequest {
        schema_version: 1,
        workspace_id: "acme".into(),
        message_id: "mail-1".into(),
        run_id: "run-7".into(),
        recipient: "u_2".into(),
        template: "WELCOME".into(),
        template_status: "found".into(),
        notification: json!({"published": true, "channels": ["email"],
            "content": {"email": {"title": "Welcome {{profile.name}}", "body": "Your plan: {{plan}}."}}})
        .to_string()
        .into_bytes()
        .into(),
        profile: json!({"email": "grace@example.org", "name": "Grace"}).to_string().into_bytes().into(),
        data: json!({"plan": "team"}).to_string().into_bytes().into(),
        ..Default::default()
    };
    publish_request(&js, &req, "acme:mail-1").await;
    let msg = wait_message(&svc, &key, "mail-1", "SENT", |m| m["status"] == "SENT").await;
    assert_eq!(msg["notification"], "WELCOME");
    assert_eq!(msg["providers"][0]["channel"], "email");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].auth.as_deref(), Some("u:smtp-pass-123456"));
    assert_eq!(mails[0].from, "<shop@example.org>");
    assert_eq!(mails[0].to, ["<grace@example.org>"]);
    let data = &mails[0].data;
    assert!(data.contains("Subject: Welcome Grace"), "{data}");
    assert!(data.contains("To: grace@example.org"), "{data}");
    assert!(
        data.contains("Message-ID: <mail-1@rudder-courier>"),
        "{data}"
    );
    assert!(data.contains("Your plan: team."), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_unmapped_reasons() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let msg = |id: &str, to: Value, channels: Value| {
        inline_request(
            "acme",
            id,
            json!({"to": to, "content": {"body": "x"}, "routing": {"channels": channels}}),
            json!({}),
            json!({}),
        )
    };
    // No provider at all.
    publish_request(
        &js,
        &msg("np", json!({"user_id": "u"}), json!(["email"])),
        "np",
    )
    .await;
    let m = wait_message(&svc, &key, "np", "NO_PROVIDERS", |m| {
        m["status"] == "UNROUTABLE"
    })
    .await;
    assert_eq!(m["reason"], "NO_PROVIDERS");

    // An email provider, a recipient without an address.
    let sink = SmtpSink::start().await;
    put_provider(&svc, &key, "mail", json!({"type": "smtp", "config": {"host": "127.0.0.1", "port": sink.port, "from": "a@b.org"}})).await;
    publish_request(
        &js,
        &msg("nc", json!({"user_id": "u"}), json!(["email", "sms"])),
        "nc",
    )
    .await;
    let m = wait_message(&svc, &key, "nc", "NO_CHANNELS", |m| {
        m["status"] == "UNROUTABLE"
    })
    .await;
    assert_eq!(m["reason"], "NO_CHANNELS");

    // Reachable by SMS but no SMS provider.
    publish_request(
        &js,
        &msg(
            "ns",
            json!({"user_id": "u", "phone_number": "+15550100"}),
            json!(["sms"]),
        ),
        "ns",
    )
    .await;
    let m = wait_message(&svc, &key, "ns", "NO_PROVIDERS sms", |m| {
        m["status"] == "UNROUTABLE"
    })
    .await;
    assert_eq!(m["reason"], "NO_PROVIDERS");

    // Missing and unpublished templates.
    let mut r = msg(
        "mt",
        json!({"user_id": "u", "email": "u@x.org"}),
        json!(["email"]),
    );
    r.message = Default::default();
    r.template = "NOPE".into();
    r.template_status = "missing".into();
    publish_request(&js, &r, "mt").await;
    wait_message(&svc, &key, "mt", "UNMAPPED", |m| m["status"] == "UNMAPPED").await;
    r.message_id = "up".into();
    r.template_status = "unpublished".into();
    publish_request(&js, &r, "up").await;
    let m = wait_message(&svc, &key, "up", "UNPUBLISHED", |m| {
        m["status"] == "UNROUTABLE"
    })
    .await;
    assert_eq!(m["reason"], "UNPUBLISHED");
    assert!(sink.mails().is_empty());

    let events = wait_events(&js, "acme", "nc", 2).await;
    assert_eq!(statuses(&events), ["ENQUEUED", "UNROUTABLE"]);
    assert_eq!(events[1].1.reason, "NO_CHANNELS");
    assert_eq!(events[1].0, "courier.acme.message.unroutable");

    // Listing: newest first, filtered by status, paginated with a cursor.
    let (_, page) = get_json(&svc, &key, "/messages?status=UNROUTABLE&limit=2").await;
    let ids: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let cursor = page["paging"]["cursor"].as_str().unwrap().to_string();
    let (_, page2) = get_json(
        &svc,
        &key,
        &format!("/messages?status=UNROUTABLE&limit=2&cursor={cursor}"),
    )
    .await;
    let ids2: Vec<&str> = page2["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let mut all: Vec<&str> = ids.iter().chain(ids2.iter()).copied().collect();
    assert_eq!(all.len(), 4, "{ids:?} {ids2:?}");
    all.sort();
    assert_eq!(all, ["nc", "np", "ns", "up"]);
    let (_, by_recipient) = get_json(&svc, &key, "/messages?recipient=u&limit=100").await;
    assert_eq!(by_recipient["results"].as_array().unwrap().len(), 5);
    assert_eq!(get_json(&svc, &key, "/messages?status=BOGUS").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_500_then_200_is_retried_and_sent_once() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let hook = WebhookReceiver::start(SECRET).await;
    webhook_provider(&svc, &key, &hook).await;
    hook.answer(500, "upstream down", None);
    hook.answer(429, "slow down", Some(0));
    publish_request(&js, &webhook_message("r-1"), "r-1").await;
    let msg = wait_message(&svc, &key, "r-1", "DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    assert_eq!(hook.received().len(), 3, "two failures, one success");
    assert_eq!(msg["providers"][0]["attempts"], 3);
    let events = wait_events(&js, "acme", "r-1", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events2 = lifecycle_events(&js, "acme", "r-1").await;
    assert_eq!(statuses(&events), ["ENQUEUED", "SENT", "DELIVERED"]);
    assert_eq!(events2.len(), 3, "one event per status");
    // The channel filter: the message went out on the webhook channel, not email.
    let ids = |page: &Value| page["results"].as_array().unwrap().len();
    let (_, by_channel) = get_json(&svc, &key, "/messages?channel=webhook&status=DELIVERED").await;
    assert_eq!(ids(&by_channel), 1, "{by_channel}");
    assert_eq!(by_channel["results"][0]["id"], "r-1");
    let (_, none) = get_json(&svc, &key, "/messages?channel=email").await;
    assert_eq!(ids(&none), 0, "{none}");
    let (s, bad) = get_json(&svc, &key, "/messages?channel=fax").await;
    assert_eq!(
        (s, bad["type"].as_str()),
        (400, Some("invalid_request_error"))
    );

    // Failures past the in-handler attempts go back to JetStream and are retried later.
    for _ in 0..4 {
        hook.answer(503, "busy", None);
    }
    publish_request(&js, &webhook_message("r-2"), "r-2").await;
    wait_message(&svc, &key, "r-2", "DELIVERED after redelivery", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    let r2 = hook
        .received()
        .into_iter()
        .filter(|r| r.body["data"]["id"] == "r-2")
        .count();
    assert_eq!(r2, 5);
    assert_eq!(
        statuses(&wait_events(&js, "acme", "r-2", 3).await),
        ["ENQUEUED", "SENT", "DELIVERED"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_400_is_undeliverable_with_the_answer() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let hook = WebhookReceiver::start(SECRET).await;
    webhook_provider(&svc, &key, &hook).await;
    hook.answer(400, r#"{"error":"unknown recipient u_1"}"#, None);
    publish_request(&js, &webhook_message("bad-1"), "bad-1").await;
    let msg = wait_message(&svc, &key, "bad-1", "UNDELIVERABLE", |m| {
        m["status"] == "UNDELIVERABLE"
    })
    .await;
    assert_eq!(hook.received().len(), 1, "4xx is not retried");
    assert_eq!(msg["reason"], "PROVIDER_ERROR");
    let err = msg["error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 400") && err.contains("unknown recipient u_1"),
        "{err}"
    );
    assert_eq!(msg["providers"][0]["status"], "UNDELIVERABLE");
    let events = wait_events(&js, "acme", "bad-1", 2).await;
    assert_eq!(statuses(&events), ["ENQUEUED", "UNDELIVERABLE"]);
    assert!(events[1].1.error.contains("HTTP 400"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_sends_once() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let hook = WebhookReceiver::start(SECRET).await;
    webhook_provider(&svc, &key, &hook).await;
    let req = webhook_message("dup-1");
    // Different Nats-Msg-Ids, so JetStream stores (and delivers) both copies.
    publish_request(&js, &req, "copy-a").await;
    publish_request(&js, &req, "copy-b").await;
    wait_message(&svc, &key, "dup-1", "DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    // Also after a restart of the service (the consumer replays nothing new, but a third copy arrives).
    svc.stop().await.unwrap();
    let svc = stack.delivery().await;
    publish_request(&js, &req, "copy-c").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = js
        .get_stream("COURIER")
        .await
        .unwrap()
        .consumer_info("delivery")
        .await
        .unwrap()
        .num_ack_pending;
    assert_eq!(pending, 0);
    assert_eq!(hook.received().len(), 1, "sent once");
    let events = lifecycle_events(&js, "acme", "dup-1").await;
    assert_eq!(statuses(&events), ["ENQUEUED", "SENT", "DELIVERED"]);
    let (_, history) = get_json(&svc, &key, "/messages/dup-1/history").await;
    assert_eq!(history["results"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_before_delivered_stays_consistent() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    let sink = SmtpSink::start().await;
    put_provider(&svc, &key, "mail", json!({"type": "smtp", "config": {"host": "127.0.0.1", "port": sink.port, "from": "a@b.org"}})).await;
    let req = inline_request(
        "acme",
        "o-1",
        json!({"to": {"user_id": "u_3", "email": "u3@example.org"}, "content": {"title": "t", "body": "b"}}),
        json!({}),
        json!({}),
    );
    publish_request(&js, &req, "o-1").await;
    wait_message(&svc, &key, "o-1", "SENT", |m| m["status"] == "SENT").await;

    let m = post_event(&svc, &key, "o-1", "OPENED").await;
    assert_eq!(m["status"], "OPENED");
    let opened = m["opened"].as_i64().unwrap();
    let m = post_event(&svc, &key, "o-1", "DELIVERED").await;
    assert_eq!(m["status"], "OPENED", "never moves back in rank");
    assert!(
        m["delivered"].as_i64().unwrap() > 0,
        "timestamps accumulate"
    );
    let m = post_event(&svc, &key, "o-1", "OPENED").await;
    assert_eq!(m["opened"].as_i64().unwrap(), opened, "first time kept");
    let m = post_event(&svc, &key, "o-1", "CLICKED").await;
    assert_eq!(m["status"], "CLICKED");
    // A bounce after a click does not undo the click.
    let m = post_event(&svc, &key, "o-1", "UNDELIVERABLE").await;
    assert_eq!(m["status"], "CLICKED");

    let events = wait_events(&js, "acme", "o-1", 6).await;
    assert_eq!(
        statuses(&events),
        [
            "ENQUEUED",
            "SENT",
            "OPENED",
            "DELIVERED",
            "CLICKED",
            "UNDELIVERABLE"
        ]
    );
    let delivered = &events[3].1;
    assert!(delivered.opened_ms > 0 && delivered.delivered_ms > 0);

    let r = reqwest::Client::new()
        .post(svc.url("/messages/o-1/events"))
        .bearer_auth(&key)
        .json(&json!({"status": "SENT"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::Client::new()
        .post(svc.url("/messages/nope/events"))
        .bearer_auth(&key)
        .json(&json!({"status": "OPENED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_provider_stores_messages_readable_over_the_api() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    put_provider(
        &svc,
        &key,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox", "push"]}),
    )
    .await;
    for id in ["in-1", "in-2"] {
        let req = inline_request(
            "acme",
            id,
            json!({"to": {"user_id": "u_9"}, "content": {"title": "Hello {{n}}", "body": "b"}, "routing": {"channels": ["email", "inbox"]}}),
            json!({"n": id}),
            json!({}),
        );
        publish_request(&js, &req, id).await;
        publish_request(&js, &req, &format!("{id}-again")).await;
        wait_message(&svc, &key, id, "DELIVERED", |m| m["status"] == "DELIVERED").await;
    }
    let (status, inbox) = get_json(&svc, &key, "/inbox/u_9").await;
    assert_eq!(status, 200);
    let titles = inbox_titles(&inbox);
    assert_eq!(
        titles,
        ["Hello in-2", "Hello in-1"],
        "newest first, once each"
    );
    let r = reqwest::get(svc.url("/inbox/u_9")).await.unwrap();
    assert_eq!(r.status(), 401);
    let other = stack.workspace("other").await;
    let (_, theirs) = get_json(&svc, &other, "/inbox/u_9").await;
    assert!(theirs["messages"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_masked_and_encrypted_at_rest() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.delivery().await;
    let secrets = [
        "whsec_plaintext_signing_secret_42",
        "Bearer tok_header_secret_77",
        "smtp-password-plain-99",
    ];
    let view = put_provider(
        &svc,
        &key,
        "hook",
        json!({"type": "webhook", "config": {"url": "http://127.0.0.1:9/x", "secret": secrets[0],
               "headers": {"Authorization": secrets[1]}}}),
    )
    .await;
    assert_eq!(view["config"]["secret"], "••••t_42");
    assert_eq!(view["config"]["headers"]["Authorization"], "••••t_77");
    put_provider(&svc, &key, "mail", json!({"type": "smtp", "config": {"host": "smtp.example.org", "port": 587, "tls": "starttls", "from": "a@b.org", "username": "apikey", "password": secrets[2]}})).await;
    let (_, list) = get_json(&svc, &key, "/providers").await;
    let (_, one) = get_json(&svc, &key, "/providers/mail").await;
    assert_eq!(one["config"]["password"], "••••n-99");
    assert_eq!(one["config"]["username"], "apikey");
    for text in [list.to_string(), one.to_string()] {
        for s in secrets {
            assert!(!text.contains(s), "API answer leaks {s}");
        }
    }
    // Nothing in Redis holds a secret in plain text.
    let mut conn = stack.redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = String::new();
    for k in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind == "hash" {
            let m: Vec<String> = redis::cmd("HGETALL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            dump.push_str(&m.join(" "));
        }
    }
    assert!(dump.contains("\"sealed\""), "providers are stored");
    for s in secrets {
        assert!(!dump.contains(s), "Redis holds {s} in plain text");
        assert!(!dump.contains(&s[s.len() - 12..]));
    }
    // Validation, another workspace, deletion.
    let bad = reqwest::Client::new()
        .put(svc.url("/providers/x"))
        .bearer_auth(&key)
        .json(&json!({"type": "webhook", "config": {"url": "ftp://nope"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let other = stack.workspace("other").await;
    assert_eq!(get_json(&svc, &other, "/providers/mail").await.0, 404);
    let r = reqwest::Client::new()
        .delete(svc.url("/providers/mail"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get_json(&svc, &key, "/providers/mail").await.0, 404);
}

/// Throughput to a local webhook receiver. Not a test of speed (no timed assertion): run with
/// `cargo test -p rc-tests --release --test delivery -- --ignored --nocapture measure_webhook_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_webhook_throughput() {
    let n: usize = std::env::var("DELIVERY_MEASURE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let mut settings = stack.delivery_settings();
    settings.delivery.concurrency = 256;
    // DELIVERY_MEASURE_TLS=1: the same receiver behind a local HTTPS front (private CA).
    let tls = std::env::var("DELIVERY_MEASURE_TLS").is_ok_and(|v| v == "1");
    let ca = rc_tests::tls::TestCa::new("measure");
    if tls {
        settings.outbound.extra_ca_file = Some(ca.pem_file().display().to_string());
    }
    let svc = stack.delivery_with(settings).await;
    let hook = WebhookReceiver::start(SECRET).await;
    let front = rc_tests::tls::TlsFront::start(&ca, hook.addr).await;
    let url = if tls { front.url("/hook") } else { hook.url() };
    put_provider(
        &svc,
        &key,
        "hook",
        json!({"type": "webhook", "channels": ["webhook", "chat"],
               "config": {"url": url, "secret": SECRET}}),
    )
    .await;
    let started = std::time::Instant::now();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let req = webhook_message(&format!("perf-{i}"));
        let subject = "courier.acme.message.requested".to_string();
        acks.push(
            js.send_publish(
                subject,
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(prost::Message::encode_to_vec(&req).into())
                    .message_id(format!("perf-{i}")),
            )
            .await
            .unwrap(),
        );
        // Bounded acks in flight (the client's own in-flight cap would otherwise stall).
        if acks.len() == 1_000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let published = started.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while hook.received_count() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = hook.received_count();
    let elapsed = started.elapsed();
    wait_message(
        &svc,
        &key,
        &format!("perf-{}", n - 1),
        "last DELIVERED",
        |m| m["status"] == "DELIVERED",
    )
    .await;
    println!(
        "delivered {received}/{n} webhook messages over {} in {:.2}s ({:.0} msg/s); publishing took {:.2}s",
        if tls { "https" } else { "http" },
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64(),
        published.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_send_fans_out_to_members() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.delivery().await;
    put_provider(&svc, &key, "inbox", json!({"type": "inbox"})).await;
    // The accounts service's read contract: members set and member profiles.
    let mut conn = stack.redis_conn().await;
    let _: () = redis::cmd("ZADD")
        .arg(rc_common::keys::tenant_members("acme", "t1"))
        .arg(1)
        .arg("u_a")
        .arg(2)
        .arg("u_b")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(rc_common::keys::user_profile("acme", "u_a"))
        .arg(r#"{"name":"Ann"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let req = inline_request(
        "acme",
        "f-1",
        json!({"to": {"tenant_id": "t1"}, "content": {"title": "Hi {{name}}", "body": "b"}, "routing": {"channels": ["inbox"]}}),
        json!({}),
        json!({}),
    );
    publish_request(&js, &req, "f-1").await;
    publish_request(&js, &req, "f-1-again").await;
    let a = wait_message(&svc, &key, "f-1:u_a", "u_a DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    assert_eq!(a["tenant_id"], "t1");
    assert_eq!(a["recipient"], "u_a");
    wait_message(&svc, &key, "f-1:u_b", "u_b DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    let (_, inbox) = get_json(&svc, &key, "/inbox/u_a").await;
    let titles = inbox_titles(&inbox);
    assert_eq!(
        titles,
        ["Hi Ann"],
        "once, rendered with the member's profile"
    );
    let (_, inbox) = get_json(&svc, &key, "/inbox/u_b").await;
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1);

    let mut empty = req.clone();
    empty.message_id = "f-2".into();
    empty.message = json!({"to": {"tenant_id": "nobody"}, "content": {"body": "b"}})
        .to_string()
        .into_bytes()
        .into();
    publish_request(&js, &empty, "f-2").await;
    let m = wait_message(&svc, &key, "f-2", "UNROUTABLE", |m| {
        m["status"] == "UNROUTABLE"
    })
    .await;
    assert_eq!(m["reason"], "NO_CHANNELS");
}
