//! The nodes behind [`crate::NatsServer`] and [`crate::RedisServer`]: one process each, or a
//! cluster of them on free loopback ports, from the same packages `make deps` installs.
//!
//! - JetStream: `n` nats-servers joined by routes (`cluster { routes }`), each with its own
//!   store; streams made with `n` replicas. Readiness is the server's own `/healthz` (which
//!   waits for the JetStream meta leader on a cluster).
//! - Redis Cluster: `2 × primaries` redis-servers with `cluster-enabled yes`, AOF on, joined
//!   by `redis-cli --cluster create --cluster-replicas 1`; ready when every node says
//!   `cluster_state:ok` and every slot is served.
//!
//! Per-node faults for the cluster tests: [`crate::NatsServer::kill_node`],
//! [`crate::NatsServer::stream_leader`], [`crate::RedisServer::kill_node`],
//! [`crate::RedisServer::primary_for`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{binary, kill, stable_port, wait_for_port};

/// How long a Redis primary may be unreachable before its replica takes over. Short, so
/// failover tests stay quick; production keeps Redis' 15 s default or sets its own.
const REDIS_NODE_TIMEOUT_MS: u64 = 1_000;

pub(crate) struct NatsNode {
    name: String,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
    /// Every node's cluster port (this one's included: nats-server ignores a route to itself).
    routes: Vec<u16>,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsNode {
    /// `n` nodes, started; one node has no `cluster` block at all.
    pub(crate) fn group(n: usize, durable: bool) -> Vec<NatsNode> {
        let ports: Vec<u16> = (0..n).map(|_| stable_port()).collect();
        let routes = if n > 1 { ports.clone() } else { Vec::new() };
        let mut nodes: Vec<NatsNode> = ports
            .into_iter()
            .enumerate()
            .map(|(i, cluster_port)| NatsNode {
                name: format!("n{i}"),
                port: stable_port(),
                monitor_port: stable_port(),
                cluster_port,
                routes: routes.clone(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            })
            .collect();
        nodes.iter_mut().for_each(|node| node.spawn(durable));
        nodes
    }

    pub(crate) fn spawn(&mut self, durable: bool) {
        let conf = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("store");
        let sync = if durable {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let mut text = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n{sync}}}\n",
            self.name,
            self.port,
            self.monitor_port,
            store.display().to_string()
        );
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: rc\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                self.cluster_port,
                routes.join(", ")
            ));
        }
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
            "nats-server {} did not start on port {}",
            self.name,
            self.port
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    pub(crate) fn kill(&mut self) {
        kill(&mut self.child);
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's `/healthz` says 200: JetStream is up (with a meta leader, on a cluster)
    /// and its streams are current.
    fn healthy(&self) -> bool {
        http_get_ok(self.monitor_port, "/healthz")
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl crate::NatsServer {
    /// Waits until every running node reports healthy.
    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .nodes
            .iter()
            .filter(|n| n.running())
            .all(NatsNode::healthy)
        {
            assert!(Instant::now() < deadline, "JetStream never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// SIGKILL of one node.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts a killed node again on its ports and store, and waits until it is healthy
    /// (caught up on its streams).
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].kill();
        let durable = self.durable;
        self.nodes[index].spawn(durable);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.nodes[index].healthy() {
            assert!(
                Instant::now() < deadline,
                "node {index} never caught up after its restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which node leads `stream` (asked through `js`), as an index for [`Self::kill_node`].
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<usize> {
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        self.nodes.iter().position(|n| n.name == leader)
    }
}

pub(crate) struct RedisNode {
    port: u16,
    cluster: bool,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisNode {
    pub(crate) fn start(cluster: bool) -> RedisNode {
        let mut node = RedisNode {
            port: stable_port(),
            cluster,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        node.spawn();
        node
    }

    /// `2 × primaries` nodes joined into a cluster with one replica per primary.
    pub(crate) fn cluster(primaries: usize) -> Vec<RedisNode> {
        assert!(primaries >= 3, "Redis Cluster needs at least 3 primaries");
        let nodes: Vec<RedisNode> = (0..primaries * 2).map(|_| RedisNode::start(true)).collect();
        let mut create = Command::new(binary("REDIS_CLI_BIN", "redis-cli"));
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (make deps installs redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.iter().all(RedisNode::cluster_ok) {
            assert!(Instant::now() < deadline, "Redis Cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        nodes
    }

    pub(crate) fn spawn(&mut self) {
        let mut cmd = Command::new(binary("REDIS_SERVER_BIN", "redis-server"));
        cmd.args([
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
        .arg("--logfile")
        .arg(self.dir.path().join("redis.log"));
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &REDIS_NODE_TIMEOUT_MS.to_string(),
                // A replica's first full sync starts at once (Redis waits 5 s by default to
                // serve several replicas with one transfer): until it is done it cannot fail over.
                "--repl-diskless-sync-delay",
                "0",
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps), or set REDIS_SERVER_BIN");
        self.child = Some(child);
        if !wait_for_port(self.port, Duration::from_secs(15)) {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            panic!("redis-server did not start on port {}: {tail:?}", self.port);
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// `SHUTDOWN` (the AOF is flushed first), then waits for the process to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut conn) = self.connection() {
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

    /// A short-lived sync connection whose reads and writes time out (never a hung test).
    fn connection(&self) -> Option<redis::Connection> {
        let conn = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        conn.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
        Some(conn)
    }

    /// `CLUSTER INFO` (`"CLUSTER"`) or `INFO replication` (`"INFO"`).
    fn info(&self, command: &str) -> String {
        let mut cmd = redis::cmd(command);
        match command {
            "CLUSTER" => cmd.arg("INFO"),
            _ => cmd.arg("replication"),
        };
        self.connection()
            .and_then(|mut c| cmd.query::<String>(&mut c).ok())
            .unwrap_or_default()
    }

    /// `CLUSTER INFO` says ok and all 16,384 slots are served, and a replica has finished
    /// syncing with its primary (until then it could not take over).
    fn cluster_ok(&self) -> bool {
        let info = self.info("CLUSTER");
        if !(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")) {
            return false;
        }
        let replication = self.info("INFO");
        !replication.contains("role:slave") || replication.contains("master_link_status:up")
    }

    /// `ROLE` is master.
    fn is_primary(&self) -> bool {
        self.connection()
            .and_then(|mut c| redis::cmd("ROLE").query::<redis::Value>(&mut c).ok())
            .is_some_and(|v| match v {
                redis::Value::Array(items) => matches!(
                    items.first(),
                    Some(redis::Value::BulkString(b)) if b == b"master"
                ),
                _ => false,
            })
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl crate::RedisServer {
    /// The node that serves `key`'s slot as primary now (asked of a live node).
    pub fn primary_for(&self, key: &str) -> usize {
        self.slot_nodes(key)[0]
    }

    /// The nodes that replicate `key`'s slot now (waiting until gossip has told the node asked).
    pub fn replicas_for(&self, key: &str) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.slot_nodes(key);
            if nodes.len() > 1 || Instant::now() > deadline {
                return nodes[1..].to_vec();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `key`'s slot: its primary first, then its replicas, as node indexes (`CLUSTER SLOTS`,
    /// which every 7.x has, asked of a live node).
    fn slot_nodes(&self, key: &str) -> Vec<usize> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.running())
            .expect("a live node");
        let mut conn = live.connection().expect("connection");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("CLUSTER SLOTS");
        for range in slots {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if !(*lo..=*hi).contains(&i64::from(slot)) {
                continue;
            }
            // Each node entry: [ip, port, id, …].
            return items[2..]
                .iter()
                .filter_map(|node| match node {
                    redis::Value::Array(fields) => match fields.get(1) {
                        Some(redis::Value::Int(port)) => {
                            self.nodes.iter().position(|n| i64::from(n.port) == *port)
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
        }
        panic!("no node serves slot {slot}");
    }

    /// SIGKILL of one node.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts a killed node again (it rejoins with its `nodes.conf`, as a replica when its
    /// replica took over) and waits until the cluster is ok again everywhere.
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].kill();
        self.nodes[index].spawn();
        self.wait_cluster_ok(Duration::from_secs(30));
    }

    /// Every running node says `cluster_state:ok` with every slot served.
    pub fn wait_cluster_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .nodes
            .iter()
            .filter(|n| n.running())
            .all(RedisNode::cluster_ok)
        {
            assert!(Instant::now() < deadline, "Redis Cluster not ok in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether node `index` is a primary now.
    pub fn is_primary(&self, index: usize) -> bool {
        self.nodes[index].is_primary()
    }
}

/// A plain HTTP/1.0 GET on loopback answered 200 (no client crate needed in sync code).
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
