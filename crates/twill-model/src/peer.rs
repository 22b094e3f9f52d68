//! Whether a lease can be a peer of this host, and why not: one rule, called
//! by the lease core (which leases make the peer set) and by every backend
//! (which never programs a lease an embedder hands it directly unchecked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{MacAddr, NetworkConfig, SubnetKey, SubnetLease};

/// Why a stored lease is not used as a peer: by the lease core
/// (`LeaseEvent::Skipped`) or by a backend (`ReconcileReport::skipped`).
///
/// [`std::fmt::Display`] is the message the logs show
/// (`it claims our PublicIP 10.0.0.2`); callers branch on the variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SkipReason {
    /// The stored key or value is not a lease at all (bad key, bad JSON).
    #[error("{reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
    /// The subnet is not inside `Network`.
    #[error("subnet {subnet} is not inside Network {network}")]
    OutsideNetwork {
        /// The lease's subnet.
        subnet: Ipv4Network,
        /// The configured `Network`.
        network: Ipv4Network,
    },
    /// The subnet overlaps a network this host needs to reach outside the
    /// overlay (underlay, gateway, etcd).
    #[error("{subnet} overlaps this host's own network {network} (underlay, gateway or etcd): routing it into the overlay would cut the host off")]
    OverlapsHostNetwork {
        /// The lease's subnet.
        subnet: Ipv4Network,
        /// The host network it overlaps.
        network: Ipv4Network,
    },
    /// The lease carries this host's `PublicIP` under another subnet.
    #[error("it claims our PublicIP {0}")]
    ClaimsOurPublicIp(Ipv4Addr),
    /// The `PublicIP` is unspecified, loopback, multicast or broadcast.
    #[error("PublicIP {0} is not a unicast address")]
    PublicIpNotUnicast(Ipv4Addr),
    /// The subnet overlaps this host's own subnet.
    #[error("subnet overlaps our own {0}")]
    OverlapsOwnSubnet(Ipv4Network),
    /// The subnet overlaps a peer's that claimed it first.
    #[error("subnet overlaps peer {0}")]
    OverlapsPeer(SubnetKey),
    /// The lease's `PublicIP` was changed in place; the original is kept
    /// programmed until the lease is given up.
    #[error(
        "PublicIP changed in place from {from} to {to}: kept {from} until the lease is given up"
    )]
    PublicIpChanged {
        /// The `PublicIP` still programmed.
        from: Ipv4Addr,
        /// The `PublicIP` the lease now says.
        to: Ipv4Addr,
    },
    /// The lease is of another `BackendType` than ours.
    #[error("BackendType {found:?} is not {ours:?}")]
    OtherBackendType {
        /// The lease's `BackendType`.
        found: String,
        /// Ours.
        ours: String,
    },
    /// `BackendData` does not parse for our backend.
    #[error("bad BackendData: {reason}")]
    BadBackendData {
        /// What the parser said.
        reason: String,
    },
    /// `VtepMAC` is not a MAC address.
    #[error("bad VtepMAC {0:?}")]
    BadVtepMac(String),
    /// `VtepMAC` is a multicast or all-zeros address.
    #[error("VtepMAC {0} is not a unicast address")]
    VtepMacNotUnicast(MacAddr),
    /// `VtepMAC` is our device's.
    #[error("VtepMAC {0} is our own")]
    VtepMacIsOurs(MacAddr),
    /// `VtepMAC` is already used by a peer that claimed it first: the FDB
    /// holds one destination per MAC.
    #[error("VtepMAC {mac} is already used by peer {peer}")]
    VtepMacInUse {
        /// The MAC.
        mac: MacAddr,
        /// The peer holding it.
        peer: SubnetKey,
    },
    /// The lease's `PublicIP` (`PublicIPv6` on the IPv6 side) is already
    /// used by a peer that claimed it first: one address is one host, and
    /// a second lease naming it (a hostile write, a host's stale lease)
    /// would send another subnet's traffic to that host.
    #[error("PublicIP {ip} is already used by peer {peer}")]
    PublicIpInUse {
        /// The address.
        ip: IpAddr,
        /// The peer holding it.
        peer: SubnetKey,
    },
    /// The lease's `VNI` is not ours.
    #[error("VNI {vni} differs from ours ({ours})")]
    OtherVni {
        /// The lease's VNI.
        vni: u32,
        /// Ours.
        ours: u32,
    },
    /// The `PublicIP` is not on a prefix connected to the underlay, so a
    /// plain route via it (host-gw, `DirectRouting`) cannot work.
    #[error("PublicIP {public_ip} is not on our L2 segment ({underlay} has {})", joined(.connected))]
    NotOnSegment {
        /// The lease's `PublicIP`.
        public_ip: Ipv4Addr,
        /// The underlay interface's name.
        underlay: String,
        /// The prefixes connected to it.
        connected: Vec<Ipv4Network>,
    },
    /// A route at the lease's destination that we did not create is in the
    /// way; the lease is programmed once it is gone.
    #[error("a route to {0} that twill did not create is in the way")]
    ForeignRoute(Ipv4Network),
    /// The IPv6 subnet is not inside `IPv6Network`.
    #[error("IPv6 subnet {subnet} is not inside IPv6Network {network}")]
    OutsideIpv6Network {
        /// The lease's IPv6 subnet.
        subnet: Ipv6Network,
        /// The configured `IPv6Network`.
        network: Ipv6Network,
    },
    /// An IPv4-only lease in an IPv6-only network: nothing of it can be
    /// programmed.
    #[error("it has no IPv6 subnet and the network is IPv6-only")]
    NoIpv6Subnet,
    /// The IPv6 subnet overlaps a network this host needs to reach outside
    /// the overlay (underlay, gateway or etcd).
    #[error("{subnet} overlaps this host's own network {network} (underlay, gateway or etcd): routing it into the overlay would cut the host off")]
    OverlapsHostIpv6Network {
        /// The lease's IPv6 subnet.
        subnet: Ipv6Network,
        /// The host network it overlaps.
        network: Ipv6Network,
    },
    /// The lease carries this host's `PublicIPv6` under another subnet.
    #[error("it claims our PublicIPv6 {0}")]
    ClaimsOurPublicIpv6(Ipv6Addr),
    /// The lease has an IPv6 subnet but no `PublicIPv6` to reach it by.
    #[error("it has an IPv6 subnet but no PublicIPv6")]
    NoPublicIpv6,
    /// The `PublicIPv6` is unspecified, loopback, multicast, link-local or
    /// IPv4-mapped: no address a peer can tunnel or route to.
    #[error("PublicIPv6 {0} is not a global or unique local unicast address")]
    PublicIpv6NotUnicast(Ipv6Addr),
    /// The IPv6 subnet overlaps this host's own IPv6 subnet.
    #[error("IPv6 subnet overlaps our own {0}")]
    OverlapsOwnIpv6Subnet(Ipv6Network),
    /// The lease's `PublicIPv6` was changed in place; the original is kept
    /// programmed until the lease is given up.
    #[error("PublicIPv6 changed in place from {} to {}: kept the former until the lease is given up", or_none(.from), or_none(.to))]
    PublicIpv6Changed {
        /// The `PublicIPv6` still programmed.
        from: Option<Ipv6Addr>,
        /// The `PublicIPv6` the lease now says.
        to: Option<Ipv6Addr>,
    },
    /// A reason of a backend outside these crates (a bad WireGuard key...).
    #[error("{reason}")]
    Backend {
        /// The backend's `Backend.Type`.
        backend: &'static str,
        /// What is wrong with the lease, for this backend.
        reason: String,
    },
}

fn or_none(ip: &Option<Ipv6Addr>) -> String {
    ip.map_or_else(|| "none".into(), |ip| ip.to_string())
}

/// Whether a peer can be reached at `ip`: not unspecified, loopback,
/// multicast, link-local (needs a scope no lease carries) or IPv4-mapped
/// (an IPv4 address in disguise, already covered by `PublicIP`).
#[must_use]
pub fn is_usable_public_ipv6(ip: Ipv6Addr) -> bool {
    let v = u128::from(ip);
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || v >> 32 == 0xffff)
}

fn overlaps6(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn joined(nets: &[Ipv4Network]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`NetworkConfig::check_peer`] decided about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVerdict {
    /// A peer to program.
    Peer,
    /// Our own lease: not a peer, nothing to report.
    Own,
    /// Not to be programmed, for this reason.
    Skip(SkipReason),
}

impl NetworkConfig {
    /// Whether `lease` can be a peer of the host holding `own` (once known)
    /// and publishing `public_ip`: not our own lease, not claiming our
    /// `PublicIP`, a unicast `PublicIP`, a subnet inside `Network` and not
    /// overlapping ours. The host-level rules, the same for every backend;
    /// backends add their own (`BackendType`, `BackendData`, overlaps
    /// between peers).
    ///
    /// The IPv4 host's form of [`NetworkConfig::check_peer_dual`] (no
    /// `PublicIPv6` of ours to compare): the same rules for each enabled
    /// family, except [`SkipReason::ClaimsOurPublicIpv6`].
    #[must_use]
    pub fn check_peer(
        &self,
        lease: &SubnetLease,
        own: Option<&SubnetKey>,
        public_ip: Ipv4Addr,
    ) -> PeerVerdict {
        self.check_peer_dual(lease, own, public_ip, None)
    }

    /// [`NetworkConfig::check_peer`] for every address family the config
    /// enables, for a host publishing `public_ip` and `public_ipv6` (flannel's
    /// `0.0.0.0` and `Some` on an IPv6-only host). In order:
    ///
    /// * our own key (the whole key) is [`PeerVerdict::Own`];
    /// * with IPv4 on: the IPv4 subnet inside `Network`; with IPv6 on, the
    ///   IPv6 subnet inside `IPv6Network`, and present when IPv4 is off (a
    ///   dual-stack network may hold IPv4-only leases, which flannel
    ///   programs on their IPv4 side);
    /// * the lease claims neither our `PublicIP` (IPv4 on) nor our
    ///   `PublicIPv6`;
    /// * with IPv4 on, a unicast `PublicIP`; with an IPv6 subnet, a usable
    ///   `PublicIPv6` ([`is_usable_public_ipv6`]);
    /// * neither subnet overlaps ours of its family.
    #[must_use]
    pub fn check_peer_dual(
        &self,
        lease: &SubnetLease,
        own: Option<&SubnetKey>,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> PeerVerdict {
        if own.is_some_and(|k| *k == lease.key) {
            return PeerVerdict::Own;
        }
        let key = &lease.key;
        if self.enable_ipv4 {
            let subnet = key.ipv4;
            if subnet.prefix() < self.network.prefix() || !self.network.contains(subnet.network()) {
                return PeerVerdict::Skip(SkipReason::OutsideNetwork {
                    subnet,
                    network: self.network,
                });
            }
        }
        let v6 = if self.enable_ipv6 { key.ipv6 } else { None };
        if self.enable_ipv6 {
            match (key.ipv6, self.ipv6_network) {
                (Some(sn), Some(net))
                    if sn.prefix() >= net.prefix() && net.contains(sn.network()) => {}
                (Some(subnet), Some(network)) => {
                    return PeerVerdict::Skip(SkipReason::OutsideIpv6Network { subnet, network })
                }
                // A parsed config with IPv6 on always has an IPv6Network;
                // a hand-built one without it has no IPv6 subnet to accept.
                (Some(subnet), None) => {
                    return PeerVerdict::Skip(SkipReason::OutsideIpv6Network {
                        subnet,
                        network: subnet,
                    })
                }
                (None, _) if !self.enable_ipv4 => {
                    return PeerVerdict::Skip(SkipReason::NoIpv6Subnet)
                }
                (None, _) => {}
            }
        }
        let ip = lease.attrs.public_ip;
        if self.enable_ipv4 && ip == public_ip {
            return PeerVerdict::Skip(SkipReason::ClaimsOurPublicIp(ip));
        }
        if let (Some(theirs), Some(ours)) = (lease.attrs.public_ipv6, public_ipv6) {
            if theirs == ours {
                return PeerVerdict::Skip(SkipReason::ClaimsOurPublicIpv6(theirs));
            }
        }
        if self.enable_ipv4
            && (ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
        {
            return PeerVerdict::Skip(SkipReason::PublicIpNotUnicast(ip));
        }
        if v6.is_some() {
            match lease.attrs.public_ipv6 {
                None => return PeerVerdict::Skip(SkipReason::NoPublicIpv6),
                Some(ip6) if !is_usable_public_ipv6(ip6) => {
                    return PeerVerdict::Skip(SkipReason::PublicIpv6NotUnicast(ip6))
                }
                Some(_) => {}
            }
        }
        if let Some(k) = own {
            if self.enable_ipv4 {
                let subnet = key.ipv4;
                if k.ipv4.contains(subnet.network()) || subnet.contains(k.ipv4.network()) {
                    return PeerVerdict::Skip(SkipReason::OverlapsOwnSubnet(k.ipv4));
                }
            }
            if let (Some(theirs), Some(ours)) = (v6, k.ipv6) {
                if overlaps6(theirs, ours) {
                    return PeerVerdict::Skip(SkipReason::OverlapsOwnIpv6Subnet(ours));
                }
            }
        }
        PeerVerdict::Peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaseAttrs, LeaseKind};

    fn lease(key: &str, ip: &str) -> SubnetLease {
        SubnetLease {
            key: key.parse().unwrap(),
            attrs: LeaseAttrs::new(ip.parse().unwrap(), "vxlan"),
            kind: LeaseKind::Expiring,
            revision: 0,
        }
    }

    #[test]
    fn host_rules_in_order_with_todays_messages() {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
        let ours: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let check = |key: &str, ip: &str| config.check_peer(&lease(key, ip), Some(&own), ours);
        assert_eq!(check("10.244.1.0-24", "10.0.0.2"), PeerVerdict::Own);
        assert_eq!(check("10.244.2.0-24", "10.0.0.3"), PeerVerdict::Peer);
        for (key, ip, want) in [
            (
                "10.245.0.0-24",
                "10.0.0.2",
                "subnet 10.245.0.0/24 is not inside Network 10.244.0.0/16",
            ),
            (
                "10.244.3.0-24",
                "10.0.0.2",
                "it claims our PublicIP 10.0.0.2",
            ),
            (
                "10.244.4.0-24",
                "224.0.0.1",
                "PublicIP 224.0.0.1 is not a unicast address",
            ),
            (
                "10.244.5.0-24",
                "127.0.0.1",
                "PublicIP 127.0.0.1 is not a unicast address",
            ),
            (
                "10.244.0.0-23",
                "10.0.0.4",
                "subnet overlaps our own 10.244.1.0/24",
            ),
            (
                "10.244.1.128-25",
                "10.0.0.4",
                "subnet overlaps our own 10.244.1.0/24",
            ),
        ] {
            match check(key, ip) {
                PeerVerdict::Skip(r) => assert_eq!(r.to_string(), want, "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        // Before our lease is known, only the other rules apply.
        assert_eq!(
            config.check_peer(&lease("10.244.1.0-24", "10.0.0.5"), None, ours),
            PeerVerdict::Peer
        );
    }

    fn lease6(key: &str, ip: &str, ip6: Option<&str>) -> SubnetLease {
        let mut l = lease(key, ip);
        l.attrs.public_ipv6 = ip6.map(|s| s.parse().unwrap());
        l
    }

    #[test]
    fn dual_stack_rules_check_both_families() {
        let config = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
        )
        .unwrap();
        let own: SubnetKey = "10.244.1.0-24&fd00:10:0:1::-64".parse().unwrap();
        let (ip, ip6) = ("10.0.0.2".parse().unwrap(), "fd00::2".parse().ok());
        let check = |key: &str, pip: &str, pip6: Option<&str>| {
            config.check_peer_dual(&lease6(key, pip, pip6), Some(&own), ip, ip6)
        };
        assert_eq!(
            check(
                "10.244.1.0-24&fd00:10:0:1::-64",
                "10.0.0.2",
                Some("fd00::2")
            ),
            PeerVerdict::Own
        );
        assert_eq!(
            check(
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("fd00::3")
            ),
            PeerVerdict::Peer
        );
        // flannel programs an IPv4-only lease of a dual-stack network on its IPv4 side.
        assert_eq!(check("10.244.3.0-24", "10.0.0.4", None), PeerVerdict::Peer);
        for (key, pip, pip6, want) in [
            (
                "10.244.2.0-24&fd00:11::-64",
                "10.0.0.3",
                Some("fd00::3"),
                "IPv6 subnet fd00:11::/64 is not inside IPv6Network fd00:10::/48",
            ),
            (
                "10.244.2.0-24&fd00:10::-40",
                "10.0.0.3",
                Some("fd00::3"),
                "IPv6 subnet fd00:10::/40 is not inside IPv6Network fd00:10::/48",
            ),
            (
                "0.0.0.0-0&fd00:10:0:2::-64",
                "0.0.0.0",
                Some("fd00::3"),
                "subnet 0.0.0.0/0 is not inside Network 10.244.0.0/16",
            ),
            (
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("fd00::2"),
                "it claims our PublicIPv6 fd00::2",
            ),
            (
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                None,
                "it has an IPv6 subnet but no PublicIPv6",
            ),
            (
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("fe80::1"),
                "PublicIPv6 fe80::1 is not a global or unique local unicast address",
            ),
            (
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("::ffff:10.0.0.3"),
                "PublicIPv6 ::ffff:10.0.0.3 is not a global or unique local unicast address",
            ),
            (
                "10.244.2.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("ff02::1"),
                "PublicIPv6 ff02::1 is not a global or unique local unicast address",
            ),
            (
                "10.244.2.0-24&fd00:10:0:1:8000::-65",
                "10.0.0.3",
                Some("fd00::3"),
                "IPv6 subnet overlaps our own fd00:10:0:1::/64",
            ),
            (
                "10.244.1.0-24&fd00:10:0:2::-64",
                "10.0.0.3",
                Some("fd00::3"),
                "subnet overlaps our own 10.244.1.0/24",
            ),
        ] {
            match check(key, pip, pip6) {
                PeerVerdict::Skip(r) => assert_eq!(r.to_string(), want, "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn ipv6_only_rules_ignore_the_empty_ipv4_side() {
        let config = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
        )
        .unwrap();
        let own = SubnetKey::v6_only("fd00:10:0:1::/64".parse().unwrap());
        let ip6 = "fd00::2".parse().ok();
        let check = |key: &str, pip6: Option<&str>| {
            config.check_peer_dual(
                &lease6(key, "0.0.0.0", pip6),
                Some(&own),
                Ipv4Addr::UNSPECIFIED,
                ip6,
            )
        };
        assert_eq!(
            check("0.0.0.0-0&fd00:10:0:1::-64", Some("fd00::2")),
            PeerVerdict::Own
        );
        // Every IPv6-only lease has PublicIP 0.0.0.0 and IPv4 part 0.0.0.0/0: neither is ours.
        assert_eq!(
            check("0.0.0.0-0&fd00:10:0:2::-64", Some("fd00::3")),
            PeerVerdict::Peer
        );
        assert_eq!(
            config.check_peer_dual(
                &lease6("0.0.0.0-0&fd00:10:0:2::-64", "0.0.0.0", Some("fd00::3")),
                None,
                Ipv4Addr::UNSPECIFIED,
                ip6
            ),
            PeerVerdict::Peer
        );
        for (key, pip6, want) in [
            (
                "10.244.2.0-24",
                None,
                "it has no IPv6 subnet and the network is IPv6-only",
            ),
            (
                "0.0.0.0-0&fd00:10:0:2::-64",
                Some("fd00::2"),
                "it claims our PublicIPv6 fd00::2",
            ),
            (
                "0.0.0.0-0&fd00:10:0:2::-64",
                Some("::1"),
                "PublicIPv6 ::1 is not a global or unique local unicast address",
            ),
            (
                "0.0.0.0-0&fd00:10::-63",
                Some("fd00::3"),
                "IPv6 subnet overlaps our own fd00:10:0:1::/64",
            ),
        ] {
            match check(key, pip6) {
                PeerVerdict::Skip(r) => assert_eq!(r.to_string(), want, "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn backend_reasons_display_as_before() {
        let mac: MacAddr = "0e:00:00:00:00:01".parse().unwrap();
        let peer: SubnetKey = "10.244.2.0-24".parse().unwrap();
        for (reason, want) in [
            (
                SkipReason::VtepMacInUse { mac, peer },
                "VtepMAC 0e:00:00:00:00:01 is already used by peer 10.244.2.0-24",
            ),
            (
                SkipReason::PublicIpInUse {
                    ip: "10.0.0.3".parse().unwrap(),
                    peer,
                },
                "PublicIP 10.0.0.3 is already used by peer 10.244.2.0-24",
            ),
            (
                SkipReason::NotOnSegment {
                    public_ip: "10.1.0.3".parse().unwrap(),
                    underlay: "eth0".into(),
                    connected: vec!["10.0.0.2/24".parse().unwrap(), "10.0.1.2/24".parse().unwrap()],
                },
                "PublicIP 10.1.0.3 is not on our L2 segment (eth0 has 10.0.0.2/24, 10.0.1.2/24)",
            ),
            (
                SkipReason::PublicIpChanged {
                    from: "10.0.0.3".parse().unwrap(),
                    to: "10.0.0.4".parse().unwrap(),
                },
                "PublicIP changed in place from 10.0.0.3 to 10.0.0.4: kept 10.0.0.3 until the lease is given up",
            ),
            (
                SkipReason::OtherBackendType {
                    found: "y".into(),
                    ours: "x".into(),
                },
                r#"BackendType "y" is not "x""#,
            ),
            (
                SkipReason::Backend {
                    backend: "wireguard",
                    reason: "empty key".into(),
                },
                "empty key",
            ),
        ] {
            assert_eq!(reason.to_string(), want);
        }
    }
}
