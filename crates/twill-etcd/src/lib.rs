//! twill's lease store on etcd v3: an [`EtcdRegistry`] implementing
//! [`twill_subnet::Registry`] with flannel's keys and values, so flanneld and
//! twill can share one etcd and read each other's leases.
//!
//! * `<prefix>/config` holds the network config JSON
//!   (prefix default `/coreos.com/network`).
//! * `<prefix>/subnets/192.168.4.0-24` holds a lease, the JSON of
//!   [`twill_model::LeaseAttrs`], attached to an etcd lease with the TTL
//!   the caller creates it with (the lease manager's
//!   `LeaseManagerConfig::ttl`, 24 h by default). A key without an etcd lease is a reservation.
//!
//! What it does: create-if-absent in one transaction, one etcd lease per
//! subnet lease renewed over a KeepAlive stream (re-created only if the key is
//! absent or still ours), listing in one range request, and a watch task
//! that reconnects with backoff, resumes at the next revision and resyncs
//! after compaction. What it does not do: choose subnets or decide when to
//! renew; that is [`twill_subnet`]'s lease manager.
//!
//! ```no_run
//! use std::time::Duration;
//! use twill_etcd::{EtcdConfig, EtcdRegistry};
//! use twill_model::{LeaseAttrs, SubnetKey};
//! use twill_subnet::{Registry, RegistryEvent};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = EtcdRegistry::connect(EtcdConfig::new(["http://127.0.0.1:2379"])).await?;
//! let config = registry.get_config().await?;
//! let listing = registry.list_leases().await?;
//! println!("{} leases at revision {}", listing.leases.len(), listing.revision);
//!
//! let key: SubnetKey = "192.168.4.0-24".parse()?;
//! let attrs = LeaseAttrs::new("10.0.0.3".parse()?, config.backend.backend_type.clone());
//! let held = registry.create_lease(&key, &attrs, Some(Duration::from_secs(24 * 3600))).await?;
//! let held = registry.renew_lease(&held).await?; // one keepalive on a long-lived stream
//!
//! let mut watch = registry.watch_leases(listing.revision + 1).await?;
//! while let Some(event) = watch.next().await {
//!     if let RegistryEvent::Upserted(lease) = event {
//!         println!("{} is at {}", lease.key, lease.attrs.public_ip);
//!     }
//! }
//! # let _ = held;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod registry;
mod watch;

pub use config::{
    EndpointHost, EtcdConfig, EtcdEndpoint, EtcdTls, DEFAULT_ENDPOINT, DEFAULT_PREFIX,
};
pub use error::EtcdError;
pub use registry::EtcdRegistry;
