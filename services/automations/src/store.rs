//! Redis keys and records. Every key is `{ws:<ws>}:auto:…` (one cluster slot per workspace,
//! built by `rc_common::keys`),
//! except the scheduler's global due index `rc:automations:due` (members `<ws>/<run id>`) and
//! its claim counts `{rc:automations:due}:claims`.

use rc_common::redis::RedisConn;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use rc_common::keys::automations_of;
/// Claims per due member since its last clean execution (hash; its hash tag is the due key's
/// name, so both share a cluster slot for the claim script).
pub use rc_common::keys::{
    AUTOMATIONS_DUE as DUE_KEY, AUTOMATIONS_DUE_CLAIMS as CLAIMS_KEY, automations as key,
    notification_templates as notifications_key, user_profile as profile_key,
};

pub fn templates_key(ws: &str) -> String {
    key(ws, "templates")
}
pub fn mappings_key(ws: &str) -> String {
    key(ws, "mappings")
}
pub fn run_key(ws: &str, id: &str) -> String {
    automations_of(ws, "run", id, "")
}
pub fn canceled_key(ws: &str, id: &str) -> String {
    automations_of(ws, "run", id, ":canceled")
}
/// Run index of a workspace: zset, score = created epoch ms (listing, newest first).
pub fn runs_key(ws: &str) -> String {
    key(ws, "runs")
}
/// Finished runs of a workspace: zset, score = epoch ms when the run document expires
/// (lets the index drop them; the documents themselves carry a TTL).
pub fn runs_expiry_key(ws: &str) -> String {
    key(ws, "runs:expiry")
}
pub fn token_key(ws: &str, token: &str) -> String {
    automations_of(ws, "token", token, "")
}
pub fn due_member(ws: &str, run_id: &str) -> String {
    format!("{ws}/{run_id}")
}

pub use rc_common::clock::now_ms;
pub fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// 32 hex characters of SHA-256 over the parts (deterministic ids).
pub fn derive_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}
pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Where a run is (the wire strings of `state` in run documents, events and the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Pending,
    Running,
    Waiting,
    Completed,
    Failed,
    Canceled,
}

impl RunState {
    pub const ALL: [RunState; 6] = [
        RunState::Pending,
        RunState::Running,
        RunState::Waiting,
        RunState::Completed,
        RunState::Failed,
        RunState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Waiting => "waiting",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Failed | RunState::Canceled
        )
    }
}

/// What happened to a step (timeline entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Done,
    Skipped,
    Waiting,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub index: usize,
    pub action: String,
    pub status: StepStatus,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub workspace: String,
    pub state: RunState,
    /// Automation template id; empty for ad-hoc runs.
    pub template: String,
    pub steps: Vec<Value>,
    pub cancelation_token: Option<String>,
    /// The run context (`refs`): data, profile, brand, template, recipient and step refs.
    pub context: Value,
    /// Next step to execute.
    pub step: usize,
    pub wake_at_ms: Option<i64>,
    pub event: String,
    pub source_message_id: String,
    pub timeline: Vec<TimelineEntry>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub error: Option<String>,
    /// Invoke nesting: 0 for a run started by an event or the API, parent + 1 for `invoke`.
    #[serde(default)]
    pub depth: u32,
    /// Executions of the current step that ended transiently (fetch-data: the endpoint was
    /// unavailable); sets how long the run waits before the next. Zero once a step is done.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Run {
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
    pub fn recipient(&self) -> String {
        self.context
            .get("recipient")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
    /// The list view (`GET /automations/runs`): no context or timeline.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "runId": self.id,
            "state": self.state,
            "template": self.template,
            "recipient": self.recipient(),
            "event": self.event,
            "source_message_id": self.source_message_id,
            "step": self.step,
            "steps": self.steps.len(),
            "wake_at": self.wake_at_ms.map(iso),
            "created_at": iso(self.created_at_ms),
            "updated_at": iso(self.updated_at_ms),
            "error": self.error,
        })
    }
    /// The public view (`GET /automations/runs/{id}`).
    pub fn view(&self, canceled_flag: bool) -> Value {
        serde_json::json!({
            "runId": self.id,
            "state": self.state,
            "template": self.template,
            "recipient": self.recipient(),
            "event": self.event,
            "source_message_id": self.source_message_id,
            "cancelation_token": self.cancelation_token,
            "step": self.step,
            "steps": self.steps.len(),
            "wake_at": self.wake_at_ms.map(iso),
            "created_at": iso(self.created_at_ms),
            "updated_at": iso(self.updated_at_ms),
            "started_at": self.started_at_ms.map(iso),
            "error": self.error,
            // Cancel requested, not yet finalized (within one scheduler poll).
            "cancel_requested": canceled_flag && !self.is_terminal(),
            "context": self.context,
            "timeline": self.timeline,
        })
    }
}

pub async fn load_run(redis: &RedisConn, ws: &str, id: &str) -> redis::RedisResult<Option<Run>> {
    let raw: Option<String> = redis.clone().get(run_key(ws, id)).await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// Saves a run in progress (a finished run is saved with its retention TTL by the engine's
/// `retire`).
pub async fn save_run(redis: &RedisConn, run: &Run) -> redis::RedisResult<()> {
    let raw = serde_json::to_string(run).expect("run serializes");
    redis
        .clone()
        .set::<_, _, ()>(run_key(&run.workspace, &run.id), raw)
        .await
}

pub async fn hget_json(
    redis: &RedisConn,
    key: &str,
    field: &str,
) -> redis::RedisResult<Option<Value>> {
    let raw: Option<String> = redis.clone().hget(key, field).await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

pub async fn hall_json(redis: &RedisConn, key: &str) -> redis::RedisResult<Vec<(String, Value)>> {
    let all: Vec<(String, String)> = redis.clone().hgetall(key).await?;
    Ok(all
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v)))
        .collect())
}

// ---- documents by id (automation and notification templates) ---------------------------------

/// Every document of the hash at `key`, sorted by id.
pub async fn list_docs(redis: &RedisConn, key: &str) -> redis::RedisResult<Vec<Value>> {
    let mut all: Vec<Value> = hall_json(redis, key)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(all)
}

/// Stores `doc` under `id` unless that id exists; true when stored.
pub async fn create_doc(
    redis: &RedisConn,
    key: &str,
    id: &str,
    doc: &Value,
) -> redis::RedisResult<bool> {
    redis.clone().hset_nx(key, id, doc.to_string()).await
}

pub async fn put_doc(
    redis: &RedisConn,
    key: &str,
    id: &str,
    doc: &Value,
) -> redis::RedisResult<()> {
    redis.clone().hset(key, id, doc.to_string()).await
}

/// True when there was a document to delete.
pub async fn delete_doc(redis: &RedisConn, key: &str, id: &str) -> redis::RedisResult<bool> {
    let n: i64 = redis.clone().hdel(key, id).await?;
    Ok(n > 0)
}

pub async fn doc_exists(redis: &RedisConn, key: &str, id: &str) -> redis::RedisResult<bool> {
    redis.clone().hexists(key, id).await
}

/// KEYS: hash. ARGV: field, expected JSON, new JSON. Replaces the field only if it still
/// holds what was read (a concurrent PUT wins).
const REPLACE_IF: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

/// Gives automation template `id` the mapping `key` as its `trigger` unless it has one.
/// False when the template does not exist.
pub async fn add_trigger(
    redis: &RedisConn,
    ws: &str,
    id: &str,
    key: &str,
) -> redis::RedisResult<bool> {
    let hash = templates_key(ws);
    let mut conn = redis.clone();
    // A concurrent write between the read and the replace: read again (bounded).
    for _ in 0..5 {
        let Some(raw): Option<String> = conn.hget(&hash, id).await? else {
            return Ok(false);
        };
        let Ok(mut doc) = serde_json::from_str::<Value>(&raw) else {
            return Ok(true);
        };
        if doc.get("trigger").is_some_and(|t| !t.is_null()) || !doc.is_object() {
            return Ok(true);
        }
        doc["trigger"] = Value::from(key);
        let replaced: i64 = redis::Script::new(REPLACE_IF)
            .key(&hash)
            .arg(id)
            .arg(&raw)
            .arg(doc.to_string())
            .invoke_async(&mut conn)
            .await?;
        if replaced == 1 {
            break;
        }
    }
    Ok(true)
}

// ---- mappings ---------------------------------------------------------------------------------

/// KEYS: mappings hash. ARGV: mapping key, template id. Adds the id to the key's list once.
const LINK: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local list = {}
if raw then list = cjson.decode(raw) end
for _, v in ipairs(list) do if v == ARGV[2] then return 0 end end
table.insert(list, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(list))
return 1
";

/// KEYS: mappings hash. ARGV: mapping key, template id. Returns 1 when the id was linked.
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

pub async fn link(
    redis: &RedisConn,
    ws: &str,
    key: &str,
    template: &str,
) -> redis::RedisResult<()> {
    redis::Script::new(LINK)
        .key(mappings_key(ws))
        .arg(key)
        .arg(template)
        .invoke_async::<i64>(&mut redis.clone())
        .await?;
    Ok(())
}

/// True when the template was linked to the key.
pub async fn unlink(
    redis: &RedisConn,
    ws: &str,
    key: &str,
    template: &str,
) -> redis::RedisResult<bool> {
    let found: i64 = redis::Script::new(UNLINK)
        .key(mappings_key(ws))
        .arg(key)
        .arg(template)
        .invoke_async(&mut redis.clone())
        .await?;
    Ok(found == 1)
}

// ---- run index --------------------------------------------------------------------------------

/// Up to `n` run index entries older than `(score, id)` (or the newest ones), newest first.
pub async fn runs_page(
    redis: &RedisConn,
    ws: &str,
    after: Option<&(i64, String)>,
    n: usize,
) -> redis::RedisResult<Vec<(String, i64)>> {
    let key = runs_key(ws);
    let mut conn = redis.clone();
    let mut out = Vec::new();
    let max = match after {
        None => "+inf".to_string(),
        Some((score, id)) => {
            // Same-millisecond entries not yet seen, then strictly older ones.
            let ties: Vec<String> = conn.zrangebyscore(&key, score, score).await?;
            let mut ties: Vec<String> = ties.into_iter().filter(|t| t < id).collect();
            ties.sort_unstable_by(|a, b| b.cmp(a));
            out.extend(ties.into_iter().take(n).map(|t| (t, *score)));
            format!("({score}")
        }
    };
    if out.len() < n {
        let more: Vec<(String, f64)> = conn
            .zrevrangebyscore_limit_withscores(&key, max, "-inf", 0, (n - out.len()) as isize)
            .await?;
        out.extend(more.into_iter().map(|(id, score)| (id, score as i64)));
    }
    Ok(out)
}

/// The runs of `ids` (None where the document expired).
pub async fn load_runs(
    redis: &RedisConn,
    ws: &str,
    ids: &[&str],
) -> redis::RedisResult<Vec<Option<Run>>> {
    let keys: Vec<String> = ids.iter().map(|id| run_key(ws, id)).collect();
    let raws: Vec<Option<String>> = redis.clone().mget(&keys).await?;
    Ok(raws
        .into_iter()
        .map(|r| r.and_then(|r| serde_json::from_str(&r).ok()))
        .collect())
}

/// Drops an expired run from the workspace's index.
pub async fn forget_run(redis: &RedisConn, ws: &str, id: &str) -> redis::RedisResult<()> {
    redis.clone().zrem(runs_key(ws), id).await
}

/// True when a cancel of the run was requested (not yet finalized).
pub async fn cancel_requested(redis: &RedisConn, ws: &str, id: &str) -> redis::RedisResult<bool> {
    redis.clone().exists(canceled_key(ws, id)).await
}
