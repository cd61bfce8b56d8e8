//! Dead letters (stream `DLQ`, subjects `dlq.<service>.<workspace>`): list, show (the payload
//! decoded to JSON), replay, delete and purge. One implementation behind every event service's
//! HTTP API (scoped to the caller's workspace: [`router`]) and `rc-admin dlq` (any workspace).
//!
//! Bounds: a page holds at most [`MAX_PAGE`] dead letters and costs one NATS request each (a
//! keyset cursor on the stream sequence: stable under concurrent inserts and deletes); a list
//! shows a summary of each payload (scalar fields, each cut at [`SUMMARY_TEXT`] chars), only
//! `show` decodes one payload in full (NATS caps a payload at its `max_payload`, 1 MiB by
//! default; embedded JSON documents parse with serde_json's depth limit).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, message::StreamMessage};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, ReflectMessage};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::{Authenticator, Workspace};
use crate::error::ApiError;
use crate::subjects::{self, DLQ_STREAM, dlq_headers};

/// Most dead letters one page returns.
pub const MAX_PAGE: usize = 100;
/// A page's size when the request names none.
pub const DEFAULT_PAGE: usize = 50;
/// Longest text a list summary shows of one field.
pub const SUMMARY_TEXT: usize = 200;

/// The services that dead-letter (the `<service>` of `dlq.<service>.<workspace>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqService {
    Profiles,
    Accounts,
    Automations,
    Delivery,
    Forwarder,
}

impl DlqService {
    pub const ALL: [DlqService; 5] = [
        DlqService::Profiles,
        DlqService::Accounts,
        DlqService::Automations,
        DlqService::Delivery,
        DlqService::Forwarder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqService::Profiles => "profiles",
            DlqService::Accounts => "accounts",
            DlqService::Automations => "automations",
            DlqService::Delivery => "delivery",
            DlqService::Forwarder => "forwarder",
        }
    }

    /// `/dead-letters/<service>`: where [`router`] also serves this service's dead letters, the
    /// path a front door routes to the service (`/dead-letters` alone is ambiguous there).
    pub fn routed_path(self) -> String {
        format!("/dead-letters/{self}")
    }
}

impl fmt::Display for DlqService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DlqService {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DlqService::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown service {s:?}: profiles, accounts, automations, delivery or forwarder"
                )
            })
    }
}

/// NATS failing is an outage (503 + Retry-After), never bad data.
fn nats(err: impl fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("nats: {err}"))
}

/// Which dead letters an operation may see: one service's, of one workspace or of all.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub service: DlqService,
    pub workspace: Option<&'a str>,
}

impl Scope<'_> {
    /// `dlq.<service>.<workspace>` or `dlq.<service>.*`.
    fn filter(&self) -> String {
        subjects::dlq_subject(self.service.as_str(), self.workspace.unwrap_or("*"))
    }

    fn owns(&self, dlq_subject: &str) -> bool {
        let mut parts = dlq_subject.splitn(3, '.');
        parts.next() == Some("dlq")
            && parts.next() == Some(self.service.as_str())
            && parts
                .next()
                .is_some_and(|ws| self.workspace.is_none_or(|w| w == ws))
    }
}

/// What a dead letter's original subject carries (see `proto/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// `events.<ws>.<type>`: an inbound `Envelope`.
    Event,
    ProfileUpdated,
    ProfileUpdateRequest,
    TenantUpdated,
    MessageRequest,
    /// `courier.<ws>.message.<status>`.
    MessageEvent,
    /// `courier.<ws>.run.<state>`.
    RunEvent,
    Unknown,
}

impl PayloadKind {
    pub fn of_subject(subject: &str) -> Self {
        let mut parts = subject.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("events"), Some(_), Some(_)) => PayloadKind::Event,
            (Some("courier"), Some(_), Some(kind)) => match kind {
                subjects::kinds::PROFILE_UPDATED => PayloadKind::ProfileUpdated,
                subjects::kinds::PROFILE_UPDATE => PayloadKind::ProfileUpdateRequest,
                subjects::kinds::TENANT_UPDATED => PayloadKind::TenantUpdated,
                subjects::kinds::MESSAGE_REQUESTED => PayloadKind::MessageRequest,
                k if k.starts_with("message.") => PayloadKind::MessageEvent,
                k if k.starts_with("run.") => PayloadKind::RunEvent,
                _ => PayloadKind::Unknown,
            },
            _ => PayloadKind::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Event => "Envelope",
            PayloadKind::ProfileUpdated => "ProfileUpdated",
            PayloadKind::ProfileUpdateRequest => "ProfileUpdateRequest",
            PayloadKind::TenantUpdated => "TenantUpdated",
            PayloadKind::MessageRequest => "MessageRequest",
            PayloadKind::MessageEvent => "MessageEvent",
            PayloadKind::RunEvent => "RunEvent",
            PayloadKind::Unknown => "unknown",
        }
    }
}

/// One dead letter as stored.
#[derive(Debug)]
pub struct DeadLetter {
    pub seq: u64,
    /// `dlq.<service>.<workspace>`.
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
    pub dead_lettered_at: time::OffsetDateTime,
}

impl DeadLetter {
    fn from_stream(m: StreamMessage) -> Self {
        DeadLetter {
            seq: m.sequence,
            subject: m.subject.to_string(),
            headers: m.headers,
            payload: m.payload,
            dead_lettered_at: m.time,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    pub fn workspace(&self) -> &str {
        subjects::workspace_of(&self.subject).unwrap_or("")
    }

    pub fn original_subject(&self) -> &str {
        self.header(dlq_headers::ORIGINAL_SUBJECT).unwrap_or("")
    }

    pub fn reason(&self) -> &str {
        self.header(dlq_headers::REASON).unwrap_or("")
    }

    pub fn dead_lettered_at_text(&self) -> String {
        rfc3339(self.dead_lettered_at)
    }

    pub fn delivery_count(&self) -> Option<u64> {
        self.header(dlq_headers::DELIVERY_COUNT)?.parse().ok()
    }

    fn base_json(&self) -> Map<String, Value> {
        let original = self.original_subject();
        let service = self.subject.split('.').nth(1).unwrap_or("");
        let mut m = Map::new();
        m.insert("seq".into(), self.seq.into());
        m.insert("service".into(), service.into());
        m.insert("workspace".into(), self.workspace().into());
        m.insert("originalSubject".into(), original.into());
        m.insert(
            "originalSequence".into(),
            self.header(dlq_headers::ORIGINAL_SEQUENCE)
                .and_then(|s| s.parse::<u64>().ok())
                .into(),
        );
        m.insert("deliveryCount".into(), self.delivery_count().into());
        m.insert("reason".into(), self.reason().into());
        m.insert(
            "deadLetteredAt".into(),
            rfc3339(self.dead_lettered_at).into(),
        );
        m.insert(
            "payloadType".into(),
            PayloadKind::of_subject(original).as_str().into(),
        );
        m.insert("payloadBytes".into(), self.payload.len().into());
        m
    }

    /// For lists: the headers and a bounded summary of the payload (`event`).
    pub fn summary_json(&self) -> Value {
        let mut m = self.base_json();
        m.insert(
            "event".into(),
            summarize(decode(self.original_subject(), &self.payload)),
        );
        Value::Object(m)
    }

    /// For show: the headers and the whole payload decoded (`payload`; base64 under
    /// `payloadBase64` when it does not decode as its subject's type).
    pub fn detail_json(&self) -> Value {
        let mut m = self.base_json();
        match decode(self.original_subject(), &self.payload) {
            Some(decoded) => {
                m.insert("event".into(), summarize(Some(decoded.clone())));
                m.insert("payload".into(), decoded);
            }
            None => {
                m.insert("event".into(), summarize(None));
                m.insert("payload".into(), Value::Null);
                m.insert("payloadBase64".into(), BASE64.encode(&self.payload).into());
            }
        }
        Value::Object(m)
    }
}

/// A page of dead letters, oldest first; `next` is the cursor of the following page.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<DeadLetter>,
    pub next: Option<u64>,
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    pub subject: String,
    /// The target stream had already stored this replay (a double replay is one event).
    pub duplicate: bool,
}

/// The `DLQ` stream through one JetStream context.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context) -> Self {
        DeadLetters { js }
    }

    async fn stream(&self) -> Result<Stream<()>, ApiError> {
        self.js.get_stream_no_info(DLQ_STREAM).await.map_err(nats)
    }

    /// Dead letters after sequence `cursor` (0: from the start), at most `limit` (≤ [`MAX_PAGE`]).
    pub async fn list(
        &self,
        scope: Scope<'_>,
        cursor: u64,
        limit: usize,
    ) -> Result<Page, ApiError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let stream = self.stream().await?;
        let filter = scope.filter();
        let mut items = Vec::with_capacity(limit);
        let mut from = cursor.saturating_add(1);
        // One more than the page: whether a next page exists.
        let mut more = false;
        while items.len() <= limit {
            match stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(filter.clone())
                .send()
                .await
            {
                Ok(_) if items.len() == limit => {
                    more = true;
                    break;
                }
                Ok(m) => {
                    from = m.sequence.saturating_add(1);
                    items.push(DeadLetter::from_stream(m));
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(nats(e)),
            }
        }
        let next = if more {
            items.last().map(|d| d.seq)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// How many dead letters the scope holds.
    pub async fn count(&self, scope: Scope<'_>) -> Result<u64, ApiError> {
        let stream = self.stream().await?;
        let mut subjects = stream
            .info_with_subjects(scope.filter())
            .await
            .map_err(nats)?;
        let mut total = 0u64;
        while let Some(entry) = subjects.next().await {
            let (_, n) = entry.map_err(nats)?;
            total += n as u64;
        }
        Ok(total)
    }

    /// One dead letter; another scope's (another workspace's) is `NotFound`.
    pub async fn get(&self, scope: Scope<'_>, seq: u64) -> Result<DeadLetter, ApiError> {
        let stream = self.stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(m) if scope.owns(m.subject.as_str()) => Ok(DeadLetter::from_stream(m)),
            Ok(_) => Err(ApiError::NotFound(format!("no dead letter {seq} here"))),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                Err(ApiError::NotFound(format!("no dead letter {seq} here")))
            }
            Err(e) => Err(nats(e)),
        }
    }

    /// Publishes the original message again to its original subject, then deletes the dead
    /// letter. The publish carries `Nats-Msg-Id: <ws>:dlq-replay:<service>:<seq>`, so a replay
    /// repeated inside the duplicate window (a lost answer, two operators) is stored once.
    /// Every consumer of that subject sees it again: consumers are idempotent by message id.
    pub async fn replay(&self, scope: Scope<'_>, seq: u64) -> Result<Replayed, ApiError> {
        let dead = self.get(scope, seq).await?;
        let original = dead.original_subject();
        let ws = dead.workspace();
        let replayable = (original.starts_with("events.") || original.starts_with("courier."))
            && subjects::workspace_of(original) == Some(ws);
        if !replayable {
            return Err(ApiError::Invalid(format!(
                "dead letter {seq} has no replayable original subject ({original:?})"
            )));
        }
        let mut headers = HeaderMap::new();
        let id = format!("{ws}:dlq-replay:{}:{seq}", scope.service);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = self
            .js
            .publish_with_headers(original.to_string(), headers, dead.payload.clone())
            .await
            .map_err(nats)?
            .await
            .map_err(nats)?;
        self.delete_stored(seq).await?;
        Ok(Replayed {
            subject: original.to_string(),
            duplicate: ack.duplicate,
        })
    }

    /// Deletes one dead letter of the scope.
    pub async fn delete(&self, scope: Scope<'_>, seq: u64) -> Result<(), ApiError> {
        self.get(scope, seq).await?;
        self.delete_stored(seq).await
    }

    /// Deleted already (a concurrent replay or delete) counts as done.
    async fn delete_stored(&self, seq: u64) -> Result<(), ApiError> {
        let stream = self.stream().await?;
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), DeleteMessageErrorKind::JetStream(ref j)
                    if [ErrorCode::NO_MESSAGE_FOUND, ErrorCode::SEQUENCE_NOT_FOUND]
                        .contains(&j.error_code())) =>
            {
                Ok(())
            }
            // A delete racing another one fails with code 10057 ("message delete failed") and
            // a text, not NO_MESSAGE_FOUND: it is done if the message is gone.
            Err(e) => match stream.get_raw_message(seq).await {
                Err(g) if g.kind() == RawMessageErrorKind::NoMessageFound => Ok(()),
                _ => Err(nats(e)),
            },
        }
    }

    /// Deletes every dead letter of the scope; answers how many.
    pub async fn purge(&self, scope: Scope<'_>) -> Result<u64, ApiError> {
        let stream = self.stream().await?;
        let purged = stream.purge().filter(scope.filter()).await.map_err(nats)?;
        Ok(purged.purged)
    }
}

/// A service's extra view of one dead letter's payload (the forwarder adds the RudderStack
/// event it would send): `(field, value)` added to `show`.
pub type Detail = fn(original_subject: &str, payload: &[u8]) -> Option<(&'static str, Value)>;

#[derive(Clone)]
struct RouterState {
    service: DlqService,
    store: DeadLetters,
    auth: Arc<Authenticator>,
    detail: Option<Detail>,
}

impl FromRef<RouterState> for Arc<Authenticator> {
    fn from_ref(state: &RouterState) -> Self {
        state.auth.clone()
    }
}

/// `/dead-letters` routes of `service`, scoped to the caller's workspace, also under
/// `/dead-letters/<service>` (a path a front door can route to the one service that has it);
/// merges into any service's router.
pub fn router<S: Clone + Send + Sync + 'static>(
    service: DlqService,
    js: jetstream::Context,
    auth: Arc<Authenticator>,
) -> Router<S> {
    router_with(service, js, auth, None)
}

/// [`router`] with a service's [`Detail`] for `show`.
pub fn router_with<S: Clone + Send + Sync + 'static>(
    service: DlqService,
    js: jetstream::Context,
    auth: Arc<Authenticator>,
    detail: Option<Detail>,
) -> Router<S> {
    routes_at("/dead-letters", service, js.clone(), auth.clone(), detail).merge(routes_at(
        &service.routed_path(),
        service,
        js,
        auth,
        detail,
    ))
}

/// The same routes under `base` (the forwarder keeps `/integrations/rudderstack/dead-letters`),
/// with an optional [`Detail`] for `show`.
pub fn routes_at<S: Clone + Send + Sync + 'static>(
    base: &str,
    service: DlqService,
    js: jetstream::Context,
    auth: Arc<Authenticator>,
    detail: Option<Detail>,
) -> Router<S> {
    let state = RouterState {
        service,
        store: DeadLetters::new(js),
        auth,
        detail,
    };
    Router::new()
        .route(base, get(list_handler).delete(purge_handler))
        .route(
            &format!("{base}/{{seq}}"),
            get(show_handler).delete(delete_handler),
        )
        .route(&format!("{base}/{{seq}}/replay"), post(replay_handler))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// A previous page's `next`; empty or absent: from the oldest.
    cursor: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    fn cursor(&self) -> Result<u64, ApiError> {
        match self.cursor.as_deref() {
            None | Some("") => Ok(0),
            Some(c) => c
                .parse()
                .map_err(|_| ApiError::Invalid("cursor must be a previous page's `next`".into())),
        }
    }
}

async fn list_handler(
    State(state): State<RouterState>,
    Workspace(ws): Workspace,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope {
        service: state.service,
        workspace: Some(&ws),
    };
    let page = state
        .store
        .list(scope, q.cursor()?, q.limit.unwrap_or(DEFAULT_PAGE))
        .await?;
    let total = state.store.count(scope).await?;
    let items: Vec<Value> = page.items.iter().map(DeadLetter::summary_json).collect();
    Ok(Json(json!({
        "total": total,
        "deadLetters": items,
        "next": page.next.map(|n| n.to_string()),
    })))
}

async fn show_handler(
    State(state): State<RouterState>,
    Workspace(ws): Workspace,
    Path(seq): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope {
        service: state.service,
        workspace: Some(&ws),
    };
    let dead = state.store.get(scope, seq).await?;
    let mut v = dead.detail_json();
    if let Some((field, extra)) = state
        .detail
        .and_then(|f| f(dead.original_subject(), &dead.payload))
    {
        v[field] = extra;
    }
    Ok(Json(v))
}

async fn replay_handler(
    State(state): State<RouterState>,
    Workspace(ws): Workspace,
    Path(seq): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope {
        service: state.service,
        workspace: Some(&ws),
    };
    let r = state.store.replay(scope, seq).await?;
    Ok(Json(
        json!({"replayed": seq, "subject": r.subject, "duplicate": r.duplicate}),
    ))
}

async fn delete_handler(
    State(state): State<RouterState>,
    Workspace(ws): Workspace,
    Path(seq): Path<u64>,
) -> Result<StatusCode, ApiError> {
    let scope = Scope {
        service: state.service,
        workspace: Some(&ws),
    };
    state.store.delete(scope, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn purge_handler(
    State(state): State<RouterState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope {
        service: state.service,
        workspace: Some(&ws),
    };
    let purged = state.store.purge(scope).await?;
    Ok(Json(json!({"purged": purged})))
}

// ---- decoding ----------------------------------------------------------------------------------

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn timestamp(seconds: i64, nanos: i32) -> Value {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(nanos.clamp(0, 999_999_999) as u32)
                .ok()
        })
        .map_or(Value::Null, |t| rfc3339(t).into())
}

/// A bytes field that carries JSON (traits, profile, …): the document, or base64 when it is
/// not JSON, or null when empty.
fn json_bytes(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!({"base64": BASE64.encode(bytes)}))
}

fn millis(ms: i64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_or(Value::Null, |t| rfc3339(t).into())
}

/// The payload decoded as its original subject's protobuf type (see `proto/`), to JSON: fields
/// by their JSON names, JSON documents carried as bytes (traits, profile, …) as documents,
/// timestamps and `*_ms` epoch millis (named `…At`) in RFC 3339, enums by their lower-case
/// name. `None` when the subject's type is unknown or the bytes do not decode as it.
pub fn decode(original_subject: &str, payload: &[u8]) -> Option<Value> {
    let kind = PayloadKind::of_subject(original_subject);
    if kind == PayloadKind::Unknown {
        return None;
    }
    let descriptor =
        descriptors().get_message_by_name(&format!("{}.{}", rc_proto::PACKAGE, kind.as_str()))?;
    let message = DynamicMessage::decode(descriptor, payload).ok()?;
    Some(message_json(&message))
}

/// The contract's message descriptors, read once from what `rc-proto` was generated from.
fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(rc_proto::FILE_DESCRIPTOR_SET).expect("rc-proto's descriptors")
    })
}

/// Every field of `message`, set or not (proto3 defaults show as such).
fn message_json(message: &DynamicMessage) -> Value {
    let mut out = Map::with_capacity(message.descriptor().fields().len());
    for field in message.descriptor().fields() {
        let value = message.get_field(&field);
        let (key, json) = match (field.kind(), field.json_name().strip_suffix("Ms")) {
            (Kind::Int64, Some(stem)) => (format!("{stem}At"), millis(value.as_i64().unwrap_or(0))),
            (Kind::Message(m), _) if m.full_name() == "google.protobuf.Timestamp" => {
                let json = match message.has_field(&field) {
                    true => field_json(&value, &field),
                    false => Value::Null,
                };
                (field.json_name().to_owned(), json)
            }
            _ => (field.json_name().to_owned(), field_json(&value, &field)),
        };
        out.insert(key, json);
    }
    Value::Object(out)
}

fn field_json(value: &prost_reflect::Value, field: &FieldDescriptor) -> Value {
    use prost_reflect::Value as V;
    match value {
        V::Bool(b) => (*b).into(),
        V::I32(n) => (*n).into(),
        V::I64(n) => (*n).into(),
        V::U32(n) => (*n).into(),
        V::U64(n) => (*n).into(),
        V::F32(n) => (*n).into(),
        V::F64(n) => (*n).into(),
        V::String(s) => s.as_str().into(),
        V::Bytes(b) => json_bytes(b),
        V::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or("unknown".into(), |v| enum_token(e.name(), v.name()).into()),
            _ => Value::Null,
        },
        V::Message(m) if m.descriptor().full_name() == "google.protobuf.Timestamp" => timestamp(
            m.get_field_by_name("seconds")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            m.get_field_by_name("nanos")
                .and_then(|v| v.as_i32())
                .unwrap_or(0),
        ),
        V::Message(m) => message_json(m),
        V::List(items) => items.iter().map(|v| field_json(v, field)).collect(),
        // The contract has no map fields.
        V::Map(_) => Value::Null,
    }
}

/// `EVENT_TYPE_IDENTIFY` of enum `EventType` → `identify` (values carry their enum's name as
/// prefix, as the protobuf style guide asks).
fn enum_token(enum_name: &str, value_name: &str) -> String {
    let mut prefix = String::with_capacity(enum_name.len() + 4);
    for (i, c) in enum_name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    value_name
        .strip_prefix(&prefix)
        .unwrap_or(value_name)
        .to_ascii_lowercase()
}

/// The scalar fields of a decoded payload (no embedded documents), texts cut at
/// [`SUMMARY_TEXT`] chars, empty ones left out; `{"undecodable": true}` for `None`.
fn summarize(decoded: Option<Value>) -> Value {
    let Some(Value::Object(fields)) = decoded else {
        return json!({"undecodable": true});
    };
    let out: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) if s.chars().count() > SUMMARY_TEXT => {
                Some((k, Value::String(s.chars().take(SUMMARY_TEXT).collect())))
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Some((k, v)),
            _ => None,
        })
        .collect();
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rc_proto::Message as _;

    #[test]
    fn kinds_follow_the_original_subject() {
        assert_eq!(
            PayloadKind::of_subject("events.acme.identify"),
            PayloadKind::Event
        );
        assert_eq!(
            PayloadKind::of_subject("courier.acme.message.requested"),
            PayloadKind::MessageRequest
        );
        assert_eq!(
            PayloadKind::of_subject("courier.acme.message.sent"),
            PayloadKind::MessageEvent
        );
        assert_eq!(
            PayloadKind::of_subject("courier.acme.profile.update"),
            PayloadKind::ProfileUpdateRequest
        );
        assert_eq!(
            PayloadKind::of_subject("courier.acme.run.completed"),
            PayloadKind::RunEvent
        );
        assert_eq!(PayloadKind::of_subject("other.x.y"), PayloadKind::Unknown);
        assert_eq!(PayloadKind::of_subject("events.acme"), PayloadKind::Unknown);
    }

    #[test]
    fn scopes_own_only_their_subjects() {
        let ws = Scope {
            service: DlqService::Profiles,
            workspace: Some("acme"),
        };
        assert_eq!(ws.filter(), "dlq.profiles.acme");
        assert!(ws.owns("dlq.profiles.acme"));
        assert!(!ws.owns("dlq.profiles.acme2"));
        assert!(!ws.owns("dlq.accounts.acme"));
        let all = Scope {
            service: DlqService::Profiles,
            workspace: None,
        };
        assert_eq!(all.filter(), "dlq.profiles.*");
        assert!(all.owns("dlq.profiles.other"));
        assert!(!all.owns("dlq.forwarder.other"));
        assert_eq!("delivery".parse::<DlqService>(), Ok(DlqService::Delivery));
        assert!("ingress".parse::<DlqService>().is_err());
    }

    #[test]
    fn payloads_decode_to_json_with_embedded_documents() {
        let env = rc_proto::Envelope {
            workspace_id: "acme".into(),
            message_id: "m1".into(),
            r#type: rc_proto::EventType::Identify as i32,
            traits: br#"{"email":"a@b.c"}"#.to_vec().into(),
            context: b"not json".to_vec().into(),
            ..Default::default()
        };
        let v = decode("events.acme.identify", &env.encode_to_vec()).unwrap();
        assert_eq!(v["type"], "identify");
        assert_eq!(v["traits"]["email"], "a@b.c");
        assert_eq!(v["context"]["base64"], BASE64.encode("not json"));
        assert_eq!(v["properties"], Value::Null);
        let s = summarize(Some(v));
        assert_eq!(s["messageId"], "m1");
        assert!(s.get("traits").is_none() && s.get("userId").is_none());
    }

    #[test]
    fn every_payload_kind_decodes_by_its_descriptor() {
        // An empty payload is a message of that type with every field at its default.
        for subject in [
            "courier.a.profile.updated",
            "courier.a.profile.update",
            "courier.a.tenant.updated",
            "courier.a.message.requested",
            "courier.a.message.sent",
            "courier.a.run.completed",
            "events.a.track",
        ] {
            let v = decode(subject, b"").unwrap_or_else(|| panic!("{subject}"));
            assert_eq!(v["schemaVersion"], 0, "{subject}: {v}");
            assert_eq!(v["workspaceId"], "", "{subject}: {v}");
        }
        let e = rc_proto::MessageEvent {
            status: "SENT".into(),
            status_at: Some(prost_types::Timestamp {
                seconds: 1_772_442_011,
                nanos: 6_000_000,
            }),
            enqueued_ms: 1_772_442_011_006,
            ..Default::default()
        };
        let v = decode("courier.a.message.sent", &e.encode_to_vec()).unwrap();
        assert_eq!(v["status"], "SENT");
        assert_eq!(v["statusAt"], "2026-03-02T09:00:11.006Z");
        assert_eq!(v["enqueuedAt"], "2026-03-02T09:00:11.006Z");
        assert_eq!(v["sentAt"], Value::Null);
        assert!(v.get("enqueuedMs").is_none(), "{v}");
        let r = rc_proto::MessageRequest {
            channels: vec!["inbox".into(), "email".into()],
            ..Default::default()
        };
        let v = decode("courier.a.message.requested", &r.encode_to_vec()).unwrap();
        assert_eq!(v["channels"], json!(["inbox", "email"]));
        assert_eq!(v["requestedAt"], Value::Null);
        let unknown_type = rc_proto::Envelope {
            r#type: 99,
            ..Default::default()
        };
        let v = decode("events.a.track", &unknown_type.encode_to_vec()).unwrap();
        assert_eq!(v["type"], "unknown");
        assert_eq!(
            enum_token("EventType", "EVENT_TYPE_UNSPECIFIED"),
            "unspecified"
        );
    }

    #[test]
    fn hostile_payloads_fall_back_to_undecodable() {
        // Not protobuf; a lying length prefix; a huge text cut in summaries.
        assert!(decode("events.acme.track", b"\xff\xff\xff\xff").is_none());
        assert!(decode("events.acme.track", b"\x1a\xff\xff\xff\x0f").is_none());
        assert!(decode("nowhere", b"").is_none());
        assert_eq!(summarize(None), json!({"undecodable": true}));
        let long = rc_proto::MessageEvent {
            message_id: "x".repeat(100_000),
            ..Default::default()
        };
        let v = decode("courier.acme.message.sent", &long.encode_to_vec()).unwrap();
        let s = summarize(Some(v));
        assert_eq!(
            s["messageId"].as_str().unwrap().chars().count(),
            SUMMARY_TEXT
        );
    }
}
