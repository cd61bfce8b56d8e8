//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no `protoc`; also keeps
//! the descriptors (`descriptors.bin`), so tools can read any payload by its message name.
use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/events.proto", "proto/courier.proto"];
    let mut fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds.clone())?;
    // Comments are not needed at run time.
    for file in &mut fds.file {
        file.source_code_info = None;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), fds.encode_to_vec())?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
