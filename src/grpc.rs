//! gRPC adapters: each handler converts its request into domain types (validation happens in
//! those conversions), calls one domain method and converts the answer. Domain errors become
//! `tonic::Status` in exactly one place, [`status`]. No business rules live here.

mod admin;
pub mod admission;
mod allocator;
pub mod authn;
pub mod codec;
pub(crate) mod convert;
mod experiment_convert;
mod experiments;
pub mod forwarded;
mod registry;
pub mod status;
pub mod tls;
pub mod watch;

pub use admin::AdminService;
pub use allocator::AllocatorService;
pub use experiments::ExperimentsService;
pub use registry::RegistryService;
