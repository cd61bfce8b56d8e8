//! The document store profiles and accounts share: a document is a Redis hash of per-field
//! last-writer-wins registers (`<ts ms>|<tiebreak>|<value JSON>`, empty value = tombstone),
//! merged atomically by one Lua script per service. This module holds what both scripts and
//! their callers have in common: how a write is stamped, how it resets the document, how fields
//! travel as arguments, and the Lua helpers that parse and compare stamps.
//!
//! A stamp is `(ts, tiebreak)` compared lexicographically; tiebreaks are 32 lower-case hex
//! digits, so the comparison never depends on Redis's collation locale.

use std::sync::OnceLock;

use redis::ScriptInvocation;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Whether a write also removes what was stored before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    None,
    /// Fields missing from the write (stamped before it) are removed; the document exists.
    Replace,
    /// Every field stamped before the write is removed; the document no longer exists.
    Delete,
}

impl Reset {
    /// The script's `reset` argument.
    fn arg(self) -> &'static str {
        match self {
            Reset::None => "0",
            Reset::Replace => "r",
            Reset::Delete => "d",
        }
    }
}

/// When a write happens.
#[derive(Debug, Clone)]
pub enum Stamp {
    /// An event's own time and tiebreak.
    Event { ts_ms: i64, tiebreak: String },
    /// Now, but after everything stored (the script moves it past the newest stamp).
    Api { now_ms: i64, tiebreak: String },
}

/// A deterministic tiebreak for a cause id (an event's message id, …).
pub fn tiebreak(cause: &str) -> String {
    hex::encode(&Sha256::digest(cause.as_bytes())[..16])
}

pub fn random_tiebreak() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Lua prepended to every store script: `parse(s)` → `ts, tiebreak, value` of a stored
/// `<ts>|<tiebreak>[|<value>]` (value `''` when absent), and `newer(t1, b1, t2, b2)`.
const LUA_STAMPS: &str = r#"
local function parse(s)
  local a = string.find(s, '|', 1, true)
  local b = string.find(s, '|', a + 1, true)
  if not b then return tonumber(string.sub(s, 1, a - 1)), string.sub(s, a + 1), '' end
  return tonumber(string.sub(s, 1, a - 1)), string.sub(s, a + 1, b - 1), string.sub(s, b + 1)
end
local function newer(t1, b1, t2, b2) return t1 > t2 or (t1 == t2 and b1 > b2) end
"#;

/// A store's Lua script, loaded once. Its first four arguments are always `mode` (`event` or
/// `api`), `ts`, `tiebreak` and `reset` (`0`, `r`, `d`); `parse` and `newer` are in scope.
pub struct Script {
    body: &'static str,
    cell: OnceLock<redis::Script>,
}

impl Script {
    pub const fn new(body: &'static str) -> Self {
        Self {
            body,
            cell: OnceLock::new(),
        }
    }

    /// An invocation with the stamp and reset arguments given; the caller adds its keys and
    /// the rest of its arguments.
    pub fn invocation(&'static self, stamp: &Stamp, reset: Reset) -> ScriptInvocation<'static> {
        let script = self
            .cell
            .get_or_init(|| redis::Script::new(&format!("{LUA_STAMPS}{}", self.body)));
        let (mode, ts, tiebreak) = match stamp {
            Stamp::Event { ts_ms, tiebreak } => ("event", *ts_ms, tiebreak.as_str()),
            Stamp::Api { now_ms, tiebreak } => ("api", *now_ms, tiebreak.as_str()),
        };
        let mut invocation = script.prepare_invoke();
        invocation.arg(mode).arg(ts).arg(tiebreak).arg(reset.arg());
        invocation
    }
}

/// Adds the written fields as `name, value JSON` argument pairs (empty: remove the field).
pub fn field_args(invocation: &mut ScriptInvocation<'_>, fields: &[(String, Option<Value>)]) {
    for (name, value) in fields {
        let json = match value {
            Some(v) if !v.is_null() => v.to_string(),
            _ => String::new(),
        };
        invocation.arg(name.as_str()).arg(json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiebreaks_are_32_hex_digits_and_deterministic_per_cause() {
        assert_eq!(tiebreak("m-1"), tiebreak("m-1"));
        assert_ne!(tiebreak("m-1"), tiebreak("m-2"));
        for t in [tiebreak("m-1"), random_tiebreak()] {
            assert_eq!(t.len(), 32);
            assert!(t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
    }
}
