use std::process::ExitCode;

fn main() -> ExitCode {
    rc_common::service::main(delivery::SERVICE, delivery::run)
}
