//! Subnet allocation and lease management for twill. (being written)

mod allocator;
mod error;
mod memory;
pub mod registry;

pub use allocator::SubnetAllocator;
pub use error::SubnetError;
pub use memory::{MemoryRegistry, DEFAULT_PREFIX};
pub use registry::*;
