//! Issue 12: the dead-letter API every event service serves (`/dead-letters…`, one
//! `rc_common::deadletters` module) and `rc-admin dlq`, through real services, nats-server and
//! redis-server: poison a message for each service, list and show it decoded, replay it (fixed
//! where the cause can be fixed, else it dead-letters again under a new seq), delete, purge,
//! another workspace's seq is 404, paging with a cursor.

use std::time::Duration;

use async_nats::jetstream::Context;
use prost::Message as _;
use rc_common::deadletters::DlqService;
use rc_proto::{Envelope, EventType};
use rc_tests::dataplane::{DataPlane, Mode};
use rc_tests::forwarder::{
    message_event, new_encryption_key, publish_message_event, put_integration,
};
use rc_tests::profiles::eventually;
use rc_tests::{Endpoint, Stack, call, service_binary};
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn publish(js: &Context, subject: &str, payload: Vec<u8>) {
    js.publish(subject.to_string(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

/// An envelope that decodes but can never be handled by `kind`'s consumer: an identify without
/// any user id (profiles), a group without a group id (accounts).
fn unroutable(ws: &str, id: &str, kind: EventType) -> Vec<u8> {
    Envelope {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: id.into(),
        r#type: kind as i32,
        traits: br#"{"plan":"pro","note":"<img src=x onerror=alert(1)>"}"#
            .to_vec()
            .into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_772_442_011,
            nanos: 0,
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Not protobuf at all.
const GARBAGE: &[u8] = b"\xff\xff\xff\xff not a protobuf";

/// The workspace's dead letters of a service whose original subject is `subject`, waiting
/// until there are `n`.
async fn wait_dead(svc: &impl Endpoint, key: &str, subject: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} dead letters of {subject}"), WAIT, || async {
        let (status, page) = call(svc, key, Method::GET, "/dead-letters?limit=100", None).await;
        assert_eq!(status, 200, "{page}");
        let found: Vec<Value> = page["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["originalSubject"] == subject)
            .cloned()
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

fn seq(d: &Value) -> u64 {
    d["seq"].as_u64().expect("seq")
}

async fn not_found_for_other(svc: &impl Endpoint, other: &str, seq: u64) {
    for (method, path) in [
        (Method::GET, format!("/dead-letters/{seq}")),
        (Method::POST, format!("/dead-letters/{seq}/replay")),
        (Method::DELETE, format!("/dead-letters/{seq}")),
    ] {
        let (status, body) = call(svc, other, method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path} by another workspace: {body}");
        assert_eq!(body["type"], "invalid_request_error", "{body}");
    }
}

/// Replays `dead` (a poison that cannot be fixed): it leaves the DLQ and comes back under a new
/// seq; two replays at once still make one event.
async fn replay_comes_back(svc: &impl Endpoint, key: &str, dead: &Value) {
    let subject = dead["originalSubject"].as_str().unwrap();
    let old = seq(dead);
    let path = format!("/dead-letters/{old}/replay");
    let (a, b) = tokio::join!(
        call(svc, key, Method::POST, &path, None),
        call(svc, key, Method::POST, &path, None)
    );
    // Either both published (the second deduplicated) or the second found it gone.
    for (status, body) in [&a, &b] {
        assert!(*status == 200 || *status == 404, "{status} {body}");
    }
    assert!(a.0 == 200 || b.0 == 200, "{a:?} {b:?}");
    let (status, _) = call(svc, key, Method::GET, &format!("/dead-letters/{old}"), None).await;
    assert_eq!(status, 404, "a replayed dead letter leaves the DLQ");
    let again = wait_dead(svc, key, subject, 1).await;
    assert!(seq(&again[0]) > old, "dead-lettered again under a new seq");
    // Exactly one: the double replay was one event.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(wait_dead(svc, key, subject, 1).await.len(), 1);
}

fn rc_admin(nats_url: &str, args: &[&str]) -> (bool, Value, String) {
    let out = std::process::Command::new(service_binary("rc-admin"))
        .args(["--nats-url", nats_url, "--json", "dlq"])
        .args(args)
        .output()
        .expect("rc-admin runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn admin(nats_url: &str, args: &[&str]) -> (bool, Value, String) {
    let (url, args) = (
        nats_url.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rc_admin(&url, &args)
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_service_lists_shows_replays_and_purges_its_dead_letters() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let other = stack.workspace("other").await;
    let profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let forwarder = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;

    // Every service of the declared list serves its dead letters at the path a front door
    // routes to it (deploy_parity checks the routing from the same list).
    let by_service: [(DlqService, &dyn Endpoint); 5] = [
        (DlqService::Profiles, &profiles),
        (DlqService::Accounts, &accounts),
        (DlqService::Automations, &automations),
        (DlqService::Delivery, &delivery),
        (DlqService::Forwarder, &forwarder),
    ];
    assert_eq!(by_service.map(|(s, _)| s), DlqService::ALL);
    for (service, endpoint) in by_service {
        let (status, body) = call(endpoint, &key, Method::GET, &service.routed_path(), None).await;
        assert_eq!(status, 200, "{service}: {body}");
        assert!(body["deadLetters"].is_array(), "{service}: {body}");
    }

    // profiles: decodes, but has no user id. Shown decoded, the traits as a document.
    publish(
        &js,
        "events.acme.identify",
        unroutable("acme", "id-1", EventType::Identify),
    )
    .await;
    let dead = wait_dead(&profiles, &key, "events.acme.identify", 1).await;
    let d = &dead[0];
    assert_eq!(d["service"], "profiles");
    assert_eq!(d["workspace"], "acme");
    assert_eq!(d["payloadType"], "Envelope");
    assert!(d["reason"].as_str().unwrap().contains("userId"), "{d}");
    assert_eq!(d["deliveryCount"], 1);
    assert_eq!(d["event"]["messageId"], "id-1");
    assert!(d["event"].get("traits").is_none(), "lists show a summary");
    let (status, one) = call(
        &profiles,
        &key,
        Method::GET,
        &format!("/dead-letters/{}", seq(d)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["payload"]["type"], "identify");
    assert_eq!(one["payload"]["messageId"], "id-1");
    assert_eq!(one["payload"]["traits"]["plan"], "pro");
    assert_eq!(
        one["payload"]["traits"]["note"],
        "<img src=x onerror=alert(1)>"
    );
    assert_eq!(one["payload"]["timestamp"], "2026-03-02T09:00:11Z");
    assert!(one["deadLetteredAt"].as_str().unwrap().ends_with('Z'));
    // The same under the front-door path of the service.
    let (status, same) = call(
        &profiles,
        &key,
        Method::GET,
        &format!("/dead-letters/profiles/{}", seq(d)),
        None,
    )
    .await;
    assert_eq!((status, &same["payload"]), (200, &one["payload"]));
    not_found_for_other(&profiles, &other, seq(d)).await;
    replay_comes_back(&profiles, &key, d).await;

    // accounts: a group without a group id.
    publish(
        &js,
        "events.acme.group",
        unroutable("acme", "g-1", EventType::Group),
    )
    .await;
    let dead = wait_dead(&accounts, &key, "events.acme.group", 1).await;
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("groupId"),
        "{}",
        dead[0]
    );
    not_found_for_other(&accounts, &other, seq(&dead[0])).await;
    // Not another service's either: profiles has no such dead letter.
    let (status, _) = call(
        &profiles,
        &key,
        Method::GET,
        &format!("/dead-letters/{}", seq(&dead[0])),
        None,
    )
    .await;
    assert_eq!(status, 404);
    replay_comes_back(&accounts, &key, &dead[0]).await;

    // automations and delivery: not protobuf at all; shown as base64.
    for (svc, subject) in [
        (&automations, "events.acme.track"),
        (&delivery, "courier.acme.message.requested"),
    ] {
        publish(&js, subject, GARBAGE.to_vec()).await;
        let dead = wait_dead(svc, &key, subject, 1).await;
        assert_eq!(dead[0]["event"], json!({"undecodable": true}));
        let (status, one) = call(
            svc,
            &key,
            Method::GET,
            &format!("/dead-letters/{}", seq(&dead[0])),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(one["payload"], Value::Null);
        use base64::Engine as _;
        assert_eq!(
            one["payloadBase64"],
            base64::engine::general_purpose::STANDARD.encode(GARBAGE)
        );
        not_found_for_other(svc, &other, seq(&dead[0])).await;
        replay_comes_back(svc, &key, &dead[0]).await;
    }

    // Paging: a keyset cursor, stable while dead letters keep arriving.
    for i in 0..5 {
        publish(
            &js,
            "events.acme.group",
            unroutable("acme", &format!("p-{i}"), EventType::Group),
        )
        .await;
    }
    wait_dead(&accounts, &key, "events.acme.group", 6).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = call(
            &accounts,
            &key,
            Method::GET,
            &format!("/dead-letters?limit=2&cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let items = page["deadLetters"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(seq));
        if seen.len() == 2 {
            // Arrives while paging: shows up at the end, nothing shifts or repeats.
            publish(
                &js,
                "events.acme.group",
                unroutable("acme", "p-late", EventType::Group),
            )
            .await;
            wait_dead(&accounts, &key, "events.acme.group", 7).await;
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let (_, page) = call(&accounts, &key, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 7);
    // Hostile or odd queries: bounded, or refused in the JSON shape.
    let (status, page) = call(
        &accounts,
        &key,
        Method::GET,
        "/dead-letters?limit=100000",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page["deadLetters"].as_array().unwrap().len() <= 100);
    for bad in [
        "/dead-letters?cursor=abc",
        "/dead-letters?limit=-1",
        "/dead-letters?offset=3",
        "/dead-letters/abc",
    ] {
        let (status, body) = call(&accounts, &key, Method::GET, bad, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].is_string(), "{bad}: {body}");
    }
    let (status, body) = call(&accounts, "nope", Method::GET, "/dead-letters", None).await;
    assert_eq!(status, 401, "{body}");

    // Delete one, then purge the rest; another workspace's dead letters stay.
    publish(
        &js,
        "events.other.group",
        unroutable("other", "o-1", EventType::Group),
    )
    .await;
    let theirs = wait_dead(&accounts, &other, "events.other.group", 1).await;
    let first = seen[0];
    let (status, _) = call(
        &accounts,
        &key,
        Method::DELETE,
        &format!("/dead-letters/{first}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &accounts,
        &key,
        Method::GET,
        &format!("/dead-letters/{first}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, purged) = call(&accounts, &key, Method::DELETE, "/dead-letters", None).await;
    assert_eq!((status, &purged["purged"]), (200, &json!(6)), "{purged}");
    let (_, page) = call(&accounts, &key, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 0);
    let (_, page) = call(&accounts, &other, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 1);
    assert_eq!(seq(&page["deadLetters"][0]), seq(&theirs[0]));

    // rc-admin: the operator's view over NATS, every workspace unless one is named.
    let nats = stack.nats.url();
    publish(
        &js,
        "events.acme.group",
        unroutable("acme", "adm-1", EventType::Group),
    )
    .await;
    wait_dead(&accounts, &key, "events.acme.group", 1).await;
    let (ok, all, err) = admin(&nats, &["list", "--service", "accounts"]).await;
    assert!(ok, "{err}");
    let workspaces: Vec<&str> = all["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["workspace"].as_str().unwrap())
        .collect();
    assert_eq!(workspaces, ["other", "acme"], "{all}");
    let (ok, mine, err) = admin(
        &nats,
        &["list", "--service", "accounts", "--workspace", "acme"],
    )
    .await;
    assert!(ok, "{err}");
    let acme_seq = seq(&mine["deadLetters"][0]);
    assert_eq!(mine["deadLetters"].as_array().unwrap().len(), 1);
    let (ok, shown, err) = admin(
        &nats,
        &["show", &acme_seq.to_string(), "--service", "accounts"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(shown["payload"]["messageId"], "adm-1");
    // Scoped: the seq is not profiles', nor other's.
    let (ok, _, err) = admin(
        &nats,
        &["show", &acme_seq.to_string(), "--service", "profiles"],
    )
    .await;
    assert!(!ok && err.contains("no dead letter"), "{err}");
    let (ok, _, _) = admin(
        &nats,
        &[
            "show",
            &acme_seq.to_string(),
            "--service",
            "accounts",
            "--workspace",
            "other",
        ],
    )
    .await;
    assert!(!ok);
    let (ok, _, err) = admin(&nats, &["list", "--service", "ingress"]).await;
    assert!(!ok && err.contains("unknown service"), "{err}");
    let (ok, replayed, err) = admin(
        &nats,
        &["replay", &acme_seq.to_string(), "--service", "accounts"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(replayed["subject"], "events.acme.group");
    let again = wait_dead(&accounts, &key, "events.acme.group", 1).await;
    assert!(seq(&again[0]) > acme_seq);
    let (ok, purged, err) = admin(
        &nats,
        &["purge", "--service", "accounts", "--workspace", "other"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(purged["purged"], 1);
    let (_, page) = call(&accounts, &key, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 1, "acme's stays");
    let (ok, purged, err) = admin(&nats, &["purge", "--service", "accounts"]).await;
    assert!(ok, "{err}");
    assert_eq!(purged["purged"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_dead_letter_replays_once_the_data_plane_is_fixed() {
    const WRITE_KEY: &str = "2AbcWriteKeyFromRudderStack9f2a";
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key = stack.workspace("acme").await;
    let other = stack.workspace("other").await;
    let dp = DataPlane::start(WRITE_KEY).await;
    let fwd = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    let put = put_integration(
        &fwd,
        &key,
        json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": true}),
    )
    .await;
    assert_eq!(put.status(), 200);
    dp.set_mode(Mode::Fail(400));
    publish_message_event(&js, &message_event("acme", "m-1", "SENT", "u_1")).await;
    let dead = wait_dead(&fwd, &key, "courier.acme.message.sent", 1).await;
    let d = &dead[0];
    assert!(d["reason"].as_str().unwrap().contains("400"), "{d}");
    assert_eq!(d["payloadType"], "MessageEvent");
    assert_eq!(d["event"]["status"], "SENT");
    let (status, one) = call(
        &fwd,
        &key,
        Method::GET,
        &format!("/dead-letters/forwarder/{}", seq(d)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["payload"]["messageId"], "m-1");
    assert_eq!(one["payload"]["statusAt"], "2026-03-02T09:00:11.006Z");
    assert_eq!(one["rudderstackEvent"]["messageId"], "m-1-SENT");
    not_found_for_other(&fwd, &other, seq(d)).await;

    // Fixed: the replay reaches the data plane, once.
    dp.set_mode(Mode::Normal);
    let (status, r) = call(
        &fwd,
        &key,
        Method::POST,
        &format!("/dead-letters/{}/replay", seq(d)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["subject"], "courier.acme.message.sent");
    eventually("the replayed event", WAIT, || async {
        dp.message_ids().contains("m-1-SENT").then_some(())
    })
    .await;
    let (_, page) = call(&fwd, &key, Method::GET, "/dead-letters", None).await;
    assert_eq!(page["total"], 0);
    // The older path is the same API.
    let (status, page) = call(
        &fwd,
        &key,
        Method::GET,
        "/integrations/rudderstack/dead-letters",
        None,
    )
    .await;
    assert_eq!((status, &page["total"]), (200, &json!(0)));
}
