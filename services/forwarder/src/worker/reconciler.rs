//! The per-workspace consumers and tasks: a task and a durable consumer per enabled, unpaused
//! integration, restarted when its configuration changes, stopped when it goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self};
use rc_common::Shutdown;
use rc_common::outbound::{ClientSpec, OutboundError, OutboundSettings};
use rc_common::secrets::Cipher;
use rc_common::subjects::{self, COURIER_STREAM, kinds};
use tokio::sync::Mutex;

use super::circuit::Runtime;
use crate::ForwarderSettings;
use crate::store::{Integration, Store};

pub use rc_common::subjects::durables::forwarder as consumer_name;

/// The explicit subjects a workspace's consumer reads (never `message.requested`).
pub fn filter_subjects(ws: &str, integ: &Integration) -> Vec<String> {
    let mut out: Vec<String> = integ
        .statuses
        .iter()
        .map(|s| subjects::courier_subject(ws, &kinds::message_status(s)))
        .collect();
    if integ.profile_updates {
        out.push(subjects::courier_subject(ws, kinds::PROFILE_UPDATED));
    }
    if integ.tenant_updates {
        out.push(subjects::courier_subject(ws, kinds::TENANT_UPDATED));
    }
    out
}

/// A workspace's durable as the forwarder creates it (also what rc-bench's floor creates).
pub fn consumer_config(
    settings: &ForwarderSettings,
    ws: &str,
    integ: &Integration,
    deliver: DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer_name(ws)),
        description: Some(format!("rudder-courier forwarder for workspace {ws}")),
        filter_subjects: filter_subjects(ws, integ),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: deliver,
        ack_wait: Duration::from_millis(settings.ack_wait_ms),
        // Never give up on an event: a data plane may be down for days.
        max_deliver: -1,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Whether the server's consumer must be updated to `wanted` (its position is kept).
fn needs_update(current: &consumer::Config, wanted: &pull::Config) -> bool {
    current.filter_subjects != wanted.filter_subjects
        || current.ack_wait != wanted.ack_wait
        || current.max_ack_pending != wanted.max_ack_pending
        || current.max_deliver != wanted.max_deliver
}

/// A running workspace task.
struct Worker {
    version: u64,
    stop: Shutdown,
    join: tokio::task::JoinHandle<()>,
}

/// The workspaces whose task must stop: finished, no longer wanted, or of another version.
fn stale<'a>(
    running: impl Iterator<Item = (&'a String, u64, bool)>,
    wanted: &HashMap<String, Integration>,
) -> Vec<String> {
    running
        .filter(|(ws, version, finished)| {
            *finished || wanted.get(*ws).is_none_or(|i| i.version != *version)
        })
        .map(|(ws, _, _)| ws.clone())
        .collect()
}

pub struct Ctx {
    pub js: jetstream::Context,
    pub store: Store,
    pub cipher: Option<Cipher>,
    pub settings: ForwarderSettings,
    pub outbound: OutboundSettings,
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    pub runtimes: std::sync::Mutex<HashMap<String, Arc<Runtime>>>,
    workers: Mutex<HashMap<String, Worker>>,
}

impl Ctx {
    pub fn new(
        js: jetstream::Context,
        store: Store,
        cipher: Option<Cipher>,
        settings: ForwarderSettings,
        outbound: OutboundSettings,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, OutboundError> {
        let http = rc_common::outbound::client(
            &outbound,
            &ClientSpec {
                user_agent: concat!("rudder-courier-forwarder/", env!("CARGO_PKG_VERSION")),
                timeout: Duration::from_millis(settings.request_timeout_ms),
                follow_redirects: false,
            },
        )?;
        Ok(Arc::new(Self {
            js,
            store,
            cipher,
            settings,
            outbound,
            http,
            shutdown,
            runtimes: Default::default(),
            workers: Default::default(),
        }))
    }

    pub fn runtime(&self, ws: &str) -> Arc<Runtime> {
        self.runtimes
            .lock()
            .expect("not poisoned")
            .entry(ws.to_string())
            .or_default()
            .clone()
    }

    /// Creates the workspace's consumer (from now on: `DeliverPolicy::New`) or updates its
    /// filter and limits, keeping its position.
    pub async fn ensure_consumer(
        &self,
        ws: &str,
        integ: &Integration,
    ) -> Result<(), crate::BoxError> {
        let stream = self.js.get_stream(COURIER_STREAM).await?;
        match stream.consumer_info(consumer_name(ws)).await {
            Ok(info) => {
                let cfg = consumer_config(&self.settings, ws, integ, info.config.deliver_policy);
                if needs_update(&info.config, &cfg) {
                    stream.update_consumer(cfg).await?;
                }
            }
            Err(_) => {
                let cfg = consumer_config(&self.settings, ws, integ, DeliverPolicy::New);
                stream.create_consumer(cfg).await?;
            }
        }
        Ok(())
    }

    pub async fn delete_consumer(&self, ws: &str) {
        if let Ok(stream) = self.js.get_stream(COURIER_STREAM).await {
            let _ = stream.delete_consumer(&consumer_name(ws)).await;
        }
    }

    /// (num_pending, num_ack_pending) of the workspace's consumer.
    pub async fn pending(&self, ws: &str) -> Option<(u64, usize)> {
        let stream = self.js.get_stream(COURIER_STREAM).await.ok()?;
        let info = stream.consumer_info(consumer_name(ws)).await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// Brings running workers in line with Redis: a worker per enabled, unpaused integration,
    /// restarted when its configuration changed.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), crate::BoxError> {
        let mut wanted: HashMap<String, Integration> = HashMap::new();
        for ws in self.store.workspaces().await? {
            if let Some(integ) = self.store.get(&ws).await?
                && integ.enabled
                && integ.paused_reason.is_none()
            {
                wanted.insert(ws, integ);
            }
        }
        let mut workers = self.workers.lock().await;
        let running = workers
            .iter()
            .map(|(ws, w)| (ws, w.version, w.join.is_finished()));
        for ws in stale(running, &wanted) {
            if let Some(w) = workers.remove(&ws) {
                w.stop.trigger();
                let _ = tokio::time::timeout(Duration::from_secs(5), w.join).await;
                tracing::info!(workspace = %ws, "Forwarder worker stopped");
            }
        }
        for (ws, integ) in wanted {
            if workers.contains_key(&ws) || self.shutdown.is_triggered() {
                continue;
            }
            let Some(cipher) = &self.cipher else {
                tracing::error!(workspace = %ws, "No secrets.encryption_key: cannot open the write key");
                continue;
            };
            let write_key = match cipher.open(&integ.write_key_sealed, &ws) {
                Ok(k) => k,
                Err(err) => {
                    tracing::error!(workspace = %ws, error = %err, "Write key does not open; integration skipped");
                    continue;
                }
            };
            if let Err(err) = self.ensure_consumer(&ws, &integ).await {
                tracing::warn!(workspace = %ws, error = %err, "Consumer not ready; will retry");
                continue;
            }
            let stop = Shutdown::new();
            let version = integ.version;
            let join = tokio::spawn(super::pull::run_worker(
                self.clone(),
                ws.clone(),
                integ,
                write_key,
                stop.clone(),
            ));
            tracing::info!(workspace = %ws, version, "Forwarder worker started");
            workers.insert(
                ws,
                Worker {
                    version,
                    stop,
                    join,
                },
            );
        }
        Ok(())
    }

    /// Reconciles now and every `reconcile_interval_ms` until shutdown, then stops every worker.
    pub async fn supervise(self: Arc<Self>) {
        let interval = Duration::from_millis(self.settings.reconcile_interval_ms);
        while !self.shutdown.is_triggered() {
            if let Err(err) = self.reconcile().await {
                tracing::warn!(error = %err, "Reconcile failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shutdown.triggered() => break,
            }
        }
        let mut workers = self.workers.lock().await;
        for (_, w) in workers.iter() {
            w.stop.trigger();
        }
        for (_, w) in workers.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.join).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integ(version: u64) -> Integration {
        Integration {
            write_key_sealed: String::new(),
            data_plane_url: "https://dp.example.com".into(),
            enabled: true,
            statuses: vec!["SENT".into(), "DELIVERED".into()],
            profile_updates: true,
            tenant_updates: false,
            paused_reason: None,
            updated_at: String::new(),
            version,
        }
    }

    #[test]
    fn the_consumer_reads_only_the_selected_subjects() {
        assert_eq!(
            filter_subjects("acme", &integ(1)),
            [
                "courier.acme.message.sent",
                "courier.acme.message.delivered",
                "courier.acme.profile.updated"
            ]
        );
        let s = ForwarderSettings::default();
        let cfg = consumer_config(&s, "acme", &integ(1), DeliverPolicy::New);
        assert_eq!(cfg.durable_name.as_deref(), Some("forwarder-acme"));
        assert_eq!(cfg.max_deliver, -1, "never gives up on an event");
        assert_eq!(cfg.ack_policy, AckPolicy::Explicit);
    }

    #[test]
    fn a_changed_selection_or_limit_updates_the_consumer() {
        use async_nats::jetstream::consumer::IntoConsumerConfig;
        let s = ForwarderSettings::default();
        let a = consumer_config(&s, "acme", &integ(1), DeliverPolicy::New);
        assert!(!needs_update(&a.clone().into_consumer_config(), &a));
        let a = a.into_consumer_config();
        let mut other = integ(2);
        other.tenant_updates = true;
        let b = consumer_config(&s, "acme", &other, DeliverPolicy::New);
        assert!(needs_update(&a, &b));
        let s2 = ForwarderSettings {
            max_ack_pending: 7,
            ..Default::default()
        };
        assert!(needs_update(
            &a,
            &consumer_config(&s2, "acme", &integ(1), DeliverPolicy::New)
        ));
    }

    #[test]
    fn finished_removed_and_reconfigured_workers_are_stale() {
        let wanted = HashMap::from([("a".to_string(), integ(1)), ("b".to_string(), integ(2))]);
        let names = ["a", "b", "c", "d"].map(String::from);
        let running = [
            (&names[0], 1, false), // current: kept
            (&names[1], 1, false), // version changed
            (&names[2], 1, false), // no longer wanted
            (&names[3], 1, true),  // finished (paused itself)
        ];
        let mut got = stale(running.into_iter(), &wanted);
        got.sort();
        assert_eq!(got, ["b", "c", "d"]);
    }
}
