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

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use twill_netlink::{FdbEntry, Link, MacAddr, Neighbour, Route, MAIN_TABLE, TWILL_RTPROT};

use crate::daemon::{Daemon, DaemonError, DaemonOptions};
use crate::etcd::{EtcdCluster, EtcdOptions, EtcdServerError};
use crate::netns::{Lan, Netns, NetnsError};

/// flannel's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

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

/// Builds a [`TwillCluster`]; see the module docs.
#[derive(Debug, Clone)]
pub struct TwillClusterBuilder {
    hosts: usize,
    names: Vec<String>,
    config: Option<String>,
    prefix: String,
    etcd_members: Option<usize>,
    twilld_args: Vec<String>,
    env: Vec<(String, String)>,
    healthz_port: u16,
    without_daemon: Vec<usize>,
    no_daemons: bool,
    vxlan_device: Option<String>,
}

impl Default for TwillClusterBuilder {
    fn default() -> Self {
        TwillClusterBuilder {
            hosts: 3,
            names: Vec::new(),
            config: None,
            prefix: DEFAULT_PREFIX.into(),
            etcd_members: None,
            twilld_args: Vec::new(),
            env: Vec::new(),
            healthz_port: 8471,
            without_daemon: Vec::new(),
            no_daemons: false,
            vxlan_device: None,
        }
    }
}

impl TwillClusterBuilder {
    /// Number of hosts (default 3), at `10.0.0.2`, `10.0.0.3`, ...
    #[must_use]
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Labels for the hosts (default `h1`, `h2`, ...), used for subnet-file
    /// directories and messages. Namespaces keep the testbed's unique names.
    #[must_use]
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(ToString::to_string).collect();
        self
    }

    /// The network config JSON written to `<prefix>/config` before the
    /// daemons start (none written when not given).
    #[must_use]
    pub fn config(mut self, json: &str) -> Self {
        self.config = Some(json.into());
        self
    }

    /// The etcd prefix (default `/coreos.com/network`); passed to the
    /// daemons as `-etcd-prefix` when not the default.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').into();
        self
    }

    /// Number of etcd members, on the first hosts (default: one per host).
    #[must_use]
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = Some(n);
        self
    }

    /// Extra arguments for every daemon (e.g. `--lease-ttl=3s`).
    #[must_use]
    pub fn twilld_args(mut self, args: &[&str]) -> Self {
        self.twilld_args = args.iter().map(ToString::to_string).collect();
        self
    }

    /// An environment variable for every daemon (e.g. `RUST_LOG`).
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The health port (default 8471; each host has its own namespace).
    #[must_use]
    pub fn healthz_port(mut self, port: u16) -> Self {
        self.healthz_port = port;
        self
    }

    /// Builds host `i` (0-based) without starting its daemon; start it later
    /// with [`TwillCluster::start_twilld`] (e.g. to race several starts).
    #[must_use]
    pub fn without_daemon(mut self, i: usize) -> Self {
        self.without_daemon.push(i);
        self
    }

    /// Builds no daemon at all; start them with [`TwillCluster::start_twilld`].
    #[must_use]
    pub fn no_daemons(mut self) -> Self {
        self.no_daemons = true;
        self
    }

    /// The VXLAN device the kernel readers look at (default
    /// `flannel.<VNI>` from the config, `flannel.1` without one).
    #[must_use]
    pub fn vxlan_device(mut self, name: &str) -> Self {
        self.vxlan_device = Some(name.into());
        self
    }

    /// Builds the LAN, etcd, the config and the daemons (does not wait for
    /// the daemons to be ready: see [`TwillCluster::wait_all_ready`]).
    ///
    /// # Errors
    /// When a namespace, etcd, etcdctl or a daemon fails.
    pub fn build(self, binary: impl AsRef<Path>) -> Result<TwillCluster, ClusterError> {
        let n = self.hosts;
        if n == 0 || n > 250 {
            return Err(ClusterError::Settings(format!("{n} hosts (1..=250)")));
        }
        let members = self.etcd_members.unwrap_or(n);
        if members == 0 || members > n {
            return Err(ClusterError::Settings(format!(
                "{members} etcd members for {n} hosts"
            )));
        }
        if !self.names.is_empty() && self.names.len() != n {
            return Err(ClusterError::Settings(format!(
                "{} names for {n} hosts",
                self.names.len()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("twill-cluster-")
            .tempdir()
            .map_err(io_err("creating the cluster's directory"))?;
        let mut lan = Lan::new(n)?;
        let names: Vec<String> = if self.names.is_empty() {
            lan.hosts.iter().map(|h| h.name.clone()).collect()
        } else {
            self.names.clone()
        };
        for (h, name) in lan.hosts.iter_mut().zip(&names) {
            h.name.clone_from(name);
            // Hosts route between their containers, as the article's do.
            h.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        let opts: Vec<EtcdOptions> = lan.hosts[..members]
            .iter()
            .map(|h| EtcdOptions::in_netns(h.ns.name(), h.addr))
            .collect();
        let etcd = EtcdCluster::start_with(opts)?;
        let vxlan_device = self.vxlan_device.clone().unwrap_or_else(|| {
            let vni = self
                .config
                .as_deref()
                .and_then(|c| json_number_field(c, "VNI"))
                .unwrap_or(1);
            format!("flannel.{vni}")
        });
        let mut cluster = TwillCluster {
            daemons: (0..n).map(|_| None).collect(),
            etcd,
            containers: (0..n).map(|_| None).collect(),
            lan,
            names,
            binary: binary.as_ref().to_path_buf(),
            settings: self,
            vxlan_device,
            dir,
        };
        if let Some(config) = cluster.settings.config.clone() {
            let key = format!("{}/config", cluster.settings.prefix);
            cluster.etcdctl(&["put", &key, &config])?;
        }
        for i in 0..n {
            if !cluster.settings.no_daemons && !cluster.settings.without_daemon.contains(&i) {
                cluster.start_twilld(i)?;
            }
        }
        Ok(cluster)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A parsed `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnvFile {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET` (the host's first address and the subnet's length,
    /// e.g. `192.168.4.1/24`).
    pub subnet: Ipv4Network,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
    /// The whole file.
    pub text: String,
}

impl SubnetEnvFile {
    /// Parses the file's text.
    ///
    /// # Errors
    /// [`ClusterError::Parse`] when a variable is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let var = |name: &str| -> Result<&str, ClusterError> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
                .ok_or_else(|| ClusterError::Parse {
                    what: format!("subnet.env ({name} missing)"),
                    text: text.into(),
                })
        };
        let bad = |name: &str| ClusterError::Parse {
            what: format!("subnet.env ({name})"),
            text: text.into(),
        };
        Ok(SubnetEnvFile {
            network: var("FLANNEL_NETWORK")?
                .parse()
                .map_err(|_| bad("FLANNEL_NETWORK"))?,
            subnet: var("FLANNEL_SUBNET")?
                .parse()
                .map_err(|_| bad("FLANNEL_SUBNET"))?,
            mtu: var("FLANNEL_MTU")?
                .parse()
                .map_err(|_| bad("FLANNEL_MTU"))?,
            ipmasq: var("FLANNEL_IPMASQ")?
                .parse()
                .map_err(|_| bad("FLANNEL_IPMASQ"))?,
            text: text.into(),
        })
    }

    /// The leased subnet itself (`192.168.4.0/24` for `FLANNEL_SUBNET=192.168.4.1/24`).
    #[must_use]
    pub fn subnet_network(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

/// A subnet lease as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// The full key (`/coreos.com/network/subnets/192.168.4.0-24`).
    pub key: String,
    /// The subnet named by the key.
    pub subnet: Ipv4Network,
    /// The value's `PublicIP`.
    pub public_ip: Option<Ipv4Addr>,
    /// The value's `BackendType`.
    pub backend_type: Option<String>,
    /// The value's `BackendData.VtepMAC`.
    pub vtep_mac: Option<String>,
    /// The raw value (flannel's JSON).
    pub value: String,
}

impl StoredLease {
    /// Parses a key and its value; `None` when the key is not a subnet key.
    #[must_use]
    pub fn parse(key: &str, value: &str) -> Option<Self> {
        let last = key.rsplit('/').next()?;
        let (ip, len) = last.split_once('-')?;
        let subnet = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        Some(StoredLease {
            key: key.into(),
            subnet,
            public_ip: json_string_field(value, "PublicIP").and_then(|s| s.parse().ok()),
            backend_type: json_string_field(value, "BackendType"),
            vtep_mac: json_string_field(value, "VtepMAC"),
            value: value.into(),
        })
    }
}

/// The string value of the first `"field": "..."` in a JSON text (enough for
/// flannel's small lease values; escapes are not interpreted).
#[must_use]
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let pat = format!("\"{field}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// The unsigned integer value of the first `"field": N` in a JSON text.
#[must_use]
pub fn json_number_field(json: &str, field: &str) -> Option<u32> {
    let pat = format!("\"{field}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The overlay state of one host's kernel, reduced to what the leases
/// determine: permanent FDB and neighbour entries on the VXLAN device and
/// main-table routes carrying twill's protocol number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// `(VTEP MAC, underlay dst)` of each permanent FDB entry.
    pub fdb: BTreeSet<(MacAddr, Option<Ipv4Addr>)>,
    /// `(IP, MAC)` of each permanent neighbour entry.
    pub neigh: BTreeSet<(Ipv4Addr, Option<MacAddr>)>,
    /// `(dst, gateway, onlink)` of each route with protocol
    /// [`TWILL_RTPROT`] in the main table.
    pub routes: BTreeSet<(Ipv4Network, Option<Ipv4Addr>, bool)>,
}

impl KernelState {
    /// What a host must hold for `peers` (every lease but its own) with
    /// `backend` `vxlan` (FDB `MAC → PublicIP`, neighbour `subnet.0 → MAC`,
    /// route `subnet via subnet.0 onlink`) or `host-gw` (route `subnet via
    /// PublicIP`). A vxlan lease without a valid `VtepMAC` is left out, as
    /// the backend skips it.
    #[must_use]
    pub fn expected<'a>(backend: &str, peers: impl IntoIterator<Item = &'a StoredLease>) -> Self {
        let mut k = KernelState::default();
        for l in peers {
            let Some(public) = l.public_ip else {
                continue;
            };
            let gw = l.subnet.network();
            if backend == "host-gw" {
                k.routes.insert((l.subnet, Some(public), false));
                continue;
            }
            let Some(mac) = l
                .vtep_mac
                .as_deref()
                .and_then(|m| m.parse::<MacAddr>().ok())
            else {
                continue;
            };
            k.fdb.insert((mac, Some(public)));
            k.neigh.insert((gw, Some(mac)));
            k.routes.insert((l.subnet, Some(gw), true));
        }
        k
    }
}

/// A cluster of hosts, each running a daemon; see the module docs.
pub struct TwillCluster {
    // Drop order: daemons, etcd, containers, hosts, files.
    daemons: Vec<Option<Daemon>>,
    etcd: EtcdCluster,
    /// Per host: the container added by [`TwillCluster::add_containers`] and its address.
    containers: Vec<Option<Ipv4Addr>>,
    lan: Lan,
    names: Vec<String>,
    binary: PathBuf,
    settings: TwillClusterBuilder,
    vxlan_device: String,
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

    /// The daemon of host `i`.
    ///
    /// # Panics
    /// When `i` is out of range or the host has no daemon (a test bug).
    #[must_use]
    pub fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i]
            .as_ref()
            .unwrap_or_else(|| panic!("host {i} has no daemon (start_twilld first)"))
    }

    /// The daemon of host `i`, mutably.
    ///
    /// # Panics
    /// When `i` is out of range or the host has no daemon (a test bug).
    pub fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        self.daemons[i]
            .as_mut()
            .unwrap_or_else(|| panic!("host {i} has no daemon (start_twilld first)"))
    }

    /// The daemon of host `i`, if one was started.
    #[must_use]
    pub fn try_daemon(&self, i: usize) -> Option<&Daemon> {
        self.daemons.get(i).and_then(Option::as_ref)
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

    /// The arguments host `i`'s daemon is started with (before
    /// [`TwillClusterBuilder::twilld_args`] extras).
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn base_args(&self, i: usize) -> Vec<String> {
        let h = &self.lan.hosts[i];
        let mut args = vec![
            format!("-iface={}", h.addr),
            format!("-subnet-file={}", self.subnet_file(i).display()),
            "-healthz-ip=127.0.0.1".to_string(),
            format!("-healthz-port={}", self.settings.healthz_port),
            "--reconcile-interval=1s".to_string(),
        ];
        if self.settings.prefix != DEFAULT_PREFIX {
            args.push(format!("-etcd-prefix={}", self.settings.prefix));
        }
        if i >= self.etcd.len() {
            args.push(format!(
                "-etcd-endpoints={}",
                self.etcd.endpoints().join(",")
            ));
        }
        args
    }

    /// Starts host `i`'s daemon (if it is not running) with the base
    /// arguments plus the builder's extras, logging to `<dir>/<name>/twilld.log`.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_twilld(&mut self, i: usize) -> Result<(), ClusterError> {
        let mut args = self.base_args(i);
        args.extend(self.settings.twilld_args.iter().cloned());
        self.start_twilld_with(i, args)
    }

    /// Starts host `i`'s daemon with exactly `args` (replacing the arguments
    /// of a previous daemon of this host).
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start_twilld_with(&mut self, i: usize, args: Vec<String>) -> Result<(), ClusterError> {
        self.check(i)?;
        if let Some(d) = self.daemons[i].as_mut() {
            if d.is_running() {
                return Ok(());
            }
            d.set_args(args);
            d.spawn()?;
            return Ok(());
        }
        let mut opts = DaemonOptions::new(&self.binary, args)
            .netns(self.lan.hosts[i].ns.name())
            .name(&format!("twilld@{}", self.names[i]))
            .log_path(self.dir.path().join(&self.names[i]).join("twilld.log"));
        opts.env.clone_from(&self.settings.env);
        self.daemons[i] = Some(Daemon::start(opts)?);
        Ok(())
    }

    /// Waits until host `i`'s daemon answers 200 on `/readyz`.
    ///
    /// # Errors
    /// The daemon's error (timeout or exit, with its log's tail).
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), ClusterError> {
        self.check(i)?;
        let addr = self.healthz_addr();
        let d = self.daemons[i]
            .as_mut()
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.wait_ready(addr, timeout)?)
    }

    /// Waits until every started daemon is ready, within one overall `timeout`.
    ///
    /// # Errors
    /// The first daemon's error (timeout or exit, with its log's tail).
    pub fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let addr = self.healthz_addr();
        for d in self.daemons.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            d.wait_ready(addr, left.max(Duration::from_millis(1)))?;
        }
        Ok(())
    }

    /// Runs `etcdctl ARGS...` against the first running etcd member.
    ///
    /// # Errors
    /// etcdctl's failure (with its stderr).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, ClusterError> {
        let mut last = None;
        for i in 0..self.etcd.len() {
            let m = self.etcd.member(i)?;
            if m.pid().is_none() {
                continue;
            }
            match m.etcdctl(args) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || ClusterError::NoSuch("no etcd member is running".into()),
            ClusterError::Etcd,
        ))
    }

    /// Every lease under `<prefix>/subnets/`, sorted by key.
    ///
    /// # Errors
    /// etcdctl's failure.
    pub fn leases(&self) -> Result<Vec<StoredLease>, ClusterError> {
        let prefix = format!("{}/subnets/", self.settings.prefix);
        let out = self.etcdctl(&["get", "--prefix", &prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut leases = Vec::new();
        for pair in lines.chunks(2) {
            if let [k, v] = pair {
                let lease = StoredLease::parse(k, v).ok_or_else(|| ClusterError::Parse {
                    what: "a subnet key".into(),
                    text: (*k).to_string(),
                })?;
                leases.push(lease);
            }
        }
        Ok(leases)
    }

    /// The lease whose `PublicIP` is host `i`'s address, if any.
    ///
    /// # Errors
    /// etcdctl's failure, or [`ClusterError::Parse`] when two leases name
    /// this host (a duplicate).
    pub fn own_lease(&self, i: usize) -> Result<Option<StoredLease>, ClusterError> {
        self.check(i)?;
        let ip = self.ip(i);
        let mut own: Vec<StoredLease> = self
            .leases()?
            .into_iter()
            .filter(|l| l.public_ip == Some(ip))
            .collect();
        match own.len() {
            0 | 1 => Ok(own.pop()),
            _ => Err(ClusterError::Parse {
                what: format!("leases of {ip} (more than one)"),
                text: own
                    .iter()
                    .map(|l| l.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Host `i`'s subnet file, parsed.
    ///
    /// # Errors
    /// When it cannot be read (not written yet?) or parsed.
    pub fn subnet_env(&self, i: usize) -> Result<SubnetEnvFile, ClusterError> {
        self.check(i)?;
        let path = self.subnet_file(i);
        let text = std::fs::read_to_string(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        SubnetEnvFile::parse(&text)
    }

    /// Host `i`'s VXLAN device, if it exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan_link(&self, i: usize) -> Result<Option<Link>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        Ok(nl.link().find(&self.vxlan_device)?)
    }

    /// Host `i`'s VTEP MAC (the VXLAN device's address), if the device exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vtep_mac(&self, i: usize) -> Result<Option<MacAddr>, ClusterError> {
        Ok(self.vxlan_link(i)?.and_then(|l| l.mac))
    }

    /// The IPv4 addresses on host `i`'s VXLAN device.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan_addrs(&self, i: usize) -> Result<Vec<Ipv4Network>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        Ok(nl
            .address()
            .list(Some(link.index))?
            .into_iter()
            .map(|a| a.addr)
            .collect())
    }

    /// The FDB entries on host `i`'s VXLAN device (`bridge fdb show dev flannel.N`),
    /// sorted; empty when the device does not exist.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn fdb(&self, i: usize) -> Result<Vec<FdbEntry>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.fdb().list(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The neighbour (ARP) entries on host `i`'s VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn neigh(&self, i: usize) -> Result<Vec<Neighbour>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.neighbour().list(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The main-table routes through host `i`'s VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn routes(&self, i: usize) -> Result<Vec<Route>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v: Vec<Route> = nl
            .route()
            .list(Some(MAIN_TABLE))?
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .collect();
        v.sort();
        Ok(v)
    }

    /// All main-table routes of host `i` (any device), sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn all_routes(&self, i: usize) -> Result<Vec<Route>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.route().list(Some(MAIN_TABLE))?;
        v.sort();
        Ok(v)
    }

    /// The backend type of the config (`Backend.Type`; `vxlan` without one).
    #[must_use]
    pub fn backend_type(&self) -> String {
        self.settings
            .config
            .as_deref()
            .and_then(|c| json_string_field(c, "Type"))
            .unwrap_or_else(|| "vxlan".into())
    }

    /// Host `i`'s overlay state (see [`KernelState`]).
    ///
    /// # Errors
    /// Netlink failures.
    pub fn kernel_state(&self, i: usize) -> Result<KernelState, ClusterError> {
        let fdb = self.fdb(i)?;
        let neigh = self.neigh(i)?;
        let routes = self.all_routes(i)?;
        Ok(KernelState {
            fdb: fdb
                .iter()
                .filter(|e| e.permanent)
                .map(|e| (e.mac, e.dst))
                .collect(),
            neigh: neigh
                .iter()
                .filter(|n| n.permanent)
                .map(|n| (n.ip, n.mac))
                .collect(),
            routes: routes
                .iter()
                .filter(|r| r.protocol == TWILL_RTPROT)
                .map(|r| (r.dst, r.gateway, r.onlink))
                .collect(),
        })
    }

    /// What host `i` must hold given `leases` (all of them: the host's own
    /// lease, the one whose `PublicIP` is its address, is left out).
    #[must_use]
    pub fn expected_state(&self, i: usize, leases: &[StoredLease]) -> KernelState {
        let ip = self.ip(i);
        KernelState::expected(
            &self.backend_type(),
            leases.iter().filter(|l| l.public_ip != Some(ip)),
        )
    }

    /// Hosts whose daemon runs.
    pub fn running_hosts(&mut self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.daemons[i].as_mut().is_some_and(Daemon::is_running))
            .collect()
    }

    /// The hosts (among `hosts`) whose kernel does not match the leases in
    /// etcd now, with what they hold and what they should; empty when every
    /// one matches and each has a lease of its own.
    ///
    /// # Errors
    /// etcdctl or netlink failures.
    pub fn mismatches(&self, hosts: &[usize]) -> Result<Vec<String>, ClusterError> {
        let leases = self.leases()?;
        let mut out = Vec::new();
        for &i in hosts {
            self.check(i)?;
            if !leases.iter().any(|l| l.public_ip == Some(self.ip(i))) {
                out.push(format!("{} ({}) has no lease", self.names[i], self.ip(i)));
                continue;
            }
            let want = self.expected_state(i, &leases);
            let have = self.kernel_state(i)?;
            if want != have {
                out.push(format!(
                    "{} ({}): kernel {have:?}, leases want {want:?}",
                    self.names[i],
                    self.ip(i)
                ));
            }
        }
        Ok(out)
    }

    /// Waits until every host with a running daemon holds a lease and its
    /// kernel matches the leases in etcd ([`TwillCluster::mismatches`] is
    /// empty); returns how long it took.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] whose message lists the mismatches.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<Duration, ClusterError> {
        let hosts = self.running_hosts();
        let start = Instant::now();
        loop {
            let last = match self.mismatches(&hosts) {
                Ok(m) if m.is_empty() => return Ok(start.elapsed()),
                Ok(m) => m,
                Err(e) => vec![e.to_string()],
            };
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: format!("convergence; still: {}", last.join("; ")),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metric `name` of host `i`'s daemon (its `/metrics`), e.g.
    /// [`RECONCILES_TOTAL`].
    ///
    /// # Errors
    /// When the host has no daemon, or it does not answer with that sample.
    pub fn metric(&self, i: usize, name: &str) -> Result<f64, ClusterError> {
        self.check(i)?;
        let d = self
            .try_daemon(i)
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.metric(self.healthz_addr(), name)?)
    }

    /// Waits until the metric `name` of host `i`'s daemon is at least `min`;
    /// returns its value.
    ///
    /// # Errors
    /// The daemon's error (timeout naming the metric, or exit, with its log's tail).
    pub fn wait_metric(
        &mut self,
        i: usize,
        name: &str,
        min: f64,
        timeout: Duration,
    ) -> Result<f64, ClusterError> {
        self.check(i)?;
        let addr = self.healthz_addr();
        let d = self.daemons[i]
            .as_mut()
            .ok_or_else(|| ClusterError::NoSuch(format!("host {i} has no daemon")))?;
        Ok(d.wait_metric(addr, name, min, timeout)?)
    }

    /// Waits until each daemon of `hosts` has finished `n` more reconcile
    /// passes ([`RECONCILES_TOTAL`]) than when called, within one overall
    /// `timeout`. A pass may be under way when this is called, so with
    /// `n >= 2` at least `n - 1` passes started afterwards, each with every
    /// lease the daemon had received by then.
    ///
    /// This is the evidence a negative check needs: once a daemon has
    /// provably taken an event (a log line, [`LEASE_EVENTS_TOTAL`], or a
    /// later lease it programmed), wait for passes after it, then assert
    /// that nothing wrong was done. Never a sleep.
    ///
    /// # Errors
    /// As [`TwillCluster::wait_metric`].
    pub fn wait_reconciles(
        &mut self,
        hosts: &[usize],
        n: u32,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut marks = Vec::with_capacity(hosts.len());
        for &i in hosts {
            let now = match self.metric(i, RECONCILES_TOTAL) {
                Ok(v) => v,
                // Not serving yet: wait for the first pass, then count from it.
                Err(_) => self.wait_metric(i, RECONCILES_TOTAL, 0.0, timeout)?,
            };
            marks.push((i, now));
        }
        for (i, now) in marks {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_metric(
                i,
                RECONCILES_TOTAL,
                now + f64::from(n),
                left.max(Duration::from_millis(1)),
            )?;
        }
        Ok(())
    }

    /// Adds, on every host whose subnet file exists, a docker0-like bridge
    /// addressed with `FLANNEL_SUBNET` (MTU `FLANNEL_MTU`) and one container
    /// at the subnet's `.2`, as `scripts/poc.sh` does. Hosts that already
    /// have a container are left alone.
    ///
    /// # Errors
    /// When a subnet file cannot be parsed or an `ip` command fails.
    pub fn add_containers(&mut self) -> Result<(), ClusterError> {
        for i in 0..self.len() {
            if self.containers[i].is_some() || !self.subnet_file(i).exists() {
                continue;
            }
            self.add_container(i)?;
        }
        Ok(())
    }

    /// Adds host `i`'s container (see [`TwillCluster::add_containers`]) and
    /// returns its address.
    ///
    /// # Errors
    /// When the subnet file cannot be read or an `ip` command fails.
    pub fn add_container(&mut self, i: usize) -> Result<Ipv4Addr, ClusterError> {
        let env = self.subnet_env(i)?;
        let gw = env.subnet.ip();
        let net = env.subnet_network();
        let cip = Ipv4Addr::from(u32::from(net.network()) + 2);
        let addr = Ipv4Network::new(cip, net.prefix()).map_err(|_| ClusterError::Parse {
            what: "container address".into(),
            text: cip.to_string(),
        })?;
        let mtu = env.mtu.to_string();
        let host = &mut self.lan.hosts[i];
        let c = host.add_container("docker0", addr, gw)?;
        c.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        let n = host.containers.len();
        host.ns.ip(&["link", "set", "docker0", "mtu", &mtu])?;
        host.ns
            .ip(&["link", "set", &format!("vc{n}"), "mtu", &mtu])?;
        self.containers[i] = Some(cip);
        Ok(cip)
    }

    /// The address of host `i`'s container, once added.
    #[must_use]
    pub fn container_ip(&self, i: usize) -> Option<Ipv4Addr> {
        self.containers.get(i).copied().flatten()
    }

    /// Host `i`'s (first) container namespace, once added.
    #[must_use]
    pub fn container(&self, i: usize) -> Option<&Netns> {
        self.lan.hosts.get(i)?.containers.first()
    }

    /// Whether `to` answers a ping from host `from`'s container (up to 3
    /// echo requests, 2 s wait; true when any reply arrives).
    #[must_use]
    pub fn ping(&self, from: usize, to: Ipv4Addr) -> bool {
        let Some(c) = self.container(from) else {
            return false;
        };
        c.exec(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &to.to_string(),
            ],
        )
        .is_ok()
    }

    /// Polls `check` every 20 ms until it returns true or `timeout` passes;
    /// returns how long it took.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] naming `what`.
    pub fn poll(
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> bool,
    ) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        loop {
            if check() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: what.into(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every daemon's log, labelled, for failure messages.
    #[must_use]
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, d) in self.daemons.iter().enumerate() {
            if let Some(d) = d {
                s.push_str(&format!(
                    "--- {} ({}) ---\n{}\n",
                    self.names[i],
                    self.ip(i),
                    d.log()
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_subnet_env() {
        let e = SubnetEnvFile::parse(
            "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(e.network.to_string(), "192.168.0.0/16");
        assert_eq!(e.subnet.to_string(), "192.168.4.1/24");
        assert_eq!(e.subnet_network().to_string(), "192.168.4.0/24");
        assert_eq!(e.mtu, 1450);
        assert!(!e.ipmasq);
        assert!(SubnetEnvFile::parse("FLANNEL_NETWORK=x\n").is_err());
    }

    #[test]
    fn parses_stored_leases() {
        let l = StoredLease::parse(
            "/coreos.com/network/subnets/192.168.3.0-24",
            r#"{"PublicIP": "10.0.0.99","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:00:00:99"}}"#,
        )
        .unwrap();
        assert_eq!(l.subnet.to_string(), "192.168.3.0/24");
        assert_eq!(l.public_ip, Some(Ipv4Addr::new(10, 0, 0, 99)));
        assert_eq!(l.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(l.vtep_mac.as_deref(), Some("aa:bb:cc:00:00:99"));
        assert!(StoredLease::parse("/coreos.com/network/config", "{}").is_none());
        assert_eq!(
            json_number_field(r#"{"Backend":{"Type":"vxlan","VNI": 100}}"#, "VNI"),
            Some(100)
        );
    }
}
