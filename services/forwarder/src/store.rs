//! Integration configuration and delivery statistics in Redis.
//!
//! Keys come from `rc_common::keys`:
//! - `{ws:<ws>}:forwarder:rudderstack` → JSON [`Integration`] (write key sealed with the
//!   workspace id as context, never in plain text);
//! - `{ws:<ws>}:forwarder:stats` → hash of counters and the last error;
//! - `rc:forwarder:integrations` → set of workspace ids with an integration (for startup and
//!   the reconcile loop of every replica).

use rc_common::redis::RedisConn;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

pub use rc_common::keys::{
    FORWARDER_INTEGRATIONS as INDEX_KEY, forwarder_integration as config_key,
    forwarder_stats as stats_key,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Integration {
    /// `Cipher::seal(write key, workspace id)`.
    pub write_key_sealed: String,
    pub data_plane_url: String,
    pub enabled: bool,
    /// Upper-case Courier statuses to send.
    pub statuses: Vec<String>,
    pub profile_updates: bool,
    pub tenant_updates: bool,
    /// Set when the data plane refused the credentials (401/404); a PUT clears it.
    pub paused_reason: Option<String>,
    pub updated_at: String,
    /// Bumped on every write: workers restart when it changes.
    pub version: u64,
}

#[derive(Clone)]
pub struct Store {
    redis: RedisConn,
}

impl Store {
    pub fn new(redis: RedisConn) -> Self {
        Self { redis }
    }

    pub async fn get(&self, ws: &str) -> redis::RedisResult<Option<Integration>> {
        let raw: Option<String> = self.redis.clone().get(config_key(ws)).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    pub async fn put(&self, ws: &str, integration: &Integration) -> redis::RedisResult<()> {
        let body = serde_json::to_string(integration).expect("serializable");
        let mut conn = self.redis.clone();
        let _: () = conn.set(config_key(ws), body).await?;
        let _: () = conn.sadd(INDEX_KEY, ws).await?;
        Ok(())
    }

    pub async fn delete(&self, ws: &str) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let n: i64 = conn.del(&[config_key(ws), stats_key(ws)]).await?;
        let _: () = conn.srem(INDEX_KEY, ws).await?;
        Ok(n > 0)
    }

    pub async fn workspaces(&self) -> redis::RedisResult<Vec<String>> {
        self.redis.clone().smembers(INDEX_KEY).await
    }

    /// Pauses the integration (only if it is still at `version`, so a concurrent fix wins).
    pub async fn pause(&self, ws: &str, version: u64, reason: &str) -> redis::RedisResult<()> {
        if let Some(mut integ) = self.get(ws).await?
            && integ.version == version
        {
            integ.paused_reason = Some(reason.to_string());
            integ.version += 1;
            self.put(ws, &integ).await?;
        }
        Ok(())
    }

    pub async fn record_delivered(&self, ws: &str, n: usize, at: &str) {
        let mut conn = self.redis.clone();
        let result: redis::RedisResult<()> = redis::pipe()
            .hincr(stats_key(ws), "delivered", n as i64)
            .hset(stats_key(ws), "last_delivered_at", at)
            .query_async(&mut conn)
            .await;
        if let Err(err) = result {
            tracing::warn!(workspace = ws, error = %err, "Could not record delivery statistics");
        }
    }

    pub async fn record_error(&self, ws: &str, failed: usize, error: &str, at: &str) {
        let mut conn = self.redis.clone();
        let result: redis::RedisResult<()> = redis::pipe()
            .hincr(stats_key(ws), "failed", failed as i64)
            .hset(stats_key(ws), "last_error", error)
            .hset(stats_key(ws), "last_error_at", at)
            .query_async(&mut conn)
            .await;
        if let Err(err) = result {
            tracing::warn!(workspace = ws, error = %err, "Could not record delivery statistics");
        }
    }

    pub async fn set_field(&self, ws: &str, field: &str, value: &str) {
        let mut conn = self.redis.clone();
        let result: redis::RedisResult<()> = conn.hset(stats_key(ws), field, value).await;
        if let Err(err) = result {
            tracing::warn!(workspace = ws, error = %err, "Could not record delivery statistics");
        }
    }

    pub async fn stats(
        &self,
        ws: &str,
    ) -> redis::RedisResult<std::collections::HashMap<String, String>> {
        self.redis.clone().hgetall(stats_key(ws)).await
    }
}
