//! Harness for the delivery service: settings, a signed-webhook receiver and an SMTP sink
//! (fakes of third-party endpoints that enforce their contract), and request helpers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use prost::Message as _;
use rc_proto::MessageRequest;
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::{Service, Stack, stack_settings};

pub const TEST_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

impl Stack {
    pub fn delivery_settings(&self) -> delivery::Settings {
        let mut s = stack_settings!(self, delivery::Settings);
        s.secrets.encryption_key = TEST_KEY.into();
        s.delivery.retry_base_ms = 50;
        s.delivery.circuit_cooldown_ms = 200;
        s.delivery.due_poll_ms = 50;
        s.delivery.base_backoff_ms = 100;
        s.delivery.max_backoff_ms = 500;
        s.delivery.ack_wait_ms = 10_000;
        s.delivery.lease_ms = 10_000;
        s.delivery.provider_timeout_ms = 2_000;
        // The webhook receiver listens on 127.0.0.1.
        s.outbound.allow_private_networks = true;
        s
    }

    pub async fn delivery(&self) -> Service {
        self.delivery_with(self.delivery_settings()).await
    }

    pub async fn delivery_with(&self, settings: delivery::Settings) -> Service {
        Service::run(settings, delivery::run).await
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub signature_valid: bool,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct ReceiverState {
    secret: String,
    received: Mutex<Vec<Received>>,
    /// Scripted answers (status, body, Retry-After); 200 once empty.
    answers: Mutex<VecDeque<(u16, String, Option<u64>)>>,
}

/// A webhook endpoint that checks `courier-signature` like a real receiver would.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    _task: tokio::task::JoinHandle<()>,
}

pub fn verify_signature(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("signature", v)) => sig = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (t, sig) else {
        return false;
    };
    let Ok(t_ms) = t.parse::<i64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    if (now - t_ms).abs() > 5 * 60 * 1000 {
        return false;
    }
    let Ok(expected) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature_valid = headers
        .get("courier-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| verify_signature(&state.secret, h, &body));
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received {
        body: json,
        signature_valid,
        headers,
    });
    if !signature_valid {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let answer = state.answers.lock().unwrap().pop_front();
    match answer {
        None => (StatusCode::OK, r#"{"id":"rcpt-1"}"#).into_response(),
        Some((code, body, retry_after)) => {
            let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            r
        }
    }
}

impl WebhookReceiver {
    pub async fn start(secret: &str) -> Self {
        let state = Arc::new(ReceiverState {
            secret: secret.to_string(),
            ..Default::default()
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            addr,
            state,
            _task: task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Queues answers for the next requests.
    pub fn answer(&self, status: u16, body: &str, retry_after: Option<u64>) {
        self.state
            .answers
            .lock()
            .unwrap()
            .push_back((status, body.to_string(), retry_after));
    }

    pub fn received_count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

/// One mail the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `user:password` from AUTH PLAIN, when the client authenticated.
    pub auth: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A minimal SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let m = m.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(sock, m).await;
                });
            }
        });
        SmtpSink {
            port,
            mails,
            _task: task,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn smtp_session(
    sock: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP ready\r\n").await?;
    let (mut from, mut to, mut greeted) = (String::new(), Vec::new(), false);
    let mut auth: Option<String> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            greeted = true;
            b"250-sink greets you\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(cmd[11..].trim()) {
                Ok(raw) => {
                    let parts: Vec<String> = raw
                        .split(|b| *b == 0)
                        .map(|p| String::from_utf8_lossy(p).to_string())
                        .collect();
                    auth = Some(parts[1..].join(":"));
                    b"235 2.7.0 Authentication successful\r\n"
                }
                Err(_) => b"501 5.5.2 bad base64\r\n",
            }
        } else if upper.starts_with("MAIL FROM:") {
            if !greeted {
                b"503 5.5.1 EHLO first\r\n"
            } else {
                from = cmd[10..].trim().to_string();
                to.clear();
                b"250 2.1.0 OK\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_empty() {
                b"503 5.5.1 MAIL first\r\n"
            } else {
                to.push(cmd[8..].trim().to_string());
                b"250 2.1.5 OK\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                mails.lock().unwrap().push(Mail {
                    auth: auth.clone(),
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                b"250 2.0.0 queued as sink-1\r\n"
            }
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        w.write_all(reply).await?;
    }
}

/// A `MessageRequest` in the `message` form with inline content.
pub fn inline_request(
    ws: &str,
    id: &str,
    message: Value,
    data: Value,
    profile: Value,
) -> MessageRequest {
    MessageRequest {
        schema_version: 1,
        workspace_id: ws.into(),
        message_id: id.into(),
        run_id: format!("run-{id}"),
        event: "Order Completed".into(),
        recipient: message["to"]["user_id"].as_str().unwrap_or_default().into(),
        profile: profile.to_string().into_bytes().into(),
        data: data.to_string().into_bytes().into(),
        message: message.to_string().into_bytes().into(),
        template_status: "inline".into(),
        ..Default::default()
    }
}

/// Publishes a request on `courier.<ws>.message.requested` (`Nats-Msg-Id` = `dedupe_id`).
pub async fn publish_request(
    js: &async_nats::jetstream::Context,
    req: &MessageRequest,
    dedupe_id: &str,
) {
    use async_nats::jetstream::message::PublishMessage;
    let subject = format!("courier.{}.message.requested", req.workspace_id);
    js.send_publish(
        subject,
        PublishMessage::build()
            .payload(req.encode_to_vec().into())
            .message_id(dedupe_id),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

/// Polls `GET /messages/{id}` until `check` holds; returns the message.
pub async fn wait_message(
    service: &Service,
    key: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = Value::Null;
    loop {
        let r = client
            .get(service.url(&format!("/messages/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            last = r.json().await.unwrap();
            if check(&last) {
                return last;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Lifecycle events stored for one message, as (subject, decoded event).
pub async fn lifecycle_events(
    js: &async_nats::jetstream::Context,
    ws: &str,
    id: &str,
) -> Vec<(String, rc_proto::MessageEvent)> {
    crate::stored_messages(js, "COURIER", &format!("courier.{ws}.message.*"))
        .await
        .into_iter()
        .filter(|m| !m.subject.ends_with(".requested"))
        .filter_map(|m| {
            let e = rc_proto::MessageEvent::decode(m.payload.clone()).ok()?;
            (e.message_id == id).then(|| (m.subject.to_string(), e))
        })
        .collect()
}

/// `PUT /providers/{name}` on a delivery service; the answer must be 200. Returns its body.
pub async fn put_provider(svc: &Service, key: &str, name: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .put(svc.url(&format!("/providers/{name}")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PUT provider {name}");
    r.json().await.unwrap()
}

/// The titles of an inbox answer (`GET /inbox/{user}`), newest first.
pub fn inbox_titles(inbox: &Value) -> Vec<&str> {
    inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .collect()
}

/// Lifecycle events seen on the core subject (every publish, JetStream duplicates included):
/// (message id, status) → (count, first arrival).
pub type SeenEvents = Arc<Mutex<HashMap<(String, String), (usize, Instant)>>>;

/// Starts recording the lifecycle events of workspace `ws` (not `message.requested`).
pub async fn watch_lifecycle(client: &async_nats::Client, ws: &str) -> SeenEvents {
    use futures::StreamExt;
    let seen: SeenEvents = Arc::default();
    let mut sub = client
        .subscribe(format!("courier.{ws}.message.*"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if m.subject.ends_with(".requested") {
                continue;
            }
            let Ok(e) = rc_proto::MessageEvent::decode(m.payload) else {
                continue;
            };
            let now = Instant::now();
            s.lock()
                .unwrap()
                .entry((e.message_id, e.status))
                .and_modify(|(n, _)| *n += 1)
                .or_insert((1, now));
        }
    });
    seen
}
