//! The automations service end to end: real NATS and Redis, events through the real ingress.

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;
use rc_proto::{MessageRequest, RunEvent};
use rc_tests::automations::{publish_track, wait_for_messages};
use rc_tests::profiles::eventually;
use rc_tests::{Stack, stored_messages};
use serde_json::{Value, json};

const COURIER: &str = "COURIER";

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// Links a new template `id` to the mapping `on` (`{"type"|"event"}`), then deletes the template:
/// the mapping is left pointing at a missing template.
async fn link_then_delete(api: &Api, id: &str, mut on: Value) {
    let template = json!({"id": id, "steps": [{"action": "send", "template": "T"}]});
    assert_eq!(api.post("/automations/templates", template).await.0, 201);
    on["template_id"] = json!(id);
    let (s, body) = api.post("/automations/mappings", on).await;
    assert_eq!(
        (s, body["template_status"].clone()),
        (201, json!("ok")),
        "{body}"
    );
    let (s, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/automations/templates/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn run_until(&self, run_id: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (s, run) = self.get(&format!("/automations/runs/{run_id}")).await;
            if s == 200 && states.contains(&run["state"].as_str().unwrap_or("")) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never reached {states:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn api(service: &rc_tests::Service, key: &str) -> Api {
    Api {
        http: reqwest::Client::new(),
        base: service.url(""),
        key: key.to_string(),
    }
}

async fn ingest(stack_ingress: &rc_tests::Service, key: &str, event: Value) {
    let resp = reqwest::Client::new()
        .post(stack_ingress.url("/inbound/rudderstack"))
        .bearer_auth(key)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
}

fn decode(m: &async_nats::jetstream::Message) -> MessageRequest {
    MessageRequest::decode(m.payload.as_ref()).expect("MessageRequest")
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_track_event_runs_template_once_and_requests_a_message() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let api = api(&svc, &key);
    let js = stack.jetstream().await;
    // The recipient's stored profile (profiles service's read contract).
    redis::cmd("SET")
        .arg(rc_common::keys::user_profile("acme", "u_1"))
        .arg(r#"{"email":"u1@example.com","name":"Ann"}"#)
        .query_async::<()>(&mut stack.redis_conn().await)
        .await
        .unwrap();

    let (s, _) = api
        .post(
            "/notifications/templates",
            json!({"id": "ORDER_DONE", "name": "Order done", "published": true,
                   "channels": {"email": {"title": "Thanks {{name}}", "body": "Order {{order_id}}"}}}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, body) = api
        .post(
            "/automations/mappings",
            json!({"event": "Order Completed", "template": {"id": "order-flow", "name": "Order flow", "steps": [
                {"action": "send", "if": "data.total > 100", "recipient": "refs.data.userId", "template": "BIG_ORDER"},
                {"action": "send", "recipient": "refs.data.userId", "template": "ORDER_DONE", "brand": "B1",
                 "profile": {"locale": "fr"},
                 "data": {"order": {"$ref": "data.order_id"}, "vendor": {"$ref": "data.properties.vendor"}}, "ref": "sent"}
            ]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["key"], "track:Order Completed");

    let event = json!({"type": "track", "event": "Order Completed", "userId": "u_1", "messageId": "m-1",
                       "properties": {"order_id": "o_9", "total": 42, "vendor": "Acme"}});
    ingest(&ingress, &key, event).await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 1, "the `if` step is skipped, one send");
    let m = &msgs[0];
    let req = decode(m);
    assert_eq!(req.workspace_id, "acme");
    assert_eq!(req.recipient, "u_1");
    assert_eq!(req.template, "ORDER_DONE");
    assert_eq!(req.template_status, "found");
    assert_eq!(req.automation_template, "order-flow");
    assert_eq!(req.event, "Order Completed");
    assert_eq!(req.brand, "B1");
    assert_eq!(
        json_of(&req.notification)["channels"]["email"]["title"],
        "Thanks {{name}}"
    );
    let data = json_of(&req.data);
    assert_eq!(data["order"], "o_9");
    assert_eq!(data["vendor"], "Acme");
    assert_eq!(data["userId"], "u_1");
    assert_eq!(data["event"], "Order Completed");
    assert_eq!(data["properties"]["total"], 42);
    let profile = json_of(&req.profile);
    assert_eq!(
        profile,
        json!({"email": "u1@example.com", "name": "Ann", "locale": "fr"})
    );
    let msg_id = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .unwrap()
        .to_string();
    assert_eq!(msg_id, format!("acme:{}:requested", req.message_id));

    let run = api.run_until(&req.run_id, &["completed"]).await;
    let timeline = run["timeline"].as_array().unwrap();
    assert_eq!(timeline[0]["status"], "skipped");
    assert_eq!(timeline[1]["status"], "done");
    assert_eq!(run["context"]["sent"]["messageId"], req.message_id);

    // The same event again past the JetStream dedupe window (a different Nats-Msg-Id): one run.
    let stored = stored_messages(&js, "EVENTS", "events.acme.track").await;
    js.send_publish(
        "events.acme.track",
        PublishMessage::build()
            .payload(stored[0].payload.clone())
            .message_id("replay-1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Wait until the catalog has certainly processed the replay (a later distinct event).
    ingest(
        &ingress,
        &key,
        json!({"type": "identify", "userId": "u_1", "messageId": "m-2", "traits": {"plan": "pro"}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = api.get("/automations/events/identify").await;
        if s == 200 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = stored_messages(&js, COURIER, "courier.acme.run.started").await;
    assert_eq!(started.len(), 1, "a duplicate event starts no second run");
    assert_eq!(
        RunEvent::decode(started[0].payload.as_ref())
            .unwrap()
            .source_message_id,
        "m-1"
    );
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.message.requested")
            .await
            .len(),
        1
    );

    // Catalog: counted once, mapped, last payload kept; identify listed too.
    let (s, entry) = api.get("/automations/events/Order%20Completed").await;
    assert_eq!(s, 200);
    assert_eq!(entry["count"], 1);
    assert_eq!(entry["mapped"], true);
    assert_eq!(entry["automations"][0]["id"], "order-flow");
    assert_eq!(entry["automations"][0]["status"], "ok");
    assert_eq!(entry["last_payload"]["properties"]["order_id"], "o_9");
    let (_, list) = api.get("/automations/events").await;
    let keys: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec!["track:Order Completed", "identify"],
        "mapped first, then newest"
    );

    // Linking a template that does not exist is refused; one deleted after linking shows as
    // missing.
    let (s, body) = api
        .post(
            "/automations/mappings",
            json!({"type": "identify", "template_id": "ghost"}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    link_then_delete(&api, "ghost", json!({"type": "identify"})).await;
    let (_, entry) = api.get("/automations/events/identify").await;
    assert_eq!(entry["automations"][0]["status"], "missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_automations_steps_and_template() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let api = api(&svc, &key);
    let js = stack.jetstream().await;
    let (s, _) = api
        .post(
            "/automations/templates",
            json!({"id": "welcome", "steps": [
            {"action": "send", "template": "WELCOME", "data": {"who": {"$ref": "data.name"}}}]}),
        )
        .await;
    assert_eq!(s, 201);

    // Inline steps (ad hoc) with anonymousId as the default recipient.
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Signed Up", "anonymousId": "anon-7", "messageId": "e-1",
        "properties": {"courier": {"automation": {"data": {"name": "Zed"}, "steps": [
            {"action": "send", "template": "INLINE_T", "data": {"n": {"$ref": "data.name"}}}]}}}}),
    )
    .await;
    // Inline template run with an explicit recipient.
    ingest(&ingress, &key, json!({"type": "track", "event": "Signed Up", "userId": "u_2", "messageId": "e-2",
        "properties": {"courier": {"automation": {"template": "welcome", "recipient": "u_other", "data": {"name": "Bo"}}}}})).await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 2);
    let mut reqs: Vec<MessageRequest> = msgs.iter().map(decode).collect();
    reqs.sort_by(|a, b| a.template.cmp(&b.template));
    assert_eq!(reqs[0].template, "INLINE_T");
    assert_eq!(reqs[0].recipient, "anon-7");
    assert_eq!(reqs[0].template_status, "missing");
    assert_eq!(reqs[0].automation_template, "");
    assert_eq!(json_of(&reqs[0].data)["n"], "Zed");
    assert_eq!(reqs[1].template, "WELCOME");
    assert_eq!(reqs[1].recipient, "u_other");
    assert_eq!(reqs[1].automation_template, "welcome");
    assert_eq!(json_of(&reqs[1].data)["who"], "Bo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_survives_a_restart_and_fires_on_time() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let t0 = Instant::now();
    let (s, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"steps": [
            {"action": "delay", "duration": "3 seconds"},
            {"action": "send", "recipient": "refs.recipient", "template": "LATER"}]},
            "recipient": "u_5"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_string();
    a.run_until(&run_id, &["waiting"]).await;
    svc.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let svc2 = stack.automations().await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(10),
    )
    .await;
    let elapsed = t0.elapsed();
    assert_eq!(msgs.len(), 1);
    assert!(
        elapsed >= Duration::from_secs(3),
        "fired early: {elapsed:?}"
    );
    println!("delay of 3 s across a restart fired after {elapsed:?}");
    let req = decode(&msgs[0]);
    assert_eq!(req.recipient, "u_5");
    assert_eq!(req.run_id, run_id);
    let run = api(&svc2, &key).run_until(&run_id, &["completed"]).await;
    assert_eq!(run["timeline"][0]["status"], "waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelation_token_stops_a_pending_run() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let (_, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"cancellation_token": "trial-u_1", "steps": [
            {"action": "delay", "duration": "2 seconds"},
            {"action": "send", "template": "TRIAL_ENDING"}]}, "recipient": "u_1"}),
        )
        .await;
    let first = body["runId"].as_str().unwrap().to_string();
    let (_, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"cancelation_token": "trial-u_2", "steps": [
            {"action": "delay", "duration": "2 seconds"},
            {"action": "send", "template": "TRIAL_ENDING"}]}, "recipient": "u_2"}),
        )
        .await;
    let second = body["runId"].as_str().unwrap().to_string();
    a.run_until(&first, &["waiting"]).await;
    a.run_until(&second, &["waiting"]).await;
    // A cancel step stops the first; a later event carrying the second token stops the second.
    let (s, _) = a
        .post("/automations/invoke", json!({"automation": {"steps": [{"action": "cancel", "cancelation_token": "trial-u_1"}]}}))
        .await;
    assert_eq!(s, 200);
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Upgraded", "userId": "u_2", "messageId": "c-1",
        "properties": {"courier": {"automation": {"cancelation_token": "trial-u_2"}}}}),
    )
    .await;
    let run = a.run_until(&first, &["canceled"]).await;
    assert_eq!(
        run["timeline"].as_array().unwrap().last().unwrap()["status"],
        "canceled"
    );
    a.run_until(&second, &["canceled"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        stored_messages(&js, COURIER, "courier.acme.message.requested")
            .await
            .is_empty()
    );
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.run.canceled")
            .await
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_data_merges_a_webhook_response() {
    use axum::routing::post;
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    // A tiny third-party endpoint: requires the header and echoes what it got.
    let app = axum::Router::new().route(
        "/lookup",
        post(
            |headers: axum::http::HeaderMap,
             axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >,
             axum::Json(body): axum::Json<Value>| async move {
                if headers.get("x-token").map(|v| v.as_bytes()) != Some(b"s3cret") {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error": "no token"})),
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    axum::Json(
                        json!({"plan": "pro", "seats": 5, "user": q.get("user"), "echo": body}),
                    ),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let a = api(&svc, &key);
    let (s, body) = a
        .post("/automations/invoke", json!({"automation": {"steps": [
            {"action": "fetch-data", "ref": "lookup", "merge_strategy": "overwrite", "webhook": {
                "url": format!("http://{addr}/lookup"), "method": "POST", "headers": {"x-token": "s3cret"},
                "params": {"user": {"$ref": "recipient"}}, "body": {"id": {"$ref": "data.id"}}}},
            {"action": "send", "if": "data.plan == \"pro\" && data.seats > 2", "template": "PRO", "data": {"echo": {"$ref": "lookup.echo.id"}}},
            {"action": "send", "if": "!(data.plan == \"pro\")", "template": "NOT_PRO"}]},
            "recipient": "u_9", "data": {"id": 17}}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run_id = body["runId"].as_str().unwrap();
    let run = a.run_until(run_id, &["completed", "failed"]).await;
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(
        run["context"]["data"],
        json!({"id": 17, "plan": "pro", "seats": 5, "user": "u_9", "echo": {"id": 17}})
    );
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(msgs.len(), 1);
    let req = decode(&msgs[0]);
    assert_eq!(req.template, "PRO");
    assert_eq!(json_of(&req.data)["echo"], 17);
    assert_eq!(run["timeline"][2]["status"], "skipped");

    // A failing webhook fails the run, and the timeline says which step and why.
    let (_, body) = a
        .post("/automations/invoke", json!({"automation": {"steps": [
            {"action": "fetch-data", "webhook": {"url": format!("http://{addr}/lookup"), "method": "POST", "body": {}}}]}}))
        .await;
    let run = a
        .run_until(body["runId"].as_str().unwrap(), &["failed"])
        .await;
    assert_eq!(run["timeline"][0]["status"], "failed");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("steps[0].webhook: answered 401"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_templates_are_refused_with_a_path_and_invoke_is_idempotent() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    let a = api(&svc, &key);
    let (s, body) = a
        .post(
            "/automations/templates",
            json!({"id": "bad", "steps": [
            {"action": "send", "template": "T"}, {"action": "delay", "duration": "1 day"},
            {"action": "delay", "duration": "5 minuts"}]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        body["message"],
        "steps[2].duration: cannot parse \"5 minuts\""
    );
    assert_eq!(body["type"], "invalid_request_error");
    let (s, body) = a
        .post("/automations/invoke", json!({"automation": {"steps": [{"action": "send", "template": "T", "if": "data.x >"}]}}))
        .await;
    assert_eq!(s, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("automation.steps[0].if:"),
        "{body}"
    );
    assert_eq!(a.get("/automations/templates/bad").await.0, 404);

    // Templates CRUD.
    let t = json!({"id": "t1", "name": "T1", "steps": [{"action": "send", "template": "X"}]});
    assert_eq!(a.post("/automations/templates", t.clone()).await.0, 201);
    assert_eq!(
        a.post("/automations/templates", t).await.0,
        400,
        "ids are unique"
    );
    let (s, body) = a
        .call(
            reqwest::Method::PUT,
            "/automations/templates/t1",
            Some(json!({"name": "T1b", "steps": []})),
        )
        .await;
    assert_eq!((s, body["name"].clone()), (200, json!("T1b")));
    let (_, list) = a.get("/automations/templates").await;
    assert_eq!(list["results"].as_array().unwrap().len(), 1);

    // Idempotency-Key: the same run id, one run.
    let invoke = |k: &'static str| {
        a.http
            .post(svc.url("/automations/t1/invoke"))
            .bearer_auth(&key)
            .header("Idempotency-Key", k)
            .json(&json!({"recipient": "u_1"}))
            .send()
    };
    let r1: Value = invoke("k-1").await.unwrap().json().await.unwrap();
    let r2: Value = invoke("k-1").await.unwrap().json().await.unwrap();
    let r3: Value = invoke("k-2").await.unwrap().json().await.unwrap();
    assert_eq!(r1["runId"], r2["runId"]);
    assert_ne!(r1["runId"], r3["runId"]);
    a.run_until(r1["runId"].as_str().unwrap(), &["completed"])
        .await;
    assert_eq!(
        a.call(reqwest::Method::DELETE, "/automations/templates/t1", None)
            .await
            .0,
        204
    );
    assert_eq!(
        a.post("/automations/nope/invoke", json!({"recipient": "u"}))
            .await
            .0,
        404
    );
    // Another workspace sees nothing.
    let other = stack.workspace("other").await;
    let b = api(&svc, &other);
    assert_eq!(
        b.get(&format!(
            "/automations/runs/{}",
            r1["runId"].as_str().unwrap()
        ))
        .await
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_profile_and_invoke_steps_publish_their_requests() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let (s, _) = a
        .post(
            "/automations/templates",
            json!({"id": "child", "steps": [
            {"action": "send", "template": "CHILD", "data": {"x": {"$ref": "data.x"}}}]}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, body) = a
        .post("/automations/invoke", json!({"automation": {"steps": [
            {"action": "update-profile", "recipient_id": "refs.recipient", "profile": {"plan": {"$ref": "data.plan"}}, "merge": "overwrite"},
            {"action": "invoke", "template": "child", "ref": "child", "context": {"recipient": "u_kid", "data": {"x": 1}}}]},
            "recipient": "u_3", "data": {"plan": "team"}}))
        .await;
    assert_eq!(s, 200, "{body}");
    let run = a
        .run_until(body["runId"].as_str().unwrap(), &["completed"])
        .await;
    let updates = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.profile.update",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(updates.len(), 1);
    let up = rc_proto::ProfileUpdateRequest::decode(updates[0].payload.as_ref()).unwrap();
    assert_eq!(
        (up.user_id.as_str(), up.merge.as_str()),
        ("u_3", "overwrite")
    );
    assert_eq!(json_of(&up.profile), json!({"plan": "team"}));
    let child = run["context"]["child"]["runId"].as_str().unwrap();
    a.run_until(child, &["completed"]).await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(5),
    )
    .await;
    let req = decode(&msgs[0]);
    assert_eq!(
        (req.recipient.as_str(), req.run_id.as_str()),
        ("u_kid", child)
    );
    assert_eq!(json_of(&req.data)["x"], 1);
}

/// The run whose `run.started` event names this source message id (waits for it).
async fn run_of_event(js: &async_nats::jetstream::Context, ws: &str, message_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = stored_messages(js, COURIER, &format!("courier.{ws}.run.started")).await;
        if let Some(r) = started
            .iter()
            .map(|m| RunEvent::decode(m.payload.as_ref()).unwrap())
            .find(|r| r.source_message_id == message_id)
        {
            return r.run_id;
        }
        assert!(Instant::now() < deadline, "no run started for {message_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_data_user_id_is_the_recipient_and_a_false_if_skips_its_step() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    // The run's recipient is u_owner; `refs.data.userId` picks the event's userId instead.
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Plan Viewed", "userId": "u_1", "messageId": "r-1",
        "properties": {"plan": "free", "courier": {"automation": {"recipient": "u_owner", "steps": [
            {"action": "send", "recipient": "refs.data.userId", "template": "TO_USER"},
            {"action": "send", "if": "data.plan == \"pro\"", "template": "PRO_ONLY"},
            {"action": "send", "template": "TO_OWNER"}]}}}}),
    )
    .await;
    // Inline `data` replaces the event's: `refs.data.userId` is then the one it names.
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Plan Viewed", "userId": "u_1", "messageId": "r-2",
        "properties": {"courier": {"automation": {"data": {"userId": "u_from_data"}, "steps": [
            {"action": "send", "recipient": "refs.data.userId", "template": "FROM_DATA"}]}}}}),
    )
    .await;
    wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        3,
        Duration::from_secs(10),
    )
    .await;
    let run1 = run_of_event(&js, "acme", "r-1").await;
    let run = a.run_until(&run1, &["completed"]).await;
    // Settled: a fourth message (the skipped step) would be here by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msgs = stored_messages(&js, COURIER, "courier.acme.message.requested").await;
    let mut sent: Vec<(String, String)> = msgs
        .iter()
        .map(decode)
        .map(|r| (r.template, r.recipient))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            ("FROM_DATA".to_string(), "u_from_data".to_string()),
            ("TO_OWNER".to_string(), "u_owner".to_string()),
            ("TO_USER".to_string(), "u_1".to_string()),
        ],
        "PRO_ONLY is never sent"
    );
    let timeline = run["timeline"].as_array().unwrap();
    let statuses: Vec<&str> = timeline
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["done", "skipped", "done"], "{run}");
    assert_eq!(timeline[1]["index"], 1);
    assert!(
        timeline[1]["detail"]
            .as_str()
            .unwrap()
            .contains("data.plan == \\\"pro\\\""),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_identify_and_group_events_start_runs() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let (s, body) = a
        .post(
            "/automations/mappings",
            json!({"type": "identify", "template": {"id": "welcome", "name": "Welcome", "steps": [
                {"action": "send", "recipient": "refs.data.userId", "template": "WELCOME",
                 "data": {"plan": {"$ref": "data.plan"}}}]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, _) = a
        .post(
            "/automations/mappings",
            json!({"type": "group", "template": {"id": "team", "steps": [
                {"action": "send", "template": "TEAM_JOINED", "data": {"team": {"$ref": "data.groupId"},
                 "seats": {"$ref": "data.properties.seats"}}}]}}),
        )
        .await;
    assert_eq!(s, 201);
    // A second identify mapping whose template was deleted after linking: runs nothing, not an
    // error.
    link_then_delete(&a, "ghost", json!({"type": "identify"})).await;

    ingest(
        &ingress,
        &key,
        json!({"type": "identify", "userId": "u_7", "messageId": "i-1", "traits": {"plan": "pro", "email": "u7@example.com"}}),
    )
    .await;
    ingest(
        &ingress,
        &key,
        json!({"type": "group", "userId": "u_7", "groupId": "g_42", "messageId": "g-1", "traits": {"name": "Acme", "seats": 12}}),
    )
    .await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 2);
    let mut reqs: Vec<MessageRequest> = msgs.iter().map(decode).collect();
    reqs.sort_by(|x, y| x.template.cmp(&y.template));
    assert_eq!(reqs[0].template, "TEAM_JOINED");
    assert_eq!(
        reqs[0].event, "group",
        "a group run's messages name their event"
    );
    assert_eq!(reqs[1].event, "identify");
    assert_eq!(reqs[0].automation_template, "team");
    assert_eq!(reqs[0].recipient, "u_7");
    assert_eq!(
        json_of(&reqs[0].data)["team"],
        "g_42",
        "{:?}",
        json_of(&reqs[0].data)
    );
    assert_eq!(json_of(&reqs[0].data)["seats"], 12);
    assert_eq!(reqs[1].template, "WELCOME");
    assert_eq!(reqs[1].automation_template, "welcome");
    assert_eq!(reqs[1].recipient, "u_7");
    assert_eq!(json_of(&reqs[1].data)["plan"], "pro");
    let welcome = run_of_event(&js, "acme", "i-1").await;
    let run = a.run_until(&welcome, &["completed"]).await;
    assert_eq!(run["template"], "welcome");

    // The missing template: no run, nothing dead-lettered, and the catalog says so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = stored_messages(&js, COURIER, "courier.acme.run.started").await;
    assert_eq!(started.len(), 2, "welcome + team; ghost starts nothing");
    assert!(
        stored_messages(&js, rc_common::subjects::DLQ_STREAM, "dlq.automations.acme")
            .await
            .is_empty()
    );
    // Accepted events are counted by the next catalog flush (≤ 1 s).
    let entry = eventually("the identify entry", Duration::from_secs(5), || async {
        let (s, entry) = a.get("/automations/events/identify").await;
        (s == 200).then_some(entry)
    })
    .await;
    assert_eq!(entry["count"], 1);
    assert_eq!(entry["status"], "ok");
    assert_eq!(
        entry["automations"],
        json!([{"id": "welcome", "name": "Welcome", "status": "ok"}, {"id": "ghost", "status": "missing"}])
    );
    let (_, entry) = a.get("/automations/events/group").await;
    assert_eq!(entry["automations"][0]["id"], "team");
    assert_eq!(entry["last_payload"]["groupId"], "g_42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_event_with_a_cancel_step_stops_an_earlier_delayed_run() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Trial Started", "userId": "u_1", "messageId": "t-1",
        "properties": {"courier": {"automation": {"cancelation_token": "trial-u_1", "steps": [
            {"action": "delay", "duration": "2 seconds"},
            {"action": "send", "template": "TRIAL_ENDING"}]}}}}),
    )
    .await;
    // Another user's trial with another token must survive.
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Trial Started", "userId": "u_2", "messageId": "t-2",
        "properties": {"courier": {"automation": {"cancelation_token": "trial-u_2", "steps": [
            {"action": "delay", "duration": "2 seconds"},
            {"action": "send", "template": "TRIAL_ENDING"}]}}}}),
    )
    .await;
    let trial1 = run_of_event(&js, "acme", "t-1").await;
    let trial2 = run_of_event(&js, "acme", "t-2").await;
    a.run_until(&trial1, &["waiting"]).await;
    a.run_until(&trial2, &["waiting"]).await;
    // The later event: its inline automation cancels by token (schema spelling) and goes on.
    ingest(&ingress, &key, json!({"type": "track", "event": "Upgraded", "userId": "u_1", "messageId": "up-1",
        "properties": {"courier": {"automation": {"steps": [
            {"action": "cancel", "cancellation_token": "trial-u_1", "ref": "c"},
            {"action": "send", "template": "UPGRADED", "data": {"canceled": {"$ref": "c.canceled"}}}]}}}}))
    .await;
    let upgrade = run_of_event(&js, "acme", "up-1").await;
    let run = a.run_until(&upgrade, &["completed"]).await;
    assert_eq!(run["context"]["c"]["canceled"], 1, "{run}");
    let run = a.run_until(&trial1, &["canceled"]).await;
    let last = run["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "canceled");
    // Past the delay: only the untouched trial and the upgrade sent anything.
    a.run_until(&trial2, &["completed"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent: Vec<(String, String)> =
        stored_messages(&js, COURIER, "courier.acme.message.requested")
            .await
            .iter()
            .map(decode)
            .map(|r| (r.template, r.recipient))
            .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            ("TRIAL_ENDING".to_string(), "u_2".to_string()),
            ("UPGRADED".to_string(), "u_1".to_string())
        ]
    );
    let canceled = stored_messages(&js, COURIER, "courier.acme.run.canceled").await;
    assert_eq!(canceled.len(), 1);
    assert_eq!(
        RunEvent::decode(canceled[0].payload.as_ref())
            .unwrap()
            .run_id,
        trial1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inline_automations_are_dead_lettered_and_shown_in_the_catalog() {
    use rc_common::subjects::{DLQ_STREAM, dlq_headers};
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let cases = [
        (
            "Bad Action",
            json!({"steps": [{"action": "send", "template": "T"}, {"action": "fly"}]}),
            "properties.courier.automation.steps[1].action: unknown action \"fly\" (one of send, send-list, delay, cancel, update-profile, invoke, fetch-data)",
        ),
        (
            "Bad Steps",
            json!({"steps": {"action": "send"}}),
            "properties.courier.automation.steps: must be an array of steps",
        ),
        (
            "Bad Delay",
            json!({"steps": [{"action": "delay", "duration": "5 minuts"}]}),
            "properties.courier.automation.steps[0].duration: cannot parse \"5 minuts\"",
        ),
        (
            "Bad Data",
            json!({"data": "nope", "steps": []}),
            "properties.courier.automation.data: must be an object",
        ),
        (
            "Bad Recipient",
            json!({"recipient": 42, "template": "x"}),
            "properties.courier.automation.recipient: must be a non-empty string",
        ),
        (
            "Bad Shape",
            json!("run something"),
            "properties.courier.automation: must be an object",
        ),
        (
            "Missing Template",
            json!({"template": "nope"}),
            "properties.courier.automation.template: automation template \"nope\" not found",
        ),
    ];
    for (i, (event, automation, reason)) in cases.iter().enumerate() {
        let id = format!("bad-{i}");
        let properties = json!({"courier": {"automation": automation}});
        if *event == "Missing Template" {
            // Only this service knows its templates: the ingress accepts the event.
            ingest(
                &ingress,
                &key,
                json!({"type": "track", "event": event, "userId": "u_1",
                "messageId": id, "properties": properties}),
            )
            .await;
            continue;
        }
        // The ingress refuses the rest with the reason this service would give (shared
        // contract); a producer that publishes to NATS directly gets them dead-lettered.
        let r = reqwest::Client::new()
            .post(ingress.url("/inbound/rudderstack"))
            .bearer_auth(&key)
            .json(&json!({"type": "track", "event": event, "userId": "u_1", "properties": properties}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["message"], *reason);
        publish_track(&js, "acme", &id, event, &properties).await;
    }
    let dead = wait_for_messages(
        &js,
        DLQ_STREAM,
        "dlq.automations.acme",
        cases.len(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dead.len(), cases.len());
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let h = m.headers.as_ref().unwrap();
            assert_eq!(
                h.get(dlq_headers::ORIGINAL_SUBJECT).unwrap().as_str(),
                "events.acme.track"
            );
            assert_eq!(h.get(dlq_headers::DELIVERY_COUNT).unwrap().as_str(), "1");
            h.get(dlq_headers::REASON).unwrap().as_str().to_string()
        })
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for (i, (event, _, reason)) in cases.iter().enumerate() {
        let (s, entry) = a
            .get(&format!(
                "/automations/events/{}",
                event.replace(' ', "%20")
            ))
            .await;
        assert_eq!(s, 200);
        assert_eq!(entry["status"], "failed", "{entry}");
        assert_eq!(entry["failed_count"], 1);
        assert_eq!(entry["last_error"]["reason"], *reason);
        assert_eq!(entry["last_error"]["message_id"], format!("bad-{i}"));
    }
    // Nothing started, and the consumer is not stuck: a good event for the same name runs,
    // and the entry is ok again while keeping the last error.
    ingest(&ingress, &key, json!({"type": "track", "event": "Bad Action", "userId": "u_1", "messageId": "good-1",
        "properties": {"courier": {"automation": {"steps": [{"action": "send", "template": "FIXED"}]}}}})).await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(decode(&msgs[0]).template, "FIXED");
    // The good event is counted by the next catalog flush (≤ 1 s).
    let entry = eventually("the good event counted", Duration::from_secs(5), || async {
        let (_, entry) = a.get("/automations/events/Bad%20Action").await;
        (entry["count"] != 1).then_some(entry)
    })
    .await;
    assert_eq!(entry["count"], 2);
    assert_eq!(entry["status"], "ok");
    assert_eq!(entry["failed_count"], 1);
    assert_eq!(entry["last_error"]["message_id"], "bad-0");
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.run.started")
            .await
            .len(),
        1
    );
    assert_eq!(
        stored_messages(&js, DLQ_STREAM, "dlq.automations.acme")
            .await
            .len(),
        cases.len()
    );

    // Fixed by creating the template, the dead-lettered event is replayed: its run starts, the
    // entry is ok again and the event is not counted twice.
    let (s, _) = a
        .post(
            "/automations/templates",
            json!({"id": "nope", "steps": [{"action": "send", "template": "NOPE_SENT"}]}),
        )
        .await;
    assert_eq!(s, 201);
    let dead_one = dead
        .iter()
        .find(|m| {
            m.headers
                .as_ref()
                .unwrap()
                .get(dlq_headers::REASON)
                .unwrap()
                .as_str()
                == cases[6].2
        })
        .unwrap();
    js.send_publish(
        "events.acme.track",
        async_nats::jetstream::message::PublishMessage::build()
            .payload(dead_one.payload.clone())
            .message_id("replay-bad-6"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(decode(&msgs[1]).template, "NOPE_SENT");
    // The accepted replay is written by the next catalog flush (≤ 1 s).
    let entry = eventually("the replay accepted", Duration::from_secs(5), || async {
        let (_, entry) = a.get("/automations/events/Missing%20Template").await;
        (entry["status"] != "failed").then_some(entry)
    })
    .await;
    assert_eq!(entry["status"], "ok", "{entry}");
    assert_eq!(entry["count"], 1);
    assert_eq!(entry["failed_count"], 1);
    assert_eq!(entry["last_error"]["message_id"], "bad-6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_with_a_cursor_and_a_status_filter() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let other = stack.workspace("other").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    let b = api(&svc, &other);
    let mut ids = Vec::new();
    for i in 0..5 {
        let steps = if i % 2 == 0 {
            json!([{"action": "send", "template": "NOW"}])
        } else {
            json!([{"action": "delay", "duration": "1 hour"}, {"action": "send", "template": "LATER"}])
        };
        let (s, body) = a
            .post(
                "/automations/invoke",
                json!({"automation": {"steps": steps}, "recipient": format!("u_{i}")}),
            )
            .await;
        assert_eq!(s, 200);
        let id = body["runId"].as_str().unwrap().to_string();
        a.run_until(&id, &["completed", "waiting"]).await;
        ids.push(id);
        // Distinct creation times, so "newest first" is checkable.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, body) = b
        .post(
            "/automations/invoke",
            json!({"automation": {"steps": []}, "recipient": "x"}),
        )
        .await;
    let other_id = body["runId"].as_str().unwrap().to_string();
    b.run_until(&other_id, &["completed"]).await;

    // Pages of 2, newest first, nothing twice or missing.
    let mut seen = Vec::new();
    let mut path = "/automations/runs?limit=2".to_string();
    loop {
        let (s, page) = a.get(&path).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(page["type"], "list");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["runId"].as_str().unwrap().to_string());
            assert!(item.get("timeline").is_none(), "the list view is a summary");
        }
        if page["has_more"] == false {
            assert!(page["cursor"].is_null() && page["next_url"].is_null());
            break;
        }
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        path = page["next_url"].as_str().unwrap().to_string();
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let (_, waiting) = a.get("/automations/runs?status=waiting").await;
    let w: Vec<&str> = waiting["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runId"].as_str().unwrap())
        .collect();
    assert_eq!(w, vec![ids[3].as_str(), ids[1].as_str()]);
    assert_eq!(waiting["items"][0]["state"], "waiting");
    assert_eq!(waiting["items"][0]["recipient"], "u_3");
    let (_, done) = a.get("/automations/runs?status=completed&limit=2").await;
    assert_eq!(done["items"].as_array().unwrap().len(), 2);
    assert_eq!(done["has_more"], true);
    let (_, rest) = a.get(done["next_url"].as_str().unwrap()).await;
    assert_eq!(rest["items"][0]["runId"], ids[0]);
    assert_eq!(a.get("/automations/runs?status=lost").await.0, 400);
    assert_eq!(a.get("/automations/runs?cursor=garbage").await.0, 400);

    // Workspace isolation both ways.
    let (_, theirs) = b.get("/automations/runs").await;
    let t: Vec<&str> = theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runId"].as_str().unwrap())
        .collect();
    assert_eq!(t, vec![other_id.as_str()]);
    assert!(!seen.contains(&other_id));

    // The same track event delivered twice (ingress retry, then a replay past JetStream's
    // dedupe with a new Nats-Msg-Id): one run listed.
    let event = json!({"type": "track", "event": "Dup", "userId": "u_d", "messageId": "dup-1",
        "properties": {"courier": {"automation": {"steps": [{"action": "send", "template": "DUP"}]}}}});
    ingest(&ingress, &key, event.clone()).await;
    ingest(&ingress, &key, event).await;
    let stored = stored_messages(&js, "EVENTS", "events.acme.track").await;
    js.send_publish(
        "events.acme.track",
        async_nats::jetstream::message::PublishMessage::build()
            .payload(stored[0].payload.clone())
            .message_id("dup-replay"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let run = run_of_event(&js, "acme", "dup-1").await;
    a.run_until(&run, &["completed"]).await;
    // The replay has been consumed when the catalog counts... once (it is the same message id),
    // so wait on the consumer instead: a later event is processed after it.
    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "After", "userId": "u_d", "messageId": "after-1"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("/automations/events/After").await.0 != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, all) = a.get("/automations/runs?limit=100").await;
    let from_dup = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source_message_id"] == "dup-1")
        .count();
    assert_eq!(from_dup, 1);
    assert_eq!(all["items"][0]["runId"], run);
    let (_, entry) = a.get("/automations/events/Dup").await;
    assert_eq!(entry["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_expire_after_the_retention() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let mut settings = stack.automations_settings();
    settings.automations.run_retention_secs = 1;
    let svc = rc_tests::Service::spawn(|listener, shutdown| async move {
        automations::run(settings, Some(listener), shutdown).await
    })
    .await;
    let a = api(&svc, &key);
    let invoke = |steps: Value| {
        let a = &a;
        async move {
            let (s, body) = a
                .post(
                    "/automations/invoke",
                    json!({"automation": {"steps": steps}, "recipient": "u_1"}),
                )
                .await;
            assert_eq!(s, 200);
            body["runId"].as_str().unwrap().to_string()
        }
    };
    let done = invoke(json!([{"action": "send", "template": "NOW"}])).await;
    let waiting = invoke(json!([{"action": "delay", "duration": "1 hour"}])).await;
    let (s, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"cancelation_token": "t-1", "steps": [{"action": "delay", "duration": "1 hour"}]}}),
        )
        .await;
    assert_eq!(s, 200);
    let canceled = body["runId"].as_str().unwrap().to_string();
    a.run_until(&done, &["completed"]).await;
    a.run_until(&waiting, &["waiting"]).await;
    a.run_until(&canceled, &["waiting"]).await;
    let canceler = invoke(json!([{"action": "cancel", "cancelation_token": "t-1"}])).await;
    a.run_until(&canceled, &["canceled"]).await;
    a.run_until(&canceler, &["completed"]).await;
    let mut redis = stack.redis_conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(rc_common::keys::automations_of("acme", "run", &done, ""))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 1000, "finished run TTL {ttl}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        a.get(&format!("/automations/runs/{done}")).await.0,
        404,
        "expired"
    );
    assert_eq!(
        a.get(&format!("/automations/runs/{waiting}")).await.0,
        200,
        "an unfinished run never expires"
    );
    // A run finishing later prunes the expired ones from the index: the index stays bounded.
    let later = invoke(json!([])).await;
    a.run_until(&later, &["completed"]).await;
    let mut indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg(rc_common::keys::automations("acme", "runs"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    indexed.sort();
    let mut expected = vec![waiting.clone(), later.clone()];
    expected.sort();
    assert_eq!(indexed, expected);
    let (_, list) = a.get("/automations/runs").await;
    let listed: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["runId"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&waiting.as_str()), "{listed:?}");
    for gone in [&done, &canceled, &canceler] {
        assert!(
            !listed.contains(&gone.as_str()),
            "expired runs are not listed"
        );
    }
    assert_eq!(a.get(&format!("/automations/runs/{canceled}")).await.0, 404);
    let token_set: bool = redis::cmd("EXISTS")
        .arg(rc_common::keys::automations_of("acme", "token", "t-1", ""))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!token_set, "a finished run leaves its token set");
}

/// Measurement, not a test: `N=10000 [RATE=1000] cargo test --release -p rc-tests --test
/// automations -- --ignored --nocapture measure` (figures in services/automations/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_event_to_run_started() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let js = stack.jetstream().await;
    let a = api(&svc, &key);
    a.post(
        "/automations/mappings",
        json!({"event": "Ping", "template": {"id": "ping", "steps": [
        {"action": "send", "template": "PING"}]}}),
    )
    .await;
    // RATE (events/s): paced in batches of 10 (latency at a load the service keeps up with);
    // unset: batches of 100 as fast as ingress takes them (throughput; latency is then queueing).
    let rate: Option<f64> = std::env::var("RATE").ok().and_then(|v| v.parse().ok());
    let batch_size = if rate.is_some() { 10 } else { 100 };
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut batch = Vec::new();
    for i in 0..n {
        if let Some(rate) = rate
            && batch.is_empty()
        {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        batch.push(json!({"type": "track", "event": "Ping", "userId": format!("u{i}"), "messageId": format!("p{i}")}));
        if batch.len() == batch_size || i + 1 == n {
            let r = client
                .post(ingress.url("/inbound/rudderstack"))
                .bearer_auth(&key)
                .json(&json!({"batch": batch}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            batch.clear();
        }
    }
    // `stored_messages` stops at a consumer's 1000 unacked messages: count and read here.
    let deadline = Instant::now() + Duration::from_secs(300);
    while count_stored(&js, COURIER, "courier.acme.run.started").await < n {
        assert!(Instant::now() < deadline, "not all runs started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = t0.elapsed();
    let started = stored_messages(&js, COURIER, "courier.acme.run.started").await;
    let events = stored_messages(&js, "EVENTS", "events.acme.track").await;
    let received: std::collections::HashMap<String, i64> = events
        .iter()
        .map(|m| {
            let e = rc_proto::Envelope::decode(m.payload.as_ref()).unwrap();
            let t = e.received_at.unwrap();
            (
                e.message_id,
                t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
            )
        })
        .collect();
    let ms = |t: &prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
    let first_received = received.values().copied().min().unwrap();
    let last_started = started
        .iter()
        .map(|m| ms(&RunEvent::decode(m.payload.as_ref()).unwrap().at.unwrap()))
        .max()
        .unwrap();
    let mut lat: Vec<i64> = started
        .iter()
        .map(|m| {
            let r = RunEvent::decode(m.payload.as_ref()).unwrap();
            let at = r.at.unwrap();
            at.seconds * 1000 + i64::from(at.nanos) / 1_000_000 - received[&r.source_message_id]
        })
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    let span = (last_started - first_received).max(1) as f64 / 1000.0;
    println!(
        "runs started: {} in {:.2?} wall ({:.0}/s), {:.2} s from first event received to last run started ({:.0}/s); event→run.started latency ms p50 {} p90 {} p99 {} max {}",
        started.len(),
        total,
        started.len() as f64 / total.as_secs_f64(),
        span,
        started.len() as f64 / span,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}

async fn count_stored(js: &async_nats::jetstream::Context, stream: &str, subject: &str) -> usize {
    let stream = js.get_stream(stream).await.expect("stream");
    let info = stream
        .info_with_subjects(subject)
        .await
        .expect("stream info");
    use futures::TryStreamExt;
    let subjects: std::collections::HashMap<String, usize> =
        info.try_collect().await.expect("subjects");
    subjects.get(subject).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_data_sends_a_string_body_as_is() {
    use axum::routing::post;
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    // Echoes the raw body it got, so a second JSON encoding would show as a quoted string.
    let app = axum::Router::new().route(
        "/echo",
        post(|body: String| async move { axum::Json(json!({"raw": body})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let a = api(&svc, &key);
    for (body, raw) in [
        (json!("{\"order\":7}"), "{\"order\":7}"),
        (json!("plain text"), "plain text"),
        (json!({"order": 7}), "{\"order\":7}"),
    ] {
        let (s, b) = a
            .post(
                "/automations/invoke",
                json!({"automation": {"steps": [
                {"action": "fetch-data", "webhook": {"url": format!("http://{addr}/echo"),
                    "method": "POST", "body": body}}]}}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let run = a
            .run_until(b["runId"].as_str().unwrap(), &["completed", "failed"])
            .await;
        assert_eq!(run["context"]["data"]["raw"], raw, "{run}");
    }
}

/// An anonymous track (anonymousId only) to a template sending to `refs.data.userId` goes to the
/// anonymousId (it went to `""`, UNROUTABLE, while the run said completed); a send whose
/// recipient names nothing fails the run with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_events_reach_the_anonymous_id_and_a_send_to_nobody_fails_the_run() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let ingress = stack.ingress().await;
    let svc = stack.automations().await;
    let api = api(&svc, &key);
    let js = stack.jetstream().await;
    let (s, body) = api
        .post(
            "/automations/mappings",
            json!({"event": "Visited", "template": {"id": "visit", "steps": [
                {"action": "send", "recipient": "refs.data.userId", "template": "VISIT"}]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = api
        .post(
            "/automations/mappings",
            json!({"event": "Nobody", "template": {"id": "nobody", "steps": [
                {"action": "send", "recipient": "refs.data.email", "template": "VISIT"}]}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");

    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Visited", "anonymousId": "anon-7", "messageId": "v-1"}),
    )
    .await;
    let msgs = wait_for_messages(
        &js,
        COURIER,
        "courier.acme.message.requested",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(decode(&msgs[0]).recipient, "anon-7");

    ingest(
        &ingress,
        &key,
        json!({"type": "track", "event": "Nobody", "userId": "u_1", "messageId": "n-1"}),
    )
    .await;
    let run_id = run_of_event(&js, "acme", "n-1").await;
    let run = api.run_until(&run_id, &["failed", "completed"]).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("steps[0].recipient: resolves to no user"),
        "{run}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.message.requested")
            .await
            .len(),
        1,
        "no message to nobody"
    );
}

/// An unavailable endpoint is not bad data: 5xx, 429 and refused connections are tried again
/// (within the execution, then after the run waited) until it answers; a 404 fails the step
/// at once with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_data_retries_an_unavailable_endpoint_and_fails_on_a_refusal() {
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    // Fails its first four requests (503, 503, 429, 502), then answers.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new()
        .route(
            "/flaky",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let status = [503, 503, 429, 502].get(n).copied().unwrap_or(200);
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        axum::Json(json!({"plan": "pro", "attempt": n + 1})),
                    )
                }
            }),
        )
        .route(
            "/gone",
            get(|| async { (axum::http::StatusCode::NOT_FOUND, "no such user") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let a = api(&svc, &key);
    let (s, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"steps": [
            {"action": "fetch-data", "merge_strategy": "overwrite",
             "webhook": {"url": format!("http://{addr}/flaky")}}]},
            "recipient": "u_1", "data": {"id": 1}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_string();
    // Three attempts in the first execution, all unavailable: the run waits, with the reason.
    let waiting = a
        .run_until(&run_id, &["waiting", "completed", "failed"])
        .await;
    assert_eq!(waiting["state"], "waiting", "{waiting}");
    let detail = waiting["timeline"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("answered 429") && detail.contains("tried 3 times"),
        "{waiting}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let (_, run) = a.get(&format!("/automations/runs/{run_id}")).await;
        // "running" comes between the retry that succeeds and the end of the run.
        if !matches!(run["state"].as_str(), Some("waiting" | "running"))
            || Instant::now() > deadline
        {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(
        run["context"]["data"],
        json!({"id": 1, "plan": "pro", "attempt": 5})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let statuses: Vec<&str> = run["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["waiting", "done"], "{run}");

    // A 4xx other than 408/429 is the endpoint's answer: the step fails, once, with it.
    let (_, body) = a
        .post(
            "/automations/invoke",
            json!({"automation": {"steps": [
            {"action": "fetch-data", "webhook": {"url": format!("http://{addr}/gone")}}]}}),
        )
        .await;
    let run = a
        .run_until(body["runId"].as_str().unwrap(), &["completed", "failed"])
        .await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "steps[0].webhook: answered 404 Not Found",
        "{run}"
    );
}

/// A template linked to an event (not created with the mapping) gets the event as its
/// `trigger` too; a trigger it already has is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_templates_get_the_event_as_their_trigger() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let svc = stack.automations().await;
    let a = api(&svc, &key);
    let template = json!({"id": "welcome", "steps": [{"action": "send", "template": "T"}]});
    assert_eq!(a.post("/automations/templates", template).await.0, 201);
    let (s, body) = a
        .post(
            "/automations/mappings",
            json!({"event": "Signed Up", "template_id": "welcome"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (_, t) = a.get("/automations/templates/welcome").await;
    assert_eq!(t["trigger"], body["key"], "{t}");
    assert_eq!(t["steps"], json!([{"action": "send", "template": "T"}]));
    // Created with a mapping: the same field, from the same place.
    let (s, created) = a
        .post(
            "/automations/mappings",
            json!({"type": "identify", "template": {"id": "on-identify", "steps": []}}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let (_, t) = a.get("/automations/templates/on-identify").await;
    assert_eq!(t["trigger"], created["key"], "{t}");
    // Linked to a second event: the first trigger stays.
    let (s, _) = a
        .post(
            "/automations/mappings",
            json!({"event": "Upgraded", "template_id": "welcome"}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, t) = a.get("/automations/templates/welcome").await;
    assert_eq!(t["trigger"], body["key"], "{t}");
}

/// A replica's cached answers ("nothing mapped", a template) are dropped when another replica
/// changes the workspace's configuration: the announcement, not the TTL (an hour here), makes
/// the change visible. A change in one workspace leaves another's entries alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_the_config_cache_of_the_others() {
    use automations::cached::{self, Config};
    use std::sync::Arc;
    let stack = Stack::start();
    let redis = stack.redis_conn().await;
    let shutdown = rc_common::Shutdown::new();
    let hour = Duration::from_secs(3600);
    let (a, b) = (Arc::new(Config::new(hour)), Arc::new(Config::new(hour)));
    let (nats_a, nats_b) = (stack.nats_client().await, stack.nats_client().await);
    for (m, nats) in [(&a, &nats_a), (&b, &nats_b)] {
        let changes = cached::subscribe(nats).await.unwrap();
        nats.flush().await.unwrap();
        tokio::spawn(cached::listen(m.clone(), changes, shutdown.clone()));
    }
    let entry = "track:Signed Up";
    assert!(b.mapped(&redis, "acme", entry).await.unwrap().is_empty());
    assert!(b.mapped(&redis, "other", entry).await.unwrap().is_empty());
    assert!(
        b.template(&redis, "acme", "welcome")
            .await
            .unwrap()
            .is_none()
    );

    for ws in ["acme", "other"] {
        automations::store::link(&redis, ws, entry, "welcome")
            .await
            .unwrap();
    }
    let doc = json!({"id": "welcome", "steps": []});
    automations::store::put_doc(
        &redis,
        &automations::store::templates_key("acme"),
        "welcome",
        &doc,
    )
    .await
    .unwrap();
    a.changed(&nats_a, "acme").await;
    rc_tests::forwarder::eventually(
        "replica b sees the link",
        Duration::from_secs(10),
        async || b.mapped(&redis, "acme", entry).await.unwrap().as_ref() == ["welcome".to_string()],
    )
    .await;
    assert_eq!(
        b.template(&redis, "acme", "welcome")
            .await
            .unwrap()
            .as_deref(),
        Some(&doc)
    );
    // `other` was not announced: b still answers from its cache.
    assert!(b.mapped(&redis, "other", entry).await.unwrap().is_empty());
    // The replica that made the change answers at once.
    assert_eq!(
        a.mapped(&redis, "acme", entry).await.unwrap().as_ref(),
        ["welcome".to_string()]
    );

    assert!(
        automations::store::unlink(&redis, "acme", entry, "welcome")
            .await
            .unwrap()
    );
    a.changed(&nats_a, "acme").await;
    rc_tests::forwarder::eventually(
        "replica b sees the unlink",
        Duration::from_secs(10),
        async || b.mapped(&redis, "acme", entry).await.unwrap().is_empty(),
    )
    .await;
    shutdown.trigger();
}

/// A run its creator executes at once is stored running (one write fewer than pending, then
/// running). If the creator dies between that write and the `started` event, the replica that
/// takes the run over announces it: one `run.started`, then the run's steps, then `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stored_running_whose_creator_died_is_announced_by_the_replica_that_resumes_it() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    // The dead creator: `create` as the event consumer calls it, then nothing (no execution).
    let creator = rc_tests::automations::dead_replica(&stack).await;
    let run = creator
        .create(
            "acme",
            automations::engine::NewRun {
                id: "orphan".into(),
                template: String::new(),
                steps: vec![json!({"action": "send", "template": "WELCOME"})],
                cancelation_token: None,
                context: json!({"recipient": "u_1"}),
                event: "Signed Up".into(),
                source_message_id: "m-orphan".into(),
                depth: 0,
                executes_now: true,
            },
        )
        .await
        .unwrap()
        .expect("created");
    assert_eq!(run.state, automations::store::RunState::Running);
    assert!(
        stored_messages(&js, COURIER, "courier.acme.run.started")
            .await
            .is_empty()
    );

    let svc = stack.automations().await;
    rc_tests::forwarder::eventually("run completed", Duration::from_secs(15), async || {
        let (_, body) = rc_tests::call(
            &svc,
            &key,
            reqwest::Method::GET,
            "/automations/runs/orphan",
            None,
        )
        .await;
        body["state"] == "completed"
    })
    .await;
    let started = stored_messages(&js, COURIER, "courier.acme.run.started").await;
    assert_eq!(started.len(), 1, "one started event");
    let ev = RunEvent::decode(started[0].payload.as_ref()).unwrap();
    assert_eq!(ev.run_id, "orphan");
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.message.requested")
            .await
            .len(),
        1
    );
    assert_eq!(
        stored_messages(&js, COURIER, "courier.acme.run.completed")
            .await
            .len(),
        1
    );
}
