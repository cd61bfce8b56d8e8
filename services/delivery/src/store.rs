//! The message store in Redis: one hash per message plus its history list and the set of
//! statuses already published, all under the message's hash tag `{ws:<ws>:msg:<id>}` so every
//! transition is one atomic Lua script on one Cluster slot. Listing indexes are sorted sets per
//! workspace (and per recipient), scored by the enqueue time.
//!
//! The per-message state machine (`phase`): `enqueued` → `sending` (claimed with a lease before a
//! provider is called) → `done`, or back to `enqueued` after a retryable provider failure. The
//! customer-visible `status` only moves up in rank; each status's timestamp is set once.

use std::collections::HashMap;

use rc_common::redis::RedisConn;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub fn msg_key(ws: &str, id: &str) -> String {
    format!("{{ws:{ws}:msg:{id}}}")
}
fn history_key(ws: &str, id: &str) -> String {
    format!("{{ws:{ws}:msg:{id}}}:history")
}
fn published_key(ws: &str, id: &str) -> String {
    format!("{{ws:{ws}:msg:{id}}}:published")
}
pub fn index_key(ws: &str) -> String {
    format!("{{ws:{ws}}}:messages")
}
pub fn recipient_index_key(ws: &str, recipient: &str) -> String {
    format!("{{ws:{ws}}}:messages:recipient:{recipient}")
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

pub enum Claim {
    Claimed,
    Done,
    Busy,
    Wait(u64),
    Missing,
}

const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'status', 'ENQUEUED', 'rank', 0, 'enqueued', ARGV[1],
  'phase', 'enqueued', 'providers', '[]', 'attempts', 0)
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"#;

const CLAIM: &str = r#"
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then return 'missing' end
if phase == 'done' then return 'done' end
local now = tonumber(ARGV[1])
if phase == 'sending' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
  if lease > now then return 'busy' end
end
local nb = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0')
if nb > now then return 'wait:' .. tostring(nb - now) end
redis.call('HSET', KEYS[1], 'phase', 'sending', 'lease', tostring(now + tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'ok'
"#;

// ARGV: now, nfields, (field, value)*, nstatus, (status, rank, reason, error, history_json)*
const TRANSITION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local i = 2
local nfields = tonumber(ARGV[i]); i = i + 1
for _ = 1, nfields do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
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
return changed
"#;

#[derive(Clone)]
pub struct Store {
    redis: RedisConn,
    create: Script,
    claim: Script,
    transition: Script,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

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
        }
    }

    pub fn redis(&self) -> RedisConn {
        self.redis.clone()
    }

    /// Creates the message (ENQUEUED) unless it exists; indexes it either way (idempotent).
    pub async fn create(&self, ws: &str, id: &str, meta: &Meta) -> redis::RedisResult<bool> {
        let now = now_ms();
        let mut conn = self.redis.clone();
        let created: i64 = self
            .create
            .key(msg_key(ws, id))
            .key(history_key(ws, id))
            .arg(now)
            .arg(serde_json::to_string(meta).unwrap_or_default())
            .arg(history_entry("ENQUEUED", now, "", ""))
            .invoke_async(&mut conn)
            .await?;
        let enqueued: Option<i64> = conn.hget(msg_key(ws, id), "enqueued").await?;
        let score = enqueued.unwrap_or(now);
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
        Ok(created == 1)
    }

    pub async fn claim(&self, ws: &str, id: &str, lease_ms: u64) -> redis::RedisResult<Claim> {
        let mut conn = self.redis.clone();
        let answer: String = self
            .claim
            .key(msg_key(ws, id))
            .arg(now_ms())
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer.as_str() {
            "ok" => Claim::Claimed,
            "done" => Claim::Done,
            "busy" => Claim::Busy,
            "missing" => Claim::Missing,
            other => Claim::Wait(
                other
                    .strip_prefix("wait:")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1_000),
            ),
        })
    }

    /// Sets `fields` and reaches `statuses` atomically. Returns how many statuses were new.
    pub async fn transition(
        &self,
        ws: &str,
        id: &str,
        fields: &[(&str, String)],
        statuses: &[StatusChange],
    ) -> redis::RedisResult<i64> {
        let now = now_ms();
        let mut conn = self.redis.clone();
        let mut inv = self.transition.key(msg_key(ws, id));
        inv.key(history_key(ws, id)).arg(now).arg(fields.len());
        for (f, v) in fields {
            inv.arg(*f).arg(v);
        }
        inv.arg(statuses.len());
        for s in statuses {
            inv.arg(s.status)
                .arg(rank(s.status).unwrap_or(0))
                .arg(&s.reason)
                .arg(&s.error)
                .arg(history_entry(s.status, now, &s.reason, &s.error));
        }
        inv.invoke_async(&mut conn).await
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
    pub async fn snapshot(
        &self,
        ws: &str,
        id: &str,
    ) -> redis::RedisResult<(Vec<Value>, Vec<String>, Option<Record>)> {
        let mut conn = self.redis.clone();
        let (history, published, map): (Vec<String>, Vec<String>, HashMap<String, String>) =
            redis::pipe()
                .lrange(history_key(ws, id), 0, -1)
                .smembers(published_key(ws, id))
                .hgetall(msg_key(ws, id))
                .query_async(&mut conn)
                .await?;
        let history = history
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect();
        let record = (!map.is_empty()).then(|| Record::from_map(id, map));
        Ok((history, published, record))
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
