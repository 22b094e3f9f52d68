//! Subnet allocation and lease management for twill. (being written)

pub mod registry;
pub use registry::*;
