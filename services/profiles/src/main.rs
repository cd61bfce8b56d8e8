use std::process::ExitCode;

fn main() -> ExitCode {
    rc_common::service::main(profiles::SERVICE, profiles::run)
}
