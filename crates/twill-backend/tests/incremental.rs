//! `Backend::apply_changes`, the lease-event path, against a real kernel:
//! it programs exactly what a full pass would, never replaces a route it
//! did not make, and sends the caller to a full pass whenever the changed
//! peers alone cannot decide.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::{bring_up, config, lease, refs, vxlan_attrs};
use twill_backend::{Backend, HostGwBackend, PeerChange, SkipReason, VxlanBackend, VxlanOptions};
use twill_model::{LeaseAttrs, SubnetLease};
use twill_testbed::netns::Lan;

/// Peer `i`: subnet 10.244.`i`.0/24, PublicIP 10.1.0.`i`, VTEP MAC ..:`i`.
fn peer(i: u8) -> SubnetLease {
    lease(
        &format!("10.244.{i}.0/24"),
        vxlan_attrs(
            Ipv4Addr::new(10, 1, 0, i),
            &format!("0e:00:00:00:00:{i:02x}"),
        ),
    )
}

fn added(l: &SubnetLease) -> PeerChange<'_> {
    PeerChange {
        key: l.key,
        lease: Some(l),
    }
}

fn removed(l: &SubnetLease) -> PeerChange<'static> {
    PeerChange {
        key: l.key,
        lease: None,
    }
}

/// A VXLAN backend on `h` (subnet 10.244.1.0/24) after a full pass over
/// `peers`, and that pass's report.
async fn vxlan_after_a_full_pass(
    h: &twill_testbed::netns::Host,
    peers: &[SubnetLease],
) -> (VxlanBackend, twill_backend::ReconcileReport) {
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let mut b = VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("nl"));
    bring_up(&mut b, h, &cfg, 1).await;
    let first = b.reconcile(&refs(peers)).await.expect("full");
    (b, first)
}

#[tokio::test]
async fn vxlan_events_program_only_the_changed_peers_and_match_a_full_pass() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let mut b = VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("nl"));
    bring_up(&mut b, h, &cfg, 1).await;
    assert_eq!(
        b.apply_changes(&[added(&peer(2))])
            .await
            .expect("no pass yet"),
        None,
        "before any full pass the backend knows nothing to plan against"
    );
    let mut peers: Vec<SubnetLease> = (2..=101).map(peer).collect();
    let full = b.reconcile(&refs(&peers)).await.expect("full");
    // Three entries per peer, four where the kernel has nexthop objects
    // (its route goes through one).
    let per_peer = full.planned / 100;
    assert!(per_peer == 3 || per_peer == 4, "{full:?}");
    assert_eq!(
        (full.planned, full.applied),
        (100 * per_peer, 100 * per_peer),
        "{full:?}"
    );

    // A new peer: its three entries, nothing else.
    let new = peer(150);
    let r = b
        .apply_changes(&[added(&new)])
        .await
        .expect("add")
        .expect("incremental");
    assert_eq!((r.planned, r.applied), (per_peer, per_peer), "{r:?}");
    peers.push(new.clone());
    let routes = h.ns.ip(&["route", "show", "10.244.150.0/24"]).expect("ip");
    assert!(
        routes.contains("via 10.244.150.0 dev flannel.1 proto 241 onlink"),
        "{routes}"
    );

    // A peer re-installed: new VTEP MAC and PublicIP. A peer gone.
    let moved = lease(
        "10.244.5.0/24",
        vxlan_attrs(Ipv4Addr::new(10, 1, 1, 5), "0e:00:00:00:01:05"),
    );
    let gone = peer(7);
    let r = b
        .apply_changes(&[added(&moved), removed(&gone)])
        .await
        .expect("change")
        .expect("incremental");
    assert!(r.failed.is_empty() && r.skipped.is_empty(), "{r:?}");
    peers.retain(|p| p.key != gone.key && p.key != moved.key);
    peers.push(moved);
    let fdb =
        h.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .expect("fdb");
    assert!(
        fdb.contains("0e:00:00:00:01:05 dst 10.1.1.5 self permanent"),
        "{fdb}"
    );
    assert!(
        !fdb.contains("0e:00:00:00:00:05 "),
        "old MAC left behind: {fdb}"
    );
    assert!(
        !fdb.contains("0e:00:00:00:00:07 "),
        "removed peer left behind: {fdb}"
    );
    let neigh =
        h.ns.ip(&["neigh", "show", "10.244.5.0", "dev", "flannel.1"])
            .expect("neigh");
    assert!(
        neigh.contains("lladdr 0e:00:00:00:01:05 PERMANENT"),
        "{neigh}"
    );
    assert!(h
        .ns
        .ip(&["route", "show", "10.244.7.0/24"])
        .expect("ip")
        .trim()
        .is_empty());

    // Exactly what a full pass wants: it has nothing left to do.
    let again = b.reconcile(&refs(&peers)).await.expect("full");
    assert_eq!(again.planned, 0, "{again:?}");

    // An invalid new lease is skipped by the event path itself.
    let mut bad = peer(160);
    bad.attrs.backend_data =
        Some(serde_json::json!({"VNI": 1, "VtepMAC": "ff:ff:ff:ff:ff:ff"}).into());
    let r = b
        .apply_changes(&[added(&bad)])
        .await
        .expect("bad")
        .expect("incremental");
    assert_eq!((r.planned, r.skipped.len()), (0, 1), "{r:?}");

    // A new peer taking a MAC another holds: the claim order decides.
    let clone = lease(
        "10.244.170.0/24",
        vxlan_attrs(Ipv4Addr::new(10, 1, 0, 170), "0e:00:00:00:00:02"),
    );
    assert_eq!(
        b.apply_changes(&[added(&clone)]).await.expect("clone"),
        None
    );
}

#[tokio::test]
async fn an_event_never_replaces_a_route_it_did_not_make() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let mut peers: Vec<SubnetLease> = (2..=4).map(peer).collect();
    let (mut b, first) = vxlan_after_a_full_pass(h, &peers).await;
    let per_peer = first.planned / 3;

    // Someone's route where a new peer's will go, made after the full pass.
    h.ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.0.0.9",
        "dev",
        &h.underlay,
    ])
    .expect("foreign route");
    let new = peer(9);
    assert_eq!(
        b.apply_changes(&[added(&new)]).await.expect("add"),
        None,
        "the exclusive add met the route: a full pass must decide"
    );
    let route = h.ns.ip(&["route", "show", "10.244.9.0/24"]).expect("ip");
    assert_eq!(
        route.trim(),
        format!("10.244.9.0/24 via 10.0.0.9 dev {}", h.underlay)
    );
    peers.push(new);
    let full = b.reconcile(&refs(&peers)).await.expect("full");
    assert!(
        full.skipped
            .iter()
            .any(|(k, r)| k.to_string() == "10.244.9.0-24"
                && matches!(r, SkipReason::ForeignRoute(_))),
        "{full:?}"
    );
    // While the foreign route stands, every event takes a full pass...
    let other = peer(10);
    assert_eq!(
        b.apply_changes(&[added(&other)]).await.expect("other"),
        None
    );
    // ...and once it is gone, a full pass programs the peer and events are
    // incremental again.
    h.ns.ip(&["route", "del", "10.244.9.0/24", "via", "10.0.0.9"])
        .expect("del");
    peers.push(other);
    let full = b.reconcile(&refs(&peers)).await.expect("full");
    assert!(full.skipped.is_empty(), "{full:?}");
    let last = peer(11);
    let r = b
        .apply_changes(&[added(&last)])
        .await
        .expect("last")
        .expect("incremental");
    assert_eq!(r.applied, per_peer, "{r:?}");
}

#[tokio::test]
async fn host_gw_events_route_and_unroute_one_peer() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let cfg = config(r#"{"Type":"host-gw"}"#);
    let mut b = HostGwBackend::with_handle(h.ns.netlink().expect("nl"));
    bring_up(&mut b, h, &cfg, 1).await;
    let gw = |i: u8, ip: u8| {
        lease(
            &format!("10.244.{i}.0/24"),
            LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, ip), "host-gw"),
        )
    };
    let mut peers = vec![gw(2, 3), gw(3, 4)];
    let full = b.reconcile(&refs(&peers)).await.expect("full");
    assert_eq!(full.applied, 2, "{full:?}");

    let new = gw(4, 5);
    let r = b
        .apply_changes(&[added(&new)])
        .await
        .expect("add")
        .expect("incremental");
    assert_eq!((r.planned, r.applied), (1, 1), "{r:?}");
    let route = h.ns.ip(&["route", "show", "10.244.4.0/24"]).expect("ip");
    assert_eq!(
        route.trim(),
        format!("10.244.4.0/24 via 10.0.0.5 dev {} proto 241", h.underlay)
    );
    // Off our segment: skipped, not routed.
    let far = lease(
        "10.244.5.0/24",
        LeaseAttrs::new(Ipv4Addr::new(192, 168, 50, 5), "host-gw"),
    );
    let r = b
        .apply_changes(&[added(&far)])
        .await
        .expect("far")
        .expect("incremental");
    assert!(
        matches!(r.skipped[..], [(_, SkipReason::NotOnSegment { .. })]),
        "{r:?}"
    );
    let r = b
        .apply_changes(&[removed(&peers[0])])
        .await
        .expect("remove")
        .expect("incremental");
    assert_eq!(r.applied, 1, "{r:?}");
    peers.remove(0);
    peers.extend([new, far]);
    assert!(h
        .ns
        .ip(&["route", "show", "10.244.2.0/24"])
        .expect("ip")
        .trim()
        .is_empty());
    assert_eq!(b.reconcile(&refs(&peers)).await.expect("full").planned, 0);
}

/// Someone else's nexthop object holding the id a new peer's route would
/// use: the event path's exclusive create is refused, no route is sent
/// through the object, and the full pass it asks for decides (flannel's
/// gateway route for that peer).
#[tokio::test]
async fn an_event_never_takes_over_a_nexthop_object_it_did_not_make() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let mut peers: Vec<SubnetLease> = (2..=4).map(peer).collect();
    let (mut b, first) = vxlan_after_a_full_pass(h, &peers).await;
    // The kernels twill is tested on have nexthop objects (4 ops a peer).
    assert_eq!(first.planned, 12, "{first:?}");
    let new = peer(12);
    let id = twill_backend::plan::peer_nexthop_id(new.key.ipv4).expect("id");
    h.ns.ip(&[
        "nexthop",
        "add",
        "id",
        &id.to_string(),
        "via",
        "10.0.0.9",
        "dev",
        &h.underlay,
    ])
    .expect("someone else's object");
    assert_eq!(b.apply_changes(&[added(&new)]).await.expect("add"), None);
    let object =
        h.ns.ip(&["nexthop", "show", "id", &id.to_string()])
            .expect("show");
    assert!(object.contains("via 10.0.0.9"), "{object}");
    let route =
        h.ns.ip(&["route", "show", "10.244.12.0/24"])
            .expect("route");
    assert!(
        route.trim().is_empty(),
        "nothing sent through the object: {route}"
    );
    peers.push(new);
    b.reconcile(&refs(&peers)).await.expect("full");
    let route =
        h.ns.ip(&["route", "show", "10.244.12.0/24"])
            .expect("route");
    assert!(route.contains("via 10.244.12.0 dev flannel.1"), "{route}");
    assert!(!route.contains("nhid"), "{route}");
}
