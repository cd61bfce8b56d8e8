//! HTTP API: run invocation and reading, automation templates, notification templates,
//! mappings and the received-events catalog. Every route authenticates with the workspace key.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use rc_common::auth::Workspace;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, NewRun};
use crate::error::AutomationError as E;
use crate::store::{self, RunFilter, RunState, now_ms};
use crate::{AppState, catalog};
use rc_common::automation::{self as contract, cancelation_token, parse_steps};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/automations", get(list_automations))
        .route("/automations/invoke", post(invoke_adhoc))
        .route("/automations/{template_id}/invoke", post(invoke_template))
        .route("/automations/runs", get(list_runs))
        .route("/automations/runs/{run_id}", get(get_run))
        .route(
            "/automations/templates",
            get(list_docs::<Templates>).post(create_doc::<Templates>),
        )
        .route(
            "/automations/templates/{id}",
            get(get_doc::<Templates>)
                .put(put_doc::<Templates>)
                .delete(delete_doc::<Templates>),
        )
        .route(
            "/automations/mappings",
            get(list_mappings)
                .post(create_mapping)
                .delete(delete_mapping),
        )
        .route("/automations/events", get(list_events))
        .route("/automations/events/{key}", get(get_event))
        .route(
            "/notifications/templates",
            get(list_docs::<Notifications>).post(create_doc::<Notifications>),
        )
        .route(
            "/notifications/templates/{id}",
            get(get_doc::<Notifications>)
                .put(put_doc::<Notifications>)
                .delete(delete_doc::<Notifications>),
        )
}

fn body_object(body: &[u8]) -> Result<Value, E> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| E::Invalid(format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(E::Invalid("the body must be a JSON object".into()));
    }
    Ok(v)
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn run_context(b: &Value, recipient: Value) -> Value {
    json!({
        "data": b.get("data").cloned().filter(Value::is_object).unwrap_or(json!({})),
        "profile": b.get("profile").cloned().unwrap_or(Value::Null),
        "brand": b.get("brand").cloned().unwrap_or(Value::Null),
        "template": b.get("template").cloned().unwrap_or(Value::Null),
        "recipient": recipient,
    })
}

async fn start(
    state: &AppState,
    ws: &str,
    headers: &HeaderMap,
    salt: &str,
    new: impl FnOnce(String) -> NewRun,
) -> Result<Json<Value>, E> {
    let id = match idempotency_key(headers) {
        Some(k) => store::derive_id(&[ws, "idempotency", salt, &k]),
        None => store::random_id(),
    };
    let created = state
        .engine
        .create(ws, new(id.clone()))
        .await
        .map_err(|t| E::Unavailable(t.0))?;
    if let Some(run) = created {
        let engine = state.engine.clone();
        tokio::spawn(async move { engine.execute_created(run).await });
    }
    Ok(Json(json!({"runId": id})))
}

async fn invoke_adhoc(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, E> {
    let b = body_object(&body)?;
    let automation = b
        .get("automation")
        .filter(|a| a.is_object())
        .ok_or_else(|| E::Invalid("automation: required object".into()))?;
    contract::check_document(automation, "automation", contract::MAX_AUTOMATION_BYTES)
        .map_err(E::Invalid)?;
    let steps = automation
        .get("steps")
        .ok_or_else(|| E::Invalid("automation.steps: required".into()))?;
    let parsed = parse_steps(steps, "automation.steps").map_err(E::Invalid)?;
    state
        .engine
        .check_fetch_urls(&parsed, "automation.steps")
        .map_err(E::Invalid)?;
    check_recipient(&b)?;
    let steps = steps.as_array().cloned().unwrap_or_default();
    let token = cancelation_token(automation).map(str::to_string);
    let ctx = run_context(&b, b.get("recipient").cloned().unwrap_or(Value::Null));
    start(&state, &ws, &headers, "adhoc", |id| NewRun {
        id,
        template: String::new(),
        steps,
        cancelation_token: token,
        context: ctx,
        event: String::new(),
        source_message_id: String::new(),
        depth: 0,
        executes_now: true,
    })
    .await
}

/// `recipient` is a string, and `data` / `profile` are bounded like an inline automation's.
fn check_recipient(b: &Value) -> Result<(), E> {
    for k in ["data", "profile"] {
        if let Some(v) = b.get(k) {
            contract::check_document(v, k, contract::MAX_DATA_BYTES).map_err(E::Invalid)?;
        }
    }
    match b.get("recipient") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(E::Invalid("recipient: must be a string (user id)".into())),
    }
}

async fn invoke_template(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(tid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, E> {
    let b = body_object(&body)?;
    check_recipient(&b)?;
    let t = store::hget_json(&state.engine.redis, &store::templates_key(&ws), &tid)
        .await?
        .ok_or_else(|| E::NotFound(format!("automation template {tid:?} not found")))?;
    let steps = t
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let token = cancelation_token(&t).map(str::to_string);
    let ctx = run_context(&b, b.get("recipient").cloned().unwrap_or(Value::Null));
    start(&state, &ws, &headers, &tid, |id| NewRun {
        id,
        template: tid.clone(),
        steps,
        cancelation_token: token,
        context: ctx,
        event: String::new(),
        source_message_id: String::new(),
        depth: 0,
        executes_now: true,
    })
    .await
}

async fn get_run(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, E> {
    let run = store::load_run(&state.engine.redis, &ws, &id)
        .await?
        .ok_or_else(|| E::NotFound(format!("run {id:?} not found")))?;
    let canceled = store::cancel_requested(&state.engine.redis, &ws, &id).await?;
    Ok(Json(run.view(canceled)))
}

/// Index entries looked at per page at most (filters on several indexes may leave a page short;
/// its cursor goes on from where the walk stopped).
const MAX_SCAN: usize = 5_000;
/// Candidates checked against the other filters' indexes per round trip.
const BATCH: usize = 250;
/// Longest filter value (ids and event names).
const MAX_FILTER: usize = 512;

#[derive(Deserialize)]
struct RunsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    status: Option<String>,
    event: Option<String>,
    recipient: Option<String>,
    template: Option<String>,
    message_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Cursor = `<created ms>_<run id>` of the last index entry looked at; the index is a zset by
/// created time, read newest first (ties: run id descending, as Redis orders them).
fn parse_run_cursor(c: &str) -> Result<(i64, String), E> {
    c.split_once('_')
        .and_then(|(s, id)| Some((s.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| E::Invalid("cursor: not a cursor from this API".into()))
}

/// `since`/`until`: epoch milliseconds or an RFC 3339 time.
fn parse_time(name: &str, v: &str) -> Result<i64, E> {
    let bad = || E::Invalid(format!("{name}: an RFC 3339 time or epoch milliseconds"));
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().map_err(|_| bad());
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// The query string of a runs page (filters as given, so `next_url` keeps them).
fn runs_query(q: &RunsQuery, cursor: Option<&str>, limit: usize) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut out = format!("limit={limit}");
    let params = [
        ("cursor", cursor),
        ("status", q.status.as_deref()),
        ("event", q.event.as_deref()),
        ("recipient", q.recipient.as_deref()),
        ("template", q.template.as_deref()),
        ("message_id", q.message_id.as_deref()),
        ("since", q.since.as_deref()),
        ("until", q.until.as_deref()),
    ];
    for (name, v) in params {
        if let Some(v) = v {
            out.push_str(&format!(
                "&{name}={}",
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            ));
        }
    }
    out
}

/// The filter indexes a query names (AND), validated.
fn filter_keys(ws: &str, q: &RunsQuery) -> Result<Vec<String>, E> {
    let mut keys = Vec::new();
    if let Some(s) = q.status.as_deref() {
        let state = RunState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
            E::Invalid(format!("status: one of {}", all.join(", ")))
        })?;
        keys.push(store::status_key(ws, state));
    }
    let values = [
        (RunFilter::Event, q.event.as_deref()),
        (RunFilter::Recipient, q.recipient.as_deref()),
        (RunFilter::Template, q.template.as_deref()),
        (RunFilter::MessageId, q.message_id.as_deref()),
    ];
    for (filter, value) in values {
        if let Some(v) = value {
            if v.is_empty() || v.len() > MAX_FILTER || v.chars().any(char::is_control) {
                return Err(E::Invalid(format!(
                    "{}: 1-{MAX_FILTER} bytes, no control characters",
                    filter.as_str()
                )));
            }
            keys.push(store::runs_by_key(ws, filter, v));
        }
    }
    Ok(keys)
}

/// Newest first. With filters, walks the index with the fewest entries in the window and keeps
/// the runs that are in every other one (checked by score lookups, a batch per round trip), so
/// a page never reads the whole run index.
async fn list_runs(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, E> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let mut others = filter_keys(&ws, &q)?;
    let window = store::Window {
        since: q
            .since
            .as_deref()
            .map(|v| parse_time("since", v))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|v| parse_time("until", v))
            .transpose()?,
    };
    let mut after = q.cursor.as_deref().map(parse_run_cursor).transpose()?;
    let redis = &state.engine.redis;
    let walked = match others.len() {
        0 => store::runs_key(&ws),
        1 => others.remove(0),
        _ => {
            let counts = store::index_counts(redis, &others, window).await?;
            let smallest = (0..counts.len()).min_by_key(|&i| counts[i]).unwrap_or(0);
            others.swap_remove(smallest)
        }
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    'scan: while items.len() < limit && scanned < MAX_SCAN {
        let want = if others.is_empty() {
            limit - items.len()
        } else {
            BATCH
        };
        let page = store::index_page(
            redis,
            &walked,
            after.as_ref(),
            window,
            want.min(MAX_SCAN - scanned),
        )
        .await?;
        if page.is_empty() {
            exhausted = true;
            break;
        }
        let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
        let keep = store::in_all(redis, &others, &ids).await?;
        let wanted: Vec<&str> = ids
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(id, _)| *id)
            .collect();
        let mut runs = store::load_runs(redis, &ws, &wanted).await?.into_iter();
        for ((id, score), keep) in page.iter().zip(keep) {
            scanned += 1;
            after = Some((*score, id.clone()));
            if !keep {
                continue;
            }
            let Some(run) = runs.next().flatten() else {
                // Expired: forget it here too.
                store::forget_run(redis, &ws, &walked, id).await?;
                continue;
            };
            items.push(run.summary());
            if items.len() == limit {
                break 'scan;
            }
        }
    }
    // More when the index has an entry past the cursor.
    let has_more = !exhausted
        && match &after {
            None => false,
            Some(a) => !store::index_page(redis, &walked, Some(a), window, 1)
                .await?
                .is_empty(),
        };
    let cursor = has_more
        .then(|| after.as_ref().map(|(s, id)| format!("{s}_{id}")))
        .flatten();
    let path = "/automations/runs";
    let url = format!("{path}?{}", runs_query(&q, q.cursor.as_deref(), limit));
    let next_url = cursor
        .as_ref()
        .map(|c| format!("{path}?{}", runs_query(&q, Some(c), limit)));
    Ok(Json(json!({
        "items": items,
        "has_more": has_more,
        "cursor": cursor,
        "url": url,
        "next_url": next_url,
        "type": "list",
    })))
}

// ---- automation templates -------------------------------------------------------------------

fn validate_id(id: &str, what: &str) -> Result<(), E> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == '/') {
        return Err(E::Invalid(format!(
            "{what}: 1-128 characters, no '/' or control characters"
        )));
    }
    Ok(())
}

/// Validates and normalises an automation template body; `id` comes from the path or body.
fn template_doc(
    engine: &Engine,
    mut b: Value,
    id: String,
    created_at: Option<Value>,
) -> Result<Value, E> {
    validate_id(&id, "id")?;
    contract::check_document(&b, "body", contract::MAX_AUTOMATION_BYTES).map_err(E::Invalid)?;
    let steps = b
        .get("steps")
        .ok_or_else(|| E::Invalid("steps: required".into()))?;
    let parsed = parse_steps(steps, "steps").map_err(E::Invalid)?;
    engine
        .check_fetch_urls(&parsed, "steps")
        .map_err(E::Invalid)?;
    if let Some(n) = b.get("name")
        && !n.is_string()
    {
        return Err(E::Invalid("name: must be a string".into()));
    }
    let o = b.as_object_mut().expect("checked object");
    if let Some(t) = o.remove("cancellation_token") {
        o.insert("cancelation_token".into(), t);
    }
    o.insert("id".into(), json!(id));
    let now = store::iso(now_ms());
    o.insert("created_at".into(), created_at.unwrap_or(json!(now)));
    o.insert("updated_at".into(), json!(now));
    Ok(b)
}

/// `GET /automations`: the templates in Courier's `AutomationTemplateListResponse` shape. Every
/// stored template is live, so each is `published`; `?version=draft` lists none. One page.
async fn list_automations(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<AutomationsQuery>,
) -> Result<Json<Value>, E> {
    if q.version.as_deref() == Some("draft") {
        return Ok(Json(json!({"templates": []})));
    }
    let mut all: Vec<Value> = store::hall_json(&state.engine.redis, &store::templates_key(&ws))
        .await?
        .into_iter()
        .map(|(id, t)| {
            json!({
                "id": id,
                "name": t.get("name").and_then(Value::as_str).unwrap_or(&id),
                "version": "published",
                "createdAt": t.get("created_at"),
                "updatedAt": t.get("updated_at"),
            })
        })
        .collect();
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(json!({"templates": all})))
}

#[derive(Deserialize)]
struct AutomationsQuery {
    version: Option<String>,
}

/// A kind of document stored by id (automation or notification templates): one CRUD for both.
trait DocKind {
    /// In messages: "automation template".
    const NOUN: &'static str;
    fn key(ws: &str) -> String;
    /// Validates and normalises a body; `old` is the stored document it replaces.
    fn document(engine: &Engine, body: Value, id: String, old: Option<Value>) -> Result<Value, E>;
}

struct Templates;

impl DocKind for Templates {
    const NOUN: &'static str = "automation template";
    fn key(ws: &str) -> String {
        store::templates_key(ws)
    }
    fn document(engine: &Engine, body: Value, id: String, old: Option<Value>) -> Result<Value, E> {
        template_doc(
            engine,
            body,
            id,
            old.and_then(|o| o.get("created_at").cloned()),
        )
    }
}

struct Notifications;

impl DocKind for Notifications {
    const NOUN: &'static str = "notification template";
    fn key(ws: &str) -> String {
        store::notifications_key(ws)
    }
    fn document(_: &Engine, body: Value, id: String, _: Option<Value>) -> Result<Value, E> {
        notification_doc(body, id)
    }
}

async fn list_docs<K: DocKind>(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, E> {
    let all = store::list_docs(&state.engine.redis, &K::key(&ws)).await?;
    Ok(Json(json!({"results": all})))
}

/// Tells every replica (this one at once) that the workspace's mappings or templates changed.
async fn announce(state: &AppState, ws: &str) {
    state
        .engine
        .config
        .changed(&state.engine.js.client(), ws)
        .await;
}

/// The body's `id`, or a random one.
fn body_id(b: &Value) -> String {
    b.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(store::random_id)
}

async fn create_doc<K: DocKind>(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), E> {
    let b = body_object(&body)?;
    let id = body_id(&b);
    let doc = K::document(&state.engine, b, id.clone(), None)?;
    if !store::create_doc(&state.engine.redis, &K::key(&ws), &id, &doc).await? {
        return Err(E::Invalid(format!(
            "id: {} {id:?} already exists (use PUT to replace it)",
            K::NOUN
        )));
    }
    announce(&state, &ws).await;
    Ok((StatusCode::CREATED, Json(doc)))
}

async fn get_doc<K: DocKind>(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, E> {
    store::hget_json(&state.engine.redis, &K::key(&ws), &id)
        .await?
        .map(Json)
        .ok_or_else(|| E::NotFound(format!("{} {id:?} not found", K::NOUN)))
}

async fn put_doc<K: DocKind>(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, E> {
    let b = body_object(&body)?;
    let key = K::key(&ws);
    let old = store::hget_json(&state.engine.redis, &key, &id).await?;
    let doc = K::document(&state.engine, b, id.clone(), old)?;
    store::put_doc(&state.engine.redis, &key, &id, &doc).await?;
    announce(&state, &ws).await;
    Ok(Json(doc))
}

async fn delete_doc<K: DocKind>(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<StatusCode, E> {
    let found = store::delete_doc(&state.engine.redis, &K::key(&ws), &id).await?;
    announce(&state, &ws).await;
    if !found {
        return Err(E::NotFound(format!("{} {id:?} not found", K::NOUN)));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- notification templates -----------------------------------------------------------------

fn notification_doc(mut b: Value, id: String) -> Result<Value, E> {
    validate_id(&id, "id")?;
    contract::validate_notification(&b).map_err(E::Invalid)?;
    let o = b.as_object_mut().expect("checked object");
    o.insert("id".into(), json!(id));
    o.entry("published").or_insert(json!(true));
    o.insert("updated_at".into(), json!(store::iso(now_ms())));
    Ok(b)
}

// ---- mappings ---------------------------------------------------------------------------------

/// The catalog / mapping key of a request (see [`catalog::request_key`]).
fn mapping_key(event: Option<&str>, kind: Option<&str>) -> Result<String, E> {
    catalog::request_key(event, kind).map_err(E::Invalid)
}

async fn list_mappings(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, E> {
    let mut out: Vec<Value> = store::hall_json(&state.engine.redis, &store::mappings_key(&ws))
        .await?
        .into_iter()
        .map(|(k, v)| json!({"key": k, "templates": v}))
        .collect();
    out.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    Ok(Json(json!({"results": out})))
}

/// `{"event"|"type", "template_id"}` links an existing template; `{"event"|"type", "template":
/// {name, steps, …}}` creates a template (the event becomes its trigger) and links it.
async fn create_mapping(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), E> {
    let b = body_object(&body)?;
    let key = mapping_key(
        b.get("event").and_then(Value::as_str),
        b.get("type").and_then(Value::as_str),
    )?;
    let redis = &state.engine.redis;
    let tid = match (
        b.get("template_id").and_then(Value::as_str),
        b.get("template"),
    ) {
        // Linking names an existing template: a typo must not answer 201 and run nothing.
        // (A template deleted after linking still shows as `missing` in the catalog.)
        // It gets the event as its `trigger` (unless it has one), like a template created here.
        (Some(t), None) => {
            if !store::add_trigger(redis, &ws, t, &key).await? {
                return Err(E::NotFound(format!(
                    "template_id: automation template {t:?} not found; create it first or give `template`"
                )));
            }
            t.to_string()
        }
        (None, Some(t)) if t.is_object() => {
            let id = body_id(t);
            let mut doc =
                template_doc(&state.engine, t.clone(), id.clone(), None).map_err(|e| match e {
                    E::Invalid(m) => E::Invalid(format!("template.{m}")),
                    other => other,
                })?;
            doc["trigger"] = json!(key);
            if !store::create_doc(redis, &store::templates_key(&ws), &id, &doc).await? {
                return Err(E::Invalid(format!(
                    "template.id: automation template {id:?} already exists"
                )));
            }
            id
        }
        _ => {
            return Err(E::Invalid(
                "give `template_id` (an existing template) or `template` (a new one)".into(),
            ));
        }
    };
    store::link(redis, &ws, &key, &tid).await?;
    announce(&state, &ws).await;
    let exists = store::doc_exists(redis, &store::templates_key(&ws), &tid).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"key": key, "template_id": tid, "template_status": if exists {"ok"} else {"missing"}}),
        ),
    ))
}

#[derive(Deserialize)]
struct MappingQuery {
    event: Option<String>,
    r#type: Option<String>,
    template_id: String,
}

async fn delete_mapping(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<MappingQuery>,
) -> Result<StatusCode, E> {
    let key = mapping_key(q.event.as_deref(), q.r#type.as_deref())?;
    let found = store::unlink(&state.engine.redis, &ws, &key, &q.template_id).await?;
    announce(&state, &ws).await;
    if !found {
        return Err(E::NotFound(format!(
            "no mapping of {key:?} to {:?}",
            q.template_id
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- catalog ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ListQuery {
    mapped_first: Option<bool>,
    limit: Option<usize>,
    /// A previous page's `next`.
    cursor: Option<String>,
}

async fn list_events(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, E> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(catalog::Cursor::parse(raw).map_err(E::Invalid)?),
    };
    let (out, next) = catalog::page(
        &state.engine.redis,
        &ws,
        q.mapped_first.unwrap_or(true),
        after.as_ref(),
        limit,
    )
    .await?;
    Ok(Json(
        json!({"results": out, "next": next.map(|c| c.encode())}),
    ))
}

async fn get_event(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(key): Path<String>,
) -> Result<Json<Value>, E> {
    let key = catalog::path_key(&key);
    catalog::get(&state.engine.redis, &ws, &key)
        .await?
        .map(Json)
        .ok_or_else(|| E::NotFound(format!("no event {key:?} received")))
}
