//! Helpers for the accounts service.

use crate::{Service, Stack, stack_settings};

impl Stack {
    pub fn accounts_settings(&self) -> accounts::Settings {
        let mut settings = stack_settings!(self, accounts::Settings);
        settings.accounts.ack_wait_ms = 2_000;
        settings
    }

    pub async fn accounts(&self) -> Service {
        Service::run(self.accounts_settings(), accounts::run).await
    }
}
