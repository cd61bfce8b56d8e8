//! Durable JetStream pull consumers, written once for every consumer service.
//!
//! - bounded concurrency (a semaphore permit is taken *before* a message is pulled);
//! - a handler's [`Outcome`] decides: ack, nak with backoff, or dead-letter then ack. Only
//!   `Poison` dead-letters: the server's `max_deliver` is unlimited, so an outage (however long)
//!   never turns acknowledged events into dead letters;
//! - `Unavailable` pauses pulling: one probe message per period (doubling up to
//!   `max_probe_interval`) until a handler answers anything else (`consumer_paused` gauge);
//! - a handler that panics dead-letters its message (`handler panicked: …`); the consumer goes on;
//! - a running handler sends `Progress` every third of `ack_wait`, so a slow handler is not
//!   redelivered while its process lives; a redelivery of a message already being handled in
//!   this process is left to that delivery;
//! - crash-loop quarantine: a message whose deliveries keep dying without an answer (the process
//!   aborted: stack overflow, OOM, SIGKILL, or hung past `ack_wait`) is dead-lettered after
//!   `quarantine_after` such deaths (see [`Quarantine`]);
//! - the message stream is supervised: when it ends or fails (consumer deleted, NATS restarted,
//!   no responders) it is re-created with backoff, so a consumer never stalls silently;
//! - on shutdown it stops pulling and waits (bounded) for in-flight handlers;
//! - per-workspace fairness (opt-in, [`Fairness`]): a workspace's backlog is moved aside to a
//!   spill lane so the other workspaces' messages behind it are not head-of-line blocked.
//!
//! ## Fairness: why a spill lane
//! Event subjects carry the workspace (`events.<ws>.<type>`), but one durable reads them in
//! stream order: 20,000 events of one workspace in front of another's single event make that
//! event wait for all of them. Options weighed:
//! - *round-robin over a pull-ahead window*: only helps once the other event is inside the
//!   window, and the window is bounded by `max_ack_pending` (and memory); a backlog larger than
//!   the window still blocks;
//! - *nak with delay* for an over-share workspace: the nak'ed messages stay counted in
//!   `max_ack_pending` until redelivered, so a backlog larger than it wedges the consumer, and
//!   every redelivery is read (and deferred) again: the flood is re-read many times;
//! - *a spill lane* (chosen): a message of a workspace that already has its share of this
//!   process's handlers running, which has waited in the stream longer than `spill_after` (a
//!   first delivery: handlers read `delivered > 1` as "tried before"), while another
//!   workspace's messages are pending behind it (asked of the server, see [`Behind`]; a lone
//!   backlog is handled in place, spilling it would only add work), is republished once to
//!   `spill.<durable>.<original subject>` (stream `SPILL`, work-queue retention, deduplicated
//!   by `<durable>:<stream sequence>`) and only then acked. A second durable consumes the spill
//!   lane at its own pace with the same handler and the original subject restored. The main
//!   durable thus skips a flood at publish speed (no handler work) and reaches the other
//!   workspaces' messages; the flood is handled by both lanes.
//!
//! Spills run up to `SPILLS_IN_FLIGHT` at once, each awaiting its own publish ack.
//!
//! Limit: skipping still costs one publish and one ack per flooded message, so another
//! workspace's event behind a backlog of N *already in the stream* waits for N spills (debug
//! build, loaded 2-core box: 11.5 s behind 20,000, against ~40 s in stream order); events after
//! that are served beside the flood. The ingress's per-workspace rate limit keeps such a backlog
//! from building through it: a flood through the ingress leaves others' p99 below 1 s
//! (`tests/tests/fairness.rs`). Per-workspace lanes would remove the wait behind an existing
//! backlog.
//!
//! What holds: the ack of the original comes only after JetStream stored the spilled copy, so
//! nothing is lost; a lost ack re-spills into the dedupe window; handlers are idempotent, so a
//! message handled twice is harmless. A lone workspace is never spilled (fresh messages are not,
//! and a backlog only while another workspace waits behind it); a backlog with others behind
//! it gets both lanes. Order within a
//! workspace is not kept (it never was: handlers run concurrently); profile and tenant state is
//! order-independent by contract (per-field last-writer-wins on the event timestamp) and runs
//! are keyed by message id. Two workspaces flooding at once share the spill lane with each
//! other, never with the rest.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, Message};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore};

use crate::Shutdown;
use crate::redis::RedisConn;
use crate::subjects::{self, dlq_headers};

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Outcome {
    /// The effect is durable: ack.
    Done,
    /// This message cannot be handled yet (a workspace's provider or data plane is down):
    /// redeliver it later with backoff. Never dead-lettered for it: an outage is not bad data.
    Retry(String),
    /// A dependency every message needs (Redis, NATS) is unavailable: redeliver later and
    /// pause pulling until it is back. Never dead-lettered for it.
    Unavailable(String),
    /// Can never succeed (undecodable, invalid): dead-letter with this reason, then ack.
    Poison(String),
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Message) -> impl Future<Output = Outcome> + Send;
}

/// Crash-loop quarantine. On a redelivery (never on a first delivery: zero cost there) the
/// consumer INCRs a Redis marker for the message ([`crate::keys::delivery_marker`]) before
/// handling it: each INCR says "the delivery before this one died". An answer undoes that for
/// the next delivery: a nak (the message comes back) sets the marker to -1, so the next INCR
/// counts nothing (a nak'ed first delivery writes the marker too: it has no INCR to undo); an
/// ack deletes it. The counter is thus the number of deliveries that ended without any answer
/// since the last answer. Reaching `after_deaths` dead-letters the message instead of handling
/// it again. Redis unavailable for the marker means `Unavailable` (wait), never a dead letter; a
/// marker that could not be written after an answer is written in the background once Redis is
/// back. Live handlers send `Progress`, so only a dead (or wedged) process lets a delivery
/// expire.
#[derive(Debug, Clone)]
pub struct Quarantine {
    pub redis: RedisConn,
    /// Deaths without an answer before the message is dead-lettered (at least 1).
    pub after_deaths: u32,
    /// How long a marker outlives its last delivery (beyond the longest backoff + ack wait +
    /// a process restart).
    pub marker_ttl: Duration,
}

impl Quarantine {
    pub fn new(redis: RedisConn, after_deaths: u32) -> Self {
        Self {
            redis,
            after_deaths: after_deaths.max(1),
            marker_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Per-workspace fairness of a shared durable (see the module doc).
#[derive(Debug, Clone)]
pub struct Fairness {
    /// Handlers one workspace may have running in this process before its older messages are
    /// spilled.
    pub workspace_share: usize,
    /// Only a message that waited in the stream at least this long is spilled: a consumer that
    /// keeps up gives a lone workspace every handler.
    pub spill_after: Duration,
}

impl Fairness {
    /// A quarter of the handlers per workspace; spill what waited 100 ms.
    pub fn for_concurrency(concurrency: usize) -> Self {
        Self {
            workspace_share: (concurrency / 4).max(1),
            spill_after: Duration::from_millis(100),
        }
    }
}

/// Which stream a consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lane {
    /// The spec's own stream.
    Main,
    /// The spill lane: subjects are `<prefix><original subject>`.
    Spill { prefix: String },
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Service name: metrics label and the `<service>` of `dlq.<service>.<ws>`.
    pub service: &'static str,
    pub stream: &'static str,
    /// Durable consumer name, shared by every replica of the service.
    pub durable: String,
    pub filter_subjects: Vec<String>,
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Must exceed the slowest handler.
    pub ack_wait: Duration,
    /// Unacked messages the server lets this consumer have out (across replicas).
    pub max_ack_pending: i64,
    /// First nak delay; doubles per delivery (with jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// While paused (`Unavailable`), the longest wait between probe messages; the first wait
    /// is `base_backoff`.
    pub max_probe_interval: Duration,
    /// Crash-loop quarantine; `None` leaves it off (tests of other behaviour).
    pub quarantine: Option<Quarantine>,
    /// Bound on waiting for in-flight handlers at shutdown.
    pub drain_timeout: Duration,
    /// Per-workspace fairness (subjects must carry the workspace); `None` reads in stream order.
    pub fairness: Option<Fairness>,
    lane: Lane,
}

impl ConsumerSpec {
    pub fn new(service: &'static str, stream: &'static str, filter: impl Into<String>) -> Self {
        Self {
            service,
            stream,
            durable: service.to_string(),
            filter_subjects: vec![filter.into()],
            concurrency: 64,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4_096,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_probe_interval: Duration::from_secs(10),
            quarantine: None,
            drain_timeout: Duration::from_secs(10),
            fairness: None,
            lane: Lane::Main,
        }
    }

    /// `spill.<durable>.`: the spill lane's subject prefix for this durable.
    fn spill_prefix(&self) -> String {
        format!("{}.{}.", subjects::SPILL_PREFIX, self.durable)
    }

    /// The spill lane's consumer: same handler settings, stream `SPILL`, no fairness of its
    /// own (it holds only the floods). Its concurrency is one workspace's share: a flood being
    /// handled there must leave the CPU to the main lane, which has to skip past it.
    fn spill_lane(&self) -> ConsumerSpec {
        let prefix = self.spill_prefix();
        let share = self
            .fairness
            .as_ref()
            .map_or(self.concurrency, |f| f.workspace_share);
        ConsumerSpec {
            concurrency: share.clamp(1, self.concurrency.max(1)),
            stream: subjects::SPILL_STREAM,
            durable: format!("{}-spill", self.durable),
            filter_subjects: vec![format!("{prefix}>")],
            fairness: None,
            lane: Lane::Spill { prefix },
            ..self.clone()
        }
    }

    /// The durable's configuration on the server (also what rc-bench's floor creates).
    pub fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: self.filter_subjects.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.ack_wait,
            // Unlimited: only Poison and quarantine dead-letter, both decided here.
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    /// Messages asked for per pull request. With fairness a pull may be mostly floods to spill
    /// (no handler wait): pull far ahead so skipping them is not bound by pull round trips.
    pub fn pull_batch(&self) -> usize {
        let batch = match self.fairness {
            Some(_) => SPILLS_IN_FLIGHT,
            None => self.concurrency,
        };
        batch.clamp(1, 1000)
    }

    fn backoff(&self, delivered: i64) -> Duration {
        let attempt = u32::try_from(delivered.clamp(1, 17)).unwrap_or(17);
        crate::backoff::Backoff::new(self.base_backoff, self.max_backoff).jittered(attempt)
    }
}

/// Pulling paused while a shared dependency is unavailable. State changes are logged once
/// (not per message); `consumer_paused{service,durable}` is 1 while paused.
struct Gate {
    service: &'static str,
    durable: String,
    state: Mutex<GateState>,
    resumed: Notify,
}

struct GateState {
    paused_since: Option<Instant>,
    /// Wait before the next probe message.
    interval: Duration,
}

impl Gate {
    fn new(spec: &ConsumerSpec) -> Self {
        let gate = Gate {
            service: spec.service,
            durable: spec.durable.clone(),
            state: Mutex::new(GateState {
                paused_since: None,
                interval: spec.base_backoff,
            }),
            resumed: Notify::new(),
        };
        gate.set_gauge(0.0);
        gate
    }

    fn set_gauge(&self, value: f64) {
        metrics::gauge!("consumer_paused", "service" => self.service, "durable" => self.durable.clone())
            .set(value);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unavailable(&self, spec: &ConsumerSpec, reason: &str) {
        let mut state = self.lock();
        if state.paused_since.is_none() {
            state.paused_since = Some(Instant::now());
            state.interval = spec.base_backoff.min(spec.max_probe_interval);
            self.set_gauge(1.0);
            tracing::warn!(service = self.service, durable = %self.durable, reason, "Consumer paused: a dependency is unavailable; probing with one message at a time");
        }
    }

    fn answered(&self) {
        let mut state = self.lock();
        if let Some(since) = state.paused_since.take() {
            self.set_gauge(0.0);
            tracing::info!(
                service = self.service,
                durable = %self.durable,
                paused_ms = since.elapsed().as_millis() as u64,
                "Consumer resumed"
            );
            drop(state);
            self.resumed.notify_waiters();
        }
    }

    /// While paused: the wait before the next probe, and the one after it (doubled).
    fn next_probe(&self, cap: Duration) -> Option<Duration> {
        let mut state = self.lock();
        state.paused_since?;
        let wait = state.interval;
        state.interval = (wait * 2).min(cap);
        Some(wait)
    }
}

/// Runs the consumer (and its spill lane, with [`Fairness`]) until `shutdown` triggers. Never
/// returns early on NATS trouble.
pub async fn run<H: Handler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    if spec.fairness.is_some() {
        let spill = spec.spill_lane();
        tokio::join!(
            run_lane(js.clone(), spec, handler.clone(), shutdown.clone()),
            run_lane(js, spill, handler, shutdown),
        );
    } else {
        run_lane(js, spec, handler, shutdown).await;
    }
}

async fn run_lane<H: Handler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let spec = Arc::new(spec);
    let shares = Arc::new(Shares::default());
    let behind = Behind::default();
    let spills = Arc::new(Semaphore::new(SPILLS_IN_FLIGHT));
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    let gate = Arc::new(Gate::new(&spec));
    let in_flight = Arc::new(InFlight::default());
    // Handlers are owned by this future: if it is dropped (aborted), they stop with it, as
    // they would with the process.
    let mut tasks = tokio::task::JoinSet::new();
    let mut retry = crate::backoff::Reconnect::default();
    'supervise: while !shutdown.is_triggered() {
        let mut messages = match open(&js, &spec).await {
            Ok(m) => {
                retry.reset();
                m
            }
            Err(err) => {
                let retry_delay = retry.next_delay();
                tracing::warn!(service = spec.service, error = %err, retry_in_ms = retry_delay.as_millis() as u64, "Consumer could not start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay) => {}
                    _ = shutdown.triggered() => break 'supervise,
                }
                continue;
            }
        };
        tracing::info!(service = spec.service, durable = %spec.durable, "Consumer started");
        loop {
            // Paused: let one probe message through per (growing) period, or wake on resume.
            if let Some(wait) = gate.next_probe(spec.max_probe_interval) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = gate.resumed.notified() => {}
                    _ = shutdown.triggered() => break 'supervise,
                }
            }
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.triggered() => break 'supervise,
            };
            let next = tokio::select! {
                n = messages.next() => n,
                _ = shutdown.triggered() => break 'supervise,
            };
            match next {
                Some(Ok(mut message)) => {
                    if let Lane::Spill { prefix } = &spec.lane {
                        restore_subject(&mut message, prefix);
                    }
                    let share = match &spec.fairness {
                        Some(fairness) => match shares.enter(&message, fairness, true) {
                            Admit::Spill if !behind.others_waiting(&js, &spec, &message).await => {
                                // A lone backlog: spilling would only add work.
                                match shares.enter(&message, fairness, false) {
                                    Admit::Handle(share) => share,
                                    Admit::Spill => unreachable!("may_spill is false"),
                                }
                            }
                            Admit::Handle(share) => share,
                            Admit::Spill => {
                                // A spill waits only for its publish ack: many at once, on
                                // slots of their own, so skipping a flood runs at publish speed.
                                drop(permit);
                                let slot = tokio::select! {
                                    s = spills.clone().acquire_owned() => s.expect("semaphore never closed"),
                                    _ = shutdown.triggered() => break 'supervise,
                                };
                                let (js, spec) = (js.clone(), spec.clone());
                                tasks.spawn(async move {
                                    spill(&js, &spec, message).await;
                                    drop(slot);
                                });
                                continue;
                            }
                        },
                        None => None,
                    };
                    let (js, spec, gate, in_flight, handler) = (
                        js.clone(),
                        spec.clone(),
                        gate.clone(),
                        in_flight.clone(),
                        handler.clone(),
                    );
                    tasks.spawn(async move {
                        process(&js, &spec, &gate, &in_flight, handler.as_ref(), message).await;
                        drop((share, permit));
                    });
                }
                Some(Err(err)) if err.kind() == MessagesErrorKind::MissingHeartbeat => {
                    // The stream carries on; the client re-issues pulls.
                    tracing::debug!(service = spec.service, "Missed consumer heartbeat");
                }
                Some(Err(err)) => {
                    tracing::warn!(service = spec.service, error = %err, "Consumer stream failed; re-creating");
                    metrics::counter!("consumer_restarts_total", "service" => spec.service)
                        .increment(1);
                    break;
                }
                None => {
                    tracing::warn!(service = spec.service, "Consumer stream ended; re-creating");
                    metrics::counter!("consumer_restarts_total", "service" => spec.service)
                        .increment(1);
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay()) => {}
            _ = shutdown.triggered() => break 'supervise,
        }
    }
    // Drain: every permit back means every handler (and spill) finished: acked or nak'ed.
    let all = u32::try_from(spec.concurrency).unwrap_or(u32::MAX);
    let drained = async {
        let _handlers = permits.acquire_many(all).await;
        let _spills = spills.acquire_many(SPILLS_IN_FLIGHT as u32).await;
    };
    if tokio::time::timeout(spec.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            service = spec.service,
            "Consumer drain timed out; unfinished messages will be redelivered"
        );
    }
    // Whatever outlived the drain stops here, as it would when the process exits.
    tasks.abort_all();
    tracing::info!(service = spec.service, "Consumer stopped");
}

/// Spills awaiting their publish ack at once, per lane (each holds one unacked message).
const SPILLS_IN_FLIGHT: usize = 1_024;

/// A spill-lane message carries its original subject again, so handlers, dead letters and
/// logs see `events.<ws>.<type>`.
fn restore_subject(message: &mut Message, prefix: &str) {
    if let Some(original) = message.subject.strip_prefix(prefix) {
        message.message.subject = async_nats::Subject::from(original);
    }
}

/// Handlers running per workspace in one lane of this process. Entries exist only while a
/// workspace has handlers running, so the map is bounded by the lane's concurrency.
#[derive(Default)]
struct Shares(Mutex<HashMap<String, usize>>);

enum Admit {
    /// Handle it, holding one of the workspace's handler slots.
    Handle(Option<ShareGuard>),
    /// Over its share and waited long enough: move it to the spill lane.
    Spill,
}

impl Shares {
    /// `may_spill: false` admits it whatever its share (nobody waits behind it).
    fn enter(self: &Arc<Self>, message: &Message, fairness: &Fairness, may_spill: bool) -> Admit {
        let Some(ws) = subjects::workspace_of(&message.subject) else {
            return Admit::Handle(None);
        };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let running = map.get(ws).copied().unwrap_or(0);
        // Over its share, yet fresh: the consumer keeps up, nobody waits behind it. Only first
        // deliveries move: handlers treat `delivered > 1` as "may have been tried before"
        // (publish again what a crash may have cut off), which a spilled copy would hide.
        if may_spill
            && running >= fairness.workspace_share
            && first_and_waited(message, fairness.spill_after)
        {
            return Admit::Spill;
        }
        match map.get_mut(ws) {
            Some(n) => *n += 1,
            None => {
                map.insert(ws.to_owned(), 1);
            }
        }
        Admit::Handle(Some(ShareGuard(self.clone(), ws.to_owned())))
    }
}

struct ShareGuard(Arc<Shares>, String);

impl Drop for ShareGuard {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Whether another workspace's messages wait in this lane's stream behind a backlog, asked of
/// the server (the lane itself only sees what it has pulled): the messages pending after the
/// current one in the lane's filter, against those of the backlog's workspace. Two short-lived
/// consumer creations per workspace per [`BEHIND_TTL`]; the answer is cached that long.
#[derive(Default)]
struct Behind(Mutex<HashMap<String, (Instant, bool)>>);

/// How long an answer of [`Behind`] holds: another workspace's event published just after a
/// "nobody waits" answer waits at most this much longer for the spilling to start.
const BEHIND_TTL: Duration = Duration::from_millis(200);

impl Behind {
    async fn others_waiting(
        &self,
        js: &jetstream::Context,
        spec: &ConsumerSpec,
        message: &Message,
    ) -> bool {
        let (Some(ws), Ok(info)) = (subjects::workspace_of(&message.subject), message.info())
        else {
            return true;
        };
        let now = Instant::now();
        {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, answer)) = map.get(ws)
                && now.duration_since(*at) < BEHIND_TTL
            {
                return *answer;
            }
        }
        let after = info.stream_sequence + 1;
        let own: Vec<String> = spec
            .filter_subjects
            .iter()
            .map(|f| subjects::filter_for_workspace(f, ws))
            .collect();
        let answer = match tokio::try_join!(
            pending_from(js, spec.stream, spec.filter_subjects.clone(), after),
            pending_from(js, spec.stream, own, after),
        ) {
            Ok((all, own)) => all > own,
            // Cannot tell: spill, as before this check existed (safe, only slower).
            Err(err) => {
                tracing::debug!(service = spec.service, error = %err, "Could not count the messages behind a backlog");
                true
            }
        };
        metrics::gauge!("consumer_others_waiting", "service" => spec.service)
            .set(f64::from(u8::from(answer)));
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: only workspaces over their share are asked about, and stale answers go.
        map.retain(|_, (at, _)| now.duration_since(*at) < BEHIND_TTL);
        map.insert(ws.to_owned(), (now, answer));
        answer
    }
}

/// Messages of `filters` in `stream` from sequence `from` on, counted by the server through an
/// ephemeral consumer that reads nothing and lapses after a second.
async fn pending_from(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: u64,
) -> Result<u64, async_nats::Error> {
    let consumer: jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(
            pull::Config {
                filter_subjects: filters,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(1),
                ..Default::default()
            },
            stream,
        )
        .await?;
    Ok(consumer.cached_info().num_pending)
}

/// A first delivery that waited in the stream at least `at_least`.
fn first_and_waited(message: &Message, at_least: Duration) -> bool {
    message.info().is_ok_and(|i| {
        let waited: Duration = (time::OffsetDateTime::now_utc() - i.published)
            .try_into()
            .unwrap_or_default();
        i.delivered == 1 && waited >= at_least
    })
}

/// Moves one message to the spill lane: stored there first (deduplicated by its stream
/// sequence), acked here only then. A failure naks it: it comes back, nothing is lost.
async fn spill(js: &jetstream::Context, spec: &ConsumerSpec, message: Message) {
    let (delivered, sequence) = message
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let subject = format!("{}{}", spec.spill_prefix(), message.subject);
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .message_id(format!("{}:{sequence}", spec.durable));
    let stored = async { js.send_publish(subject, publish).await?.await }.await;
    let result = match stored {
        Ok(_) => {
            metrics::counter!("consumer_spilled_total", "service" => spec.service).increment(1);
            message.ack().await
        }
        Err(err) => {
            tracing::warn!(service = spec.service, error = %err, "Spill publish failed; message will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(spec.backoff(delivered))))
                .await
        }
    };
    if let Err(err) = result {
        tracing::warn!(service = spec.service, error = %err, "Ack failed");
    }
}

async fn open(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<pull::Stream, Box<dyn std::error::Error + Send + Sync>> {
    let stream = js.get_stream(spec.stream).await?;
    // Create-or-update: a changed filter or limit takes effect on deploy.
    let consumer: jetstream::consumer::PullConsumer =
        stream.create_consumer(spec.consumer_config()).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(spec.pull_batch())
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    Ok(messages)
}

/// Counts one more unanswered delivery of a redelivered message: (marker key, count).
async fn count_unanswered(
    q: &Quarantine,
    spec: &ConsumerSpec,
    stream_sequence: u64,
) -> redis::RedisResult<(String, u32)> {
    let key = crate::keys::delivery_marker(spec.stream, &spec.durable, stream_sequence);
    let mut conn = q.redis.clone();
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr(&key, 1)
        .expire(&key, q.marker_ttl.as_secs().max(1) as i64)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok((key, u32::try_from(n).unwrap_or(u32::MAX)))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Stream sequences being handled in this process. A redelivery of one of them (its ack wait
/// ran out while it sat in the pull buffer during a pause) is left to the running delivery,
/// which answers for it: it is neither handled twice at once nor counted as a death.
#[derive(Default)]
struct InFlight(Mutex<HashSet<u64>>);

impl InFlight {
    fn enter(&self, sequence: u64) -> Option<InFlightGuard<'_>> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sequence);
        // Built only when fresh: a guard dropped for a duplicate would lock again (deadlock)
        // and remove the running delivery's entry.
        fresh.then(|| InFlightGuard(self, sequence))
    }
}

struct InFlightGuard<'a>(&'a InFlight, u64);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut set = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.1);
    }
}

/// Runs the handler, telling the server it is still in progress every third of the ack wait:
/// a slow handler is not redelivered (nor counted as a death) while its process lives.
async fn handle_with_progress<H: Handler>(
    spec: &ConsumerSpec,
    handler: &H,
    message: &Message,
) -> Outcome {
    let period = (spec.ack_wait / 3).max(Duration::from_millis(100));
    let handle = AssertUnwindSafe(handler.handle(message)).catch_unwind();
    tokio::pin!(handle);
    let beat = tokio::time::sleep(period);
    tokio::pin!(beat);
    let result = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = &mut beat => {
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(service = spec.service, error = %err, "Progress ack failed");
                }
                beat.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    };
    result.unwrap_or_else(|panic| {
        metrics::counter!("consumer_panics_total", "service" => spec.service).increment(1);
        Outcome::Poison(format!("handler panicked: {}", panic_message(&*panic)))
    })
}

/// Records that a delivery answered: after an ack the marker goes; after a nak (the message
/// comes back) it is set to -1, so the next delivery's INCR counts no death. When Redis is
/// out, keeps trying in the background (bounded), so an outage does not count as deaths.
async fn record_answer(spec: &ConsumerSpec, q: &Quarantine, key: String, nak: bool) {
    let command = move || {
        if nak {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(-1)
                .arg("EX")
                .arg(q.marker_ttl.as_secs().max(1));
            cmd
        } else {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&key);
            cmd
        }
    };
    let cmd = command();
    let mut conn = q.redis.clone();
    if cmd.query_async::<()>(&mut conn).await.is_ok() {
        return;
    }
    let service = spec.service;
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        for _ in 0..60 {
            tokio::time::sleep(delay).await;
            match cmd.query_async::<()>(&mut conn).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::debug!(service, error = %err, "Could not record a delivery's answer yet")
                }
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    });
}

async fn process<H: Handler>(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    gate: &Gate,
    in_flight: &InFlight,
    handler: &H,
    message: Message,
) {
    let started = Instant::now();
    let (delivered, sequence) = message
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let Some(_running) = in_flight.enter(sequence) else {
        metrics::counter!("consumer_duplicates_skipped_total", "service" => spec.service)
            .increment(1);
        tracing::debug!(
            service = spec.service,
            sequence,
            delivered,
            "Redelivery of a message handled here right now; left to that delivery"
        );
        return;
    };
    let mut marker = None;
    let mut answer = None;
    if let Some(q) = spec.quarantine.as_ref().filter(|_| delivered >= 2) {
        match count_unanswered(q, spec, sequence).await {
            Ok((key, n)) if n >= q.after_deaths => {
                metrics::counter!("consumer_quarantined_total", "service" => spec.service)
                    .increment(1);
                answer = Some(Outcome::Poison(format!(
                    "quarantined: delivery died {} times without an answer",
                    q.after_deaths
                )));
                marker = Some(key);
            }
            Ok((key, _)) => marker = Some(key),
            Err(err) => answer = Some(crate::redis::outcome(&err)),
        }
    }
    let outcome = match answer {
        Some(outcome) => outcome,
        None => handle_with_progress(spec, handler, &message).await,
    };
    // A done effect is acked only once Redis replicated it, when so configured.
    let outcome = match (outcome, &spec.quarantine) {
        (Outcome::Done, Some(q)) => match q.redis.replicated().await {
            Ok(()) => Outcome::Done,
            Err(reason) => Outcome::Unavailable(reason),
        },
        (outcome, _) => outcome,
    };
    if let Some(q) = &spec.quarantine {
        // Answered: this delivery did not die. A first delivery has no marker to clear, but a
        // nak'ed one must say so, or its redelivery would count it as a death.
        let nak = matches!(outcome, Outcome::Retry(_) | Outcome::Unavailable(_));
        match marker {
            Some(key) => record_answer(spec, q, key, nak).await,
            None if nak => {
                let key = crate::keys::delivery_marker(spec.stream, &spec.durable, sequence);
                record_answer(spec, q, key, true).await;
            }
            None => {}
        }
    }
    metrics::histogram!("consumer_handle_duration_seconds", "service" => spec.service)
        .record(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Outcome::Done => "done",
        Outcome::Retry(_) => "retry",
        Outcome::Unavailable(_) => "unavailable",
        Outcome::Poison(_) => "poison",
    };
    metrics::counter!("consumer_messages_total", "service" => spec.service, "outcome" => label)
        .increment(1);
    let result = match outcome {
        Outcome::Done => {
            gate.answered();
            message.ack().await
        }
        Outcome::Retry(reason) => {
            gate.answered();
            let delay = spec.backoff(delivered);
            tracing::warn!(service = spec.service, subject = %message.subject, delivered, retry_in_ms = delay.as_millis() as u64, reason = %reason, "Message failed; will be redelivered");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Unavailable(reason) => {
            // Logged once by the gate when pausing, not per message.
            gate.unavailable(spec, &reason);
            let delay = spec.backoff(delivered);
            tracing::debug!(service = spec.service, subject = %message.subject, delivered, retry_in_ms = delay.as_millis() as u64, reason = %reason, "Dependency unavailable; message will be redelivered");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Poison(reason) => {
            gate.answered();
            dead_letter_then_ack(js, spec, &message, delivered, &reason).await
        }
    };
    if let Err(err) = result {
        // The server redelivers after ack_wait; handlers are idempotent.
        tracing::warn!(service = spec.service, error = %err, "Ack failed");
    }
}

async fn dead_letter_then_ack(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    message: &Message,
    delivered: i64,
    reason: &str,
) -> Result<(), async_nats::Error> {
    match dead_letter(js, spec, message, delivered, reason).await {
        Ok(()) => {
            tracing::warn!(service = spec.service, subject = %message.subject, reason, "Message dead-lettered");
            metrics::counter!("consumer_dead_letters_total", "service" => spec.service)
                .increment(1);
            message.ack().await
        }
        Err(err) => {
            // Never ack what is not stored anywhere: let it come back.
            tracing::error!(service = spec.service, error = %err, "Dead-letter publish failed; message will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(spec.backoff(delivered))))
                .await
        }
    }
}

/// Publishes the original payload to `dlq.<service>.<workspace>` with the reason in headers.
pub async fn dead_letter(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    message: &Message,
    delivered: i64,
    reason: &str,
) -> Result<(), async_nats::Error> {
    dead_letter_for(js, spec.service, message, delivered, reason).await
}

/// [`dead_letter`] for a consumer that is not run by [`run`] (the forwarder's per-workspace
/// consumers): `service` names the `dlq.<service>.<workspace>` subject and header.
pub async fn dead_letter_for(
    js: &jetstream::Context,
    service: &'static str,
    message: &Message,
    delivered: i64,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let workspace = subjects::workspace_of(&message.subject).unwrap_or("unknown");
    let mut headers = HeaderMap::new();
    headers.insert(dlq_headers::ORIGINAL_SUBJECT, message.subject.as_str());
    if let Ok(info) = message.info() {
        headers.insert(
            dlq_headers::ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
    }
    headers.insert(dlq_headers::DELIVERY_COUNT, delivered.to_string().as_str());
    // Header values cannot hold line breaks.
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    headers.insert(dlq_headers::REASON, one_line.as_str());
    headers.insert(dlq_headers::SERVICE, service);
    js.publish_with_headers(
        subjects::dlq_subject(service, workspace),
        headers,
        message.payload.clone(),
    )
    .await?
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_leaves_the_running_delivery_registered() {
        let in_flight = InFlight::default();
        let running = in_flight.enter(7).expect("first delivery");
        // Neither deadlocks nor removes the running entry.
        assert!(in_flight.enter(7).is_none());
        assert!(in_flight.enter(7).is_none());
        assert!(in_flight.enter(8).is_some());
        drop(running);
        assert!(in_flight.enter(7).is_some(), "free again once answered");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let spec = ConsumerSpec::new("t", "S", "s.>");
        assert!(spec.backoff(1) <= Duration::from_millis(600));
        assert!(spec.backoff(40) <= Duration::from_secs(72));
        assert_eq!(
            spec.consumer_config().max_deliver,
            -1,
            "never dead-letters by count"
        );
    }
}
