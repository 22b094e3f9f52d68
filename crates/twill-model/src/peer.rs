//! Whether a lease can be a peer of this host, and why not: one rule, called
//! by the lease core (which leases make the peer set) and by every backend
//! (which never programs a lease an embedder hands it directly unchecked).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

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
    /// A reason of a backend outside these crates (a bad WireGuard key...).
    #[error("{reason}")]
    Backend {
        /// The backend's `Backend.Type`.
        backend: &'static str,
        /// What is wrong with the lease, for this backend.
        reason: String,
    },
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
    #[must_use]
    pub fn check_peer(
        &self,
        lease: &SubnetLease,
        own: Option<&SubnetKey>,
        public_ip: Ipv4Addr,
    ) -> PeerVerdict {
        if own.is_some_and(|k| k.ipv4 == lease.key.ipv4) {
            return PeerVerdict::Own;
        }
        let subnet = lease.key.ipv4;
        if self.check_subnet(&lease.key).is_err() {
            return PeerVerdict::Skip(SkipReason::OutsideNetwork {
                subnet,
                network: self.network,
            });
        }
        let ip = lease.attrs.public_ip;
        if ip == public_ip {
            return PeerVerdict::Skip(SkipReason::ClaimsOurPublicIp(ip));
        }
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return PeerVerdict::Skip(SkipReason::PublicIpNotUnicast(ip));
        }
        if let Some(k) = own {
            if k.ipv4.contains(subnet.network()) || subnet.contains(k.ipv4.network()) {
                return PeerVerdict::Skip(SkipReason::OverlapsOwnSubnet(k.ipv4));
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
