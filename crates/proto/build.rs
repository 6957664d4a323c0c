//! Compiles `proto/switchboard.proto` with protox (pure Rust: no system
//! `protoc`), then generates prost types and their canonical protobuf JSON
//! mapping (pbjson) from the same descriptor set.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("switchboard_descriptor.bin");

    let fds = protox::compile(["proto/switchboard.proto"], ["proto"])?;
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(&descriptor_path, &bytes)?;

    let mut config = prost_build::Config::new();
    config.file_descriptor_set_path(&descriptor_path);
    // Bodies are shared, not copied, from the receive buffer to the fan-out.
    config.bytes([".switchboard.v1"]);
    // Rare and large next to the rest of a message: boxed, so a `Message`
    // (and a `Packet`) stays small.
    config.boxed(".switchboard.v1.Message.read");
    config.boxed(".switchboard.v1.Message.amended");
    config.skip_protoc_run();
    config.compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        // Fields are only ever added: a JSON body from a newer peer may carry
        // fields this version does not know, and they are skipped, as the
        // binary decoder does.
        .ignore_unknown_fields()
        .build(&[".switchboard.v1"])?;
    Ok(())
}
