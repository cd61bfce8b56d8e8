//! The event → automation mappings, answered from memory on the event path.
//!
//! Every event (identify and group included: they can be mapped) needs its catalog entry's
//! mapped templates. Reading them from Redis cost a round trip per event; most events have
//! none. Entries (present or absent) are kept per `(workspace, entry)` for [`TTL`]. A link or
//! unlink publishes [`subjects::mappings_changed`] before its API answer, and every replica drops
//! that workspace's entries when it arrives, so a mapping is in effect for the events sent after
//! the answer. The TTL bounds staleness should a notification be lost (a NATS reconnect).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rc_common::redis::RedisConn;
use rc_common::service::BoxError;
use rc_common::shutdown::Shutdown;
use rc_common::subjects;

use crate::store;

/// How long an entry is trusted without a notification.
pub const TTL: Duration = Duration::from_secs(5);
/// Entries kept (each a key and usually an empty list).
const CAPACITY: u64 = 100_000;

/// Mapped template ids by `"<workspace>\n<entry>"`.
pub struct Mappings {
    cache: moka::sync::Cache<String, Arc<[String]>>,
}

impl Default for Mappings {
    fn default() -> Self {
        Self::new(TTL)
    }
}

fn cache_key(ws: &str, entry: &str) -> String {
    let mut k = String::with_capacity(ws.len() + 1 + entry.len());
    k.push_str(ws);
    k.push('\n');
    k.push_str(entry);
    k
}

impl Mappings {
    /// Entries trusted for `ttl` without a notification.
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The template ids mapped to `entry` (from memory, or one HGET on a miss).
    pub async fn get(
        &self,
        redis: &RedisConn,
        ws: &str,
        entry: &str,
    ) -> redis::RedisResult<Arc<[String]>> {
        let key = cache_key(ws, entry);
        if let Some(ids) = self.cache.get(&key) {
            return Ok(ids);
        }
        let ids: Vec<String> = store::hget_json(redis, &store::mappings_key(ws), entry)
            .await?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let ids: Arc<[String]> = ids.into();
        self.cache.insert(key, ids.clone());
        Ok(ids)
    }

    /// Drops a workspace's entries (its mappings changed).
    pub fn forget(&self, ws: &str) {
        let prefix = cache_key(ws, "");
        // Only fails when invalidation closures are not enabled, which `default` does.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix));
    }

    /// After a link or unlink: this replica forgets at once, the others on the notification.
    /// Flushed before returning, so the notification leaves before the API answers.
    pub async fn changed(&self, nats: &async_nats::Client, ws: &str) {
        self.forget(ws);
        let sent = async {
            nats.publish(subjects::mappings_changed(ws), bytes::Bytes::new())
                .await?;
            nats.flush().await.map_err(async_nats::Error::from)
        };
        if let Err(e) = sent.await {
            // The other replicas see the change within the TTL.
            tracing::warn!(workspace = ws, error = %e, "Mapping change not announced");
        }
    }
}

/// The change announcements of every workspace (subscribe before consuming events, so no
/// change made after the service is up goes unseen).
pub async fn subscribe(nats: &async_nats::Client) -> Result<async_nats::Subscriber, BoxError> {
    Ok(nats.subscribe(subjects::MAPPINGS_CHANGED_ALL).await?)
}

/// Drops a workspace's entries whenever a replica announces a change, until shutdown.
pub async fn listen(
    mappings: Arc<Mappings>,
    mut changes: async_nats::Subscriber,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            m = changes.next() => match m {
                Some(m) => {
                    if let Some(ws) = subjects::mappings_changed_workspace(m.subject.as_str()) {
                        mappings.forget(ws);
                    }
                }
                None => return,
            },
            _ = shutdown.triggered() => return,
        }
    }
}
