//! Helpers for the profiles service (and `eventually`, shared with accounts tests).

use std::time::{Duration, Instant};

use crate::{Service, Stack, stack_settings};

impl Stack {
    pub fn profiles_settings(&self) -> profiles::Settings {
        let mut settings = stack_settings!(self, profiles::Settings);
        settings.profiles.ack_wait_ms = 2_000;
        settings
    }

    pub async fn profiles(&self) -> Service {
        Service::run(self.profiles_settings(), profiles::run).await
    }
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
