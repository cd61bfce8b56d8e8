//! Test harness: real `nats-server` and `redis-server` processes on free ports with temp dirs
//! (no Docker, no mocks), plus helpers that run services in-process against them.
//!
//! Binaries come from `$NATS_SERVER_BIN` / `$REDIS_SERVER_BIN`, else from `PATH`
//! (`make deps` installs both).

pub mod accounts;
pub mod automations;
pub mod dataplane;
pub mod delivery;
pub mod forwarder;
pub mod frontdoor;
pub mod profiles;
pub mod tls;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rc_common::Shutdown;
use rc_common::config::{AuthSettings, NatsSettings, RedisSettings, ShutdownSettings};
use tempfile::TempDir;
use tokio::task::JoinHandle;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A JetStream-enabled nats-server with its own store directory.
pub struct NatsServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    durable: bool,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Durable mode: `sync_interval: always` (fsync before every ack).
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        // Test clients (`reqwest::Client::new()`) use rustls' process-default provider.
        rc_common::outbound::install_default_crypto_provider();
        let mut server = NatsServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            durable,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("store");
        let sync = if self.durable {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let text = format!(
            "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n{sync}}}\n",
            self.port,
            store.display().to_string()
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        let child = Command::new(binary("NATS_SERVER_BIN", "nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (make deps), or set NATS_SERVER_BIN");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(15)),
            "nats-server did not start on port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (for CPU and memory readings from /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn settings(&self) -> NatsSettings {
        NatsSettings {
            url: self.url(),
            publish_timeout_ms: 1_000,
            ..NatsSettings::default()
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A redis-server with AOF on, in its own directory.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary("REDIS_SERVER_BIN", "redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps), or set REDIS_SERVER_BIN");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(15)),
            "redis-server did not start on port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (for CPU and memory readings from /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Clean stop (`SHUTDOWN`: the AOF is flushed first), as an operator's restart would;
    /// the port and the data directory stay for [`RedisServer::start_again`].
    pub fn stop(&mut self) {
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            // The server closes the connection instead of answering.
            let _ = redis::cmd("SHUTDOWN").query::<()>(&mut conn);
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same data directory (AOF replayed).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
    }

    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: self.url(),
            ..RedisSettings::default()
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One nats-server and one redis-server for a test.
pub struct Stack {
    pub nats: NatsServer,
    pub redis: RedisServer,
}

impl Stack {
    pub fn start() -> Self {
        Stack {
            nats: NatsServer::start(),
            redis: RedisServer::start(),
        }
    }

    /// With nats-server in durable mode (fsync before ack).
    pub fn start_durable() -> Self {
        Stack {
            nats: NatsServer::start_durable(),
            redis: RedisServer::start(),
        }
    }

    pub async fn redis_conn(&self) -> rc_common::redis::RedisConn {
        rc_common::redis::connect(&self.redis.settings())
            .await
            .expect("redis")
    }

    /// Creates workspace `id` and returns a fresh API key for it.
    pub async fn workspace(&self, id: &str) -> String {
        let store = rc_common::auth::WorkspaceStore::new(self.redis_conn().await);
        store
            .create_workspace(id, id)
            .await
            .expect("create workspace");
        store.add_key(id, None).await.expect("add key")
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.expect("nats")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let js = async_nats::jetstream::new(self.nats_client().await);
        rc_common::nats::ensure_streams(&js, &self.nats.settings())
            .await
            .expect("streams");
        js
    }

    /// Settings for tests: short caches and drains so tests stay fast.
    pub fn auth_settings() -> AuthSettings {
        AuthSettings {
            cache_ttl_ms: 200,
            negative_cache_ttl_ms: 100,
            cache_max_entries: 1_000,
            ..AuthSettings::default()
        }
    }

    pub fn shutdown_settings() -> ShutdownSettings {
        ShutdownSettings {
            readiness_grace_ms: 0,
            drain_timeout_ms: 2_000,
        }
    }

    pub fn ingress_settings(&self) -> ingress::Settings {
        ingress::Settings {
            nats: self.nats.settings(),
            redis: self.redis.settings(),
            auth: Self::auth_settings(),
            shutdown: Self::shutdown_settings(),
            ..ingress::Settings::default()
        }
    }

    pub async fn ingress(&self) -> Service {
        self.ingress_with(self.ingress_settings()).await
    }

    pub async fn ingress_with(&self, settings: ingress::Settings) -> Service {
        Service::spawn(|listener, shutdown| async move {
            ingress::run(settings, Some(listener), shutdown).await
        })
        .await
    }
}

type RunResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Something serving HTTP on a local port: an in-process [`Service`] or a [`ServiceProcess`],
/// so request helpers work with both.
pub trait Endpoint {
    fn url(&self, path: &str) -> String;
}

impl Endpoint for Service {
    fn url(&self, path: &str) -> String {
        Service::url(self, path)
    }
}

impl Endpoint for ServiceProcess {
    fn url(&self, path: &str) -> String {
        ServiceProcess::url(self, path)
    }
}

/// One request authenticated with a workspace API key, with an optional JSON body; answers the
/// status and the JSON body (`Null` when there is none).
pub async fn call(
    to: &impl Endpoint,
    api_key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, to.url(path))
        .bearer_auth(api_key);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The service's Prometheus text (`/metrics`).
pub async fn metrics(of: &impl Endpoint) -> String {
    reqwest::get(of.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// POSTs a JSON `body` with `key` as the bearer (as RudderStack calls the ingress).
pub async fn post_json_as(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// A service running in-process on a port of its own.
pub struct Service {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    handle: Option<JoinHandle<RunResult>>,
}

impl Service {
    pub async fn spawn<F, Fut>(run: F) -> Service
    where
        F: FnOnce(tokio::net::TcpListener, Shutdown) -> Fut,
        Fut: std::future::Future<Output = RunResult> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(run(listener, shutdown.clone()));
        let service = Service {
            addr,
            shutdown,
            handle: Some(handle),
        };
        service.wait_ready(Duration::from_secs(20)).await;
        service
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "service at {} never became ready",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Graceful stop: trigger shutdown and wait for `run` to return.
    pub async fn stop(mut self) -> RunResult {
        self.shutdown.trigger();
        match self.handle.take() {
            Some(h) => h.await.expect("service task panicked"),
            None => Ok(()),
        }
    }

    /// Abrupt stop: the task is dropped mid-work, as if the process were killed.
    pub fn kill(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.shutdown.trigger();
            h.abort();
        }
    }
}

/// A service's real binary (`rc-profiles`, …) as a child process, configured through the
/// environment like in production: for crash tests that need a real SIGKILL (an in-process
/// task abort lets already-spawned work finish; a killed process does not).
pub struct ServiceProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
}

/// Where the workspace's binaries are: `$RC_BIN_DIR`, else next to this test binary's
/// directory (`target/<profile>/deps/..`). `make test` builds them (`--all-targets`).
pub fn service_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("RC_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .to_path_buf()
        });
    let path = dir.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built; run `cargo build --bins` first (make test does)",
                path.display()
            )
        });
    // A stale binary would test old code: refuse it rather than pass or fail for nothing.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let own = format!("services/{}", name.trim_start_matches("rc-"));
    for dir in ["services/common", "proto", own.as_str()] {
        if let Some(newer) = newer_source(&root.join(dir), built) {
            panic!(
                "{} is older than {}; run `cargo build --bins` (make test does)",
                path.display(),
                newer.display()
            );
        }
    }
    path
}

/// A `.rs`/`.proto`/`Cargo.toml` under `dir` modified after `than`, if any.
fn newer_source(dir: &std::path::Path, than: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            if let Some(p) = newer_source(&path, than) {
                return Some(p);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "proto" || e == "toml")
            && meta.modified().is_ok_and(|m| m > than)
        {
            return Some(path);
        }
    }
    None
}

impl ServiceProcess {
    /// Starts `binary` on a free port with `env` (plus the listen address) and waits for
    /// `/readyz`.
    pub async fn start(binary: &str, env: &[(&str, String)]) -> ServiceProcess {
        let port = free_port();
        let mut cmd = Command::new(service_binary(binary));
        cmd.env("RC_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("RC_LOG__FORMAT", "json")
            .env("RC_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn service binary");
        let process = ServiceProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(process.url("/readyz")).send().await
                && r.status().is_success()
            {
                return process;
            }
            assert!(Instant::now() < deadline, "{binary} never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no drain, no flush, whatever was in flight is cut.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM, as Kubernetes sends it; returns how the process exited and how long it took
    /// (None if it was still running after `timeout`, then it is killed).
    pub async fn terminate(
        &mut self,
        timeout: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -TERM failed");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill(&mut self.child);
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl Stack {
    /// The environment a service binary needs to reach this stack's NATS and Redis.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RC_NATS__URL", self.nats.url()),
            ("RC_REDIS__URL", self.redis.url()),
        ]
    }
}

/// Reads every message currently stored under `subject` (e.g. `events.ws.>`), in order.
pub async fn stored_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures::StreamExt;
    let stream = js.get_stream(stream).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::with_capacity(pending);
    // Pull in batches until all are read (no acks: nothing is held back by max_ack_pending).
    while out.len() < pending {
        let before = out.len();
        let mut messages = consumer
            .fetch()
            .max_messages((pending - out.len()).min(1_000))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(m)) = messages.next().await {
            out.push(m);
        }
        if out.len() == before {
            break;
        }
    }
    out
}
