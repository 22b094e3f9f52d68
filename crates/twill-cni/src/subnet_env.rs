//! subnet.env as flannel's CNI plugin reads it (`loadFlannelSubnetEnv`).
//!
//! This is the reader's side, with the plugin's rules, which differ from
//! [`twill_model::SubnetEnv`] (the daemon's writer and strict reader):
//! `FLANNEL_NETWORK` and `FLANNEL_IPV6_NETWORK` may be comma-separated
//! lists (duplicates dropped), subnets are taken as networks
//! (`10.1.17.1/24` → `10.1.17.0/24`, Go's `net.ParseCIDR`),
//! `FLANNEL_IPMASQ` is true only when it is exactly `true`, and a file
//! written by any flanneld is accepted.

use ipnetwork::IpNetwork;

use crate::CniError;

/// What the plugin takes from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    /// `FLANNEL_NETWORK`: the cluster network(s).
    pub networks: Vec<IpNetwork>,
    /// `FLANNEL_SUBNET`, as a network: this host's subnet.
    pub subnet: Option<IpNetwork>,
    /// `FLANNEL_IPV6_NETWORK`: the cluster's IPv6 network(s).
    pub ipv6_networks: Vec<IpNetwork>,
    /// `FLANNEL_IPV6_SUBNET`, as a network.
    pub ipv6_subnet: Option<IpNetwork>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether flanneld masquerades (then the bridge
    /// must not).
    pub ip_masq: bool,
}

/// Go's `net.ParseCIDR`: `addr/prefix`, both required; returns the network
/// (host bits cleared) when `masked`, else the address with its prefix.
pub(crate) fn parse_cidr(s: &str, masked: bool) -> Result<IpNetwork, String> {
    let invalid = || format!("invalid CIDR address: {s}");
    let (addr, prefix) = s.split_once('/').ok_or_else(invalid)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let addr: std::net::IpAddr = addr.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    let net = IpNetwork::new(addr, prefix).map_err(|_| invalid())?;
    if masked {
        IpNetwork::new(net.network(), prefix).map_err(|_| invalid())
    } else {
        Ok(net)
    }
}

impl FlannelEnv {
    /// Parses the subnet file's text; `path` is only for the message.
    ///
    /// ```
    /// use twill_cni::FlannelEnv;
    /// let env = FlannelEnv::parse("/run/flannel/subnet.env",
    ///     "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
    /// assert_eq!(env.subnet.unwrap().to_string(), "10.1.17.0/24");
    /// assert_eq!((env.mtu, env.ip_masq), (1472, true));
    /// ```
    ///
    /// # Errors
    /// [`CniError::SubnetFileInvalid`] naming the variable that does not
    /// parse, or, in flannel's words, what is missing (`... is missing
    /// FLANNEL_MTU`).
    pub fn parse(path: &str, text: &str) -> Result<Self, CniError> {
        let bad = |var: &str, e: String| CniError::SubnetFileInvalid(format!("{path}: {var}: {e}"));
        let list = |var: &str, v: &str| -> Result<Vec<IpNetwork>, CniError> {
            let mut out: Vec<IpNetwork> = Vec::new();
            for part in v.split(',') {
                let n = parse_cidr(part, true).map_err(|e| bad(var, e))?;
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            Ok(out)
        };
        let (mut nws, mut sn, mut nws6, mut sn6, mut mtu, mut masq) =
            (Vec::new(), None, Vec::new(), None, None, None);
        for line in text.lines() {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            match k {
                "FLANNEL_NETWORK" => nws = list(k, v)?,
                "FLANNEL_SUBNET" => sn = Some(parse_cidr(v, true).map_err(|e| bad(k, e))?),
                "FLANNEL_IPV6_NETWORK" => nws6 = list(k, v)?,
                "FLANNEL_IPV6_SUBNET" => {
                    sn6 = Some(parse_cidr(v, true).map_err(|e| bad(k, e))?);
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.parse::<u32>()
                            .map_err(|e| bad(k, format!("invalid value {v:?}: {e}")))?,
                    );
                }
                "FLANNEL_IPMASQ" => masq = Some(v == "true"),
                _ => {}
            }
        }
        let mut missing: Vec<&str> = Vec::new();
        if nws.is_empty() && nws6.is_empty() {
            missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
        }
        if sn.is_none() && sn6.is_none() {
            missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if masq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        match (mtu, masq) {
            (Some(mtu), Some(ip_masq)) if missing.is_empty() => Ok(FlannelEnv {
                networks: nws,
                subnet: sn,
                ipv6_networks: nws6,
                ipv6_subnet: sn6,
                mtu,
                ip_masq,
            }),
            _ => Err(CniError::SubnetFileInvalid(format!(
                "{path} is missing {}",
                missing.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/s.env";

    #[test]
    fn reads_each_stack_as_flannel_does() {
        let dual = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let e = FlannelEnv::parse(P, dual).unwrap();
        assert_eq!(e.networks[0].to_string(), "10.1.0.0/16");
        assert_eq!(e.subnet.unwrap().to_string(), "10.1.17.0/24");
        assert_eq!(e.ipv6_networks[0].to_string(), "fc00::/48");
        assert_eq!(e.ipv6_subnet.unwrap().to_string(), "fc00::/64");
        let v6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
        let e = FlannelEnv::parse(P, v6).unwrap();
        assert!(e.networks.is_empty() && e.subnet.is_none() && !e.ip_masq);
        // Several networks, duplicates dropped; CRLF tolerated.
        let multi = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\r\nFLANNEL_SUBNET=10.1.17.1/24\r\nFLANNEL_MTU=1472\r\nFLANNEL_IPMASQ=yes\r\n";
        let e = FlannelEnv::parse(P, multi).unwrap();
        assert_eq!(e.networks.len(), 2);
        assert!(!e.ip_masq, "only `true` is true");
    }

    #[test]
    fn names_what_is_missing_or_bad() {
        let e = FlannelEnv::parse(P, "FLANNEL_NETWORK=10.1.0.0/16\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to load flannel 'subnet.env' file: /s.env is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ. Check the flannel pod log for this node."
        );
        let e = FlannelEnv::parse(P, "FLANNEL_SUBNET=10.1.17.1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("FLANNEL_SUBNET: invalid CIDR address: 10.1.17.1"),
            "{e}"
        );
        let e = FlannelEnv::parse(P, "FLANNEL_MTU=14x0\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("FLANNEL_MTU: invalid value \"14x0\""),
            "{e}"
        );
        assert_eq!(e.code(), 6);
    }

    #[test]
    fn parse_cidr_is_strict() {
        assert!(parse_cidr("10.0.0.0", true).is_err());
        assert!(parse_cidr("10.0.0.0/33", true).is_err());
        assert!(parse_cidr("10.0.0.0/+8", true).is_err());
        assert!(parse_cidr(" 10.0.0.0/8", true).is_err());
        assert_eq!(
            parse_cidr("10.1.17.20/24", false).unwrap().to_string(),
            "10.1.17.20/24"
        );
        assert_eq!(
            parse_cidr("10.1.17.20/24", true).unwrap().to_string(),
            "10.1.17.0/24"
        );
    }
}
