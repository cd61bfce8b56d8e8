//! Redis keys and records. Every key is `{ws:<ws>}:auto:…` (one cluster slot per workspace,
//! built by `rc_common::keys`),
//! except the scheduler's global due index `rc:automations:due` (members `<ws>/<run id>`) and
//! its claim counts `{rc:automations:due}:claims`.

use rc_common::redis::{Lua, RedisConn};
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
/// Run ids of one filter value, scored by created ms (the list's secondary indexes).
pub fn runs_by_key(ws: &str, filter: RunFilter, value: &str) -> String {
    rc_common::keys::runs_by(ws, filter.as_str(), value)
}
/// Runs in `state`, scored by created ms; a run is in exactly one.
pub fn status_key(ws: &str, state: RunState) -> String {
    runs_by_key(ws, RunFilter::Status, state.as_str())
}
/// Retired runs' filter index keys (hash run id → keys joined by `\n`; escaped keys have no
/// control characters), so pruning a run's retention drops it from every index.
pub fn runs_indexed_key(ws: &str) -> String {
    key(ws, "runs:indexed")
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

/// What the run list filters by: one index per value (`rc_common::keys::runs_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFilter {
    Status,
    Event,
    Recipient,
    Template,
    MessageId,
}

impl RunFilter {
    /// The query parameter and the key component.
    pub fn as_str(self) -> &'static str {
        match self {
            RunFilter::Status => "status",
            RunFilter::Event => "event",
            RunFilter::Recipient => "recipient",
            RunFilter::Template => "template",
            RunFilter::MessageId => "message_id",
        }
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
    /// The filter indexes this run is in besides its status: one per non-empty value (they never
    /// change after creation).
    pub fn filter_keys(&self) -> Vec<String> {
        let recipient = self.recipient();
        [
            (RunFilter::Event, self.event.as_str()),
            (RunFilter::Recipient, recipient.as_str()),
            (RunFilter::Template, self.template.as_str()),
            (RunFilter::MessageId, self.source_message_id.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(f, v)| runs_by_key(&self.workspace, f, v))
        .collect()
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

// ---- run writes: the document and its indexes change together, in one script each --------

/// Lua: `set_status(first, created, id)` puts the run in the status index `KEYS[first]` and, when
/// that changed its status, takes it out of the five others (`KEYS[first + 1 ..= first + 5]`).
macro_rules! set_status {
    () => {
        r"
local function set_status(first, created, id)
  if redis.call('ZADD', KEYS[first], 'NX', created, id) == 1 then
    for i = first + 1, first + 5 do redis.call('ZREM', KEYS[i], id) end
  end
end
"
    };
}

/// KEYS: run, status indexes (current first), run index, token set, then the run's filter
/// indexes. ARGV: run JSON ('' to repair the indexes of an existing run), created ms, run id,
/// '1' when the run has a token. 0 when the run already existed (nothing written).
static INSERT_RUN: Lua = Lua::new(concat!(
    set_status!(),
    r"
if ARGV[1] ~= '' and not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
if ARGV[4] == '1' then redis.call('SADD', KEYS[9], ARGV[3]) end
redis.call('ZADD', KEYS[8], 'NX', ARGV[2], ARGV[3])
for i = 10, #KEYS do redis.call('ZADD', KEYS[i], 'NX', ARGV[2], ARGV[3]) end
set_status(2, ARGV[2], ARGV[3])
return 1
"
));

/// KEYS: run, status indexes (current first). ARGV: run JSON, created ms, run id.
static SAVE_RUN: Lua = Lua::new(concat!(
    set_status!(),
    r"
redis.call('SET', KEYS[1], ARGV[1])
set_status(2, ARGV[2], ARGV[3])
"
));

/// KEYS: run, canceled marker, run index, run expiry index, token set, indexed-keys hash, status
/// indexes (current first). ARGV: run JSON, retention ms, run id, now ms, '1' when the run has a
/// token, created ms, the run's filter index keys joined by `\n`.
/// Prunes at most 100 expired runs per call from every index, so the cost stays bounded. The
/// filter keys read back from the hash share the workspace's slot with the declared keys.
static RETIRE_RUN: Lua = Lua::new(concat!(
    set_status!(),
    r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if ARGV[5] == '1' then redis.call('SREM', KEYS[5], ARGV[3]) end
set_status(7, ARGV[6], ARGV[3])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[6], ARGV[3], ARGV[7]) end
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[4], 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  for i = 7, 12 do redis.call('ZREM', KEYS[i], id) end
  local keys = redis.call('HGET', KEYS[6], id)
  if keys then
    for k in string.gmatch(keys, '[^\n]+') do redis.call('ZREM', k, id) end
    redis.call('HDEL', KEYS[6], id)
  end
end
return #old
"
));

/// Adds the run's status indexes to `script`: its current state's first, then the five others.
fn status_keys(script: &mut redis::ScriptInvocation<'_>, run: &Run) {
    script.key(status_key(&run.workspace, run.state));
    for state in RunState::ALL.into_iter().filter(|s| *s != run.state) {
        script.key(status_key(&run.workspace, state));
    }
}

/// Creates the run with every index entry unless a run with its id exists (true when created).
/// `repair` (an existing, unfinished run) writes only the index entries it may miss.
pub async fn insert_run(redis: &RedisConn, run: &Run, repair: bool) -> redis::RedisResult<bool> {
    let ws = run.workspace.as_str();
    let raw = if repair {
        String::new()
    } else {
        serde_json::to_string(run).expect("run serializes")
    };
    let token = run.cancelation_token.as_deref().unwrap_or("");
    let script = INSERT_RUN.script();
    let mut call = script.key(run_key(ws, &run.id));
    status_keys(&mut call, run);
    call.key(runs_key(ws)).key(token_key(ws, token));
    for k in run.filter_keys() {
        call.key(k);
    }
    let created: i64 = call
        .arg(raw)
        .arg(run.created_at_ms)
        .arg(&run.id)
        .arg(if token.is_empty() { "0" } else { "1" })
        .invoke_async(&mut redis.clone())
        .await?;
    Ok(created == 1)
}

/// Saves a run in progress (a finished run is saved with its retention TTL by [`retire_run`]).
pub async fn save_run(redis: &RedisConn, run: &Run) -> redis::RedisResult<()> {
    let raw = serde_json::to_string(run).expect("run serializes");
    let script = SAVE_RUN.script();
    let mut call = script.key(run_key(&run.workspace, &run.id));
    status_keys(&mut call, run);
    call.arg(raw)
        .arg(run.created_at_ms)
        .arg(&run.id)
        .invoke_async(&mut redis.clone())
        .await
}

/// Saves a finished run with its retention TTL, drops it from its token set, and lets the
/// workspace's indexes forget runs whose retention has passed.
pub async fn retire_run(redis: &RedisConn, run: &Run, retention_ms: i64) -> redis::RedisResult<()> {
    let ws = run.workspace.as_str();
    let raw = serde_json::to_string(run).expect("run serializes");
    let token = run.cancelation_token.as_deref().unwrap_or("");
    let script = RETIRE_RUN.script();
    let mut call = script.key(run_key(ws, &run.id));
    call.key(canceled_key(ws, &run.id))
        .key(runs_key(ws))
        .key(runs_expiry_key(ws))
        .key(token_key(ws, token))
        .key(runs_indexed_key(ws));
    status_keys(&mut call, run);
    call.arg(raw)
        .arg(retention_ms.max(1))
        .arg(&run.id)
        .arg(now_ms())
        .arg(if token.is_empty() { "0" } else { "1" })
        .arg(run.created_at_ms)
        .arg(run.filter_keys().join("\n"))
        .invoke_async::<i64>(&mut redis.clone())
        .await?;
    Ok(())
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
static REPLACE_IF: Lua = Lua::new(
    r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
",
);

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
        let replaced: i64 = REPLACE_IF
            .script()
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
static LINK: Lua = Lua::new(
    r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local list = {}
if raw then list = cjson.decode(raw) end
for _, v in ipairs(list) do if v == ARGV[2] then return 0 end end
table.insert(list, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(list))
return 1
",
);

/// KEYS: mappings hash. ARGV: mapping key, template id. Returns 1 when the id was linked.
static UNLINK: Lua = Lua::new(
    r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local list = cjson.decode(raw)
local out = {}
local found = 0
for _, v in ipairs(list) do if v == ARGV[2] then found = 1 else table.insert(out, v) end end
if #out == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(out)) end
return found
",
);

pub async fn link(
    redis: &RedisConn,
    ws: &str,
    key: &str,
    template: &str,
) -> redis::RedisResult<()> {
    LINK.script()
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
    let found: i64 = UNLINK
        .script()
        .key(mappings_key(ws))
        .arg(key)
        .arg(template)
        .invoke_async(&mut redis.clone())
        .await?;
    Ok(found == 1)
}

// ---- run index --------------------------------------------------------------------------------

/// A created-time window of the run list: `since` inclusive, `until` exclusive (epoch ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Window {
    fn min(&self) -> String {
        self.since.map_or("-inf".into(), |s| s.to_string())
    }
    /// Scores strictly below `bound`.
    fn below(bound: Option<i64>) -> String {
        bound.map_or("+inf".into(), |b| format!("({b}"))
    }
}

/// Up to `n` entries of the run index `key` within `window` older than `(score, id)` (or the
/// newest ones), newest first.
pub async fn index_page(
    redis: &RedisConn,
    key: &str,
    after: Option<&(i64, String)>,
    window: Window,
    n: usize,
) -> redis::RedisResult<Vec<(String, i64)>> {
    let mut conn = redis.clone();
    let mut out = Vec::new();
    let max = match after {
        Some((score, id))
            if window.until.is_none_or(|u| *score < u)
                && window.since.is_none_or(|s| *score >= s) =>
        {
            // Same-millisecond entries not yet seen, then strictly older ones.
            let ties: Vec<String> = conn.zrangebyscore(key, score, score).await?;
            let mut ties: Vec<String> = ties.into_iter().filter(|t| t < id).collect();
            ties.sort_unstable_by(|a, b| b.cmp(a));
            out.extend(ties.into_iter().take(n).map(|t| (t, *score)));
            Window::below(Some(*score))
        }
        Some((score, _)) => Window::below(Some(window.until.map_or(*score, |u| u.min(*score)))),
        None => Window::below(window.until),
    };
    if out.len() < n {
        let more: Vec<(String, f64)> = conn
            .zrevrangebyscore_limit_withscores(key, max, window.min(), 0, (n - out.len()) as isize)
            .await?;
        out.extend(more.into_iter().map(|(id, score)| (id, score as i64)));
    }
    Ok(out)
}

/// Entries of each index key within `window` (one round trip).
pub async fn index_counts(
    redis: &RedisConn,
    keys: &[String],
    window: Window,
) -> redis::RedisResult<Vec<u64>> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.zcount(k, window.min(), Window::below(window.until));
    }
    pipe.query_async(&mut redis.clone()).await
}

/// For each of `ids`: whether it is in every index of `keys` (one round trip).
pub async fn in_all(
    redis: &RedisConn,
    keys: &[String],
    ids: &[&str],
) -> redis::RedisResult<Vec<bool>> {
    let mut keep = vec![true; ids.len()];
    if keys.is_empty() || ids.is_empty() {
        return Ok(keep);
    }
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("ZMSCORE").arg(k).arg(ids);
    }
    let scores: Vec<Vec<Option<f64>>> = pipe.query_async(&mut redis.clone()).await?;
    for per_key in scores {
        for (k, s) in keep.iter_mut().zip(per_key) {
            *k &= s.is_some();
        }
    }
    Ok(keep)
}

/// The runs of `ids` (None where the document expired).
pub async fn load_runs(
    redis: &RedisConn,
    ws: &str,
    ids: &[&str],
) -> redis::RedisResult<Vec<Option<Run>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| run_key(ws, id)).collect();
    let raws: Vec<Option<String>> = redis.clone().mget(&keys).await?;
    Ok(raws
        .into_iter()
        .map(|r| r.and_then(|r| serde_json::from_str(&r).ok()))
        .collect())
}

/// Drops an expired run from the workspace's index and the index `walked` it was found in
/// (the retire script prunes the rest).
pub async fn forget_run(
    redis: &RedisConn,
    ws: &str,
    walked: &str,
    id: &str,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.zrem(runs_key(ws), id)
        .ignore()
        .zrem(walked, id)
        .ignore();
    pipe.query_async(&mut redis.clone()).await
}

/// True when a cancel of the run was requested (not yet finalized).
pub async fn cancel_requested(redis: &RedisConn, ws: &str, id: &str) -> redis::RedisResult<bool> {
    redis.clone().exists(canceled_key(ws, id)).await
}
