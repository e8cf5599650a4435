//! Generated protobuf and gRPC client code for `arbiter.v1`.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("arbiter.v1");
