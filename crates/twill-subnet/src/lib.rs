//! Subnet allocation and lease management for twill, flannel-compatible.
//!
//! * [`SubnetAllocator`]: a random free subnet in `[SubnetMin, SubnetMax]`
//!   in O(log N), whatever the fill (flannel scans linearly).
//! * [`Registry`]: the lease store's contract (etcd in `twill-etcd`), and
//!   [`MemoryRegistry`], an in-process implementation on tokio's clock;
//!   [`contract`], the same contract as checks any implementation runs.
//! * [`LeaseCore`]: the lease manager's decisions as a sans-IO state machine
//!   (takes `now` and registry results, returns [`Action`]s; never reads the
//!   clock), and [`LeaseManager`], the tokio driver that executes them:
//!   acquire (own lease or reservation by `PublicIP`, else the previous
//!   subnet, else a random one; lost races retried with jittered backoff),
//!   renew, re-acquire a lost lease, and turn watch events into a
//!   [`PeerSet`].
//! * [`RetryPolicy`]: the one backoff of twill (lease core, manager, etcd
//!   watch), a pure function of the attempt count.
//!
//! This crate does no networking of its own and programs nothing: the
//! backend turns the peer set into routes and FDB entries.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use twill_model::LeaseAttrs;
//! use twill_subnet::{LeaseManager, LeaseManagerConfig, MemoryRegistry};
//!
//! let registry = Arc::new(MemoryRegistry::new());
//! registry.set_config(r#"{"Network":"192.168.0.0/16","SubnetLen":24,
//!     "SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan"}}"#);
//!
//! let mut a = LeaseManager::new(registry.clone(),
//!     LeaseManagerConfig::new(LeaseAttrs::new("10.0.0.1".parse().unwrap(), "vxlan")));
//! let lease_a = a.acquire().await.unwrap();
//! let a = a.spawn(); // renews, watches, re-acquires in the background
//!
//! let mut b = LeaseManager::new(registry.clone(),
//!     LeaseManagerConfig::new(LeaseAttrs::new("10.0.0.2".parse().unwrap(), "vxlan")));
//! let lease_b = b.acquire().await.unwrap();
//! assert_ne!(lease_a.lease.key, lease_b.lease.key);
//!
//! // a learns about b from the watch.
//! let peers = a.peers().wait_for(|p| p.leases.contains_key(&lease_b.lease.key)).await.unwrap().clone();
//! assert_eq!(peers.len(), 1);
//! a.release().await.unwrap(); // deletes a's lease
//! # });
//! ```

mod allocator;
mod allocator_v6;
mod backoff;
pub mod contract;
mod error;
mod free_index;
pub mod manager;
mod memory;
pub mod registry;

pub use allocator::SubnetAllocator;
pub use allocator_v6::Ipv6SubnetAllocator;
pub use error::SubnetError;
pub use manager::core::{
    Action, CoreConfig, Input, LeaseCore, LeaseEvent, LogBudget, PeerMap, PeerSet, RetryPolicy,
    DEFAULT_RENEW_MARGIN, DEFAULT_TTL, PEER_JOURNAL, SKIP_LOG_LIMIT, SKIP_LOG_WINDOW,
};
pub use manager::{LeaseHandle, LeaseManager, LeaseManagerConfig};
pub use memory::{MemoryRegistry, DEFAULT_PREFIX};
pub use registry::*;
