//! Harness helpers for the automations service.

use std::time::{Duration, Instant};

use crate::{Service, Stack, stored_messages};

impl Stack {
    pub fn automations_settings(&self) -> automations::Settings {
        let mut s = automations::Settings {
            nats: self.nats.settings(),
            redis: self.redis.settings(),
            auth: Self::auth_settings(),
            shutdown: Self::shutdown_settings(),
            ..automations::Settings::default()
        };
        s.automations.poll_interval_ms = 100;
        s.automations.lease_ms = 3_000;
        // fetch-data steps call local fakes on 127.0.0.1.
        s.outbound.allow_private_networks = true;
        s
    }

    pub async fn automations(&self) -> Service {
        let settings = self.automations_settings();
        Service::spawn(|listener, shutdown| async move {
            automations::run(settings, Some(listener), shutdown).await
        })
        .await
    }
}

/// Waits until at least `n` messages are stored under `subject` and returns them all.
pub async fn wait_for_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    n: usize,
    timeout: Duration,
) -> Vec<async_nats::jetstream::Message> {
    let deadline = Instant::now() + timeout;
    loop {
        let msgs = stored_messages(js, stream, subject).await;
        if msgs.len() >= n || Instant::now() > deadline {
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
