//! Helpers for the accounts service.

use crate::{Service, Stack};

impl Stack {
    pub fn accounts_settings(&self) -> accounts::Settings {
        let mut settings = accounts::Settings {
            nats: self.nats.settings(),
            redis: self.redis.settings(),
            auth: Self::auth_settings(),
            shutdown: Self::shutdown_settings(),
            ..accounts::Settings::default()
        };
        settings.accounts.ack_wait_ms = 2_000;
        settings
    }

    pub async fn accounts(&self) -> Service {
        let settings = self.accounts_settings();
        Service::spawn(|listener, shutdown| async move {
            accounts::run(settings, Some(listener), shutdown).await
        })
        .await
    }
}
