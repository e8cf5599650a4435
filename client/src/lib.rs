//! Decide arbiter allocations inside your own process.
//!
//! An arbiter allocation is one uniform draw from a test's probability table. The server
//! streams those tables (`Allocator.WatchAllocations`); [`LocalAllocator`] keeps the latest of
//! each watched test and draws from it in tens of nanoseconds, with the propensities the server
//! would give and decision ids the server accepts for the results. When the server is out of
//! reach it keeps deciding from the last tables, marks decisions [`Decision::stale`], and after
//! [`WatchOptions::max_age`] serves each test's fallback (control) arm.
//!
//! A [`Reporter`] sends results back over `IngestResults`, with the decisions the allocator drew
//! (so the server's allocation counts and sample-ratio check include them), exactly once across
//! reconnects.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use arbiter_client::{LocalAllocator, WatchOptions};
//! use std::time::Duration;
//!
//! let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
//! let allocator = LocalAllocator::start(vec![endpoint], WatchOptions::new("router-1"));
//! allocator.ready(Duration::from_secs(5)).await;
//! let decision = allocator.allocate("signal_comparison_001", "order-42")?;
//! println!("{} {} {}", decision.model_registry_id(), decision.propensity, decision.decision_id);
//! # Ok(()) }
//! ```

mod allocator;
mod connection;
mod draw;
pub mod pb;
mod reporter;
mod table;
mod watcher;

pub use allocator::{AllocateError, Decision, Freshness, LocalAllocator, WatchOptions};
pub use reporter::{Full, Rejection, Reporter, ReporterOptions, ReporterStats};
pub use table::TestStatus;
