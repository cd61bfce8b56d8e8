//! One delivery task and one durable JetStream consumer per workspace (`forwarder-<ws>`), so a
//! dead data plane only ever holds its own workspace's messages (each consumer has its own
//! `max_ack_pending` window), plus the manager that starts, restarts and stops them.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use prost::Message as _;
use rc_common::Shutdown;
use rc_common::consumer::ConsumerSpec;
use rc_common::outbound::{ClientSpec, OutboundError, OutboundSettings};
use rc_common::secrets::Cipher;
use rc_common::subjects::{self, COURIER_STREAM, kinds};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::ForwarderSettings;
use crate::mapping;
use crate::store::{Integration, Store};

/// RudderStack's gateway limit on a decompressed body.
pub const GATEWAY_MAX_BYTES: usize = 4_096_000;

pub use rc_common::subjects::durables::forwarder as consumer_name;

/// The explicit subjects a workspace's consumer reads (never `message.requested`).
pub fn filter_subjects(ws: &str, integ: &Integration) -> Vec<String> {
    let mut out: Vec<String> = integ
        .statuses
        .iter()
        .map(|s| subjects::courier_subject(ws, &kinds::message_status(s)))
        .collect();
    if integ.profile_updates {
        out.push(subjects::courier_subject(ws, kinds::PROFILE_UPDATED));
    }
    if integ.tenant_updates {
        out.push(subjects::courier_subject(ws, kinds::TENANT_UPDATED));
    }
    out
}

/// Circuit states (also the `forwarder_circuit_state` gauge value).
pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

pub fn circuit_name(state: u8) -> &'static str {
    match state {
        OPEN => "open",
        HALF_OPEN => "half_open",
        _ => "closed",
    }
}

/// In-process state of one workspace's destination, shown by the status endpoint.
#[derive(Default)]
pub struct Runtime {
    pub circuit: AtomicU8,
}

struct Worker {
    version: u64,
    stop: Shutdown,
    join: tokio::task::JoinHandle<()>,
}

pub struct Ctx {
    pub js: jetstream::Context,
    pub store: Store,
    pub cipher: Option<Cipher>,
    pub settings: ForwarderSettings,
    pub outbound: OutboundSettings,
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    pub runtimes: std::sync::Mutex<HashMap<String, Arc<Runtime>>>,
    workers: Mutex<HashMap<String, Worker>>,
}

impl Ctx {
    pub fn new(
        js: jetstream::Context,
        store: Store,
        cipher: Option<Cipher>,
        settings: ForwarderSettings,
        outbound: OutboundSettings,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, OutboundError> {
        let http = rc_common::outbound::client(
            &outbound,
            &ClientSpec {
                user_agent: concat!("rudder-courier-forwarder/", env!("CARGO_PKG_VERSION")),
                timeout: Duration::from_millis(settings.request_timeout_ms),
                follow_redirects: false,
            },
        )?;
        Ok(Arc::new(Self {
            js,
            store,
            cipher,
            settings,
            outbound,
            http,
            shutdown,
            runtimes: Default::default(),
            workers: Default::default(),
        }))
    }

    pub fn runtime(&self, ws: &str) -> Arc<Runtime> {
        self.runtimes
            .lock()
            .expect("not poisoned")
            .entry(ws.to_string())
            .or_default()
            .clone()
    }

    fn consumer_config(
        &self,
        ws: &str,
        integ: &Integration,
        deliver: DeliverPolicy,
    ) -> pull::Config {
        pull::Config {
            durable_name: Some(consumer_name(ws)),
            description: Some(format!("rudder-courier forwarder for workspace {ws}")),
            filter_subjects: filter_subjects(ws, integ),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: deliver,
            ack_wait: Duration::from_millis(self.settings.ack_wait_ms),
            // Never give up on an event: a data plane may be down for days.
            max_deliver: -1,
            max_ack_pending: self.settings.max_ack_pending,
            ..Default::default()
        }
    }

    /// Creates the workspace's consumer (from now on: `DeliverPolicy::New`) or updates its
    /// filter and limits, keeping its position.
    pub async fn ensure_consumer(
        &self,
        ws: &str,
        integ: &Integration,
    ) -> Result<(), crate::BoxError> {
        let stream = self.js.get_stream(COURIER_STREAM).await?;
        match stream.consumer_info(consumer_name(ws)).await {
            Ok(info) => {
                let cfg = self.consumer_config(ws, integ, info.config.deliver_policy);
                if info.config.filter_subjects != cfg.filter_subjects
                    || info.config.ack_wait != cfg.ack_wait
                    || info.config.max_ack_pending != cfg.max_ack_pending
                    || info.config.max_deliver != cfg.max_deliver
                {
                    stream.update_consumer(cfg).await?;
                }
            }
            Err(_) => {
                stream
                    .create_consumer(self.consumer_config(ws, integ, DeliverPolicy::New))
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn delete_consumer(&self, ws: &str) {
        if let Ok(stream) = self.js.get_stream(COURIER_STREAM).await {
            let _ = stream.delete_consumer(&consumer_name(ws)).await;
        }
    }

    /// (num_pending, num_ack_pending) of the workspace's consumer.
    pub async fn pending(&self, ws: &str) -> Option<(u64, usize)> {
        let stream = self.js.get_stream(COURIER_STREAM).await.ok()?;
        let info = stream.consumer_info(consumer_name(ws)).await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// Brings running workers in line with Redis: a worker per enabled, unpaused integration,
    /// restarted when its configuration changed.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), crate::BoxError> {
        let mut wanted: HashMap<String, Integration> = HashMap::new();
        for ws in self.store.workspaces().await? {
            if let Some(integ) = self.store.get(&ws).await?
                && integ.enabled
                && integ.paused_reason.is_none()
            {
                wanted.insert(ws, integ);
            }
        }
        let mut workers = self.workers.lock().await;
        let stale: Vec<String> = workers
            .iter()
            .filter(|(ws, w)| {
                w.join.is_finished() || wanted.get(*ws).is_none_or(|i| i.version != w.version)
            })
            .map(|(ws, _)| ws.clone())
            .collect();
        for ws in stale {
            if let Some(w) = workers.remove(&ws) {
                w.stop.trigger();
                let _ = tokio::time::timeout(Duration::from_secs(5), w.join).await;
                tracing::info!(workspace = %ws, "Forwarder worker stopped");
            }
        }
        for (ws, integ) in wanted {
            if workers.contains_key(&ws) || self.shutdown.is_triggered() {
                continue;
            }
            let Some(cipher) = &self.cipher else {
                tracing::error!(workspace = %ws, "No secrets.encryption_key: cannot open the write key");
                continue;
            };
            let write_key = match cipher.open(&integ.write_key_sealed, &ws) {
                Ok(k) => k,
                Err(err) => {
                    tracing::error!(workspace = %ws, error = %err, "Write key does not open; integration skipped");
                    continue;
                }
            };
            if let Err(err) = self.ensure_consumer(&ws, &integ).await {
                tracing::warn!(workspace = %ws, error = %err, "Consumer not ready; will retry");
                continue;
            }
            let stop = Shutdown::new();
            let version = integ.version;
            let join = tokio::spawn(run_worker(
                self.clone(),
                ws.clone(),
                integ,
                write_key,
                stop.clone(),
            ));
            tracing::info!(workspace = %ws, version, "Forwarder worker started");
            workers.insert(
                ws,
                Worker {
                    version,
                    stop,
                    join,
                },
            );
        }
        Ok(())
    }

    /// Reconciles now and every `reconcile_interval_ms` until shutdown, then stops every worker.
    pub async fn supervise(self: Arc<Self>) {
        let interval = Duration::from_millis(self.settings.reconcile_interval_ms);
        while !self.shutdown.is_triggered() {
            if let Err(err) = self.reconcile().await {
                tracing::warn!(error = %err, "Reconcile failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shutdown.triggered() => break,
            }
        }
        let mut workers = self.workers.lock().await;
        for (_, w) in workers.iter() {
            w.stop.trigger();
        }
        for (_, w) in workers.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.join).await;
        }
    }
}

fn now_rfc3339() -> String {
    mapping::rfc3339(time::OffsetDateTime::now_utc())
}

/// A message and its RudderStack event, serialized.
struct Item {
    message: Message,
    json: Vec<u8>,
}

async fn run_worker(
    ctx: Arc<Ctx>,
    ws: String,
    integ: Integration,
    write_key: String,
    stop: Shutdown,
) {
    let runtime = ctx.runtime(&ws);
    let mut dest = Destination {
        ctx: ctx.clone(),
        ws: ws.clone(),
        url: format!("{}/v1/batch", integ.data_plane_url.trim_end_matches('/')),
        write_key,
        version: integ.version,
        runtime,
        failures: 0,
        stop: stop.clone(),
    };
    let max_events = ctx.settings.batch_max_events.clamp(1, 10_000);
    let linger = Duration::from_millis(ctx.settings.linger_ms);
    let mut retry = rc_common::backoff::Reconnect::default();
    'supervise: while !stop.is_triggered() {
        let consumer: Result<jetstream::consumer::PullConsumer, crate::BoxError> = async {
            let stream = ctx.js.get_stream(COURIER_STREAM).await?;
            stream.get_consumer(&consumer_name(&ws)).await
        }
        .await;
        let consumer = match consumer {
            Ok(c) => {
                retry.reset();
                c
            }
            Err(err) => {
                tracing::warn!(workspace = %ws, error = %err, "Consumer unavailable; retrying");
                if let Err(err) = ctx.ensure_consumer(&ws, &integ).await {
                    tracing::debug!(workspace = %ws, error = %err, "Consumer re-creation failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry.next_delay()) => {}
                    _ = stop.triggered() => break 'supervise,
                }
                continue;
            }
        };
        loop {
            // Wait (long poll) for the first message, then top up for at most `linger`.
            let mut batch: Vec<Message> = Vec::new();
            let first = tokio::select! {
                r = pull(&consumer, 1, Duration::from_secs(5)) => r,
                _ = stop.triggered() => break 'supervise,
            };
            match first {
                Ok(msgs) => batch.extend(msgs),
                Err(err) => {
                    tracing::warn!(workspace = %ws, error = %err, "Pull failed; re-creating the consumer handle");
                    metrics::counter!("forwarder_consumer_restarts_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(retry.next_delay()) => {}
                        _ = stop.triggered() => break 'supervise,
                    }
                    continue 'supervise;
                }
            }
            if batch.is_empty() {
                continue;
            }
            if max_events > 1 {
                match pull(&consumer, max_events - 1, linger).await {
                    Ok(more) => batch.extend(more),
                    Err(err) => {
                        tracing::debug!(workspace = %ws, error = %err, "Top-up pull failed")
                    }
                }
            }
            if let Err(paused) = dest.deliver(batch).await {
                tracing::warn!(workspace = %ws, reason = %paused, "Destination paused");
                break 'supervise;
            }
        }
    }
}

async fn pull(
    consumer: &jetstream::consumer::PullConsumer,
    max: usize,
    expires: Duration,
) -> Result<Vec<Message>, crate::BoxError> {
    let mut out = Vec::with_capacity(max);
    let mut batch = consumer
        .batch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await?;
    while let Some(next) = batch.next().await {
        match next {
            Ok(m) => out.push(m),
            Err(err) => {
                if out.is_empty() {
                    return Err(err);
                }
                break;
            }
        }
    }
    Ok(out)
}

/// What the data plane said to one request.
enum Answer {
    Ok,
    TooLarge(String),
    Refused(String),
    Rejected(String),
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

struct Destination {
    ctx: Arc<Ctx>,
    ws: String,
    url: String,
    write_key: String,
    version: u64,
    runtime: Arc<Runtime>,
    failures: u32,
    stop: Shutdown,
}

impl Destination {
    fn settings(&self) -> &ForwarderSettings {
        &self.ctx.settings
    }

    fn spec(&self) -> ConsumerSpec {
        ConsumerSpec::new(crate::SERVICE, COURIER_STREAM, "")
    }

    async fn dead_letter(&self, items: Vec<Message>, reason: &str) {
        let spec = self.spec();
        let n = items.len();
        for message in items {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            match rc_common::consumer::dead_letter(&self.ctx.js, &spec, &message, delivered, reason)
                .await
            {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(err) => {
                    tracing::error!(workspace = %self.ws, error = %err, "Dead-letter publish failed; message will be redelivered");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
        metrics::counter!("forwarder_events_dead_lettered_total", "workspace" => self.ws.clone())
            .increment(n as u64);
        self.ctx
            .store
            .record_error(&self.ws, n, reason, &now_rfc3339())
            .await;
        tracing::warn!(workspace = %self.ws, events = n, reason, "Events dead-lettered");
    }

    fn map(&self, message: &Message, now: time::OffsetDateTime) -> Result<Option<Value>, String> {
        let subject = message.subject.as_str();
        let kind = subjects::parse_courier(subject).map_or("", |s| s.kind);
        let payload = &message.payload[..];
        let event = if kind.starts_with("message.") {
            let ev = rc_proto::MessageEvent::decode(payload)
                .map_err(|e| format!("undecodable MessageEvent: {e}"))?;
            mapping::message_event(&ev, now)
        } else if kind == kinds::PROFILE_UPDATED {
            let ev = rc_proto::ProfileUpdated::decode(payload)
                .map_err(|e| format!("undecodable ProfileUpdated: {e}"))?;
            mapping::profile_event(&ev, now)
        } else if kind == kinds::TENANT_UPDATED {
            let ev = rc_proto::TenantUpdated::decode(payload)
                .map_err(|e| format!("undecodable TenantUpdated: {e}"))?;
            mapping::tenant_event(&ev, now)
        } else {
            None
        };
        match event {
            Some(e) if !mapping::has_identity(&e) => {
                Err("event has neither userId nor anonymousId".to_string())
            }
            other => Ok(other),
        }
    }

    /// Delivers one pulled batch; `Err(reason)` when the destination got paused.
    async fn deliver(&mut self, batch: Vec<Message>) -> Result<(), String> {
        let now = time::OffsetDateTime::now_utc();
        let mut items = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for message in batch {
            match self.map(&message, now) {
                Ok(Some(event)) => items.push(Item {
                    json: serde_json::to_vec(&event).expect("serializable"),
                    message,
                }),
                // Not a kind this integration sends: nothing to do.
                Ok(None) => {
                    let _ = message.ack().await;
                }
                Err(reason) => poison.push((message, reason)),
            }
        }
        for (message, reason) in poison {
            self.dead_letter(vec![message], &reason).await;
        }
        // Chunks within the byte bound (and always under the gateway's limit).
        let max_bytes = self
            .settings()
            .batch_max_bytes
            .clamp(1_000, GATEWAY_MAX_BYTES - 64);
        let mut queue: VecDeque<Vec<Item>> = VecDeque::new();
        let mut current: Vec<Item> = Vec::new();
        let mut size = 12;
        for item in items {
            if !current.is_empty() && size + item.json.len() + 1 > max_bytes {
                queue.push_back(std::mem::take(&mut current));
                size = 12;
            }
            size += item.json.len() + 1;
            current.push(item);
        }
        if !current.is_empty() {
            queue.push_back(current);
        }
        while let Some(chunk) = queue.pop_front() {
            match self.send_until_settled(chunk, &queue).await {
                Settled::Done => {}
                Settled::Split(a, b) => {
                    queue.push_front(b);
                    queue.push_front(a);
                }
                Settled::Paused(reason, rest) => {
                    // Kept: nak'ed now so they are there again as soon as the fix lands.
                    for item in rest.into_iter().chain(queue.into_iter().flatten()) {
                        let _ = item.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return Err(reason);
                }
                Settled::Stopped(rest) => {
                    for item in rest.into_iter().chain(queue.into_iter().flatten()) {
                        let _ = item.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn set_circuit(&self, state: u8) {
        let old = self.runtime.circuit.swap(state, Ordering::Relaxed);
        metrics::gauge!("forwarder_circuit_state", "workspace" => self.ws.clone())
            .set(f64::from(state));
        if old != state {
            tracing::info!(workspace = %self.ws, circuit = circuit_name(state), "Circuit state changed");
        }
    }

    /// Sends one chunk, retrying transient failures for as long as it takes.
    async fn send_until_settled(
        &mut self,
        chunk: Vec<Item>,
        queued: &VecDeque<Vec<Item>>,
    ) -> Settled {
        loop {
            if self.stop.is_triggered() {
                return Settled::Stopped(chunk);
            }
            let started = Instant::now();
            let answer = self.send(&chunk).await;
            metrics::histogram!("forwarder_dataplane_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let outcome = match &answer {
                Answer::Ok => "ok",
                Answer::TooLarge(_) => "too_large",
                Answer::Refused(_) => "refused",
                Answer::Rejected(_) => "rejected",
                Answer::Retry { .. } => "retry",
            };
            metrics::counter!("forwarder_dataplane_requests_total", "workspace" => self.ws.clone(), "outcome" => outcome).increment(1);
            match answer {
                Answer::Ok => {
                    let n = chunk.len();
                    for item in chunk {
                        if let Err(err) = item.message.ack().await {
                            tracing::warn!(workspace = %self.ws, error = %err, "Ack failed; the event may be sent again (same messageId)");
                        }
                    }
                    self.failures = 0;
                    self.set_circuit(CLOSED);
                    metrics::counter!("forwarder_events_delivered_total", "workspace" => self.ws.clone()).increment(n as u64);
                    metrics::histogram!("forwarder_batch_events").record(n as f64);
                    self.ctx
                        .store
                        .record_delivered(&self.ws, n, &now_rfc3339())
                        .await;
                    return Settled::Done;
                }
                Answer::TooLarge(body) => {
                    if chunk.len() > 1 {
                        let mut a = chunk;
                        let b = a.split_off(a.len() / 2);
                        tracing::info!(workspace = %self.ws, "Data plane answered 413; splitting the batch");
                        return Settled::Split(a, b);
                    }
                    let reason = format!("data plane answered 413 for a single event: {body}");
                    self.dead_letter(chunk.into_iter().map(|i| i.message).collect(), &reason)
                        .await;
                    return Settled::Done;
                }
                Answer::Rejected(reason) => {
                    self.dead_letter(chunk.into_iter().map(|i| i.message).collect(), &reason)
                        .await;
                    return Settled::Done;
                }
                Answer::Refused(reason) => {
                    self.ctx
                        .store
                        .record_error(&self.ws, 0, &reason, &now_rfc3339())
                        .await;
                    if let Err(err) = self.ctx.store.pause(&self.ws, self.version, &reason).await {
                        tracing::error!(workspace = %self.ws, error = %err, "Could not store the pause; retrying later");
                        self.wait(Duration::from_secs(5), &chunk, queued).await;
                        continue;
                    }
                    metrics::counter!("forwarder_pauses_total", "workspace" => self.ws.clone())
                        .increment(1);
                    return Settled::Paused(reason, chunk);
                }
                Answer::Retry { error, after } => {
                    self.failures += 1;
                    self.ctx
                        .store
                        .record_error(&self.ws, 0, &error, &now_rfc3339())
                        .await;
                    let s = self.settings();
                    let delay = if self.failures >= s.circuit_failures.max(1) {
                        self.set_circuit(OPEN);
                        Duration::from_millis(s.circuit_cooldown_ms)
                    } else {
                        rc_common::backoff::Backoff::new(
                            Duration::from_millis(s.base_backoff_ms),
                            Duration::from_millis(s.max_backoff_ms),
                        )
                        .jittered(self.failures)
                    };
                    let delay = delay.max(after.unwrap_or_default().min(Duration::from_secs(300)));
                    tracing::warn!(workspace = %self.ws, error = %error, failures = self.failures, retry_in_ms = delay.as_millis() as u64, "Data plane delivery failed; retrying");
                    self.wait(delay, &chunk, queued).await;
                    if self.runtime.circuit.load(Ordering::Relaxed) == OPEN {
                        self.set_circuit(HALF_OPEN);
                    }
                }
            }
        }
    }

    /// Sleeps `delay`, keeping every held message alive (`AckKind::Progress`), until done or
    /// stopped.
    async fn wait(&self, delay: Duration, chunk: &[Item], queued: &VecDeque<Vec<Item>>) {
        let tick = Duration::from_millis((self.settings().ack_wait_ms / 3).max(100));
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            for item in chunk.iter().chain(queued.iter().flatten()) {
                let _ = item.message.ack_with(AckKind::Progress).await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let next = (now + tick).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.stop.triggered() => return,
            }
        }
    }

    async fn send(&self, chunk: &[Item]) -> Answer {
        let mut body =
            Vec::with_capacity(chunk.iter().map(|i| i.json.len() + 1).sum::<usize>() + 12);
        body.extend_from_slice(b"{\"batch\":[");
        for (i, item) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&item.json);
        }
        body.extend_from_slice(b"]}");
        metrics::histogram!("forwarder_batch_bytes").record(body.len() as f64);
        post_batch(&self.ctx.http, &self.url, &self.write_key, &body).await
    }
}

enum Settled {
    Done,
    Split(Vec<Item>, Vec<Item>),
    Paused(String, Vec<Item>),
    Stopped(Vec<Item>),
}

pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body).expect("in-memory write");
    enc.finish().expect("in-memory write")
}

use rc_common::backoff::retry_after;

/// `POST <url>` with gzip and Basic auth; the data plane's answer, classified.
async fn post_batch(http: &reqwest::Client, url: &str, write_key: &str, body: &[u8]) -> Answer {
    let (status, text, after) = match raw_post(http, url, write_key, body).await {
        Ok(r) => r,
        // The SSRF guard's refusal lasts until the URL (or the setting) changes: pause.
        Err(blocked @ PostError::Blocked(_)) => return Answer::Refused(blocked.to_string()),
        Err(PostError::Transport(error)) => return Answer::Retry { error, after: None },
    };
    let short: String = text.chars().take(512).collect();
    let what = format!("data plane answered {status}: {}", short.trim());
    match status {
        200..=299 => Answer::Ok,
        413 => Answer::TooLarge(short),
        401 | 404 => Answer::Refused(what),
        408 | 429 | 500..=599 => Answer::Retry { error: what, after },
        _ => Answer::Rejected(what),
    }
}

/// Why a data-plane request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The outbound guard refused the address (see `rc_common::outbound`).
    #[error("data plane address refused: {0}")]
    Blocked(String),
    #[error("{0}")]
    Transport(String),
}

/// One request; `(status, body, Retry-After)` or why there was no answer.
pub async fn raw_post(
    http: &reqwest::Client,
    url: &str,
    write_key: &str,
    body: &[u8],
) -> Result<(u16, String, Option<Duration>), PostError> {
    let response = http
        .post(url)
        .basic_auth(write_key, Some(""))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .body(gzip(body))
        .send()
        .await
        .map_err(|e| {
            if let Some(blocked) = rc_common::outbound::is_blocked(&e) {
                return PostError::Blocked(blocked.to_string());
            }
            let cause = rc_common::outbound::root_cause(&e);
            PostError::Transport(if e.is_timeout() {
                "data plane request timed out".to_string()
            } else if e.is_connect() {
                format!("data plane connection failed: {cause}")
            } else {
                format!("data plane request failed: {cause}")
            })
        })?;
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    Ok((status, text, after))
}
