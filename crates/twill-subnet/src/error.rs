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
    /// Every IPv6 subnet in `[IPv6SubnetMin, IPv6SubnetMax]` is taken (or
    /// the config has no IPv6 side: `total` 0).
    #[error("no free IPv6 subnet: all {taken} of {total} subnets in [IPv6SubnetMin, IPv6SubnetMax] are taken")]
    Ipv6Exhausted {
        /// Subnets in `[IPv6SubnetMin, IPv6SubnetMax]`.
        total: u128,
        /// Of which taken.
        taken: u128,
    },
    /// The attributes to publish lack what the network config's address
    /// families need: `PublicIPv6` with `EnableIPv6` (peers would skip a
    /// lease without it, and it is how a restarted host finds its lease).
    #[error("{field} is required in the lease attributes: the network config has {because}")]
    MissingAttribute {
        /// The missing field, as flannel names it (`PublicIPv6`).
        field: &'static str,
        /// The config setting that needs it (`EnableIPv6 true`).
        because: &'static str,
    },
    /// The registry failed in a way retrying will not fix (e.g. no config yet).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The lease manager's background task has stopped.
    #[error("the lease manager has stopped")]
    Stopped,
}
