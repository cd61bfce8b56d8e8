//! Outbound HTTP over real TLS and the SSRF guard (`rc_common::outbound`), through the services
//! that call out: delivery (webhook providers) and the forwarder (RudderStack data planes).
//! HTTPS comes from a local rustls front with a certificate from a private CA (tests/src/tls.rs)
//! relaying to the usual fakes; the services trust it only through `outbound.extra_ca_file`.

use std::time::Duration;

use rc_tests::dataplane::DataPlane;
use rc_tests::delivery::{WebhookReceiver, inline_request, publish_request, wait_message};
use rc_tests::forwarder::{
    eventually, get_json, message_event, new_encryption_key, post_json, publish_message_event,
    put_integration,
};
use rc_tests::tls::{TestCa, TlsFront};
use rc_tests::{Service, Stack, call};
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_signing_secret_0123456789";
const WRITE_KEY: &str = "2AbcWriteKeyFromRudderStack9f2a";

async fn put_provider(svc: &Service, key: &str, url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(svc.url("/providers/hook"))
        .bearer_auth(key)
        .json(&json!({"type": "webhook", "channels": ["webhook"],
                      "config": {"url": url, "secret": SECRET}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn webhook_message(id: &str) -> rc_proto::MessageRequest {
    inline_request(
        "acme",
        id,
        json!({"to": {"user_id": "u_1"},
               "content": {"title": "Hello", "body": "Hi {{profile.name}}"},
               "routing": {"method": "single", "channels": ["webhook"]}}),
        json!({}),
        json!({"name": "Ada"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_https_trusts_the_extra_ca_and_retries_a_500() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let ca = TestCa::new("webhooks");
    let mut settings = stack.delivery_settings();
    settings.outbound.extra_ca_file = Some(ca.pem_file().display().to_string());
    let svc = stack.delivery_with(settings).await;
    let hook = WebhookReceiver::start(SECRET).await;
    let front = TlsFront::start(&ca, hook.addr).await;
    let (status, body) = put_provider(&svc, &key, &front.url("/hook")).await;
    assert_eq!(status, 200, "{body}");

    // First answer 500: retried over TLS, sent once.
    hook.answer(500, "try again", None);
    publish_request(&js, &webhook_message("tls-1"), "tls-1").await;
    let msg = wait_message(&svc, &key, "tls-1", "DELIVERED", |m| {
        m["status"] == "DELIVERED"
    })
    .await;
    assert_eq!(msg["providers"][0]["reference"], "rcpt-1");
    let got = hook.received();
    assert_eq!(got.len(), 2, "one 500, one 200");
    assert!(got.iter().all(|r| r.signature_valid));
    assert_eq!(got[1].body["data"]["content"]["body"], "Hi Ada");
    assert!(
        got[1].headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("rudder-courier-delivery/")
    );
    assert!(front.handshakes() >= 1, "the request went through TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_with_an_untrusted_certificate_is_refused() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    // The service trusts another CA than the one that signed the server's certificate.
    let trusted = TestCa::new("trusted");
    let other = TestCa::new("other");
    let mut settings = stack.delivery_settings();
    settings.outbound.extra_ca_file = Some(trusted.pem_file().display().to_string());
    // Retried (a refused certificate may be fixed) until the retry window ends.
    settings.delivery.retry_window_ms = 300;
    let svc = stack.delivery_with(settings).await;
    let hook = WebhookReceiver::start(SECRET).await;
    let front = TlsFront::start(&other, hook.addr).await;
    assert_eq!(put_provider(&svc, &key, &front.url("/hook")).await.0, 200);

    publish_request(&js, &webhook_message("tls-bad"), "tls-bad").await;
    let msg = wait_message(&svc, &key, "tls-bad", "UNDELIVERABLE", |m| {
        m["status"] == "UNDELIVERABLE"
    })
    .await;
    let err = msg["error"].as_str().unwrap_or_default();
    assert!(err.contains("certificate"), "{msg}");
    assert_eq!(hook.received_count(), 0, "no byte of the message was sent");
    assert_eq!(front.handshakes(), 0, "no handshake completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_reaches_an_https_data_plane_and_refuses_an_untrusted_one() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let ca = TestCa::new("dataplane");
    let dp = DataPlane::start(WRITE_KEY).await;
    let front = TlsFront::start(&ca, dp.addr).await;
    let enc = new_encryption_key();

    // Without the CA: the test call reports the refused certificate, nothing reaches the fake.
    let mut plain = stack.forwarder_settings(&enc);
    plain.forwarder.allow_http = false;
    let fwd = stack.forwarder_with(plain.clone()).await;
    let cfg = json!({"writeKey": WRITE_KEY, "dataPlaneUrl": front.url(""), "enabled": true});
    let r = put_integration(&fwd, &key, cfg.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (status, answer) = post_json(&fwd, &key, "/integrations/rudderstack/test").await;
    assert_eq!(status, 200);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("certificate"),
        "{answer}"
    );
    assert!(dp.answers().is_empty());
    let _ = fwd.stop().await;

    // With the CA as outbound.extra_ca_file: events arrive over TLS.
    let mut trusting = plain;
    trusting.outbound.extra_ca_file = Some(ca.pem_file().display().to_string());
    let fwd = stack.forwarder_with(trusting).await;
    publish_message_event(&js, &message_event("acme", "m-1", "DELIVERED", "u_1")).await;
    eventually(
        "the event over https",
        Duration::from_secs(10),
        async || dp.message_ids().contains("m-1-DELIVERED"),
    )
    .await;
    let (status, answer) = post_json(&fwd, &key, "/integrations/rudderstack/test").await;
    assert_eq!((status, &answer["ok"]), (200, &json!(true)), "{answer}");
    assert!(
        front.handshakes() >= 1,
        "through TLS (the connection is reused)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_at_configuration_time() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let mut d = stack.delivery_settings();
    d.outbound.allow_private_networks = false;
    let delivery = stack.delivery_with(d).await;
    let mut f = stack.forwarder_settings(&new_encryption_key());
    f.outbound.allow_private_networks = false;
    let fwd = stack.forwarder_with(f).await;

    for url in [
        "http://127.0.0.1:9000/hook",
        "https://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.1.1/",
        "http://[::1]:9000/",
        "http://[fd00::1]/",
        "http://localhost:9000/hook",
        "http://0.0.0.0/",
    ] {
        let (status, body) = put_provider(&delivery, &key, url).await;
        assert_eq!(status, 400, "{url}: {body}");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains("config.url") && msg.contains("may not reach"),
            "{msg}"
        );

        let r = put_integration(
            &fwd,
            &key,
            json!({"writeKey": WRITE_KEY, "dataPlaneUrl": url, "enabled": true}),
        )
        .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert!(status == 400 || status == 422, "{url}: {status} {body}");
        assert!(
            body["message"].as_str().unwrap().contains("may not reach"),
            "{body}"
        );
    }
    // Public names pass the configuration check (they are checked again after DNS).
    assert_eq!(
        put_provider(&delivery, &key, "https://hooks.example.com/x")
            .await
            .0,
        200
    );
}

/// A destination stored while private networks were allowed (or a name that resolves to a private
/// address) is refused when the call is made: the guard checks the connected peer, not the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_at_connect_time() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let hook = WebhookReceiver::start(SECRET).await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let enc = new_encryption_key();

    // Configure with the guard off (as a local setup would)...
    // The webhook by name (the resolver path), the data plane by literal IP (the peer check).
    let by_name = format!("http://localhost:{}/hook", hook.addr.port());
    let open_delivery = stack.delivery().await;
    assert_eq!(put_provider(&open_delivery, &key, &by_name).await.0, 200);
    let _ = open_delivery.stop().await;
    let open_fwd = stack.forwarder_with(stack.forwarder_settings(&enc)).await;
    let r = put_integration(
        &open_fwd,
        &key,
        json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let _ = open_fwd.stop().await;

    // ...then run with it on: nothing reaches 127.0.0.1.
    let mut d = stack.delivery_settings();
    d.outbound.allow_private_networks = false;
    let delivery = stack.delivery_with(d).await;
    publish_request(&js, &webhook_message("ssrf-1"), "ssrf-1").await;
    let msg = wait_message(&delivery, &key, "ssrf-1", "UNDELIVERABLE", |m| {
        m["status"] == "UNDELIVERABLE"
    })
    .await;
    let err = msg["error"].as_str().unwrap();
    assert!(
        err.contains("refused: localhost resolves to a loopback address"),
        "a refused destination fails at once: {err}"
    );
    assert_eq!(hook.received_count(), 0);

    let mut f = stack.forwarder_settings(&enc);
    f.outbound.allow_private_networks = false;
    let fwd = stack.forwarder_with(f).await;
    publish_message_event(&js, &message_event("acme", "m-1", "DELIVERED", "u_1")).await;
    eventually("paused by the guard", Duration::from_secs(10), async || {
        let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
        st["state"] == "paused"
    })
    .await;
    let (_, st) = get_json(&fwd, &key, "/integrations/rudderstack/status").await;
    let reason = st["pausedReason"].as_str().unwrap();
    assert!(reason.contains("address refused"), "{st}");
    assert!(dp.answers().is_empty(), "the data plane was never called");
    assert!(
        st["pending"].as_u64().unwrap() >= 1,
        "the event is kept: {st}"
    );
}

/// Over TLS the peer check still sees the address (after the handshake, before any request
/// byte): a trusted HTTPS server on 127.0.0.1 gets a handshake but no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_checks_the_peer_of_https_connections_too() {
    let ca = TestCa::new("guard");
    let hook = WebhookReceiver::start(SECRET).await;
    let front = TlsFront::start(&ca, hook.addr).await;
    let settings = rc_common::outbound::OutboundSettings {
        extra_ca_file: Some(ca.pem_file().display().to_string()),
        ..Default::default()
    };
    let spec = rc_common::outbound::ClientSpec {
        user_agent: "test",
        timeout: Duration::from_secs(5),
        follow_redirects: false,
    };
    let guarded = rc_common::outbound::client(&settings, &spec).unwrap();
    let err = guarded
        .post(front.url("/hook"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let blocked = rc_common::outbound::is_blocked(&err).expect("refused by the peer check");
    assert!(
        blocked.0.contains("127.0.0.1 is a loopback address"),
        "{blocked}"
    );
    assert_eq!(hook.received_count(), 0, "no request was sent");

    // The same client with the guard off reaches it (so the refusal above is the guard's).
    let open = rc_common::outbound::client(
        &rc_common::outbound::OutboundSettings {
            allow_private_networks: true,
            ..settings
        },
        &spec,
    )
    .unwrap();
    let r = open
        .post(front.url("/hook"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the receiver answered (unsigned body)");
    assert_eq!(hook.received_count(), 1);
}

/// fetch-data steps are checked against the same guard when the automation is written: with the
/// guard on, a step calling 127.0.0.1 is refused with the reason and the endpoint never sees a
/// request (the connect-time check of names behind DNS is the client's, tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_data_cannot_reach_private_addresses_when_the_guard_is_on() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let hook = WebhookReceiver::start(SECRET).await;
    let mut settings = stack.automations_settings();
    settings.outbound.allow_private_networks = false;
    let svc = Service::spawn(|listener, shutdown| async move {
        automations::run(settings, Some(listener), shutdown).await
    })
    .await;
    let (s, body) = call(
        &svc,
        &key,
        reqwest::Method::POST,
        "/automations/invoke",
        Some(json!({"automation": {"steps": [
            {"action": "fetch-data", "webhook": {"url": hook.url(), "method": "POST", "body": {}}}]},
            "recipient": "u_1"})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let reason = body["message"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("automation.steps[0].webhook.url: points at a loopback address"),
        "{body}"
    );
    assert_eq!(hook.received_count(), 0, "no request reached 127.0.0.1");
}
