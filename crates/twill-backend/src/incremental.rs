//! Incremental reconcile: a lease event plans and applies only the changed
//! peers' entries, against what the last pass gave them, instead of dumping
//! the kernel and re-planning every peer (at 10,000 peers a full pass dumps
//! 30,000 entries for the one that changed).
//!
//! A [`PeerTable`] remembers, per family, what the last pass programmed for
//! each peer and which subnet and VTEP MAC each one claimed. An update
//! releases the changed peers' old claims, runs the same per-peer rules as a
//! full pass on their new leases, and hands [`plan()`](crate::plan()) the changed peers'
//! old entries as the observed state and their new ones as the desired
//! state. Whatever a peer's verdict depends on besides its own lease sends
//! the caller back to a full pass: a claim lost to or won from another
//! peer (the claim order of a full pass decides those), a route of someone
//! else's in the way. The periodic full pass stays the safety net that
//! repairs what was changed by hand.
//!
//! Pure: no IO. The backends do the netlink part ([`apply_delta`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use twill_model::{SkipReason, SubnetKey, SubnetLease};
use twill_netlink::{
    IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute, MacAddr, NetlinkHandle,
};

use crate::peers::Claimed;
use crate::plan::{
    hostgw_peer, peer_nexthop_id, plan, via_nexthop, vxlan_peer, IpDataplaneState, IpOp, Owner,
};
use crate::{BackendError, FailedOp, PeerChange, ReconcileReport};

/// The subnets, underlay addresses and VTEP MACs claimed so far, in claim
/// order: the state the per-peer rules of a pass share. A second peer
/// with a claimed `PublicIP` or VTEP MAC cannot be told apart from the
/// first on the wire (one FDB destination per MAC; one host per address),
/// so the first in claim order keeps it, as for subnets. The address and
/// MAC maps hold the holder's subnet by its first address (its key in
/// `subnets`): 8 bytes an entry where a key would take 28.
#[derive(Debug)]
pub(crate) struct Claims<C> {
    /// Subnet ranges, disjoint.
    pub(crate) subnets: Claimed<C>,
    /// Peer underlay address → the first address of its holder's subnet.
    publics: BTreeMap<C, C>,
    /// Unicast VTEP MAC → the first address of its holder's subnet.
    macs: BTreeMap<MacAddr, C>,
}

impl<C> Default for Claims<C> {
    fn default() -> Self {
        Self {
            subnets: Claimed::default(),
            publics: BTreeMap::new(),
            macs: BTreeMap::new(),
        }
    }
}

impl<C: Ord + Copy> Claims<C> {
    /// Claims, for `key`, its subnet `[first, last]`, its underlay address
    /// `public` and, for a tunnel peer, its VTEP `mac`: all or nothing, so a
    /// peer skipped claims nothing. A peer earlier in claim order holding
    /// any of them keeps it; the MAC is checked first, then the address,
    /// then the subnet.
    pub(crate) fn claim<A>(
        &mut self,
        key: SubnetKey,
        (first, last): (C, C),
        public: A,
        mac: Option<MacAddr>,
    ) -> Result<(), SkipReason>
    where
        A: Into<C> + Into<IpAddr> + Copy,
    {
        if let Some(mac) = mac {
            if let Some(peer) = self.macs.get(&mac).and_then(|f| self.subnets.holder(*f)) {
                return Err(SkipReason::VtepMacInUse { mac, peer });
            }
        }
        let at: C = public.into();
        if let Some(peer) = self.publics.get(&at).and_then(|f| self.subnets.holder(*f)) {
            return Err(SkipReason::PublicIpInUse {
                ip: public.into(),
                peer,
            });
        }
        self.subnets.claim(first, last, key)?;
        self.publics.insert(at, first);
        if let Some(mac) = mac {
            self.macs.insert(mac, first);
        }
        Ok(())
    }

    /// Gives back what [`Claims::claim`] took for the subnet starting at
    /// `first`, if `key` holds it.
    fn release<A: Into<C>>(&mut self, key: &SubnetKey, first: C, public: A, mac: Option<MacAddr>) {
        if self.subnets.holder(first) != Some(*key) {
            return;
        }
        self.subnets.release(first, key);
        let at: C = public.into();
        if self.publics.get(&at) == Some(&first) {
            self.publics.remove(&at);
        }
        if let Some(mac) = mac {
            if self.macs.get(&mac) == Some(&first) {
                self.macs.remove(&mac);
            }
        }
    }
}

/// Peers not programmed, with why.
pub(crate) type Skipped = Vec<(SubnetKey, SkipReason)>;

/// What one peer gets in one family: a route, on a VXLAN device its
/// neighbour and FDB entries, and the nexthop object its route goes
/// through when the kernel has them. Derived from a [`PeerProgram`] when
/// needed, never stored: ~130 bytes per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerEntries<A: IpFamily> {
    pub(crate) neighbour: Option<IpNeighbour<A>>,
    pub(crate) fdb: Option<IpFdbEntry<A>>,
    pub(crate) nexthop: Option<IpNexthop<A>>,
    pub(crate) route: IpRoute<A>,
}

impl<A: IpFamily> PeerEntries<A> {
    fn push_into(&self, state: &mut IpDataplaneState<A>) {
        state.neighbours.extend(self.neighbour);
        state.fdb.extend(self.fdb);
        state.nexthops.extend(self.nexthop);
        state.routes.push(self.route);
    }
}

/// A family's part of a lease key and of its peer's entries.
pub(crate) trait KeyFamily: IpFamily {
    /// The key's subnet in this family (`None`: it has none).
    fn subnet(key: &SubnetKey) -> Option<Self::Network>;
    /// The nexthop object a route to `subnet` goes through when the
    /// backend uses them (`None`: routes carry their gateway).
    fn nexthop_id(subnet: Self::Network) -> Option<u32>;
}

impl KeyFamily for Ipv4Addr {
    fn subnet(key: &SubnetKey) -> Option<Ipv4Network> {
        Some(key.ipv4)
    }

    fn nexthop_id(subnet: Ipv4Network) -> Option<u32> {
        peer_nexthop_id(subnet)
    }
}

impl KeyFamily for Ipv6Addr {
    fn subnet(key: &SubnetKey) -> Option<Ipv6Network> {
        key.ipv6
    }

    fn nexthop_id(_: Ipv6Network) -> Option<u32> {
        None
    }
}

/// What the last pass gave one peer in one family, in the few bytes its
/// entries are derived from with its key ([`PeerProgram::entries`]): 16
/// bytes for IPv4 where the entries take ~130, so a table of 10,000 peers
/// holds 0.6 MiB instead of 1.8 (docs/benchmarks.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerProgram<A> {
    /// The peer's underlay address (`PublicIP`, `PublicIPv6`).
    public: A,
    /// The device its entries are on.
    dev: u32,
    via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A route to the subnet through `public` (host-gw, VXLAN's direct
    /// routing).
    Gateway,
    /// VXLAN: neighbour and FDB entries for the peer's VTEP MAC, a route
    /// through the subnet's first address; through a nexthop object when
    /// `nexthop` (and the family has them).
    Tunnel { mac: MacAddr, nexthop: bool },
}

impl<A: KeyFamily> PeerProgram<A> {
    /// A route through `public` on `dev` ([`hostgw_peer`]).
    pub(crate) fn gateway(public: A, dev: u32) -> Self {
        Self {
            public,
            dev,
            via: Via::Gateway,
        }
    }

    /// A VXLAN peer on `dev` ([`vxlan_peer`]), its route through a nexthop
    /// object when `nexthop`.
    pub(crate) fn tunnel(public: A, dev: u32, mac: MacAddr, nexthop: bool) -> Self {
        Self {
            public,
            dev,
            via: Via::Tunnel { mac, nexthop },
        }
    }

    /// The peer's VTEP MAC, if it has one here.
    fn mac(&self) -> Option<MacAddr> {
        match self.via {
            Via::Gateway => None,
            Via::Tunnel { mac, .. } => Some(mac),
        }
    }

    /// The entries of the peer of `key` (`None` when the key has no subnet
    /// in this family, which a program is never made for).
    pub(crate) fn entries(&self, key: &SubnetKey) -> Option<PeerEntries<A>> {
        let subnet = A::subnet(key)?;
        Some(match self.via {
            Via::Gateway => PeerEntries {
                neighbour: None,
                fdb: None,
                nexthop: None,
                route: hostgw_peer(subnet, self.public, self.dev),
            },
            Via::Tunnel { mac, nexthop } => {
                let (neigh, fdb, route) = vxlan_peer(self.dev, subnet, mac, self.public);
                let (nexthop, route) = match A::nexthop_id(subnet).filter(|_| nexthop) {
                    Some(id) => {
                        let (object, route) = via_nexthop(route, id);
                        (Some(object), route)
                    }
                    None => (None, route),
                };
                PeerEntries {
                    neighbour: Some(neigh),
                    fdb: Some(fdb),
                    nexthop,
                    route,
                }
            }
        })
    }

    fn push_into(&self, key: &SubnetKey, state: &mut IpDataplaneState<A>) {
        if let Some(e) = self.entries(key) {
            e.push_into(state);
        }
    }
}

/// The per-peer rules of a backend for one family: `Ok(Some(entries))` for
/// a peer to program (its claims made in `claims`), `Ok(None)` for one
/// with nothing in this family (our own lease, no IPv6 half), `Err` for a
/// peer skipped.
pub(crate) trait AcceptPeer<A: KeyFamily, C> {
    fn accept(
        &mut self,
        peer: &SubnetLease,
        claims: &mut Claims<C>,
    ) -> Result<Option<PeerProgram<A>>, SkipReason>;
}

impl<A: KeyFamily, C, F> AcceptPeer<A, C> for F
where
    F: FnMut(&SubnetLease, &mut Claims<C>) -> Result<Option<PeerProgram<A>>, SkipReason>,
{
    fn accept(
        &mut self,
        peer: &SubnetLease,
        claims: &mut Claims<C>,
    ) -> Result<Option<PeerProgram<A>>, SkipReason> {
        self(peer, claims)
    }
}

/// What the last pass programmed in one family, per peer.
#[derive(Debug)]
pub(crate) struct PeerTable<A: IpFamily, C> {
    entries: HashMap<SubnetKey, PeerProgram<A>>,
    claims: Claims<C>,
    /// Peers whose verdict depends on another peer: those skipped for a
    /// claim (subnet, VTEP MAC) and those holding it. A change to one of
    /// them needs the claim order of a full pass.
    contested: BTreeSet<SubnetKey>,
    /// The last full pass found a route someone else made in the way of a
    /// peer's: until a full pass finds none, every change takes one.
    foreign_routes: bool,
    /// The first address of a key's subnet in this family: the key of its
    /// claim (`None`: it has no subnet in this family).
    claim_of: fn(&SubnetKey) -> Option<C>,
}

/// What an update plans: the changed peers' entries as the last pass left
/// them (observed) and as their leases want them now (desired).
#[derive(Debug)]
pub(crate) struct Delta<A: IpFamily> {
    pub(crate) desired: IpDataplaneState<A>,
    pub(crate) observed: IpDataplaneState<A>,
    /// Changed peers now skipped, with why.
    pub(crate) skipped: Vec<(SubnetKey, SkipReason)>,
}

/// Whether a skip reason names a claim another peer holds.
fn claim_holder(reason: &SkipReason) -> Option<SubnetKey> {
    match reason {
        SkipReason::OverlapsPeer(k) => Some(*k),
        SkipReason::VtepMacInUse { peer, .. } | SkipReason::PublicIpInUse { peer, .. } => {
            Some(*peer)
        }
        _ => None,
    }
}

impl<A: KeyFamily + Into<C>, C: Ord + Copy> PeerTable<A, C> {
    /// A full pass over `sorted` (claim order): the table, and the peers
    /// skipped with why.
    pub(crate) fn build<'a>(
        sorted: impl IntoIterator<Item = &'a SubnetLease>,
        claim_of: fn(&SubnetKey) -> Option<C>,
        mut accept: impl AcceptPeer<A, C>,
    ) -> (Self, Skipped) {
        let mut table = Self {
            entries: HashMap::new(),
            claims: Claims::default(),
            contested: BTreeSet::new(),
            foreign_routes: false,
            claim_of,
        };
        let mut skipped = Vec::new();
        for peer in sorted {
            match accept.accept(peer, &mut table.claims) {
                Ok(Some(e)) => {
                    table.entries.insert(peer.key, e);
                }
                Ok(None) => {}
                Err(reason) => {
                    if let Some(holder) = claim_holder(&reason) {
                        table.contested.extend([peer.key, holder]);
                    }
                    skipped.push((peer.key, reason));
                }
            }
        }
        (table, skipped)
    }

    /// The kernel state every programmed peer needs.
    pub(crate) fn desired(&self) -> IpDataplaneState<A> {
        let mut state = IpDataplaneState::default();
        for (key, p) in &self.entries {
            p.push_into(key, &mut state);
        }
        state
    }

    /// The full pass found routes of others in the way.
    pub(crate) fn found_foreign_routes(&mut self) {
        self.foreign_routes = true;
    }

    /// Plans `changes` against the table: `None` when they need a full
    /// pass (the table is then no longer valid: it is consumed). `order`
    /// sorts the changed leases as a full pass would claim them.
    pub(crate) fn update(
        mut self,
        changes: &[PeerChange<'_>],
        order: impl Fn(&SubnetLease) -> (bool, i64),
        mut accept: impl AcceptPeer<A, C>,
    ) -> Option<(Self, Delta<A>)> {
        if self.foreign_routes || changes.iter().any(|c| self.contested.contains(&c.key)) {
            return None;
        }
        let mut delta = Delta {
            desired: IpDataplaneState::default(),
            observed: IpDataplaneState::default(),
            skipped: Vec::new(),
        };
        // Every old claim is released before any new one is made: a MAC
        // or subnet moving between two changed peers is no conflict.
        for c in changes {
            if let Some(old) = self.entries.remove(&c.key) {
                self.release(&c.key, &old);
                old.push_into(&c.key, &mut delta.observed);
            }
        }
        let mut leases: Vec<&SubnetLease> = changes.iter().filter_map(|c| c.lease).collect();
        leases.sort_by_key(|p| (order(p), p.key));
        for peer in leases {
            match accept.accept(peer, &mut self.claims) {
                Ok(Some(p)) => {
                    p.push_into(&peer.key, &mut delta.desired);
                    self.entries.insert(peer.key, p);
                }
                Ok(None) => {}
                // Who keeps a claim is the full pass's claim order.
                Err(reason) if claim_holder(&reason).is_some() => return None,
                Err(reason) => delta.skipped.push((peer.key, reason)),
            }
        }
        Some((self, delta))
    }

    fn release(&mut self, key: &SubnetKey, old: &PeerProgram<A>) {
        if let Some(first) = (self.claim_of)(key) {
            self.claims.release(key, first, old.public, old.mac());
        }
    }

    /// Peers programmed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The ops of `delta`: [`plan()`](crate::plan()) of its desired against its observed
/// entries, with each route to a destination, and each nexthop object of
/// an id, that the changed peers did not hold added exclusively
/// ([`IpOp::AddRoute`], [`IpOp::AddNexthop`]): only a full pass, which
/// dumps the kernel, may decide about what it did not know of.
pub(crate) fn delta_ops<A: IpFamily>(delta: &Delta<A>, owner: &Owner) -> Vec<IpOp<A>> {
    let mut ops = plan(&delta.desired, &delta.observed, owner);
    let held_route = |r: &IpRoute<A>| {
        delta
            .observed
            .routes
            .iter()
            .any(|o| (o.table, o.dst) == (r.table, r.dst))
    };
    let held_object = |n: &IpNexthop<A>| delta.observed.nexthops.iter().any(|o| o.id == n.id);
    for op in &mut ops {
        match *op {
            IpOp::ReplaceRoute(r) if !held_route(&r) => *op = IpOp::AddRoute(r),
            IpOp::ReplaceNexthop(n) if !held_object(&n) => *op = IpOp::AddNexthop(n),
            _ => {}
        }
    }
    ops
}

/// Applies `delta` in one batch, adding to `report`. `Ok(false)` when an
/// exclusive route add met a route at its destination: the caller needs a
/// full pass to decide about it.
///
/// # Errors
/// Only when the batch cannot be sent.
pub(crate) fn apply_delta<A: IpFamily>(
    nl: &mut NetlinkHandle,
    delta: &Delta<A>,
    owner: &Owner,
    report: &mut ReconcileReport,
) -> Result<bool, BackendError> {
    report.skipped.extend(delta.skipped.iter().cloned());
    let ops = delta_ops(delta, owner);
    report.planned += ops.len();
    // New objects first, in a batch of their own: a route must never be
    // sent through an id that turns out to be someone else's object.
    let (objects, rest): (Vec<IpOp<A>>, Vec<IpOp<A>>) = ops
        .into_iter()
        .partition(|op| matches!(op, IpOp::AddNexthop(_)));
    for batch in [objects, rest] {
        if batch.is_empty() {
            continue;
        }
        let requests: Vec<_> = batch.iter().map(IpOp::to_request).collect();
        let outcome = nl.execute(&requests)?;
        let mut complete = true;
        for ((op, request), r) in batch.iter().zip(requests).zip(outcome.results) {
            match r {
                Ok(()) => report.applied += 1,
                Err(e) if op.is_done_despite(&e) => report.applied += 1,
                Err(e)
                    if matches!(op, IpOp::AddRoute(_) | IpOp::AddNexthop(_)) && e.is_exists() =>
                {
                    complete = false;
                }
                Err(e) => report.failed.push(FailedOp::new(request, &e)),
            }
        }
        if !complete {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use twill_model::{LeaseAttrs, LeaseKind};
    use twill_netlink::TWILL_RTPROT;

    use super::*;
    use crate::plan::{simulate, DataplaneState};

    const DEV: u32 = 7;

    fn owner() -> Owner {
        Owner {
            device: Some(DEV),
            protocol: TWILL_RTPROT,
            table: twill_netlink::MAIN_TABLE,
            route_oifs: vec![DEV, 2],
        }
    }

    /// Peer `i` (subnet 10.244.i.0/24, or a /23 at `i` when `wide`) with
    /// VTEP MAC `m` and public IP 10.0.0.`ip`, written at `revision`.
    fn lease(i: u8, wide: bool, m: u8, ip: u8, revision: i64) -> SubnetLease {
        let (i, len) = if wide { (i & 0xfe, 23) } else { (i, 24) };
        let key: SubnetKey = format!("10.244.{i}.0-{len}").parse().unwrap();
        let mut attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, ip), "vxlan");
        attrs.backend_data = Some(
            serde_json::json!({"VNI": 1, "VtepMAC": format!("0e:00:00:00:00:{m:02x}")}).into(),
        );
        SubnetLease {
            key,
            attrs,
            kind: LeaseKind::Expiring,
            revision,
        }
    }

    fn claim_of(key: &SubnetKey) -> Option<u32> {
        Some(u32::from(key.ipv4.network()))
    }

    fn order(p: &SubnetLease) -> (bool, i64) {
        (p.key.ipv4.prefix() != 24, p.revision)
    }

    /// The vxlan backend's rules, without its checks on the lease's
    /// origin: the MAC and the subnet are claimed, first come first kept.
    fn accept(
        peer: &SubnetLease,
        claims: &mut Claims<u32>,
    ) -> Result<Option<PeerProgram<Ipv4Addr>>, SkipReason> {
        let mac: MacAddr = peer.attrs.backend_data.as_ref().unwrap().to_value()["VtepMAC"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let public = peer.attrs.public_ip;
        claims.claim(
            peer.key,
            crate::peers::range(peer.key.ipv4),
            public,
            Some(mac),
        )?;
        Ok(Some(PeerProgram::tunnel(public, DEV, mac, false)))
    }

    fn full(
        peers: &BTreeMap<SubnetKey, SubnetLease>,
    ) -> (PeerTable<Ipv4Addr, u32>, DataplaneState) {
        let mut sorted: Vec<&SubnetLease> = peers.values().collect();
        sorted.sort_by_key(|p| (order(p), p.key));
        let (table, _) = PeerTable::build(sorted, claim_of, accept);
        let desired = table.desired();
        (table, desired)
    }

    fn normalised(mut s: DataplaneState) -> DataplaneState {
        s.neighbours.sort_by_key(|n| (n.index, n.ip));
        s.fdb.sort_by_key(|e| (e.index, e.mac, e.dst));
        s.routes.sort_by_key(|r| (r.table, r.dst));
        s
    }

    #[test]
    fn a_peer_program_is_a_few_bytes_and_gives_the_entries_of_the_plan_rules() {
        // What the table keeps per peer (docs/benchmarks.md §5): a regression
        // here is 10,000 times larger.
        assert!(std::mem::size_of::<PeerProgram<Ipv4Addr>>() <= 16);
        let key: SubnetKey = "10.244.3.0-24".parse().unwrap();
        let (mac, public) = (
            "0e:00:00:00:00:03".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 3),
        );
        let (n, f, r) = vxlan_peer(DEV, key.ipv4, mac, public);
        let tunnel = PeerProgram::tunnel(public, DEV, mac, false)
            .entries(&key)
            .unwrap();
        assert_eq!(
            (tunnel.neighbour, tunnel.fdb, tunnel.nexthop, tunnel.route),
            (Some(n), Some(f), None, r)
        );
        let (object, via) = via_nexthop(r, peer_nexthop_id(key.ipv4).unwrap());
        let nh = PeerProgram::tunnel(public, DEV, mac, true)
            .entries(&key)
            .unwrap();
        assert_eq!((nh.nexthop, nh.route), (Some(object), via));
        let gw = PeerProgram::gateway(public, 2).entries(&key).unwrap();
        assert_eq!(
            (gw.neighbour, gw.fdb, gw.route),
            (None, None, hostgw_peer(key.ipv4, public, 2))
        );
        // No IPv6 subnet, no IPv6 entries.
        let v6 = PeerProgram::gateway("fd00::3".parse::<Ipv6Addr>().unwrap(), 2);
        assert!(v6.entries(&key).is_none());
    }

    #[test]
    fn a_new_peer_plans_only_its_three_entries_with_an_exclusive_route() {
        let peers: BTreeMap<_, _> = (1..=50)
            .map(|i| lease(i, false, i, i, i64::from(i)))
            .map(|l| (l.key, l))
            .collect();
        let (table, _) = full(&peers);
        let new = lease(60, false, 60, 60, 100);
        let changes = [PeerChange {
            key: new.key,
            lease: Some(&new),
        }];
        let (table, delta) = table.update(&changes, order, accept).unwrap();
        let ops = delta_ops(&delta, &owner());
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(
            ops.iter()
                .any(|o| matches!(o, IpOp::AddRoute(r) if r.dst == new.key.ipv4)),
            "{ops:?}"
        );
        assert_eq!(table.len(), 51);
    }

    #[test]
    fn a_change_to_a_contested_peer_or_a_new_conflict_needs_a_full_pass() {
        // 10.244.2.0/23 overlaps 10.244.2.0/24: the older /24 keeps it.
        let mut peers: BTreeMap<_, _> = [
            lease(2, false, 2, 2, 1),
            lease(2, true, 3, 3, 2),
            lease(5, false, 5, 5, 3),
        ]
        .into_iter()
        .map(|l| (l.key, l))
        .collect();
        let mut sorted: Vec<&SubnetLease> = peers.values().collect();
        sorted.sort_by_key(|p| (order(p), p.key));
        let (table, skipped) = PeerTable::build(sorted, claim_of, accept);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        let winner = lease(2, false, 2, 2, 1).key;
        let gone = [PeerChange {
            key: winner,
            lease: None,
        }];
        assert!(
            PeerTable::update(full(&peers).0, &gone, order, accept).is_none(),
            "the loser would win now"
        );
        // An uncontested peer changes incrementally...
        let moved = lease(5, false, 5, 9, 4);
        let ch = [PeerChange {
            key: moved.key,
            lease: Some(&moved),
        }];
        let (table, delta) = table.update(&ch, order, accept).unwrap();
        let ops = delta_ops(&delta, &owner());
        assert!(
            matches!(ops[..], [IpOp::ReplaceFdb(e)] if e.dst == Some(Ipv4Addr::new(10, 0, 0, 9))),
            "only the FDB entry moves: {ops:?}"
        );
        // ...but a new peer taking a held VTEP MAC needs the claim order.
        let clone = lease(9, false, 5, 10, 5);
        let ch = [PeerChange {
            key: clone.key,
            lease: Some(&clone),
        }];
        assert!(table.update(&ch, order, accept).is_none());
        peers.clear();
    }

    #[test]
    fn a_mac_moving_between_two_changed_peers_is_no_conflict() {
        let peers: BTreeMap<_, _> = [lease(1, false, 1, 1, 1), lease(2, false, 2, 2, 2)]
            .into_iter()
            .map(|l| (l.key, l))
            .collect();
        let (table, _) = full(&peers);
        // Host 1 leaves and a new lease takes its MAC (a re-installed host).
        let again = lease(3, false, 1, 3, 10);
        let changes = [
            PeerChange {
                key: lease(1, false, 1, 1, 1).key,
                lease: None,
            },
            PeerChange {
                key: again.key,
                lease: Some(&again),
            },
        ];
        assert!(table.update(&changes, order, accept).is_some());
    }

    #[test]
    fn a_table_with_foreign_routes_refuses_every_update() {
        let peers: BTreeMap<_, _> = [lease(1, false, 1, 1, 1)]
            .into_iter()
            .map(|l| (l.key, l))
            .collect();
        let (mut table, _) = full(&peers);
        table.found_foreign_routes();
        let new = lease(2, false, 2, 2, 2);
        assert!(table
            .update(
                &[PeerChange {
                    key: new.key,
                    lease: Some(&new)
                }],
                order,
                accept
            )
            .is_none());
    }

    /// An event: peer `i` gone (`None`) or written with MAC `m`, IP `ip`.
    fn arb_event() -> impl Strategy<Value = (u8, bool, Option<(u8, u8)>)> {
        (
            1u8..12,
            any::<bool>(),
            proptest::option::of((1u8..12, 1u8..12)),
        )
    }

    proptest! {
        /// After any sequence of incremental updates (each falling back to
        /// a full pass when it must), the kernel holds exactly what a full
        /// pass over the final leases plans: nothing missing, nothing stale.
        #[test]
        fn incremental_updates_reach_what_a_full_pass_plans(
            start in proptest::collection::vec(arb_event(), 0..12),
            steps in proptest::collection::vec(proptest::collection::vec(arb_event(), 1..4), 1..12),
        ) {
            let mut revision = 0i64;
            let mut peers: BTreeMap<SubnetKey, SubnetLease> = BTreeMap::new();
            let mut apply = |peers: &mut BTreeMap<SubnetKey, SubnetLease>, (i, wide, v): (u8, bool, Option<(u8, u8)>)| {
                revision += 1;
                let key = lease(i, wide, 0, 1, 0).key;
                match v {
                    Some((m, ip)) => { peers.insert(key, lease(i, wide, m, ip, revision)); }
                    None => { peers.remove(&key); }
                }
                key
            };
            for e in start { apply(&mut peers, e); }
            let (mut table, desired) = full(&peers);
            let mut kernel = simulate(&DataplaneState::default(), &plan(&desired, &DataplaneState::default(), &owner()));
            for step in steps {
                let keys: BTreeSet<SubnetKey> = step.into_iter().map(|e| apply(&mut peers, e)).collect();
                let changes: Vec<PeerChange<'_>> = keys.iter().map(|k| PeerChange { key: *k, lease: peers.get(k) }).collect();
                match table.update(&changes, order, accept) {
                    Some((t, delta)) => {
                        let ops = delta_ops(&delta, &owner());
                        kernel = simulate(&kernel, &ops);
                        table = t;
                    }
                    None => {
                        let (t, desired) = full(&peers);
                        kernel = simulate(&kernel, &plan(&desired, &kernel, &owner()));
                        table = t;
                    }
                }
                let (_, want) = full(&peers);
                prop_assert_eq!(normalised(kernel.clone()), normalised(want));
            }
        }
    }
}
