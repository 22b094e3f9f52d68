//! Peer validation shared by the backends.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use twill_model::{NetworkConfig, PeerVerdict, SkipReason, SubnetKey, SubnetLease};

use crate::incremental::Claims;

/// The checks on a peer lease common to all backends: the host-level rules
/// the lease core applies too ([`NetworkConfig::check_peer`], so a lease an
/// embedder hands a backend directly is held to them), then our
/// `BackendType`. `Ok(false)`: it is our own lease (ignored silently).
pub(crate) fn check_common(
    peer: &SubnetLease,
    own: Option<&SubnetKey>,
    our_ip: Ipv4Addr,
    config: &NetworkConfig,
    backend_type: &str,
) -> Result<bool, SkipReason> {
    match config.check_peer(peer, own, our_ip) {
        PeerVerdict::Own => return Ok(false),
        PeerVerdict::Skip(reason) => return Err(reason),
        PeerVerdict::Peer => {}
    }
    if peer.attrs.backend_type != backend_type {
        return Err(SkipReason::OtherBackendType {
            found: peer.attrs.backend_type.clone(),
            ours: backend_type.to_string(),
        });
    }
    Ok(true)
}

/// Whether `ip` is on one of the `connected` prefixes (our L2 segment).
pub(crate) fn on_segment(connected: &[Ipv4Network], ip: Ipv4Addr) -> bool {
    connected.iter().any(|n| n.prefix() < 32 && n.contains(ip))
}

/// Peer subnets accepted so far by [`dedupe`] ([`dedupe6`] for IPv6):
/// disjoint ranges of the address as an integer (`u32`, `u128`), keyed by
/// their first address (first → (last, key)), so a check is O(log n), not a
/// scan of every accepted peer (10,000 peers: 50 M overlap tests per reconcile).
#[derive(Debug)]
pub(crate) struct Claimed<T = u32>(BTreeMap<T, (T, SubnetKey)>);

// Not derived: a derive would ask `T: Default`.
impl<T> Default for Claimed<T> {
    fn default() -> Self {
        Claimed(BTreeMap::new())
    }
}

impl<T: Ord + Copy> Claimed<T> {
    /// Claims `[first, last]` for `key`, unless a claimed range overlaps it.
    pub(crate) fn claim(&mut self, first: T, last: T, key: SubnetKey) -> Result<(), SkipReason> {
        // The claimed ranges are disjoint, so an overlapping one either
        // starts at or before `first` and reaches it, or starts inside
        // [first, last].
        let before = self
            .0
            .range(..=first)
            .next_back()
            .filter(|(_, (end, _))| *end >= first);
        let inside = || self.0.range(first..=last).next();
        if let Some((_, (_, k))) = before.or_else(inside) {
            return Err(SkipReason::OverlapsPeer(*k));
        }
        self.0.insert(first, (last, key));
        Ok(())
    }

    /// The key holding the range that starts at `first`.
    pub(crate) fn holder(&self, first: T) -> Option<SubnetKey> {
        self.0.get(&first).map(|(_, k)| *k)
    }

    /// Gives back the range starting at `first`, if `key` holds it.
    pub(crate) fn release(&mut self, first: T, key: &SubnetKey) {
        if self.0.get(&first).is_some_and(|(_, k)| k == key) {
            self.0.remove(&first);
        }
    }
}

/// The order in which peers claim their subnets (see [`dedupe`]): leases of
/// the configured `SubnetLen` first (two of them can only overlap if they
/// are the same key, and flannel only allocates that size), then older
/// leases (lower store revision) before newer ones, then by key. So a lease
/// written later with a covering prefix (e.g. a /23 over a peer's /24) is
/// the one skipped, never the peer it overlaps.
pub(crate) fn claim_order<'a>(
    peers: impl IntoIterator<Item = &'a SubnetLease>,
    config: &NetworkConfig,
) -> Vec<&'a SubnetLease> {
    let rank = claim_rank(config);
    let mut sorted: Vec<&SubnetLease> = peers.into_iter().collect();
    sorted.sort_by_key(|p| (rank(p), p.key));
    sorted
}

/// [`claim_order`] for the IPv6 pass: IPv6 subnets claim in the same way,
/// by their own prefix length ([`claim_rank6`]).
pub(crate) fn claim_order6<'a>(
    peers: impl IntoIterator<Item = &'a SubnetLease>,
    config: &NetworkConfig,
) -> Vec<&'a SubnetLease> {
    let rank = claim_rank6(config);
    let mut sorted: Vec<&SubnetLease> = peers.into_iter().collect();
    sorted.sort_by_key(|p| (rank(p), p.key));
    sorted
}

/// A lease's place in [`claim_order`], before its key: what an
/// incremental pass sorts its changed leases by.
pub(crate) fn claim_rank(config: &NetworkConfig) -> impl Fn(&SubnetLease) -> (bool, i64) + '_ {
    |p| (p.key.ipv4.prefix() != config.subnet_len, p.revision)
}

/// A lease's place in [`claim_order6`], before its key.
pub(crate) fn claim_rank6(config: &NetworkConfig) -> impl Fn(&SubnetLease) -> (bool, i64) + '_ {
    |p| {
        (
            p.key.ipv6.map(|n| n.prefix()) != Some(config.ipv6_subnet_len),
            p.revision,
        )
    }
}

/// The claim key of a peer's IPv4 subnet in [`Claimed`]: its first address.
pub(crate) fn claim_of(key: &SubnetKey) -> Option<u32> {
    Some(range(key.ipv4).0)
}

/// The claim key of a peer's IPv6 subnet, when it has one.
pub(crate) fn claim_of6(key: &SubnetKey) -> Option<u128> {
    key.ipv6.map(|n| range6(n).0)
}

/// A subnet as a claim range of [`Claimed`]: its first and last address.
/// The first in [`claim_order`] keeps a range; a peer overlapping it is
/// skipped and reported, so two leases never fight over one route.
pub(crate) fn range(subnet: Ipv4Network) -> (u32, u32) {
    (subnet.network().into(), subnet.broadcast().into())
}

/// [`range`] for an IPv6 subnet.
pub(crate) fn range6(subnet: Ipv6Network) -> (u128, u128) {
    (subnet.network().into(), subnet.broadcast().into())
}

/// The IPv6 half of a peer that passed [`check_common`]: `Ok(None)` when it
/// has no IPv6 subnet (an IPv4-only lease in a dual-stack network is
/// programmed on its IPv4 side only), else its IPv6 subnet and `PublicIPv6`.
///
/// [`check_common`] has already applied the model's IPv6 rules
/// ([`NetworkConfig::check_peer_dual`]: the subnet inside `IPv6Network` and
/// apart from ours, a usable `PublicIPv6`), skipping the whole peer when
/// one fails. What it cannot know is our own `PublicIPv6`: a peer claiming
/// it has its IPv6 half skipped here (as [`SkipReason::Malformed`]).
pub(crate) fn check_ipv6(
    peer: &SubnetLease,
    our_public_ipv6: Ipv6Addr,
) -> Result<Option<(Ipv6Network, Ipv6Addr)>, SkipReason> {
    let (Some(subnet), Some(public)) = (peer.key.ipv6, peer.attrs.public_ipv6) else {
        return Ok(None);
    };
    if public == our_public_ipv6 {
        return Err(SkipReason::Malformed {
            reason: format!("it claims our PublicIPv6 {public}"),
        });
    }
    Ok(Some((subnet, public)))
}

/// What [`select_peers`] needs to know about this host.
#[derive(Debug, Clone, Copy)]
pub struct PeerContext<'a> {
    /// The network config (`Network`: peers outside it are skipped).
    pub config: &'a NetworkConfig,
    /// Our own lease, once known: ignored among the peers, and peers
    /// overlapping it are skipped.
    pub own: Option<SubnetKey>,
    /// Our `PublicIP`: a peer claiming it is skipped.
    pub public_ip: Ipv4Addr,
    /// Our `BackendType`: peers of another type are skipped.
    pub backend_type: &'a str,
}

/// The result of [`select_peers`].
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSelection<'a, T> {
    /// Peers to program, sorted by subnet, each with what the backend
    /// parsed from its lease.
    pub accepted: Vec<(&'a SubnetLease, T)>,
    /// Peers not to program, with the reason (for
    /// [`crate::ReconcileReport::skipped`]).
    pub skipped: Vec<(SubnetKey, SkipReason)>,
}

/// The checks every backend makes on peer leases, for backends outside this
/// crate: sorts by subnet, ignores our own lease, skips (with a reason)
/// leases with our `PublicIP` or a non-unicast one, a subnet outside
/// `Network` or overlapping ours, another `BackendType`, then whatever
/// `parse` rejects (e.g. a bad key in `BackendData`), then subnets
/// overlapping an earlier accepted peer. The same rules as the built-in
/// backends, in the same order, so a bad lease never claims a subnet.
///
/// ```
/// use twill_backend::{select_peers, PeerContext, SkipReason};
/// use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetLease};
/// let config = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"mine"}}"#).unwrap();
/// let lease = |key: &str, ip: &str, data: &str| SubnetLease {
///     key: key.parse().unwrap(),
///     attrs: LeaseAttrs { backend_data: Some(serde_json::json!({ "K": data }).into()),
///                         ..LeaseAttrs::new(ip.parse().unwrap(), "mine") },
///     kind: LeaseKind::Expiring, revision: 0,
/// };
/// let peers = [lease("10.244.2.0-24", "10.0.0.3", "ok"), lease("10.244.3.0-24", "10.0.0.4", "")];
/// let cx = PeerContext { config: &config, own: Some("10.244.1.0-24".parse().unwrap()),
///                        public_ip: "10.0.0.2".parse().unwrap(), backend_type: "mine" };
/// let peers: Vec<&SubnetLease> = peers.iter().collect();
/// let sel = select_peers(&peers, &cx, |p| {
///     let k = p.attrs.backend_data.as_ref().and_then(|d| d.to_value()["K"].as_str().map(str::to_owned)).unwrap_or_default();
///     if k.is_empty() {
///         Err(SkipReason::Backend { backend: "mine", reason: "empty K".into() })
///     } else {
///         Ok(k.to_string())
///     }
/// });
/// assert_eq!(sel.accepted.len(), 1);
/// assert_eq!(sel.accepted[0].1, "ok");
/// assert_eq!(sel.skipped[0].1.to_string(), "empty K");
/// ```
pub fn select_peers<'a, T>(
    peers: &[&'a SubnetLease],
    cx: &PeerContext<'_>,
    mut parse: impl FnMut(&SubnetLease) -> Result<T, SkipReason>,
) -> PeerSelection<'a, T> {
    let sorted = claim_order(peers.iter().copied(), cx.config);
    let mut selection = PeerSelection {
        accepted: Vec::new(),
        skipped: Vec::new(),
    };
    let mut claims = Claims::<u32>::default();
    for peer in sorted {
        let verdict = check_common(
            peer,
            cx.own.as_ref(),
            cx.public_ip,
            cx.config,
            cx.backend_type,
        )
        .and_then(|is_peer| {
            if !is_peer {
                return Ok(None);
            }
            let data = parse(peer)?;
            claims.claim(peer.key, range(peer.key.ipv4), peer.attrs.public_ip, None)?;
            Ok(Some(data))
        });
        match verdict {
            Ok(Some(data)) => selection.accepted.push((peer, data)),
            Ok(None) => {}
            Err(reason) => selection.skipped.push((peer.key, reason)),
        }
    }
    selection.accepted.sort_by_key(|(p, _)| p.key);
    selection
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_model::{LeaseAttrs, LeaseKind};

    fn lease(key: &str, ip: &str, ty: &str) -> SubnetLease {
        SubnetLease {
            key: key.parse().unwrap(),
            attrs: LeaseAttrs::new(ip.parse().unwrap(), ty),
            kind: LeaseKind::Expiring,
            revision: 0,
        }
    }

    #[test]
    fn dedupe_rejects_any_overlap_with_an_accepted_subnet() {
        let mut c = Claimed::default();
        let k = |s: &str| s.parse::<SubnetKey>().unwrap();
        let dedupe = |c: &mut Claimed, key: SubnetKey| {
            let (first, last) = range(key.ipv4);
            c.claim(first, last, key)
        };
        assert!(dedupe(&mut c, k("10.244.2.0-24")).is_ok());
        assert!(dedupe(&mut c, k("10.244.4.0-24")).is_ok());
        assert!(dedupe(&mut c, k("10.244.3.0-24")).is_ok());
        // Same, inside, containing, and reaching into an accepted subnet.
        for bad in [
            "10.244.2.0-24",
            "10.244.2.128-25",
            "10.244.0.0-16",
            "10.244.4.0-23",
        ] {
            let e = dedupe(&mut c, k(bad)).unwrap_err();
            assert!(matches!(e, SkipReason::OverlapsPeer(_)), "{bad}: {e}");
        }
        assert!(dedupe(&mut c, k("10.244.5.0-24")).is_ok());
        assert!(dedupe(&mut c, k("10.244.1.255-32")).is_ok());
        assert!(dedupe(&mut c, k("10.244.0.0-24")).is_ok());
    }

    #[test]
    fn a_second_lease_with_a_peers_public_ip_is_skipped_whatever_the_order() {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"x"}}"#).unwrap();
        let cx = PeerContext {
            config: &config,
            own: None,
            public_ip: "10.0.0.2".parse().unwrap(),
            backend_type: "x",
        };
        // The live host's lease (older) and a later one on a free subnet
        // naming its address: the later one is skipped, in either order.
        let live = SubnetLease {
            revision: 7,
            ..lease("10.244.9.0-24", "10.0.0.3", "x")
        };
        let hostile = SubnetLease {
            revision: 9,
            ..lease("10.244.1.0-24", "10.0.0.3", "x")
        };
        let other = SubnetLease {
            revision: 8,
            ..lease("10.244.2.0-24", "10.0.0.4", "x")
        };
        for peers in [[&live, &hostile, &other], [&hostile, &other, &live]] {
            let sel = select_peers(&peers, &cx, |_| Ok(()));
            let accepted: Vec<String> = sel
                .accepted
                .iter()
                .map(|(p, _)| p.key.to_string())
                .collect();
            assert_eq!(accepted, ["10.244.2.0-24", "10.244.9.0-24"]);
            assert_eq!(
                sel.skipped,
                [(
                    hostile.key,
                    SkipReason::PublicIpInUse {
                        ip: "10.0.0.3".parse().unwrap(),
                        peer: live.key
                    }
                )]
            );
        }
    }

    #[test]
    fn a_covering_lease_never_displaces_the_peer_it_overlaps() {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"x"}}"#).unwrap();
        let cx = PeerContext {
            config: &config,
            own: None,
            public_ip: "10.0.0.2".parse().unwrap(),
            backend_type: "x",
        };
        let at = |key: &str, ip: &str, revision: i64| SubnetLease {
            revision,
            ..lease(key, ip, "x")
        };
        // A /23 sorts before the /24 it covers, and may even be older: the
        // lease of SubnetLen wins.
        for covering_revision in [5, 50] {
            let peers = [
                at("10.244.3.0-24", "10.0.0.3", 10),
                at("10.244.2.0-23", "10.0.0.66", covering_revision),
            ];
            let sel = select_peers(&peers.iter().collect::<Vec<_>>(), &cx, |_| Ok(()));
            assert_eq!(sel.accepted.len(), 1);
            assert_eq!(sel.accepted[0].0.key.to_string(), "10.244.3.0-24");
            assert_eq!(sel.skipped[0].0.to_string(), "10.244.2.0-23");
        }
        // Among other lengths, the older lease wins.
        let peers = [
            at("10.244.8.0-25", "10.0.0.8", 7),
            at("10.244.8.0-23", "10.0.0.9", 3),
        ];
        let sel = select_peers(&peers.iter().collect::<Vec<_>>(), &cx, |_| Ok(()));
        assert_eq!(sel.accepted[0].0.key.to_string(), "10.244.8.0-23");
    }

    #[test]
    fn select_peers_applies_common_rules_then_parse_then_overlap() {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"x"}}"#).unwrap();
        let cx = PeerContext {
            config: &config,
            own: Some("10.244.1.0-24".parse().unwrap()),
            public_ip: "10.0.0.2".parse().unwrap(),
            backend_type: "x",
        };
        let peers = [
            lease("10.244.9.0-24", "10.0.0.9", "x"),  // parse rejects
            lease("10.244.1.0-24", "10.0.0.2", "x"),  // our own: silent
            lease("10.244.3.0-24", "10.0.0.2", "x"),  // our PublicIP
            lease("10.245.0.0-24", "10.0.0.5", "x"),  // outside Network
            lease("10.244.4.0-24", "10.0.0.6", "y"),  // other type
            lease("10.244.2.0-24", "10.0.0.3", "x"),  // ok
            lease("10.244.2.0-25", "10.0.0.4", "x"),  // overlaps 10.244.2.0/24
            lease("10.244.8.0-24", "224.0.0.1", "x"), // multicast
        ];
        let sel = select_peers(&peers.iter().collect::<Vec<_>>(), &cx, |p| {
            if p.attrs.public_ip.octets()[3] == 9 {
                Err(SkipReason::BadBackendData {
                    reason: "bad data".into(),
                })
            } else {
                Ok(p.attrs.public_ip)
            }
        });
        let accepted: Vec<String> = sel
            .accepted
            .iter()
            .map(|(p, _)| p.key.to_string())
            .collect();
        assert_eq!(accepted, ["10.244.2.0-24"]);
        let reasons: Vec<(String, SkipReason)> = sel
            .skipped
            .iter()
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        let reason = |k: &str| reasons.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert!(matches!(
            reason("10.244.9.0-24"),
            SkipReason::BadBackendData { .. }
        ));
        assert!(matches!(
            reason("10.244.3.0-24"),
            SkipReason::ClaimsOurPublicIp(_)
        ));
        assert!(matches!(
            reason("10.244.4.0-24"),
            SkipReason::OtherBackendType { .. }
        ));
        assert_eq!(
            reason("10.244.2.0-25"),
            SkipReason::OverlapsPeer("10.244.2.0-24".parse().unwrap())
        );
        assert!(matches!(
            reason("10.244.8.0-24"),
            SkipReason::PublicIpNotUnicast(_)
        ));
        assert!(matches!(
            reason("10.245.0.0-24"),
            SkipReason::OutsideNetwork { .. }
        ));
    }
}
