//! `converge` against a real kernel: what the report says for ops the kernel
//! refuses (issue 12, bug 3).

mod common;

use common::underlay;
use twill_backend::{converge, DataplaneState, Owner, ReconcileReport, Request};
use twill_netlink::{FdbEntry, MacAddr, Route, VxlanSpec, MAIN_TABLE, TWILL_RTPROT};
use twill_testbed::netns::Lan;

const ENETUNREACH: i32 = 101;
const ENODEV: i32 = 19;
const ENETDOWN: i32 = 100;

fn net(s: &str) -> ipnetwork::Ipv4Network {
    s.parse().expect("net")
}

/// Routes the kernel refuses are failures with their errno, never counted
/// as applied: before the fix, `ENODEV` (a device gone between the dump and
/// the batch) was treated like "not found" and reported as applied.
#[test]
fn refused_route_adds_are_failed_not_applied() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let eth0 = underlay(h).index;
    // A device that exists but is down: the kernel refuses a nexthop on it.
    h.ns.ip(&[
        "link", "add", "down0", "type", "veth", "peer", "name", "down1",
    ])
    .expect("veth");
    let mut nl = h.ns.netlink().expect("netlink");
    let down0 = nl.link().get_by_name("down0").expect("down0").index;
    // An interface index nothing has.
    let gone = 999_999;
    let good = Route::new(net("10.244.2.0/24"))
        .via("10.0.0.3".parse().expect("ip"))
        .dev(eth0);
    let no_device = Route::new(net("10.244.3.0/24"))
        .via("10.244.3.0".parse().expect("ip"))
        .dev(gone)
        .onlink();
    let unreachable_gw = Route::new(net("10.244.4.0/24"))
        .via("192.168.77.1".parse().expect("ip"))
        .dev(eth0);
    let device_down = Route::new(net("10.244.5.0/24"))
        .via("10.244.5.0".parse().expect("ip"))
        .dev(down0)
        .onlink();
    let desired = DataplaneState {
        routes: vec![good, no_device, unreachable_gw, device_down],
        ..DataplaneState::default()
    };
    let owner = Owner {
        device: None,
        protocol: TWILL_RTPROT,
        table: MAIN_TABLE,
        route_oifs: vec![eth0, gone, down0],
    };
    let mut report = ReconcileReport::default();
    converge(&mut nl, &desired, &owner, &mut report).expect("converge");
    assert_eq!(report.planned, 4, "{report:?}");
    assert_eq!(
        report.applied, 1,
        "only the good route is applied: {report:?}"
    );
    assert_eq!(report.failed.len(), 3, "{report:?}");
    for (dst, errno) in [
        ("10.244.3.0/24", ENODEV),
        ("10.244.4.0/24", ENETUNREACH),
        ("10.244.5.0/24", ENETDOWN),
    ] {
        let f = report
            .failed
            .iter()
            .find(|f| matches!(f.request, Request::RouteReplace(r) if r.dst.to_string() == dst))
            .unwrap_or_else(|| panic!("{dst} not in failed: {report:?}"));
        assert_eq!(f.errno, Some(errno), "errno kept: {f}");
        // As the netlink error said it (daemon logs show this line).
        let line = f.to_string();
        assert!(line.starts_with("ip route replace"), "request kept: {line}");
        assert!(
            line.ends_with(&format!("(errno {errno})")),
            "errno kept: {line}"
        );
    }
    let routes = h.ns.ip(&["route", "show", "proto", "241"]).expect("routes");
    assert_eq!(routes.trim(), "10.244.2.0/24 via 10.0.0.3 dev eth0");

    // Nothing changed: the refused routes are planned (and refused) again,
    // the good one is not.
    let mut again = ReconcileReport::default();
    converge(&mut nl, &desired, &owner, &mut again).expect("again");
    assert_eq!((again.planned, again.applied), (3, 0), "{again:?}");
    assert_eq!(again.failed.len(), 3, "{again:?}");
}

/// FDB entries as the kernel dumps them compare equal to what was planned:
/// unicast MACs (one `dst` each) and the all-zeros flooding MAC (one `dst`
/// per remote, appended). A second pass plans and applies nothing.
#[test]
fn fdb_entries_reach_a_steady_state() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let eth0 = underlay(h);
    let mut nl = h.ns.netlink().expect("netlink");
    let dev = nl
        .link()
        .add_vxlan(&VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: eth0.addr,
            local6: None,
            port: None,
            learning: false,
            gbp: false,
            mtu: None,
            mac: None,
            underlay: Some(eth0.index),
        })
        .expect("vxlan")
        .index;
    let ip = |s: &str| s.parse().expect("ip");
    let zero = MacAddr([0; 6]);
    let unicast = |i: u8, d: &str| FdbEntry::permanent(dev, MacAddr([0x0e, 0, 0, 0, 0, i]), ip(d));
    let desired = DataplaneState {
        fdb: vec![
            unicast(2, "10.0.0.3"),
            unicast(3, "10.0.0.4"),
            FdbEntry::permanent(dev, zero, ip("10.0.0.3")),
            FdbEntry::permanent(dev, zero, ip("10.0.0.4")),
        ],
        ..DataplaneState::default()
    };
    let owner = Owner {
        device: Some(dev),
        protocol: TWILL_RTPROT,
        table: MAIN_TABLE,
        route_oifs: vec![dev],
    };
    let mut first = ReconcileReport::default();
    converge(&mut nl, &desired, &owner, &mut first).expect("converge");
    assert_eq!((first.planned, first.applied), (4, 4), "{first:?}");
    let fdb =
        h.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .expect("fdb");
    assert_eq!(
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        4,
        "{fdb}"
    );
    for pass in 0..2 {
        let mut r = ReconcileReport::default();
        converge(&mut nl, &desired, &owner, &mut r).expect("again");
        assert_eq!((r.planned, r.applied), (0, 0), "pass {pass}: {r:?}");
    }
    // One flooding remote gone, one unicast MAC moved: one delete, one replace.
    let moved = DataplaneState {
        fdb: vec![
            unicast(2, "10.0.0.5"),
            unicast(3, "10.0.0.4"),
            FdbEntry::permanent(dev, zero, ip("10.0.0.3")),
        ],
        ..DataplaneState::default()
    };
    let mut r = ReconcileReport::default();
    converge(&mut nl, &moved, &owner, &mut r).expect("moved");
    assert_eq!((r.planned, r.applied), (2, 2), "{r:?}");
    let mut listed = nl.fdb().list(Some(dev)).expect("list");
    listed.retain(|e| e.dst.is_some());
    listed.sort();
    let mut want = moved.fdb.clone();
    want.sort();
    assert_eq!(listed, want);
    let mut r = ReconcileReport::default();
    converge(&mut nl, &moved, &owner, &mut r).expect("again");
    assert_eq!((r.planned, r.applied), (0, 0), "{r:?}");
}
