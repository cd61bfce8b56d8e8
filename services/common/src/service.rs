//! The wiring every service shares, written once: the binary's `main` (config, logs, signals,
//! exit code) and, in `run()`, bind the listener, connect NATS and Redis, provision the streams
//! before any consumer starts, serve with a bounded drain, then stop background work (bounded
//! too) and flush what NATS still buffers.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;

use crate::Shutdown;
use crate::auth::{Authenticator, WorkspaceStore};
use crate::config::{
    AuthSettings, HttpSettings, LogSettings, NatsSettings, RedisSettings, RuntimeSettings,
    ShutdownSettings,
};
use crate::ops::Readiness;
use crate::redis::RedisConn;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The settings sections every service has.
#[derive(Clone, Copy)]
pub struct Base<'a> {
    pub http: &'a HttpSettings,
    pub nats: &'a NatsSettings,
    pub redis: &'a RedisSettings,
    pub shutdown: &'a ShutdownSettings,
}

/// A service's whole configuration; implement it with [`service_settings!`](crate::service_settings).
pub trait ServiceSettings: serde::de::DeserializeOwned {
    fn base(&self) -> Base<'_>;
    fn log(&self) -> &LogSettings;
    fn runtime(&self) -> &RuntimeSettings;
}

/// Implements [`ServiceSettings`] for a settings struct with the common sections as fields named
/// `http`, `nats`, `redis`, `shutdown` and `log`.
#[macro_export]
macro_rules! service_settings {
    ($settings:ty) => {
        impl $crate::service::ServiceSettings for $settings {
            fn base(&self) -> $crate::service::Base<'_> {
                $crate::service::Base {
                    http: &self.http,
                    nats: &self.nats,
                    redis: &self.redis,
                    shutdown: &self.shutdown,
                }
            }
            fn log(&self) -> &$crate::config::LogSettings {
                &self.log
            }
            fn runtime(&self) -> &$crate::config::RuntimeSettings {
                &self.runtime
            }
        }
    };
}

/// Declares a service's `Settings`: the sections every service has (`http` on `port`, `nats`,
/// `redis`, `log`, `shutdown`, `auth`) plus its own, each defaulted, with
/// [`ServiceSettings`] implemented; so the shared wiring is written once.
#[macro_export]
macro_rules! settings {
    (port: $port:expr; $( $(#[$meta:meta])* $field:ident : $ty:ty ),* $(,)?) => {
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
        #[serde(default)]
        pub struct Settings {
            pub http: $crate::config::HttpSettings,
            pub nats: $crate::config::NatsSettings,
            pub redis: $crate::config::RedisSettings,
            pub log: $crate::config::LogSettings,
            pub shutdown: $crate::config::ShutdownSettings,
            pub auth: $crate::config::AuthSettings,
            pub runtime: $crate::config::RuntimeSettings,
            $( $(#[$meta])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    http: $crate::config::HttpSettings::on_port($port),
                    nats: Default::default(),
                    redis: Default::default(),
                    log: Default::default(),
                    shutdown: Default::default(),
                    auth: Default::default(),
                    runtime: Default::default(),
                    $( $field: Default::default(), )*
                }
            }
        }

        $crate::service_settings!(Settings);
    };
}

/// A service binary's whole `main`: load the layered config (exit 2 if invalid), start the
/// logs, turn SIGTERM/SIGINT into a graceful drain, and run until it ends (exit 1 on error).
pub fn main<S, F, Fut>(service: &'static str, run: F) -> ExitCode
where
    S: ServiceSettings,
    F: FnOnce(S, Option<TcpListener>, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let settings: S = match crate::config::load(service) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("{service}: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let threads = settings.runtime().worker_threads;
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{service}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        crate::telemetry::init_tracing(settings.log());
        let shutdown = Shutdown::new();
        let grace = Duration::from_millis(settings.base().shutdown.readiness_grace_ms);
        shutdown.trigger_on_signals(grace);
        match run(settings, None, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(service, error = %err, "Service failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// A service's `api` as served: plus the ops endpoints (`/healthz`, `/readyz`, `/metrics`), the
/// HTTP metrics of every route, and `request_timeout` answered 503 (temporary, like a drain).
pub fn with_ops(api: Router, readiness: Readiness, request_timeout: Duration) -> Router {
    api.merge(crate::ops::router(readiness))
        .layer(axum::middleware::from_fn(crate::ops::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}

/// A started service's connections and background tasks.
pub struct Runtime {
    name: &'static str,
    listener: TcpListener,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub redis: RedisConn,
    pub shutdown: Shutdown,
    http: HttpSettings,
    drain_timeout: Duration,
    /// True once the streams are provisioned (readiness and consumers wait for it).
    streams: watch::Receiver<bool>,
    tasks: Vec<AbortOnDrop>,
}

/// Background tasks die with the runtime: a service future that is dropped (a test killing it,
/// a failed start) must not leave a consumer pulling messages.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

impl Runtime {
    /// Binds (unless a listener is given), connects NATS, waits for Redis, and starts
    /// provisioning the streams in the background (readiness reports them).
    pub async fn start(
        name: &'static str,
        base: Base<'_>,
        listener: Option<TcpListener>,
        shutdown: Shutdown,
    ) -> Result<Self, BoxError> {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(base.http.listen).await?,
        };
        tracing::info!(service = name, addr = %listener.local_addr()?, "Listening");
        let nats = crate::nats::connect(base.nats, name).await?;
        let js = crate::nats::jetstream(nats.clone(), base.nats);
        let redis = crate::redis::connect_until_ready(base.redis, &shutdown)
            .await
            .ok_or("shut down before Redis was reachable")?;

        let (ready_tx, streams) = watch::channel(false);
        let provision = {
            let (js, settings, shutdown) = (js.clone(), base.nats.clone(), shutdown.clone());
            tokio::spawn(async move {
                if crate::nats::provision_streams_until_ready(&js, &settings, &shutdown).await {
                    let _ = ready_tx.send(true);
                }
            })
        };
        Ok(Self {
            name,
            listener,
            nats,
            js,
            redis,
            shutdown,
            http: base.http.clone(),
            drain_timeout: Duration::from_millis(base.shutdown.drain_timeout_ms),
            streams,
            tasks: vec![AbortOnDrop(Some(provision))],
        })
    }

    /// The API-key authenticator over this runtime's Redis.
    pub fn authenticator(&self, settings: &AuthSettings) -> Arc<Authenticator> {
        Arc::new(Authenticator::new(
            WorkspaceStore::new(self.redis.clone()),
            settings,
        ))
    }

    /// `/readyz`: NATS and Redis reachable, streams provisioned, not draining.
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.shutdown.clone())
            .with_nats(self.nats.clone())
            .with_redis(self.redis.clone())
            .with_streams(self.streams.clone())
    }

    /// Runs `task` in the background once the streams exist (consumers bind to them); it is not
    /// started at all if shutdown comes first.
    pub fn spawn_when_streams_ready<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(jetstream::Context, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (mut ready, js, shutdown) =
            (self.streams.clone(), self.js.clone(), self.shutdown.clone());
        self.spawn(async move {
            let provisioned = tokio::select! {
                r = ready.wait_for(|ready| *ready) => r.is_ok(),
                _ = shutdown.triggered() => false,
            };
            if provisioned {
                task(js, shutdown).await;
            }
        });
    }

    /// Runs `task` in the background; it should end soon after shutdown triggers.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(AbortOnDrop(Some(tokio::spawn(task))));
    }

    /// Serves the service's `api` (its state applied) with what every service adds (see
    /// [`with_ops`]) until shutdown, drains in-flight requests, then gives background tasks the
    /// drain timeout to finish (consumers ack or give back what they hold) and flushes NATS.
    pub async fn serve(self, api: Router) -> Result<(), BoxError> {
        let request_timeout = Duration::from_millis(self.http.request_timeout_ms);
        let app = with_ops(api, self.readiness(), request_timeout);
        let Self {
            name,
            listener,
            nats,
            shutdown,
            http,
            drain_timeout,
            mut tasks,
            ..
        } = self;
        crate::http::serve(listener, app, &http, shutdown.clone(), drain_timeout).await?;
        shutdown.trigger();
        let all = futures::future::join_all(tasks.iter_mut().filter_map(|t| t.0.as_mut()));
        if tokio::time::timeout(drain_timeout, all).await.is_err() {
            tracing::warn!(
                service = name,
                timeout_ms = drain_timeout.as_millis() as u64,
                "Background tasks did not stop in time; aborting them"
            );
        }
        // Dropping `tasks` aborts whatever is still running.
        drop(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
        tracing::info!(service = name, "Stopped");
        Ok(())
    }
}
