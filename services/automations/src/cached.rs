//! A workspace's automation configuration, answered from memory on the event path: the event →
//! automation mappings, automation templates and notification templates.
//!
//! Every event (identify and group included: they can be mapped) needs its catalog entry's
//! mapped templates, and every mapped run its template and, to send, its notification template.
//! Reading them from Redis cost a round trip (and a JSON parse) each; most events have no
//! mapping. Answers (present or absent) are kept per workspace and id for [`TTL`]. Every API
//! write of a mapping or template publishes [`subjects::config_changed`] before its answer, and
//! every replica drops that workspace's entries when it arrives, so a change is in effect for
//! the events sent after the answer. The TTL bounds staleness should a notification be lost (a
//! NATS reconnect).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rc_common::redis::RedisConn;
use rc_common::service::BoxError;
use rc_common::shutdown::Shutdown;
use rc_common::subjects;
use serde_json::Value;

use crate::store;

/// How long an entry is trusted without a notification.
pub const TTL: Duration = Duration::from_secs(5);
/// Entries kept per kind (each a key and usually a short list or one template).
const CAPACITY: u64 = 100_000;

type Cache<V> = moka::sync::Cache<String, V>;

/// Answers by `"<workspace>\n<id>"`.
pub struct Config {
    mappings: Cache<Arc<[String]>>,
    templates: Cache<Option<Arc<Value>>>,
    notifications: Cache<Option<Arc<Value>>>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new(TTL)
    }
}

fn cache_key(ws: &str, id: &str) -> String {
    let mut k = String::with_capacity(ws.len() + 1 + id.len());
    k.push_str(ws);
    k.push('\n');
    k.push_str(id);
    k
}

fn cache<V: Clone + Send + Sync + 'static>(ttl: Duration) -> Cache<V> {
    moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(ttl)
        .support_invalidation_closures()
        .build()
}

/// `cache`'s answer for `(ws, id)`, or `load`'s, kept.
async fn through<V: Clone + Send + Sync + 'static>(
    cache: &Cache<V>,
    ws: &str,
    id: &str,
    load: impl Future<Output = redis::RedisResult<V>>,
) -> redis::RedisResult<V> {
    let key = cache_key(ws, id);
    if let Some(v) = cache.get(&key) {
        return Ok(v);
    }
    let v = load.await?;
    cache.insert(key, v.clone());
    Ok(v)
}

/// One template document from a hash, through `cache`.
async fn document(
    cache: &Cache<Option<Arc<Value>>>,
    redis: &RedisConn,
    hash: String,
    ws: &str,
    id: &str,
) -> redis::RedisResult<Option<Arc<Value>>> {
    through(cache, ws, id, async {
        Ok(store::hget_json(redis, &hash, id).await?.map(Arc::new))
    })
    .await
}

/// Drops every entry of the workspace whose keys start with `prefix`.
fn drop_workspace<V: Clone + Send + Sync + 'static>(cache: &Cache<V>, prefix: &Arc<String>) {
    let p = prefix.clone();
    // Only fails when invalidation closures are not enabled, which `cache` does.
    let _ = cache.invalidate_entries_if(move |k, _| k.starts_with(p.as_str()));
}

impl Config {
    /// Entries trusted for `ttl` without a notification.
    pub fn new(ttl: Duration) -> Self {
        Self {
            mappings: cache(ttl),
            templates: cache(ttl),
            notifications: cache(ttl),
        }
    }

    /// The template ids mapped to `entry` (from memory, or one HGET on a miss).
    pub async fn mapped(
        &self,
        redis: &RedisConn,
        ws: &str,
        entry: &str,
    ) -> redis::RedisResult<Arc<[String]>> {
        through(&self.mappings, ws, entry, async {
            let ids: Vec<String> = store::hget_json(redis, &store::mappings_key(ws), entry)
                .await?
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            Ok(ids.into())
        })
        .await
    }

    /// An automation template (from memory, or one HGET on a miss).
    pub async fn template(
        &self,
        redis: &RedisConn,
        ws: &str,
        id: &str,
    ) -> redis::RedisResult<Option<Arc<Value>>> {
        document(&self.templates, redis, store::templates_key(ws), ws, id).await
    }

    /// A notification template (from memory, or one HGET on a miss).
    pub async fn notification(
        &self,
        redis: &RedisConn,
        ws: &str,
        id: &str,
    ) -> redis::RedisResult<Option<Arc<Value>>> {
        document(
            &self.notifications,
            redis,
            store::notifications_key(ws),
            ws,
            id,
        )
        .await
    }

    /// Drops a workspace's entries (its configuration changed).
    pub fn forget(&self, ws: &str) {
        let prefix = Arc::new(cache_key(ws, ""));
        drop_workspace(&self.mappings, &prefix);
        drop_workspace(&self.templates, &prefix);
        drop_workspace(&self.notifications, &prefix);
    }

    /// After an API write of a mapping or template: this replica forgets at once, the others
    /// on the notification. Flushed before returning, so it leaves before the API answers.
    pub async fn changed(&self, nats: &async_nats::Client, ws: &str) {
        self.forget(ws);
        let sent = async {
            nats.publish(subjects::config_changed(ws), bytes::Bytes::new())
                .await?;
            nats.flush().await.map_err(async_nats::Error::from)
        };
        if let Err(e) = sent.await {
            // The other replicas see the change within the TTL.
            tracing::warn!(workspace = ws, error = %e, "Configuration change not announced");
        }
    }
}

/// The change announcements of every workspace (subscribe before consuming events, so no
/// change made after the service is up goes unseen).
pub async fn subscribe(nats: &async_nats::Client) -> Result<async_nats::Subscriber, BoxError> {
    Ok(nats.subscribe(subjects::CONFIG_CHANGED_ALL).await?)
}

/// Drops a workspace's entries whenever a replica announces a change, until shutdown.
pub async fn listen(config: Arc<Config>, mut changes: async_nats::Subscriber, shutdown: Shutdown) {
    loop {
        tokio::select! {
            m = changes.next() => match m {
                Some(m) => {
                    if let Some(ws) = subjects::config_changed_workspace(m.subject.as_str()) {
                        config.forget(ws);
                    }
                }
                None => return,
            },
            _ = shutdown.triggered() => return,
        }
    }
}
