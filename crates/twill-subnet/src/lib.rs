//! Subnet allocation and lease management for twill. (being written)

mod allocator;
mod error;
pub mod registry;

pub use allocator::SubnetAllocator;
pub use error::SubnetError;
pub use registry::*;
