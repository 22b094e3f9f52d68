//! Containers on the overlay: a docker0-like bridge per host and a
//! namespace at the subnet's `.2`, as `scripts/poc.sh` builds them.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{ClusterError, TwillCluster};
use crate::netns::Netns;

impl TwillCluster {
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
}
