//! Courier's tenant API (`/tenants`, `/users/{id}/tenants`) and the legacy `/accounts` paths.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rc_common::auth::Workspace;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::store::{self, Applied, Reset, Stamp, Write};
use crate::{AccountsError, AppState, Change};

use rc_common::clock::now_ms;

fn api_stamp(cause: &str) -> Stamp {
    Stamp::Api {
        now_ms: now_ms(),
        tiebreak: cause.to_string(),
    }
}

fn check_id(what: &str, id: &str) -> Result<(), AccountsError> {
    if id.is_empty() || id.len() > 1024 {
        return Err(AccountsError::Invalid(format!(
            "{what} must be 1-1024 characters"
        )));
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Value, AccountsError> {
    serde_json::from_slice(body)
        .map_err(|e| AccountsError::Invalid(format!("request body is not valid JSON: {e}")))
}

fn parse_doc(doc: &str) -> Result<Value, AccountsError> {
    serde_json::from_str(doc)
        .map_err(|e| AccountsError::Unavailable(format!("stored tenant is corrupt: {e}")))
}

async fn publish(state: &AppState, ws: &str, change: Change<'_>) {
    if let Err(e) = state.publisher.tenant_updated(ws, change).await {
        // The tenant is stored; only the notification is lost (see the README).
        metrics::counter!("accounts_publish_failures_total").increment(1);
        tracing::warn!(workspace = ws, error = %e, "TenantUpdated not published");
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub parent_tenant_id: Option<String>,
    pub parent_account_id: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize, AccountsError> {
        match &self.limit {
            None => Ok(20),
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err(AccountsError::Invalid(
                    "limit must be an integer from 1 to 100".into(),
                )),
            },
        }
    }
}

fn list_body(items: Vec<Value>, has_more: bool, path: &str, q: &ListQuery, limit: usize) -> Value {
    let cursor = if has_more {
        items.last().and_then(|i| {
            i.get("__cursor")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    } else {
        None
    };
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut i| {
            if let Some(m) = i.as_object_mut() {
                m.remove("__cursor");
            }
            i
        })
        .collect();
    let mut extra = String::new();
    if let Some(p) = &q.parent_tenant_id {
        extra.push_str(&format!("&parent_tenant_id={}", url_encode(p)));
    }
    let mut url = path.to_string();
    if let Some(c) = &q.cursor {
        url.push_str(&format!("?cursor={}&limit={limit}{extra}", url_encode(c)));
    }
    let next_url = cursor
        .as_ref()
        .map(|c| format!("{path}?cursor={}&limit={limit}{extra}", url_encode(c)));
    json!({
        "items": items,
        "has_more": has_more,
        "cursor": cursor,
        "url": url,
        "next_url": next_url,
        "type": "list",
    })
}

// ---- tenants --------------------------------------------------------------------------------

const TOP: &[&str] = &[
    "parent_tenant_id",
    "brand_id",
    "default_preferences",
    "user_profile",
];

async fn put_tenant_value(
    state: &AppState,
    ws: &str,
    tid: &str,
    body: Value,
) -> Result<Value, AccountsError> {
    check_id("tenant id", tid)?;
    let Value::Object(body) = body else {
        return Err(AccountsError::Invalid(
            "request body must be a JSON object".into(),
        ));
    };
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(AccountsError::Invalid(
                "\"name\" is required (a non-empty string)".into(),
            ));
        }
    };
    let mut fields = vec![
        ("x:seen".to_string(), Some(Value::Bool(true))),
        ("t:name".to_string(), Some(Value::String(name))),
    ];
    for key in TOP {
        if let Some(v) = body.get(*key).filter(|v| !v.is_null()) {
            if *key == "parent_tenant_id" && !v.is_string() {
                return Err(AccountsError::Invalid(
                    "\"parent_tenant_id\" must be a string".into(),
                ));
            }
            fields.push((format!("t:{key}"), Some(v.clone())));
        }
    }
    match body.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(props)) => {
            for (k, v) in props.iter().filter(|(_, v)| !v.is_null()) {
                fields.push((format!("p:{k}"), Some(v.clone())));
            }
        }
        Some(_) => {
            return Err(AccountsError::Invalid(
                "\"properties\" must be a JSON object".into(),
            ));
        }
    }
    let cause = store::random_tiebreak();
    let write = Write {
        stamp: api_stamp(&cause),
        reset: Reset::Replace,
        require_existing: false,
        fields,
        max_bytes: state.max_tenant_bytes,
    };
    let Applied::Ok { doc, changed, .. } =
        too_large(store::apply(&state.redis, ws, tid, &write).await?, state)?
    else {
        return Err(AccountsError::Unavailable("unexpected store answer".into()));
    };
    store::update_indexes(&state.redis, ws, tid, true, &[]).await?;
    if changed {
        let change = Change {
            tenant_id: tid,
            doc: doc.as_deref(),
            member_user_id: "",
            member_removed: false,
            source: "api",
            cause_id: &cause,
        };
        publish(state, ws, change).await;
    }
    parse_doc(doc.as_deref().unwrap_or("{}"))
}

pub async fn put_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(tid): Path<String>,
    body: Bytes,
) -> Result<Response, AccountsError> {
    let value = put_tenant_value(&state, &ws, &tid, parse_json(&body)?).await?;
    Ok(Json(value).into_response())
}

/// A write refused by the size bound answers 413.
fn too_large(applied: Applied, state: &AppState) -> Result<Applied, AccountsError> {
    match applied {
        Applied::TooLarge(bytes) => Err(AccountsError::TooLarge(format!(
            "the tenant (or membership profile) would be about {bytes} bytes of JSON, more than {}",
            state.max_tenant_bytes
        ))),
        other => Ok(other),
    }
}

async fn get_tenant_value(state: &AppState, ws: &str, tid: &str) -> Result<Value, AccountsError> {
    match store::get_doc(&state.redis, ws, tid).await? {
        Some(doc) => parse_doc(&doc),
        None => Err(AccountsError::NotFound(format!("tenant {tid:?} not found"))),
    }
}

pub async fn get_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(tid): Path<String>,
) -> Result<Response, AccountsError> {
    Ok(Json(get_tenant_value(&state, &ws, &tid).await?).into_response())
}

pub async fn delete_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(tid): Path<String>,
) -> Result<Response, AccountsError> {
    check_id("tenant id", &tid)?;
    let cause = store::random_tiebreak();
    let write = Write {
        stamp: api_stamp(&cause),
        reset: Reset::Delete,
        require_existing: false,
        fields: Vec::new(),
        max_bytes: 0,
    };
    let Applied::Ok {
        doc,
        changed,
        touched,
    } = store::apply(&state.redis, &ws, &tid, &write).await?
    else {
        return Err(AccountsError::Unavailable("unexpected store answer".into()));
    };
    store::update_indexes(&state.redis, &ws, &tid, doc.is_some(), &touched).await?;
    if changed {
        let change = Change {
            tenant_id: &tid,
            doc: None,
            member_user_id: "",
            member_removed: false,
            source: "api",
            cause_id: &cause,
        };
        publish(&state, &ws, change).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tenants_value(
    state: &AppState,
    ws: &str,
    q: &ListQuery,
    path: &str,
) -> Result<Value, AccountsError> {
    let limit = q.limit()?;
    let parent = q
        .parent_tenant_id
        .as_deref()
        .or(q.parent_account_id.as_deref());
    let index = store::tenants_index_key(ws);
    let mut cursor = q.cursor.clone();
    let mut items = Vec::new();
    let mut has_more = false;
    'scan: loop {
        let ids = store::range_after(&state.redis, &index, cursor.as_deref(), 200).await?;
        if ids.is_empty() {
            break;
        }
        for id in &ids {
            // The index may name a tenant deleted meanwhile: skip it.
            let Some(doc) = store::get_doc(&state.redis, ws, id).await? else {
                continue;
            };
            let mut doc = parse_doc(&doc)?;
            if let Some(p) = parent
                && doc.get("parent_tenant_id").and_then(Value::as_str) != Some(p)
            {
                continue;
            }
            if items.len() == limit {
                has_more = true;
                break 'scan;
            }
            doc["__cursor"] = Value::String(id.clone());
            items.push(doc);
        }
        cursor = ids.last().cloned();
    }
    Ok(list_body(items, has_more, path, q, limit))
}

pub async fn list_tenants(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<ListQuery>,
) -> Result<Response, AccountsError> {
    Ok(Json(list_tenants_value(&state, &ws, &q, "/tenants").await?).into_response())
}

async fn tenant_users_value(
    state: &AppState,
    ws: &str,
    tid: &str,
    q: &ListQuery,
    path: &str,
) -> Result<Value, AccountsError> {
    let limit = q.limit()?;
    get_tenant_value(state, ws, tid).await?;
    let ids = store::range_after(
        &state.redis,
        &store::members_key(ws, tid),
        q.cursor.as_deref(),
        limit + 1,
    )
    .await?;
    let has_more = ids.len() > limit;
    let mut items = Vec::new();
    for uid in ids.into_iter().take(limit) {
        let profile = store::membership(&state.redis, ws, tid, &uid)
            .await?
            .unwrap_or_else(|| json!({}));
        items.push(json!({"tenant_id": tid, "user_id": uid, "profile": profile,
            "type": "user", "__cursor": uid}));
    }
    Ok(list_body(items, has_more, path, q, limit))
}

pub async fn tenant_users(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(tid): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, AccountsError> {
    let path = format!("/tenants/{}/users", url_encode(&tid));
    Ok(Json(tenant_users_value(&state, &ws, &tid, &q, &path).await?).into_response())
}

// ---- memberships ----------------------------------------------------------------------------

async fn set_membership(
    state: &AppState,
    ws: &str,
    uid: &str,
    tid: &str,
    profile: Option<Value>,
) -> Result<(), AccountsError> {
    check_id("user_id", uid)?;
    check_id("tenant id", tid)?;
    let removing = profile.is_none();
    let cause = store::random_tiebreak();
    let write = Write {
        stamp: api_stamp(&cause),
        reset: Reset::None,
        require_existing: !removing,
        fields: vec![(format!("m:{uid}"), profile)],
        max_bytes: state.max_tenant_bytes,
    };
    let (doc, touched) = match too_large(store::apply(&state.redis, ws, tid, &write).await?, state)?
    {
        Applied::Ok { doc, touched, .. } => (doc, touched),
        Applied::Missing | Applied::TooLarge(_) => {
            return Err(AccountsError::NotFound(format!("tenant {tid:?} not found")));
        }
    };
    store::update_indexes(&state.redis, ws, tid, doc.is_some(), &[uid.to_string()]).await?;
    if !touched.is_empty() {
        let change = Change {
            tenant_id: tid,
            doc: doc.as_deref(),
            member_user_id: uid,
            member_removed: removing,
            source: "api",
            cause_id: &cause,
        };
        publish(state, ws, change).await;
    }
    Ok(())
}

fn membership_profile(v: Option<&Value>) -> Result<Value, AccountsError> {
    match v {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => Ok(Value::Object(m.clone())),
        Some(_) => Err(AccountsError::Invalid(
            "\"profile\" must be a JSON object".into(),
        )),
    }
}

/// `(tenant id, profile)` pairs from `{"tenants":[…]}` or a bare array (2023 SDK).
fn parse_joins(body: Value, id_keys: &[&str]) -> Result<Vec<(String, Value)>, AccountsError> {
    let list = match body {
        Value::Array(a) => a,
        Value::Object(mut m) => match m.remove("tenants").or_else(|| m.remove("accounts")) {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(AccountsError::Invalid(
                    "request body must be {\"tenants\":[…]} or an array".into(),
                ));
            }
        },
        _ => {
            return Err(AccountsError::Invalid(
                "request body must be {\"tenants\":[…]} or an array".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(AccountsError::Invalid(format!(
                "tenants[{i}] must be an object"
            )));
        };
        let Some(tid) = id_keys
            .iter()
            .find_map(|k| item.get(*k).and_then(Value::as_str))
        else {
            return Err(AccountsError::Invalid(format!(
                "tenants[{i}].tenant_id is required"
            )));
        };
        out.push((tid.to_string(), membership_profile(item.get("profile"))?));
    }
    Ok(out)
}

async fn join_all(
    state: &AppState,
    ws: &str,
    uid: &str,
    joins: Vec<(String, Value)>,
) -> Result<Response, AccountsError> {
    // Check every tenant first, so a typo does not leave half the joins done.
    for (tid, _) in &joins {
        get_tenant_value(state, ws, tid).await?;
    }
    for (tid, profile) in joins {
        set_membership(state, ws, uid, &tid, Some(profile)).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn join_tenants(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, AccountsError> {
    let joins = parse_joins(parse_json(&body)?, &["tenant_id"])?;
    join_all(&state, &ws, &uid, joins).await
}

pub async fn join_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path((uid, tid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AccountsError> {
    let profile = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match parse_json(&body)? {
            Value::Object(m) => membership_profile(m.get("profile"))?,
            _ => {
                return Err(AccountsError::Invalid(
                    "request body must be a JSON object".into(),
                ));
            }
        }
    };
    set_membership(&state, &ws, &uid, &tid, Some(profile)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn leave_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path((uid, tid)): Path<(String, String)>,
) -> Result<Response, AccountsError> {
    set_membership(&state, &ws, &uid, &tid, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn leave_all(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
) -> Result<Response, AccountsError> {
    check_id("user_id", &uid)?;
    let index = store::user_tenants_key(&ws, &uid);
    let mut cursor: Option<String> = None;
    loop {
        let tids = store::range_after(&state.redis, &index, cursor.as_deref(), 200).await?;
        if tids.is_empty() {
            break;
        }
        for tid in &tids {
            set_membership(&state, &ws, &uid, tid, None).await?;
        }
        cursor = tids.last().cloned();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn user_tenants_value(
    state: &AppState,
    ws: &str,
    uid: &str,
    q: &ListQuery,
    path: &str,
) -> Result<Value, AccountsError> {
    check_id("user_id", uid)?;
    let limit = q.limit()?;
    let index = store::user_tenants_key(ws, uid);
    let mut cursor = q.cursor.clone();
    let mut items = Vec::new();
    let mut has_more = false;
    'scan: loop {
        let tids = store::range_after(&state.redis, &index, cursor.as_deref(), 200).await?;
        if tids.is_empty() {
            break;
        }
        for tid in &tids {
            // The index is derived: trust only the tenant's own membership.
            let Some(profile) = store::membership(&state.redis, ws, tid, uid).await? else {
                continue;
            };
            if items.len() == limit {
                has_more = true;
                break 'scan;
            }
            items.push(json!({"tenant_id": tid, "user_id": uid, "profile": profile,
                "type": "user", "__cursor": tid}));
        }
        cursor = tids.last().cloned();
    }
    Ok(list_body(items, has_more, path, q, limit))
}

pub async fn user_tenants(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, AccountsError> {
    let path = format!("/users/{}/tenants", url_encode(&uid));
    Ok(Json(user_tenants_value(&state, &ws, &uid, &q, &path).await?).into_response())
}

async fn user_tenant_value(
    state: &AppState,
    ws: &str,
    uid: &str,
    tid: &str,
) -> Result<Value, AccountsError> {
    match store::membership(&state.redis, ws, tid, uid).await? {
        Some(profile) => {
            Ok(json!({"tenant_id": tid, "user_id": uid, "profile": profile, "type": "user"}))
        }
        None => Err(AccountsError::NotFound(format!(
            "user {uid:?} is not a member of tenant {tid:?}"
        ))),
    }
}

pub async fn user_tenant(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path((uid, tid)): Path<(String, String)>,
) -> Result<Response, AccountsError> {
    Ok(Json(user_tenant_value(&state, &ws, &uid, &tid).await?).into_response())
}

/// The `/accounts` paths of the 2023 private beta: same behaviour, account naming.
pub mod legacy {
    use super::*;

    /// tenant → account naming, recursively on keys and on `type`.
    pub fn rename(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let k = match k.as_str() {
                            "tenant_id" => "account_id".to_string(),
                            "parent_tenant_id" => "parent_account_id".to_string(),
                            _ => k,
                        };
                        let v = if k == "type" && v == "tenant" {
                            Value::from("account")
                        } else if k == "url" || k == "next_url" {
                            match v {
                                Value::String(s) => {
                                    Value::String(s.replacen("/tenants", "/accounts", 2))
                                }
                                other => other,
                            }
                        } else if k == "user_profile" || k == "profile" || k == "properties" {
                            v
                        } else {
                            rename(v)
                        };
                        (k, v)
                    })
                    .collect::<Map<_, _>>(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(rename).collect()),
            other => other,
        }
    }

    pub async fn get_tenant(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path(tid): Path<String>,
    ) -> Result<Response, AccountsError> {
        Ok(Json(rename(get_tenant_value(&state, &ws, &tid).await?)).into_response())
    }

    pub async fn put_tenant(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path(tid): Path<String>,
        body: Bytes,
    ) -> Result<Response, AccountsError> {
        let mut body = parse_json(&body)?;
        if let Some(m) = body.as_object_mut()
            && let Some(p) = m.remove("parent_account_id")
        {
            m.insert("parent_tenant_id".into(), p);
        }
        let value = put_tenant_value(&state, &ws, &tid, body).await?;
        Ok(Json(rename(value)).into_response())
    }

    pub async fn list_tenants(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Query(q): Query<ListQuery>,
    ) -> Result<Response, AccountsError> {
        let v = list_tenants_value(&state, &ws, &q, "/tenants").await?;
        Ok(Json(rename(v)).into_response())
    }

    pub async fn tenant_users(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path(tid): Path<String>,
        Query(q): Query<ListQuery>,
    ) -> Result<Response, AccountsError> {
        let path = format!("/tenants/{}/users", url_encode(&tid));
        let v = tenant_users_value(&state, &ws, &tid, &q, &path).await?;
        Ok(Json(rename(v)).into_response())
    }

    pub async fn user_tenants(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path(uid): Path<String>,
        Query(q): Query<ListQuery>,
    ) -> Result<Response, AccountsError> {
        let path = format!("/users/{}/tenants", url_encode(&uid));
        let v = user_tenants_value(&state, &ws, &uid, &q, &path).await?;
        Ok(Json(rename(v)).into_response())
    }

    pub async fn user_tenant(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path((uid, tid)): Path<(String, String)>,
    ) -> Result<Response, AccountsError> {
        Ok(Json(rename(user_tenant_value(&state, &ws, &uid, &tid).await?)).into_response())
    }

    pub async fn join_tenants(
        State(state): State<AppState>,
        Workspace(ws): Workspace,
        Path(uid): Path<String>,
        body: Bytes,
    ) -> Result<Response, AccountsError> {
        let joins = parse_joins(parse_json(&body)?, &["account_id", "tenant_id"])?;
        join_all(&state, &ws, &uid, joins).await
    }
}
