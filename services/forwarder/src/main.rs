use std::process::ExitCode;
use std::time::Duration;

use rc_common::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let settings: forwarder::Settings = match rc_common::config::load(forwarder::SERVICE) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&settings.log);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals(Duration::from_millis(settings.shutdown.readiness_grace_ms));
    match forwarder::run(settings, None, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "Forwarder failed");
            ExitCode::FAILURE
        }
    }
}
