//! The pure step of reconcile: `plan(desired, observed, owner) -> Vec<Op>`.
//!
//! No IO. [`plan`] compares what the peers require with what the kernel
//! reported and returns the operations that turn one into the other,
//! touching only entries that [`Owner`] says are ours.
//!
//! Written once over the address family ([`IpFamily`]): the IPv4 state
//! ([`DataplaneState`], [`Op`]: ARP, FDB entries with IPv4 remotes, IPv4
//! routes) and the IPv6 half of a dual-stack overlay ([`DataplaneState6`],
//! [`Op6`]: NDP, FDB entries with IPv6 remotes on flannel's
//! `flannel-v6.<VNI>`, IPv6 routes) follow the same keys, ownership, order
//! and model of the kernel ([`simulate`]). The families are planned in
//! separate passes, so an IPv4-only network plans, dumps and sends exactly
//! what it would without IPv6; an [`Owner`] for the IPv6 pass names the
//! IPv6 device.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;
use twill_netlink::{
    IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute, MacAddr, NetlinkError, Request,
};

/// What the kernel should hold for the current set of peers, in family `A`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpDataplaneState<A: IpFamily> {
    /// Permanent neighbour entries (ARP for IPv4, NDP for IPv6).
    pub neighbours: Vec<IpNeighbour<A>>,
    /// FDB entries (`self`, with a `dst` of family `A`). The kernel holds one
    /// `dst` per unicast MAC on a device (more only for the all-zeros and
    /// multicast MACs used for flooding), and [`plan`] programs them that way.
    pub fdb: Vec<IpFdbEntry<A>>,
    /// Routes. A route through a nexthop object (`nexthop_id`) is planned
    /// by the object's forwarding: its `gateway`, `oif` and `onlink` are
    /// the object's ([`resolve_nexthops`]), whatever the dump said.
    pub routes: Vec<IpRoute<A>>,
    /// Nexthop objects (empty where the kernel has none, or where routes
    /// carry their own gateway). Desired: one per route that names it.
    /// Observed: every object of the namespace, since ids are one space
    /// shared with everyone else's.
    pub nexthops: Vec<IpNexthop<A>>,
}

// Not derived: a derive would ask `A: Default`, which addresses are not.
impl<A: IpFamily> Default for IpDataplaneState<A> {
    fn default() -> Self {
        Self {
            neighbours: Vec::new(),
            fdb: Vec::new(),
            routes: Vec::new(),
            nexthops: Vec::new(),
        }
    }
}

/// What the kernel should hold for the IPv4 side of the current peers.
pub type DataplaneState = IpDataplaneState<Ipv4Addr>;

/// What the kernel should hold for the IPv6 half of the current peers.
pub type DataplaneState6 = IpDataplaneState<Ipv6Addr>;

/// Which kernel entries belong to us (all others are never touched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Our device (flannel.N): its permanent neighbours and its FDB entries
    /// with a `dst` are ours. `None` for backends without a device (host-gw).
    pub device: Option<u32>,
    /// Route protocol marking our routes.
    pub protocol: u8,
    /// Routing table we manage.
    pub table: u32,
    /// Output devices our routes may use (the device, the underlay).
    pub route_oifs: Vec<u32>,
}

impl Owner {
    /// Whether a neighbour entry is ours.
    #[must_use]
    pub fn owns_neighbour<A: IpFamily>(&self, n: &IpNeighbour<A>) -> bool {
        self.device == Some(n.index) && n.permanent
    }

    /// Whether an FDB entry is ours.
    #[must_use]
    pub fn owns_fdb<A: IpFamily>(&self, e: &IpFdbEntry<A>) -> bool {
        self.device == Some(e.index) && e.dst.is_some()
    }

    /// Whether a route is ours.
    #[must_use]
    pub fn owns_route<A: IpFamily>(&self, r: &IpRoute<A>) -> bool {
        r.protocol == self.protocol
            && r.table == self.table
            && r.oif.is_some_and(|o| self.route_oifs.contains(&o))
    }

    /// Whether a nexthop object is ours: our protocol, on our device or
    /// one of our route devices, with a gateway of the family planned (a
    /// group, a blackhole or an object of the other family never is).
    #[must_use]
    pub fn owns_nexthop<A: IpFamily>(&self, n: &IpNexthop<A>) -> bool {
        n.protocol == self.protocol
            && n.gateway.is_some()
            && n.oif.is_some_and(|o| self.route_oifs.contains(&o))
    }

    /// Whether `observed`, a route we did not create, is exactly `desired`
    /// but for its protocol and nexthop object: flanneld's own route for
    /// the same lease (same destination, gateway, device, onlink flag and
    /// table; flanneld's carries its gateway itself, ours may go through a
    /// nexthop object to the same place). Taking it over changes no
    /// forwarding and lets twilld replace flanneld in place; any other
    /// foreign route is left alone.
    #[must_use]
    pub fn adopts_route<A: IpFamily>(&self, observed: &IpRoute<A>, desired: &IpRoute<A>) -> bool {
        !self.owns_route(observed)
            && IpRoute {
                protocol: desired.protocol,
                nexthop_id: desired.nexthop_id,
                ..*observed
            } == *desired
    }
}

/// One change to the kernel's state of family `A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpOp<A: IpFamily> {
    /// Add or replace a permanent neighbour (ARP, NDP) entry.
    ReplaceNeighbour(IpNeighbour<A>),
    /// Remove a neighbour entry.
    DeleteNeighbour(IpNeighbour<A>),
    /// Add a `dst` to an all-zeros or multicast (flooding) FDB entry, which
    /// may hold several (`bridge fdb append`). Never planned for a unicast
    /// MAC: the kernel answers success to appending a second `dst` to one and
    /// changes nothing.
    AppendFdb(IpFdbEntry<A>),
    /// Add or move the one FDB entry of a unicast MAC (`bridge fdb replace`).
    ReplaceFdb(IpFdbEntry<A>),
    /// Remove an FDB entry.
    DeleteFdb(IpFdbEntry<A>),
    /// Add or replace a route.
    ReplaceRoute(IpRoute<A>),
    /// Add a route where the kernel holds none at its destination
    /// (`NLM_F_EXCL`). Never planned by [`plan`], which knows the kernel's
    /// routes; an incremental pass, which knows only what it programmed
    /// itself, adds a new peer's route this way so that a route someone
    /// else made at that destination is refused (`EEXIST`), not replaced.
    AddRoute(IpRoute<A>),
    /// Remove a route.
    DeleteRoute(IpRoute<A>),
    /// Add or replace a nexthop object (before any route through it).
    ReplaceNexthop(IpNexthop<A>),
    /// Add a nexthop object whose id nothing holds (`NLM_F_EXCL`): as
    /// [`IpOp::AddRoute`], only from an incremental pass, so an object
    /// someone else made with that id is refused (`EEXIST`), not replaced.
    AddNexthop(IpNexthop<A>),
    /// Remove a nexthop object (after the routes it served moved away: the
    /// kernel deletes the routes still through it).
    DeleteNexthop(IpNexthop<A>),
}

/// One change to the kernel's IPv4 state.
pub type Op = IpOp<Ipv4Addr>;

/// One change to the kernel's IPv6 state.
pub type Op6 = IpOp<Ipv6Addr>;

impl<A: IpFamily> IpOp<A> {
    /// The netlink request carrying this op out.
    #[must_use]
    pub fn to_request(&self) -> Request {
        match *self {
            Self::ReplaceNeighbour(n) => Request::neighbour_replace(n),
            Self::DeleteNeighbour(n) => Request::neighbour_delete(n),
            Self::AppendFdb(e) => Request::fdb_append(e),
            Self::ReplaceFdb(e) => Request::fdb_replace(e),
            Self::DeleteFdb(e) => Request::fdb_delete(e),
            Self::ReplaceRoute(r) => Request::route_replace(r),
            Self::AddRoute(r) => Request::route_add(r),
            Self::DeleteRoute(r) => Request::route_delete(r),
            Self::ReplaceNexthop(n) => Request::nexthop_replace(n),
            Self::AddNexthop(n) => Request::nexthop_add(n),
            Self::DeleteNexthop(n) => Request::nexthop_delete(n),
        }
    }

    /// Whether this op removes something.
    #[must_use]
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DeleteNeighbour(_)
                | Self::DeleteFdb(_)
                | Self::DeleteRoute(_)
                | Self::DeleteNexthop(_)
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
    /// - `EEXIST` is never "already there": the kernel answers success to a
    ///   replace or append of what it already holds (`ip neigh replace`,
    ///   `ip route replace`, `bridge fdb replace/append` all do), so an
    ///   `EEXIST` means a conflicting object refused the op; for
    ///   [`IpOp::AddRoute`] and [`IpOp::AddNexthop`], the exclusive ops, a
    ///   route at its destination or an object with its id that the caller
    ///   did not know of.
    #[must_use]
    pub fn is_done_despite(&self, err: &NetlinkError) -> bool {
        self.is_delete() && err.is_not_found()
    }
}

type NeighKey<A> = (u32, A);
/// `(device, MAC, dst)`; `dst` is `None` for unicast MACs, which the kernel
/// holds once per device whatever their `dst` (see [`fdb_key`]).
type FdbKey<A> = (u32, MacAddr, Option<A>);
type RouteKey<A> = (u32, <A as IpFamily>::Network);

/// The identity the kernel gives an FDB entry on a VXLAN device: a unicast
/// MAC has one entry with one `dst` (appending another is acknowledged and
/// ignored; replacing moves it), the all-zeros and multicast MACs have one
/// `dst` per remote (flooding to each).
fn fdb_key<A: IpFamily>(e: &IpFdbEntry<A>) -> FdbKey<A> {
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
/// [`simulate`]): observed entries that `owner` does not own are never the
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
pub fn plan<A: IpFamily>(
    desired: &IpDataplaneState<A>,
    observed: &IpDataplaneState<A>,
    owner: &Owner,
) -> Vec<IpOp<A>> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();

    // Neighbours, keyed by (device, ip).
    let want: BTreeMap<NeighKey<A>, IpNeighbour<A>> = desired
        .neighbours
        .iter()
        .map(|n| {
            (
                (n.index, n.ip),
                IpNeighbour {
                    permanent: true,
                    ..*n
                },
            )
        })
        .collect();
    let have: BTreeMap<NeighKey<A>, &IpNeighbour<A>> = observed
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
            _ => adds.push(IpOp::ReplaceNeighbour(*n)),
        }
    }
    for (k, h) in &have {
        if !want.contains_key(k) && owner.owns_neighbour(h) {
            dels.push(IpOp::DeleteNeighbour(**h));
        }
    }

    // FDB, keyed as the kernel keys it (`fdb_key`). Comparing by (device,
    // mac, dst) and appending, as before, planned an append the kernel
    // ignores whenever a unicast MAC already had another dst: the op was
    // "applied" on every pass forever, and a moved dst was deleted instead.
    let want: BTreeMap<FdbKey<A>, IpFdbEntry<A>> = desired
        .fdb
        .iter()
        .map(|e| {
            (
                fdb_key(e),
                IpFdbEntry {
                    permanent: true,
                    ..*e
                },
            )
        })
        .collect();
    // Every entry on our device, also foreign ones: the kernel's one entry of
    // a unicast MAC we need is replaced whoever made it.
    let mut have: BTreeMap<FdbKey<A>, Vec<&IpFdbEntry<A>>> = BTreeMap::new();
    for e in observed
        .fdb
        .iter()
        .filter(|e| owner.device == Some(e.index))
    {
        have.entry(fdb_key(e)).or_default().push(e);
    }
    for (k, e) in &want {
        let observed_here = have.get(k).map(Vec::as_slice).unwrap_or_default();
        if !observed_here.iter().any(|h| **h == *e) {
            adds.push(if e.mac.is_unicast() {
                IpOp::ReplaceFdb(*e)
            } else {
                // Also makes an existing non-permanent entry permanent.
                IpOp::AppendFdb(*e)
            });
        }
    }
    for (k, es) in &have {
        for e in es.iter().filter(|e| owner.owns_fdb(e)) {
            match want.get(k) {
                Some(w) if w.dst == e.dst => {}
                // Moved in place by the ReplaceFdb above.
                Some(_) if es.len() == 1 => {}
                _ => dels.push(IpOp::DeleteFdb(**e)),
            }
        }
    }

    // Nexthop objects, keyed by id: the kernel's one space for everyone's.
    let nexthops = Nexthops::new(desired, observed, owner);
    for n in nexthops.want.values() {
        if !nexthops.blocked.contains(&n.id) && nexthops.have.get(&n.id) != Some(&n) {
            adds.push(IpOp::ReplaceNexthop(*n));
        }
    }

    // Routes, keyed by (table, dst).
    let want: BTreeMap<RouteKey<A>, IpRoute<A>> = desired
        .routes
        .iter()
        .map(|r| ((r.table, r.dst), nexthops.effective(r)))
        .collect();
    let observed_routes = resolve_nexthops(&observed.routes, &observed.nexthops);
    let mut have: BTreeMap<RouteKey<A>, Vec<&IpRoute<A>>> = BTreeMap::new();
    for r in &observed_routes {
        have.entry((r.table, r.dst)).or_default().push(r);
    }
    for (k, r) in &want {
        let observed_here = have.get(k).map(Vec::as_slice).unwrap_or_default();
        let present = observed_here.contains(&r);
        // Never replace someone else's route: that destination is reported
        // by `route_conflicts` instead.
        let foreign = observed_here
            .iter()
            .any(|h| !owner.owns_route(h) && !owner.adopts_route(h, r));
        if !present && !foreign {
            adds.push(IpOp::ReplaceRoute(*r));
        }
    }
    for (k, rs) in &have {
        for r in rs {
            if !owner.owns_route(r) {
                continue;
            }
            match want.get(k) {
                Some(w) if w == *r => {}
                // Replaced in place by the ReplaceRoute above (same table/dst).
                Some(_) if rs.len() == 1 => {}
                _ => dels.push(IpOp::DeleteRoute(**r)),
            }
        }
    }

    // Last: an object of ours no route of ours wants any more. One a route
    // we leave alone still goes through is kept: deleting it would delete
    // that route too.
    let kept: BTreeSet<u32> = observed_routes
        .iter()
        .filter(|r| !owner.owns_route(r))
        .filter_map(|r| r.nexthop_id)
        .collect();
    for (id, n) in &nexthops.have {
        if owner.owns_nexthop(n) && !nexthops.want.contains_key(id) && !kept.contains(id) {
            dels.push(IpOp::DeleteNexthop(**n));
        }
    }

    adds.extend(dels);
    adds
}

/// The nexthop objects of one plan: those wanted, those the kernel has, and
/// the wanted ids someone else's object holds.
struct Nexthops<'a, A: IpFamily> {
    want: BTreeMap<u32, IpNexthop<A>>,
    have: BTreeMap<u32, &'a IpNexthop<A>>,
    /// Wanted ids held by an object that is not ours: never touched; the
    /// routes that would go through them carry their gateway instead.
    blocked: BTreeSet<u32>,
}

impl<'a, A: IpFamily> Nexthops<'a, A> {
    fn new(
        desired: &IpDataplaneState<A>,
        observed: &'a IpDataplaneState<A>,
        owner: &Owner,
    ) -> Self {
        let want: BTreeMap<u32, IpNexthop<A>> = desired
            .nexthops
            .iter()
            .filter(|n| n.id != 0)
            .map(|n| (n.id, *n))
            .collect();
        let have: BTreeMap<u32, &IpNexthop<A>> =
            observed.nexthops.iter().map(|n| (n.id, n)).collect();
        let blocked = want
            .keys()
            .filter(|id| have.get(id).is_some_and(|h| !owner.owns_nexthop(h)))
            .copied()
            .collect();
        Self {
            want,
            have,
            blocked,
        }
    }

    /// The route as it is to be programmed: through its object, with the
    /// object's forwarding, when that object is wanted and its id free;
    /// otherwise with the gateway itself (flannel's route), so that a peer
    /// whose id someone else holds is still reached.
    fn effective(&self, r: &IpRoute<A>) -> IpRoute<A> {
        let Some(id) = r.nexthop_id else {
            return *r;
        };
        let Some(n) = self.want.get(&id) else {
            return IpRoute {
                nexthop_id: None,
                ..*r
            };
        };
        IpRoute {
            gateway: n.gateway,
            oif: n.oif,
            onlink: n.onlink,
            nexthop_id: (!self.blocked.contains(&id)).then_some(id),
            ..*r
        }
    }
}

/// `routes` with the forwarding of each route through a nexthop object
/// taken from that object in `nexthops`: the kernel reports it beside the
/// id only in its compatibility mode (`net.ipv4.nexthop_compat_mode`), and
/// ownership ([`Owner::owns_route`]) and comparison need it either way. A
/// route whose object is not in `nexthops` is left as it is.
#[must_use]
pub fn resolve_nexthops<A: IpFamily>(
    routes: &[IpRoute<A>],
    nexthops: &[IpNexthop<A>],
) -> Vec<IpRoute<A>> {
    let by_id: BTreeMap<u32, &IpNexthop<A>> = nexthops.iter().map(|n| (n.id, n)).collect();
    routes
        .iter()
        .map(|r| match r.nexthop_id.and_then(|id| by_id.get(&id)) {
            Some(n) => IpRoute {
                gateway: n.gateway,
                oif: n.oif,
                onlink: n.onlink,
                ..*r
            },
            None => *r,
        })
        .collect()
}

/// The nexthop object id of the IPv4 `subnet`'s peer: the subnet's network
/// address as a number (`10.244.1.0` is 183,763,200), so that it follows
/// from the lease alone, is the same on every pass and every restart, and
/// no two subnets share one. `None` for `0.0.0.0`, whose 0 is no id.
#[must_use]
pub fn peer_nexthop_id(subnet: Ipv4Network) -> Option<u32> {
    Some(u32::from(subnet.network())).filter(|id| *id != 0)
}

/// `route`, which carries its gateway, as a nexthop object `id` with that
/// gateway, device and onlink flag, and the route through it (`nhid id`):
/// the same forwarding, without the kernel's quadratic insert of many
/// gateways on one device (docs/benchmarks.md §4).
#[must_use]
pub fn via_nexthop<A: IpFamily>(route: IpRoute<A>, id: u32) -> (IpNexthop<A>, IpRoute<A>) {
    let nexthop = IpNexthop {
        id,
        gateway: route.gateway,
        oif: route.oif,
        onlink: route.onlink,
        protocol: route.protocol,
    };
    (nexthop, route.nexthop(id))
}

/// Desired routes that [`plan`] will not program because a route we do not
/// own already holds the same destination in the same table.
#[must_use]
pub fn route_conflicts<A: IpFamily>(
    desired: &IpDataplaneState<A>,
    observed: &IpDataplaneState<A>,
    owner: &Owner,
) -> Vec<IpRoute<A>> {
    // A set, not a scan per desired route: O(n log n) at 10,000 peers
    // instead of 100 M comparisons per reconcile.
    let observed_routes = resolve_nexthops(&observed.routes, &observed.nexthops);
    let mut foreign: BTreeMap<RouteKey<A>, Vec<&IpRoute<A>>> = BTreeMap::new();
    for h in observed_routes.iter().filter(|h| !owner.owns_route(h)) {
        foreign.entry((h.table, h.dst)).or_default().push(h);
    }
    desired
        .routes
        .iter()
        .filter(|r| {
            foreign
                .get(&(r.table, r.dst))
                .is_some_and(|hs| hs.iter().any(|h| !owner.adopts_route(h, r)))
        })
        .copied()
        .collect()
}

/// Applies `ops` to a model of the kernel (for tests): what the kernel
/// would hold afterwards, given it held `state`.
#[must_use]
pub fn simulate<A: IpFamily>(state: &IpDataplaneState<A>, ops: &[IpOp<A>]) -> IpDataplaneState<A> {
    let mut s = state.clone();
    s.routes = resolve_nexthops(&s.routes, &s.nexthops);
    for op in ops {
        match *op {
            IpOp::ReplaceNeighbour(n) => {
                s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip));
                s.neighbours.push(n);
            }
            IpOp::DeleteNeighbour(n) => s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip)),
            // As vxlan_fdb_update() does: the state belongs to the entry of
            // (device, MAC), shared by its dsts; appending adds a dst only to
            // the all-zeros and multicast MACs, and is acknowledged but
            // otherwise ignored for a unicast MAC that already has one.
            IpOp::AppendFdb(e) => {
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
            IpOp::ReplaceFdb(e) if e.mac.is_unicast() => {
                match s
                    .fdb
                    .iter_mut()
                    .find(|x| (x.index, x.mac) == (e.index, e.mac))
                {
                    Some(x) => *x = e,
                    None => s.fdb.push(e),
                }
            }
            IpOp::ReplaceFdb(_) => {}
            IpOp::DeleteFdb(e) => s.fdb.retain(|x| {
                (x.index, x.mac) != (e.index, e.mac) || e.dst.is_some_and(|d| x.dst != Some(d))
            }),
            // Through an object the kernel does not have: refused (EINVAL),
            // so an object must come before the routes through it.
            IpOp::ReplaceRoute(r)
                if r.nexthop_id
                    .is_some_and(|id| !s.nexthops.iter().any(|n| n.id == id)) => {}
            IpOp::ReplaceRoute(r) => {
                let r = resolve_nexthops(&[r], &s.nexthops)[0];
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
            // EEXIST when the destination has a route: nothing changes.
            IpOp::AddRoute(r) => {
                if !s
                    .routes
                    .iter()
                    .any(|x| (x.table, x.dst) == (r.table, r.dst))
                {
                    s.routes.push(r);
                }
            }
            IpOp::DeleteRoute(r) => {
                // Through an object the kernel matches by its id, not by
                // the gateway or device.
                let same = |x: &IpRoute<A>| match r.nexthop_id {
                    Some(id) => {
                        (x.table, x.dst, x.protocol, x.nexthop_id)
                            == (r.table, r.dst, r.protocol, Some(id))
                    }
                    None => *x == r,
                };
                if let Some(pos) = s.routes.iter().position(same) {
                    s.routes.remove(pos);
                }
            }
            IpOp::ReplaceNexthop(n) => {
                match s.nexthops.iter_mut().find(|x| x.id == n.id) {
                    Some(x) => *x = n,
                    None => s.nexthops.push(n),
                }
                // The routes through it follow it.
                s.routes = resolve_nexthops(&s.routes, &s.nexthops);
            }
            // EEXIST when the id is taken: nothing changes.
            IpOp::AddNexthop(n) => {
                if !s.nexthops.iter().any(|x| x.id == n.id) {
                    s.nexthops.push(n);
                    s.routes = resolve_nexthops(&s.routes, &s.nexthops);
                }
            }
            IpOp::DeleteNexthop(n) => {
                s.nexthops.retain(|x| x.id != n.id);
                s.routes.retain(|x| x.nexthop_id != Some(n.id));
            }
        }
    }
    s
}

/// What flannel programs on its VXLAN device (`dev`: `flannel.<VNI>`, or
/// `flannel-v6.<VNI>` for the IPv6 half) for a peer's `subnet` with VTEP MAC
/// `mac` at `public` (its `PublicIP` or `PublicIPv6`): the subnet's first
/// address as the peer's gateway, its neighbour entry to the MAC, the MAC's
/// FDB entry to the underlay address, the onlink route.
#[must_use]
pub fn vxlan_peer<A: IpFamily>(
    dev: u32,
    subnet: A::Network,
    mac: MacAddr,
    public: A,
) -> (IpNeighbour<A>, IpFdbEntry<A>, IpRoute<A>) {
    let gw = A::network_addr(&subnet);
    (
        IpNeighbour::permanent(dev, gw, mac),
        IpFdbEntry::permanent(dev, mac, public),
        IpRoute::new(subnet).via(gw).dev(dev).onlink(),
    )
}

/// What host-gw programs for a peer's `subnet` at `public` (its `PublicIP`
/// or `PublicIPv6`) through the underlay device `underlay`: flannel's
/// `ip [-6] route replace <subnet> via <public> dev <underlay>`.
#[must_use]
pub fn hostgw_peer<A: IpFamily>(subnet: A::Network, public: A, underlay: u32) -> IpRoute<A> {
    IpRoute::new(subnet).via(public).dev(underlay)
}

#[cfg(test)]
mod tests {
    //! Every test runs for both families (`v4::…`, `v6::…`): the same
    //! cases over [`Fixture`]'s addresses, as the planner is the same.

    use super::*;
    use proptest::prelude::*;
    use twill_netlink::{MAIN_TABLE, TWILL_RTPROT};

    /// The addresses the cases are written with, per family.
    trait Fixture: IpFamily {
        /// Peer `i`'s subnet (`10.244.i.0/24`, `fd10:244:i::/64`).
        fn subnet(i: u8) -> Self::Network;
        /// The first address of peer `i`'s subnet (its gateway and neighbour entry).
        fn overlay(i: u8) -> Self {
            Self::network_addr(&Self::subnet(i))
        }
        /// Peer `i`'s underlay address (`PublicIP`, `PublicIPv6`).
        fn underlay(i: u8) -> Self;
        /// An address on neither network.
        fn elsewhere() -> Self;
    }

    impl Fixture for Ipv4Addr {
        fn subnet(i: u8) -> Self::Network {
            format!("10.244.{i}.0/24").parse().expect("net")
        }
        fn underlay(i: u8) -> Self {
            Ipv4Addr::new(10, 0, 0, i)
        }
        fn elsewhere() -> Self {
            Ipv4Addr::new(1, 2, 3, 4)
        }
    }

    impl Fixture for Ipv6Addr {
        fn subnet(i: u8) -> Self::Network {
            format!("fd10:244:{i:x}::/64").parse().expect("net")
        }
        fn underlay(i: u8) -> Self {
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))
        }
        fn elsewhere() -> Self {
            "fd99::4".parse().expect("ip")
        }
    }

    /// Instantiates each generic case once per family.
    macro_rules! for_both_families {
        ($($case:ident),* $(,)?) => {
            mod v4 {
                $(#[test] fn $case() { super::$case::<std::net::Ipv4Addr>() })*
            }
            mod v6 {
                $(#[test] fn $case() { super::$case::<std::net::Ipv6Addr>() })*
            }
        };
    }

    for_both_families!(
        empty_kernel_gets_three_ops_per_peer,
        matching_kernel_plans_nothing,
        stale_peer_is_removed_and_foreign_entries_kept,
        changed_mac_replaces_neighbour_and_moves_fdb,
        moved_dst_of_a_unicast_mac_is_replaced_in_place,
        one_unicast_mac_wanted_at_two_dsts_settles_on_one,
        flooding_entries_hold_one_dst_per_remote,
        a_non_permanent_fdb_entry_is_made_permanent,
        only_deletes_count_not_found_as_done,
        changed_route_is_replaced_in_place_not_deleted,
        foreign_route_at_our_destination_is_not_replaced,
        flanneld_route_identical_but_for_protocol_is_taken_over,
        routes_through_objects_come_after_their_objects,
        stale_object_is_deleted_after_its_route,
        an_id_someone_else_holds_falls_back_to_the_gateway_route,
        flanneld_route_is_taken_over_by_a_route_through_an_object,
        turning_objects_off_moves_routes_then_deletes_objects,
        routes_dumped_without_compat_mode_are_read_through_their_object,
        an_object_a_foreign_route_uses_is_kept,
    );

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

    fn mac(i: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, i])
    }

    fn peer<A: Fixture>(i: u8) -> (IpNeighbour<A>, IpFdbEntry<A>, IpRoute<A>) {
        let gw = A::overlay(i);
        (
            IpNeighbour::permanent(DEV, gw, mac(i)),
            IpFdbEntry::permanent(DEV, mac(i), A::underlay(i)),
            IpRoute::new(A::subnet(i)).via(gw).dev(DEV).onlink(),
        )
    }

    /// Peer `i`'s nexthop object id in these cases.
    fn nh_id(i: u8) -> u32 {
        100 + u32::from(i)
    }

    /// Peers `ids` as the vxlan backend lays them out through nexthop objects.
    fn nh_state<A: Fixture>(ids: &[u8]) -> IpDataplaneState<A> {
        let mut s = IpDataplaneState::default();
        for &i in ids {
            let (n, f, r) = peer(i);
            let (nh, r) = via_nexthop(r, nh_id(i));
            s.neighbours.push(n);
            s.fdb.push(f);
            s.nexthops.push(nh);
            s.routes.push(r);
        }
        s
    }

    fn state<A: Fixture>(ids: &[u8]) -> IpDataplaneState<A> {
        let mut s = IpDataplaneState::default();
        for &i in ids {
            let (n, f, r) = peer(i);
            s.neighbours.push(n);
            s.fdb.push(f);
            s.routes.push(r);
        }
        s
    }

    fn empty_kernel_gets_three_ops_per_peer<A: Fixture>() {
        let ops = plan(&state::<A>(&[1, 2]), &IpDataplaneState::default(), &owner());
        assert_eq!(ops.len(), 6);
        assert!(ops.iter().all(|o| !o.is_delete()));
    }

    fn matching_kernel_plans_nothing<A: Fixture>() {
        assert!(plan(&state::<A>(&[1, 2, 3]), &state(&[1, 2, 3]), &owner()).is_empty());
    }

    fn stale_peer_is_removed_and_foreign_entries_kept<A: Fixture>() {
        let mut observed = state::<A>(&[1, 2]);
        let foreign_route = IpRoute::new(A::subnet(7))
            .via(A::underlay(7))
            .dev(ETH0)
            .protocol(4);
        let other_dev = IpNeighbour::permanent(OTHER, A::elsewhere(), mac(9));
        let dynamic = IpNeighbour {
            permanent: false,
            ..IpNeighbour::permanent(DEV, A::overlay(8), mac(8))
        };
        observed.routes.push(foreign_route);
        observed.neighbours.push(other_dev);
        observed.neighbours.push(dynamic);
        let ops = plan(&state(&[1]), &observed, &owner());
        let (n2, f2, r2) = peer(2);
        assert_eq!(
            ops,
            vec![
                IpOp::DeleteNeighbour(n2),
                IpOp::DeleteFdb(f2),
                IpOp::DeleteRoute(r2)
            ]
        );
    }

    fn changed_mac_replaces_neighbour_and_moves_fdb<A: Fixture>() {
        let observed = state::<A>(&[1]);
        let mut desired = state(&[1]);
        desired.neighbours[0].mac = Some(mac(99));
        desired.fdb[0].mac = mac(99);
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(ops[0], IpOp::ReplaceNeighbour(n) if n.mac == Some(mac(99))));
        assert!(matches!(ops[1], IpOp::ReplaceFdb(e) if e.mac == mac(99)));
        assert!(matches!(ops[2], IpOp::DeleteFdb(e) if e.mac == mac(1)));
    }

    fn moved_dst_of_a_unicast_mac_is_replaced_in_place<A: Fixture>() {
        // A peer's PublicIP changed, its VtepMAC did not. Appending the new
        // dst is ignored by the kernel (the MAC has one already) and deleting
        // the old one then left no entry at all.
        let observed = state::<A>(&[1]);
        let mut desired = state(&[1]);
        desired.fdb[0].dst = Some(A::underlay(77));
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(ops, vec![IpOp::ReplaceFdb(desired.fdb[0])]);
        let after = simulate(&observed, &ops);
        assert_eq!(after.fdb, desired.fdb);
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn one_unicast_mac_wanted_at_two_dsts_settles_on_one<A: Fixture>() {
        // The kernel keeps one dst per unicast MAC: planning both forever
        // (each pass "applying" an append the kernel ignores) is the bug.
        let mut desired = state::<A>(&[1, 2]);
        desired.fdb[1].mac = mac(1);
        let ops = plan(&desired, &IpDataplaneState::default(), &owner());
        let after = simulate(&IpDataplaneState::default(), &ops);
        assert_eq!(after.fdb, vec![desired.fdb[1]], "the last one wins");
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn flooding_entries_hold_one_dst_per_remote<A: Fixture>() {
        let zero = MacAddr([0; 6]);
        let flood = |d: u8| IpFdbEntry::permanent(DEV, zero, A::underlay(d));
        let desired = IpDataplaneState {
            fdb: vec![flood(1), flood(2)],
            ..IpDataplaneState::default()
        };
        let observed = IpDataplaneState {
            fdb: vec![flood(3)],
            ..IpDataplaneState::default()
        };
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(
            ops,
            vec![
                IpOp::AppendFdb(flood(1)),
                IpOp::AppendFdb(flood(2)),
                IpOp::DeleteFdb(flood(3))
            ]
        );
        let after = simulate(&observed, &ops);
        assert_eq!(after.fdb, desired.fdb);
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn a_non_permanent_fdb_entry_is_made_permanent<A: Fixture>() {
        let mut observed = state::<A>(&[1]);
        observed.fdb[0].permanent = false;
        let desired = state(&[1]);
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(ops, vec![IpOp::ReplaceFdb(desired.fdb[0])]);
    }

    fn only_deletes_count_not_found_as_done<A: Fixture>() {
        let err = |errno: i32| NetlinkError::Kernel {
            request: "x".into(),
            errno,
        };
        let (n, f, r) = peer::<A>(1);
        let adds = [
            IpOp::ReplaceNeighbour(n),
            IpOp::AppendFdb(f),
            IpOp::ReplaceFdb(f),
            IpOp::ReplaceRoute(r),
        ];
        let dels = [
            IpOp::DeleteNeighbour(n),
            IpOp::DeleteFdb(f),
            IpOp::DeleteRoute(r),
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

    fn changed_route_is_replaced_in_place_not_deleted<A: Fixture>() {
        let observed = state::<A>(&[1]);
        let mut desired = state(&[1]);
        desired.routes[0] = desired.routes[0].via(A::underlay(1));
        desired.routes[0].onlink = false;
        desired.routes[0].oif = Some(ETH0);
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(ops, vec![IpOp::ReplaceRoute(desired.routes[0])]);
    }

    fn foreign_route_at_our_destination_is_not_replaced<A: Fixture>() {
        let mut observed = IpDataplaneState::default();
        let (_, _, r) = peer::<A>(3);
        // Another route to the same destination (not our layout): not ours.
        let mut foreign = r.protocol(4);
        foreign.gateway = Some(A::underlay(9));
        observed.routes.push(foreign);
        let desired = state(&[3]);
        let ops = plan(&desired, &observed, &owner());
        assert!(!ops
            .iter()
            .any(|o| matches!(o, IpOp::ReplaceRoute(_) | IpOp::DeleteRoute(_))));
        assert_eq!(route_conflicts(&desired, &observed, &owner()), vec![r]);
    }

    fn flanneld_route_identical_but_for_protocol_is_taken_over<A: Fixture>() {
        // What flanneld leaves behind when twilld replaces it on a host.
        let mut observed = IpDataplaneState::default();
        let (_, _, r) = peer::<A>(3);
        let flanneld = r.protocol(3);
        observed.routes.push(flanneld);
        let desired = state(&[3]);
        let ops = plan(&desired, &observed, &owner());
        assert!(ops.contains(&IpOp::ReplaceRoute(r)), "{ops:?}");
        assert!(route_conflicts(&desired, &observed, &owner()).is_empty());
        let after = simulate(&observed, &ops);
        assert!(after.routes.contains(&r) && !after.routes.contains(&flanneld));
        assert!(plan(&desired, &after, &owner()).is_empty());
        // The same route through another gateway is someone else's: kept.
        let mut other = r.protocol(3);
        other.gateway = Some(A::underlay(9));
        let observed = IpDataplaneState {
            routes: vec![other],
            ..IpDataplaneState::default()
        };
        let ops = plan(&desired, &observed, &owner());
        assert!(!ops.iter().any(|o| matches!(o, IpOp::ReplaceRoute(_))));
    }

    fn routes_through_objects_come_after_their_objects<A: Fixture>() {
        let desired = nh_state::<A>(&[1, 2]);
        let ops = plan(&desired, &IpDataplaneState::default(), &owner());
        assert_eq!(ops.len(), 8, "{ops:?}");
        let first_route = ops
            .iter()
            .position(|o| matches!(o, IpOp::ReplaceRoute(_)))
            .expect("routes");
        let objects: Vec<IpOp<A>> = ops[..first_route]
            .iter()
            .filter(|o| matches!(o, IpOp::ReplaceNexthop(_)))
            .copied()
            .collect();
        let want: Vec<IpOp<A>> = desired
            .nexthops
            .iter()
            .map(|n| IpOp::ReplaceNexthop(*n))
            .collect();
        assert_eq!(objects, want);
        let after = simulate(&IpDataplaneState::default(), &ops);
        let (_, _, r1) = peer::<A>(1);
        assert!(after.routes.contains(&r1.nexthop(nh_id(1))), "{after:?}");
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn stale_object_is_deleted_after_its_route<A: Fixture>() {
        let observed = nh_state::<A>(&[1, 2]);
        let ops = plan(&nh_state(&[1]), &observed, &owner());
        let (n2, f2, r2) = peer::<A>(2);
        let (nh2, r2) = via_nexthop(r2, nh_id(2));
        assert_eq!(
            ops,
            vec![
                IpOp::DeleteNeighbour(n2),
                IpOp::DeleteFdb(f2),
                IpOp::DeleteRoute(r2),
                IpOp::DeleteNexthop(nh2),
            ]
        );
    }

    fn an_id_someone_else_holds_falls_back_to_the_gateway_route<A: Fixture>() {
        let foreign = IpNexthop::via(nh_id(1), A::elsewhere(), OTHER).protocol(4);
        let observed = IpDataplaneState {
            nexthops: vec![foreign],
            ..IpDataplaneState::default()
        };
        let desired = nh_state::<A>(&[1]);
        let ops = plan(&desired, &observed, &owner());
        let (_, _, r1) = peer::<A>(1);
        assert!(ops.contains(&IpOp::ReplaceRoute(r1)), "{ops:?}");
        assert!(
            !ops.iter()
                .any(|o| matches!(o, IpOp::ReplaceNexthop(_) | IpOp::DeleteNexthop(_))),
            "{ops:?}"
        );
        let after = simulate(&observed, &ops);
        assert_eq!(after.nexthops, vec![foreign]);
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn flanneld_route_is_taken_over_by_a_route_through_an_object<A: Fixture>() {
        let (_, _, r) = peer::<A>(3);
        let observed = IpDataplaneState {
            routes: vec![r.protocol(3)],
            ..IpDataplaneState::default()
        };
        let desired = nh_state::<A>(&[3]);
        assert!(route_conflicts(&desired, &observed, &owner()).is_empty());
        let ops = plan(&desired, &observed, &owner());
        let after = simulate(&observed, &ops);
        assert_eq!(after.routes, vec![r.nexthop(nh_id(3))]);
        assert!(plan(&desired, &after, &owner()).is_empty());
    }

    fn turning_objects_off_moves_routes_then_deletes_objects<A: Fixture>() {
        let observed = nh_state::<A>(&[1, 2]);
        let desired = state::<A>(&[1, 2]);
        let ops = plan(&desired, &observed, &owner());
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(ops[..2].iter().all(|o| matches!(o, IpOp::ReplaceRoute(_))));
        assert!(ops[2..].iter().all(|o| matches!(o, IpOp::DeleteNexthop(_))));
        let after = simulate(&observed, &ops);
        assert_eq!(after.routes, desired.routes);
        assert!(after.nexthops.is_empty());
    }

    fn routes_dumped_without_compat_mode_are_read_through_their_object<A: Fixture>() {
        let mut observed = nh_state::<A>(&[1]);
        for r in &mut observed.routes {
            (r.gateway, r.oif, r.onlink) = (None, None, false);
        }
        assert!(plan(&nh_state(&[1]), &observed, &owner()).is_empty());
    }

    fn an_object_a_foreign_route_uses_is_kept<A: Fixture>() {
        let mut observed = nh_state::<A>(&[1]);
        observed.routes[0].protocol = 4;
        let ops = plan(&IpDataplaneState::default(), &observed, &owner());
        assert!(
            !ops.iter().any(|o| matches!(o, IpOp::DeleteNexthop(_))),
            "{ops:?}"
        );
    }

    /// A nexthop id: a peer's (`nh_id`), or a low one someone else's might have.
    fn arb_nh_id() -> impl Strategy<Value = u32> {
        prop_oneof![(0u8..12).prop_map(nh_id), 1u32..4]
    }

    fn arb_nexthop<A: Fixture>() -> impl Strategy<Value = IpNexthop<A>> {
        (
            arb_nh_id(),
            prop::option::of(prop_oneof![
                (0u8..12).prop_map(A::overlay),
                Just(A::elsewhere())
            ]),
            prop_oneof![Just(DEV), Just(ETH0), Just(OTHER)],
            prop::bool::ANY,
            prop_oneof![Just(TWILL_RTPROT), Just(4u8)],
        )
            .prop_map(|(id, gateway, oif, onlink, protocol)| IpNexthop {
                id,
                gateway,
                oif: Some(oif),
                onlink,
                protocol,
            })
    }

    fn arb_route<A: Fixture>() -> impl Strategy<Value = IpRoute<A>> {
        (
            0u8..12,
            prop::bool::ANY,
            prop_oneof![Just(DEV), Just(ETH0), Just(OTHER)],
            prop_oneof![Just(TWILL_RTPROT), Just(4u8), Just(3u8)],
            prop_oneof![Just(MAIN_TABLE), Just(100u32)],
            prop::option::weighted(0.3, arb_nh_id()),
        )
            .prop_map(|(i, onlink, oif, proto, table, nexthop_id)| {
                let mut r = IpRoute::new(A::subnet(i))
                    .via(A::underlay(i))
                    .dev(oif)
                    .protocol(proto)
                    .table(table);
                r.onlink = onlink;
                r.nexthop_id = nexthop_id;
                r
            })
    }

    fn arb_neigh<A: Fixture>() -> impl Strategy<Value = IpNeighbour<A>> {
        (
            0u8..12,
            0u8..4,
            prop_oneof![Just(DEV), Just(OTHER)],
            prop::bool::ANY,
        )
            .prop_map(|(i, m, dev, perm)| IpNeighbour {
                index: dev,
                ip: A::overlay(i),
                mac: Some(mac(m)),
                permanent: perm,
            })
    }

    fn arb_fdb<A: Fixture>() -> impl Strategy<Value = IpFdbEntry<A>> {
        (
            prop_oneof![(0u8..6).prop_map(mac), Just(MacAddr([0; 6]))],
            prop::option::of(0u8..4),
            prop_oneof![Just(DEV), Just(OTHER)],
            prop::bool::ANY,
        )
            .prop_map(|(mac, dst, dev, permanent)| IpFdbEntry {
                index: dev,
                mac,
                dst: dst.map(A::underlay),
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

    /// A kernel state (no two entries the kernel would consider the same object).
    fn arb_observed<A: Fixture>() -> impl Strategy<Value = IpDataplaneState<A>> {
        (
            prop::collection::vec(arb_neigh::<A>(), 0..8),
            prop::collection::vec(arb_fdb::<A>(), 0..8),
            prop::collection::vec(arb_route::<A>(), 0..8),
            prop::collection::vec(arb_nexthop::<A>(), 0..6),
        )
            .prop_map(|(n, f, r, nh)| {
                let nexthops = dedup(nh, |a, b| a.id == b.id);
                // The kernel holds no route through an object it lacks.
                let routes = dedup(r, |a, b| (a.table, a.dst) == (b.table, b.dst))
                    .into_iter()
                    .filter(|r| {
                        r.nexthop_id
                            .is_none_or(|id| nexthops.iter().any(|n| n.id == id))
                    })
                    .collect();
                IpDataplaneState {
                    neighbours: dedup(n, |a, b| (a.index, a.ip) == (b.index, b.ip)),
                    // One entry per unicast MAC and device, as the kernel holds them.
                    fdb: dedup(f, |a, b| fdb_key(a) == fdb_key(b)),
                    routes,
                    nexthops,
                }
            })
    }

    /// What a backend wants: our device, our protocol, main table.
    fn arb_desired<A: Fixture>() -> impl Strategy<Value = IpDataplaneState<A>> {
        (
            prop::collection::btree_set(0u8..12, 0..8),
            prop::collection::vec(prop::bool::ANY, 8),
            prop::collection::vec(prop::bool::ANY, 8),
            prop::collection::vec(prop::bool::ANY, 8),
        )
            .prop_map(|(ids, direct, flood, through_object)| {
                let mut s = IpDataplaneState::default();
                for (k, i) in ids.into_iter().enumerate() {
                    let (n, f, r) = peer::<A>(i);
                    if direct[k % 8] {
                        s.routes
                            .push(IpRoute::new(r.dst).via(A::underlay(i)).dev(ETH0));
                    } else {
                        s.neighbours.push(n);
                        s.fdb.push(f);
                        if through_object[k % 8] {
                            let (nh, r) = via_nexthop(r, nh_id(i));
                            s.nexthops.push(nh);
                            s.routes.push(r);
                        } else {
                            s.routes.push(r);
                        }
                    }
                    // Head-end replication: one all-zeros entry per remote.
                    if flood[k % 8] {
                        s.fdb
                            .push(IpFdbEntry::permanent(DEV, MacAddr([0; 6]), A::underlay(i)));
                    }
                }
                s
            })
    }

    proptest! {
        #[test]
        fn plan_converges_and_never_touches_foreign_entries_v4(desired in arb_desired::<Ipv4Addr>(), observed in arb_observed::<Ipv4Addr>()) {
            plan_converges_and_never_touches_foreign_entries(&desired, &observed)?;
        }

        #[test]
        fn plan_converges_and_never_touches_foreign_entries_v6(desired in arb_desired::<Ipv6Addr>(), observed in arb_observed::<Ipv6Addr>()) {
            plan_converges_and_never_touches_foreign_entries(&desired, &observed)?;
        }
    }

    fn plan_converges_and_never_touches_foreign_entries<A: Fixture>(
        desired: &IpDataplaneState<A>,
        observed: &IpDataplaneState<A>,
    ) -> Result<(), TestCaseError> {
        let o = owner();
        let ops = plan(desired, observed, &o);
        let objects = Nexthops::new(desired, observed, &o);
        let foreign_object = |id: u32| {
            observed
                .nexthops
                .iter()
                .any(|n| n.id == id && !o.owns_nexthop(n))
        };
        // Objects before the routes through them, the routes they freed
        // before them.
        let last_object_add = ops
            .iter()
            .rposition(|op| matches!(op, IpOp::ReplaceNexthop(_)));
        let first_route = ops
            .iter()
            .position(|op| matches!(op, IpOp::ReplaceRoute(_) | IpOp::DeleteRoute(_)));
        let last_route = ops
            .iter()
            .rposition(|op| matches!(op, IpOp::ReplaceRoute(_) | IpOp::DeleteRoute(_)));
        let first_object_del = ops
            .iter()
            .position(|op| matches!(op, IpOp::DeleteNexthop(_)));
        if let (Some(a), Some(r)) = (last_object_add, first_route) {
            prop_assert!(a < r, "{:?}", ops);
        }
        if let (Some(r), Some(d)) = (last_route, first_object_del) {
            prop_assert!(r < d, "{:?}", ops);
        }
        // Deletes only ever target entries we own.
        for op in &ops {
            match op {
                IpOp::ReplaceNexthop(n) => prop_assert!(!foreign_object(n.id), "{:?}", n),
                IpOp::DeleteNexthop(n) => {
                    prop_assert!(o.owns_nexthop(n) && observed.nexthops.contains(n));
                }
                IpOp::ReplaceRoute(r) if r.nexthop_id.is_some_and(foreign_object) => {
                    prop_assert!(false, "through someone else's object: {:?}", r);
                }
                IpOp::DeleteNeighbour(n) => prop_assert!(o.owns_neighbour(n)),
                IpOp::DeleteFdb(e) => prop_assert!(o.owns_fdb(e)),
                IpOp::AppendFdb(e) => {
                    prop_assert!(!e.mac.is_unicast(), "append ignored by the kernel: {:?}", e);
                }
                IpOp::DeleteRoute(r) => prop_assert!(o.owns_route(r)),
                IpOp::ReplaceRoute(r) => {
                    // Never overwrites a foreign route at the same destination.
                    prop_assert!(!resolve_nexthops(&observed.routes, &observed.nexthops)
                        .iter()
                        .any(|h| (h.table, h.dst) == (r.table, r.dst)
                            && !o.owns_route(h)
                            && !o.adopts_route(h, r)));
                }
                _ => {}
            }
        }
        let after = simulate(observed, &ops);
        // Foreign routes and FDB entries survive untouched.
        // (but for flanneld's identical routes, which are taken over, and
        // the forwarding of one through an object of ours, which follows it).
        let observed_routes = resolve_nexthops(&observed.routes, &observed.nexthops);
        for r in observed_routes.iter().filter(|r| !o.owns_route(r)) {
            let adopted = desired
                .routes
                .iter()
                .any(|d| o.adopts_route(r, &objects.effective(d)));
            let same = |x: &IpRoute<A>| match r.nexthop_id {
                Some(id) => {
                    (x.table, x.dst, x.protocol, x.nexthop_id)
                        == (r.table, r.dst, r.protocol, Some(id))
                }
                None => x == r,
            };
            prop_assert!(
                adopted || after.routes.iter().any(same),
                "{:?} gone: {:?}",
                r,
                after.routes
            );
        }
        for n in observed.nexthops.iter().filter(|n| !o.owns_nexthop(n)) {
            prop_assert!(after.nexthops.contains(n));
        }
        // (but for the one entry of a unicast MAC we need, which is ours
        // now, and the state of a flooding entry we append to, which the
        // kernel keeps per MAC, not per dst).
        let needed: Vec<(u32, MacAddr)> = desired.fdb.iter().map(|e| (e.index, e.mac)).collect();
        for e in observed.fdb.iter().filter(|e| !o.owns_fdb(e)) {
            let shared = needed.contains(&(e.index, e.mac));
            if shared && e.mac.is_unicast() {
                continue;
            }
            prop_assert!(after
                .fdb
                .iter()
                .any(|x| x == e || (shared && (x.index, x.mac, x.dst) == (e.index, e.mac, e.dst))));
        }
        for n in observed.neighbours.iter().filter(|n| n.index != DEV) {
            prop_assert!(after.neighbours.contains(n));
        }
        // A second plan on the result is empty.
        let again = plan(desired, &after, &o);
        prop_assert!(again.is_empty(), "second pass planned {:?}", again);
        // Everything desired (and not blocked by a foreign route) is there.
        let blocked = route_conflicts(desired, observed, &o);
        for r in desired.routes.iter().filter(|r| !blocked.contains(r)) {
            let want = objects.effective(r);
            prop_assert!(
                after.routes.contains(&want),
                "{:?} missing: {:?}",
                want,
                after.routes
            );
            if let Some(id) = want.nexthop_id {
                prop_assert!(after
                    .nexthops
                    .iter()
                    .any(|n| n.id == id && o.owns_nexthop(n)));
            }
        }
        for e in &desired.fdb {
            prop_assert!(after.fdb.contains(e));
        }
        for n in &desired.neighbours {
            prop_assert!(after.neighbours.contains(n));
        }
        Ok(())
    }
}
