//! Compiles `proto/arbiter/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed), generates the tonic/prost code, and writes the encoded file descriptor set
//! that the server hands to gRPC reflection.

use std::path::PathBuf;

use anyhow::Context;
use prost::Message;

const PROTOS: &[&str] = &[
    "arbiter/v1/registry.proto",
    "arbiter/v1/admin.proto",
    "arbiter/v1/experiments.proto",
    "arbiter/v1/allocator.proto",
    "arbiter/bench/v1/echo.proto",
];

/// Compiled for the load generator but kept out of the reflection descriptor set.
const NOT_SERVED: &[&str] = &["arbiter/bench/v1/echo.proto"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);

    let mut compiler = protox::Compiler::new(["proto"]).context("protox include path")?;
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(PROTOS)
        .map_err(|e| anyhow::anyhow!("compiling protos: {e:?}"))?;
    let encoded = compiler.encode_file_descriptor_set();

    // Decode with our own prost-types so that a different prost version inside protox cannot
    // cause a type mismatch.
    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())
        .context("decoding the descriptor set")?;
    let served = prost_types::FileDescriptorSet {
        file: fds
            .file
            .iter()
            .filter(|f| !NOT_SERVED.contains(&f.name()))
            .cloned()
            .collect(),
    };
    std::fs::write(
        out_dir.join("arbiter_descriptor.bin"),
        served.encode_to_vec(),
    )
    .context("writing the descriptor set")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Undecodable requests are INVALID_ARGUMENT, not tonic's INTERNAL (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .compile_fds(fds)
        .context("generating code")?;
    Ok(())
}
