//! A cluster of twilld hosts for end-to-end and reliability tests.
//!
//! [`TwillCluster::builder`] builds, in this order: a [`Lan`] of hosts
//! (`10.0.0.2`, `10.0.0.3`, ...), an etcd cluster (by default one member per
//! host, inside the host's namespace, listening on the host's IP and on
//! `127.0.0.1:2379` so the daemon uses its local member at flannel's default
//! endpoint; or fewer members on the first hosts, the other hosts then being
//! given `-etcd-endpoints` naming every member), writes the network config
//! with `etcdctl`, and starts one daemon per host:
//!
//! ```text
//! ip netns exec <host> <binary> -iface=<ip> -subnet-file=<tmp>/<host>/subnet.env \
//!     -healthz-ip=127.0.0.1 -healthz-port=<port> --reconcile-interval=1s <extra args>
//! ```
//!
//! The daemon binary is a parameter (integration tests of `twilld` pass
//! `env!("CARGO_BIN_EXE_twilld")`): this crate does not depend on it.
//! Everything (daemons, etcd, namespaces, files) is removed on drop, in that
//! order, also when a test panics.
//!
//! Readers: [`TwillCluster::leases`] / [`TwillCluster::own_lease`] (etcd),
//! [`TwillCluster::subnet_env`], and per host the kernel through netlink
//! dumps made inside the host's namespace: [`TwillCluster::vxlan_link`],
//! [`TwillCluster::vtep_mac`], [`TwillCluster::fdb`], [`TwillCluster::neigh`],
//! [`TwillCluster::routes`], and [`TwillCluster::kernel_state`] compared with
//! [`TwillCluster::expected_state`] by [`TwillCluster::mismatches`] and
//! [`TwillCluster::wait_converged`]. Daemons are driven through
//! [`TwillCluster::daemon_mut`] ([`Daemon::sigterm`], [`Daemon::kill`],
//! [`Daemon::restart`], ...) and [`TwillCluster::start_twilld`]. Their
//! counters are read with [`TwillCluster::metric`] and waited on with
//! [`TwillCluster::wait_metric`] and [`TwillCluster::wait_reconciles`]: a
//! negative check ("the bad lease is not programmed") is made only after
//! the daemon has provably run passes that saw the event, never after a sleep.
//!
//! IPv6: [`TwillClusterBuilder::underlay`] gives the hosts a dual-stack or
//! an IPv6-only LAN ([`Underlay`]). On an IPv6-only LAN the etcd members
//! listen on the hosts' IPv6 addresses and every daemon is given
//! `-iface=<its IPv6 address>` and `-etcd-endpoints=http://[fd00:10::2]:2379,...`.
//! The IPv6 halves are read as the IPv4 ones: [`StoredLease::subnet6`],
//! [`StoredLease::public_ipv6`], [`StoredLease::vtep_mac6`] (etcd),
//! [`TwillCluster::vxlan6_link`], [`TwillCluster::vtep_mac6`],
//! [`TwillCluster::fdb6`], [`TwillCluster::neigh6`], [`TwillCluster::routes6`]
//! (the kernel, `flannel-v6.<VNI>`), and [`KernelState`]'s IPv6 sets take part
//! in [`TwillCluster::wait_converged`]. Containers get an address of each
//! family their host's subnet.env has ([`TwillCluster::container_ip6`],
//! [`TwillCluster::ping6`]); [`TwillCluster::show`] runs `ip`/`bridge` for
//! the text an operator would read.
//!
//! ```no_run
//! use std::time::Duration;
//! use twill_testbed::cluster::TwillCluster;
//! twill_testbed::require_root!();
//! twill_testbed::require_etcd!();
//! let config = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
//! let mut c = TwillCluster::builder()
//!     .hosts(3)
//!     .names(&["test", "test2", "test3"])
//!     .config(config)
//!     .etcd_members(3)
//!     .twilld_args(&["--lease-ttl=5s"])
//!     .build("/path/to/twilld")
//!     .unwrap();
//! c.wait_all_ready(Duration::from_secs(20)).unwrap();
//! // Every running host's FDB/ARP/routes equal what the leases in etcd say.
//! let took = c.wait_converged(Duration::from_secs(10)).unwrap();
//! let env = c.subnet_env(0).unwrap();            // FLANNEL_SUBNET etc.
//! let lease = c.own_lease(0).unwrap().unwrap();  // key and value in etcd
//! assert_eq!(lease.subnet, env.subnet_network());
//! println!("peers of test: {:?}", c.fdb(0).unwrap());
//! c.add_containers().unwrap();                   // docker0 + one container per host
//! assert!(c.ping(0, c.container_ip(1).unwrap()));
//! c.daemon_mut(1).kill().unwrap();               // crash host 2's daemon
//! c.etcdctl(&["del", &lease.key]).unwrap();
//! ```

mod builder;
mod containers;
mod etcdctl;
mod kernel;
mod process;
mod subnet_env;
mod wait;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{Daemon, DaemonError};
use crate::etcd::{EtcdCluster, EtcdServerError};
pub use crate::netns::Underlay;
use crate::netns::{Lan, Netns, NetnsError};

pub use builder::TwillClusterBuilder;
pub use etcdctl::{json_number_field, json_object_field, json_string_field, StoredLease};
pub use kernel::KernelState;
pub use subnet_env::SubnetEnvFile;

/// flannel's default etcd prefix (the builder's default; daemons get no
/// `-etcd-prefix` for it).
pub use twill_model::DEFAULT_PREFIX;

/// twilld's counter of reconcile passes (each one dumps the kernel, plans
/// against the peer set the daemon holds when it starts, and applies).
pub const RECONCILES_TOTAL: &str = "twill_reconciles_total";
/// twilld's counter of peer lease events (added, updated, removed) it has
/// taken from the registry.
pub const LEASE_EVENTS_TOTAL: &str = "twill_lease_events_total";
/// twilld's counter of renewals of its own lease.
pub const LEASE_RENEWALS_TOTAL: &str = "twill_lease_renewals_total";

/// What can go wrong building or inspecting a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Building namespaces or running `ip` failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdServerError),
    /// A daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A netlink dump failed.
    #[error(transparent)]
    Netlink(#[from] twill_netlink::NetlinkError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A subnet file is not what flanneld writes (a variable missing,
    /// repeated or malformed).
    #[error("subnet.env: {0}")]
    SubnetEnv(#[source] twill_model::ModelError),
    /// Something we read did not have the expected shape.
    #[error("cannot parse {what}: {text:?}")]
    Parse {
        /// What we were reading.
        what: String,
        /// The offending text.
        text: String,
    },
    /// A host (or container) index out of range, or a host without a daemon.
    #[error("{0}")]
    NoSuch(String),
    /// A wait ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The builder was given inconsistent settings.
    #[error("invalid cluster settings: {0}")]
    Settings(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A cluster of hosts, each running a daemon; see the module docs.
pub struct TwillCluster {
    // Drop order: daemons, etcd, containers, hosts, files.
    daemons: Vec<Option<Daemon>>,
    etcd: EtcdCluster,
    /// Per host: the addresses of the container added by
    /// [`TwillCluster::add_containers`], once added.
    containers: Vec<Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>>,
    lan: Lan,
    names: Vec<String>,
    binary: PathBuf,
    settings: TwillClusterBuilder,
    vxlan_device: String,
    vxlan6_device: String,
    dir: tempfile::TempDir,
}

impl fmt::Debug for TwillCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwillCluster")
            .field("hosts", &self.names)
            .field("etcd", &self.etcd.endpoints())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TwillCluster {
    /// A builder with 3 hosts, one etcd member per host, no config.
    #[must_use]
    pub fn builder() -> TwillClusterBuilder {
        TwillClusterBuilder::default()
    }

    /// Number of hosts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lan.hosts.len()
    }

    /// Whether there are no hosts (never, once built).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lan.hosts.is_empty()
    }

    fn check(&self, i: usize) -> Result<(), ClusterError> {
        if i < self.len() {
            Ok(())
        } else {
            Err(ClusterError::NoSuch(format!(
                "no host {i} in a cluster of {}",
                self.len()
            )))
        }
    }

    /// Host `i` (its namespace, address, containers).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn host(&self, i: usize) -> &crate::netns::Host {
        &self.lan.hosts[i]
    }

    /// Host `i`'s label (`test2`, or `h2` by default).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s underlay address.
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.lan.hosts[i].addr
    }

    /// Host `i`'s IPv6 underlay address (dual-stack or IPv6-only LAN).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn ip6(&self, i: usize) -> Option<Ipv6Addr> {
        self.lan.hosts[i].addr6
    }

    /// Host `i`'s underlay address for messages: its IPv4 address, or its
    /// IPv6 one on an IPv6-only LAN.
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn ip_label(&self, i: usize) -> String {
        let h = &self.lan.hosts[i];
        match h.addr6 {
            Some(a6) if h.addr.is_unspecified() => a6.to_string(),
            _ => h.addr.to_string(),
        }
    }

    /// The LAN's address families.
    #[must_use]
    pub fn underlay(&self) -> Underlay {
        self.settings.underlay
    }

    /// Host `i`'s namespace.
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn ns(&self, i: usize) -> &Netns {
        &self.lan.hosts[i].ns
    }

    /// The underlay LAN (e.g. to cut a host's link: `lan.lan.ip(...)`).
    #[must_use]
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The etcd cluster.
    #[must_use]
    pub fn etcd(&self) -> &EtcdCluster {
        &self.etcd
    }

    /// The etcd cluster, mutably (to stop, kill or restart members).
    pub fn etcd_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    /// The directory holding subnet files and logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Host `i`'s subnet file (`<dir>/<name>/subnet.env`).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.names[i]).join("subnet.env")
    }

    /// The health address the daemons listen on inside their namespace.
    #[must_use]
    pub fn healthz_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.settings.healthz_port))
    }

    /// The VXLAN device name the kernel readers look at.
    #[must_use]
    pub fn vxlan_device(&self) -> &str {
        &self.vxlan_device
    }

    /// The IPv6 VXLAN device name the kernel readers look at
    /// (`flannel-v6.<VNI>`).
    #[must_use]
    pub fn vxlan6_device(&self) -> &str {
        &self.vxlan6_device
    }

    /// Runs `program args...` (`ip -6 route`, `bridge fdb show`, ...) in
    /// host `i`'s namespace and returns its stdout: what an operator reads.
    ///
    /// # Errors
    /// As [`Netns::exec`].
    pub fn show(&self, i: usize, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        self.check(i)?;
        Ok(self.ns(i).exec(program, args)?)
    }
}
