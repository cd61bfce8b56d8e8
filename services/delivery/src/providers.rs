//! Provider configuration per workspace: Redis hash `{ws:<ws>}:providers` (name → JSON). Secret
//! fields are sealed with `rc_common::secrets::Cipher` (context = workspace id) before they reach
//! Redis, and the API only ever shows them masked.

use std::collections::BTreeMap;

use rc_common::redis::RedisConn;
use rc_common::secrets::{Cipher, mask};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub const CHANNELS: [&str; 6] = ["email", "sms", "push", "chat", "webhook", "inbox"];

use rc_common::keys::providers as providers_key;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Webhook,
    Smtp,
    Inbox,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Smtp => "smtp",
            Kind::Inbox => "inbox",
        }
    }
    fn default_channels(self) -> Vec<String> {
        let c: &[&str] = match self {
            Kind::Webhook => &["webhook", "chat"],
            Kind::Smtp => &["email"],
            Kind::Inbox => &["inbox"],
        };
        c.iter().map(|s| s.to_string()).collect()
    }
    /// Config fields holding secrets (sealed at rest, masked in answers).
    fn secret_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Webhook => &["secret", "headers"],
            Kind::Smtp => &["password"],
            Kind::Inbox => &[],
        }
    }
}

/// As stored in Redis: plain config without secrets, and the sealed secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    #[serde(rename = "type")]
    kind: Kind,
    channels: Vec<String>,
    priority: i64,
    config: Map<String, Value>,
    sealed: BTreeMap<String, String>,
    updated_at: i64,
}

/// A provider with its secrets opened, for sending.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    pub channels: Vec<String>,
    pub priority: i64,
    /// Full config, secrets included (never log it).
    pub config: Map<String, Value>,
}

impl Provider {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.config
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.config.get(key).and_then(Value::as_u64)
    }
}

/// `PUT /providers/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub config: Map<String, Value>,
}

pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("a provider name is 1-64 characters of a-z, A-Z, 0-9, '-' and '_'".into())
    }
}

fn validate(input: &ProviderInput, allow_private_networks: bool) -> Result<(), String> {
    if let Some(ch) = &input.channels {
        if ch.is_empty() {
            return Err("channels must not be empty".into());
        }
        for c in ch {
            if !CHANNELS.contains(&c.as_str()) {
                return Err(format!(
                    "unknown channel {c:?}; use one of {}",
                    CHANNELS.join(", ")
                ));
            }
        }
    }
    let cfg = &input.config;
    let s = |k: &str| cfg.get(k).and_then(Value::as_str).unwrap_or("");
    let opt_str = |k: &str| -> Result<(), String> {
        match cfg.get(k) {
            None | Some(Value::String(_)) => Ok(()),
            _ => Err(format!("config.{k} must be a string")),
        }
    };
    match input.kind {
        Kind::Webhook => {
            rc_common::outbound::check_url_str(s("url"), allow_private_networks)
                .map_err(|e| format!("config.url {e}"))?;
            opt_str("secret")?;
            if let Some(h) = cfg.get("headers") {
                let ok = h
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string));
                if !ok {
                    return Err("config.headers must be an object of strings".into());
                }
            }
        }
        Kind::Smtp => {
            if s("host").is_empty() {
                return Err("config.host is required".into());
            }
            if s("from").is_empty() {
                return Err("config.from (sender address) is required".into());
            }
            if let Some(p) = cfg.get("port")
                && !p.as_u64().is_some_and(|p| (1..=65535).contains(&p))
            {
                return Err("config.port must be a port number".into());
            }
            if !["", "none", "starttls", "tls"].contains(&s("tls")) {
                return Err("config.tls must be none, starttls or tls".into());
            }
            opt_str("username")?;
            opt_str("password")?;
        }
        Kind::Inbox => {}
    }
    if let Some(t) = cfg.get("timeout_ms")
        && !t.as_u64().is_some_and(|t| (1..=60_000).contains(&t))
    {
        return Err("config.timeout_ms must be 1..=60000".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Registry {
    redis: RedisConn,
    cipher: Cipher,
    /// `outbound.allow_private_networks`: webhook URLs may then name private addresses.
    allow_private_networks: bool,
}

impl Registry {
    pub fn new(redis: RedisConn, cipher: Cipher, allow_private_networks: bool) -> Self {
        Self {
            redis,
            cipher,
            allow_private_networks,
        }
    }

    pub async fn put(
        &self,
        ws: &str,
        name: &str,
        input: ProviderInput,
    ) -> Result<Value, RegistryError> {
        validate_name(name).map_err(RegistryError::Invalid)?;
        validate(&input, self.allow_private_networks).map_err(RegistryError::Invalid)?;
        let mut config = input.config;
        let mut sealed = BTreeMap::new();
        for field in input.kind.secret_fields() {
            if let Some(v) = config.remove(*field) {
                let plain = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                sealed.insert(field.to_string(), self.cipher.seal(&plain, ws));
            }
        }
        let stored = Stored {
            name: name.to_string(),
            kind: input.kind,
            channels: input
                .channels
                .unwrap_or_else(|| input.kind.default_channels()),
            priority: input.priority,
            config,
            sealed,
            updated_at: crate::store::now_ms(),
        };
        let json = serde_json::to_string(&stored).expect("serializable");
        let _: () = self
            .redis
            .clone()
            .hset(providers_key(ws), name, json)
            .await?;
        Ok(self.masked(ws, &stored))
    }

    pub async fn delete(&self, ws: &str, name: &str) -> Result<bool, RegistryError> {
        let n: i64 = self.redis.clone().hdel(providers_key(ws), name).await?;
        Ok(n > 0)
    }

    async fn stored(&self, ws: &str) -> Result<Vec<Stored>, RegistryError> {
        let all: BTreeMap<String, String> = self.redis.clone().hgetall(providers_key(ws)).await?;
        Ok(all
            .values()
            .filter_map(|s| serde_json::from_str::<Stored>(s).ok())
            .collect())
    }

    pub async fn list_masked(&self, ws: &str) -> Result<Vec<Value>, RegistryError> {
        Ok(self
            .stored(ws)
            .await?
            .iter()
            .map(|s| self.masked(ws, s))
            .collect())
    }

    pub async fn get_masked(&self, ws: &str, name: &str) -> Result<Option<Value>, RegistryError> {
        let raw: Option<String> = self.redis.clone().hget(providers_key(ws), name).await?;
        Ok(raw
            .and_then(|s| serde_json::from_str::<Stored>(&s).ok())
            .map(|s| self.masked(ws, &s)))
    }

    /// Every provider with secrets opened, by priority (then name). A provider whose secrets
    /// cannot be opened (key changed) is skipped with a warning.
    pub async fn load(&self, ws: &str) -> Result<Vec<Provider>, RegistryError> {
        let mut out = Vec::new();
        for s in self.stored(ws).await? {
            let mut config = s.config.clone();
            let mut ok = true;
            for (field, sealed) in &s.sealed {
                match self.cipher.open(sealed, ws) {
                    Ok(plain) => {
                        let v = if field == "headers" {
                            serde_json::from_str(&plain).unwrap_or(Value::Null)
                        } else {
                            Value::String(plain)
                        };
                        config.insert(field.clone(), v);
                    }
                    Err(err) => {
                        tracing::warn!(workspace = ws, provider = %s.name, error = %err, "Provider secret cannot be opened; provider skipped");
                        ok = false;
                    }
                }
            }
            if ok {
                out.push(Provider {
                    name: s.name,
                    kind: s.kind,
                    channels: s.channels,
                    priority: s.priority,
                    config,
                });
            }
        }
        out.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    fn masked(&self, ws: &str, s: &Stored) -> Value {
        let mut config = s.config.clone();
        for (field, sealed) in &s.sealed {
            let shown = match self.cipher.open(sealed, ws) {
                Ok(plain) if field == "headers" => {
                    let headers: Map<String, Value> =
                        serde_json::from_str(&plain).unwrap_or_default();
                    Value::Object(
                        headers
                            .into_iter()
                            .map(|(k, v)| (k, json!(mask(v.as_str().unwrap_or("")))))
                            .collect(),
                    )
                }
                Ok(plain) => json!(mask(&plain)),
                Err(_) => json!("<undecryptable>"),
            };
            config.insert(field.clone(), shown);
        }
        json!({
            "name": s.name,
            "type": s.kind.as_str(),
            "channels": s.channels,
            "priority": s.priority,
            "config": config,
            "updated_at": s.updated_at,
        })
    }
}
