//! A fake RudderStack data plane (`POST /v1/batch`) that enforces the real gateway's rules
//! (reference/rudderstack.md §4): Basic auth with the source write key (401 `invalid write key`),
//! gzip bodies, JSON, a non-empty `batch`, `userId` or `anonymousId` on every event (else 400 for
//! the whole batch), and the decompressed size limit (413; configurable so splits can be tested).
//! It can be told to fail (any status) or hang, and to answer after a delay.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answer every request with this status (401 with `invalid write key`).
    Fail(u16),
    /// Never answer (the client times out).
    Hang,
}

struct Inner {
    write_key: String,
    max_bytes: usize,
    mode: Mode,
    latency: Duration,
    events: Vec<Value>,
    /// Status of every answered request, in order.
    answers: Vec<u16>,
    /// Events per accepted request.
    batch_sizes: Vec<usize>,
    gzip_requests: usize,
}

#[derive(Clone)]
pub struct DataPlane {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

pub const GATEWAY_MAX_BYTES: usize = 4_096_000;

impl DataPlane {
    pub async fn start(write_key: &str) -> DataPlane {
        let inner = Arc::new(Mutex::new(Inner {
            write_key: write_key.to_string(),
            max_bytes: GATEWAY_MAX_BYTES,
            mode: Mode::Normal,
            latency: Duration::ZERO,
            events: Vec::new(),
            answers: Vec::new(),
            batch_sizes: Vec::new(),
            gzip_requests: 0,
        }));
        let app = Router::new()
            .route("/v1/batch", post(batch))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        DataPlane {
            addr,
            inner,
            _task: Arc::new(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }
    pub fn set_write_key(&self, key: &str) {
        self.inner.lock().unwrap().write_key = key.to_string();
    }
    pub fn set_max_bytes(&self, max: usize) {
        self.inner.lock().unwrap().max_bytes = max;
    }
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }
    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().unwrap().events.clone()
    }
    pub fn answers(&self) -> Vec<u16> {
        self.inner.lock().unwrap().answers.clone()
    }
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.inner.lock().unwrap().batch_sizes.clone()
    }
    pub fn gzip_requests(&self) -> usize {
        self.inner.lock().unwrap().gzip_requests
    }
    /// How many received events match `f` (counts without cloning them).
    pub fn count_where(&self, f: impl Fn(&Value) -> bool) -> usize {
        self.inner
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| f(e))
            .count()
    }
    /// Distinct `messageId`s received.
    pub fn message_ids(&self) -> std::collections::BTreeSet<String> {
        self.events()
            .iter()
            .filter_map(|e| e["messageId"].as_str().map(str::to_string))
            .collect()
    }
}

fn answer(inner: &Arc<Mutex<Inner>>, status: u16, body: &str) -> Response {
    inner.lock().unwrap().answers.push(status);
    (
        StatusCode::from_u16(status).expect("status"),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _password) = text.split_once(':')?;
    Some(user.to_string())
}

async fn batch(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (mode, latency, key, max_bytes) = {
        let i = inner.lock().unwrap();
        (i.mode, i.latency, i.write_key.clone(), i.max_bytes)
    };
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Mode::Fail(401) => return answer(&inner, 401, "invalid write key"),
        Mode::Fail(429) => return answer(&inner, 429, "max requests limit reached"),
        Mode::Fail(code) => return answer(&inner, code, "service unavailable"),
        Mode::Normal => {}
    }
    match basic_user(&headers) {
        Some(user) if !user.is_empty() && user == key => {}
        Some(_) => return answer(&inner, 401, "invalid write key"),
        None => return answer(&inner, 401, "failed to read writekey from header"),
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let raw = if gzip {
        inner.lock().unwrap().gzip_requests += 1;
        let mut out = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&body[..]).take(max_bytes as u64 + 1);
        if decoder.read_to_end(&mut out).is_err() {
            return answer(&inner, 400, "failed to decompress request");
        }
        out
    } else {
        body.to_vec()
    };
    if raw.len() > max_bytes {
        return answer(&inner, 413, "request size exceeds max limit");
    }
    let Ok(value) = serde_json::from_slice::<Value>(&raw) else {
        return answer(&inner, 400, "invalid json");
    };
    let Some(events) = value.get("batch").and_then(Value::as_array).cloned() else {
        return answer(&inner, 400, "invalid json");
    };
    if events.is_empty() {
        return answer(&inner, 400, "empty batch payload");
    }
    let has_id = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if events
        .iter()
        .any(|e| !has_id(e, "userId") && !has_id(e, "anonymousId"))
    {
        return answer(&inner, 400, "request neither has anonymousId nor userId");
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    {
        let mut i = inner.lock().unwrap();
        i.batch_sizes.push(events.len());
        i.events.extend(events);
    }
    answer(&inner, 200, "ok")
}
