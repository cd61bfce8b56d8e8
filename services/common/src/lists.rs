//! Courier lists in Redis: the keys accounts writes (the `/lists` API) and automations reads
//! (the `send-list` step). One function per key, so writer and reader cannot disagree.
//!
//! Every key of a workspace's lists shares the hash tag `{ws:<ws>}` (one Redis Cluster slot,
//! so one script updates a list and its subscribers); list ids are escaped with
//! [`crate::keys::escape`] and every per-list key ends in a fixed suffix, so no id reaches another
//! list's keys.

use crate::keys;
use crate::redis::RedisConn;

/// Subscribers one list may have (a `send-list` step sends one message to each).
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Lists one workspace may have.
pub const MAX_LISTS: usize = 10_000;

/// Hash: list id → the list JSON `{id, name, created, updated, preferences?}`.
pub fn lists_key(ws: &str) -> String {
    keys::lists(ws)
}

/// Sorted set of list ids, scored by creation time (ms): the listing order.
pub fn lists_index_key(ws: &str) -> String {
    keys::lists_index(ws)
}

/// Sorted set of a list's subscriber user ids, scored by subscription time (ms).
/// **Read contract** of the `send-list` step.
pub fn subscribers_key(ws: &str, list_id: &str) -> String {
    keys::list_subscribers(ws, list_id)
}

/// Hash: subscriber user id → the subscription's `preferences` JSON.
pub fn subscription_preferences_key(ws: &str, list_id: &str) -> String {
    keys::list_preferences(ws, list_id)
}

/// The subscribers of a list, oldest subscription first, at most [`MAX_SUBSCRIBERS`];
/// `None` when the list does not exist.
pub async fn subscribers(
    conn: &RedisConn,
    ws: &str,
    list_id: &str,
) -> redis::RedisResult<Option<Vec<String>>> {
    let mut c = conn.clone();
    let exists: bool = redis::cmd("HEXISTS")
        .arg(lists_key(ws))
        .arg(list_id)
        .query_async(&mut c)
        .await?;
    if !exists {
        return Ok(None);
    }
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(subscribers_key(ws, list_id))
        .arg(0)
        .arg(MAX_SUBSCRIBERS as i64 - 1)
        .query_async(&mut c)
        .await?;
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_workspace_slot_and_ids_cannot_collide() {
        let keys = [
            lists_key("acme"),
            lists_index_key("acme"),
            subscribers_key("acme", "a"),
            subscription_preferences_key("acme", "a"),
        ];
        assert!(keys.iter().all(|k| k.starts_with("{ws:acme}:")));
        // An id holding a brace cannot end the hash tag, nor one list's key be another's.
        assert_eq!(subscribers_key("w", "x}y"), "{ws:w}:list:x%7Dy:subscribers");
        assert_ne!(
            subscribers_key("w", "a:preferences"),
            subscription_preferences_key("w", "a")
        );
        assert_ne!(
            subscription_preferences_key("w", "a:subscribers"),
            subscribers_key("w", "a")
        );
    }
}
