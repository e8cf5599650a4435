//! arbiter: a low-latency gRPC model registry and A/B testing server.
//!
//! The architecture, top to bottom (dependencies only point down):
//!
//! - [`server`] composes the services; [`config`] and [`telemetry`] serve `main.rs`.
//! - [`grpc`]: tonic adapters; convert requests into domain calls and map domain errors to
//!   `tonic::Status` in exactly one place; authentication, admission (rate limits, deadlines)
//!   and TLS as tower layers.
//! - [`auth`]: principals, roles, actors and rate limits (knows nothing of gRPC).
//! - [`state`]: the fold that applies the log's commands (each domain's, dispatched by its
//!   first byte) to the store, when they are executed and when they are replayed.
//! - [`experiment`]: tests (their lifecycle logged as commands, [`experiment::command`]), result
//!   ingestion into the log, statistics snapshots, settlement;
//!   its [`experiment::engine`] decides (allocation tables and policies, stopping rules,
//!   stop-loss, drift and drawdown) without storage or clock.
//! - [`registry`]: model versions, the lifecycle with approvals, artifact files, signatures;
//!   its changes are logged as commands ([`registry::command`]) that the fold applies.
//! - [`audit`]: the hash-chained audit log, written in the same batch as the change it records.
//! - [`cluster`]: cluster mode's replicated log, a NATS JetStream stream behind the same
//!   [`storage::Log`] trait as the journal.
//! - [`storage`]: one ordered log ([`storage::Log`], the journal on a single node) that every
//!   change goes through, with group commit, folded into an embedded store (redb) behind typed
//!   keys and versioned record encodings; checkpoints, replay, and a conformance suite for logs.
//! - [`stats`]: pure statistics (tests, intervals, sequential tests, drift detection).
//! - [`metrics`], [`text`], [`time`]: Prometheus metrics, client text in messages, wall-clock time.
//! - [`pb`]: the generated protobuf types (used only by `grpc`, tests and clients).
//! - [`loadgen`]: `arbiter bench`, the load generator with its baselines.
//! - [`cli`]: the client subcommands (`arbiter models …`, `arbiter tests …`, `arbiter audit …`).

pub mod audit;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod experiment;
pub mod grpc;
pub mod loadgen;
pub mod metrics;
pub mod pb;
pub mod registry;
pub mod server;
pub mod state;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod time;
