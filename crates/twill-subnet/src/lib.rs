//! Subnet allocation and lease management for twill. (being written)

mod allocator;
mod error;
pub mod manager;
mod memory;
pub mod registry;

pub use allocator::SubnetAllocator;
pub use error::SubnetError;
pub use manager::core::{
    Action, CoreConfig, Input, LeaseCore, LeaseEvent, PeerSet, RetryPolicy, DEFAULT_RENEW_MARGIN,
    DEFAULT_TTL,
};
pub use manager::{LeaseHandle, LeaseManager, LeaseManagerConfig};
pub use memory::{MemoryRegistry, DEFAULT_PREFIX};
pub use registry::*;
