//! Profiles in Redis: per-field last-writer-wins registers, merged atomically by one Lua script.
//!
//! Keys of one user share the hash tag `{ws:<ws>:user:<uid>}` (one Redis Cluster slot), with
//! every id escaped by `rc_common::keys` (which builds them all) so an id can never end the tag:
//! - `…:fields`  hash: field → `<ts ms>|<tiebreak>|<value JSON>` (empty value = tombstone)
//! - `…:reset`   string `<ts ms>|<tiebreak>|<r or d>`: the latest whole-profile replace (`r`) or
//!   delete (`d`); any field write stamped before it is ignored, fields stamped before it were
//!   removed. After a replace with no field the profile exists and is `{}`.
//! - `…:profile` string: the materialized profile (JSON object, keys sorted): **the read
//!   contract** for other services; absent when the profile has no field
//! - `…:idem:<key>` / `…:req:<id>`: markers of applied API idempotency keys / update requests
//! - `{ws:<ws>}:profiles:idem:<key>`: which user owns an API Idempotency-Key in the
//!   workspace, so one key cannot be reused for another user
//!
//! A stamp is `(ts, tiebreak)` compared lexicographically; tiebreaks are 32 lower-case hex
//! digits, so the comparison never depends on Redis's collation locale.

use serde_json::{Map, Value};

use rc_common::lww;
use rc_common::redis::RedisConn;

use rc_common::keys;

/// The read contract: the materialized profile JSON of `uid` in `ws`.
pub use rc_common::keys::user_profile as profile_key;

pub fn fields_key(ws: &str, uid: &str) -> String {
    keys::user(ws, uid, "fields")
}
pub fn reset_key(ws: &str, uid: &str) -> String {
    keys::user(ws, uid, "reset")
}
pub fn idem_key(ws: &str, uid: &str, key: &str) -> String {
    keys::user_marker(ws, uid, "idem", key)
}
/// Workspace-wide claim of an API Idempotency-Key: which user's request owns it.
pub use rc_common::keys::profiles_idempotency_claim as idem_claim_key;

/// Claims `key` for `request` (the escaped user id) in the workspace for `ttl_secs`.
/// Ok(()) when the key is new or already belongs to this user (a retry, which the per-user
/// marker then answers); Err(owner) when another user's request holds it.
pub async fn claim_idempotency_key(
    conn: &RedisConn,
    ws: &str,
    key: &str,
    request: &str,
    ttl_secs: u64,
) -> redis::RedisResult<Result<(), String>> {
    let claim_key = idem_claim_key(ws, key);
    let mut c = conn.clone();
    let claimed: Option<String> = redis::cmd("SET")
        .arg(&claim_key)
        .arg(request)
        .arg("NX")
        .arg("EX")
        .arg(ttl_secs.max(1))
        .query_async(&mut c)
        .await?;
    if claimed.is_some() {
        return Ok(Ok(()));
    }
    let owner: Option<String> = redis::cmd("GET")
        .arg(&claim_key)
        .query_async(&mut c)
        .await?;
    Ok(match owner {
        Some(o) if o != request => Err(o),
        // Ours, or expired in between (the per-user marker still guards the write).
        _ => Ok(()),
    })
}

pub fn request_key(ws: &str, uid: &str, request_id: &str) -> String {
    keys::user_marker(ws, uid, "req", request_id)
}

pub use rc_common::lww::{Reset, Stamp, random_tiebreak, tiebreak};

/// `parse` and `newer` come from [`lww`].
static SCRIPT: lww::Script = lww::Script::new(
    r#"
local fields_key, profile_key, reset_key, mark_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, ts, tb, reset, cond = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local ttl, markval, expect, max = tonumber(ARGV[6]), ARGV[7], ARGV[8], tonumber(ARGV[9])
if ttl > 0 then
  local prev = redis.call('GET', mark_key)
  if prev then return {'dup', prev, 0} end
end
local old = redis.call('GET', profile_key)
if expect ~= '-' then
  if expect == '0' then
    if old then return {'conflict', '', 0} end
  elseif (not old) or ('1' .. old) ~= expect then
    return {'conflict', '', 0}
  end
end
local rts, rtb, rkind = nil, nil, nil
local rs = redis.call('GET', reset_key)
if rs then rts, rtb, rkind = parse(rs) end
local all = redis.call('HGETALL', fields_key)
-- The fields as stored, kept up to date below: the result is built from it (no second HGETALL,
-- no HGET per written field).
local stored = {}
for i = 1, #all, 2 do stored[all[i]] = all[i + 1] end
if mode == 'api' then
  -- API writes happen "now", and after everything already stored.
  local maxts = rts
  for i = 2, #all, 2 do
    local t = parse(all[i])
    if (not maxts) or t > maxts then maxts = t end
  end
  if maxts and ts <= maxts then ts = maxts + 1 end
end
-- Size bound, checked before any write: an upper bound of the materialized profile (what
-- survives a winning reset, or the current profile, plus what each written field can add).
-- Only writes that would grow a profile past `max` are refused; shrinking one always works.
if max > 0 then
  local function grow_bound(base, current)
    for i = 10, #ARGV, 2 do
      local f, v = ARGV[i], ARGV[i + 1]
      if v ~= '' then
        local cv = current and current[f]
        if cv then base = base + math.max(0, #v - #cv) else base = base + #f + #v + 4 end
      end
    end
    return base
  end
  local oldlen = old and #old or 2
  if grow_bound(oldlen, nil) > max then
    local wins = reset ~= '0' and ((not rts) or newer(ts, tb, rts, rtb))
    local base, current = 2, {}
    for i = 1, #all, 2 do
      local t, b, v = parse(all[i + 1])
      if v ~= '' and not (wins and newer(ts, tb, t, b)) then
        current[all[i]] = v
        base = base + #all[i] + #v + 4
      end
    end
    local bound = grow_bound(base, current)
    if bound > max and bound > oldlen then return {'toolarge', tostring(bound), 0} end
  end
end
if reset ~= '0' and ((not rts) or newer(ts, tb, rts, rtb)) then
  rts, rtb, rkind = ts, tb, reset
  redis.call('SET', reset_key, string.format('%d', ts) .. '|' .. tb .. '|' .. reset)
  for i = 1, #all, 2 do
    local t, b = parse(all[i + 1])
    if newer(rts, rtb, t, b) then
      redis.call('HDEL', fields_key, all[i])
      stored[all[i]] = nil
    end
  end
end
local skip_all = (cond == 'init' and old ~= false and old ~= nil)
if not skip_all and not (rts and newer(rts, rtb, ts, tb)) then
  local stamp = string.format('%d', ts) .. '|' .. tb .. '|'
  local writes = {}
  for i = 10, #ARGV, 2 do
    local f, v = ARGV[i], ARGV[i + 1]
    local cur = stored[f]
    local write = true
    if cur then
      local t, b, cv = parse(cur)
      if cond == 'soft' and cv ~= '' then
        write = false
      elseif not newer(ts, tb, t, b) then
        write = false
      end
    end
    if write then
      stored[f] = stamp .. v
      writes[#writes + 1] = f
      writes[#writes + 1] = stored[f]
    end
  end
  -- One HSET for every field written.
  if #writes > 0 then redis.call('HSET', fields_key, unpack(writes)) end
end
local names, values = {}, {}
for n, s in pairs(stored) do
  local _, _, v = parse(s)
  if v ~= '' then
    names[#names + 1] = n
    values[n] = v
  end
end
table.sort(names)
local new = false
if #names > 0 then
  local parts = {}
  for i, n in ipairs(names) do parts[i] = cjson.encode(n) .. ':' .. values[n] end
  new = '{' .. table.concat(parts, ',') .. '}'
  if new ~= old then redis.call('SET', profile_key, new) end
elseif rkind == 'r' then
  -- replaced by an empty profile: it exists, with no field
  new = '{}'
  if new ~= old then redis.call('SET', profile_key, new) end
elseif cond == 'touch' and not (rts and newer(rts, rtb, ts, tb)) then
  -- an identify without traits: the user exists, with no field (unless deleted after it)
  new = '{}'
  if new ~= old then redis.call('SET', profile_key, new) end
elseif old then
  redis.call('DEL', profile_key)
end
if ttl > 0 then redis.call('SET', mark_key, markval, 'EX', ttl) end
local changed = 0
if new ~= old and not (new == false and old == nil) then changed = 1 end
return {'ok', new or '', changed}
"#,
);

/// How values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Every given field, when its stamp wins.
    Set,
    /// Only fields that are absent (or tombstoned) now.
    Soft,
    /// Only when the profile is empty now.
    Init,
    /// No field: create the profile, empty, unless a later delete removed it.
    Touch,
}

/// One atomic write to one profile.
#[derive(Debug, Clone)]
pub struct Write {
    pub stamp: Stamp,
    /// Replace or delete: fields stamped before this write are removed.
    pub reset: Reset,
    pub cond: Cond,
    /// field → Some(value) to set, None to remove.
    pub fields: Vec<(String, Option<Value>)>,
    /// Apply once per marker key (idempotency key / request id), remembering `marker_value`.
    pub marker: Option<(String, u64, String)>,
    /// Compare-and-set on the current profile: Some(None) = must be absent, Some(Some(json)).
    pub expect: Option<Option<String>>,
    /// Refuse the write ([`Applied::TooLarge`]) when it would grow the profile past this many
    /// bytes of JSON; 0: no bound.
    pub max_bytes: usize,
}

impl Write {
    pub fn new(stamp: Stamp, fields: Vec<(String, Option<Value>)>) -> Self {
        Write {
            stamp,
            reset: Reset::None,
            cond: Cond::Set,
            fields,
            marker: None,
            expect: None,
            max_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Applied; the profile after it (None when it has no field) and whether it changed.
    Ok {
        profile: Option<String>,
        changed: bool,
    },
    /// The marker was already there: the stored marker value; nothing was done.
    Duplicate(String),
    /// `expect` did not hold; nothing was done.
    Conflict,
    /// The profile would grow past `max_bytes` (about this many bytes); nothing was done.
    TooLarge(usize),
}

pub fn object_fields(object: &Map<String, Value>) -> Vec<(String, Option<Value>)> {
    object
        .iter()
        .map(|(k, v)| (k.clone(), if v.is_null() { None } else { Some(v.clone()) }))
        .collect()
}

pub async fn apply(
    conn: &RedisConn,
    ws: &str,
    uid: &str,
    write: &Write,
) -> redis::RedisResult<Applied> {
    let mark = match &write.marker {
        Some((key, _, _)) => key.clone(),
        None => keys::user(ws, uid, "nomark"),
    };
    let mut invocation = SCRIPT.invocation(&write.stamp, write.reset);
    invocation
        .key(fields_key(ws, uid))
        .key(profile_key(ws, uid))
        .key(reset_key(ws, uid))
        .key(mark)
        .arg(match write.cond {
            Cond::Set => "set",
            Cond::Soft => "soft",
            Cond::Init => "init",
            Cond::Touch => "touch",
        });
    match &write.marker {
        Some((_, ttl, value)) => invocation.arg(*ttl.max(&1)).arg(value.as_str()),
        None => invocation.arg(0).arg(""),
    };
    match &write.expect {
        None => invocation.arg("-"),
        Some(None) => invocation.arg("0"),
        Some(Some(json)) => invocation.arg(format!("1{json}")),
    };
    invocation.arg(write.max_bytes);
    lww::field_args(&mut invocation, &write.fields);
    let mut conn = conn.clone();
    let (status, body, changed): (String, String, i64) = invocation.invoke_async(&mut conn).await?;
    Ok(match status.as_str() {
        "dup" => Applied::Duplicate(body),
        "conflict" => Applied::Conflict,
        "toolarge" => Applied::TooLarge(body.parse().unwrap_or(0)),
        _ => Applied::Ok {
            profile: (!body.is_empty()).then_some(body),
            changed: changed == 1,
        },
    })
}

/// The materialized profile (the read contract), when there is one.
pub async fn get(conn: &RedisConn, ws: &str, uid: &str) -> redis::RedisResult<Option<String>> {
    let mut conn = conn.clone();
    redis::cmd("GET")
        .arg(profile_key(ws, uid))
        .query_async(&mut conn)
        .await
}
