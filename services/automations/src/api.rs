//! HTTP API: run invocation and reading, automation templates, notification templates,
//! mappings and the received-events catalog. Every route authenticates with the workspace key.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use rc_common::auth::Workspace;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, NewRun};
use crate::error::AutomationError as E;
use crate::store::{self, now_ms};
use crate::{AppState, catalog};
use rc_common::automation::{self as contract, cancelation_token, validate_steps};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/automations", get(list_automations))
        .route("/automations/invoke", post(invoke_adhoc))
        .route("/automations/{template_id}/invoke", post(invoke_template))
        .route("/automations/runs", get(list_runs))
        .route("/automations/runs/{run_id}", get(get_run))
        .route(
            "/automations/templates",
            get(list_templates).post(create_template),
        )
        .route(
            "/automations/templates/{id}",
            get(get_template).put(put_template).delete(delete_template),
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
            get(list_notifications).post(create_notification),
        )
        .route(
            "/notifications/templates/{id}",
            get(get_notification)
                .put(put_notification)
                .delete(delete_notification),
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
    if created {
        let (engine, ws2, id2) = (state.engine.clone(), ws.to_string(), id.clone());
        tokio::spawn(async move { engine.execute_logged(&ws2, &id2).await });
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
    validate_steps(steps, "automation.steps").map_err(E::Invalid)?;
    state
        .engine
        .check_fetch_urls(steps, "automation.steps")
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
    let canceled: bool = state
        .engine
        .redis
        .clone()
        .exists(store::canceled_key(&ws, &id))
        .await?;
    Ok(Json(run.view(canceled)))
}

const RUN_STATES: [&str; 6] = [
    "pending",
    "running",
    "waiting",
    "completed",
    "failed",
    "canceled",
];
/// Index entries looked at per page at most (a `status` filter may leave a page short).
const MAX_SCAN: usize = 1000;

#[derive(Deserialize)]
struct RunsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    status: Option<String>,
}

/// Cursor = `<created ms>_<run id>` of the last index entry looked at; the index is a zset by
/// created time, read newest first (ties: run id descending, as Redis orders them).
fn parse_run_cursor(c: &str) -> Result<(i64, String), E> {
    c.split_once('_')
        .and_then(|(s, id)| Some((s.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| E::Invalid("cursor: not a cursor from this API".into()))
}

/// Up to `n` index entries older than `(score, id)` (or the newest ones), newest first.
async fn index_page(
    conn: &mut rc_common::redis::RedisConn,
    key: &str,
    after: Option<&(i64, String)>,
    n: usize,
) -> redis::RedisResult<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let max = match after {
        None => "+inf".to_string(),
        Some((score, id)) => {
            // Same-millisecond entries not yet seen, then strictly older ones.
            let ties: Vec<String> = conn.zrangebyscore(key, score, score).await?;
            let mut ties: Vec<String> = ties.into_iter().filter(|t| t < id).collect();
            ties.sort_unstable_by(|a, b| b.cmp(a));
            out.extend(ties.into_iter().take(n).map(|t| (t, *score)));
            format!("({score}")
        }
    };
    if out.len() < n {
        let more: Vec<(String, f64)> = conn
            .zrevrangebyscore_limit_withscores(key, max, "-inf", 0, (n - out.len()) as isize)
            .await?;
        out.extend(more.into_iter().map(|(id, score)| (id, score as i64)));
    }
    Ok(out)
}

async fn list_runs(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, E> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    if let Some(st) = &q.status
        && !RUN_STATES.contains(&st.as_str())
    {
        return Err(E::Invalid(format!(
            "status: one of {}",
            RUN_STATES.join(", ")
        )));
    }
    let mut after = q.cursor.as_deref().map(parse_run_cursor).transpose()?;
    let key = store::runs_key(&ws);
    let mut conn = state.engine.redis.clone();
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    'scan: while items.len() < limit && scanned < MAX_SCAN {
        let want = if q.status.is_some() {
            100
        } else {
            limit - items.len()
        };
        let page = index_page(
            &mut conn,
            &key,
            after.as_ref(),
            want.min(MAX_SCAN - scanned),
        )
        .await?;
        if page.is_empty() {
            exhausted = true;
            break;
        }
        let ids: Vec<String> = page.iter().map(|(id, _)| store::run_key(&ws, id)).collect();
        let raws: Vec<Option<String>> = conn.mget(&ids).await?;
        for ((id, score), raw) in page.into_iter().zip(raws) {
            scanned += 1;
            after = Some((score, id.clone()));
            let Some(run) = raw.and_then(|r| serde_json::from_str::<store::Run>(&r).ok()) else {
                // Expired: forget it here too.
                conn.zrem::<_, _, ()>(&key, &id).await?;
                continue;
            };
            if q.status.as_deref().is_none_or(|s| s == run.state) {
                items.push(run.summary());
                if items.len() == limit {
                    break 'scan;
                }
            }
        }
    }
    // More when the index has an entry past the cursor.
    let has_more = !exhausted
        && match &after {
            None => false,
            Some(a) => !index_page(&mut conn, &key, Some(a), 1).await?.is_empty(),
        };
    let cursor = has_more
        .then(|| after.as_ref().map(|(s, id)| format!("{s}_{id}")))
        .flatten();
    let status = q
        .status
        .as_deref()
        .map(|s| format!("&status={s}"))
        .unwrap_or_default();
    let path = "/automations/runs";
    let url = match &q.cursor {
        Some(c) => format!("{path}?cursor={c}&limit={limit}{status}"),
        None => format!("{path}?limit={limit}{status}"),
    };
    let next_url = cursor
        .as_ref()
        .map(|c| format!("{path}?cursor={c}&limit={limit}{status}"));
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
    validate_steps(steps, "steps").map_err(E::Invalid)?;
    engine
        .check_fetch_urls(steps, "steps")
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

async fn list_templates(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, E> {
    let mut all: Vec<Value> = store::hall_json(&state.engine.redis, &store::templates_key(&ws))
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(json!({"results": all})))
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

async fn create_template(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), E> {
    let b = body_object(&body)?;
    let id = b
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(store::random_id);
    let doc = template_doc(&state.engine, b, id.clone(), None)?;
    let created: bool = state
        .engine
        .redis
        .clone()
        .hset_nx(store::templates_key(&ws), &id, doc.to_string())
        .await?;
    if !created {
        return Err(E::Invalid(format!(
            "id: automation template {id:?} already exists (use PUT to replace it)"
        )));
    }
    Ok((axum::http::StatusCode::CREATED, Json(doc)))
}

async fn get_template(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, E> {
    store::hget_json(&state.engine.redis, &store::templates_key(&ws), &id)
        .await?
        .map(Json)
        .ok_or_else(|| E::NotFound(format!("automation template {id:?} not found")))
}

async fn put_template(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, E> {
    let b = body_object(&body)?;
    let old = store::hget_json(&state.engine.redis, &store::templates_key(&ws), &id).await?;
    let doc = template_doc(
        &state.engine,
        b,
        id.clone(),
        old.and_then(|o| o.get("created_at").cloned()),
    )?;
    state
        .engine
        .redis
        .clone()
        .hset::<_, _, _, ()>(store::templates_key(&ws), &id, doc.to_string())
        .await?;
    Ok(Json(doc))
}

async fn delete_template(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, E> {
    let n: i64 = state
        .engine
        .redis
        .clone()
        .hdel(store::templates_key(&ws), &id)
        .await?;
    if n == 0 {
        return Err(E::NotFound(format!("automation template {id:?} not found")));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
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

async fn list_notifications(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, E> {
    let mut all: Vec<Value> = store::hall_json(&state.engine.redis, &store::notifications_key(&ws))
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(json!({"results": all})))
}

async fn create_notification(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), E> {
    let b = body_object(&body)?;
    let id = b
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(store::random_id);
    let doc = notification_doc(b, id.clone())?;
    let created: bool = state
        .engine
        .redis
        .clone()
        .hset_nx(store::notifications_key(&ws), &id, doc.to_string())
        .await?;
    if !created {
        return Err(E::Invalid(format!(
            "id: notification template {id:?} already exists (use PUT to replace it)"
        )));
    }
    Ok((axum::http::StatusCode::CREATED, Json(doc)))
}

async fn get_notification(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, E> {
    store::hget_json(&state.engine.redis, &store::notifications_key(&ws), &id)
        .await?
        .map(Json)
        .ok_or_else(|| E::NotFound(format!("notification template {id:?} not found")))
}

async fn put_notification(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, E> {
    let doc = notification_doc(body_object(&body)?, id.clone())?;
    state
        .engine
        .redis
        .clone()
        .hset::<_, _, _, ()>(store::notifications_key(&ws), &id, doc.to_string())
        .await?;
    Ok(Json(doc))
}

async fn delete_notification(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, E> {
    let n: i64 = state
        .engine
        .redis
        .clone()
        .hdel(store::notifications_key(&ws), &id)
        .await?;
    if n == 0 {
        return Err(E::NotFound(format!(
            "notification template {id:?} not found"
        )));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

// ---- mappings ---------------------------------------------------------------------------------

/// The catalog / mapping key of a request (see [`catalog::request_key`]).
fn mapping_key(event: Option<&str>, kind: Option<&str>) -> Result<String, E> {
    catalog::request_key(event, kind).map_err(E::Invalid)
}

const LINK: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local list = {}
if raw then list = cjson.decode(raw) end
for _, v in ipairs(list) do if v == ARGV[2] then return 0 end end
table.insert(list, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(list))
return 1
";

const UNLINK: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local list = cjson.decode(raw)
local out = {}
local found = 0
for _, v in ipairs(list) do if v == ARGV[2] then found = 1 else table.insert(out, v) end end
if #out == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(out)) end
return found
";

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
) -> Result<(axum::http::StatusCode, Json<Value>), E> {
    let b = body_object(&body)?;
    let key = mapping_key(
        b.get("event").and_then(Value::as_str),
        b.get("type").and_then(Value::as_str),
    )?;
    let redis = state.engine.redis.clone();
    let tid = match (
        b.get("template_id").and_then(Value::as_str),
        b.get("template"),
    ) {
        // Linking names an existing template: a typo must not answer 201 and run nothing.
        // (A template deleted after linking still shows as `missing` in the catalog.)
        (Some(t), None) => {
            let exists: bool = redis.clone().hexists(store::templates_key(&ws), t).await?;
            if !exists {
                return Err(E::NotFound(format!(
                    "template_id: automation template {t:?} not found; create it first or give `template`"
                )));
            }
            t.to_string()
        }
        (None, Some(t)) if t.is_object() => {
            let id = t
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(store::random_id);
            let mut doc =
                template_doc(&state.engine, t.clone(), id.clone(), None).map_err(|e| match e {
                    E::Invalid(m) => E::Invalid(format!("template.{m}")),
                    other => other,
                })?;
            doc["trigger"] = json!(key);
            let created: bool = redis
                .clone()
                .hset_nx(store::templates_key(&ws), &id, doc.to_string())
                .await?;
            if !created {
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
    let mut conn = redis.clone();
    redis::Script::new(LINK)
        .key(store::mappings_key(&ws))
        .arg(&key)
        .arg(&tid)
        .invoke_async::<i64>(&mut conn)
        .await?;
    let exists: bool = conn.hexists(store::templates_key(&ws), &tid).await?;
    Ok((
        axum::http::StatusCode::CREATED,
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
) -> Result<axum::http::StatusCode, E> {
    let key = mapping_key(q.event.as_deref(), q.r#type.as_deref())?;
    let mut conn = state.engine.redis.clone();
    let found: i64 = redis::Script::new(UNLINK)
        .key(store::mappings_key(&ws))
        .arg(&key)
        .arg(&q.template_id)
        .invoke_async(&mut conn)
        .await?;
    if found == 0 {
        return Err(E::NotFound(format!(
            "no mapping of {key:?} to {:?}",
            q.template_id
        )));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
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
