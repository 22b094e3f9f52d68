//! The pure step of reconcile: `plan(desired, observed, owner) -> Vec<Op>`.
//!
//! No IO. [`plan`] compares what the peers require with what the kernel
//! reported and returns the operations that turn one into the other,
//! touching only entries that [`Owner`] says are ours.

use std::collections::BTreeMap;

use twill_netlink::{FdbEntry, MacAddr, Neighbour, Request, Route};

/// What the kernel should hold for the current set of peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneState {
    /// Permanent ARP entries.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries (`self`, with `dst`).
    pub fdb: Vec<FdbEntry>,
    /// Routes.
    pub routes: Vec<Route>,
}

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
    pub fn owns_neighbour(&self, n: &Neighbour) -> bool {
        self.device == Some(n.index) && n.permanent
    }

    /// Whether an FDB entry is ours.
    #[must_use]
    pub fn owns_fdb(&self, e: &FdbEntry) -> bool {
        self.device == Some(e.index) && e.dst.is_some()
    }

    /// Whether a route is ours.
    #[must_use]
    pub fn owns_route(&self, r: &Route) -> bool {
        r.protocol == self.protocol
            && r.table == self.table
            && r.oif.is_some_and(|o| self.route_oifs.contains(&o))
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Add or replace a permanent ARP entry.
    ReplaceNeighbour(Neighbour),
    /// Remove an ARP entry.
    DeleteNeighbour(Neighbour),
    /// Add an FDB entry.
    AppendFdb(FdbEntry),
    /// Remove an FDB entry.
    DeleteFdb(FdbEntry),
    /// Add or replace a route.
    ReplaceRoute(Route),
    /// Remove a route.
    DeleteRoute(Route),
}

impl Op {
    /// The netlink request carrying this op out.
    #[must_use]
    pub fn to_request(&self) -> Request {
        match *self {
            Op::ReplaceNeighbour(n) => Request::NeighbourReplace(n),
            Op::DeleteNeighbour(n) => Request::NeighbourDelete(n),
            Op::AppendFdb(e) => Request::FdbAppend(e),
            Op::DeleteFdb(e) => Request::FdbDelete(e),
            Op::ReplaceRoute(r) => Request::RouteReplace(r),
            Op::DeleteRoute(r) => Request::RouteDelete(r),
        }
    }

    /// Whether this op removes something.
    #[must_use]
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DeleteNeighbour(_) | Op::DeleteFdb(_) | Op::DeleteRoute(_)
        )
    }
}

type NeighKey = (u32, std::net::Ipv4Addr);
type FdbKey = (u32, MacAddr, Option<std::net::Ipv4Addr>);
type RouteKey = (u32, ipnetwork::Ipv4Network);

/// Compares `desired` with `observed` and returns the ops that make the
/// kernel match, in a safe order (adds and replaces, then deletes).
///
/// Guarantees (property-tested): observed entries that `owner` does not own
/// are never the subject of an op; applying the ops and planning again
/// yields no ops; desired entries that already exist identically yield no op.
/// Desired entries are normalised (permanent, our protocol is whatever the
/// caller set); duplicates in `desired` collapse, the last one winning.
#[must_use]
pub fn plan(desired: &DataplaneState, observed: &DataplaneState, owner: &Owner) -> Vec<Op> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();

    // Neighbours, keyed by (device, ip).
    let want: BTreeMap<NeighKey, Neighbour> = desired
        .neighbours
        .iter()
        .map(|n| {
            (
                (n.index, n.ip),
                Neighbour {
                    permanent: true,
                    ..*n
                },
            )
        })
        .collect();
    let have: BTreeMap<NeighKey, &Neighbour> = observed
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
            _ => adds.push(Op::ReplaceNeighbour(*n)),
        }
    }
    for (k, h) in &have {
        if !want.contains_key(k) && owner.owns_neighbour(h) {
            dels.push(Op::DeleteNeighbour(**h));
        }
    }

    // FDB, keyed by (device, mac, dst).
    let want: BTreeMap<FdbKey, FdbEntry> = desired
        .fdb
        .iter()
        .map(|e| {
            (
                (e.index, e.mac, e.dst),
                FdbEntry {
                    permanent: true,
                    ..*e
                },
            )
        })
        .collect();
    let have: BTreeMap<FdbKey, &FdbEntry> = observed
        .fdb
        .iter()
        .filter(|e| owner.owns_fdb(e))
        .map(|e| ((e.index, e.mac, e.dst), e))
        .collect();
    for (k, e) in &want {
        if !have.contains_key(k) {
            adds.push(Op::AppendFdb(*e));
        }
    }
    for (k, e) in &have {
        if !want.contains_key(k) {
            dels.push(Op::DeleteFdb(**e));
        }
    }

    // Routes, keyed by (table, dst).
    let want: BTreeMap<RouteKey, Route> = desired
        .routes
        .iter()
        .map(|r| ((r.table, r.dst), *r))
        .collect();
    let mut have: BTreeMap<RouteKey, Vec<&Route>> = BTreeMap::new();
    for r in &observed.routes {
        have.entry((r.table, r.dst)).or_default().push(r);
    }
    for (k, r) in &want {
        let observed_here = have.get(k).map(Vec::as_slice).unwrap_or_default();
        let present = observed_here.contains(&r);
        // Never replace someone else's route: that destination is reported
        // by `route_conflicts` instead.
        let foreign = observed_here.iter().any(|h| !owner.owns_route(h));
        if !present && !foreign {
            adds.push(Op::ReplaceRoute(*r));
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
                _ => dels.push(Op::DeleteRoute(**r)),
            }
        }
    }

    adds.extend(dels);
    adds
}

/// Desired routes that [`plan`] will not program because a route we do not
/// own already holds the same destination in the same table.
#[must_use]
pub fn route_conflicts(
    desired: &DataplaneState,
    observed: &DataplaneState,
    owner: &Owner,
) -> Vec<Route> {
    desired
        .routes
        .iter()
        .filter(|r| {
            observed
                .routes
                .iter()
                .any(|h| (h.table, h.dst) == (r.table, r.dst) && !owner.owns_route(h))
        })
        .copied()
        .collect()
}

/// Applies `ops` to a model of the kernel (for tests): what the kernel
/// would hold afterwards, given it held `state`.
#[must_use]
pub fn simulate(state: &DataplaneState, ops: &[Op]) -> DataplaneState {
    let mut s = state.clone();
    for op in ops {
        match *op {
            Op::ReplaceNeighbour(n) => {
                s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip));
                s.neighbours.push(n);
            }
            Op::DeleteNeighbour(n) => s.neighbours.retain(|x| (x.index, x.ip) != (n.index, n.ip)),
            Op::AppendFdb(e) => {
                if !s
                    .fdb
                    .iter()
                    .any(|x| (x.index, x.mac, x.dst) == (e.index, e.mac, e.dst))
                {
                    s.fdb.push(e);
                }
            }
            Op::DeleteFdb(e) => s
                .fdb
                .retain(|x| (x.index, x.mac, x.dst) != (e.index, e.mac, e.dst)),
            Op::ReplaceRoute(r) => {
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
            Op::DeleteRoute(r) => {
                if let Some(pos) = s.routes.iter().position(|x| *x == r) {
                    s.routes.remove(pos);
                }
            }
        }
    }
    s
}
