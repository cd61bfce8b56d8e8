//! The received-events catalog (Courier Studio's "destination events" page): one entry per
//! track event name, per page / screen name, and per identify / group / alias type, updated by the EVENTS consumer, counted once
//! per message id (a marker with expiry makes redelivery a no-op).
//!
//! Accepted events are not written one by one: [`Tally`] gathers them in memory per workspace
//! and entry and [`Tally::flush`] writes them every [`FLUSH_INTERVAL`] with one script per
//! workspace, all pipelined (the per-event round trip cost more than the rest of an identify).
//! The markers are still set (in the flush), so a redelivery never counts twice. Counts are
//! observability, not effects: an event acked before its flush is not counted if automations
//! crashes in that second (a graceful shutdown flushes). Refused events are written at once,
//! after a flush, so the entry's status follows the events' order.
//!
//! Keys: `{ws:<ws>}:auto:catalog` (entry key → JSON {first, last, payload}),
//! `{ws:<ws>}:auto:catalog:count` (entry key → count), `{ws:<ws>}:auto:catalog:failed` (entry
//! key → refused events), `{ws:<ws>}:auto:catalog:index` (zset by last time),
//! `{ws:<ws>}:auto:seen:<message id>` (marker, 24 h).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rc_common::redis::{Lua, RedisConn};
use rc_common::shutdown::Shutdown;
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
static RECORD: Lua = Lua::new(
    r"
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
",
);

/// An event as the catalog counts it: its workspace, message id, entry key, time and raw JSON.
#[derive(Clone, Copy)]
pub struct Received<'a> {
    pub ws: &'a str,
    pub message_id: &'a str,
    pub entry: &'a str,
    pub at_ms: i64,
    pub payload: &'a str,
}

/// Counts the event once per message id; `failure` marks it as refused (the reason is shown
/// as the entry's `last_error`, and the entry's `status` is `failed` until a good one arrives).
pub async fn record(
    redis: &RedisConn,
    event: &Received<'_>,
    failure: Option<&str>,
) -> redis::RedisResult<()> {
    let Received {
        ws,
        message_id,
        entry,
        at_ms,
        payload,
    } = *event;
    let mut conn = redis.clone();
    RECORD
        .script()
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

/// How often gathered counts are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Events gathered before a handler writes them itself (and waits): bounds the memory held.
const MAX_PENDING: usize = 10_000;

/// An entry's accepted events waiting for the flush: the earliest time, and the latest event.
struct Pending {
    first_ms: i64,
    last_ms: i64,
    payload: String,
}

/// A workspace's waiting events: its entries (and where each is), and each message id with its
/// entry's index.
#[derive(Default)]
struct Waiting {
    entries: Vec<(String, Pending)>,
    index: HashMap<String, usize>,
    messages: Vec<(usize, String)>,
}

impl Waiting {
    fn add(&mut self, entry: &str, message_id: String, at_ms: i64, payload: &str) {
        let i = match self.index.get(entry) {
            Some(&i) => {
                let p = &mut self.entries[i].1;
                p.first_ms = p.first_ms.min(at_ms);
                p.last_ms = at_ms;
                payload.clone_into(&mut p.payload);
                i
            }
            None => self.put(
                entry.to_string(),
                Pending {
                    first_ms: at_ms,
                    last_ms: at_ms,
                    payload: payload.to_string(),
                },
            ),
        };
        self.messages.push((i, message_id));
    }

    /// Adds `p` as the entry's latest events; returns the entry's index.
    fn put(&mut self, entry: String, p: Pending) -> usize {
        match self.index.get(&entry) {
            Some(&i) => {
                let old = &mut self.entries[i].1;
                old.first_ms = old.first_ms.min(p.first_ms);
                old.last_ms = p.last_ms;
                old.payload = p.payload;
                i
            }
            None => {
                self.index.insert(entry.clone(), self.entries.len());
                self.entries.push((entry, p));
                self.entries.len() - 1
            }
        }
    }

    /// Puts back an older batch that could not be written: its events come first.
    fn merge_older(&mut self, older: Waiting) {
        let newer = std::mem::replace(self, older);
        let moved: Vec<usize> = newer
            .entries
            .into_iter()
            .map(|(entry, p)| self.put(entry, p))
            .collect();
        self.messages
            .extend(newer.messages.into_iter().map(|(i, id)| (moved[i], id)));
    }
}

/// Accepted events gathered in memory until the next flush (see the module docs).
#[derive(Default)]
pub struct Tally {
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Serialises flushes, so a batch put back after a failure stays ahead of later ones.
    flushing: tokio::sync::Mutex<()>,
}

impl Tally {
    /// Gathers an accepted event; writes everything at once (waiting) past [`MAX_PENDING`].
    pub async fn add(&self, redis: &RedisConn, e: &Received<'_>) -> redis::RedisResult<()> {
        let pending = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let w = match waiting.get_mut(e.ws) {
                Some(w) => w,
                None => waiting.entry(e.ws.to_string()).or_default(),
            };
            w.add(e.entry, e.message_id.to_string(), e.at_ms, e.payload);
            waiting.values().map(|w| w.messages.len()).sum::<usize>()
        };
        if pending >= MAX_PENDING {
            self.flush(redis).await?;
        }
        Ok(())
    }

    /// Writes every gathered event: one script per workspace, in one pipeline. On failure the
    /// events are kept for the next flush.
    pub async fn flush(&self, redis: &RedisConn) -> redis::RedisResult<()> {
        let _one = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let script = RECORD_BATCH.script();
        let mut pipe = redis::pipe();
        for (ws, w) in &batch {
            let mut inv = script.prepare_invoke();
            inv.key(key(ws, "catalog"))
                .key(key(ws, "catalog:count"))
                .key(key(ws, "catalog:index"))
                .arg(w.entries.len());
            for (entry, p) in &w.entries {
                inv.arg(entry)
                    .arg(p.first_ms)
                    .arg(p.last_ms)
                    .arg(&p.payload);
            }
            for (i, id) in &w.messages {
                inv.key(rc_common::keys::automations_of(ws, "seen", id, ""))
                    .arg(i + 1)
                    .arg(id);
            }
            pipe.invoke_script(&inv).ignore();
        }
        let mut conn = redis.clone();
        let mut sent = pipe.query_async::<()>(&mut conn).await;
        // A pipeline does not load its script (a new or restarted Redis): load it, send again.
        if sent
            .as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            sent = match script.load_async(&mut conn).await {
                Ok(_) => pipe.query_async::<()>(&mut conn).await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = sent {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for (ws, older) in batch {
                waiting.entry(ws).or_default().merge_older(older);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Flushes `tally` every [`FLUSH_INTERVAL`] until shutdown (the consumer's task flushes last,
/// after its final acks).
pub async fn flush_every(tally: std::sync::Arc<Tally>, redis: RedisConn, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.triggered() => return,
        }
        if let Err(e) = tally.flush(&redis).await {
            tracing::warn!(error = %e, "Catalog counts not written; kept for the next flush");
        }
    }
}

/// KEYS: entries, counts, index, then one seen marker per message. ARGV: the number of entries
/// n, n × (entry, first ms, last ms, payload), then per message (its entry's 1-based index,
/// message id). Counts each message not seen before, as RECORD does for one.
static RECORD_BATCH: Lua = Lua::new(
    r"
local n = tonumber(ARGV[1])
local counted = {}
for k = 4, #KEYS do
  local a = 2 + 4 * n + 2 * (k - 4)
  local e = tonumber(ARGV[a])
  local prev = redis.call('GET', KEYS[k])
  if prev ~= '1' then redis.call('SET', KEYS[k], '1', 'EX', 86400) end
  if not prev then
    counted[e] = (counted[e] or 0) + 1
  elseif prev == 'f' then
    -- A refused event now accepted: clears the failed status without counting it again.
    local entry = ARGV[2 + 4 * (e - 1)]
    local raw = redis.call('HGET', KEYS[1], entry)
    if raw then
      local old = cjson.decode(raw)
      local err = old['last_error']
      if type(err) == 'table' and err['message_id'] == ARGV[a + 1] then
        old['last_status'] = 'ok'
        redis.call('HSET', KEYS[1], entry, cjson.encode(old))
      end
    end
  end
end
for e, c in pairs(counted) do
  local b = 2 + 4 * (e - 1)
  local entry = ARGV[b]
  redis.call('HINCRBY', KEYS[2], entry, c)
  local first = tonumber(ARGV[b + 1])
  local last = tonumber(ARGV[b + 2])
  local last_error = nil
  local raw = redis.call('HGET', KEYS[1], entry)
  if raw then
    local old = cjson.decode(raw)
    if old['first_ms'] and tonumber(old['first_ms']) < first then first = tonumber(old['first_ms']) end
    last_error = old['last_error']
  end
  redis.call('HSET', KEYS[1], entry, cjson.encode({first_ms = first, last_ms = last, payload = ARGV[b + 3], last_status = 'ok', last_error = last_error}))
  redis.call('ZADD', KEYS[3], last, entry)
end
return 0
",
);

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
    use super::{Cursor, Waiting};

    #[test]
    fn a_batch_put_back_stays_ahead_of_later_events() {
        let mut older = Waiting::default();
        older.add("track:A", "m1".into(), 10, "a1");
        older.add("identify", "m2".into(), 20, "i1");
        let mut now = Waiting::default();
        now.add("identify", "m3".into(), 5, "i2");
        now.add("track:B", "m4".into(), 40, "b1");
        now.merge_older(older);
        let ids: Vec<(&str, &str)> = now
            .messages
            .iter()
            .map(|(i, id)| (now.entries[*i].0.as_str(), id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("track:A", "m1"),
                ("identify", "m2"),
                ("identify", "m3"),
                ("track:B", "m4")
            ]
        );
        let identify = &now.entries[now.index["identify"]].1;
        // The earliest time of both; the latest event is the newer batch's.
        assert_eq!((identify.first_ms, identify.last_ms), (5, 5));
        assert_eq!(identify.payload, "i2");
    }

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
