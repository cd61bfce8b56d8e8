use std::process::ExitCode;

fn main() -> ExitCode {
    rc_common::service::main(automations::SERVICE, automations::run)
}
