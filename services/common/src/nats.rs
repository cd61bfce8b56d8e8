//! NATS connection and idempotent stream provisioning.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions};

use crate::config::NatsSettings;
use crate::subjects::{
    COURIER_STREAM, COURIER_SUBJECTS, DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM, EVENTS_SUBJECTS,
    SPILL_STREAM, SPILL_SUBJECTS,
};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Connects to NATS. The client keeps retrying in the background when the server is not up
/// yet or goes away, so a service starts (and reports not-ready) without it.
pub async fn connect(settings: &NatsSettings, service: &str) -> Result<Client, Error> {
    let mut options = ConnectOptions::new()
        .name(format!("rudder-courier-{service}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2));
    if let Some(path) = &settings.credentials_file {
        options = options.credentials_file(path).await?;
    }
    Ok(options.connect(server_list(&settings.url)).await?)
}

/// `RC_NATS__URL` may list several servers (`nats://a:4222,nats://b:4222`): the client starts
/// from any that answers, then learns the rest of the cluster from the servers themselves.
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// A JetStream context whose API calls and publish acks time out after
/// `publish_timeout_ms`, so callers can answer "try again" well inside a client's deadline.
pub fn jetstream(client: Client, settings: &NatsSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(settings.publish_timeout_ms))
        .build(client)
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The streams of the public contract, built from settings.
pub fn stream_configs(settings: &NatsSettings) -> Vec<stream::Config> {
    let storage = if settings.stream_storage.eq_ignore_ascii_case("memory") {
        stream::StorageType::Memory
    } else {
        stream::StorageType::File
    };
    let base = |name: &str, subjects: &str, max_age: u64| stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        storage,
        num_replicas: settings.stream_replicas,
        duplicate_window: Duration::from_secs(settings.duplicate_window_secs.max(600)),
        max_age: Duration::from_secs(max_age),
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    vec![
        base(EVENTS_STREAM, EVENTS_SUBJECTS, settings.max_age_secs),
        base(COURIER_STREAM, COURIER_SUBJECTS, settings.max_age_secs),
        base(DLQ_STREAM, DLQ_SUBJECTS, settings.dlq_max_age_secs),
        // A spilled message is gone once its lane acked it.
        stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            ..base(SPILL_STREAM, SPILL_SUBJECTS, settings.max_age_secs)
        },
    ]
}

/// Creates each stream, or brings the fields we own (subjects, dedupe window, age, replicas)
/// back to the configured values. Other settings an operator changed are left alone.
pub async fn ensure_streams(js: &jetstream::Context, settings: &NatsSettings) -> Result<(), Error> {
    for wanted in stream_configs(settings) {
        let mut existing = js.get_or_create_stream(wanted.clone()).await?;
        let current = existing.info().await?.config.clone();
        if current.subjects != wanted.subjects
            || current.duplicate_window != wanted.duplicate_window
            || current.max_age != wanted.max_age
            || current.num_replicas != wanted.num_replicas
        {
            let mut updated = current;
            updated.subjects = wanted.subjects;
            updated.duplicate_window = wanted.duplicate_window;
            updated.max_age = wanted.max_age;
            updated.num_replicas = wanted.num_replicas;
            js.update_stream(updated).await?;
            tracing::info!(stream = %wanted.name, "Stream configuration updated");
        }
    }
    Ok(())
}

/// Retries [`ensure_streams`] until it succeeds or `shutdown` triggers; returns whether the
/// streams are in place.
pub async fn provision_streams_until_ready(
    js: &jetstream::Context,
    settings: &NatsSettings,
    shutdown: &crate::Shutdown,
) -> bool {
    let mut retry = crate::backoff::Reconnect::default();
    loop {
        let delay = retry.next_delay();
        match ensure_streams(js, settings).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "Stream provisioning failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return false,
        }
    }
}
