//! [`TwillClusterBuilder`]: the settings, checked, and the order in which a
//! cluster comes up (LAN, etcd, config, daemons).

use std::path::Path;

use super::{io_err, json_number_field, ClusterError, TwillCluster, DEFAULT_PREFIX};
use crate::etcd::{EtcdCluster, EtcdOptions};
use crate::netns::{Lan, Underlay};

/// Builds a [`TwillCluster`]; see the module docs.
#[derive(Debug, Clone)]
pub struct TwillClusterBuilder {
    pub(super) hosts: usize,
    pub(super) names: Vec<String>,
    pub(super) config: Option<String>,
    pub(super) prefix: String,
    pub(super) etcd_members: Option<usize>,
    pub(super) twilld_args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) healthz_port: u16,
    pub(super) without_daemon: Vec<usize>,
    pub(super) no_daemons: bool,
    pub(super) vxlan_device: Option<String>,
    pub(super) underlay: Underlay,
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
            underlay: Underlay::Ipv4,
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

    /// The LAN's address families (default [`Underlay::Ipv4`]). On
    /// [`Underlay::Ipv6Only`] etcd listens on the hosts' IPv6 addresses and
    /// the daemons reach it there (see the module docs).
    #[must_use]
    pub fn underlay(mut self, underlay: Underlay) -> Self {
        self.underlay = underlay;
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
        let mut lan = Lan::with_underlay(n, self.underlay)?;
        let names: Vec<String> = if self.names.is_empty() {
            lan.hosts.iter().map(|h| h.name.clone()).collect()
        } else {
            self.names.clone()
        };
        for (h, name) in lan.hosts.iter_mut().zip(&names) {
            h.name.clone_from(name);
            // Hosts route between their containers, as the article's do.
            h.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            if self.underlay.has_ipv6() {
                h.ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
            }
        }
        let opts: Vec<EtcdOptions> = lan.hosts[..members]
            .iter()
            .map(|h| match (self.underlay, h.addr6) {
                (Underlay::Ipv6Only, Some(a6)) => EtcdOptions::in_netns_v6(h.ns.name(), a6),
                _ => EtcdOptions::in_netns(h.ns.name(), h.addr),
            })
            .collect();
        let etcd = EtcdCluster::start_with(opts)?;
        let vni = self
            .config
            .as_deref()
            .and_then(|c| json_number_field(c, "VNI"))
            .unwrap_or(1);
        let vxlan_device = self
            .vxlan_device
            .clone()
            .unwrap_or_else(|| format!("flannel.{vni}"));
        let vxlan6_device = format!("flannel-v6.{vni}");
        let mut cluster = TwillCluster {
            daemons: (0..n).map(|_| None).collect(),
            etcd,
            containers: (0..n).map(|_| None).collect(),
            lan,
            names,
            binary: binary.as_ref().to_path_buf(),
            settings: self,
            vxlan_device,
            vxlan6_device,
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
