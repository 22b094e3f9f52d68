//! The IPv6 twin of [`mod@crate::plan`]: `plan6(desired, observed, owner) -> Vec<Op6>`
//! for the IPv6 half of a dual-stack overlay (flannel's `flannel-v6.<VNI>`
//! device and its IPv6 routes).
//!
//! No IO. Rule for rule the IPv4 plan (same keys, same ownership, same
//! order, same model of the kernel in [`simulate6`]) over the IPv6 netlink
//! types: NDP neighbours instead of ARP, FDB entries whose remote is an IPv6
//! underlay address, IPv6 routes. Kept as a separate pass so an IPv4-only
//! network plans, dumps and sends exactly what it did before; the property
//! test below checks the same guarantees as the IPv4 one. An [`Owner`] for
//! this pass names the IPv6 device.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;

use twill_netlink::{FdbEntry6, MacAddr, Neighbour6, NetlinkError, Request, Route6};

use crate::plan::Owner;

/// What the kernel should hold for the IPv6 half of the current peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneState6 {
    /// Permanent NDP entries.
    pub neighbours: Vec<Neighbour6>,
    /// FDB entries (`self`, with an IPv6 `dst`). The kernel holds one `dst`
    /// per unicast MAC on a device (more only for the all-zeros and
    /// multicast MACs used for flooding), and [`plan6`] programs them that way.
    pub fdb: Vec<FdbEntry6>,
    /// IPv6 routes.
    pub routes: Vec<Route6>,
}

impl Owner {
    /// Whether an IPv6 neighbour entry is ours.
    #[must_use]
    pub fn owns_neighbour6(&self, n: &Neighbour6) -> bool {
        self.device == Some(n.index) && n.permanent
    }

    /// Whether an FDB entry with an IPv6 remote is ours.
    #[must_use]
    pub fn owns_fdb6(&self, e: &FdbEntry6) -> bool {
        self.device == Some(e.index) && e.dst.is_some()
    }

    /// Whether an IPv6 route is ours.
    #[must_use]
    pub fn owns_route6(&self, r: &Route6) -> bool {
        r.protocol == self.protocol
            && r.table == self.table
            && r.oif.is_some_and(|o| self.route_oifs.contains(&o))
    }

    /// [`Owner::adopts_route`] for IPv6: whether `observed`, a route we did not create, is exactly `desired`
    /// but for its protocol: flanneld's own route for the same lease (same
    /// destination, gateway, device, onlink flag and table). Taking it over
    /// changes no forwarding and lets twilld replace flanneld in place; any
    /// other foreign route is left alone.
    #[must_use]
    pub fn adopts_route6(&self, observed: &Route6, desired: &Route6) -> bool {
        !self.owns_route6(observed)
            && Route6 {
                protocol: desired.protocol,
                ..*observed
            } == *desired
    }
}

/// One change to the kernel's IPv6 state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op6 {
    /// Add or replace a permanent NDP entry.
    ReplaceNeighbour(Neighbour6),
    /// Remove an NDP entry.
    DeleteNeighbour(Neighbour6),
    /// Add a `dst` to an all-zeros or multicast (flooding) FDB entry, which
    /// may hold several (`bridge fdb append`). Never planned for a unicast
    /// MAC: the kernel answers success to appending a second `dst` to one and
    /// changes nothing.
    AppendFdb(FdbEntry6),
    /// Add or move the one FDB entry of a unicast MAC (`bridge fdb replace`).
    ReplaceFdb(FdbEntry6),
    /// Remove an FDB entry.
    DeleteFdb(FdbEntry6),
    /// Add or replace a route.
    ReplaceRoute(Route6),
    /// Remove a route.
    DeleteRoute(Route6),
}

impl Op6 {
    /// The netlink request carrying this op out.
    #[must_use]
    pub fn to_request(&self) -> Request {
        match *self {
            Op6::ReplaceNeighbour(n) => Request::NeighbourReplace6(n),
            Op6::DeleteNeighbour(n) => Request::NeighbourDelete6(n),
            Op6::AppendFdb(e) => Request::FdbAppend6(e),
            Op6::ReplaceFdb(e) => Request::FdbReplace6(e),
            Op6::DeleteFdb(e) => Request::FdbDelete6(e),
            Op6::ReplaceRoute(r) => Request::RouteReplace6(r),
            Op6::DeleteRoute(r) => Request::RouteDelete6(r),
        }
    }

    /// Whether this op removes something.
    #[must_use]
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op6::DeleteNeighbour(_) | Op6::DeleteFdb(_) | Op6::DeleteRoute(_)
        )
    }

    /// Whether the kernel refusing this op with `err` still leaves the
    /// kernel as the op wanted it: only a delete whose target is already
    /// gone ([`NetlinkError::is_not_found`]: `ENOENT`/`ESRCH`, or `ENODEV`
    /// when its device went with it).
    ///
    /// Every other refusal is a failure, per op kind:
    /// - a replace or append answering not-found means its device, gateway
    ///   or table is missing: nothing was programmed;
    /// - `EEXIST` is never "already there": no op asks for exclusive
    ///   creation (`NLM_F_EXCL`), so the kernel answers success to a replace
    ///   or append of what it already holds (`ip neigh replace`, `ip route
    ///   replace`, `bridge fdb replace/append` all do), and an `EEXIST`
    ///   means a conflicting object refused the op.
    #[must_use]
    pub fn is_done_despite(&self, err: &NetlinkError) -> bool {
        self.is_delete() && err.is_not_found()
    }
}

type NeighKey6 = (u32, std::net::Ipv6Addr);
/// `(device, MAC, dst)`; `dst` is `None` for unicast MACs, which the kernel
/// holds once per device whatever their `dst` (see [`fdb_key6`]).
type FdbKey6 = (u32, MacAddr, Option<std::net::Ipv6Addr>);
type RouteKey6 = (u32, ipnetwork::Ipv6Network);

/// The identity the kernel gives an FDB entry on a VXLAN device: a unicast
/// MAC has one entry with one `dst` (appending another is acknowledged and
/// ignored; replacing moves it), the all-zeros and multicast MACs have one
/// `dst` per remote (flooding to each).
fn fdb_key6(e: &FdbEntry6) -> FdbKey6 {
    if e.mac.is_unicast() {
        (e.index, e.mac, None)
    } else {
        (e.index, e.mac, e.dst)
    }
}

/// Compares `desired` with `observed` and returns the ops that make the
/// kernel match, in a safe order (adds and replaces, then deletes).
///
/// Guarantees (property-tested against a model of the kernel,
/// [`simulate6`]): observed entries that `owner` does not own are never the
/// subject of an op (but for the one FDB entry of a unicast MAC we need,
/// which must point where we want, as a foreign ARP entry at a peer's
/// address is replaced); applying the ops and planning again yields no ops;
/// desired entries that already exist identically yield no op.
/// Desired entries are normalised (permanent, our protocol is whatever the
/// caller set); duplicates in `desired` collapse, the last one winning, and
/// so do desired FDB entries of one unicast MAC with different `dst`s (the
/// kernel can hold only one: callers skip such peers first, as the vxlan
/// backend does).
#[must_use]
pub fn plan6(desired: &DataplaneState6, observed: &DataplaneState6, owner: &Owner) -> Vec<Op6> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();

    // Neighbours, keyed by (device, ip).
    let want: BTreeMap<NeighKey6, Neighbour6> = desired
        .neighbours
        .iter()
        .map(|n| {
            (
                (n.index, n.ip),
                Neighbour6 {
                    permanent: true,
                    ..*n
                },
            )
        })
        .collect();
    let have: BTreeMap<NeighKey6, &Neighbour6> = observed
        .neighbours
        .iter()
        .filter(|n| n.index == owner.device.unwrap_or(u32::MAX))
        .map(|n| ((n.index, n.ip), n))
        .collect();
    for (k, n) in &want {
        match have.get(k) {
            Some(h) if h.mac == n.mac && h.permanent => {}
            // A foreign (non-permanent, kernel-made) entry at our address is
            // replaced: ours must win for the overlay to work.
            _ => adds.push(Op6::ReplaceNeighbour(*n)),
        }
    }
    for (k, h) in &have {
        if !want.contains_key(k) && owner.owns_neighbour6(h) {
            dels.push(Op6::DeleteNeighbour(**h));
        }
    }

    // FDB, keyed as the kernel keys it (`fdb_key6`). Comparing by (device,
    // mac, dst) and appending, as before, planned an append the kernel
    // ignores whenever a unicast MAC already had another dst: the op was
    // "applied" on every pass forever, and a moved dst was deleted instead.
    let want: BTreeMap<FdbKey6, FdbEntry6> = desired
        .fdb
        .iter()
        .map(|e| {
            (
                fdb_key6(e),
                FdbEntry6 {
                    permanent: true,
                    ..*e
                },
            )
        })
        .collect();
    // Every entry on our device, also foreign ones: the kernel's one entry of
    // a unicast MAC we need is replaced whoever made it.
    let mut have: BTreeMap<FdbKey6, Vec<&FdbEntry6>> = BTreeMap::new();
    for e in observed
        .fdb
        .iter()
        .filter(|e| owner.device == Some(e.index))
    {
        have.entry(fdb_key6(e)).or_default().push(e);
    }
    for (k, e) in &want {
        let observed_here = have.get(k).map(Vec::as_slice).unwrap_or_default();
        if !observed_here.iter().any(|h| **h == *e) {
            adds.push(if e.mac.is_unicast() {
                Op6::ReplaceFdb(*e)
            } else {
                // Also makes an existing non-permanent entry permanent.
                Op6::AppendFdb(*e)
            });
        }
    }
    for (k, es) in &have {
        for e in es.iter().filter(|e| owner.owns_fdb6(e)) {
            match want.get(k) {
                Some(w) if w.dst == e.dst => {}
                // Moved in place by the ReplaceFdb above.
                Some(_) if es.len() == 1 => {}
                _ => dels.push(Op6::DeleteFdb(**e)),
            }
        }
    }

    // Routes, keyed by (table, dst).
    let want: BTreeMap<RouteKey6, Route6> = desired
        .routes
        .iter()
        .map(|r| ((r.table, r.dst), *r))
        .collect();
    let mut have: BTreeMap<RouteKey6, Vec<&Route6>> = BTreeMap::new();
    for r in &observed.routes {
        have.entry((r.table, r.dst)).or_default().push(r);
    }
    for (k, r) in &want {
        let observed_here = have.get(k).map(Vec::as_slice).unwrap_or_default();
        let present = observed_here.contains(&r);
        // Never replace someone else's route: that destination is reported
        // by `route_conflicts6` instead.
        let foreign = observed_here
            .iter()
            .any(|h| !owner.owns_route6(h) && !owner.adopts_route6(h, r));
        if !present && !foreign {
            adds.push(Op6::ReplaceRoute(*r));
        }
    }
    for (k, rs) in &have {
        for r in rs {
            if !owner.owns_route6(r) {
                continue;
            }
            match want.get(k) {
                Some(w) if w == *r => {}
                // Replaced in place by the ReplaceRoute above (same table/dst).
                Some(_) if rs.len() == 1 => {}
                _ => dels.push(Op6::DeleteRoute(**r)),
            }
        }
    }

    adds.extend(dels);
    adds
}

/// Desired routes that [`plan6`] will not program because a route we do not
/// own already holds the same destination in the same table.
#[must_use]
pub fn route_conflicts6(
    desired: &DataplaneState6,
    observed: &DataplaneState6,
    owner: &Owner,
) -> Vec<Route6> {
    // A set, not a scan per desired route: O(n log n) at 10,000 peers
    // instead of 100 M comparisons per reconcile.
    let mut foreign: BTreeMap<(u32, ipnetwork::Ipv6Network), Vec<&Route6>> = BTreeMap::new();
    for h in observed.routes.iter().filter(|h| !owner.owns_route6(h)) {
        foreign.entry((h.table, h.dst)).or_default().push(h);
    }
    desired
        .routes
        .iter()
        .filter(|r| {
            foreign
                .get(&(r.table, r.dst))
                .is_some_and(|hs| hs.iter().any(|h| !owner.adopts_route6(h, r)))
        })
        .copied()
        .collect()
}

/// Applies `ops` to a model of the kernel (for tests): what the kernel
/// would hold afterwards, given it held `state`.
#[must_use]
pub fn simulate6(state: &DataplaneState6, ops: &[Op6]) -> DataplaneState6 {
    let mut s = state.clone();
    for op in ops {
        match *op {
            Op6::ReplaceNeighbour(n) => {
                s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip));
                s.neighbours.push(n);
            }
            Op6::DeleteNeighbour(n) => s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip)),
            // As vxlan_fdb_update() does: the state belongs to the entry of
            // (device, MAC), shared by its dsts; appending adds a dst only to
            // the all-zeros and multicast MACs, and is acknowledged but
            // otherwise ignored for a unicast MAC that already has one.
            Op6::AppendFdb(e) => {
                let mut exists = false;
                for x in s
                    .fdb
                    .iter_mut()
                    .filter(|x| (x.index, x.mac) == (e.index, e.mac))
                {
                    x.permanent = e.permanent;
                    exists = true;
                }
                let append = !e.mac.is_unicast()
                    && !s
                        .fdb
                        .iter()
                        .any(|x| (x.index, x.mac, x.dst) == (e.index, e.mac, e.dst));
                if !exists || append {
                    s.fdb.push(e);
                }
            }
            // Replacing moves the (first) dst of a unicast MAC; the kernel
            // refuses it for the others (EOPNOTSUPP).
            Op6::ReplaceFdb(e) if e.mac.is_unicast() => {
                match s
                    .fdb
                    .iter_mut()
                    .find(|x| (x.index, x.mac) == (e.index, e.mac))
                {
                    Some(x) => *x = e,
                    None => s.fdb.push(e),
                }
            }
            Op6::ReplaceFdb(_) => {}
            Op6::DeleteFdb(e) => s.fdb.retain(|x| {
                (x.index, x.mac) != (e.index, e.mac) || e.dst.is_some_and(|d| x.dst != Some(d))
            }),
            Op6::ReplaceRoute(r) => {
                // NLM_F_REPLACE replaces the first route with the same table/dst.
                if let Some(x) = s
                    .routes
                    .iter_mut()
                    .find(|x| (x.table, x.dst) == (r.table, r.dst))
                {
                    *x = r;
                } else {
                    s.routes.push(r);
                }
            }
            Op6::DeleteRoute(r) => {
                if let Some(pos) = s.routes.iter().position(|x| *x == r) {
                    s.routes.remove(pos);
                }
            }
        }
    }
    s
}

/// What flannel programs on `flannel-v6.<VNI>` (`dev`) for a peer's IPv6
/// `subnet` with IPv6 VTEP MAC `mac` at `public` (its `PublicIPv6`): the
/// subnet's first address as the peer's gateway, its NDP entry to the MAC,
/// the MAC's FDB entry to the underlay address, the onlink route.
#[must_use]
pub fn vxlan_peer6(
    dev: u32,
    subnet: Ipv6Network,
    mac: MacAddr,
    public: Ipv6Addr,
) -> (Neighbour6, FdbEntry6, Route6) {
    let gw = subnet.network();
    (
        Neighbour6::permanent(dev, gw, mac),
        FdbEntry6::permanent(dev, mac, public),
        Route6::new(subnet).via(gw).dev(dev).onlink(),
    )
}

/// What host-gw programs for a peer's IPv6 `subnet` at `public` (its
/// `PublicIPv6`) through the underlay device `underlay`: flannel's IPv6
/// route `ip -6 route replace <subnet> via <PublicIPv6> dev <underlay>`.
#[must_use]
pub fn hostgw_peer6(subnet: Ipv6Network, public: Ipv6Addr, underlay: u32) -> Route6 {
    Route6::new(subnet).via(public).dev(underlay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;
    use twill_netlink::{MAIN_TABLE, TWILL_RTPROT};

    const DEV: u32 = 5;
    const ETH0: u32 = 2;
    const OTHER: u32 = 9;

    fn owner() -> Owner {
        Owner {
            device: Some(DEV),
            protocol: TWILL_RTPROT,
            table: MAIN_TABLE,
            route_oifs: vec![DEV, ETH0],
        }
    }

    /// The first address of peer `i`'s IPv6 subnet (its gateway and NDP entry).
    fn overlay(i: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd10, 0x244, u16::from(i), 0, 0, 0, 0, 0)
    }

    /// Peer `i`'s IPv6 underlay address (`PublicIPv6`).
    fn underlay(i: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))
    }

    fn mac(i: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, i])
    }

    fn peer(i: u8) -> (Neighbour6, FdbEntry6, Route6) {
        let gw = overlay(i);
        (
            Neighbour6::permanent(DEV, gw, mac(i)),
            FdbEntry6::permanent(DEV, mac(i), underlay(i)),
            Route6::new(format!("fd10:244:{i:x}::/64").parse().expect("net"))
                .via(gw)
                .dev(DEV)
                .onlink(),
        )
    }

    fn state(ids: &[u8]) -> DataplaneState6 {
        let mut s = DataplaneState6::default();
        for &i in ids {
            let (n, f, r) = peer(i);
            s.neighbours.push(n);
            s.fdb.push(f);
            s.routes.push(r);
        }
        s
    }

    #[test]
    fn empty_kernel_gets_three_ops_per_peer() {
        let ops = plan6(&state(&[1, 2]), &DataplaneState6::default(), &owner());
        assert_eq!(ops.len(), 6);
        assert!(ops.iter().all(|o| !o.is_delete()));
    }

    #[test]
    fn matching_kernel_plans_nothing() {
        assert!(plan6(&state(&[1, 2, 3]), &state(&[1, 2, 3]), &owner()).is_empty());
    }

    #[test]
    fn stale_peer_is_removed_and_foreign_entries_kept() {
        let mut observed = state(&[1, 2]);
        let foreign_route = Route6::new("fd10:244:7::/64".parse().expect("net"))
            .via(underlay(7))
            .dev(ETH0)
            .protocol(4);
        let other_dev = Neighbour6::permanent(OTHER, "fd99::4".parse().expect("ip"), mac(9));
        let dynamic = Neighbour6 {
            permanent: false,
            ..Neighbour6::permanent(DEV, overlay(8), mac(8))
        };
        observed.routes.push(foreign_route);
        observed.neighbours.push(other_dev);
        observed.neighbours.push(dynamic);
        let ops = plan6(&state(&[1]), &observed, &owner());
        let (n2, f2, r2) = peer(2);
        assert_eq!(
            ops,
            vec![
                Op6::DeleteNeighbour(n2),
                Op6::DeleteFdb(f2),
                Op6::DeleteRoute(r2)
            ]
        );
    }

    #[test]
    fn changed_mac_replaces_neighbour_and_moves_fdb() {
        let observed = state(&[1]);
        let mut desired = state(&[1]);
        desired.neighbours[0].mac = Some(mac(99));
        desired.fdb[0].mac = mac(99);
        let ops = plan6(&desired, &observed, &owner());
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(ops[0], Op6::ReplaceNeighbour(n) if n.mac == Some(mac(99))));
        assert!(matches!(ops[1], Op6::ReplaceFdb(e) if e.mac == mac(99)));
        assert!(matches!(ops[2], Op6::DeleteFdb(e) if e.mac == mac(1)));
    }

    #[test]
    fn moved_dst_of_a_unicast_mac_is_replaced_in_place() {
        // A peer's PublicIP changed, its VtepMAC did not. Appending the new
        // dst is ignored by the kernel (the MAC has one already) and deleting
        // the old one then left no entry at all.
        let observed = state(&[1]);
        let mut desired = state(&[1]);
        desired.fdb[0].dst = Some(underlay(77));
        let ops = plan6(&desired, &observed, &owner());
        assert_eq!(ops, vec![Op6::ReplaceFdb(desired.fdb[0])]);
        let after = simulate6(&observed, &ops);
        assert_eq!(after.fdb, desired.fdb);
        assert!(plan6(&desired, &after, &owner()).is_empty());
    }

    #[test]
    fn one_unicast_mac_wanted_at_two_dsts_settles_on_one() {
        // The kernel keeps one dst per unicast MAC: planning both forever
        // (each pass "applying" an append the kernel ignores) is the bug.
        let mut desired = state(&[1, 2]);
        desired.fdb[1].mac = mac(1);
        let ops = plan6(&desired, &DataplaneState6::default(), &owner());
        let after = simulate6(&DataplaneState6::default(), &ops);
        assert_eq!(after.fdb, vec![desired.fdb[1]], "the last one wins");
        assert!(plan6(&desired, &after, &owner()).is_empty());
    }

    #[test]
    fn flooding_entries_hold_one_dst_per_remote() {
        let zero = MacAddr([0; 6]);
        let flood = |d: u8| FdbEntry6::permanent(DEV, zero, underlay(d));
        let desired = DataplaneState6 {
            fdb: vec![flood(1), flood(2)],
            ..DataplaneState6::default()
        };
        let observed = DataplaneState6 {
            fdb: vec![flood(3)],
            ..DataplaneState6::default()
        };
        let ops = plan6(&desired, &observed, &owner());
        assert_eq!(
            ops,
            vec![
                Op6::AppendFdb(flood(1)),
                Op6::AppendFdb(flood(2)),
                Op6::DeleteFdb(flood(3))
            ]
        );
        let after = simulate6(&observed, &ops);
        assert_eq!(after.fdb, desired.fdb);
        assert!(plan6(&desired, &after, &owner()).is_empty());
    }

    #[test]
    fn a_non_permanent_fdb_entry_is_made_permanent() {
        let mut observed = state(&[1]);
        observed.fdb[0].permanent = false;
        let desired = state(&[1]);
        let ops = plan6(&desired, &observed, &owner());
        assert_eq!(ops, vec![Op6::ReplaceFdb(desired.fdb[0])]);
    }

    #[test]
    fn only_deletes_count_not_found_as_done() {
        let err = |errno: i32| NetlinkError::Kernel {
            request: "x".into(),
            errno,
        };
        let (n, f, r) = peer(1);
        let adds = [
            Op6::ReplaceNeighbour(n),
            Op6::AppendFdb(f),
            Op6::ReplaceFdb(f),
            Op6::ReplaceRoute(r),
        ];
        let dels = [
            Op6::DeleteNeighbour(n),
            Op6::DeleteFdb(f),
            Op6::DeleteRoute(r),
        ];
        for errno in [linux::ENOENT, linux::ESRCH, linux::ENODEV] {
            assert!(adds.iter().all(|op| !op.is_done_despite(&err(errno))));
            assert!(dels.iter().all(|op| op.is_done_despite(&err(errno))));
        }
        for errno in [linux::EEXIST, linux::ENETUNREACH] {
            assert!(adds
                .iter()
                .chain(&dels)
                .all(|op| !op.is_done_despite(&err(errno))));
        }
    }

    /// The errnos the kernel answers (Linux values).
    mod linux {
        pub(super) const ENOENT: i32 = 2;
        pub(super) const ESRCH: i32 = 3;
        pub(super) const EEXIST: i32 = 17;
        pub(super) const ENODEV: i32 = 19;
        pub(super) const ENETUNREACH: i32 = 101;
    }

    #[test]
    fn changed_route_is_replaced_in_place_not_deleted() {
        let observed = state(&[1]);
        let mut desired = state(&[1]);
        desired.routes[0] = desired.routes[0].via(underlay(1));
        desired.routes[0].onlink = false;
        desired.routes[0].oif = Some(ETH0);
        let ops = plan6(&desired, &observed, &owner());
        assert_eq!(ops, vec![Op6::ReplaceRoute(desired.routes[0])]);
    }

    #[test]
    fn foreign_route_at_our_destination_is_not_replaced() {
        let mut observed = DataplaneState6::default();
        let (_, _, r) = peer(3);
        // Another route to the same destination (not our layout): not ours.
        let mut foreign = r.protocol(4);
        foreign.gateway = Some("fd00::9".parse().expect("ip"));
        observed.routes.push(foreign);
        let desired = state(&[3]);
        let ops = plan6(&desired, &observed, &owner());
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op6::ReplaceRoute(_) | Op6::DeleteRoute(_))));
        assert_eq!(route_conflicts6(&desired, &observed, &owner()), vec![r]);
    }

    #[test]
    fn flanneld_route_identical_but_for_protocol_is_taken_over() {
        // What flanneld leaves behind when twilld replaces it on a host.
        let mut observed = DataplaneState6::default();
        let (_, _, r) = peer(3);
        let flanneld = r.protocol(3);
        observed.routes.push(flanneld);
        let desired = state(&[3]);
        let ops = plan6(&desired, &observed, &owner());
        assert!(ops.contains(&Op6::ReplaceRoute(r)), "{ops:?}");
        assert!(route_conflicts6(&desired, &observed, &owner()).is_empty());
        let after = simulate6(&observed, &ops);
        assert!(after.routes.contains(&r) && !after.routes.contains(&flanneld));
        assert!(plan6(&desired, &after, &owner()).is_empty());
        // The same route through another gateway is someone else's: kept.
        let mut other = r.protocol(3);
        other.gateway = Some("fd00::9".parse().expect("ip"));
        let observed = DataplaneState6 {
            routes: vec![other],
            ..DataplaneState6::default()
        };
        let ops = plan6(&desired, &observed, &owner());
        assert!(!ops.iter().any(|o| matches!(o, Op6::ReplaceRoute(_))));
    }

    fn arb_route() -> impl Strategy<Value = Route6> {
        (
            0u8..12,
            prop::bool::ANY,
            prop_oneof![Just(DEV), Just(ETH0), Just(OTHER)],
            prop_oneof![Just(TWILL_RTPROT), Just(4u8), Just(3u8)],
            prop_oneof![Just(MAIN_TABLE), Just(100u32)],
        )
            .prop_map(|(i, onlink, oif, proto, table)| {
                let mut r = Route6::new(format!("fd10:244:{i:x}::/64").parse().expect("net"))
                    .via(underlay(i))
                    .dev(oif)
                    .protocol(proto)
                    .table(table);
                r.onlink = onlink;
                r
            })
    }

    fn arb_neigh() -> impl Strategy<Value = Neighbour6> {
        (
            0u8..12,
            0u8..4,
            prop_oneof![Just(DEV), Just(OTHER)],
            prop::bool::ANY,
        )
            .prop_map(|(i, m, dev, perm)| Neighbour6 {
                index: dev,
                ip: overlay(i),
                mac: Some(mac(m)),
                permanent: perm,
            })
    }

    fn arb_fdb() -> impl Strategy<Value = FdbEntry6> {
        (
            prop_oneof![(0u8..6).prop_map(mac), Just(MacAddr([0; 6]))],
            prop::option::of(0u8..4),
            prop_oneof![Just(DEV), Just(OTHER)],
            prop::bool::ANY,
        )
            .prop_map(|(mac, dst, dev, permanent)| FdbEntry6 {
                index: dev,
                mac,
                dst: dst.map(underlay),
                permanent,
            })
    }

    fn dedup<T: PartialEq + Clone>(v: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        for x in v {
            if !out.iter().any(|y| same(y, &x)) {
                out.push(x);
            }
        }
        out
    }

    prop_compose! {
        /// A kernel state (no two entries the kernel would consider the same object).
        fn arb_observed()(n in prop::collection::vec(arb_neigh(), 0..8),
                          f in prop::collection::vec(arb_fdb(), 0..8),
                          r in prop::collection::vec(arb_route(), 0..8)) -> DataplaneState6 {
            DataplaneState6 {
                neighbours: dedup(n, |a, b| (a.index, a.ip) == (b.index, b.ip)),
                // One entry per unicast MAC and device, as the kernel holds them.
                fdb: dedup(f, |a, b| fdb_key6(a) == fdb_key6(b)),
                routes: dedup(r, |a, b| (a.table, a.dst) == (b.table, b.dst)),
            }
        }
    }

    prop_compose! {
        /// What a backend wants: our device, our protocol, main table.
        fn arb_desired()(ids in prop::collection::btree_set(0u8..12, 0..8), direct in prop::collection::vec(prop::bool::ANY, 8), flood in prop::collection::vec(prop::bool::ANY, 8)) -> DataplaneState6 {
            let mut s = DataplaneState6::default();
            for (k, i) in ids.into_iter().enumerate() {
                let (n, f, r) = peer(i);
                if direct[k % 8] {
                    s.routes.push(Route6::new(r.dst).via(underlay(i)).dev(ETH0));
                } else {
                    s.neighbours.push(n);
                    s.fdb.push(f);
                    s.routes.push(r);
                }
                // Head-end replication: one all-zeros entry per remote.
                if flood[k % 8] {
                    s.fdb.push(FdbEntry6::permanent(DEV, MacAddr([0; 6]), underlay(i)));
                }
            }
            s
        }
    }

    proptest! {
        #[test]
        fn plan_converges_and_never_touches_foreign_entries(desired in arb_desired(), observed in arb_observed()) {
            let o = owner();
            let ops = plan6(&desired, &observed, &o);
            // Deletes only ever target entries we own.
            for op in &ops {
                match op {
                    Op6::DeleteNeighbour(n) => prop_assert!(o.owns_neighbour6(n)),
                    Op6::DeleteFdb(e) => prop_assert!(o.owns_fdb6(e)),
                    Op6::AppendFdb(e) => prop_assert!(!e.mac.is_unicast(), "append ignored by the kernel: {:?}", e),
                    Op6::DeleteRoute(r) => prop_assert!(o.owns_route6(r)),
                    Op6::ReplaceRoute(r) => {
                        // Never overwrites a foreign route at the same destination.
                        prop_assert!(!observed.routes.iter().any(|h| (h.table, h.dst) == (r.table, r.dst) && !o.owns_route6(h) && !o.adopts_route6(h, r)));
                    }
                    _ => {}
                }
            }
            let after = simulate6(&observed, &ops);
            // Foreign routes and FDB entries survive untouched.
            // (but for flanneld's identical routes, which are taken over).
            for r in observed.routes.iter().filter(|r| !o.owns_route6(r)) {
                let adopted = desired.routes.iter().any(|d| o.adopts_route6(r, d));
                prop_assert!(adopted || after.routes.contains(r));
            }
            // (but for the one entry of a unicast MAC we need, which is ours
            // now, and the state of a flooding entry we append to, which the
            // kernel keeps per MAC, not per dst).
            let needed: Vec<(u32, MacAddr)> = desired.fdb.iter().map(|e| (e.index, e.mac)).collect();
            for e in observed.fdb.iter().filter(|e| !o.owns_fdb6(e)) {
                let shared = needed.contains(&(e.index, e.mac));
                if shared && e.mac.is_unicast() {
                    continue;
                }
                prop_assert!(after.fdb.iter().any(|x| x == e
                    || (shared && (x.index, x.mac, x.dst) == (e.index, e.mac, e.dst))));
            }
            for n in observed.neighbours.iter().filter(|n| n.index != DEV) {
                prop_assert!(after.neighbours.contains(n));
            }
            // A second plan6 on the result is empty.
            let again = plan6(&desired, &after, &o);
            prop_assert!(again.is_empty(), "second pass planned {:?}", again);
            // Everything desired (and not blocked by a foreign route) is there.
            let blocked = route_conflicts6(&desired, &observed, &o);
            for r in desired.routes.iter().filter(|r| !blocked.contains(r)) {
                prop_assert!(after.routes.contains(r));
            }
            for e in &desired.fdb {
                prop_assert!(after.fdb.contains(e));
            }
            for n in &desired.neighbours {
                prop_assert!(after.neighbours.contains(n));
            }
        }
    }
}
