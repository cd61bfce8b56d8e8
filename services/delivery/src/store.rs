//! The message store in Redis: one hash per message plus its history list and the set of
//! statuses already published, all under the message's hash tag `{ws:<ws>:msg:<id>}` so every
//! transition is one atomic Lua script on one Cluster slot. Listing indexes are sorted sets per
//! workspace (and per recipient), scored by the enqueue time.
//!
//! The per-message state machine (`phase`): `enqueued` → `sending` (claimed with a lease before a
//! provider is called) → `done`, or `scheduled` after a retryable failure (or while its workspace
//! is at its in-flight cap): the request is kept in the hash (`request`, base64) and the id sits
//! in the workspace's due index until a worker claims it again. The customer-visible `status`
//! only moves up in rank; each status's timestamp is set once.

use std::collections::HashMap;

use rc_common::redis::RedisConn;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Keys (all built by `rc_common::keys`): accounts' read contract `tenant_members_key` (zset
/// of user ids) and profiles' `profile_key` (a user's profile document) included; `due_key` is
/// a workspace's retry index: zset of message ids, score = epoch ms when the message is due (a
/// claimed one is pushed to the end of its lease, so a crashed claimer's work comes back).
pub use rc_common::keys::{
    delivery_due as due_key, messages_by_recipient as recipient_index_key,
    messages_index as index_key, tenant_members as tenant_members_key, user_profile as profile_key,
};

pub fn msg_key(ws: &str, id: &str) -> String {
    rc_common::keys::message(ws, id, "")
}
fn history_key(ws: &str, id: &str) -> String {
    rc_common::keys::message(ws, id, ":history")
}
fn published_key(ws: &str, id: &str) -> String {
    rc_common::keys::message(ws, id, ":published")
}
/// Which workspaces have retries due: zset of workspace ids, score ≤ the earliest due time in
/// that workspace's `due_key` (a hint kept by `Store::schedule` and `Store::claim_due`). The only
/// key shared by all workspaces; it holds one member per workspace with pending retries.
pub fn due_workspaces_key() -> &'static str {
    rc_common::keys::DELIVERY_DUE_WORKSPACES
}

/// Courier statuses we produce, with their rank: a status never replaces one of higher rank.
/// OPENED/CLICKED may arrive before DELIVERED; a bounce (UNDELIVERABLE) overrides SENT and
/// DELIVERED but not an open or click; failures before sending are final.
pub fn rank(status: &str) -> Option<i64> {
    Some(match status {
        "ENQUEUED" => 0,
        "SENT" => 10,
        "DELIVERED" => 20,
        "UNDELIVERABLE" => 25,
        "OPENED" => 30,
        "CLICKED" => 40,
        "UNROUTABLE" | "UNMAPPED" | "CANCELED" => 50,
        _ => return None,
    })
}

pub const TIMESTAMP_FIELDS: [&str; 5] = ["enqueued", "sent", "delivered", "opened", "clicked"];

/// Static facts about a message, written once at creation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub recipient: String,
    pub event: String,
    pub notification: String,
    pub run_id: String,
    pub tenant_id: String,
    pub automation_template: String,
    pub brand: String,
}

/// One provider attempt as shown in `providers[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProviderEntry {
    pub channel: String,
    pub provider: String,
    pub provider_type: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub attempts: u32,
}

/// A status to reach in a transition.
pub struct StatusChange {
    pub status: &'static str,
    pub reason: String,
    pub error: String,
}

impl StatusChange {
    pub fn plain(status: &'static str) -> Self {
        Self {
            status,
            reason: String::new(),
            error: String::new(),
        }
    }
}

/// A message's history, the statuses already published, and its record.
pub type Snapshot = (Vec<Value>, Vec<String>, Option<Record>);

fn parse_snapshot(
    id: &str,
    history: Vec<String>,
    published: Vec<String>,
    map: HashMap<String, String>,
) -> Snapshot {
    let history = history
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    let record = (!map.is_empty()).then(|| Record::from_map(id, map));
    (history, published, record)
}

pub enum Claim {
    /// The lease is this worker's; the record as the claim left it.
    Claimed(Box<Record>),
    Done,
    /// Another worker holds the send lease until this epoch ms.
    Busy(i64),
    /// Not due before this epoch ms (a scheduled retry).
    Wait(i64),
    Missing,
}

// ARGV: now, meta, history entry, lease ms ('' = create unclaimed). A new message given a lease
// is created already claimed (`sending`), as CLAIM would leave it. Returns {1 when created, the
// enqueued ms}.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'enqueued') or ARGV[1])}
end
local fields = {'meta', ARGV[2], 'status', 'ENQUEUED', 'rank', 0, 'enqueued', ARGV[1],
  'providers', '[]', 'phase', 'enqueued', 'attempts', 0}
if ARGV[4] ~= '' then
  fields[12], fields[14] = 'sending', 1
  table.insert(fields, 'lease')
  table.insert(fields, tostring(tonumber(ARGV[1]) + tonumber(ARGV[4])))
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('RPUSH', KEYS[2], ARGV[3])
return {1, tonumber(ARGV[1])}
"#;

// Phases: enqueued (new), scheduled (a retry in the due index), sending (leased), done.
const CLAIM: &str = r#"
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then return 'missing' end
if phase == 'done' then return 'done' end
local now = tonumber(ARGV[1])
if phase == 'sending' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
  if lease > now then return 'busy:' .. tostring(lease) end
end
local nb = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0')
if nb > now then return 'wait:' .. tostring(nb) end
redis.call('HSET', KEYS[1], 'phase', 'sending', 'lease', tostring(now + tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
-- The claimed record itself (field, value pairs), so the sender needs no second read.
return redis.call('HGETALL', KEYS[1])
"#;

// KEYS: message, history[, published]. ARGV: now, nfields, (field, value)*, ndel, field*, nstatus,
//       (status, rank, reason, error, history_json)*
// Returns how many statuses were new; given the published set, also what `publish_pending`
// reads (history, published, record), so the worker publishes without reading back.
const TRANSITION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local i = 2
local nfields = tonumber(ARGV[i]); i = i + 1
for _ = 1, nfields do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
end
local ndel = tonumber(ARGV[i]); i = i + 1
for _ = 1, ndel do
  redis.call('HDEL', KEYS[1], ARGV[i]); i = i + 1
end
local nstatus = tonumber(ARGV[i]); i = i + 1
local changed = 0
for _ = 1, nstatus do
  local status, rank, reason, err, hist = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if redis.call('HSETNX', KEYS[1], string.lower(status), ARGV[1]) == 1 then
    redis.call('RPUSH', KEYS[2], hist)
    changed = changed + 1
  end
  local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
  if rank > current then
    redis.call('HSET', KEYS[1], 'status', status, 'rank', rank)
    if reason ~= '' then redis.call('HSET', KEYS[1], 'reason', reason) end
    if err ~= '' then redis.call('HSET', KEYS[1], 'error', err) end
  end
end
if KEYS[3] then
  return {changed, redis.call('LRANGE', KEYS[2], 0, -1), redis.call('SMEMBERS', KEYS[3]),
    redis.call('HGETALL', KEYS[1])}
end
return changed
"#;

// Hands a message to the due index: keeps the request (ARGV[2], when given) for the retry and,
// unless a worker holds the send lease (it re-indexes at the lease's end), marks it scheduled.
// A message already done is left alone.
const SCHEDULE: &str = r#"
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then return 'missing' end
if phase == 'done' then return 'done' end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'request', ARGV[2]) end
if phase ~= 'sending' then
  redis.call('HSET', KEYS[1], 'phase', 'scheduled', 'not_before', ARGV[1])
end
return 'ok'
"#;

// Claims up to ARGV[3] due ids of one workspace, pushing each to now + lease (ARGV[2]); returns
// the ids and then the earliest remaining score (or nothing when the index is empty).
const CLAIM_DUE: &str = r#"
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), m)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then table.insert(due, first[2]) else table.insert(due, '') end
return due
"#;

#[derive(Clone)]
pub struct Store {
    redis: RedisConn,
    create: Script,
    claim: Script,
    transition: Script,
    schedule: Script,
    claim_due: Script,
}

pub use rc_common::clock::now_ms;

fn history_entry(status: &str, at: i64, reason: &str, error: &str) -> String {
    let mut v = json!({"status": status, "at": at});
    if !reason.is_empty() {
        v["reason"] = json!(reason);
    }
    if !error.is_empty() {
        v["error"] = json!(error);
    }
    v.to_string()
}

impl Store {
    pub fn new(redis: RedisConn) -> Self {
        Self {
            redis,
            create: Script::new(CREATE),
            claim: Script::new(CLAIM),
            transition: Script::new(TRANSITION),
            schedule: Script::new(SCHEDULE),
            claim_due: Script::new(CLAIM_DUE),
        }
    }

    pub fn redis(&self) -> RedisConn {
        self.redis.clone()
    }

    /// Creates the message (ENQUEUED) unless it exists; indexes it either way (idempotent).
    pub async fn create(&self, ws: &str, id: &str, meta: &Meta) -> redis::RedisResult<bool> {
        Ok(self.insert(ws, id, meta, None).await?.is_some())
    }

    /// [`Store::create`], and a message this call creates is claimed for `lease_ms` in the same
    /// script (the record as [`Store::claim`] would answer it); `None` when it existed.
    pub async fn create_claimed(
        &self,
        ws: &str,
        id: &str,
        meta: &Meta,
        lease_ms: u64,
    ) -> redis::RedisResult<Option<Box<Record>>> {
        self.insert(ws, id, meta, Some(lease_ms)).await
    }

    async fn insert(
        &self,
        ws: &str,
        id: &str,
        meta: &Meta,
        lease_ms: Option<u64>,
    ) -> redis::RedisResult<Option<Box<Record>>> {
        let now = now_ms();
        let mut conn = self.redis.clone();
        let (created, score): (i64, i64) = self
            .create
            .key(msg_key(ws, id))
            .key(history_key(ws, id))
            .arg(now)
            .arg(serde_json::to_string(meta).unwrap_or_default())
            .arg(history_entry("ENQUEUED", now, "", ""))
            .arg(lease_ms.map(|l| l.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(index_key(ws))
            .arg("NX")
            .arg(score)
            .arg(id)
            .ignore();
        if !meta.recipient.is_empty() {
            pipe.cmd("ZADD")
                .arg(recipient_index_key(ws, &meta.recipient))
                .arg("NX")
                .arg(score)
                .arg(id)
                .ignore();
        }
        // Not atomic across the two index keys (different slots): each ZADD NX is idempotent.
        let _: () = pipe.query_async(&mut conn).await?;
        Ok((created == 1).then(|| {
            Box::new(Record {
                id: id.to_string(),
                meta: meta.clone(),
                status: "ENQUEUED".into(),
                phase: if lease_ms.is_some() {
                    "sending"
                } else {
                    "enqueued"
                }
                .into(),
                reason: String::new(),
                error: String::new(),
                providers: Vec::new(),
                timestamps: HashMap::from([("enqueued".to_string(), now)]),
                claims: u32::from(lease_ms.is_some()),
            })
        }))
    }

    pub async fn claim(&self, ws: &str, id: &str, lease_ms: u64) -> redis::RedisResult<Claim> {
        let mut conn = self.redis.clone();
        let reply: redis::Value = self
            .claim
            .key(msg_key(ws, id))
            .arg(now_ms())
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        let answer: String = match reply {
            // Claimed: the record's fields (a status answer is a string).
            redis::Value::Array(_) => {
                let map: HashMap<String, String> = redis::from_redis_value(reply)?;
                return Ok(Claim::Claimed(Box::new(Record::from_map(id, map))));
            }
            other => redis::from_redis_value(other)?,
        };
        let at = |prefix: &str| {
            answer
                .strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(now_ms)
        };
        Ok(match answer.as_str() {
            "done" => Claim::Done,
            "missing" => Claim::Missing,
            a if a.starts_with("busy:") => Claim::Busy(at("busy:")),
            _ => Claim::Wait(at("wait:")),
        })
    }

    /// Sets `fields` and reaches `statuses` atomically. Returns how many statuses were new.
    pub async fn transition(
        &self,
        ws: &str,
        id: &str,
        fields: &[(&str, String)],
        delete: &[&str],
        statuses: &[StatusChange],
    ) -> redis::RedisResult<i64> {
        self.transition_call(ws, id, fields, delete, statuses, false)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// [`Store::transition`], answering the message as [`Store::snapshot`] reads it after.
    pub async fn transition_snapshot(
        &self,
        ws: &str,
        id: &str,
        fields: &[(&str, String)],
        delete: &[&str],
        statuses: &[StatusChange],
    ) -> redis::RedisResult<Snapshot> {
        let reply: redis::Value = self
            .transition_call(ws, id, fields, delete, statuses, true)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if let redis::Value::Int(_) = reply {
            // -1: the message is gone.
            return Ok((Vec::new(), Vec::new(), None));
        }
        let (_, history, published, map): (i64, Vec<String>, Vec<String>, HashMap<String, String>) =
            redis::from_redis_value(reply)?;
        Ok(parse_snapshot(id, history, published, map))
    }

    /// TRANSITION's keys and arguments; `snapshot` adds the published set, so it answers the
    /// snapshot too.
    fn transition_call(
        &self,
        ws: &str,
        id: &str,
        fields: &[(&str, String)],
        delete: &[&str],
        statuses: &[StatusChange],
        snapshot: bool,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.transition.key(msg_key(ws, id));
        inv.key(history_key(ws, id));
        if snapshot {
            inv.key(published_key(ws, id));
        }
        let now = now_ms();
        inv.arg(now).arg(fields.len());
        for (f, v) in fields {
            inv.arg(*f).arg(v);
        }
        inv.arg(delete.len());
        for f in delete {
            inv.arg(*f);
        }
        inv.arg(statuses.len());
        for s in statuses {
            inv.arg(s.status)
                .arg(rank(s.status).unwrap_or(0))
                .arg(&s.reason)
                .arg(&s.error)
                .arg(history_entry(s.status, now, &s.reason, &s.error));
        }
        inv
    }

    /// Puts the message in its workspace's due index at `due` (epoch ms), keeping `request` (the
    /// encoded `MessageRequest`) for the retry. Returns false when the message is already done
    /// or gone (nothing to retry). Three single-key writes on two slots, in an order that a
    /// crash between them cannot lose: the message first (a redelivered request re-indexes it),
    /// then the due index, then the workspace hint (`due_workspaces_key`).
    pub async fn schedule(
        &self,
        ws: &str,
        id: &str,
        request: Option<&[u8]>,
        due: i64,
    ) -> redis::RedisResult<bool> {
        use base64::Engine as _;
        let mut conn = self.redis.clone();
        // base64: the hash is read as text (`load`).
        let request = request
            .map(|r| base64::engine::general_purpose::STANDARD.encode(r))
            .unwrap_or_default();
        let answer: String = self
            .schedule
            .key(msg_key(ws, id))
            .arg(due)
            .arg(request)
            .invoke_async(&mut conn)
            .await?;
        if answer != "ok" {
            return Ok(false);
        }
        let _: () = conn.zadd(due_key(ws), id, due).await?;
        // LT: only ever moves the hint earlier (and adds it when missing).
        let _: () = redis::cmd("ZADD")
            .arg(due_workspaces_key())
            .arg("LT")
            .arg(due)
            .arg(ws)
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// Workspaces with retries due by `now`, at most `max`.
    pub async fn due_workspaces(&self, now: i64, max: usize) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.redis.clone();
        conn.zrangebyscore_limit(due_workspaces_key(), "-inf", now, 0, max as isize)
            .await
    }

    /// Claims up to `max` due messages of `ws` for `lease_ms` and refreshes the workspace's hint
    /// to its earliest remaining due time (removed when none). The hint is re-read and lowered
    /// once more, so a retry scheduled between the claim and the refresh is never hidden.
    pub async fn claim_due(
        &self,
        ws: &str,
        max: usize,
        lease_ms: u64,
        now: i64,
    ) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.redis.clone();
        let mut ids: Vec<String> = self
            .claim_due
            .key(due_key(ws))
            .arg(now)
            .arg(lease_ms)
            .arg(max)
            .invoke_async(&mut conn)
            .await?;
        let earliest = ids.pop().and_then(|s| s.parse::<f64>().ok());
        self.set_hint(ws, earliest, false).await?;
        let again: Vec<(String, f64)> = conn.zrange_withscores(due_key(ws), 0, 0).await?;
        let again = again.first().map(|(_, s)| *s);
        if again.is_some() && again != earliest {
            self.set_hint(ws, again, true).await?;
        }
        Ok(ids)
    }

    /// Pushes a workspace's hint to `at` (it is at its in-flight cap: look again then).
    pub async fn defer_workspace(&self, ws: &str, at: i64) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("ZADD")
            .arg(due_workspaces_key())
            .arg("XX")
            .arg(at)
            .arg(ws)
            .query_async(&mut conn)
            .await
    }

    async fn set_hint(
        &self,
        ws: &str,
        at: Option<f64>,
        only_lower: bool,
    ) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        match at {
            None => conn.zrem(due_workspaces_key(), ws).await,
            Some(at) => {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(due_workspaces_key());
                if only_lower {
                    cmd.arg("LT");
                }
                cmd.arg(at).arg(ws).query_async(&mut conn).await
            }
        }
    }

    /// Drops a message from its workspace's due index (it is done, or gone).
    pub async fn unschedule(&self, ws: &str, id: &str) -> redis::RedisResult<()> {
        self.redis.clone().zrem(due_key(ws), id).await
    }

    /// The request kept for a scheduled retry.
    pub async fn request(&self, ws: &str, id: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        use base64::Engine as _;
        let stored: Option<String> = self.redis.clone().hget(msg_key(ws, id), "request").await?;
        Ok(stored.and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()))
    }

    pub async fn load(&self, ws: &str, id: &str) -> redis::RedisResult<Option<Record>> {
        let mut conn = self.redis.clone();
        let map: HashMap<String, String> = conn.hgetall(msg_key(ws, id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(Record::from_map(id, map)))
    }

    /// History, published statuses and the record in one round trip (same slot).
    pub async fn snapshot(&self, ws: &str, id: &str) -> redis::RedisResult<Snapshot> {
        let mut conn = self.redis.clone();
        let (history, published, map): (Vec<String>, Vec<String>, HashMap<String, String>) =
            redis::pipe()
                .lrange(history_key(ws, id), 0, -1)
                .smembers(published_key(ws, id))
                .hgetall(msg_key(ws, id))
                .query_async(&mut conn)
                .await?;
        Ok(parse_snapshot(id, history, published, map))
    }

    pub async fn history(&self, ws: &str, id: &str) -> redis::RedisResult<Vec<Value>> {
        let mut conn = self.redis.clone();
        let items: Vec<String> = conn.lrange(history_key(ws, id), 0, -1).await?;
        Ok(items
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }

    pub async fn published(&self, ws: &str, id: &str) -> redis::RedisResult<Vec<String>> {
        self.redis.clone().smembers(published_key(ws, id)).await
    }

    pub async fn mark_published(
        &self,
        ws: &str,
        id: &str,
        statuses: &[String],
    ) -> redis::RedisResult<()> {
        self.redis
            .clone()
            .sadd(published_key(ws, id), statuses)
            .await
    }

    /// Newest-first page of message ids from an index, after `cursor` (`<score>:<id>`).
    pub async fn page(
        &self,
        key: &str,
        cursor: Option<(i64, String)>,
        count: usize,
        offset: usize,
    ) -> redis::RedisResult<Vec<(String, i64)>> {
        let mut conn = self.redis.clone();
        let max = cursor
            .as_ref()
            .map(|(s, _)| s.to_string())
            .unwrap_or_else(|| "+inf".into());
        let items: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(key)
            .arg(max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(items)
    }
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub meta: Meta,
    pub status: String,
    pub phase: String,
    pub reason: String,
    pub error: String,
    pub providers: Vec<ProviderEntry>,
    pub timestamps: HashMap<String, i64>,
    /// Times the message was claimed for sending (provider calls or not).
    pub claims: u32,
}

impl Record {
    fn from_map(id: &str, mut map: HashMap<String, String>) -> Self {
        let mut take = |k: &str| map.remove(k).unwrap_or_default();
        let meta = serde_json::from_str(&take("meta")).unwrap_or_default();
        let providers = serde_json::from_str(&take("providers")).unwrap_or_default();
        let status = take("status");
        let phase = take("phase");
        let reason = take("reason");
        let error = take("error");
        let claims = take("attempts").parse().unwrap_or(0);
        let mut timestamps = HashMap::new();
        for status in [
            "enqueued",
            "sent",
            "delivered",
            "opened",
            "clicked",
            "undeliverable",
            "unroutable",
            "unmapped",
            "canceled",
        ] {
            if let Some(v) = map.get(status).and_then(|v| v.parse().ok()) {
                timestamps.insert(status.to_string(), v);
            }
        }
        Record {
            id: id.to_string(),
            meta,
            status,
            phase,
            reason,
            error,
            providers,
            timestamps,
            claims,
        }
    }

    pub fn ts(&self, status: &str) -> i64 {
        self.timestamps
            .get(&status.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// The provider that represents the message: the first that sent it, else the first tried.
    pub fn main_provider(&self) -> Option<&ProviderEntry> {
        self.providers
            .iter()
            .find(|p| p.sent.is_some())
            .or_else(|| self.providers.first())
    }

    /// Courier's message shape.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "status": self.status,
            "recipient": self.meta.recipient,
            "event": self.meta.event,
            "notification": self.meta.notification,
            "run_id": self.meta.run_id,
            "tenant_id": self.meta.tenant_id,
            "providers": self.providers,
        });
        for f in TIMESTAMP_FIELDS {
            if let Some(t) = self.timestamps.get(f) {
                v[f] = json!(t);
            }
        }
        if !self.reason.is_empty() {
            v["reason"] = json!(self.reason);
        }
        if !self.error.is_empty() {
            v["error"] = json!(self.error);
        }
        v
    }
}
