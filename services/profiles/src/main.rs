use std::process::ExitCode;

// mimalloc, as in the ingress: glibc malloc was a visible share of every service's CPU per
// event (make bench, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rc_common::service::main(profiles::SERVICE, profiles::run)
}
