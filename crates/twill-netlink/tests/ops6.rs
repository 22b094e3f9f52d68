//! The IPv6 operations against a real kernel, in a fresh network namespace.

use std::net::Ipv6Addr;

use twill_netlink::{
    Address6, FdbEntry, FdbEntry6, MacAddr, Neighbour6, NetlinkHandle, Request, Route6, VxlanSpec,
    MAIN_TABLE, TWILL_RTPROT,
};
use twill_testbed::netns::Netns;

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("ip6")
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("mac")
}

/// A namespace with a veth underlay `eth0` (fd00::2/64) and an IPv6 VXLAN
/// device `flannel-v6.1` on it, as flannel lays them out.
fn setup(label: &str) -> (Netns, NetlinkHandle, u32, u32) {
    let ns = Netns::new(label).expect("netns");
    let mut nl = ns.netlink().expect("netlink");
    nl.link().add_veth("eth0", "eth0p").expect("veth underlay");
    let eth0 = nl.link().get_by_name("eth0").expect("eth0");
    nl.link().set_up(eth0.index).expect("up");
    nl.address()
        .add6(Address6 {
            index: eth0.index,
            addr: "fd00::2/64".parse().expect("net"),
        })
        .expect("addr");
    let mut spec = VxlanSpec::new("flannel-v6.1", 1);
    spec.local6 = Some(ip6("fd00::2"));
    spec.port = Some(8472);
    spec.underlay = Some(eth0.index);
    spec.mtu = Some(1430);
    spec.mac = Some(mac("02:00:0a:00:00:06"));
    let dev = nl.link().add_vxlan(&spec).expect("vxlan");
    nl.link().set_up(dev.index).expect("up");
    (ns, nl, eth0.index, dev.index)
}

#[test]
fn ipv6_vxlan_link_round_trips() {
    twill_testbed::require_root!();
    let (ns, mut nl, eth0, dev) = setup("link6");
    let link = nl.link().get_by_index(dev).expect("get");
    assert_eq!(link.name, "flannel-v6.1");
    assert_eq!(link.mtu, 1430);
    assert_eq!(link.mac, Some(mac("02:00:0a:00:00:06")));
    let v = link.vxlan.expect("vxlan attrs");
    assert_eq!(v.local6, Some(ip6("fd00::2")));
    assert_eq!(v.local, None);
    assert_eq!(
        (v.vni, v.port, v.learning, v.underlay),
        (1, 8472, false, Some(eth0))
    );
    let shown = ns.ip(&["-d", "link", "show", "flannel-v6.1"]).expect("ip");
    assert!(shown.contains("vxlan id 1 local fd00::2"), "{shown}");
    assert!(shown.contains("nolearning"), "{shown}");

    // One device has one local address: both families is refused before
    // anything is sent.
    let mut both = VxlanSpec::new("vx-both", 2);
    both.local = Some("10.0.0.2".parse().expect("ip"));
    both.local6 = Some(ip6("fd00::2"));
    let err = nl.link().add_vxlan(&both).expect_err("both");
    assert!(
        matches!(err, twill_netlink::NetlinkError::Invalid(_)),
        "{err}"
    );
    assert!(nl.link().find("vx-both").expect("find").is_none());
}

#[test]
fn ipv6_address_round_trips() {
    twill_testbed::require_root!();
    let (ns, mut nl, _eth0, dev) = setup("addr6");
    let a = Address6 {
        index: dev,
        addr: "fd10:1::/64".parse().expect("net"),
    };
    nl.address().add6(a).expect("add");
    assert!(nl.address().add6(a).expect_err("twice").is_exists());
    let listed = nl.address().list6(Some(dev)).expect("list");
    assert!(listed.contains(&a), "{listed:?}");
    // IPv4 listing does not see it.
    assert!(nl.address().list(Some(dev)).expect("list").is_empty());
    let shown = ns
        .ip(&["-6", "addr", "show", "dev", "flannel-v6.1"])
        .expect("ip");
    // Added nodad: usable at once, never "tentative".
    assert!(
        shown.contains("inet6 fd10:1::/64 scope global nodad"),
        "{shown}"
    );
    nl.address().delete6(a).expect("delete");
    assert!(!nl.address().list6(Some(dev)).expect("list").contains(&a));
}

#[test]
fn ipv6_neighbour_round_trips() {
    twill_testbed::require_root!();
    let (ns, mut nl, _eth0, dev) = setup("neigh6");
    let n = Neighbour6::permanent(dev, ip6("fd10:5::"), mac("6e:af:8f:41:72:26"));
    nl.neighbour().replace6(n).expect("replace");
    nl.neighbour().replace6(n).expect("replace is idempotent");
    let listed = nl.neighbour().list6(Some(dev)).expect("list");
    assert_eq!(listed, vec![n]);
    assert!(nl.neighbour().list(Some(dev)).expect("v4 list").is_empty());
    let shown = ns
        .ip(&["-6", "neigh", "show", "dev", "flannel-v6.1"])
        .expect("ip");
    assert!(
        shown.contains("fd10:5:: lladdr 6e:af:8f:41:72:26 PERMANENT"),
        "{shown}"
    );
    nl.neighbour().delete6(n).expect("delete");
    // Only ours is gone: the kernel may meanwhile have made entries of its
    // own on the device (IPv6 sends router and neighbour solicitations).
    let left = nl.neighbour().list6(Some(dev)).expect("list");
    assert!(left.iter().all(|x| x.ip != n.ip), "{left:?}");
    assert!(nl.neighbour().delete6(n).expect_err("twice").is_not_found());
}

#[test]
fn ipv6_fdb_round_trips_beside_ipv4_entries() {
    twill_testbed::require_root!();
    let (ns, mut nl, _eth0, dev) = setup("fdb6");
    let e = FdbEntry6::permanent(dev, mac("6e:af:8f:41:72:26"), ip6("fd00::3"));
    nl.fdb().append6(e).expect("append");
    let listed = nl.fdb().list6(Some(dev)).expect("list");
    assert_eq!(listed, vec![e]);
    let shown = ns
        .exec("bridge", &["fdb", "show", "dev", "flannel-v6.1"])
        .expect("bridge");
    assert!(
        shown.contains("6e:af:8f:41:72:26 dst fd00::3 self permanent"),
        "{shown}"
    );
    // The IPv4 list reports no remote for it, so no IPv4 owner claims it.
    assert!(nl
        .fdb()
        .list(Some(dev))
        .expect("v4 list")
        .iter()
        .all(|x: &FdbEntry| x.dst.is_none()));
    let moved = FdbEntry6 {
        dst: Some(ip6("fd00::4")),
        ..e
    };
    nl.fdb().replace6(moved).expect("replace");
    assert_eq!(nl.fdb().list6(Some(dev)).expect("list"), vec![moved]);
    nl.fdb().delete6(moved).expect("delete");
    assert!(nl.fdb().list6(Some(dev)).expect("list").is_empty());
    assert!(nl.fdb().delete6(moved).expect_err("twice").is_not_found());
}

#[test]
fn ipv6_route_round_trips_onlink_with_our_protocol() {
    twill_testbed::require_root!();
    let (ns, mut nl, eth0, dev) = setup("route6");
    let r = Route6::new("fd10:5::/64".parse().expect("net"))
        .via(ip6("fd10:5::"))
        .dev(dev)
        .onlink();
    nl.route().replace6(r).expect("replace");
    nl.route().replace6(r).expect("replace is idempotent");
    let ours: Vec<Route6> = nl
        .route()
        .list6(Some(MAIN_TABLE))
        .expect("list")
        .into_iter()
        .filter(|x| x.protocol == TWILL_RTPROT)
        .collect();
    assert_eq!(ours, vec![r]);
    // The IPv4 dump does not carry it.
    assert!(!nl
        .route()
        .list(None)
        .expect("v4 list")
        .iter()
        .any(|x| x.protocol == TWILL_RTPROT));
    let shown = ns.ip(&["-6", "route", "show", "fd10:5::/64"]).expect("ip");
    assert!(
        shown.contains("via fd10:5:: dev flannel-v6.1 proto 241"),
        "{shown}"
    );
    assert!(shown.contains("onlink"), "{shown}");

    let other_table = Route6::new("fd20::/48".parse().expect("net"))
        .via(ip6("fd00::9"))
        .dev(eth0)
        .table(100);
    nl.route().replace6(other_table).expect("table 100");
    assert_eq!(
        nl.route().list6(Some(100)).expect("list"),
        vec![other_table]
    );
    nl.route().delete6(other_table).expect("delete");
    nl.route().delete6(r).expect("delete");
    assert!(!nl
        .route()
        .list6(None)
        .expect("list")
        .iter()
        .any(|x| x.protocol == TWILL_RTPROT));
    assert!(nl.route().delete6(r).expect_err("twice").is_not_found());
}

#[test]
fn mixed_batch_keeps_each_requests_errno() {
    twill_testbed::require_root!();
    let (_ns, mut nl, _eth0, dev) = setup("batch6");
    nl.set_batch_size(100);
    let mut reqs = Vec::new();
    for i in 0..600u16 {
        let net = Ipv6Addr::new(0xfd10, i, 0, 0, 0, 0, 0, 0);
        let m = MacAddr([0x0e, 0, 0, 0, (i >> 8) as u8, (i & 0xff) as u8]);
        reqs.push(Request::NeighbourReplace6(Neighbour6::permanent(
            dev, net, m,
        )));
        reqs.push(Request::FdbReplace6(FdbEntry6::permanent(
            dev,
            m,
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i),
        )));
        reqs.push(Request::RouteReplace6(
            Route6::new(format!("{net}/64").parse().expect("net"))
                .via(net)
                .dev(dev)
                .onlink(),
        ));
    }
    let absent = Route6::new("fd99::/64".parse().expect("net")).dev(dev);
    // One failure of each kind, each in place of a different family's op.
    reqs[699] = Request::RouteDelete6(absent);
    reqs[901] = Request::NeighbourDelete6(Neighbour6::permanent(
        dev,
        ip6("fd99::1"),
        mac("0e:00:00:00:99:99"),
    ));
    reqs[1202] = Request::RouteReplace6(
        Route6::new("fd98::/64".parse().expect("net"))
            .via(ip6("fd98::"))
            .dev(9999)
            .onlink(),
    );
    let out = nl.execute(&reqs).expect("execute");
    assert_eq!(out.results.len(), 1800);
    let errs: Vec<(usize, i32)> = out
        .errors()
        .map(|(i, e)| (i, e.errno().unwrap_or(0)))
        .collect();
    assert_eq!(
        errs,
        vec![
            (699, libc_errno::ESRCH),
            (901, libc_errno::ENOENT),
            (1202, libc_errno::ENODEV)
        ]
    );
    assert_eq!(out.ok_count(), 1797);
    // The kernel adds entries of its own (multicast for router
    // solicitations): only the permanent ones are ours.
    let permanent = nl
        .neighbour()
        .list6(Some(dev))
        .expect("list")
        .into_iter()
        .filter(|n| n.permanent)
        .count();
    assert_eq!(permanent, 599);
    assert_eq!(nl.fdb().list6(Some(dev)).expect("list").len(), 599);
    let ours = nl
        .route()
        .list6(None)
        .expect("list")
        .into_iter()
        .filter(|r| r.protocol == TWILL_RTPROT)
        .count();
    assert_eq!(ours, 599);
}

/// The errno values the kernel answers with (asm-generic/errno-base.h).
mod libc_errno {
    pub(super) const ENOENT: i32 = 2;
    pub(super) const ESRCH: i32 = 3;
    pub(super) const ENODEV: i32 = 19;
}
