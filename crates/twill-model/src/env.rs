use std::fmt::Write as _;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::key::EMPTY_V4;
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
///
/// // IPv6-only: flannel writes no IPv4 lines.
/// let cfg = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:1::/56"}"#).unwrap();
/// let env = SubnetEnv::new(&cfg, &"0.0.0.0-0&fd00:1:0:2::-64".parse::<SubnetKey>().unwrap(), 1430, true);
/// assert_eq!(env.render(), "FLANNEL_IPV6_NETWORK=fd00:1::/56\nFLANNEL_IPV6_SUBNET=fd00:1:0:2::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n");
/// assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole cluster network; `0.0.0.0/0`
    /// (flannel's empty network, and no IPv4 lines in the file) when IPv4
    /// is off, see [`SubnetEnv::has_ipv4`].
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET`: our subnet with its first address (`192.168.4.1/24`);
    /// `0.0.0.0/0` when IPv4 is off.
    pub subnet: Ipv4Network,
    /// `FLANNEL_IPV6_NETWORK`: the cluster's IPv6 network, when IPv6 is on.
    pub ipv6_network: Option<Ipv6Network>,
    /// `FLANNEL_IPV6_SUBNET`: our IPv6 subnet with its first address
    /// (`fd00:1:2::1/64`), when IPv6 is on.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// `FLANNEL_MTU`: the MTU containers must use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the agent masquerades outgoing traffic.
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The subnet.env for our lease.
    ///
    /// As flannel's `WriteSubnetFile`: the IPv4 lines when `EnableIPv4`,
    /// the IPv6 ones when `EnableIPv6` (and `own` has an IPv6 subnet).
    #[must_use]
    pub fn new(config: &NetworkConfig, own: &SubnetKey, mtu: u32, ip_masq: bool) -> Self {
        let (network, subnet) = if config.enable_ipv4 {
            let subnet = Ipv4Network::new(own.first_host(), own.ipv4.prefix()).unwrap_or(own.ipv4);
            (config.network, subnet)
        } else {
            (EMPTY_V4, EMPTY_V4)
        };
        let (ipv6_network, ipv6_subnet) = match (config.enable_ipv6, config.ipv6_network, own.ipv6)
        {
            (true, Some(net), Some(sn)) => {
                let first = own.first_ipv6_host().unwrap_or(sn.network());
                (
                    Some(net),
                    Some(Ipv6Network::new(first, sn.prefix()).unwrap_or(sn)),
                )
            }
            _ => (None, None),
        };
        SubnetEnv {
            network,
            subnet,
            ipv6_network,
            ipv6_subnet,
            mtu,
            ip_masq,
        }
    }

    /// Whether the file has IPv4 lines (`FLANNEL_NETWORK`, `FLANNEL_SUBNET`).
    #[must_use]
    pub fn has_ipv4(&self) -> bool {
        self.network != EMPTY_V4
    }

    /// Parses a subnet.env as flanneld (or [`SubnetEnv::render`]) writes
    /// it, e.g. to ask for the same subnet again after a restart with
    /// [`SubnetEnv::key`]. Either family's pair of lines may be absent (not
    /// both); blank lines, comments and other variables are ignored;
    /// `FLANNEL_MTU` and `FLANNEL_IPMASQ`
    /// default to 0 and `false` when absent; a variable given twice takes
    /// its last value, as a shell sourcing the file would.
    ///
    /// ```
    /// use twill_model::SubnetEnv;
    /// let env = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\n").unwrap();
    /// assert_eq!(env.key().to_string(), "10.5.7.0-24");
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Missing`] without `FLANNEL_NETWORK` and
    /// `FLANNEL_SUBNET` or `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`
    /// (naming the missing half of a pair),
    /// [`ModelError::InvalidValue`] naming a variable that does not parse.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        Self::parse_with(text, Strictness::Tolerant)
    }

    /// Parses a subnet.env that must hold each variable flanneld writes
    /// (`FLANNEL_MTU`, `FLANNEL_IPMASQ` and one or both families' pairs)
    /// exactly once: what a reader checking a writer (a
    /// test of the daemon, a CNI plugin that refuses half-written files)
    /// wants, where [`SubnetEnv::parse`]'s defaults would hide a missing
    /// `FLANNEL_MTU` or `FLANNEL_IPMASQ`. Other lines are ignored as there.
    ///
    /// ```
    /// use twill_model::SubnetEnv;
    /// let full = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    /// assert!(SubnetEnv::parse_complete(full).unwrap().ip_masq);
    /// assert!(SubnetEnv::parse_complete("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\n").is_err());
    /// ```
    ///
    /// # Errors
    /// As [`SubnetEnv::parse`], and [`ModelError::Missing`] naming an absent
    /// variable, [`ModelError::InvalidValue`] naming one given twice.
    pub fn parse_complete(text: &str) -> Result<Self, ModelError> {
        Self::parse_with(text, Strictness::Complete)
    }

    fn parse_with(text: &str, strictness: Strictness) -> Result<Self, ModelError> {
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
        // Each is set at most once in complete mode: a second value is a
        // writer bug (two writers, an append instead of a replace).
        fn set<T>(
            slot: &mut Option<T>,
            field: &'static str,
            v: &str,
            strictness: Strictness,
        ) -> Result<(), ModelError>
        where
            T: std::str::FromStr,
            T::Err: std::fmt::Display,
        {
            if strictness == Strictness::Complete && slot.is_some() {
                return Err(ModelError::InvalidValue {
                    field,
                    value: v.chars().take(64).collect(),
                    reason: "the variable is set more than once".into(),
                });
            }
            *slot = Some(value(field, v)?);
            Ok(())
        }
        let (mut network, mut subnet, mut mtu, mut ip_masq) = (None, None, None, None);
        let (mut ipv6_network, mut ipv6_subnet) = (None, None);
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "FLANNEL_NETWORK" => set(&mut network, "FLANNEL_NETWORK", v, strictness)?,
                "FLANNEL_SUBNET" => set(&mut subnet, "FLANNEL_SUBNET", v, strictness)?,
                "FLANNEL_MTU" => set(&mut mtu, "FLANNEL_MTU", v, strictness)?,
                "FLANNEL_IPMASQ" => set(&mut ip_masq, "FLANNEL_IPMASQ", v, strictness)?,
                "FLANNEL_IPV6_NETWORK" => {
                    set(&mut ipv6_network, "FLANNEL_IPV6_NETWORK", v, strictness)?;
                }
                "FLANNEL_IPV6_SUBNET" => {
                    set(&mut ipv6_subnet, "FLANNEL_IPV6_SUBNET", v, strictness)?;
                }
                _ => {}
            }
        }
        let missing = |field| ModelError::Missing { field, hint: "" };
        let (mtu, ip_masq) = match strictness {
            Strictness::Tolerant => (mtu.unwrap_or(0), ip_masq.unwrap_or(false)),
            Strictness::Complete => (
                mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
                ip_masq.ok_or_else(|| missing("FLANNEL_IPMASQ"))?,
            ),
        };
        // A family is both of its lines or neither; with no IPv6 lines the
        // IPv4 ones are required (the file of every IPv4-only flanneld).
        let (network, subnet) = match (network, subnet) {
            (Some(n), Some(s)) => (n, s),
            (None, None) if ipv6_network.is_some() || ipv6_subnet.is_some() => (EMPTY_V4, EMPTY_V4),
            (Some(_), None) => return Err(missing("FLANNEL_SUBNET")),
            (None, _) => return Err(missing("FLANNEL_NETWORK")),
        };
        let (ipv6_network, ipv6_subnet) = match (ipv6_network, ipv6_subnet) {
            (Some(n), Some(s)) => (Some(n), Some(s)),
            (None, None) => (None, None),
            (Some(_), None) => return Err(missing("FLANNEL_IPV6_SUBNET")),
            (None, Some(_)) => return Err(missing("FLANNEL_IPV6_NETWORK")),
        };
        Ok(SubnetEnv {
            network,
            subnet,
            ipv6_network,
            ipv6_subnet,
            mtu,
            ip_masq,
        })
    }

    /// The leased subnet itself: `FLANNEL_SUBNET` without its host part
    /// (`10.5.7.1/24` → `10.5.7.0/24`).
    #[must_use]
    pub fn subnet_network(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }

    /// The leased IPv6 subnet: `FLANNEL_IPV6_SUBNET` without its host part
    /// (`fd00:1:2::1/64` → `fd00:1:2::/64`).
    #[must_use]
    pub fn ipv6_subnet_network(&self) -> Option<Ipv6Network> {
        self.ipv6_subnet
            .map(|s| Ipv6Network::new(s.network(), s.prefix()).unwrap_or(s))
    }

    /// The lease key of `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET`
    /// (`10.5.7.1/24` → `10.5.7.0-24`; with `fd00:1:2::1/64` too →
    /// `10.5.7.0-24&fd00:1:2::-64`; that alone → `0.0.0.0-0&fd00:1:2::-64`).
    #[must_use]
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: if self.has_ipv4() {
                self.subnet_network()
            } else {
                EMPTY_V4
            },
            ipv6: self.ipv6_subnet_network(),
        }
    }

    /// The file's text, in flanneld's order: IPv4 lines, IPv6 lines,
    /// `FLANNEL_MTU`, `FLANNEL_IPMASQ`.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.has_ipv4() {
            let _ = writeln!(s, "FLANNEL_NETWORK={}", self.network);
            let _ = writeln!(s, "FLANNEL_SUBNET={}", self.subnet);
        }
        if let (Some(net), Some(sn)) = (self.ipv6_network, self.ipv6_subnet) {
            let _ = writeln!(s, "FLANNEL_IPV6_NETWORK={net}");
            let _ = writeln!(s, "FLANNEL_IPV6_SUBNET={sn}");
        }
        let _ = writeln!(s, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(s, "FLANNEL_IPMASQ={}", self.ip_masq);
        s
    }
}

/// Whether absent variables take defaults ([`SubnetEnv::parse`]) or are
/// errors ([`SubnetEnv::parse_complete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    Tolerant,
    Complete,
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
        // Comments, blank lines and unknown variables are ignored.
        let ok = SubnetEnv::parse(
            "# written by flanneld\n\nFLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_FUTURE=1\n",
        )
        .unwrap();
        assert_eq!(ok.key().to_string(), "10.1.2.0-24");
        assert_eq!((ok.mtu, ok.ip_masq), (0, false));
        // Half a family is named.
        for (text, field) in [
            ("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\n", "FLANNEL_IPV6_SUBNET"),
            ("FLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n", "FLANNEL_IPV6_NETWORK"),
            ("FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n", "FLANNEL_NETWORK"),
            ("FLANNEL_MTU=1450\n", "FLANNEL_NETWORK"),
        ] {
            match SubnetEnv::parse(text) {
                Err(ModelError::Missing { field: f, .. }) => assert_eq!(f, field, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let e =
            SubnetEnv::parse("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=10.1.2.1/24\n")
                .unwrap_err();
        assert!(
            e.to_string()
                .contains("FLANNEL_IPV6_SUBNET \"10.1.2.1/24\""),
            "{e}"
        );
    }

    #[test]
    fn parse_takes_the_last_of_a_repeated_variable() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1400\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        assert_eq!(env.mtu, 1450);
    }

    #[test]
    fn parse_complete_reads_every_variable() {
        let text = "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET=192.168.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let env = SubnetEnv::parse_complete(text).unwrap();
        assert_eq!(env.network.to_string(), "192.168.0.0/16");
        assert_eq!(env.subnet.to_string(), "192.168.4.1/24");
        assert_eq!(env.subnet_network().to_string(), "192.168.4.0/24");
        assert_eq!((env.mtu, env.ip_masq), (1450, true));
        assert_eq!(env, SubnetEnv::parse(text).unwrap());
        // Padding, comments and other variables are ignored as by `parse`.
        let padded = format!(
            "# flanneld\n\n  {}FLANNEL_FUTURE=fd00::/56\n",
            text.replace('=', " = ")
        );
        assert_eq!(SubnetEnv::parse_complete(&padded).unwrap(), env);
    }

    /// flannel's `WriteSubnetFile` for the three stacks, byte for byte.
    #[test]
    fn renders_each_stack_as_flannel_writes_it() {
        let cases = [
            (
                r#"{"Network":"10.5.0.0/16"}"#,
                "10.5.7.0-24",
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            ),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
                "10.5.7.0-24&fd00:10:0:7::-64",
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
                "0.0.0.0-0&fd00:10:0:7::-64",
                "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET=fd00:10:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            ),
        ];
        for (cfg, key, want) in cases {
            let cfg = NetworkConfig::parse(cfg).unwrap();
            let key: SubnetKey = key.parse().unwrap();
            let env = SubnetEnv::new(&cfg, &key, 1450, false);
            assert_eq!(env.render(), want);
            assert_eq!(env.has_ipv4(), cfg.enable_ipv4);
            let back = SubnetEnv::parse_complete(want).unwrap();
            assert_eq!(back, env);
            assert_eq!(back.key(), key);
        }
        // A dual-stack lease under an IPv4-only config: flannel writes the
        // IPv4 lines only.
        let cfg = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        let env = SubnetEnv::new(
            &cfg,
            &"10.5.7.0-24&fd00:10:0:7::-64".parse().unwrap(),
            1450,
            false,
        );
        assert_eq!(env.ipv6_subnet, None);
    }

    #[test]
    fn parse_complete_names_what_is_absent_or_repeated() {
        let base = "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.2.1/24\n";
        let missing = |text: &str| match SubnetEnv::parse_complete(text) {
            Err(ModelError::Missing { field, .. }) => field,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(missing(base), "FLANNEL_MTU");
        assert_eq!(
            missing(&format!("{base}FLANNEL_MTU=1450\n")),
            "FLANNEL_IPMASQ"
        );
        assert_eq!(
            missing("FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
            "FLANNEL_NETWORK"
        );
        // The tolerant parser takes defaults for the same text.
        assert_eq!(SubnetEnv::parse(base).unwrap().mtu, 0);
        let twice =
            format!("{base}FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_SUBNET=10.1.3.1/24\n");
        match SubnetEnv::parse_complete(&twice) {
            Err(ModelError::InvalidValue { field, value, .. }) => {
                assert_eq!((field, value.as_str()), ("FLANNEL_SUBNET", "10.1.3.1/24"));
            }
            other => panic!("{other:?}"),
        }
        match SubnetEnv::parse_complete(&format!("{base}FLANNEL_MTU=1450\nFLANNEL_IPMASQ=no\n")) {
            Err(ModelError::InvalidValue { field, .. }) => assert_eq!(field, "FLANNEL_IPMASQ"),
            other => panic!("{other:?}"),
        }
    }
}
