//! Layered configuration: built-in defaults (each settings struct's `Default`) → an optional
//! TOML file → environment variables.
//!
//! The file is `$RC_CONFIG_FILE` when set (then it must exist), else `config/<service>.toml`
//! when present. Variables are `RC_<SECTION>__<KEY>`, e.g. `RC_NATS__URL`,
//! `RC_REDIS__RESPONSE_TIMEOUT_MS`, `RC_INGRESS__MAX_INFLIGHT_PUBLISHES`.

use std::collections::HashMap;
use std::net::SocketAddr;

use config::{Config, Environment, File};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use config::ConfigError;

pub const ENV_PREFIX: &str = "RC";
pub const CONFIG_FILE_VAR: &str = "RC_CONFIG_FILE";

/// Loads settings for `service` from the process environment.
pub fn load<T: DeserializeOwned>(service: &str) -> Result<T, ConfigError> {
    load_from(service, None)
}

/// Like [`load`], but with an explicit variable map instead of the process environment
/// (tests use this so they never touch global state).
pub fn load_from<T: DeserializeOwned>(
    service: &str,
    vars: Option<HashMap<String, String>>,
) -> Result<T, ConfigError> {
    let file = match &vars {
        Some(v) => v.get(CONFIG_FILE_VAR).cloned(),
        None => std::env::var(CONFIG_FILE_VAR).ok(),
    };
    let mut builder = Config::builder();
    builder = match file {
        Some(path) => builder.add_source(File::with_name(&path).required(true)),
        None => builder.add_source(File::with_name(&format!("config/{service}")).required(false)),
    };
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator("__")
        .source(vars);
    builder.add_source(env).build()?.try_deserialize()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Address the service listens on (API, `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Upper bound for one request, so a stuck client cannot hold a drain forever.
    pub request_timeout_ms: u64,
    /// A connection must send a whole request head within this, else it is closed.
    pub header_read_timeout_ms: u64,
    /// A request body that sends nothing for this long fails to read (408 at the ingress).
    pub body_read_timeout_ms: u64,
}

impl HttpSettings {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 5_000,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self::on_port(8080)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct NatsSettings {
    pub url: String,
    /// Optional `.creds` file for authenticated clusters.
    pub credentials_file: Option<String>,
    /// How long a JetStream publish may wait for its ack before the caller gets a 503.
    pub publish_timeout_ms: u64,
    /// Stream replicas (1 locally, 3 on a JetStream cluster).
    pub stream_replicas: usize,
    /// `file` or `memory`.
    pub stream_storage: String,
    /// JetStream dedupe window for `Nats-Msg-Id` (at least 10 minutes).
    pub duplicate_window_secs: u64,
    /// How long events stay in EVENTS / COURIER (replay window).
    pub max_age_secs: u64,
    /// How long dead letters stay in DLQ.
    pub dlq_max_age_secs: u64,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: None,
            publish_timeout_ms: 2_000,
            stream_replicas: 1,
            stream_storage: "file".into(),
            duplicate_window_secs: 600,
            max_age_secs: 7 * 24 * 3600,
            dlq_max_age_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Single-node URL, used when `cluster_urls` is empty.
    pub url: String,
    /// Comma-separated seed nodes of a Redis Cluster; when set, `url` is ignored.
    pub cluster_urls: String,
    pub response_timeout_ms: u64,
    pub connection_timeout_ms: u64,
    /// Replicas every write must reach before a consumer acks its message (`WAIT`): 0 (the
    /// default) trusts the primary alone; 1 on a Redis Cluster with replicas keeps an
    /// acknowledged effect through a primary's loss (README "Durability").
    pub wait_replicas: u32,
    /// How long one `WAIT` may take; fewer replicas in time is an outage (nak, retry).
    pub wait_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_urls: String::new(),
            response_timeout_ms: 1_000,
            connection_timeout_ms: 1_000,
            wait_replicas: 0,
            wait_timeout_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogSettings {
    /// `pretty` (local) or `json` (production).
    pub format: String,
    /// A tracing filter such as `info` or `info,ingress=debug`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ShutdownSettings {
    /// After SIGTERM, `/readyz` fails for this long before the listener closes, so load
    /// balancers stop routing here first.
    pub readiness_grace_ms: u64,
    /// Then in-flight work gets at most this long to finish.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            readiness_grace_ms: 2_000,
            drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RuntimeSettings {
    /// Tokio worker threads; 0 = one per core. One by default: a service scales out by
    /// replicas, and one worker per process spent 4-8 % less CPU per event end to end than one
    /// per core (18 % of the services' own on identify; BENCHMARKS.md, 2026-12-04), with no
    /// thread handing work to another.
    pub worker_threads: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { worker_threads: 1 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSettings {
    /// How long a resolved API key stays cached in-process (revocation takes this long).
    pub cache_ttl_ms: u64,
    /// How long an unknown key stays cached as unknown.
    pub negative_cache_ttl_ms: u64,
    /// Cache size bound (least recently used entries go first).
    pub cache_max_entries: usize,
    /// While Redis is unavailable, a key verified within this long is still accepted (its
    /// workspace from the cache); unknown keys get 503. Once Redis answers, `cache_ttl_ms`
    /// rules again (a revoked key stops working).
    pub outage_grace_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            cache_ttl_ms: 5_000,
            negative_cache_ttl_ms: 1_000,
            cache_max_entries: 10_000,
            outage_grace_ms: 3_600_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Sample {
        nats: NatsSettings,
        redis: RedisSettings,
        http: HttpSettings,
        runtime: RuntimeSettings,
    }

    #[test]
    fn env_overrides_defaults() {
        let vars = HashMap::from([
            (
                "RC_NATS__URL".to_string(),
                "nats://10.0.0.1:4222".to_string(),
            ),
            (
                "RC_REDIS__RESPONSE_TIMEOUT_MS".to_string(),
                "250".to_string(),
            ),
            ("RC_HTTP__LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ("RC_RUNTIME__WORKER_THREADS".to_string(), "0".to_string()),
        ]);
        let s: Sample = load_from("nonexistent-service", Some(vars)).unwrap();
        assert_eq!(s.runtime.worker_threads, 0, "0 = one worker per core");
        assert_eq!(RuntimeSettings::default().worker_threads, 1);
        assert_eq!(s.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(s.redis.response_timeout_ms, 250);
        assert_eq!(s.http.listen.port(), 9000);
        assert_eq!(
            s.nats.duplicate_window_secs, 600,
            "untouched keys keep defaults"
        );
    }

    #[test]
    fn file_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("rc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.toml");
        std::fs::write(
            &path,
            "[nats]\nurl = \"nats://file:4222\"\npublish_timeout_ms = 7\n",
        )
        .unwrap();
        let vars = HashMap::from([
            (CONFIG_FILE_VAR.to_string(), path.display().to_string()),
            ("RC_NATS__PUBLISH_TIMEOUT_MS".to_string(), "9".to_string()),
        ]);
        let s: Sample = load_from("svc", Some(vars)).unwrap();
        assert_eq!(s.nats.url, "nats://file:4222");
        assert_eq!(s.nats.publish_timeout_ms, 9);
        std::fs::remove_dir_all(dir).ok();
    }
}
