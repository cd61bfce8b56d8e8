//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/events.proto", "proto/courier.proto"];
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
