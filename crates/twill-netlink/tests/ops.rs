//! Every operation against a real kernel, in a fresh network namespace.

use std::net::Ipv4Addr;

use twill_netlink::{
    Address, FdbEntry, LinkChange, MacAddr, Neighbour, NetlinkHandle, Request, Route, VxlanSpec,
    MAIN_TABLE, TWILL_RTPROT,
};
use twill_testbed::netns::Netns;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("mac")
}

/// A namespace with a veth underlay `eth0` (10.0.0.2/24) and a VXLAN device.
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
    spec.port = Some(8472);
    spec.underlay = Some(eth0.index);
    spec.mtu = Some(1450);
    spec.mac = Some(mac("02:00:0a:00:00:02"));
    let dev = nl.link().add_vxlan(&spec).expect("vxlan");
    nl.link().set_up(dev.index).expect("up");
    (ns, nl, eth0.index, dev.index)
}

#[test]
fn vxlan_link_round_trips() {
    twill_testbed::require_root!();
    let ns = Netns::new("link").expect("netns");
    let mut nl = ns.netlink().expect("netlink");
    nl.link().add_veth("eth0", "eth0p").expect("veth underlay");
    let eth0 = nl.link().get_by_name("eth0").expect("eth0");
    let mut spec = VxlanSpec::new("flannel.7", 7);
    spec.local = Some(ip("10.0.0.2"));
    spec.port = Some(4789);
    spec.gbp = true;
    spec.underlay = Some(eth0.index);
    spec.mtu = Some(1400);
    spec.mac = Some(mac("02:aa:bb:cc:dd:ee"));
    let dev = nl.link().add_vxlan(&spec).expect("create");
    assert_eq!(dev.kind.as_deref(), Some("vxlan"));
    assert_eq!(dev.mtu, 1400);
    assert_eq!(dev.mac, Some(mac("02:aa:bb:cc:dd:ee")));
    assert!(!dev.up);
    let v = dev.vxlan.clone().expect("vxlan attrs");
    assert_eq!(v.vni, 7);
    assert_eq!(v.local, Some(ip("10.0.0.2")));
    assert_eq!(v.port, 4789, "IFLA_VXLAN_PORT is big-endian");
    assert!(!v.learning);
    assert!(v.gbp);
    assert_eq!(v.underlay, Some(eth0.index));

    // `ip -d link` agrees.
    let shown = ns.ip(&["-d", "link", "show", "flannel.7"]).expect("ip");
    assert!(shown.contains("vxlan id 7"), "{shown}");
    assert!(shown.contains("dstport 4789"), "{shown}");
    assert!(shown.contains("nolearning"), "{shown}");
    assert!(shown.contains("gbp"), "{shown}");

    // Duplicate create is EEXIST.
    let err = nl.link().add_vxlan(&spec).expect_err("duplicate");
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string()
            .contains("ip link add flannel.7 type vxlan id 7"),
        "{err}"
    );

    nl.link()
        .set(LinkChange {
            index: dev.index,
            up: Some(true),
            mtu: Some(1300),
            mac: Some(mac("02:11:22:33:44:55")),
            master: None,
        })
        .expect("set");
    let again = nl.link().get_by_index(dev.index).expect("get");
    assert!(again.up);
    assert_eq!(again.mtu, 1300);
    assert_eq!(again.mac, Some(mac("02:11:22:33:44:55")));
    nl.link().set_down(dev.index).expect("down");
    assert!(!nl.link().get_by_name("flannel.7").expect("get").up);

    let all = nl.link().list().expect("list");
    assert!(all
        .iter()
        .any(|l| l.name == "flannel.7" && l.vxlan.is_some()));
    assert!(all.iter().any(|l| l.name == "lo"));

    nl.link().delete(dev.index).expect("delete");
    let gone = nl.link().get_by_name("flannel.7").expect_err("gone");
    assert!(gone.is_not_found(), "{gone}");
    assert!(nl.link().find("flannel.7").expect("find").is_none());
    assert!(nl
        .link()
        .delete(dev.index)
        .expect_err("twice")
        .is_not_found());
}

#[test]
fn bridge_and_veth_round_trip() {
    twill_testbed::require_root!();
    let ns = Netns::new("brveth").expect("netns");
    let mut nl = ns.netlink().expect("netlink");
    let br = nl.link().add_bridge("cni0").expect("bridge");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    nl.link().add_veth("veth0", "veth1").expect("veth");
    let v0 = nl.link().get_by_name("veth0").expect("veth0");
    let v1 = nl.link().get_by_name("veth1").expect("veth1");
    assert_eq!(v0.kind.as_deref(), Some("veth"));
    assert_eq!(v1.kind.as_deref(), Some("veth"));
    nl.link().set_master(v0.index, br.index).expect("master");
    assert_eq!(
        nl.link().get_by_index(v0.index).expect("get").master,
        Some(br.index)
    );
    nl.link().delete(v0.index).expect("delete veth");
    assert!(
        nl.link().find("veth1").expect("find").is_none(),
        "peer goes with it"
    );
    nl.link().delete(br.index).expect("delete bridge");
}

#[test]
fn address_round_trips() {
    twill_testbed::require_root!();
    let (_ns, mut nl, _eth0, dev) = setup("addr");
    let a = Address {
        index: dev,
        addr: "10.244.3.0/32".parse().expect("net"),
    };
    nl.address().add(a).expect("add");
    assert!(nl.address().add(a).expect_err("dup").is_exists());
    assert_eq!(nl.address().list(Some(dev)).expect("list"), vec![a]);
    nl.address().delete(a).expect("del");
    assert!(nl.address().list(Some(dev)).expect("list").is_empty());
}

#[test]
fn set_only_leaves_exactly_one_address() {
    twill_testbed::require_root!();
    let (_ns, mut nl, _eth0, dev) = setup("addr-only");
    let other = |s: &str| Address {
        index: dev,
        addr: s.parse().expect("net"),
    };
    nl.address().add(other("10.244.9.0/32")).expect("add");
    nl.address().add(other("192.168.7.1/24")).expect("add");
    let want = other("10.244.3.0/32");
    assert!(nl.address().set_only(want).expect("set_only"));
    assert_eq!(nl.address().list(Some(dev)).expect("list"), vec![want]);
    assert!(!nl.address().set_only(want).expect("second set_only"));
    assert_eq!(nl.address().list(Some(dev)).expect("list"), vec![want]);
}

#[test]
fn neighbour_round_trips() {
    twill_testbed::require_root!();
    let (ns, mut nl, _eth0, dev) = setup("neigh");
    let n = Neighbour::permanent(dev, ip("10.244.5.0"), mac("6e:af:8f:41:72:26"));
    nl.neighbour().replace(n).expect("replace");
    nl.neighbour().replace(n).expect("replace is idempotent");
    let listed = nl.neighbour().list(Some(dev)).expect("list");
    assert_eq!(listed, vec![n]);
    let shown = ns.ip(&["neigh", "show", "dev", "flannel.1"]).expect("ip");
    assert!(
        shown.contains("10.244.5.0 lladdr 6e:af:8f:41:72:26 PERMANENT"),
        "{shown}"
    );
    nl.neighbour().delete(n).expect("delete");
    assert!(nl.neighbour().list(Some(dev)).expect("list").is_empty());
    assert!(nl.neighbour().delete(n).expect_err("twice").is_not_found());
}

#[test]
fn fdb_round_trips() {
    twill_testbed::require_root!();
    let (ns, mut nl, _eth0, dev) = setup("fdb");
    let e = FdbEntry::permanent(dev, mac("6e:af:8f:41:72:26"), ip("10.0.0.3"));
    nl.fdb().append(e).expect("append");
    let listed = nl.fdb().list(Some(dev)).expect("list");
    assert!(listed.contains(&e), "{listed:?}");
    let shown = ns
        .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
        .expect("bridge");
    assert!(
        shown.contains("6e:af:8f:41:72:26 dst 10.0.0.3 self permanent"),
        "{shown}"
    );
    let moved = FdbEntry {
        dst: Some(ip("10.0.0.4")),
        ..e
    };
    nl.fdb().replace(moved).expect("replace");
    let listed = nl.fdb().list(Some(dev)).expect("list");
    assert!(
        listed.contains(&moved) && !listed.contains(&e),
        "{listed:?}"
    );
    nl.fdb().delete(moved).expect("delete");
    assert!(!nl
        .fdb()
        .list(Some(dev))
        .expect("list")
        .iter()
        .any(|x| x.mac == e.mac));
    assert!(nl.fdb().delete(moved).expect_err("twice").is_not_found());
}

#[test]
fn route_round_trips_with_onlink_table_and_protocol() {
    twill_testbed::require_root!();
    let (ns, mut nl, eth0, dev) = setup("route");
    let r = Route::new("10.244.5.0/24".parse().expect("net"))
        .via(ip("10.244.5.0"))
        .dev(dev)
        .onlink();
    nl.route().replace(r).expect("replace");
    nl.route().replace(r).expect("replace is idempotent");
    let ours: Vec<Route> = nl
        .route()
        .list(Some(MAIN_TABLE))
        .expect("list")
        .into_iter()
        .filter(|x| x.protocol == TWILL_RTPROT)
        .collect();
    assert_eq!(ours, vec![r]);
    let shown = ns.ip(&["route", "show", "10.244.5.0/24"]).expect("ip");
    assert!(
        shown.contains("via 10.244.5.0 dev flannel.1 proto 241 onlink"),
        "{shown}"
    );

    let other_table = Route::new("10.9.0.0/16".parse().expect("net"))
        .via(ip("10.0.0.9"))
        .dev(eth0)
        .table(100);
    nl.route().replace(other_table).expect("table 100");
    assert_eq!(nl.route().list(Some(100)).expect("list"), vec![other_table]);
    nl.route().delete(other_table).expect("delete");
    nl.route().delete(r).expect("delete");
    assert!(!nl
        .route()
        .list(None)
        .expect("list")
        .iter()
        .any(|x| x.protocol == TWILL_RTPROT));
    assert!(nl.route().delete(r).expect_err("twice").is_not_found());
}

#[test]
fn batch_maps_each_ack_to_its_request() {
    twill_testbed::require_root!();
    let (_ns, mut nl, _eth0, dev) = setup("batch");
    nl.set_batch_size(300);
    let mut reqs = Vec::new();
    for i in 0..2500u32 {
        let net = Ipv4Addr::from(0x0a80_0000 + (i << 8));
        reqs.push(Request::RouteReplace(
            Route::new(format!("{net}/24").parse().expect("net"))
                .via(net)
                .dev(dev)
                .onlink(),
        ));
    }
    // Index 1234: deleting a route that does not exist -> ESRCH, only there.
    reqs[1234] = Request::RouteDelete(Route::new("10.99.0.0/24".parse().expect("net")).dev(dev));
    let out = nl.execute(&reqs).expect("execute");
    assert_eq!(out.results.len(), 2500);
    let errs: Vec<(usize, i32)> = out
        .errors()
        .map(|(i, e)| (i, e.errno().unwrap_or(0)))
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, 1234);
    assert!(out.results[1234].as_ref().expect_err("err").is_not_found());
    assert_eq!(out.ok_count(), 2499);
    let ours = nl
        .route()
        .list(None)
        .expect("list")
        .into_iter()
        .filter(|r| r.protocol == TWILL_RTPROT)
        .count();
    assert_eq!(ours, 2499);
    assert!(out.ok_ignoring_exists_and_missing().is_ok());
}

/// `ip route add` creates only where no route is: a second add, and an add
/// over someone else's route at the same destination, are refused with
/// `EEXIST` and leave what is there.
#[test]
fn route_add_is_exclusive() {
    twill_testbed::require_root!();
    let (ns, mut nl, eth0, dev) = setup("routeadd");
    let r = Route::new("10.244.6.0/24".parse().expect("net"))
        .via(ip("10.244.6.0"))
        .dev(dev)
        .onlink();
    let foreign = Route::new("10.244.7.0/24".parse().expect("net"))
        .via(ip("10.0.0.9"))
        .dev(eth0);
    ns.ip(&[
        "route",
        "add",
        "10.244.7.0/24",
        "via",
        "10.0.0.9",
        "dev",
        "eth0",
    ])
    .expect("a route twill did not make");
    let ours_there = Route::new("10.244.7.0/24".parse().expect("net"))
        .via(ip("10.244.7.0"))
        .dev(dev)
        .onlink();
    let out = nl
        .execute(&[
            Request::route_add(r),
            Request::route_add(r),
            Request::route_add(ours_there),
        ])
        .expect("execute");
    assert!(out.results[0].is_ok(), "{:?}", out.results[0]);
    assert!(out.results[1].as_ref().expect_err("twice").is_exists());
    assert!(out.results[2].as_ref().expect_err("foreign").is_exists());
    assert_eq!(
        Request::route_add(r).to_string(),
        format!("ip route add {r}")
    );
    let table = nl.route().list(Some(MAIN_TABLE)).expect("list");
    assert!(table.contains(&r), "{table:?}");
    let at7: Vec<&Route> = table.iter().filter(|x| x.dst == foreign.dst).collect();
    assert_eq!(at7.len(), 1, "{at7:?}");
    assert_eq!(at7[0].gateway, Some(ip("10.0.0.9")), "{at7:?}");
}
