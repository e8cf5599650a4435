//! Compiles the arbiter protos the client speaks with protox (pure Rust: no system `protoc`) and
//! generates the tonic client code.

use std::path::PathBuf;

use anyhow::Context;
use prost::Message;

fn main() -> anyhow::Result<()> {
    // The protos of the repository this crate lives in.
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut compiler = protox::Compiler::new([&proto]).context("protox include path")?;
    compiler.include_imports(true);
    compiler
        .open_files(["arbiter/v1/allocator.proto"])
        .map_err(|e| anyhow::anyhow!("compiling protos: {e:?}"))?;
    let fds =
        prost_types::FileDescriptorSet::decode(compiler.encode_file_descriptor_set().as_slice())
            .context("decoding the descriptor set")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)
        .context("generating code")?;
    Ok(())
}
