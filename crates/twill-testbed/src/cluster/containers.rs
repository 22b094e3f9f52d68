//! Containers on the overlay: a docker0-like bridge per host and a
//! namespace at the subnet's `.2` (and, with IPv6, at the IPv6 subnet's
//! `::2` behind the bridge's `::1`), as `scripts/poc.sh` builds them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::{ClusterError, TwillCluster};
use crate::netns::{ContainerAddrs, Netns};

impl TwillCluster {
    /// Adds, on every host whose subnet file exists, a docker0-like bridge
    /// addressed with `FLANNEL_SUBNET` (MTU `FLANNEL_MTU`) and one container
    /// at the subnet's `.2`, as `scripts/poc.sh` does, and with
    /// `FLANNEL_IPV6_SUBNET` at its `::2` (see
    /// [`TwillCluster::add_dual_container`]). Hosts that already have a
    /// container are left alone.
    ///
    /// # Errors
    /// When a subnet file cannot be parsed or an `ip` command fails.
    pub fn add_containers(&mut self) -> Result<(), ClusterError> {
        for i in 0..self.len() {
            if self.containers[i].is_some() || !self.subnet_file(i).exists() {
                continue;
            }
            self.add_dual_container(i)?;
        }
        Ok(())
    }

    /// Adds host `i`'s container (see [`TwillCluster::add_containers`]) and
    /// returns its IPv4 address.
    ///
    /// # Errors
    /// When the subnet file cannot be read or an `ip` command fails, or
    /// [`ClusterError::NoSuch`] when the subnet file has no IPv4 subnet
    /// (an IPv6-only host; see [`TwillCluster::add_dual_container`]).
    pub fn add_container(&mut self, i: usize) -> Result<Ipv4Addr, ClusterError> {
        match self.add_dual_container(i)? {
            (Some(v4), _) => Ok(v4),
            (None, _) => Err(ClusterError::NoSuch(format!(
                "host {i} has no IPv4 subnet (IPv6-only): its container has only {:?}",
                self.container_ip6(i)
            ))),
        }
    }

    /// Adds host `i`'s container with an address of each family its subnet
    /// file names: the IPv4 subnet's `.2` behind the bridge's `.1`
    /// (`FLANNEL_SUBNET`), the IPv6 subnet's `::2` behind the bridge's
    /// `::1` (`FLANNEL_IPV6_SUBNET`), MTU `FLANNEL_MTU`. Returns both.
    ///
    /// # Errors
    /// When the subnet file cannot be read or an `ip` command fails.
    pub fn add_dual_container(
        &mut self,
        i: usize,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ClusterError> {
        let env = self.subnet_env(i)?;
        let bad = |text: String| ClusterError::Parse {
            what: "container address".into(),
            text,
        };
        let v4 = if env.has_ipv4() {
            let gw = env.subnet.ip();
            let net = env.subnet_network();
            let cip = Ipv4Addr::from(u32::from(net.network()) + 2);
            let addr = Ipv4Network::new(cip, net.prefix()).map_err(|_| bad(cip.to_string()))?;
            Some((addr, gw))
        } else {
            None
        };
        let v6 = match env.ipv6_subnet {
            Some(sub) => {
                let net = u128::from(sub.network());
                let gw = Ipv6Addr::from(net + 1);
                let cip = Ipv6Addr::from(net + 2);
                let addr = Ipv6Network::new(cip, sub.prefix()).map_err(|_| bad(cip.to_string()))?;
                Some((addr, gw))
            }
            None => None,
        };
        let mtu = env.mtu.to_string();
        let host = &mut self.lan.hosts[i];
        let c = host.add_container_with("docker0", ContainerAddrs { v4, v6 })?;
        c.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        let n = host.containers.len();
        host.ns.ip(&["link", "set", "docker0", "mtu", &mtu])?;
        host.ns
            .ip(&["link", "set", &format!("vc{n}"), "mtu", &mtu])?;
        let ips = (v4.map(|(a, _)| a.ip()), v6.map(|(a, _)| a.ip()));
        self.containers[i] = Some(ips);
        Ok(ips)
    }

    /// The IPv4 address of host `i`'s container, once added (none on an
    /// IPv6-only host).
    #[must_use]
    pub fn container_ip(&self, i: usize) -> Option<Ipv4Addr> {
        self.containers.get(i).copied().flatten().and_then(|c| c.0)
    }

    /// The IPv6 address of host `i`'s container, once added with an IPv6
    /// subnet in the host's subnet file.
    #[must_use]
    pub fn container_ip6(&self, i: usize) -> Option<Ipv6Addr> {
        self.containers.get(i).copied().flatten().and_then(|c| c.1)
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
        self.ping_addr(from, IpAddr::V4(to))
    }

    /// [`TwillCluster::ping`] over IPv6 (`ping -6`).
    #[must_use]
    pub fn ping6(&self, from: usize, to: Ipv6Addr) -> bool {
        self.ping_addr(from, IpAddr::V6(to))
    }

    fn ping_addr(&self, from: usize, to: IpAddr) -> bool {
        let family = if to.is_ipv6() { "-6" } else { "-4" };
        let Some(c) = self.container(from) else {
            return false;
        };
        c.exec(
            "ping",
            &[
                family,
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
}
