use std::process::ExitCode;

fn main() -> ExitCode {
    rc_common::service::main(accounts::SERVICE, accounts::run)
}
