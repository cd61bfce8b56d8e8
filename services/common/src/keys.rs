//! Every Redis key the services write or read, in one place and one hash-tag style:
//! - `{ws:<ws>}:<rest>`: a workspace-wide key (one cluster slot per workspace);
//! - `{ws:<ws>:<kind>:<id>}:<rest>`: a key of one entity (user, tenant, message, …), so all
//!   keys of one entity share a slot and an atomic script can touch them together;
//! - `rc:…` / `{rc:…}:…`: the few keys shared by all workspaces.
//!
//! Every id, the workspace included, goes through [`escape`] (`%`, `{`, `}`, `:` percent-encoded),
//! so an id can neither end a hash tag (which would move the key to another slot) nor be read
//! as another id (`a:b` + `c` vs `a` + `b:c`). Keys another service reads (profiles' `profile`,
//! accounts' `members`, …) are part of the read contracts: build them only here.

use std::fmt::{self, Display};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What [`escape`] encodes: the hash-tag braces, the separator, the escape itself, and control
/// characters (so a key is always printable).
const KEY_ID: &AsciiSet = &CONTROLS.add(b'%').add(b'{').add(b'}').add(b':');

/// One id as it appears inside a key (no allocation: formats straight into the key).
pub fn escape(id: &str) -> impl Display + '_ {
    utf8_percent_encode(id, KEY_ID)
}

/// The id an [`escape`]d component came from.
pub fn unescape(component: &str) -> String {
    percent_decode_str(component)
        .decode_utf8_lossy()
        .into_owned()
}

/// `{ws:<ws>}` followed by `:<rest>`.
struct Ws<'a>(&'a str);
impl Display for Ws<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{ws:{}}}", escape(self.0))
    }
}

/// `{ws:<ws>:<kind>:<id>}`.
struct Entity<'a>(&'a str, &'a str, &'a str);
impl Display for Entity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{ws:{}:{}:{}}}", escape(self.0), self.1, escape(self.2))
    }
}

/// A workspace-wide key `{ws:<ws>}:<rest>`; `rest` is a fixed name (ids in it must be escaped).
pub fn workspace(ws: &str, rest: &str) -> String {
    format!("{}:{rest}", Ws(ws))
}

// --- Workspaces and API keys (rc_common::auth) ---

/// Set of every workspace id.
pub const WORKSPACES: &str = "rc:workspaces";
/// An API key's record, by the hex SHA-256 of the key (its own slot).
pub fn apikey(hash_hex: &str) -> String {
    format!("rc:apikey:{hash_hex}")
}
pub fn workspace_meta(ws: &str) -> String {
    workspace(ws, "meta")
}
pub fn workspace_apikeys(ws: &str) -> String {
    workspace(ws, "apikeys")
}

// --- Consumers (rc_common::consumer) ---

/// The crash-loop marker of one message of one durable consumer. Its own hash tag, so markers
/// spread over a cluster's slots.
pub fn delivery_marker(stream: &str, durable: &str, stream_sequence: u64) -> String {
    format!(
        "{{rc:consumer:{}:{}:{stream_sequence}}}:unanswered",
        escape(stream),
        escape(durable)
    )
}

// --- Lists (rc_common::lists; written by accounts, read by delivery) ---

pub fn lists(ws: &str) -> String {
    workspace(ws, "lists")
}
pub fn lists_index(ws: &str) -> String {
    workspace(ws, "lists:index")
}
pub fn list_subscribers(ws: &str, list_id: &str) -> String {
    format!("{}:list:{}:subscribers", Ws(ws), escape(list_id))
}
pub fn list_preferences(ws: &str, list_id: &str) -> String {
    format!("{}:list:{}:preferences", Ws(ws), escape(list_id))
}

// --- Profiles (`profile` is the read contract of automations and delivery) ---

/// A key of one user: `{ws:<ws>:user:<uid>}:<rest>`.
pub fn user(ws: &str, uid: &str, rest: &str) -> String {
    format!("{}:{rest}", Entity(ws, "user", uid))
}
/// The materialized profile JSON (**read contract**).
pub fn user_profile(ws: &str, uid: &str) -> String {
    user(ws, uid, "profile")
}
/// A marker of one applied idempotency key (`idem`) or update request (`req`) of a user.
pub fn user_marker(ws: &str, uid: &str, kind: &str, id: &str) -> String {
    format!("{}:{kind}:{}", Entity(ws, "user", uid), escape(id))
}
/// Which user's request owns an API Idempotency-Key in the workspace.
pub fn profiles_idempotency_claim(ws: &str, key: &str) -> String {
    format!("{}:profiles:idem:{}", Ws(ws), escape(key))
}

// --- Accounts (`doc` and `members` are read contracts of delivery) ---

/// A key of one tenant: `{ws:<ws>:tenant:<tid>}:<rest>`.
pub fn tenant(ws: &str, tid: &str, rest: &str) -> String {
    format!("{}:{rest}", Entity(ws, "tenant", tid))
}
/// A tenant's members: sorted set of user ids (**read contract**).
pub fn tenant_members(ws: &str, tid: &str) -> String {
    tenant(ws, tid, "members")
}
pub fn tenants_index(ws: &str) -> String {
    workspace(ws, "tenants")
}
/// The tenants of one user.
pub fn member_tenants(ws: &str, uid: &str) -> String {
    format!("{}:tenants", Entity(ws, "member", uid))
}

// --- Delivery ---

/// A key of one message: `{ws:<ws>:msg:<id>}` + `rest` (`""` for the message hash itself).
pub fn message(ws: &str, id: &str, rest: &str) -> String {
    format!("{}{rest}", Entity(ws, "msg", id))
}
pub fn messages_index(ws: &str) -> String {
    workspace(ws, "messages")
}
pub fn messages_by_recipient(ws: &str, recipient: &str) -> String {
    format!("{}:messages:recipient:{}", Ws(ws), escape(recipient))
}
pub fn delivery_due(ws: &str) -> String {
    workspace(ws, "delivery:due")
}
/// Which workspaces have delivery retries due (the one delivery key shared by workspaces).
pub const DELIVERY_DUE_WORKSPACES: &str = "{rc:delivery}:due-workspaces";
pub fn providers(ws: &str) -> String {
    workspace(ws, "providers")
}
/// A user's inbox: (`items` hash, `order` sorted set).
pub fn inbox(ws: &str, uid: &str) -> (String, String) {
    let tag = Entity(ws, "inbox", uid);
    (format!("{tag}:items"), format!("{tag}:order"))
}

// --- Automations ---

/// An automations key of a workspace: `{ws:<ws>}:auto:<rest>` (`rest` a fixed name).
pub fn automations(ws: &str, rest: &str) -> String {
    format!("{}:auto:{rest}", Ws(ws))
}
/// An automations key of one id: `{ws:<ws>}:auto:<kind>:<id><rest>`.
pub fn automations_of(ws: &str, kind: &str, id: &str, rest: &str) -> String {
    format!("{}:auto:{kind}:{}{rest}", Ws(ws), escape(id))
}
/// A run index of one filter value (zset of run ids scored by created ms):
/// `{ws:<ws>}:auto:runs:<filter>:<value>`; `filter` is a fixed name, the value is escaped.
pub fn runs_by(ws: &str, filter: &str, value: &str) -> String {
    format!("{}:auto:runs:{filter}:{}", Ws(ws), escape(value))
}
/// Notification templates of a workspace (hash id → JSON): written by automations' API, read
/// when a run sends.
pub fn notification_templates(ws: &str) -> String {
    automations(ws, "notifications")
}
/// The scheduler's due index of every workspace (members `<ws>/<run id>`).
pub const AUTOMATIONS_DUE: &str = "rc:automations:due";
/// Claims per due member; its hash tag is the due key's name, so both share a slot.
pub const AUTOMATIONS_DUE_CLAIMS: &str = "{rc:automations:due}:claims";

// --- Forwarder ---

pub fn forwarder_integration(ws: &str) -> String {
    workspace(ws, "forwarder:rudderstack")
}
pub fn forwarder_stats(ws: &str) -> String {
    workspace(ws, "forwarder:stats")
}
/// Workspaces with an integration.
pub const FORWARDER_INTEGRATIONS: &str = "rc:forwarder:integrations";

#[cfg(test)]
mod tests {
    use super::*;

    /// The part Redis Cluster hashes: the first `{…}` with something inside.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("tagged");
        let close = open + 1 + key[open + 1..].find('}').expect("closed");
        &key[open + 1..close]
    }

    #[test]
    fn hostile_ids_round_trip_and_keep_the_slot() {
        for id in ["u%{}:1", "}", "{", "%7B", "a:b", "\u{0}\n", "é日本", ""] {
            let escaped = escape(id).to_string();
            assert!(!escaped.contains(['{', '}', ':']), "{escaped}");
            assert_eq!(unescape(&escaped), id);
            let key = user_profile("acme", id);
            assert_eq!(hash_tag(&key), format!("ws:acme:user:{escaped}"));
            assert_eq!(
                hash_tag(&user(&format!("a{id}"), id, "fields")),
                hash_tag(&user(&format!("a{id}"), id, "reset"))
            );
            assert_eq!(
                hash_tag(&message("w", id, "")),
                hash_tag(&message("w", id, ":history"))
            );
            assert_eq!(hash_tag(&list_subscribers("acme", id)), "ws:acme");
        }
    }

    #[test]
    fn ids_with_separators_cannot_collide() {
        assert_ne!(user_profile("a:user:b", "c"), user_profile("a", "b:user:c"));
        assert_ne!(
            list_subscribers("w", "a:subscribers"),
            list_preferences("w", "a")
        );
    }

    #[test]
    fn one_style_for_every_workspace_key() {
        assert_eq!(workspace_meta("acme"), "{ws:acme}:meta");
        assert_eq!(
            automations_of("acme", "run", "r:1", ":canceled"),
            "{ws:acme}:auto:run:r%3A1:canceled"
        );
        assert_eq!(
            forwarder_integration("acme"),
            "{ws:acme}:forwarder:rudderstack"
        );
        assert_eq!(
            tenant_members("acme", "t}1"),
            "{ws:acme:tenant:t%7D1}:members"
        );
        assert_eq!(inbox("acme", "u").0, "{ws:acme:inbox:u}:items");
        assert_eq!(
            runs_by("acme", "event", "a:b}"),
            "{ws:acme}:auto:runs:event:a%3Ab%7D"
        );
    }
}
