//! Workspace API keys: generation, hashed storage in Redis, and resolution with a short
//! in-process cache (negative results cached too, so a flood of bad keys costs little).
//!
//! The cache (moka: bounded, least recently used out first) answers for `cache_ttl_ms`; after
//! that the key is looked up again. While Redis is unavailable, a key verified within
//! `outage_grace_ms` keeps its workspace (the ingress keeps accepting events for known keys;
//! they are stored in JetStream, not Redis); an unknown key gets 503, never 401, since nothing
//! says it is invalid. A revoked key stops working within `cache_ttl_ms` of Redis answering.
//!
//! Redis layout (keys are high-entropy random strings, so one SHA-256 is enough: nothing
//! short enough to brute-force is ever hashed, and lookups must stay cheap on the hot path):
//! - `rc:apikey:<sha256 hex>` → hash `{ws, key_id, created_at}` (the lookup)
//! - `ws:{<ws>}:meta` → hash `{name, created_at}`
//! - `ws:{<ws>}:apikeys` → hash `key_id → sha256 hex` (for listing and revoking)
//! - `rc:workspaces` → set of workspace ids

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use crate::config::AuthSettings;
use crate::redis::RedisConn;

pub type WorkspaceId = Arc<str>;

const KEY_PREFIX: &str = "rck_";
use crate::keys::{
    WORKSPACES as WORKSPACES_SET, apikey as apikey_key, workspace_apikeys as keys_key,
    workspace_meta as meta_key,
};

/// Workspace ids appear in NATS subjects and Redis keys: lower-case letters, digits, `-`
/// and `_`, 1–64 characters, starting with a letter or digit.
pub fn validate_workspace_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid workspace id {id:?}: use 1-64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The `<id>` of a key in our generated format, `rck_<8 hex>_<64 hex>`; `None` otherwise.
fn generated_id(key: &str) -> Option<&str> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(id, 8) && hex(secret, 64)).then_some(id)
}

/// The public part of a key, safe to show and log: the `<id>` of a generated key, the first
/// 8 hex digits of the hash for imported ones.
pub fn key_id_of(key: &str) -> String {
    match generated_id(key) {
        Some(id) => id.to_string(),
        None => hex::encode(&hash_key(key)[..4]),
    }
}

/// A freshly generated key: `rck_<8 hex id>_<64 hex secret>` (256 random bits).
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let mut id = [0u8; 4];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    format!("{KEY_PREFIX}{}_{}", hex::encode(id), hex::encode(secret))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub key_id: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkspaceInfo {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub keys: Vec<KeyInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("workspace {0:?} already exists")]
    Exists(String),
    #[error("workspace {0:?} does not exist")]
    NoWorkspace(String),
    #[error("this API key is already in use by another workspace")]
    KeyInUse,
    #[error("key id {0:?} is already taken in this workspace; omit --key to generate a key")]
    KeyIdTaken(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Workspaces and their keys in Redis.
#[derive(Clone)]
pub struct WorkspaceStore {
    redis: RedisConn,
}

impl WorkspaceStore {
    pub fn new(redis: RedisConn) -> Self {
        Self { redis }
    }

    pub async fn exists(&self, ws: &str) -> Result<bool, StoreError> {
        Ok(self.redis.clone().exists(meta_key(ws)).await?)
    }

    /// Creates a workspace; `Exists` when it is already there.
    pub async fn create_workspace(&self, ws: &str, name: &str) -> Result<(), StoreError> {
        validate_workspace_id(ws).map_err(StoreError::Invalid)?;
        let mut conn = self.redis.clone();
        let created: bool = conn.hset_nx(meta_key(ws), "name", name).await?;
        if !created {
            return Err(StoreError::Exists(ws.to_string()));
        }
        let _: () = conn.hset(meta_key(ws), "created_at", now_rfc3339()).await?;
        let _: () = conn.sadd(WORKSPACES_SET, ws).await?;
        Ok(())
    }

    /// Stores `key` (or a newly generated one) for `ws` and returns the plain key, which is
    /// never stored. Adding the same key to the same workspace again is a no-op.
    pub async fn add_key(&self, ws: &str, key: Option<&str>) -> Result<String, StoreError> {
        if !self.exists(ws).await? {
            return Err(StoreError::NoWorkspace(ws.to_string()));
        }
        let key = match key {
            Some(k) if k.is_empty() || k.len() > 100 => {
                return Err(StoreError::Invalid(
                    "an API key must be 1-100 characters".into(),
                ));
            }
            // Our prefix promises our format (and a key id we generated): a look-alike could
            // claim another key's id.
            Some(k) if k.starts_with(KEY_PREFIX) && generated_id(k).is_none() => {
                return Err(StoreError::Invalid(format!(
                    "a supplied key starting with {KEY_PREFIX:?} must be one rc-admin generated \
                     ({KEY_PREFIX}<8 hex>_<64 hex>); omit --key to generate one"
                )));
            }
            Some(k) => k.to_string(),
            None => generate_key(),
        };
        let hash_hex = hex::encode(hash_key(&key));
        let key_id = key_id_of(&key);
        let mut conn = self.redis.clone();
        let owner: Option<String> = conn.hget(apikey_key(&hash_hex), "ws").await?;
        match owner.as_deref() {
            Some(o) if o != ws => return Err(StoreError::KeyInUse),
            Some(_) => return Ok(key),
            None => {}
        }
        // The listing entry first, the lookup last: a key is never resolvable without being
        // revocable. Never over another key's entry: that key would vanish from the listing
        // and could no longer be revoked.
        let listed: bool = conn.hset_nx(keys_key(ws), &key_id, &hash_hex).await?;
        if !listed {
            let current: Option<String> = conn.hget(keys_key(ws), &key_id).await?;
            if current.as_deref() != Some(hash_hex.as_str()) {
                return Err(StoreError::KeyIdTaken(key_id));
            }
        }
        let _: () = conn
            .hset_multiple(
                apikey_key(&hash_hex),
                &[
                    ("ws", ws),
                    ("key_id", &key_id),
                    ("created_at", &now_rfc3339()),
                ],
            )
            .await?;
        Ok(key)
    }

    /// Revokes the key with `key_id`; false when the workspace has no such key.
    pub async fn revoke_key(&self, ws: &str, key_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let hash_hex: Option<String> = conn.hget(keys_key(ws), key_id).await?;
        let Some(hash_hex) = hash_hex else {
            return Ok(false);
        };
        let _: () = conn.del(apikey_key(&hash_hex)).await?;
        let _: () = conn.hdel(keys_key(ws), key_id).await?;
        Ok(true)
    }

    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, StoreError> {
        let mut conn = self.redis.clone();
        let mut ids: Vec<String> = conn.smembers(WORKSPACES_SET).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let meta: HashMap<String, String> = conn.hgetall(meta_key(&id)).await?;
            let mut keys: Vec<String> = conn.hkeys(keys_key(&id)).await?;
            keys.sort();
            out.push(WorkspaceInfo {
                name: meta.get("name").cloned().unwrap_or_default(),
                created_at: meta.get("created_at").cloned().unwrap_or_default(),
                keys: keys.into_iter().map(|key_id| KeyInfo { key_id }).collect(),
                id,
            });
        }
        Ok(out)
    }

    /// The workspace a key hash belongs to.
    pub async fn resolve(&self, hash: &[u8; 32]) -> Result<Option<String>, redis::RedisError> {
        self.redis
            .clone()
            .hget(apikey_key(&hex::encode(hash)), "ws")
            .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header: send `Authorization: Bearer <api key>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <api key>`")]
    Malformed,
    #[error("invalid API key")]
    Invalid,
    #[error("credential store unavailable; retry shortly")]
    Unavailable,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            AuthError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                axum::Json(serde_json::json!({"message": message, "type": "unavailable"})),
            )
                .into_response(),
            _ => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                axum::Json(serde_json::json!({"message": message, "type": "authentication_error"})),
            )
                .into_response(),
        }
    }
}

#[derive(Clone)]
struct CacheEntry {
    /// `None`: Redis said this key is unknown.
    workspace: Option<WorkspaceId>,
    verified: Instant,
}

/// Positive entries live for the outage grace (they are re-verified after `ttl` while Redis
/// answers); negative ones only for their own TTL.
struct EntryExpiry {
    positive: Duration,
    negative: Duration,
}

impl moka::Expiry<[u8; 32], CacheEntry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        entry: &CacheEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if entry.workspace.is_some() {
            self.positive
        } else {
            self.negative
        })
    }

    fn expire_after_update(
        &self,
        key: &[u8; 32],
        entry: &CacheEntry,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, updated_at)
    }
}

/// Resolves `Authorization: Bearer <key>` to a workspace.
pub struct Authenticator {
    store: WorkspaceStore,
    cache: moka::sync::Cache<[u8; 32], CacheEntry>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl Authenticator {
    pub fn new(store: WorkspaceStore, settings: &AuthSettings) -> Self {
        let ttl = Duration::from_millis(settings.cache_ttl_ms);
        let negative_ttl = Duration::from_millis(settings.negative_cache_ttl_ms);
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.cache_max_entries.max(1) as u64)
            .expire_after(EntryExpiry {
                positive: Duration::from_millis(settings.outage_grace_ms).max(ttl),
                negative: negative_ttl,
            })
            .build();
        Self {
            store,
            cache,
            ttl,
            negative_ttl,
        }
    }

    pub async fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<WorkspaceId, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let key = match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
            _ => return Err(AuthError::Malformed),
        };
        if key.is_empty() {
            return Err(AuthError::Malformed);
        }
        let hash = hash_key(key);
        let cached = self.cache.get(&hash);
        if let Some(entry) = &cached {
            let fresh = if entry.workspace.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
            if entry.verified.elapsed() < fresh {
                return entry.workspace.clone().ok_or(AuthError::Invalid);
            }
        }
        let workspace: Option<WorkspaceId> = match self.store.resolve(&hash).await {
            Ok(ws) => ws.map(Arc::from),
            Err(err) => {
                // Only a positive entry survives past its TTL (negative ones expire with it).
                if let Some(workspace) = cached.and_then(|e| e.workspace) {
                    metrics::counter!("auth_stale_accepted_total").increment(1);
                    tracing::debug!(error = %err, "API key lookup failed; serving the key verified earlier");
                    return Ok(workspace);
                }
                tracing::warn!(error = %err, "API key lookup failed");
                return Err(AuthError::Unavailable);
            }
        };
        self.cache.insert(
            hash,
            CacheEntry {
                workspace: workspace.clone(),
                verified: Instant::now(),
            },
        );
        workspace.ok_or(AuthError::Invalid)
    }
}

/// Extractor for handlers: the authenticated workspace.
pub struct Workspace(pub WorkspaceId);

impl<S> FromRequestParts<S> for Workspace
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Authenticator>::from_ref(state);
        auth.authenticate(parts.headers.get(header::AUTHORIZATION))
            .await
            .map(Workspace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_an_id_and_fit_the_destination_limit() {
        let key = generate_key();
        assert!(key.starts_with("rck_"));
        assert!(key.len() <= 100, "RudderStack accepts keys up to 100 chars");
        let id = key_id_of(&key);
        assert_eq!(id.len(), 8);
        assert_eq!(&key[4..12], id);
        assert_ne!(generate_key(), key);
    }

    #[test]
    fn imported_keys_get_an_id_from_their_hash() {
        let id = key_id_of("pk_prod_ABCDEF");
        assert_eq!(id, hex::encode(&hash_key("pk_prod_ABCDEF")[..4]));
    }

    #[test]
    fn workspace_ids_are_subject_safe() {
        assert!(validate_workspace_id("dev").is_ok());
        assert!(validate_workspace_id("acme-prod_2").is_ok());
        for bad in ["", "a.b", "A", "a*", "a>", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_workspace_id(bad).is_err(), "{bad:?}");
        }
    }
}
