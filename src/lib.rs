//! arbiter: a low-latency gRPC model registry and A/B testing server.
//!
//! The architecture, top to bottom (dependencies only point down):
//!
//! - [`grpc`]: tonic adapters; convert requests into domain calls and map domain errors to
//!   `tonic::Status` in exactly one place.
//! - [`registry`]: model versions, the lifecycle with approvals, artifact files.
//! - [`audit`]: the hash-chained audit log, written in the same batch as the change it records.
//! - [`storage`]: an embedded store (redb) behind typed keys and versioned record encodings, with group commit.
//! - [`server`] composes the services; [`config`] and [`telemetry`] serve `main.rs`.
//! - [`pb`]: the generated protobuf types (used only by `grpc`, tests and clients).
//! - [`loadgen`]: `arbiter bench`, the load generator with its echo baseline.
//! - [`cli`]: the client subcommands (`arbiter tests …`, `arbiter audit …`).

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod experiment;
pub mod grpc;
pub mod loadgen;
pub mod metrics;
pub mod pb;
pub mod registry;
pub mod server;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod time;
