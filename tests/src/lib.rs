//! Test harness: real `nats-server` and `redis-server` processes on free ports with temp dirs
//! (no Docker, no mocks), plus helpers that run services in-process against them.
//!
//! Binaries come from `$NATS_SERVER_BIN` / `$REDIS_SERVER_BIN`, else from `PATH`
//! (`make deps` installs both).

pub mod accounts;
pub mod automations;
pub mod dataplane;
pub mod delivery;
pub mod events;
pub mod forwarder;
pub mod frontdoor;
pub mod profiles;
pub mod tls;

pub mod cluster;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rc_common::Shutdown;
use rc_common::config::{AuthSettings, NatsSettings, RedisSettings, ShutdownSettings};
use tokio::task::JoinHandle;

/// A service's `Settings` on `$stack`'s NATS and Redis, with the test auth and shutdown
/// settings and every other section defaulted.
#[macro_export]
macro_rules! stack_settings {
    ($stack:expr, $($settings:ident)::+) => {
        $($settings)::+ {
            nats: $stack.nats.settings(),
            redis: $stack.redis.settings(),
            auth: $crate::Stack::auth_settings(),
            shutdown: $crate::Stack::shutdown_settings(),
            ..Default::default()
        }
    };
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free port below the kernel's ephemeral range (32768+), for a server the test may stop and
/// start again on the same port: a port from the ephemeral range can meanwhile become some
/// connection's local port, and the restart then fails (seen in CI). `port + 10000` is free
/// and below that range too: Redis Cluster listens there for its bus.
pub fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 12_768; // LOW + SPAN + 10_000 = 32_768
    // Start somewhere different in every process, then walk: two tests of one process never
    // take the same port, and concurrent test processes rarely meet.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
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

/// JetStream: one nats-server with its own store directory, or a cluster of them
/// ([`NatsServer::start_cluster`], see [`cluster`]). Whole-server operations (`kill`, `restart`)
/// act on every node; [`cluster`] adds per-node faults.
pub struct NatsServer {
    nodes: Vec<cluster::NatsNode>,
    durable: bool,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(1, false)
    }

    /// Durable mode: `sync_interval: always` (fsync before every ack).
    pub fn start_durable() -> Self {
        Self::start_with(1, true)
    }

    /// A JetStream cluster of `nodes` servers (routes on loopback); streams get `nodes` replicas.
    pub fn start_cluster(nodes: usize) -> Self {
        Self::start_with(nodes, false)
    }

    fn start_with(nodes: usize, durable: bool) -> Self {
        // Test clients (`reqwest::Client::new()`) use rustls' process-default provider.
        rc_common::outbound::install_default_crypto_provider();
        let server = NatsServer {
            nodes: cluster::NatsNode::group(nodes, durable),
            durable,
        };
        server.wait_ready();
        server
    }

    /// Every node's client URL, comma-separated (what `RC_NATS__URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(cluster::NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The first node's process id (for CPU and memory readings from /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.nodes.first().and_then(cluster::NatsNode::pid)
    }

    /// Every running node's process id.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(cluster::NatsNode::pid)
            .collect()
    }

    /// Every node's monitoring port (`/varz`, `/healthz`).
    pub fn monitor_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(cluster::NatsNode::monitor_port)
            .collect()
    }

    /// SIGKILL of every node, like a crash.
    pub fn kill(&mut self) {
        self.nodes.iter_mut().for_each(cluster::NatsNode::kill);
    }

    /// Every node starts again on the same ports with the same stores.
    pub fn restart(&mut self) {
        self.kill();
        let durable = self.durable;
        self.nodes.iter_mut().for_each(|n| n.spawn(durable));
        self.wait_ready();
    }

    pub fn settings(&self) -> NatsSettings {
        NatsSettings {
            url: self.url(),
            publish_timeout_ms: 1_000,
            stream_replicas: self.nodes.len(),
            ..NatsSettings::default()
        }
    }
}

/// Redis: one redis-server with AOF on in its own directory, or a Redis Cluster of them
/// ([`RedisServer::start_cluster`], see [`cluster`]).
pub struct RedisServer {
    nodes: Vec<cluster::RedisNode>,
}

impl RedisServer {
    pub fn start() -> Self {
        RedisServer {
            nodes: vec![cluster::RedisNode::start(false)],
        }
    }

    /// A Redis Cluster: `primaries` primaries with one replica each, made with
    /// `redis-cli --cluster create`.
    pub fn start_cluster(primaries: usize) -> Self {
        RedisServer {
            nodes: cluster::RedisNode::cluster(primaries),
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// The single node's URL (a cluster's first seed: use [`RedisServer::settings`] there).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The first node's process id (for CPU and memory readings from /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.nodes[0].pid()
    }

    pub fn kill(&mut self) {
        self.nodes.iter_mut().for_each(cluster::RedisNode::kill);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.nodes.iter_mut().for_each(cluster::RedisNode::spawn);
    }

    /// Clean stop (`SHUTDOWN`: the AOF is flushed first), as an operator's restart would;
    /// the port and the data directory stay for [`RedisServer::start_again`].
    pub fn stop(&mut self) {
        self.nodes.iter_mut().for_each(cluster::RedisNode::stop);
    }

    /// Starts the server again on the same port with the same data directory (AOF replayed).
    pub fn start_again(&mut self) {
        for node in &mut self.nodes {
            assert!(!node.running(), "redis-server is still running");
            node.spawn();
        }
    }

    /// Comma-separated seeds of a cluster, empty for a single node.
    fn cluster_urls(&self) -> String {
        if !self.is_cluster() {
            return String::new();
        }
        self.nodes
            .iter()
            .map(cluster::RedisNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: self.url(),
            cluster_urls: self.cluster_urls(),
            ..RedisSettings::default()
        }
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

    /// [`Stack::start`], or [`Stack::start_cluster`] when `RC_TEST_CLUSTER=1`: `make test` runs
    /// the end-to-end suite a second time that way, on the engines production runs.
    pub fn start_for_suite() -> Self {
        if std::env::var("RC_TEST_CLUSTER").is_ok_and(|v| v == "1") {
            Self::start_cluster()
        } else {
            Self::start()
        }
    }

    /// A 3-node JetStream cluster (R3 streams) and a Redis Cluster of 3 primaries with a
    /// replica each, instead of single servers.
    pub fn start_cluster() -> Self {
        Stack {
            nats: NatsServer::start_cluster(3),
            redis: RedisServer::start_cluster(3),
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
        async_nats::connect(rc_common::nats::server_list(&self.nats.url()))
            .await
            .expect("nats")
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
        stack_settings!(self, ingress::Settings)
    }

    pub async fn ingress(&self) -> Service {
        self.ingress_with(self.ingress_settings()).await
    }

    pub async fn ingress_with(&self, settings: ingress::Settings) -> Service {
        Service::run(settings, ingress::run).await
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
    to: &(impl Endpoint + ?Sized),
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

/// [`call`] by whole URL, with extra request headers; answers the typed status and the JSON
/// body (`Null` when empty; a body that is not JSON fails the test).
pub async fn call_url(
    method: reqwest::Method,
    url: &str,
    api_key: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(api_key);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text:?}"))
    };
    (status, body)
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
    /// Runs a service's library `run` (e.g. `profiles::run`) with `settings` in-process.
    pub async fn run<S, F, Fut>(settings: S, run: F) -> Service
    where
        F: FnOnce(S, Option<tokio::net::TcpListener>, Shutdown) -> Fut,
        Fut: std::future::Future<Output = RunResult> + Send + 'static,
    {
        Service::spawn(|listener, shutdown| run(settings, Some(listener), shutdown)).await
    }

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
        Self::start_on(stable_port(), binary, env).await
    }

    /// Starts `binary` again on this process's port (after [`ServiceProcess::terminate`] or
    /// [`ServiceProcess::kill`]), as a restarted pod behind the same Service.
    pub async fn restart(&mut self, binary: &str, env: &[(&str, String)]) {
        self.kill();
        *self = Self::start_on(self.addr.port(), binary, env).await;
    }

    async fn start_on(port: u16, binary: &str, env: &[(&str, String)]) -> ServiceProcess {
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
        let mut env = vec![
            ("RC_NATS__URL", self.nats.url()),
            ("RC_REDIS__URL", self.redis.url()),
        ];
        let nats = self.nats.settings();
        if nats.stream_replicas > 1 {
            env.push(("RC_NATS__STREAM_REPLICAS", nats.stream_replicas.to_string()));
        }
        if self.redis.is_cluster() {
            env.push(("RC_REDIS__CLUSTER_URLS", self.redis.cluster_urls()));
        }
        env
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
