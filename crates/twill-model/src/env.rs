use std::fmt::Write as _;

use ipnetwork::Ipv4Network;

use crate::{ModelError, NetworkConfig, SubnetKey};

/// Where flanneld writes its subnet.env, and where CNI's flannel plugin
/// reads it.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

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

    /// Parses a subnet.env as flanneld (or [`SubnetEnv::render`]) writes
    /// it, e.g. to ask for the same subnet again after a restart with
    /// [`SubnetEnv::key`]. Blank lines, comments and other variables
    /// (`FLANNEL_IPV6_*`) are ignored; `FLANNEL_MTU` and `FLANNEL_IPMASQ`
    /// default to 0 and `false` when absent.
    ///
    /// ```
    /// use twill_model::SubnetEnv;
    /// let env = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\n").unwrap();
    /// assert_eq!(env.key().to_string(), "10.5.7.0-24");
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Missing`] without `FLANNEL_NETWORK` or `FLANNEL_SUBNET`,
    /// [`ModelError::InvalidValue`] naming a variable that does not parse.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        fn value<T: std::str::FromStr>(field: &'static str, v: &str) -> Result<T, ModelError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ModelError::InvalidValue {
                field,
                value: v.chars().take(64).collect(),
                reason: e.to_string(),
            })
        }
        let (mut network, mut subnet, mut mtu, mut ip_masq) = (None, None, 0, false);
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "FLANNEL_NETWORK" => network = Some(value("FLANNEL_NETWORK", v)?),
                "FLANNEL_SUBNET" => subnet = Some(value("FLANNEL_SUBNET", v)?),
                "FLANNEL_MTU" => mtu = value("FLANNEL_MTU", v)?,
                "FLANNEL_IPMASQ" => ip_masq = value("FLANNEL_IPMASQ", v)?,
                _ => {}
            }
        }
        let missing = |field| ModelError::Missing { field, hint: "" };
        Ok(SubnetEnv {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?,
            mtu,
            ip_masq,
        })
    }

    /// The lease key of `FLANNEL_SUBNET` (`10.5.7.1/24` → `10.5.7.0-24`).
    #[must_use]
    pub fn key(&self) -> SubnetKey {
        let net =
            Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet);
        SubnetKey::v4(net)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_render() {
        let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16"}"#).unwrap();
        let key: SubnetKey = "192.168.4.0-24".parse().unwrap();
        let env = SubnetEnv::new(&cfg, &key, 1420, true);
        let back = SubnetEnv::parse(&env.render()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.key(), key);
    }

    #[test]
    fn parse_names_what_is_wrong() {
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\n").unwrap_err();
        assert!(e.to_string().contains("FLANNEL_SUBNET"), "{e}");
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=nope\n").unwrap_err();
        assert!(e.to_string().contains("FLANNEL_SUBNET \"nope\""), "{e}");
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=x\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("FLANNEL_MTU"), "{e}");
        // Comments, blank lines and IPv6 variables are ignored.
        let ok = SubnetEnv::parse(
            "# written by flanneld\n\nFLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\n",
        )
        .unwrap();
        assert_eq!(ok.key().to_string(), "10.1.2.0-24");
        assert_eq!((ok.mtu, ok.ip_masq), (0, false));
    }
}
