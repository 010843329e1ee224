//! Compiles `proto/*.proto` with the pure-Rust `protox`, so no system `protoc` is needed.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/frames.proto", "proto/control.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Server reflection serves this set; compile_fds does not write it, so write it here.
    fs::write(out.join("sluice_descriptor.bin"), fds.encode_to_vec())?;
    // Record payloads are sliced out of the frame buffer instead of copied: no allocation per
    // key, value or header on the sidecar's hot path.
    tonic_prost_build::configure()
        .bytes(".sluice.v1.Record")
        .bytes(".sluice.v1.Header")
        .compile_fds(fds)?;
    Ok(())
}
