//! The ingress: `POST /inbound/rudderstack` → validated, normalized envelope → JetStream
//! `events.<workspace>.<type>`, answered 202 only once JetStream has stored it.

pub mod courier;
pub mod error;
pub mod event;
pub mod ratelimit;
pub mod scan;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use axum::body::{Body, Bytes};
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prost::Message;
use rc_common::auth::{Authenticator, Workspace};
use rc_common::service::{Runtime, ServiceSettings};
use rc_common::{Shutdown, subjects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};

pub use error::IngressError;
use event::{Normalized, Normalizer, Parsed, Rejection};

pub const SERVICE: &str = "ingress";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IngressSettings {
    /// Publishes awaiting their JetStream ack at once, process-wide. Requests take these slots
    /// one publish at a time, first come first served, so a big batch never holds them all.
    pub max_inflight_publishes: usize,
    /// Publishes one request keeps awaiting their ack at once (its pipelining window).
    pub request_publish_window: usize,
    /// Events in one `{"batch": [...]}`; more is refused with 413.
    pub max_batch_events: usize,
    /// A request's publishes must all be acknowledged within this, else it is answered 503 +
    /// Retry-After (a retry completes it: `Nats-Msg-Id` dedupe). Kept below
    /// `http.request_timeout_ms` so the answer is ours, not the timeout's.
    pub publish_deadline_ms: u64,
    /// One event's cap (64 KiB: twice RudderStack's 32 KB guidance, see the README).
    pub max_event_bytes: usize,
    /// A request body's cap (RudderStack's gateway limit).
    pub max_body_bytes: usize,
    /// Request bodies buffered at once, in bytes (a body of unknown length counts as
    /// `max_body_bytes`); past this, requests get a fast 429 instead of growing memory.
    pub max_buffered_body_bytes: usize,
    /// Events per second one workspace may send to this replica (token bucket; N replicas
    /// allow N× this); over it: 429 + Retry-After. 0 disables.
    pub workspace_events_per_sec: u32,
    /// The bucket's size: events a workspace may send at once after being idle (raised to
    /// `max_batch_events` when lower, so a legal batch always fits).
    pub workspace_events_burst: u32,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            max_inflight_publishes: 4_096,
            request_publish_window: 256,
            max_batch_events: 5_000,
            publish_deadline_ms: 8_000,
            max_event_bytes: 64 * 1024,
            max_body_bytes: 4_096_000,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            workspace_events_per_sec: 500,
            workspace_events_burst: 5_000,
        }
    }
}

rc_common::settings! {
    port: 8080;
    ingress: IngressSettings,
}

/// Shared by every request: one `Arc` clone per request instead of one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    auth: Arc<Authenticator>,
    js: jetstream::Context,
    nats: async_nats::Client,
    /// Process-wide publish slots (fair: FIFO).
    inflight: Semaphore,
    window: usize,
    publish_deadline: Duration,
    /// Budget for buffered bodies, in KiB permits.
    body_budget: Semaphore,
    normalizer: Normalizer,
    max_body_bytes: usize,
    rate_limit: Option<ratelimit::RateLimit>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.0.auth.clone()
    }
}

pub use rc_common::service::BoxError;

/// Bodies up to this size are parsed on the request's task; larger ones on the blocking pool.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Runs the ingress until `shutdown` triggers. Binds `settings.http.listen` unless a
/// listener is given (tests pass one bound to port 0).
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let rt = Runtime::start(SERVICE, settings.base(), listener, shutdown).await?;
    let limits = &settings.ingress;
    // The client's own ack-permit pool matches our slots: were it smaller, a publish would wait
    // inside the client where no deadline or fairness of ours applies.
    let slots = limits.max_inflight_publishes.max(1);
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(settings.nats.publish_timeout_ms))
        .max_ack_inflight(slots)
        .build(rt.nats.clone());
    let state = AppState(Arc::new(AppInner {
        auth: rt.authenticator(&settings.auth),
        js,
        nats: rt.nats.clone(),
        inflight: Semaphore::new(limits.max_inflight_publishes),
        window: limits.request_publish_window.clamp(1, slots),
        publish_deadline: Duration::from_millis(limits.publish_deadline_ms),
        body_budget: Semaphore::new((settings.ingress.max_buffered_body_bytes / 1024).max(1)),
        normalizer: Normalizer {
            max_event_bytes: settings.ingress.max_event_bytes,
            max_batch_events: settings.ingress.max_batch_events,
        },
        max_body_bytes: settings.ingress.max_body_bytes,
        rate_limit: ratelimit::RateLimit::new(
            limits.workspace_events_per_sec,
            limits.workspace_events_burst,
            limits.max_batch_events,
        ),
    }));
    let app = app(state);
    // Every accepted request is answered before `serve` returns, and NATS is flushed after.
    rt.serve(app).await
}

/// The service's API; [`Runtime::serve`] adds the ops endpoints, metrics and timeout.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/inbound/rudderstack", post(inbound))
        .route("/inbound/courier", post(courier::inbound_courier))
        .with_state(state)
}

async fn inbound(
    State(state): State<AppState>,
    Workspace(workspace): Workspace,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngressError> {
    let (body, _body_permit) = buffered_body(&state, &headers, body).await?;
    let received_at = time::OffsetDateTime::now_utc();
    let parsed = if body.len() <= INLINE_PARSE_BYTES {
        state.normalizer.parse_body(&workspace, &body, received_at)
    } else {
        // A big batch is milliseconds of CPU: off the request workers, so the single events of
        // other workspaces keep being answered meanwhile.
        let (parser, workspace) = (state.clone(), workspace.clone());
        tokio::task::spawn_blocking(move || {
            parser.normalizer.parse_body(&workspace, &body, received_at)
        })
        .await
        .map_err(|e| IngressError::Unavailable(format!("parsing the body failed: {e}")))?
    };
    match parsed {
        Ok(Parsed::Single(event)) => {
            publish_all(&state, std::slice::from_ref(&*event)).await?;
            Ok(accepted(
                serde_json::json!({"messageId": event.envelope.message_id}),
            ))
        }
        Ok(Parsed::Batch(results)) => {
            let mut errors = Vec::new();
            let mut events = Vec::with_capacity(results.len());
            let mut too_large = None;
            for (index, result) in results.into_iter().enumerate() {
                match result {
                    Ok(event) => events.push(event),
                    Err(rejection) => {
                        if matches!(rejection, Rejection::TooLarge(_)) && too_large.is_none() {
                            too_large =
                                Some(format!("batch event {index}: {}", rejection.message()));
                        }
                        errors.push(error::EventError {
                            index,
                            message: rejection.message().to_owned(),
                        });
                    }
                }
            }
            if let Some(message) = too_large {
                return Err(IngressError::TooLarge(message));
            }
            if !errors.is_empty() {
                // All or nothing, like RudderStack's own gateway: the caller fixes and resends.
                return Err(IngressError::InvalidBatch(errors));
            }
            publish_all(&state, &events).await?;
            let ids: Vec<&str> = events
                .iter()
                .map(|e| e.envelope.message_id.as_str())
                .collect();
            Ok(accepted(serde_json::json!({"messageIds": ids})))
        }
        Err(rejection) => Err(rejection.into()),
    }
}

/// Reads the body within the buffered-bytes budget; the permit is held while the body lives.
async fn buffered_body<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, tokio::sync::SemaphorePermit<'s>), IngressError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let reserve = declared
        .unwrap_or(state.max_body_bytes)
        .min(state.max_body_bytes);
    let permit = state
        .body_budget
        .try_acquire_many(u32::try_from(reserve / 1024 + 1).unwrap_or(u32::MAX))
        .map_err(|_| IngressError::Overloaded("ingress is at capacity; retry shortly".into()))?;
    let body = read_body(declared, body, state.max_body_bytes).await?;
    Ok((body, permit))
}

fn accepted(body: serde_json::Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// Reads the body up to `limit` bytes. A larger body is read on (and discarded) up to a bound
/// before the 413, so the client gets the answer instead of a broken pipe, which RudderStack
/// would count as a retryable connection error.
async fn read_body(
    declared: Option<usize>,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngressError> {
    use http_body_util::BodyExt;
    let too_large = || IngressError::TooLarge(format!("request body exceeds {limit} bytes"));
    let drain_bound = limit.saturating_mul(4);
    if declared.is_some_and(|len| len > drain_bound) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if rc_common::http::body_read_timed_out(&e) {
                IngressError::BodyTimeout
            } else {
                // A body labelled gzip that is not, a connection cut mid-body.
                IngressError::Invalid(format!("could not read the request body: {e}"))
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > drain_bound {
            break;
        }
        if seen <= limit {
            buf.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// Publishes every event and waits for all JetStream acks, within the publish deadline. Dedupe
/// happens in JetStream (`Nats-Msg-Id`), so a retried request stores nothing new and still gets
/// its 202: a batch answered 503 halfway is completed by its retry. Returns how many were
/// already stored (duplicates). The workspace's rate is charged first, for all events or none.
async fn publish_all(state: &AppState, events: &[Normalized]) -> Result<u64, IngressError> {
    if !rc_common::nats::is_connected(&state.nats) {
        return Err(IngressError::Unavailable("NATS is not connected".into()));
    }
    if let (Some(limit), Some(first)) = (&state.rate_limit, events.first())
        && let Err(wait) = limit.take(&first.envelope.workspace_id, events.len())
    {
        metrics::counter!("ingress_rate_limited_total").increment(1);
        return Err(IngressError::RateLimited(
            format!(
                "this workspace is over its rate of events; nothing was stored, retry in {wait} s"
            ),
            wait,
        ));
    }
    let start = Instant::now();
    let duplicates = tokio::time::timeout(state.publish_deadline, publish_windowed(state, events))
        .await
        .map_err(|_| {
            IngressError::Unavailable(format!(
                "not every event was acknowledged within {} ms",
                state.publish_deadline.as_millis()
            ))
        })??;
    if duplicates > 0 {
        metrics::counter!("ingress_events_duplicate_total").increment(duplicates);
    }
    metrics::histogram!("ingress_publish_duration_seconds").record(start.elapsed().as_secs_f64());
    Ok(duplicates)
}

/// At most `state.window` acks pending for this request, each holding one process-wide slot:
/// the client's pending-ack pool is never exhausted, and a request queued behind a batch waits
/// for one slot, not for the batch. Answers how many were duplicates (stored before).
async fn publish_windowed(state: &AppState, events: &[Normalized]) -> Result<u64, IngressError> {
    let mut pending: VecDeque<(PublishAckFuture, SemaphorePermit<'_>, &Normalized)> =
        VecDeque::with_capacity(state.window.min(events.len()));
    let mut duplicates = 0;
    for event in events {
        if pending.len() >= state.window
            && let Some(oldest) = pending.pop_front()
        {
            duplicates += settle(oldest).await?;
        }
        let slot = state
            .inflight
            .acquire()
            .await
            .map_err(|_| IngressError::Unavailable("shutting down".into()))?;
        let env = &event.envelope;
        let subject =
            subjects::event_subject(&env.workspace_id, event.event_type().subject_token());
        let msg_id = subjects::event_msg_id(&env.workspace_id, &env.message_id);
        let publish = PublishMessage::build()
            .payload(env.encode_to_vec().into())
            .message_id(msg_id);
        let ack = state
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| IngressError::Unavailable(format!("publish failed: {e}")))?;
        pending.push_back((ack, slot, event));
    }
    while let Some(oldest) = pending.pop_front() {
        duplicates += settle(oldest).await?;
    }
    Ok(duplicates)
}

/// Awaits one ack (its slot is freed on return); 1 when it was a duplicate.
async fn settle(
    (ack, _slot, event): (PublishAckFuture, SemaphorePermit<'_>, &Normalized),
) -> Result<u64, IngressError> {
    let ack = ack
        .await
        .map_err(|e| IngressError::Unavailable(format!("no JetStream ack: {e}")))?;
    metrics::counter!("ingress_events_accepted_total", "type" => event.event_type().subject_token())
        .increment(1);
    Ok(u64::from(ack.duplicate))
}
