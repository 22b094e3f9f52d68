//! Nexthop objects and routes through them, against a real kernel in a
//! fresh network namespace, checked against what iproute2 shows.

use std::net::{Ipv4Addr, Ipv6Addr};

use twill_netlink::{
    Address, MacAddr, NetlinkHandle, Nexthop, Nexthop6, Request, Route, VxlanSpec, TWILL_RTPROT,
};
use twill_testbed::netns::Netns;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// A namespace with a veth underlay `eth0` (10.0.0.2/24) and `flannel.1` up.
fn setup(label: &str) -> (Netns, NetlinkHandle, u32, u32) {
    let ns = Netns::new(label).expect("netns");
    let mut nl = ns.netlink().expect("netlink");
    nl.link().add_veth("eth0", "eth0p").expect("veth underlay");
    let eth0 = nl.link().get_by_name("eth0").expect("eth0");
    nl.link().set_up(eth0.index).expect("up");
    nl.address()
        .add(Address {
            index: eth0.index,
            addr: "10.0.0.2/24".parse().expect("net"),
        })
        .expect("addr");
    let mut spec = VxlanSpec::new("flannel.1", 1);
    spec.local = Some(ip("10.0.0.2"));
    spec.underlay = Some(eth0.index);
    spec.mac = Some("02:00:0a:00:00:02".parse::<MacAddr>().expect("mac"));
    let dev = nl.link().add_vxlan(&spec).expect("vxlan");
    nl.link().set_up(dev.index).expect("up");
    (ns, nl, eth0.index, dev.index)
}

#[test]
fn nexthop_and_route_through_it_round_trip() {
    twill_testbed::require_root!();
    let (ns, mut nl, _, dev) = setup("nh-rt");
    let nh = Nexthop::via(1000, ip("10.244.1.0"), dev).onlink();
    nl.nexthop().replace(nh).expect("nexthop replace");
    assert_eq!(nl.nexthop().list().expect("dump"), vec![nh]);
    let shown = ns.ip(&["nexthop", "show"]).expect("ip nexthop");
    assert!(
        shown.contains("id 1000 via 10.244.1.0 dev flannel.1 scope link proto 241 onlink"),
        "{shown}"
    );
    // Replacing an object that exists is success, not EEXIST.
    nl.nexthop().replace(nh).expect("replace again");

    let route = Route::new("10.244.1.0/24".parse().expect("net")).nexthop(1000);
    nl.route().replace(route).expect("route through it");
    let shown = ns
        .ip(&["route", "show", "10.244.1.0/24"])
        .expect("ip route");
    assert!(shown.contains("nhid 1000"), "{shown}");
    assert!(shown.contains("proto 241"), "{shown}");
    let dumped: Vec<Route> = nl
        .route()
        .list(None)
        .expect("routes")
        .into_iter()
        .filter(|r| r.nexthop_id.is_some())
        .collect();
    assert_eq!(dumped.len(), 1, "{dumped:?}");
    let got = dumped[0];
    assert_eq!(
        (got.dst, got.nexthop_id, got.protocol),
        (route.dst, Some(1000), TWILL_RTPROT)
    );
    // With net.ipv4.nexthop_compat_mode on (the default) the dump carries
    // the object's forwarding beside the id.
    assert_eq!(
        (got.gateway, got.oif, got.onlink),
        (Some(ip("10.244.1.0")), Some(dev), true)
    );

    // The route follows its object when the object changes in place.
    let moved = Nexthop::via(1000, ip("10.244.1.1"), dev).onlink();
    nl.nexthop().replace(moved).expect("move");
    let shown = ns
        .ip(&["route", "show", "10.244.1.0/24"])
        .expect("ip route");
    assert!(shown.contains("via 10.244.1.1"), "{shown}");

    // A route is deleted by its id, as dumped.
    nl.route().delete(got).expect("route del");
    assert!(ns
        .ip(&["route", "show", "10.244.1.0/24"])
        .expect("ip")
        .trim()
        .is_empty());
    nl.nexthop().delete(moved).expect("nexthop del");
    assert!(nl.nexthop().list().expect("dump").is_empty());
    let err = nl.nexthop().delete(moved).expect_err("gone");
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn deleting_an_object_deletes_the_routes_through_it() {
    twill_testbed::require_root!();
    let (ns, mut nl, _, dev) = setup("nh-del");
    let nh = Nexthop::via(7, ip("10.244.7.0"), dev).onlink();
    let route = Route::new("10.244.7.0/24".parse().expect("net")).nexthop(7);
    nl.execute(&[Request::NexthopReplace(nh), Request::RouteReplace(route)])
        .expect("batch")
        .ok()
        .expect("accepted");
    nl.nexthop().delete(nh).expect("del");
    let shown = ns.ip(&["route", "show", "10.244.7.0/24"]).expect("ip");
    assert!(shown.trim().is_empty(), "{shown}");
}

#[test]
fn a_route_through_a_missing_object_is_refused_with_its_errno() {
    twill_testbed::require_root!();
    let (_ns, mut nl, _, _) = setup("nh-missing");
    let route = Route::new("10.244.9.0/24".parse().expect("net")).nexthop(4242);
    let err = nl.route().replace(route).expect_err("no such object");
    assert_eq!(err.errno(), Some(22), "EINVAL: {err}");
    assert!(err.to_string().contains("nhid 4242"), "{err}");
}

#[test]
fn objects_iproute2_made_read_without_a_gateway_of_ours() {
    twill_testbed::require_root!();
    let (ns, mut nl, eth0, _) = setup("nh-others");
    // The kernel refuses an object on a device without carrier.
    ns.ip(&["link", "set", "eth0p", "up"]).expect("peer up");
    ns.ip(&[
        "nexthop", "add", "id", "1", "via", "10.0.0.1", "dev", "eth0",
    ])
    .expect("single");
    ns.ip(&["nexthop", "add", "id", "2", "group", "1"])
        .expect("group");
    ns.ip(&["nexthop", "add", "id", "3", "blackhole"])
        .expect("blackhole");
    ns.ip(&["-6", "addr", "add", "fd00::2/64", "dev", "eth0", "nodad"])
        .expect("v6 addr");
    ns.ip(&[
        "-6", "nexthop", "add", "id", "4", "via", "fd00::1", "dev", "eth0",
    ])
    .expect("v6 single");
    let mut v4 = nl.nexthop().list().expect("dump");
    v4.sort();
    let ids: Vec<u32> = v4.iter().map(|n| n.id).collect();
    assert_eq!(ids, [1, 2, 3, 4], "every id is seen: {v4:?}");
    assert_eq!(v4[0].gateway, Some(ip("10.0.0.1")));
    assert_eq!(v4[0].oif, Some(eth0));
    assert!(v4[0].protocol != TWILL_RTPROT, "{:?}", v4[0]);
    assert_eq!((v4[1].gateway, v4[1].oif), (None, None), "group");
    assert_eq!((v4[2].gateway, v4[2].oif), (None, None), "blackhole");
    assert_eq!(v4[3].gateway, None, "an IPv6 gateway is not an IPv4 one");
    let v6: Vec<Nexthop6> = nl.nexthop().list6().expect("dump6");
    let four = v6.iter().find(|n| n.id == 4).expect("id 4");
    assert_eq!(
        four.gateway,
        Some("fd00::1".parse::<Ipv6Addr>().expect("ip"))
    );
    assert!(v6.iter().filter(|n| n.id != 4).all(|n| n.gateway.is_none()));
}

#[test]
fn ten_thousand_objects_and_routes_go_in_one_batch() {
    twill_testbed::require_root!();
    let (ns, mut nl, _, dev) = setup("nh-batch");
    let mut requests = Vec::new();
    for i in 0..10_000u32 {
        let subnet = Ipv4Addr::from(u32::from(ip("10.128.0.0")) + (i << 8));
        let id = u32::from(subnet);
        requests.push(Request::NexthopReplace(
            Nexthop::via(id, subnet, dev).onlink(),
        ));
        requests.push(Request::RouteReplace(
            Route::new(ipnetwork::Ipv4Network::new(subnet, 24).expect("net")).nexthop(id),
        ));
    }
    nl.execute(&requests)
        .expect("batch")
        .ok()
        .expect("accepted");
    assert_eq!(nl.nexthop().list().expect("dump").len(), 10_000);
    let routes = nl.route().list(None).expect("routes");
    assert_eq!(
        routes.iter().filter(|r| r.nexthop_id.is_some()).count(),
        10_000
    );
    let shown = ns.ip(&["route", "show", "10.128.5.0/24"]).expect("ip");
    assert!(
        shown.contains(&format!("nhid {}", u32::from(ip("10.128.5.0")))),
        "{shown}"
    );
}
