//! The crate's error type.

use crate::RegistryError;

/// What subnet allocation and lease management can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubnetError {
    /// Every subnet in `[SubnetMin, SubnetMax]` is leased or reserved.
    #[error("no free subnet: all {taken} of {total} subnets in [SubnetMin, SubnetMax] are taken")]
    Exhausted {
        /// Subnets in `[SubnetMin, SubnetMax]`.
        total: u32,
        /// Of which taken.
        taken: u32,
    },
    /// The registry failed in a way retrying will not fix (e.g. no config yet).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The lease manager's background task has stopped.
    #[error("the lease manager has stopped")]
    Stopped,
}
