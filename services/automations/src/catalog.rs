//! The received-events catalog (Courier Studio's "destination events" page): one entry per
//! track event name, per page / screen name, and per identify / group / alias type, updated by the EVENTS consumer, counted once
//! per message id (a marker with expiry makes redelivery a no-op).
//!
//! Keys: `{ws:<ws>}:auto:catalog` (entry key → JSON {first, last, payload}),
//! `{ws:<ws>}:auto:catalog:count` (entry key → count), `{ws:<ws>}:auto:catalog:failed` (entry
//! key → refused events), `{ws:<ws>}:auto:catalog:index` (zset by last time),
//! `{ws:<ws>}:auto:seen:<message id>` (marker, 24 h).

use rc_common::redis::RedisConn;
use rc_proto::EventType;
use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::store::{self, key};

/// Entry (and mapping) key: `<type>:<name>` for a named track, page or screen event (a page or
/// screen without a name is plain `page` / `screen`), else the type: `identify`, `group`, `alias`.
pub fn entry_key(kind: EventType, name: &str) -> String {
    let token = kind.subject_token();
    if kind.is_named() && !name.is_empty() {
        let mut key = String::with_capacity(token.len() + 1 + name.len());
        key.push_str(token);
        key.push(':');
        key.push_str(name);
        key
    } else {
        token.to_string()
    }
}

/// The key a mapping request or a catalog lookup names: `event` alone is a track event name;
/// `type` alone is that type (for page / screen: the unnamed ones); both name a track, page or
/// screen event.
pub fn request_key(event: Option<&str>, kind: Option<&str>) -> Result<String, String> {
    let kind = match kind {
        None => EventType::Track,
        Some(k) => {
            EventType::from_name(k).ok_or_else(|| format!("type: unknown event type {k:?}"))?
        }
    };
    match event.filter(|e| !e.is_empty()) {
        Some(e) if kind.is_named() => Ok(entry_key(kind, e)),
        Some(_) => Err(format!(
            "event: {} events have no name; give only `type`",
            kind.subject_token()
        )),
        None if kind == EventType::Track => Err(
            "event: required for track (or give `type`: identify, group, page, screen, alias)"
                .into(),
        ),
        None => Ok(entry_key(kind, "")),
    }
}

/// A catalog path segment: a full entry key (`page:Home`, `alias`, …) or a bare track name.
pub fn path_key(segment: &str) -> String {
    let (head, _) = segment.split_once(':').unwrap_or((segment, ""));
    match EventType::from_name(head) {
        Some(t) if t != EventType::Unspecified && head == t.subject_token() => segment.to_string(),
        _ => entry_key(EventType::Track, segment),
    }
}

/// KEYS: seen marker, entries, counts, index, failure counts. ARGV: entry, at ms, payload,
/// failure reason ("" when the event was fine), message id.
const RECORD: &str = r"
local prev = redis.call('GET', KEYS[1])
local mark = '1'
if ARGV[4] ~= '' then mark = 'f' end
-- Seen before: a no-op, except a refused event now accepted (replayed from the dead-letter
-- subject after a fix), which clears the failed status without counting the event again.
if prev and not (prev == 'f' and mark == '1') then return 0 end
redis.call('SET', KEYS[1], mark, 'EX', 86400)
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if prev then
  if raw then
    local old = cjson.decode(raw)
    local err = old['last_error']
    if type(err) == 'table' and err['message_id'] == ARGV[5] then
      old['last_status'] = 'ok'
      redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(old))
    end
  end
  return 0
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
local first = ARGV[2]
local last_error = nil
if raw then
  local old = cjson.decode(raw)
  if old['first_ms'] and tonumber(old['first_ms']) < tonumber(first) then first = old['first_ms'] end
  last_error = old['last_error']
end
local status = 'ok'
if ARGV[4] ~= '' then
  status = 'failed'
  last_error = {reason = ARGV[4], message_id = ARGV[5], at_ms = tonumber(ARGV[2])}
  redis.call('HINCRBY', KEYS[5], ARGV[1], 1)
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({first_ms = tonumber(first), last_ms = tonumber(ARGV[2]), payload = ARGV[3], last_status = status, last_error = last_error}))
redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
return n
";

/// Counts the event once per message id; `failure` marks it as refused (the reason is shown
/// as the entry's `last_error`, and the entry's `status` is `failed` until a good one arrives).
pub async fn record(
    redis: &RedisConn,
    ws: &str,
    message_id: &str,
    entry: &str,
    at_ms: i64,
    payload: &str,
    failure: Option<&str>,
) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    redis::Script::new(RECORD)
        .key(rc_common::keys::automations_of(ws, "seen", message_id, ""))
        .key(key(ws, "catalog"))
        .key(key(ws, "catalog:count"))
        .key(key(ws, "catalog:index"))
        .key(key(ws, "catalog:failed"))
        .arg(entry)
        .arg(at_ms)
        .arg(payload)
        .arg(failure.unwrap_or(""))
        .arg(message_id)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
}

async fn view(redis: &RedisConn, ws: &str, entry: &str, raw: Value) -> redis::RedisResult<Value> {
    let count: Option<i64> = redis.clone().hget(key(ws, "catalog:count"), entry).await?;
    let failed: Option<i64> = redis.clone().hget(key(ws, "catalog:failed"), entry).await?;
    let linked: Vec<String> = store::hget_json(redis, &store::mappings_key(ws), entry)
        .await?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut automations = Vec::new();
    for id in &linked {
        let t = store::hget_json(redis, &store::templates_key(ws), id).await?;
        automations.push(match t {
            Some(t) => json!({"id": id, "name": t.get("name"), "status": "ok"}),
            None => json!({"id": id, "status": "missing"}),
        });
    }
    let (kind, name) = match entry.split_once(':') {
        Some((k, n)) => (k.to_string(), n.to_string()),
        None => (entry.to_string(), entry.to_string()),
    };
    let payload = raw
        .get("payload")
        .and_then(Value::as_str)
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .unwrap_or(Value::Null);
    Ok(json!({
        "key": entry,
        "type": kind,
        "event": name,
        "count": count.unwrap_or(0),
        "first_received_at": raw.get("first_ms").and_then(Value::as_i64).map(store::iso),
        "last_received_at": raw.get("last_ms").and_then(Value::as_i64).map(store::iso),
        "last_payload": payload,
        "mapped": !linked.is_empty(),
        // `failed` when the last event of this entry was refused (dead-lettered).
        "status": raw.get("last_status").and_then(Value::as_str).unwrap_or("ok"),
        "failed_count": failed.unwrap_or(0),
        "last_error": raw.get("last_error").filter(|e| e.is_object()).map(|e| json!({
            "reason": e.get("reason"),
            "message_id": e.get("message_id"),
            "received_at": e.get("at_ms").and_then(Value::as_i64).map(store::iso),
        })),
        "automations": automations,
    }))
}

pub async fn get(redis: &RedisConn, ws: &str, entry: &str) -> redis::RedisResult<Option<Value>> {
    match store::hget_json(redis, &key(ws, "catalog"), entry).await? {
        None => Ok(None),
        Some(raw) => Ok(Some(view(redis, ws, entry, raw).await?)),
    }
}

/// Where a page ends: the last entry's `last_ms` and key. As a `next` cursor: `<last_ms>:<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub last_ms: i64,
    pub key: String,
}

impl Cursor {
    pub fn parse(raw: &str) -> Result<Cursor, String> {
        raw.split_once(':')
            .and_then(|(ms, key)| {
                Some(Cursor {
                    last_ms: ms.parse().ok()?,
                    key: key.to_string(),
                })
            })
            .ok_or_else(|| "cursor must be a previous page's `next`".to_string())
    }

    pub fn encode(&self) -> String {
        format!("{}:{}", self.last_ms, self.key)
    }
}

/// One page, newest last-received first (ties by key, descending), after `after`; with
/// `mapped_first`, mapped events sort before unmapped ones inside the page (as Studio shows).
/// A keyset cursor: entries arriving meanwhile never shift or repeat the later pages (an entry
/// received again while a client pages moves to the head, where the next first page shows it).
/// Returns the page and the cursor of the next one.
pub async fn page(
    redis: &RedisConn,
    ws: &str,
    mapped_first: bool,
    after: Option<&Cursor>,
    limit: usize,
) -> redis::RedisResult<(Vec<Value>, Option<Cursor>)> {
    let index = key(ws, "catalog:index");
    let max = after.map_or("+inf".to_string(), |c| c.last_ms.to_string());
    // One more than the page: whether a next page exists.
    let batch = limit + 1;
    let mut keys: Vec<(String, i64)> = Vec::with_capacity(batch);
    let mut offset = 0;
    loop {
        let chunk: Vec<(String, f64)> = redis
            .clone()
            .zrevrangebyscore_limit_withscores(&index, &max, "-inf", offset, batch as isize)
            .await?;
        let fetched = chunk.len();
        for (member, score) in chunk {
            let ms = score as i64;
            // Entries of the cursor's own millisecond up to the cursor were on earlier pages.
            if after.is_some_and(|c| ms == c.last_ms && member.as_str() >= c.key.as_str()) {
                continue;
            }
            keys.push((member, ms));
            if keys.len() == batch {
                break;
            }
        }
        if keys.len() == batch || fetched < batch {
            break;
        }
        offset += fetched as isize;
    }
    let next = (keys.len() > limit).then(|| {
        keys.truncate(limit);
        keys.last().map(|(k, ms)| Cursor {
            last_ms: *ms,
            key: k.clone(),
        })
    });
    let mut out = Vec::with_capacity(keys.len());
    for (k, _) in &keys {
        if let Some(v) = get(redis, ws, k).await? {
            out.push(v);
        }
    }
    if mapped_first {
        // Stable: keeps newest-first inside each group.
        out.sort_by_key(|v| !v.get("mapped").and_then(Value::as_bool).unwrap_or(false));
    }
    Ok((out, next.flatten()))
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_round_trip_keys_with_colons() {
        let c = Cursor {
            last_ms: 1_772_442_011_000,
            key: "page:Home: a:b".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Ok(c));
        for bad in ["", "abc", "12", "x:track:a"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
