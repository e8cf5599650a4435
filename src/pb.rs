//! Generated protobuf and gRPC code for `arbiter.v1`, and its encoded file descriptor set (served
//! through gRPC reflection). Only the `grpc` layer, tests and clients use these types.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `arbiter.v1` package (and `arbiter.bench.v1`, the load generator's echo baseline).
pub mod arbiter {
    pub mod v1 {
        tonic::include_proto!("arbiter.v1");
    }
    pub mod bench {
        pub mod v1 {
            tonic::include_proto!("arbiter.bench.v1");
        }
    }
}

pub use arbiter::v1::*;

/// The encoded `FileDescriptorSet` of every served arbiter proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/arbiter_descriptor.bin"));
