//! flannel's `-ip-masq` masquerade and forward rules, in nftables tables of
//! our own: `table ip twill` for the IPv4 network, `table ip6 twill` for the
//! IPv6 one. Both are replaced atomically by one `nft -f` transaction (no
//! iptables lock, flannel issue #933), and a family that is off has no table.
//! Blocking (it runs `nft`): the agent calls it off the runtime.
//!
//! ```
//! use twill_agent::masq::{ruleset, MasqNetworks, MasqScope};
//! let networks = MasqNetworks {
//!     ipv4: None,
//!     ipv6: Some(MasqScope {
//!         network: "fd00:5::/56".parse().unwrap(),
//!         subnet: "fd00:5:0:7::/64".parse().unwrap(),
//!     }),
//! };
//! let script = ruleset(&networks);
//! assert!(script.contains("ip6 saddr fd00:5::/56 ip6 daddr != ff00::/8 masquerade fully-random"));
//! assert!(!script.contains("table ip twill {\n"));
//! ```

use std::fmt::{self, Display, Write as _};
use std::io::Write;
use std::process::{Command, Stdio};

use twill_model::{Ipv4Network, Ipv6Network, NetworkConfig, SubnetKey};

use crate::AgentError;

/// Our tables' name (in the `ip` and the `ip6` family); nothing outside
/// them is touched.
pub const TABLE: &str = "twill";

/// kube-proxy's masquerade mark: traffic carrying it is left to kube-proxy's
/// own rules (flannel's `KubeProxyMark`, against double NAT on some kernels).
const KUBE_PROXY_MARK: &str = "0x4000";

/// What one family's rules name: the cluster network and our subnet in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqScope<N> {
    /// The cluster network (`Network` or `IPv6Network`).
    pub network: N,
    /// Our lease's subnet of that network.
    pub subnet: N,
}

/// The families to masquerade; one that is `None` gets no table (and a
/// table left from an earlier run with it on is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MasqNetworks {
    /// `table ip twill`: `Network` and the lease's IPv4 subnet.
    pub ipv4: Option<MasqScope<Ipv4Network>>,
    /// `table ip6 twill`: `IPv6Network` and the lease's IPv6 subnet.
    pub ipv6: Option<MasqScope<Ipv6Network>>,
}

impl MasqNetworks {
    /// Each family `config` enables and `own` has a subnet of: an
    /// IPv6-only lease's `0.0.0.0/0` never becomes a rule.
    #[must_use]
    pub fn for_lease(config: &NetworkConfig, own: &SubnetKey) -> Self {
        let ipv4 = own
            .ipv4_subnet()
            .filter(|_| config.enable_ipv4)
            .map(|subnet| MasqScope {
                network: config.network,
                subnet,
            });
        let ipv6 = config
            .ipv6_network
            .zip(own.ipv6)
            .filter(|_| config.enable_ipv6)
            .map(|(network, subnet)| MasqScope { network, subnet });
        MasqNetworks { ipv4, ipv6 }
    }
}

/// An nftables address family: the table's family and the keyword of its
/// address matches are the same word.
#[derive(Debug, Clone, Copy)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    fn keyword(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// Multicast is never masqueraded.
    fn multicast(self) -> &'static str {
        match self {
            Family::Ipv4 => "224.0.0.0/4",
            Family::Ipv6 => "ff00::/8",
        }
    }
}

/// One family's table: flannel's iptables `masqRules`/`masqIP6Rules` and
/// `forwardRules`, one template for both families. The third rule is the
/// iptables form (`! -s network -d subnet`); flannel's nftables mode writes
/// `saddr != subnet daddr network`, which returns before the last rule can
/// ever masquerade the host's own traffic into the overlay.
fn family_table(script: &mut String, family: Family, network: &dyn Display, subnet: &dyn Display) {
    let (f, multicast) = (family.keyword(), family.multicast());
    // Writing to a String cannot fail.
    let _ = write!(
        script,
        "table {f} {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {KUBE_PROXY_MARK} == {KUBE_PROXY_MARK} return\n\
         \t\t{f} saddr {subnet} {f} daddr {network} return\n\
         \t\t{f} saddr {network} {f} daddr {subnet} return\n\
         \t\t{f} saddr != {network} {f} daddr {subnet} return\n\
         \t\t{f} saddr {network} {f} daddr != {multicast} masquerade fully-random\n\
         \t\t{f} saddr != {network} {f} daddr {network} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{f} saddr {network} accept\n\
         \t\t{f} daddr {network} accept\n\
         \t}}\n\
         }}\n"
    );
}

/// One nft script that replaces both of our tables in a single
/// transaction: each is created empty and deleted (so absent ones are
/// fine), then the enabled families' tables are written.
#[must_use]
pub fn ruleset(networks: &MasqNetworks) -> String {
    let mut script = String::new();
    for family in Family::ALL {
        let f = family.keyword();
        let _ = write!(script, "table {f} {TABLE} {{}}\ndelete table {f} {TABLE}\n");
    }
    if let Some(v4) = networks.ipv4 {
        family_table(&mut script, Family::Ipv4, &v4.network, &v4.subnet);
    }
    if let Some(v6) = networks.ipv6 {
        family_table(&mut script, Family::Ipv6, &v6.network, &v6.subnet);
    }
    script
}

fn nft(script: &str) -> Result<(), AgentError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(AgentError::NftSpawn)?;
    // A write error means nft exited early; its status and stderr say why.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(AgentError::NftSpawn)?;
    if !out.status.success() {
        return Err(AgentError::Nft {
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; "),
        });
    }
    Ok(())
}

/// Installs (or replaces) the masquerade rules of both families at once.
///
/// # Errors
/// When `nft` is missing or refuses the rules (then neither table changed).
pub fn apply(networks: &MasqNetworks) -> Result<(), AgentError> {
    nft(&ruleset(networks))
}

/// Removes both of our tables, whichever are present.
///
/// # Errors
/// When `nft` is missing or fails.
pub fn remove() -> Result<(), AgentError> {
    apply(&MasqNetworks::default())
}

impl Display for MasqNetworks {
    /// The tables installed, for the log: `ip twill, ip6 twill` or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables: Vec<String> = [
            self.ipv4.map(|_| Family::Ipv4),
            self.ipv6.map(|_| Family::Ipv6),
        ]
        .into_iter()
        .flatten()
        .map(|family| format!("{} {TABLE}", family.keyword()))
        .collect();
        if tables.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&tables.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> MasqScope<Ipv4Network> {
        MasqScope {
            network: "10.5.0.0/16".parse().unwrap(),
            subnet: "10.5.7.0/24".parse().unwrap(),
        }
    }

    fn v6() -> MasqScope<Ipv6Network> {
        MasqScope {
            network: "fd00:5::/56".parse().unwrap(),
            subnet: "fd00:5:0:7::/64".parse().unwrap(),
        }
    }

    /// Both tables go first, in the same transaction, whatever is enabled.
    const DROP_BOTH: &str = "table ip twill {}\ndelete table ip twill\n\
                             table ip6 twill {}\ndelete table ip6 twill\n";

    fn table(r: &str, family: &str) -> Option<String> {
        let start = r.find(&format!("table {family} twill {{\n"))?;
        let len = r[start..].find("\n}\n")?;
        Some(r[start..start + len + 3].to_string())
    }

    #[test]
    fn dual_stack_writes_flannels_rules_in_both_families() {
        let r = ruleset(&MasqNetworks {
            ipv4: Some(v4()),
            ipv6: Some(v6()),
        });
        assert!(r.starts_with(DROP_BOTH), "{r}");
        let ip = table(&r, "ip").unwrap();
        let rules4 = [
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.5.7.0/24 ip daddr 10.5.0.0/16 return",
            "ip saddr 10.5.0.0/16 ip daddr 10.5.7.0/24 return",
            "ip saddr != 10.5.0.0/16 ip daddr 10.5.7.0/24 return",
            "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
            "ip saddr 10.5.0.0/16 accept",
            "ip daddr 10.5.0.0/16 accept",
        ];
        let ip6 = table(&r, "ip6").unwrap();
        let rules6 = [
            "meta mark & 0x4000 == 0x4000 return",
            "ip6 saddr fd00:5:0:7::/64 ip6 daddr fd00:5::/56 return",
            "ip6 saddr fd00:5::/56 ip6 daddr fd00:5:0:7::/64 return",
            "ip6 saddr != fd00:5::/56 ip6 daddr fd00:5:0:7::/64 return",
            "ip6 saddr fd00:5::/56 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:5::/56 ip6 daddr fd00:5::/56 masquerade fully-random",
            "ip6 saddr fd00:5::/56 accept",
            "ip6 daddr fd00:5::/56 accept",
        ];
        for (text, rules) in [(&ip, &rules4), (&ip6, &rules6)] {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| rules.contains(l))
                .collect();
            // Every rule, once, in flannel's order.
            assert_eq!(lines, rules.to_vec(), "{text}");
        }
        assert!(!ip.contains("ip6 ") && !ip6.contains(" ip saddr"));
        assert_eq!(
            MasqNetworks {
                ipv4: Some(v4()),
                ipv6: Some(v6())
            }
            .to_string(),
            "ip twill, ip6 twill"
        );
    }

    #[test]
    fn ipv4_only_writes_no_ip6_table() {
        let r = ruleset(&MasqNetworks {
            ipv4: Some(v4()),
            ipv6: None,
        });
        assert!(r.starts_with(DROP_BOTH));
        assert!(table(&r, "ip").is_some());
        assert!(table(&r, "ip6").is_none(), "{r}");
        assert!(!r.contains("ff00::/8"));
    }

    #[test]
    fn ipv6_only_writes_no_ip_table() {
        let r = ruleset(&MasqNetworks {
            ipv4: None,
            ipv6: Some(v6()),
        });
        assert!(r.starts_with(DROP_BOTH));
        assert!(table(&r, "ip").is_none(), "{r}");
        assert!(table(&r, "ip6").is_some());
        assert!(!r.contains("224.0.0.0/4") && !r.contains("0.0.0.0/0"));
    }

    #[test]
    fn remove_is_the_ruleset_with_no_family() {
        assert_eq!(ruleset(&MasqNetworks::default()), DROP_BOTH);
        assert_eq!(MasqNetworks::default().to_string(), "none");
    }

    #[test]
    fn for_lease_takes_the_families_the_config_enables() {
        let dual = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56"}"#,
        )
        .unwrap();
        let key = SubnetKey::dual(v4().subnet, v6().subnet);
        assert_eq!(
            MasqNetworks::for_lease(&dual, &key),
            MasqNetworks {
                ipv4: Some(v4()),
                ipv6: Some(v6())
            }
        );

        let v6_only = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56"}"#,
        )
        .unwrap();
        let key = SubnetKey::v6_only(v6().subnet);
        assert_eq!(
            MasqNetworks::for_lease(&v6_only, &key),
            MasqNetworks {
                ipv4: None,
                ipv6: Some(v6())
            }
        );

        // IPv6Network is read but not used while EnableIPv6 is false.
        let v4_only =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/56"}"#)
                .unwrap();
        let key = SubnetKey::v4(v4().subnet);
        assert_eq!(
            MasqNetworks::for_lease(&v4_only, &key),
            MasqNetworks {
                ipv4: Some(v4()),
                ipv6: None
            }
        );
    }
}
