use std::process::ExitCode;

fn main() -> ExitCode {
    rc_common::service::main(forwarder::SERVICE, forwarder::run)
}
