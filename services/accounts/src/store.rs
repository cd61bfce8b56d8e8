//! Tenants and memberships in Redis: per-field last-writer-wins registers merged atomically by
//! one Lua script, as in the profiles service.
//!
//! Keys of one tenant share the hash tag `{ws:<ws>:tenant:<tid>}` (every id escaped by
//! `rc_common::keys`, which builds them all):
//! - `…:fields` hash: `t:<name>` (name, parent_tenant_id, brand_id, default_preferences,
//!   user_profile), `p:<key>` (properties), `x:seen` (the tenant exists); each
//!   `<ts>|<tiebreak>|<JSON or empty>`
//! - `…:mfields` hash: `<user id>` → a membership, the same register (value = the member's
//!   tenant profile). Apart from the fields so that a group event reads and rebuilds only the
//!   tenant's own fields, not every member (with members in `…:fields`, a tenant of 1,000
//!   members cost ~1.4 ms of redis-server per group event).
//! - `…:reset` / `…:mreset`: latest replace-or-delete of the tenant fields / delete of the members
//! - `…:doc`: the tenant JSON (**read contract**), absent when the tenant does not exist
//! - `…:members`: sorted set, score 0, of member user ids (**read contract**)
//!
//! Derived indexes (other slots, written after the tenant, filtered on read):
//! - `{ws:<ws>}:tenants`: sorted set, score 0, of tenant ids (listing)
//! - `{ws:<ws>:member:<uid>}:tenants`: sorted set, score 0, of a user's tenant ids

use serde_json::Value;

use rc_common::lww;
use rc_common::redis::RedisConn;

use rc_common::keys::{self, tenant};

pub use rc_common::keys::{
    member_tenants as user_tenants_key, tenant_members as members_key,
    tenants_index as tenants_index_key,
};

pub fn doc_key(ws: &str, tid: &str) -> String {
    tenant(ws, tid, "doc")
}
pub fn fields_key(ws: &str, tid: &str) -> String {
    tenant(ws, tid, "fields")
}
pub fn member_fields_key(ws: &str, tid: &str) -> String {
    tenant(ws, tid, "mfields")
}

pub use rc_common::lww::{Reset, Stamp, random_tiebreak, tiebreak};

/// `parse` and `newer` come from [`lww`]; `reset` (`0`, `r`: fields, `d`: fields and members).
static SCRIPT: lww::Script = lww::Script::new(
    r#"
local fields_key, doc_key, reset_key, mreset_key, members_key, mfields_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local mode, ts, tb, reset, tid_json, need = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max = tonumber(ARGV[7])
local old = redis.call('GET', doc_key)
if need == '1' and not old then return {'missing', '', 0} end
local rts, rtb, mts, mtb
local r = redis.call('GET', reset_key)
if r then rts, rtb = parse(r) end
r = redis.call('GET', mreset_key)
if r then mts, mtb = parse(r) end
local all = redis.call('HGETALL', fields_key)
-- The fields as stored, kept up to date below: the document is built from it (no second
-- HGETALL, no HGET per written field).
local stored = {}
for i = 1, #all, 2 do stored[all[i]] = all[i + 1] end
if mode == 'api' then
  local maxts = rts
  if mts and ((not maxts) or mts > maxts) then maxts = mts end
  for i = 2, #all, 2 do
    local t = parse(all[i])
    if (not maxts) or t > maxts then maxts = t end
  end
  if maxts and ts <= maxts then ts = maxts + 1 end
end
-- Size bound, checked before any write: an upper bound of the tenant document (what survives
-- a winning reset, or the current document, plus what each written field can add); a
-- membership profile is bounded on its own. Only growth past `max` is refused.
if max > 0 then
  local function grow(base, current)
    for i = 8, #ARGV, 2 do
      local f, v = ARGV[i], ARGV[i + 1]
      if string.sub(f, 1, 2) == 'm:' then
        if #v > max then return #v end
      elseif v ~= '' then
        local cv = current and current[f]
        if cv then base = base + math.max(0, #v - #cv) else base = base + #f + #v + 4 end
      end
    end
    return base
  end
  local oldlen = old and #old or 0
  local bound = grow(oldlen, nil)
  if bound > max then
    local wins = reset ~= '0' and ((not rts) or newer(ts, tb, rts, rtb))
    local base, current = 160 + 2 * #tid_json, {}
    for i = 1, #all, 2 do
      local f = all[i]
      if string.sub(f, 1, 2) ~= 'm:' then
        local t, b, v = parse(all[i + 1])
        if v ~= '' and not (wins and newer(ts, tb, t, b)) then
          current[f] = v
          base = base + #f + #v + 4
        end
      end
    end
    bound = grow(base, current)
    if bound > max and bound > oldlen then return {'toolarge', tostring(bound), 0} end
  end
end
local stamp = string.format('%d', ts) .. '|' .. tb
local touched = {}
if reset ~= '0' then
  if (not rts) or newer(ts, tb, rts, rtb) then
    rts, rtb = ts, tb
    redis.call('SET', reset_key, stamp)
  end
  if reset == 'd' and ((not mts) or newer(ts, tb, mts, mtb)) then
    mts, mtb = ts, tb
    redis.call('SET', mreset_key, stamp)
  end
  for i = 1, #all, 2 do
    local f = all[i]
    local t, b = parse(all[i + 1])
    if rts and newer(rts, rtb, t, b) then
      redis.call('HDEL', fields_key, f)
      stored[f] = nil
    end
  end
  -- Members only on a replace or delete (rare): every membership stamped before the last
  -- delete goes.
  if mts then
    local ms = redis.call('HGETALL', mfields_key)
    for i = 1, #ms, 2 do
      local t, b = parse(ms[i + 1])
      if newer(mts, mtb, t, b) then
        redis.call('HDEL', mfields_key, ms[i])
        redis.call('ZREM', members_key, ms[i])
        touched[#touched + 1] = ms[i]
      end
    end
  end
end
for i = 8, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local is_m = string.sub(f, 1, 2) == 'm:'
  local floor_t, floor_b = rts, rtb
  if is_m then floor_t, floor_b = mts, mtb end
  if not (floor_t and newer(floor_t, floor_b, ts, tb)) then
    local uid = is_m and string.sub(f, 3)
    local cur
    if is_m then cur = redis.call('HGET', mfields_key, uid) else cur = stored[f] end
    local write = true
    if cur then
      local t, b = parse(cur)
      write = newer(ts, tb, t, b)
    end
    if write then
      local reg = stamp .. '|' .. v
      if is_m then
        redis.call('HSET', mfields_key, uid, reg)
        if v ~= '' then redis.call('ZADD', members_key, 0, uid) else redis.call('ZREM', members_key, uid) end
        touched[#touched + 1] = uid
      else
        stored[f] = reg
        redis.call('HSET', fields_key, f, reg)
      end
    end
  end
end
local top, props, pnames, seen = {}, {}, {}, false
for f, s in pairs(stored) do
  local _, _, v = parse(s)
  if v ~= '' then
    local p = string.sub(f, 1, 2)
    if p == 't:' then top[string.sub(f, 3)] = v; seen = true
    elseif p == 'p:' then props[string.sub(f, 3)] = v; pnames[#pnames + 1] = string.sub(f, 3); seen = true
    elseif p == 'x:' then seen = true end
  end
end
local new = false
if seen then
  table.sort(pnames)
  local pp = {}
  for i, n in ipairs(pnames) do pp[i] = cjson.encode(n) .. ':' .. props[n] end
  local parts = {'"id":' .. tid_json, '"name":' .. (top['name'] or tid_json)}
  for _, k in ipairs({'parent_tenant_id', 'brand_id', 'default_preferences', 'user_profile'}) do
    parts[#parts + 1] = '"' .. k .. '":' .. (top[k] or 'null')
  end
  parts[#parts + 1] = '"properties":{' .. table.concat(pp, ',') .. '}'
  parts[#parts + 1] = '"type":"tenant"'
  new = '{' .. table.concat(parts, ',') .. '}'
  if new ~= old then redis.call('SET', doc_key, new) end
elseif old then
  redis.call('DEL', doc_key)
end
local changed = 0
if new ~= old then changed = 1 end
local out = {'ok', new or '', changed}
for _, u in ipairs(touched) do out[#out + 1] = u end
return out
"#,
);

#[derive(Debug, Clone)]
pub struct Write {
    pub stamp: Stamp,
    pub reset: Reset,
    /// Fail with `Missing` unless the tenant exists.
    pub require_existing: bool,
    pub fields: Vec<(String, Option<Value>)>,
    /// Refuse ([`Applied::TooLarge`]) a write that would grow the tenant document, or a
    /// membership profile, past this many bytes of JSON; 0: no bound.
    pub max_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Ok {
        doc: Option<String>,
        changed: bool,
        /// Members whose membership was written or removed.
        touched: Vec<String>,
    },
    Missing,
    /// Past `max_bytes` (about this many bytes); nothing was done.
    TooLarge(usize),
}

pub async fn apply(
    conn: &RedisConn,
    ws: &str,
    tid: &str,
    write: &Write,
) -> redis::RedisResult<Applied> {
    let mut inv = SCRIPT.invocation(&write.stamp, write.reset);
    inv.key(fields_key(ws, tid))
        .key(doc_key(ws, tid))
        .key(keys::tenant(ws, tid, "reset"))
        .key(keys::tenant(ws, tid, "mreset"))
        .key(members_key(ws, tid))
        .key(member_fields_key(ws, tid))
        .arg(Value::from(tid).to_string())
        .arg(if write.require_existing { "1" } else { "0" })
        .arg(write.max_bytes);
    lww::field_args(&mut inv, &write.fields);
    let mut c = conn.clone();
    let out: Vec<String> = inv.invoke_async(&mut c).await?;
    match out.first().map(String::as_str) {
        Some("missing") => return Ok(Applied::Missing),
        Some("toolarge") => {
            return Ok(Applied::TooLarge(
                out.get(1).and_then(|b| b.parse().ok()).unwrap_or(0),
            ));
        }
        _ => {}
    }
    let doc = out.get(1).filter(|d| !d.is_empty()).cloned();
    let changed = out.get(2).map(String::as_str) == Some("1");
    let touched = out.into_iter().skip(3).collect();
    let applied = Applied::Ok {
        doc,
        changed,
        touched,
    };
    Ok(applied)
}

/// Brings the derived indexes in line with the tenant after a write (idempotent).
pub async fn update_indexes(
    conn: &RedisConn,
    ws: &str,
    tid: &str,
    exists: bool,
    touched: &[String],
) -> redis::RedisResult<()> {
    let mut c = conn.clone();
    let mut cmd = if exists {
        redis::cmd("ZADD")
    } else {
        redis::cmd("ZREM")
    };
    if exists {
        cmd.arg(tenants_index_key(ws)).arg(0).arg(tid);
    } else {
        cmd.arg(tenants_index_key(ws)).arg(tid);
    }
    let _: i64 = cmd.query_async(&mut c).await?;
    for uid in touched {
        let live: Option<f64> = redis::cmd("ZSCORE")
            .arg(members_key(ws, tid))
            .arg(uid)
            .query_async(&mut c)
            .await?;
        let _: i64 = if live.is_some() {
            redis::cmd("ZADD")
                .arg(user_tenants_key(ws, uid))
                .arg(0)
                .arg(tid)
                .query_async(&mut c)
                .await?
        } else {
            redis::cmd("ZREM")
                .arg(user_tenants_key(ws, uid))
                .arg(tid)
                .query_async(&mut c)
                .await?
        };
    }
    Ok(())
}

pub async fn get_doc(conn: &RedisConn, ws: &str, tid: &str) -> redis::RedisResult<Option<String>> {
    let mut c = conn.clone();
    redis::cmd("GET")
        .arg(doc_key(ws, tid))
        .query_async(&mut c)
        .await
}

/// A member's tenant profile (None when not a member).
pub async fn membership(
    conn: &RedisConn,
    ws: &str,
    tid: &str,
    uid: &str,
) -> redis::RedisResult<Option<Value>> {
    let mut c = conn.clone();
    let raw: Option<String> = redis::cmd("HGET")
        .arg(member_fields_key(ws, tid))
        .arg(uid)
        .query_async(&mut c)
        .await?;
    Ok(raw.and_then(|r| {
        let mut parts = r.splitn(3, '|');
        let v = parts.nth(2)?;
        if v.is_empty() {
            None
        } else {
            serde_json::from_str(v).ok()
        }
    }))
}

/// Up to `limit` members of a sorted set strictly after `cursor` (lexicographic).
pub async fn range_after(
    conn: &RedisConn,
    key: &str,
    cursor: Option<&str>,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let mut c = conn.clone();
    let start = match cursor {
        Some(cur) => format!("({cur}"),
        None => "-".to_string(),
    };
    redis::cmd("ZRANGEBYLEX")
        .arg(key)
        .arg(start)
        .arg("+")
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .query_async(&mut c)
        .await
}
