use std::fmt::Write as _;

use ipnetwork::Ipv4Network;

use crate::{NetworkConfig, SubnetKey};

/// The contents of `/run/flannel/subnet.env`, as flanneld writes it, for
/// container runtimes and CNI plugins to read.
///
/// ```
/// use twill_model::{NetworkConfig, SubnetEnv, SubnetKey};
/// let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16"}"#).unwrap();
/// let env = SubnetEnv::new(&cfg, &"192.168.4.0-24".parse::<SubnetKey>().unwrap(), 1450, false);
/// assert_eq!(env.render(), "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole cluster network.
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET`: our subnet with its first address (`192.168.4.1/24`).
    pub subnet: Ipv4Network,
    /// `FLANNEL_MTU`: the MTU containers must use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the agent masquerades outgoing traffic.
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The subnet.env for our lease.
    #[must_use]
    pub fn new(config: &NetworkConfig, own: &SubnetKey, mtu: u32, ip_masq: bool) -> Self {
        let subnet = Ipv4Network::new(own.first_host(), own.ipv4.prefix()).unwrap_or(own.ipv4);
        SubnetEnv {
            network: config.network,
            subnet,
            mtu,
            ip_masq,
        }
    }

    /// The file's text, in flanneld's order.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "FLANNEL_NETWORK={}", self.network);
        let _ = writeln!(s, "FLANNEL_SUBNET={}", self.subnet);
        let _ = writeln!(s, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(s, "FLANNEL_IPMASQ={}", self.ip_masq);
        s
    }
}
