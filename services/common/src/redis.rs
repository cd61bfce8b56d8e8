//! Redis connection: one self-reconnecting handle over either a single node or a Redis Cluster.
//!
//! Every key the services write is built by [`crate::keys`] (`{ws:<workspace>}:…`, hash tag on
//! the workspace) so multi-key operations of one workspace stay in one cluster slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisSettings;

/// Cheap to clone; multiplexed; reconnects by itself.
#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    /// `Some` when writes must reach replicas before a consumer acks ([`RedisConn::replicated`]).
    barrier: Option<Arc<ReplicaBarrier>>,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.link {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    fn new(link: Link, settings: &RedisSettings) -> Self {
        let barrier = (settings.wait_replicas > 0).then(|| {
            Arc::new(ReplicaBarrier {
                replicas: settings.wait_replicas,
                timeout_ms: settings.wait_timeout_ms.max(1),
                tickets: AtomicU64::new(0),
                done: AtomicU64::new(0),
                turn: tokio::sync::Mutex::new(()),
            })
        });
        RedisConn { link, barrier }
    }

    /// Returns once every write this process made before the call is on at least
    /// `wait_replicas` replicas (`WAIT`; on a cluster, of every primary). Redis replicates
    /// asynchronously: without this, a primary that dies right after a write can take an
    /// acknowledged effect with it. One `WAIT` serves every caller queued behind the one in
    /// flight (group commit). `Err` (too few replicas in `wait_timeout_ms`, or Redis down) is
    /// an outage: the consumer naks and waits. A no-op when `wait_replicas` is 0.
    ///
    /// `WAIT` covers the writes of the connection it runs on: if the single-URL
    /// `ConnectionManager` reconnected between the writes and the `WAIT`, it covers none of
    /// them (README "Durability" says why that is accepted there).
    pub async fn replicated(&self) -> Result<(), String> {
        match &self.barrier {
            None => Ok(()),
            Some(barrier) => barrier.wait(self.clone()).await,
        }
    }
}

/// Group commit for `WAIT`: a caller takes a ticket, then its turn; a `WAIT` issued after
/// ticket `n` was taken covers every write made before it, so one answer settles every ticket
/// up to the count read just before sending it.
struct ReplicaBarrier {
    replicas: u32,
    timeout_ms: u64,
    tickets: AtomicU64,
    done: AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

impl ReplicaBarrier {
    async fn wait(&self, mut conn: RedisConn) -> Result<(), String> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.done.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let upto = self.tickets.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let acked: i64 = redis::cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(|err| format!("redis: {err}"))?;
        metrics::histogram!("redis_wait_seconds").record(started.elapsed().as_secs_f64());
        if acked < i64::from(self.replicas) {
            return Err(format!(
                "redis: writes reached {acked} of {} replicas within {} ms",
                self.replicas, self.timeout_ms
            ));
        }
        self.done.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

/// A Lua script whose SHA1 (what `EVALSHA` sends) is computed once, not on every call:
/// `static SCRIPT: Lua = Lua::new("…");` then `SCRIPT.script().key(…)`.
pub struct Lua {
    body: &'static str,
    cell: OnceLock<redis::Script>,
}

impl Lua {
    pub const fn new(body: &'static str) -> Self {
        Self {
            body,
            cell: OnceLock::new(),
        }
    }

    pub fn script(&'static self) -> &'static redis::Script {
        self.cell.get_or_init(|| redis::Script::new(self.body))
    }
}

/// Opens the connection handle. A single node connects lazily on first use; a cluster
/// connects now to learn its slot map.
pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<RedisConn> {
    let response = Duration::from_millis(settings.response_timeout_ms);
    let connect = Duration::from_millis(settings.connection_timeout_ms);
    let seeds: Vec<&str> = settings
        .cluster_urls
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if seeds.is_empty() {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response))
            .set_connection_timeout(Some(connect))
            .set_number_of_retries(3);
        // Lazy: the service starts (and reports not-ready) while Redis is still down.
        let link = Link::Single(client.get_connection_manager_lazy(config)?);
        Ok(RedisConn::new(link, settings))
    } else {
        let client = ClusterClientBuilder::new(seeds)
            .response_timeout(response)
            .connection_timeout(connect)
            .retries(3)
            .build()?;
        let link = Link::Cluster(client.get_async_connection().await?);
        Ok(RedisConn::new(link, settings))
    }
}

/// Connects with retries and exponential backoff until it succeeds or `shutdown` triggers.
pub async fn connect_until_ready(
    settings: &RedisSettings,
    shutdown: &crate::Shutdown,
) -> Option<RedisConn> {
    let mut retry = crate::backoff::Reconnect::default();
    loop {
        let delay = retry.next_delay();
        match connect(settings).await {
            Ok(conn) => return Some(conn),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "Redis connection failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return None,
        }
    }
}

/// `PING` with the connection's own response timeout.
pub async fn ping(conn: &RedisConn) -> bool {
    let mut conn = conn.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.link {
            Link::Single(_) => "RedisConn::Single",
            Link::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// True when `err` means Redis is unreachable or not serving right now (an outage: refused or
/// dropped connection, timeout, loading, failover, cluster down, out of memory), as opposed to a
/// command or data the server will refuse again. An outage is waited out, never dead-lettered.
pub fn is_unavailable(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel => true,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => true,
        // Codes the client has no kind for: a busy script, maxmemory reached, too few replicas.
        ErrorKind::Extension => matches!(err.code(), Some("BUSY" | "OOM" | "NOREPLICAS")),
        _ => err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal(),
    }
}

/// The consumer answer for a Redis failure: an outage pauses the consumer and waits; anything
/// else (a refused command, an unexpected reply) is retried with backoff (never dead-lettered:
/// it may be our bug, which a deploy fixes).
pub fn outcome(err: &redis::RedisError) -> crate::consumer::Outcome {
    use crate::consumer::Outcome;
    if is_unavailable(err) {
        Outcome::Unavailable(format!("redis: {err}"))
    } else {
        Outcome::Retry(format!("redis: {err}"))
    }
}
