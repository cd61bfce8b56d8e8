//! Issue 14, the edges: ingress batches and limits, HTTP hardening, rc-admin key ids.

use std::time::{Duration, Instant};

use prost::Message;
use rc_common::auth::{StoreError, WorkspaceStore, generate_key, key_id_of};
use rc_proto::Envelope;
use rc_tests::{Stack, stored_messages};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_key_never_takes_another_keys_id() {
    let stack = Stack::start();
    let store = WorkspaceStore::new(stack.redis_conn().await);
    store.create_workspace("acme", "Acme").await.unwrap();
    let first = store.add_key("acme", None).await.unwrap();
    let id = key_id_of(&first);

    // Same id, another secret: refused, and the first key stays listed and revocable.
    let look_alike = format!("rck_{id}_{}", "0".repeat(64));
    assert!(matches!(
        store.add_key("acme", Some(&look_alike)).await,
        Err(StoreError::KeyIdTaken(taken)) if taken == id
    ));
    // Our prefix in another shape is not ours: refused.
    for bad in [format!("rck_{id}_x"), "rck_short_x".into(), "rck_".into()] {
        assert!(
            matches!(
                store.add_key("acme", Some(&bad)).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad}"
        );
    }
    let listed = &store.list_workspaces().await.unwrap()[0].keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key_id, id);

    // A generated-format key whose id is free is accepted (make run re-supplies its dev key),
    // and supplying it again is a no-op.
    let dev = generate_key();
    assert_eq!(store.add_key("acme", Some(&dev)).await.unwrap(), dev);
    assert_eq!(store.add_key("acme", Some(&dev)).await.unwrap(), dev);
    assert_eq!(store.list_workspaces().await.unwrap()[0].keys.len(), 2);

    assert!(store.revoke_key("acme", &id).await.unwrap());
    let auth = rc_common::auth::Authenticator::new(store.clone(), &Stack::auth_settings());
    let header = |k: &str| http_header(&format!("Bearer {k}"));
    assert!(auth.authenticate(Some(&header(&first))).await.is_err());
    assert!(auth.authenticate(Some(&header(&dev))).await.is_ok());
}

fn http_header(v: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_str(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Ingress batches: a bounded window of pending acks, a documented limit, retries that converge.

const EVENTS: &str = "EVENTS";

fn batch(prefix: &str, n: usize) -> String {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"type":"track","event":"e","userId":"u","messageId":format!("{prefix}-{i}")})
        })
        .collect();
    serde_json::json!({ "batch": events }).to_string()
}

async fn post(
    url: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    post_with(&reqwest::Client::new(), url, key, body).await
}

async fn post_with(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    answer(rc_tests::post_json_as(client, url, key, body).await).await
}

/// Status, JSON body (asserted to be JSON) and headers.
async fn answer(resp: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
    (status, body, headers)
}

async fn stored_ids(stack: &Stack, subject: &str) -> Vec<String> {
    let js = stack.jetstream().await;
    stored_messages(&js, EVENTS, subject)
        .await
        .into_iter()
        .map(|m| Envelope::decode(m.payload.clone()).unwrap().message_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_limit_are_413_and_at_the_limit_complete() {
    let stack = Stack::start();
    let key = stack.workspace("big").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let limit = ingress::IngressSettings::default().max_batch_events;

    let (status, body, _) = post(&url, &key, batch("over", limit + 1_000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    assert!(stored_ids(&stack, "events.big.>").await.is_empty());

    let started = Instant::now();
    let (status, body, _) = post(&url, &key, batch("at", limit)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["messageIds"].as_array().unwrap().len(), limit);
    assert_eq!(stored_ids(&stack, "events.big.>").await.len(), limit);
    eprintln!("a {limit}-event batch took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_at_the_limit_do_not_delay_other_workspaces() {
    let stack = Stack::start();
    let (a, b, c) = (
        stack.workspace("ws-a").await,
        stack.workspace("ws-b").await,
        stack.workspace("ws-c").await,
    );
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let limit = ingress::IngressSettings::default().max_batch_events;

    // One keep-alive client and bodies built up front: the test's own CPU (the ingress runs in
    // this process) stays out of what is measured.
    let client = reqwest::Client::new();
    let mut alone = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let event = format!(r#"{{"type":"track","event":"e","userId":"u","messageId":"c0-{i}"}}"#);
        assert_eq!(
            post_with(&client, &url, &c, event).await.0,
            StatusCode::ACCEPTED
        );
        alone.push(started.elapsed());
    }
    alone.sort();
    eprintln!("single events alone: max {:?}", alone.last().unwrap());

    let (body_a, body_b) = (batch("a", limit), batch("b", limit));
    let batches = {
        let (url, a, b) = (url.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            let (one, two) = tokio::join!(post(&url, &a, body_a), post(&url, &b, body_b));
            (one.0, two.0)
        })
    };
    // Single events of a third workspace while both batches are in flight.
    let mut latencies = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let event = format!(r#"{{"type":"track","event":"e","userId":"u","messageId":"c-{i}"}}"#);
        let (status, body, _) = post_with(&client, &url, &c, event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        latencies.push(started.elapsed());
        if batches.is_finished() {
            break;
        }
    }
    let (one, two) = batches.await.unwrap();
    assert_eq!((one, two), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "{} single events beside two {limit}-event batches: p50 {:?}, p99 {p99:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert_eq!(stored_ids(&stack, "events.ws-a.>").await.len(), limit);
    assert_eq!(stored_ids(&stack, "events.ws-b.>").await.len(), limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_503_is_completed_by_its_retry_exactly_once() {
    let stack = Stack::start();
    let key = stack.workspace("retry").await;
    let body = batch("r", 3_000);

    // A deadline no batch can meet: the answer is a retryable 503 in JSON, with Retry-After.
    let mut settings = stack.ingress_settings();
    settings.ingress.publish_deadline_ms = 20;
    let hurried = stack.ingress_with(settings).await;
    let (status, resp, headers) =
        post(&hurried.url("/inbound/rudderstack"), &key, body.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
    assert_eq!(resp["type"], "unavailable");
    assert!(headers.contains_key("retry-after"));

    let ingress = stack.ingress().await;
    let (status, resp, _) = post(&ingress.url("/inbound/rudderstack"), &key, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let mut ids = stored_ids(&stack, "events.retry.>").await;
    ids.sort();
    let mut expected: Vec<String> = (0..3_000).map(|i| format!("r-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every event stored exactly once");
}

// ---------------------------------------------------------------------------------------------
// What a consumer would refuse is refused at the door.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_lone_surrogates_and_huge_numbers_are_400() {
    let stack = Stack::start();
    let key = stack.workspace("strict").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");
    let deep = format!(
        r#"{{"type":"identify","userId":"u","traits":{}1{}}}"#,
        r#"{"a":"#.repeat(200),
        "}".repeat(200)
    );
    let cases = [
        (deep.clone(), "deeper"),
        (
            r#"{"type":"identify","userId":"u","traits":{"name":"\ud800"}}"#.to_string(),
            "surrogate",
        ),
        (
            r#"{"type":"identify","userId":"u","traits":{"n":1e400}}"#.to_string(),
            "range",
        ),
        (
            format!(
                r#"{{"batch":[{{"type":"track","event":"e","userId":"u","properties":{deep}}}]}}"#
            ),
            "deeper",
        ),
    ];
    for (body, reason) in cases {
        let (status, resp, _) = post(&url, &key, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
        assert!(resp.to_string().contains(reason), "{reason}: {resp}");
    }
    assert!(stored_ids(&stack, "events.strict.>").await.is_empty());
    // Nesting within the bound and surrogate pairs are fine.
    let ok = r#"{"type":"identify","userId":"u","traits":{"a":{"b":[{"c":"\ud83d\ude00"}]}}}"#;
    assert_eq!(post(&url, &key, ok).await.0, StatusCode::ACCEPTED);
}

// ---------------------------------------------------------------------------------------------
// HTTP edges: gzip, timeouts, the JSON error shape everywhere.

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post_encoded(
    url: &str,
    key: &str,
    encoding: &str,
    body: Vec<u8>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .expect("request");
    answer(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_decoded_bombs_and_unknown_encodings_refused() {
    let stack = Stack::start();
    let key = stack.workspace("zip").await;
    let ingress = stack.ingress().await;
    let url = ingress.url("/inbound/rudderstack");

    let event = br#"{"type":"track","event":"e","userId":"u","messageId":"gz-1"}"#;
    let (status, resp, _) = post_encoded(&url, &key, "gzip", gzip(event)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(stored_ids(&stack, "events.zip.>").await, ["gz-1"]);

    // 64 MiB of zeros in ~64 KiB: refused by the body limit, on the decompressed size.
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 1024 * 1024);
    let (status, resp, _) = post_encoded(&url, &key, "gzip", bomb).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");

    // A plain body labelled gzip is the request's fault; an unknown encoding is a 415.
    let (status, resp, _) = post_encoded(&url, &key, "gzip", event.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, resp, _) = post_encoded(&url, &key, "br", event.to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{resp}");
    assert_eq!(stored_ids(&stack, "events.zip.>").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start();
    let mut settings = stack.ingress_settings();
    settings.http.header_read_timeout_ms = 1_000;
    let ingress = stack.ingress_with(settings).await;

    let head = b"POST /inbound/rudderstack HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let addr = ingress.addr;
            tokio::spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                // One byte every 200 ms: never a whole head.
                for byte in head {
                    if socket.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => return started.elapsed(),
                        Ok(Ok(_)) => {} // an error answer; the close follows
                        Err(_) => {}
                    }
                }
                Duration::MAX
            })
        })
        .collect();
    for client in clients {
        let held = client.await.unwrap();
        assert!(
            held < Duration::from_secs(5),
            "a slow-header connection was held {held:?} (timeout 1 s)"
        );
    }
    // The service still answers.
    let health = reqwest::get(ingress.url("/healthz")).await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start();
    let key = stack.workspace("stall").await;
    let mut settings = stack.ingress_settings();
    settings.http.body_read_timeout_ms = 500;
    let ingress = stack.ingress_with(settings).await;
    let mut socket = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    let head = format!(
        "POST /inbound/rudderstack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), socket.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""type":"invalid_request_error""#),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_is_a_json_503_with_retry_after() {
    let stack = Stack::start();
    let key = stack.workspace("slow").await;
    let mut settings = stack.ingress_settings();
    // No publish slot ever frees up, and the request timeout comes before the publish deadline.
    settings.ingress.max_inflight_publishes = 0;
    settings.http.request_timeout_ms = 500;
    let ingress = stack.ingress_with(settings).await;
    let (status, resp, headers) = post(
        &ingress.url("/inbound/rudderstack"),
        &key,
        r#"{"type":"track","event":"e","userId":"u"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{resp}");
    assert_eq!(resp["type"], "unavailable");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_rejections_are_json() {
    let stack = Stack::start();
    let key = stack.workspace("rej").await;
    let forwarder = stack
        .forwarder_with(stack.forwarder_settings(&rc_tests::forwarder::new_encryption_key()))
        .await;
    let client = reqwest::Client::new();
    let cases = [
        (
            reqwest::Method::GET,
            "/integrations/rudderstack/dead-letters/not-a-number",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/no/such/path",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::PATCH,
            "/integrations/rudderstack/status",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::PUT,
            "/integrations/rudderstack",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, expected) in cases {
        let mut request = client
            .request(method.clone(), forwarder.url(path))
            .bearer_auth(&key)
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let (status, resp, headers) = answer(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{method} {path}: {resp}");
        assert!(
            resp["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
        assert!(resp["type"].is_string(), "{resp}");
        assert_eq!(headers["content-type"], "application/json");
    }
    // A 2 MiB+ JSON body: axum's body limit answers 413, in JSON too.
    let huge = format!(r#"{{"url":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let request = client
        .put(forwarder.url("/integrations/rudderstack"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(huge);
    let (status, resp, _) = answer(request.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
}
