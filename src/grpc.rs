//! gRPC adapters: each handler converts its request into domain types (validation happens in
//! those conversions), calls one domain method and converts the answer. Domain errors become
//! `tonic::Status` in exactly one place, [`status`]. No business rules live here.

mod admin;
mod convert;
mod registry;
pub mod status;

pub use admin::AdminService;
pub use registry::RegistryService;
