//! flannel-compatible dataplane backends for twill: [`VxlanBackend`] and
//! [`HostGwBackend`], behind a small public [`Backend`] trait that other
//! crates (a userspace WireGuard backend, say) can implement too; and
//! flannel's [`ExtensionBackend`], which runs the config's shell commands
//! for each peer subnet instead (see [`extension`]: everything below about
//! netlink is the other two's).
//!
//! Every backend follows the same loop, level-triggered and idempotent:
//! dump what the kernel holds (links, neighbours, FDB, routes of our device
//! and protocol), compute the difference with [`plan()`] — a pure function,
//! unit- and property-tested without root — and apply it in one netlink
//! batch ([`twill_netlink::NetlinkHandle::execute`]). Entries we did not
//! create (another route protocol, another device) are never touched; stale
//! entries we created and no lease justifies are removed; a second reconcile
//! with nothing changed plans zero ops. Peers with invalid data are skipped
//! with a reason ([`ReconcileReport::skipped`]), never programmed.
//!
//! Lease events take a faster path, [`Backend::apply_changes`]: both
//! backends remember what each peer got in the last pass and which subnet
//! and VTEP MAC it claimed, and plan only the changed peers' entries, their
//! old ones as the observed state, with the same [`plan()`] and no kernel
//! dump, so an event costs the same at 10 peers as at 10,000. A new peer's
//! route is added exclusively ([`IpOp::AddRoute`]): a route someone else
//! made at its destination is refused, never replaced. Whatever depends on
//! other peers (two leases contending for a subnet or a MAC, a foreign
//! route) answers "run a full pass", which stays the periodic safety net.
//!
//! With `EnableIPv6` and the host's [`Ipv6Underlay`] in [`HostContext`],
//! both backends also program the IPv6 half of each dual-stack lease, planned
//! by the same [`plan()`] in a pass of its own ([`converge6`]); without it
//! they read and write no IPv6 state at all.
//!
//! IO: netlink syscalls only, blocking, on the calling task: a 10,000-peer
//! pass takes about two seconds, so call a backend off your async runtime
//! (twill-agent gives it a thread of its own). No clocks, no threads. The
//! netlink socket lives in the network namespace of the thread that created
//! the backend.
//!
//! ```no_run
//! use twill_backend::{BackendRegistry, HostContext, UnderlayInterface};
//! use twill_model::NetworkConfig;
//! # async fn demo(leases: Vec<twill_model::SubnetLease>, own: twill_model::SubnetLease)
//! #   -> Result<(), Box<dyn std::error::Error>> {
//! let config = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)?;
//! let mut backend = BackendRegistry::with_builtins().create(&config.backend)?;
//! let underlay = UnderlayInterface { name: "eth0".into(), index: 2, mtu: 1500, addr: Some("10.0.0.2".parse()?), addr6: None };
//! let host = HostContext { config: &config, public_ip: "10.0.0.2".parse()?, underlay: &underlay, ipv6: None };
//! let local = backend.setup(&host).await?;       // creates flannel.1, says what to publish
//! println!("FLANNEL_MTU={}", local.mtu);
//! backend.activate(&own).await?;                 // 10.244.x.0/32 on flannel.1
//! let peers: Vec<&twill_model::SubnetLease> = leases.iter().collect();
//! let report = backend.reconcile(&peers).await?;  // ARP + FDB + route per peer
//! assert!(report.failed.is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig, SubnetKey, SubnetLease};

pub mod extension;
mod hostgw;
mod incremental;
mod peers;
pub mod plan;
mod vxlan;

/// Backends implement [`Backend`] with this attribute macro.
pub use async_trait::async_trait;
pub use extension::ExtensionBackend;
pub use hostgw::HostGwBackend;
pub use peers::{select_peers, PeerContext, PeerSelection};
pub use plan::{
    hostgw_peer, peer_nexthop_id, plan, resolve_nexthops, via_nexthop, vxlan_peer, DataplaneState,
    DataplaneState6, IpDataplaneState, IpOp, Op, Op6, Owner,
};
pub use vxlan::{
    converge, converge6, derived_vtep_mac, derived_vtep_mac6, NexthopMode, VxlanBackend,
    VxlanOptions, VXLAN6_OVERHEAD, VXLAN_OVERHEAD,
};

// The twill-netlink types this crate's API takes and returns, so that a
// backend written on it needs no twill-netlink dependency of its own.
pub use twill_netlink::{
    Address, FdbEntry, IpFamily, IpNexthop, Neighbour, NetlinkError, NetlinkHandle, Nexthop,
    Request, Route, MAIN_TABLE, TWILL_RTPROT,
};
// The reason type of `ReconcileReport::skipped`, shared with the lease core.
pub use twill_model::SkipReason;

/// The underlay (external) interface flannel would call `--iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayInterface {
    /// Interface name (`eth0`).
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 address (the `local` of `flannel.<VNI>`): flannel's
    /// `IfaceAddr`, `None` on an IPv6-only host.
    pub addr: Option<Ipv4Addr>,
    /// Its IPv6 address, when it has a global one (the `local` of
    /// `flannel-v6.<VNI>`): flannel's `IfaceV6Addr`, used when the network
    /// config has `EnableIPv6`.
    pub addr6: Option<Ipv6Addr>,
}

/// flannel's choice of an interface's IPv6 address (`GetInterfaceIP6Addrs`):
/// the first global unicast one, unique-local (`fd00::/8`) included, as Go's
/// `IsGlobalUnicast` counts it; never link-local, loopback or multicast.
#[must_use]
pub fn first_global_ipv6(addrs: &[twill_netlink::Address6], index: u32) -> Option<Ipv6Addr> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .map(|a| a.addr.ip())
        .find(|ip| twill_model::is_usable_public_ipv6(*ip))
}

impl UnderlayInterface {
    /// Finds an interface by name (`eth0`) or by one of its addresses
    /// (`10.0.0.2`, `fd00::2`), as flanneld's `-iface` does. `addr` is the
    /// given IPv4 address, or the interface's first IPv4 address; `addr6`
    /// the given IPv6 address, or the interface's first global one
    /// ([`first_global_ipv6`]). `None` when nothing matches or the
    /// interface has neither.
    ///
    /// # Errors
    /// When the links or addresses cannot be listed.
    pub fn find(
        nl: &mut twill_netlink::NetlinkHandle,
        name_or_ip: &str,
    ) -> Result<Option<Self>, BackendError> {
        let addrs = nl.address().list(None)?;
        let addrs6 = nl.address().list6(None)?;
        let (index, given) = match name_or_ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => match addrs.iter().find(|a| a.addr.ip() == ip) {
                Some(a) => (a.index, Some(std::net::IpAddr::V4(ip))),
                None => return Ok(None),
            },
            Ok(std::net::IpAddr::V6(ip)) => match addrs6.iter().find(|a| a.addr.ip() == ip) {
                Some(a) => (a.index, Some(std::net::IpAddr::V6(ip))),
                None => return Ok(None),
            },
            Err(_) => match nl.link().find(name_or_ip)? {
                Some(link) => (link.index, None),
                None => return Ok(None),
            },
        };
        let addr = match given {
            Some(std::net::IpAddr::V4(ip)) => Some(ip),
            _ => addrs.iter().find(|a| a.index == index).map(|a| a.addr.ip()),
        };
        let addr6 = match given {
            Some(std::net::IpAddr::V6(ip)) => Some(ip),
            _ => first_global_ipv6(&addrs6, index),
        };
        if addr.is_none() && addr6.is_none() {
            return Ok(None);
        }
        let link = nl.link().get_by_index(index)?;
        Ok(Some(UnderlayInterface {
            name: link.name,
            index,
            mtu: link.mtu,
            addr,
            addr6,
        }))
    }
}

/// What a backend knows about the host when it sets up.
#[derive(Debug, Clone, Copy)]
pub struct HostContext<'a> {
    /// The network configuration (`Network`, `Backend`...).
    pub config: &'a NetworkConfig,
    /// The `PublicIP` this host publishes (usually the underlay address):
    /// `0.0.0.0` when the config has `EnableIPv4` false, as flannel writes
    /// an IPv6-only lease.
    pub public_ip: Ipv4Addr,
    /// The underlay interface.
    pub underlay: &'a UnderlayInterface,
    /// The host's IPv6 underlay, required when the config has
    /// `EnableIPv6` (the backends then program the IPv6 half of each
    /// dual-stack lease) and ignored otherwise.
    pub ipv6: Option<Ipv6Underlay>,
}

impl HostContext<'_> {
    /// The IPv4 side to program: `None` when the config has `EnableIPv4`
    /// false, else the underlay's IPv4 address (the IPv4 VXLAN `local`).
    ///
    /// # Errors
    /// [`BackendError::Config`] when IPv4 is on and the underlay has no
    /// IPv4 address.
    pub fn ipv4_side(&self, backend: &'static str) -> Result<Option<Ipv4Addr>, BackendError> {
        match (self.config.enable_ipv4, self.underlay.addr) {
            (false, _) => Ok(None),
            (true, Some(addr)) => Ok(Some(addr)),
            (true, None) => Err(BackendError::Config {
                backend,
                reason: format!(
                    "EnableIPv4 is set but underlay {} has no IPv4 address",
                    self.underlay.name
                ),
            }),
        }
    }

    /// The IPv6 side to program: `None` when the config has `EnableIPv6`
    /// false, else [`HostContext::ipv6`].
    ///
    /// # Errors
    /// [`BackendError::Config`] when IPv6 is on and the host has no IPv6
    /// underlay.
    pub fn ipv6_side(&self, backend: &'static str) -> Result<Option<Ipv6Underlay>, BackendError> {
        match (self.config.enable_ipv6, self.ipv6) {
            (false, _) => Ok(None),
            (true, Some(u)) => Ok(Some(u)),
            (true, None) => Err(BackendError::Config {
                backend,
                reason: format!(
                    "EnableIPv6 is set but underlay {} has no IPv6 address",
                    self.underlay.name
                ),
            }),
        }
    }
}

/// The host's IPv6 side of the underlay interface: flannel's `IfaceV6Addr`
/// and `ExtV6Addr` (`-public-ipv6`), on the same interface as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Underlay {
    /// The interface's IPv6 address: the `local` of the IPv6 VXLAN device.
    pub addr: Ipv6Addr,
    /// The `PublicIPv6` this host publishes (usually `addr`).
    pub public_ip: Ipv6Addr,
}

/// What [`Backend::setup`] returns: what to publish and the overlay MTU.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSetup {
    /// `PublicIP`, `BackendType` and `BackendData` to publish in our lease.
    pub attrs: LeaseAttrs,
    /// `FLANNEL_MTU`: the MTU workloads must use on the overlay.
    pub mtu: u32,
}

/// What one [`Backend::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Ops planned (0 when the kernel already matched).
    pub planned: usize,
    /// Ops now in effect: those the kernel acknowledged, and deletes whose
    /// target was already gone (`ENOENT`/`ESRCH`/`ENODEV`,
    /// [`Op::is_done_despite`]). An add or replace refused with any errno,
    /// `EEXIST` and not-found included, is in [`Self::failed`] instead; and
    /// since [`plan()`] never plans an op the kernel would acknowledge
    /// without effect, a pass with nothing changed has `applied == 0`.
    pub applied: usize,
    /// Ops (and device repairs) that failed, each with its request and
    /// errno; displayed as `ip route replace 10.244.3.0/24 via ... : No such
    /// device (errno 19)`.
    pub failed: Vec<FailedOp>,
    /// Peers not programmed, with the reason (bad `VtepMAC`, our own
    /// `PublicIP`, subnet outside `Network`, not on our L2 segment...).
    pub skipped: Vec<(SubnetKey, SkipReason)>,
}

/// A peer whose lease changed since the backend's previous pass, for
/// [`Backend::apply_changes`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerChange<'a> {
    /// The lease's subnet.
    pub key: SubnetKey,
    /// The lease now; `None` when it is gone (expired, deleted, no longer
    /// a usable peer).
    pub lease: Option<&'a SubnetLease>,
}

/// A request of a reconcile that did not take effect: an op of [`plan()`]
/// or a device repair (`ip link set ... up`).
///
/// [`std::fmt::Display`] writes it as the netlink error did:
/// `ip route replace 10.244.3.0/24 via 10.244.3.0 dev #7 onlink proto 241:
/// No such device (errno 19)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedOp {
    /// The request, as sent.
    pub request: Request,
    /// The errno the kernel refused it with (19: `ENODEV`); `None` when it
    /// never reached the kernel (see [`FailedOp::reason`]).
    pub errno: Option<i32>,
    /// Without an errno, why it failed (e.g. a value the netlink message
    /// cannot carry).
    pub reason: Option<String>,
}

impl FailedOp {
    /// `request` failed with `error`.
    #[must_use]
    pub fn new(request: Request, error: &NetlinkError) -> Self {
        let errno = error.errno();
        Self {
            request,
            errno,
            reason: errno.is_none().then(|| error.to_string()),
        }
    }
}

impl std::fmt::Display for FailedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.errno, &self.reason) {
            (Some(errno), _) => write!(
                f,
                "{}: {} (errno {errno})",
                self.request,
                std::io::Error::from_raw_os_error(errno)
            ),
            // The netlink error's own text, which names the request.
            (None, Some(reason)) => f.write_str(reason),
            (None, None) => write!(f, "{}: failed", self.request),
        }
    }
}

/// Errors of backend construction and of a failed step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No factory registered under that `Backend.Type`.
    #[error("unknown backend type {0:?} (known: {1})")]
    UnknownType(String, String),
    /// The `Backend` object does not parse for this backend.
    #[error("invalid {backend} backend config: {reason}")]
    Config {
        /// Backend type.
        backend: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The configured `MTU` does not fit in the underlay's: the kernel
    /// would refuse it (EINVAL) after creating the device.
    #[error("invalid vxlan backend config: MTU {mtu} is out of range: it must be 68 to {max} (the MTU {underlay_mtu} of underlay {underlay} - 50)")]
    MtuAboveUnderlay {
        /// The configured `MTU`.
        mtu: u32,
        /// The largest that fits: the underlay's MTU − 50.
        max: u32,
        /// The underlay interface's name.
        underlay: String,
        /// The underlay interface's MTU.
        underlay_mtu: u32,
    },
    /// `"Nexthops": true` asks for nexthop objects and the kernel has none:
    /// it refused a nexthop dump with `errno` (`EOPNOTSUPP` before Linux 5.3).
    #[error("invalid vxlan backend config: Nexthops true: this kernel has no nexthop objects (a nexthop dump answered {}, errno {errno}); leave Nexthops out (or \"auto\") to fall back to gateway routes", std::io::Error::from_raw_os_error(*errno))]
    NexthopsUnsupported {
        /// The kernel's answer to the dump (positive errno).
        errno: i32,
    },
    /// A netlink operation failed.
    #[error(transparent)]
    Netlink(#[from] twill_netlink::NetlinkError),
    /// `activate` or `reconcile` was called before `setup` / `activate`.
    #[error("{0} called before {1}")]
    NotReady(&'static str, &'static str),
    /// Our own lease is unusable (e.g. outside `Network`).
    #[error("own lease {key}: {reason}")]
    OwnLease {
        /// The lease's subnet.
        key: SubnetKey,
        /// Why.
        reason: String,
    },
    /// A failure of a backend defined outside this crate (a key file that
    /// cannot be read, a TUN device that cannot be opened...), with its
    /// cause kept as the error source.
    #[error("{backend} backend: {context}: {source}")]
    Custom {
        /// Backend type.
        backend: &'static str,
        /// What the backend was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl BackendError {
    /// A [`BackendError::Custom`] error: `backend` failed while doing
    /// `context` because of `source`.
    pub fn custom(
        backend: &'static str,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        BackendError::Custom {
            backend,
            context: context.into(),
            source: source.into(),
        }
    }
}

/// A dataplane backend.
///
/// The daemon calls [`Backend::setup`] once (and again after a restart),
/// publishes [`LocalSetup::attrs`] in its lease, calls [`Backend::activate`]
/// with that lease, then [`Backend::reconcile`] on every lease event and on a
/// timer with the full current set of leases.
///
/// Three required methods: an implementation that compiles is complete.
/// [`Backend::apply_changes`] is an optional fast path for lease events.
#[async_trait]
pub trait Backend: Send {
    /// The `Backend.Type` this implements (`vxlan`, `host-gw`).
    fn backend_type(&self) -> &str;

    /// Prepares the host (e.g. creates `flannel.<VNI>`) and returns what to
    /// publish. Idempotent: an existing compatible device is kept (with its
    /// MAC), an incompatible one is re-created.
    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError>;

    /// Our lease is known: configure what depends on it (the device's
    /// `/32` address). Idempotent.
    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError>;

    /// Makes the kernel match `peers` (our own lease may be included; it is
    /// ignored). Level-triggered and idempotent: dumps the kernel state,
    /// plans, applies in one batch, repairs a deleted or downed device. A
    /// second call with the same peers plans zero ops. `Err` only when the
    /// kernel cannot be read at all; per-op failures are in the report.
    ///
    /// Peers come by reference (e.g. the shared leases of a
    /// `twill_subnet::PeerSet`), so no pass copies every lease (about 600
    /// bytes a lease: 6 MB at 10,000 peers). An embedder holding owned
    /// leases passes `&leases.iter().collect::<Vec<_>>()`.
    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError>;

    /// The fast path of a lease event: makes the kernel match for the
    /// peers in `changes` only, given that the previous
    /// [`Backend::reconcile`] or `apply_changes` saw every other peer as it
    /// still is. Its cost should depend on the changes, not on the number
    /// of peers (the built-in backends plan the changed peers' entries
    /// against what they gave them last, without dumping the kernel).
    ///
    /// `Ok(None)` asks the caller for a full [`Backend::reconcile`] now:
    /// the backend cannot decide from the changes alone (no full pass yet,
    /// a claim contested between peers, a route it did not make in the
    /// way), or does not implement this (the default). Ops it applied
    /// before answering `None` are not reported; the full pass finds them
    /// in place. The periodic full pass stays the repair of anything
    /// changed behind the backend's back.
    async fn apply_changes(
        &mut self,
        changes: &[PeerChange<'_>],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let _ = changes;
        Ok(None)
    }
}

impl BackendError {
    /// The error is in the network config (bad `Backend` options, an `MTU`
    /// the underlay cannot carry): fixed in etcd, not on this host, so an
    /// agent waits for a new config rather than exit.
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            BackendError::UnknownType(..)
                | BackendError::Config { .. }
                | BackendError::MtuAboveUnderlay { .. }
        )
    }

    /// Checks, in [`Backend::activate`], that our own lease can be used: its
    /// subnet lies inside `Network`. Every backend needs this check.
    ///
    /// # Errors
    /// [`BackendError::OwnLease`] naming the subnet and the reason.
    pub fn check_own_lease(config: &NetworkConfig, own: &SubnetLease) -> Result<(), BackendError> {
        config
            .check_subnet(&own.key)
            .map_err(|e| BackendError::OwnLease {
                key: own.key,
                reason: e.to_string(),
            })
    }
}

/// Builds a backend from the `Backend` config object. A closure may capture
/// what the config does not hold (a key file path, a device name...).
pub type BackendFactory =
    Arc<dyn Fn(&BackendConfig) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;

/// Backend types by name.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    factories: BTreeMap<String, BackendFactory>,
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl BackendRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with `vxlan`, `host-gw` and `extension`.
    #[must_use]
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register("vxlan", |c| Ok(Box::new(VxlanBackend::from_config(c)?)));
        r.register("host-gw", |c| Ok(Box::new(HostGwBackend::from_config(c)?)));
        r.register("extension", |c| {
            Ok(Box::new(ExtensionBackend::from_config(c)?))
        });
        r
    }

    /// Registers (or replaces) a factory.
    ///
    /// ```
    /// # use twill_backend::{BackendError, BackendRegistry, HostGwBackend};
    /// let key_file = std::path::PathBuf::from("/run/flannel/wgkey");
    /// let mut registry = BackendRegistry::with_builtins();
    /// registry.register("my-backend", move |config| {
    ///     // A real factory would build its backend with `key_file` here.
    ///     let _ = &key_file;
    ///     Ok(Box::new(HostGwBackend::from_config(config)?))
    /// });
    /// assert!(registry.names().any(|n| n == "my-backend"));
    /// ```
    pub fn register<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(&BackendConfig) -> Result<Box<dyn Backend>, BackendError> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Arc::new(factory));
    }

    /// Registered type names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the backend named by `config.backend_type` (a netlink socket is
    /// opened in the calling thread's network namespace).
    ///
    /// # Errors
    /// [`BackendError::UnknownType`] naming the type, or the factory's error.
    pub fn create(&self, config: &BackendConfig) -> Result<Box<dyn Backend>, BackendError> {
        let f = self.factories.get(&config.backend_type).ok_or_else(|| {
            BackendError::UnknownType(
                config.backend_type.clone(),
                self.names().collect::<Vec<_>>().join(", "),
            )
        })?;
        f(config)
    }
}
