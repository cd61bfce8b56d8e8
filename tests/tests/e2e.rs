//! The whole pipeline, every service at once over real NATS and Redis: RudderStack-shaped events
//! through the ingress → profiles (identify) → automations (mapped track) → delivery (signed
//! webhook, inbox) → forwarder → a fake RudderStack data plane that enforces the gateway's rules.
//!
//! `make test` runs this file twice: on one nats-server and one redis-server, then with
//! `RC_TEST_CLUSTER=1` on a 3-node JetStream cluster and a Redis Cluster (`Stack::start_for_suite`).

use std::time::Duration;

use rc_tests::dataplane::DataPlane;
use rc_tests::delivery::WebhookReceiver;
use rc_tests::forwarder::{eventually, new_encryption_key, put_integration};
use rc_tests::{Service, Stack, call};
use serde_json::{Value, json};

const WRITE_KEY: &str = "2AbcWriteKeyFromRudderStack9f2a";
const SECRET: &str = "whsec_e2e_signing_secret_0123456789";

async fn ingest(ingress: &Service, key: &str, event: Value) {
    let (s, body) = call(
        ingress,
        key,
        reqwest::Method::POST,
        "/inbound/rudderstack",
        Some(event),
    )
    .await;
    assert_eq!(s, 202, "{body}");
}

struct Pipeline {
    stack: Stack,
    key: String,
    ingress: Service,
    profiles: Service,
    automations: Service,
    delivery: Service,
    forwarder: Service,
}

impl Pipeline {
    /// Gives the workspace a delivery provider and connects it to `dp` (the forwarder's
    /// RudderStack integration), over the APIs as a team would.
    async fn connect(&self, dp: &DataPlane, provider: &str, config: Value) {
        let path = format!("/providers/{provider}");
        let (s, body) = call(
            &self.delivery,
            &self.key,
            reqwest::Method::PUT,
            &path,
            Some(config),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let integration = json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": true});
        let r = put_integration(&self.forwarder, &self.key, integration).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

/// The data plane received "Message Delivered" for `user`.
fn delivered_reported(dp: &DataPlane, user: &str) -> bool {
    dp.events()
        .iter()
        .any(|e| e["event"] == "Message Delivered" && e["userId"] == user)
}

async fn pipeline() -> Pipeline {
    let stack = Stack::start_for_suite();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let forwarder = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    Pipeline {
        stack,
        key,
        ingress,
        profiles,
        automations,
        delivery,
        forwarder,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_event_becomes_a_delivered_webhook_and_message_events_in_rudderstack() {
    let p = pipeline().await;
    let key = &p.key;
    let hook = WebhookReceiver::start(SECRET).await;
    let dp = DataPlane::start(WRITE_KEY).await;

    // Configuration, the way a team would do it over the APIs.
    p.connect(
        &dp,
        "hook",
        json!({"type": "webhook", "channels": ["webhook"], "config": {"url": hook.url(), "secret": SECRET}}),
    )
    .await;
    let (s, body) = call(&p.automations, key, reqwest::Method::POST, "/notifications/templates",
        Some(json!({"id": "ORDER_SHIPPED", "name": "Order shipped", "published": true,
                    "channels": {"webhook": {"title": "Shipped {{order_id}}", "body": "Hi {{profile.name}}, {{order_id}} is on its way"}}}))).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = call(&p.automations, key, reqwest::Method::POST, "/automations/mappings",
        Some(json!({"event": "Order Shipped", "template": {"id": "shipping", "name": "Shipping", "steps": [
            {"action": "send", "recipient": "refs.data.userId", "template": "ORDER_SHIPPED"}]}}))).await;
    assert_eq!(s, 201, "{body}");

    // RudderStack sends an identify, then a track for the same user.
    ingest(
        &p.ingress,
        key,
        json!({"type": "identify", "userId": "u_42", "messageId": "rs-1",
        "traits": {"firstName": "Grace", "name": "Grace Hopper", "email": "grace@example.org"}}),
    )
    .await;
    eventually("profile stored", Duration::from_secs(10), async || {
        call(
            &p.profiles,
            key,
            reqwest::Method::GET,
            "/profiles/u_42",
            None,
        )
        .await
        .0 == 200
    })
    .await;
    ingest(
        &p.ingress,
        key,
        json!({"type": "track", "event": "Order Shipped", "userId": "u_42",
        "messageId": "rs-2", "properties": {"order_id": "ord_7"}}),
    )
    .await;

    // The webhook receiver gets one signed, rendered message.
    eventually("webhook called", Duration::from_secs(15), async || {
        hook.received_count() >= 1
    })
    .await;
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_valid);
    let data = &got[0].body["data"];
    assert_eq!(data["recipient"], "u_42");
    assert_eq!(data["channel"], "webhook");
    assert_eq!(data["content"]["title"], "Shipped ord_7");
    assert_eq!(
        data["content"]["body"], "Hi Grace Hopper, ord_7 is on its way",
        "profile from the identify"
    );
    let message_id = data["id"].as_str().unwrap().to_string();

    // The data plane receives "Message Sent" and "Message Delivered" for it, as track calls.
    eventually(
        "sent and delivered at the data plane",
        Duration::from_secs(15),
        async || {
            dp.events()
                .iter()
                .filter(|e| e["properties"]["id"] == message_id.as_str())
                .count()
                >= 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<Value> = dp
        .events()
        .into_iter()
        .filter(|e| e["properties"]["id"] == message_id.as_str())
        .collect();
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Message Delivered", "Message Sent"], "{events:#?}");
    let delivered = events
        .iter()
        .find(|e| e["event"] == "Message Delivered")
        .unwrap();
    assert_eq!(delivered["type"], "track");
    assert_eq!(delivered["userId"], "u_42");
    assert_eq!(delivered["messageId"], format!("{message_id}-DELIVERED"));
    let props = &delivered["properties"];
    assert_eq!(props["status"], "DELIVERED");
    assert_eq!(props["notification"], "ORDER_SHIPPED");
    assert_eq!(props["channel"], "webhook");
    assert_eq!(props["provider"], "hook");
    assert_eq!(props["event"], "Order Shipped");
    assert!(props["run_id"].as_str().is_some_and(|r| !r.is_empty()));

    // Every service agrees: the message is DELIVERED, the run completed.
    let (s, msg) = call(
        &p.delivery,
        key,
        reqwest::Method::GET,
        &format!("/messages/{message_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(msg["status"], "DELIVERED");
    let run_id = props["run_id"].as_str().unwrap();
    let (s, run) = call(
        &p.automations,
        key,
        reqwest::Method::GET,
        &format!("/automations/runs/{run_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["state"], "completed", "{run}");
    // Catalog counts are written by the next flush (≤ 1 s).
    eventually(
        "Order Shipped in the catalog",
        Duration::from_secs(5),
        async || {
            let (s, catalog) = call(
                &p.automations,
                key,
                reqwest::Method::GET,
                "/automations/events",
                None,
            )
            .await;
            s == 200 && catalog.to_string().contains("Order Shipped")
        },
    )
    .await;

    // The same RudderStack event retried (same messageId): no second run, message or webhook.
    ingest(
        &p.ingress,
        key,
        json!({"type": "track", "event": "Order Shipped", "userId": "u_42",
        "messageId": "rs-2", "properties": {"order_id": "ord_7"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.received_count(),
        1,
        "a retried event sends nothing twice"
    );
    assert_eq!(dp.message_ids().len(), 2, "{:?}", dp.message_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_automation_lands_in_the_inbox_and_is_reported_to_rudderstack() {
    let p = pipeline().await;
    let key = &p.key;
    let dp = DataPlane::start(WRITE_KEY).await;
    p.connect(
        &dp,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox", "email", "push", "sms", "chat"]}),
    )
    .await;

    // No mapping: the track event carries its automation (properties.courier.automation).
    ingest(
        &p.ingress,
        key,
        json!({"type": "track", "event": "Trial Ending", "userId": "u_7", "messageId": "rs-9",
        "properties": {"courier": {"automation": {
            "cancelation_token": "trial-u_7",
            "data": {"days_left": 3},
            "steps": [{"action": "send", "message": {"to": {"user_id": "u_7"},
                "content": {"title": "Trial ends", "body": "{{days_left}} days left"}}}]}}}}),
    )
    .await;

    eventually("inbox message", Duration::from_secs(15), async || {
        let (s, inbox) = call(&p.delivery, key, reqwest::Method::GET, "/inbox/u_7", None).await;
        s == 200 && inbox.to_string().contains("3 days left")
    })
    .await;
    eventually(
        "Message Delivered at the data plane",
        Duration::from_secs(15),
        async || delivered_reported(&dp, "u_7"),
    )
    .await;
}

/// NATS crashes (SIGKILL) and comes back on the same store while every service runs: each
/// consumer (profiles, accounts, automations, delivery, forwarder) resumes on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_resumes_after_a_nats_crash() {
    let mut p = pipeline().await;
    let key = p.key.clone();
    let accounts = p.stack.accounts().await;
    let dp = DataPlane::start(WRITE_KEY).await;
    p.connect(
        &dp,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox"]}),
    )
    .await;
    let inline = |id: &str, user: &str| {
        json!({"type": "track", "event": "Ping", "userId": user, "messageId": id,
        "properties": {"courier": {"automation": {"steps": [{"action": "send", "message": {"to": {"user_id": user},
            "content": {"title": "Ping", "body": "pong"}}}]}}}})
    };

    // Everything works before the crash...
    ingest(&p.ingress, &key, inline("rs-1", "u_before")).await;
    eventually(
        "first message reported",
        Duration::from_secs(15),
        async || delivered_reported(&dp, "u_before"),
    )
    .await;

    p.stack.nats.restart();

    // ...and after it, once the ingress accepts again (503 while NATS is away).
    let events = [
        json!({"type": "identify", "userId": "u_after", "messageId": "rs-2", "traits": {"name": "After"}}),
        json!({"type": "group", "userId": "u_after", "groupId": "t_after", "messageId": "rs-3", "traits": {"name": "T"}}),
        inline("rs-4", "u_after"),
    ];
    for event in events {
        eventually(
            "ingress accepts after the restart",
            Duration::from_secs(20),
            async || {
                reqwest::Client::new()
                    .post(p.ingress.url("/inbound/rudderstack"))
                    .bearer_auth(&key)
                    .json(&event)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 202)
            },
        )
        .await;
    }
    eventually(
        "profile after the restart",
        Duration::from_secs(20),
        async || {
            call(
                &p.profiles,
                &key,
                reqwest::Method::GET,
                "/profiles/u_after",
                None,
            )
            .await
            .0 == 200
        },
    )
    .await;
    eventually(
        "tenant member after the restart",
        Duration::from_secs(20),
        async || {
            let (s, users) = call(
                &accounts,
                &key,
                reqwest::Method::GET,
                "/tenants/t_after/users",
                None,
            )
            .await;
            s == 200 && users.to_string().contains("u_after")
        },
    )
    .await;
    eventually(
        "message delivered and reported after the restart",
        Duration::from_secs(30),
        async || delivered_reported(&dp, "u_after"),
    )
    .await;
}

/// Every real service binary, as Kubernetes runs it: ready over its environment config, fails
/// readiness at once on SIGTERM (so the endpoint is removed) while still answering, then exits 0
/// well inside the 30 s termination grace the manifests give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_drains_on_sigterm_and_exits_cleanly() {
    use rc_tests::ServiceProcess;
    let stack = Stack::start_for_suite();
    let mut env = stack.service_env();
    env.push(("RC_SECRETS__ENCRYPTION_KEY", new_encryption_key()));
    env.push(("RC_SHUTDOWN__READINESS_GRACE_MS", "500".into()));
    for binary in [
        "rc-ingress",
        "rc-profiles",
        "rc-accounts",
        "rc-automations",
        "rc-delivery",
        "rc-forwarder",
    ] {
        let mut process = ServiceProcess::start(binary, &env).await;
        let metrics = reqwest::get(process.url("/metrics")).await.unwrap();
        assert_eq!(metrics.status(), 200, "{binary} /metrics");
        let readyz = process.url("/readyz");
        let terminate = process.terminate(Duration::from_secs(20));
        let probe = async {
            // Within the readiness grace: not ready, but still serving.
            tokio::time::sleep(Duration::from_millis(200)).await;
            reqwest::get(&readyz).await.map(|r| r.status().as_u16())
        };
        let (exit, probed) = tokio::join!(terminate, probe);
        let (status, took) = exit.unwrap_or_else(|| panic!("{binary} did not exit after SIGTERM"));
        assert!(status.success(), "{binary} exited with {status}");
        assert_eq!(
            probed.ok(),
            Some(503),
            "{binary} fails readiness while draining"
        );
        assert!(
            took < Duration::from_secs(10),
            "{binary} took {took:?} to stop"
        );
    }
}
