//! Courier lists (`/lists`, `/lists/{id}`, `/lists/{id}/subscriptions[/{user_id}]`) in the shapes
//! the Courier Node SDK declares. Keys: [`rc_common::lists`] (automations' `send-list` step reads
//! the subscribers). Bounds: [`MAX_LISTS`] per workspace, [`MAX_SUBSCRIBERS`] per list,
//! [`MAX_RECIPIENTS`] per request, ids and names of at most 1024 characters.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use rc_common::auth::Workspace;
use rc_common::lists::{
    MAX_LISTS, MAX_SUBSCRIBERS, lists_index_key, lists_key, subscribers_key,
    subscription_preferences_key,
};
use rc_common::redis::Lua;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AccountsError, AppState};

/// Recipients one subscription request may name.
pub const MAX_RECIPIENTS: usize = 1_000;
/// Items per listing page.
const PAGE: usize = 100;

fn now() -> (i64, String) {
    let t = time::OffsetDateTime::now_utc();
    let iso = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    ((t.unix_timestamp_nanos() / 1_000_000) as i64, iso)
}

fn check(what: &str, s: &str) -> Result<(), AccountsError> {
    if s.is_empty() || s.chars().count() > 1024 || s.chars().any(char::is_control) {
        return Err(AccountsError::Invalid(format!(
            "{what} must be 1-1024 characters, no control characters"
        )));
    }
    Ok(())
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, AccountsError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AccountsError::Invalid(format!("invalid request body: {e}")))
}

/// `preferences` is kept as given when it is an object (Courier's RecipientPreferences).
fn preferences(p: Option<Value>) -> Result<String, AccountsError> {
    match p {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(AccountsError::Invalid(
            "preferences must be an object".into(),
        )),
    }
}

fn too_many(code: i64) -> AccountsError {
    match code {
        -1 => AccountsError::Invalid(format!("a list has at most {MAX_SUBSCRIBERS} subscribers")),
        _ => AccountsError::Invalid(format!("a workspace has at most {MAX_LISTS} lists")),
    }
}

/// KEYS: lists, index. ARGV: id, now ms, now ISO, name, preferences JSON or "", max lists.
static PUT_LIST: Lua = Lua::new(
    r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local created = ARGV[3]
if old then
  created = cjson.decode(old)['created'] or created
elseif redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  return -2
end
local doc = {id = ARGV[1], name = ARGV[4], created = created, updated = ARGV[3]}
if ARGV[5] ~= '' then doc['preferences'] = cjson.decode(ARGV[5]) end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return 1
",
);

/// KEYS: lists, index, subscribers, preferences. ARGV: list id, now ms, now ISO, mode
/// (`add` | `replace`), max subscribers, max lists, then (user id, preferences JSON or "")
/// pairs. Creates the list (named after its id) when absent, as Courier does.
static SUBSCRIBE: Lua = Lua::new(
    r"
local distinct, new = {}, 0
for i = 7, #ARGV, 2 do
  if not distinct[ARGV[i]] then
    distinct[ARGV[i]] = true
    if ARGV[4] == 'replace' or not redis.call('ZSCORE', KEYS[3], ARGV[i]) then new = new + 1 end
  end
end
local total = new
if ARGV[4] ~= 'replace' then total = total + redis.call('ZCARD', KEYS[3]) end
if total > tonumber(ARGV[5]) then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return -2 end
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({id = ARGV[1], name = ARGV[1], created = ARGV[3], updated = ARGV[3]}))
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
end
if ARGV[4] == 'replace' then redis.call('DEL', KEYS[3], KEYS[4]) end
for i = 7, #ARGV, 2 do
  redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[i])
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[4], ARGV[i])
  else
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  end
end
return new
",
);

async fn subscribe(
    state: &AppState,
    ws: &str,
    list_id: &str,
    mode: &str,
    recipients: &[(String, String)],
) -> Result<(), AccountsError> {
    check("list id", list_id)?;
    if recipients.len() > MAX_RECIPIENTS {
        return Err(AccountsError::Invalid(format!(
            "at most {MAX_RECIPIENTS} recipients per request"
        )));
    }
    let (ms, iso) = now();
    let mut script = SUBSCRIBE.script().prepare_invoke();
    script
        .key(lists_key(ws))
        .key(lists_index_key(ws))
        .key(subscribers_key(ws, list_id))
        .key(subscription_preferences_key(ws, list_id))
        .arg(list_id)
        .arg(ms)
        .arg(&iso)
        .arg(mode)
        .arg(MAX_SUBSCRIBERS)
        .arg(MAX_LISTS);
    for (uid, prefs) in recipients {
        script.arg(uid).arg(prefs);
    }
    let n: i64 = script.invoke_async(&mut state.redis.clone()).await?;
    if n < 0 {
        return Err(too_many(n));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct Cursor {
    cursor: Option<String>,
    pattern: Option<String>,
}

/// A cursor is the offset of the next page in the (creation-ordered) set.
fn offset(cursor: Option<&str>) -> Result<usize, AccountsError> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(0),
        Some(c) => c
            .parse()
            .map_err(|_| AccountsError::Invalid("cursor: not a cursor this API returned".into())),
    }
}

fn paging(next: usize, more: bool) -> Value {
    if more {
        json!({"more": true, "cursor": next.to_string()})
    } else {
        json!({"more": false, "cursor": null})
    }
}

/// `*` matches any run of characters (Courier's list patterns, e.g. `product.*`).
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return s == pattern;
    }
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

pub async fn list_lists(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<Cursor>,
) -> Result<Json<Value>, AccountsError> {
    let mut pos = offset(q.cursor.as_deref())?;
    let mut conn = state.redis.clone();
    let mut items = Vec::new();
    // With a pattern, pages of ids are scanned until a page of matches is found; the scan is
    // bounded by MAX_LISTS.
    loop {
        let ids: Vec<String> = conn
            .zrange(
                lists_index_key(&ws),
                pos as isize,
                (pos + PAGE) as isize - 1,
            )
            .await?;
        let fetched = ids.len();
        let wanted: Vec<&String> = ids
            .iter()
            .filter(|id| q.pattern.as_deref().is_none_or(|p| glob(p, id)))
            .collect();
        if !wanted.is_empty() {
            let docs: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(lists_key(&ws))
                .arg(&wanted)
                .query_async(&mut conn)
                .await?;
            items.extend(
                docs.into_iter()
                    .flatten()
                    .filter_map(|d| serde_json::from_str::<Value>(&d).ok()),
            );
        }
        pos += fetched;
        if fetched < PAGE || !items.is_empty() {
            return Ok(Json(
                json!({"items": items, "paging": paging(pos, fetched == PAGE)}),
            ));
        }
    }
}

pub async fn get_list(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, AccountsError> {
    let doc: Option<String> = state.redis.clone().hget(lists_key(&ws), &id).await?;
    let doc = doc.ok_or_else(|| AccountsError::NotFound(format!("list {id:?} not found")))?;
    serde_json::from_str(&doc)
        .map(Json)
        .map_err(|e| AccountsError::Unavailable(format!("stored list is corrupt: {e}")))
}

#[derive(Deserialize)]
struct PutList {
    name: String,
    #[serde(default)]
    preferences: Option<Value>,
}

pub async fn put_list(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, AccountsError> {
    check("list id", &id)?;
    let b: PutList = body(&bytes)?;
    check("name", &b.name)?;
    let prefs = preferences(b.preferences)?;
    let (ms, iso) = now();
    let n: i64 = PUT_LIST
        .script()
        .key(lists_key(&ws))
        .key(lists_index_key(&ws))
        .arg(&id)
        .arg(ms)
        .arg(&iso)
        .arg(&b.name)
        .arg(prefs)
        .arg(MAX_LISTS)
        .invoke_async(&mut state.redis.clone())
        .await?;
    if n < 0 {
        return Err(too_many(n));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the list and its subscriptions (idempotent: 204 also when it did not exist).
pub async fn delete_list(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<StatusCode, AccountsError> {
    redis::pipe()
        .atomic()
        .hdel(lists_key(&ws), &id)
        .zrem(lists_index_key(&ws), &id)
        .del(subscribers_key(&ws, &id))
        .del(subscription_preferences_key(&ws, &id))
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_subscriptions(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    Query(q): Query<Cursor>,
) -> Result<Json<Value>, AccountsError> {
    let mut conn = state.redis.clone();
    let exists: bool = conn.hexists(lists_key(&ws), &id).await?;
    if !exists {
        return Err(AccountsError::NotFound(format!("list {id:?} not found")));
    }
    let pos = offset(q.cursor.as_deref())?;
    let page: Vec<(String, f64)> = conn
        .zrange_withscores(
            subscribers_key(&ws, &id),
            pos as isize,
            (pos + PAGE) as isize - 1,
        )
        .await?;
    let prefs: Vec<Option<String>> = if page.is_empty() {
        Vec::new()
    } else {
        redis::cmd("HMGET")
            .arg(subscription_preferences_key(&ws, &id))
            .arg(page.iter().map(|(u, _)| u).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?
    };
    let items: Vec<Value> = page
        .iter()
        .zip(prefs)
        .map(|((uid, ms), p)| {
            let created = time::OffsetDateTime::from_unix_timestamp_nanos(*ms as i128 * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
            json!({
                "recipientId": uid,
                "created": created,
                "preferences": p.and_then(|p| serde_json::from_str::<Value>(&p).ok()),
            })
        })
        .collect();
    let more = page.len() == PAGE;
    Ok(Json(
        json!({"items": items, "paging": paging(pos + page.len(), more)}),
    ))
}

#[derive(Deserialize)]
struct Recipients {
    recipients: Vec<Recipient>,
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(rename = "recipientId")]
    recipient_id: String,
    #[serde(default)]
    preferences: Option<Value>,
}

fn recipients(bytes: &[u8]) -> Result<Vec<(String, String)>, AccountsError> {
    let b: Recipients = body(bytes)?;
    b.recipients
        .into_iter()
        .map(|r| {
            check("recipientId", &r.recipient_id)?;
            Ok((r.recipient_id, preferences(r.preferences)?))
        })
        .collect()
}

/// `POST /lists/{id}/subscriptions`: adds recipients, keeping the others.
pub async fn add_subscriptions(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, AccountsError> {
    subscribe(&state, &ws, &id, "add", &recipients(&bytes)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /lists/{id}/subscriptions`: the recipients become the list's only subscribers.
pub async fn replace_subscriptions(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, AccountsError> {
    subscribe(&state, &ws, &id, "replace", &recipients(&bytes)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct SubscribeUser {
    #[serde(default)]
    preferences: Option<Value>,
}

/// `PUT /lists/{id}/subscriptions/{user_id}` (the body, `{preferences?}`, may be empty).
pub async fn subscribe_user(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path((id, user)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<StatusCode, AccountsError> {
    check("user id", &user)?;
    let b: SubscribeUser = if bytes.iter().all(u8::is_ascii_whitespace) {
        SubscribeUser::default()
    } else {
        body(&bytes)?
    };
    let prefs = preferences(b.preferences)?;
    subscribe(&state, &ws, &id, "add", &[(user, prefs)]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /lists/{id}/subscriptions/{user_id}` (idempotent).
pub async fn unsubscribe_user(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, AccountsError> {
    redis::pipe()
        .atomic()
        .zrem(subscribers_key(&ws, &id), &user)
        .hdel(subscription_preferences_key(&ws, &id), &user)
        .query_async::<()>(&mut state.redis.clone())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn patterns() {
        assert!(glob("product.*", "product.launch"));
        assert!(!glob("product.*", "news.launch"));
        assert!(glob("*.launch", "product.launch"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
    }
}
