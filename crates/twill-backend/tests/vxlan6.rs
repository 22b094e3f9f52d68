//! The VXLAN backend's IPv6 half (`EnableIPv6`) against real kernels: two
//! hosts on a dual-stack underlay, dual-stack leases made by hand.

mod common;

use common::IpRoutes;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{count_lines, refs, underlay};
use twill_backend::{Backend, HostContext, Ipv6Underlay, VxlanBackend, VxlanOptions};
use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetKey, SubnetLease};
use twill_testbed::netns::{Host, Lan};

fn dual_config() -> NetworkConfig {
    NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,
            "IPv6Network":"fd10:244::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
    )
    .expect("config")
}

/// `fd00::<i+2>` on host `i`'s underlay, as 10.0.0.<i+2> is.
fn underlay6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::try_from(i + 2).expect("n"))
}

fn add_underlay6(h: &Host, i: usize) {
    h.ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", underlay6(i)),
        "dev",
        &h.underlay,
        "nodad",
    ])
    .expect("underlay IPv6 address");
}

/// setup + activate with the dual-stack subnets 10.244.<n>.0/24 and
/// fd10:244:0:<n>::/64.
async fn bring_up_dual(
    b: &mut VxlanBackend,
    h: &Host,
    i: usize,
    cfg: &NetworkConfig,
) -> SubnetLease {
    let ul = underlay(h);
    let v6 = Ipv6Underlay {
        addr: underlay6(i),
        public_ip: underlay6(i),
    };
    let ctx = HostContext {
        config: cfg,
        public_ip: h.addr,
        underlay: &ul,
        ipv6: Some(v6),
    };
    let local = b.setup(&ctx).await.expect("setup");
    assert_eq!(local.attrs.public_ipv6, Some(underlay6(i)));
    let n = u8::try_from(i + 1).expect("n");
    let own = SubnetLease {
        key: SubnetKey::dual(
            format!("10.244.{n}.0/24").parse().expect("v4"),
            format!("fd10:244:0:{n}::/64").parse().expect("v6"),
        ),
        attrs: local.attrs,
        kind: LeaseKind::Expiring,
        revision: 0,
    };
    b.activate(&own).await.expect("activate");
    own
}

/// Two hosts on a dual-stack underlay, each with a vxlan backend set up
/// for [`dual_config`] and its lease (in host order).
async fn dual_stack_lan() -> (Lan, Vec<VxlanBackend>, Vec<SubnetLease>) {
    let lan = Lan::new(2).expect("lan");
    let cfg = dual_config();
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        add_underlay6(h, i);
        let mut b =
            VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("netlink"));
        leases.push(bring_up_dual(&mut b, h, i, &cfg).await);
        backends.push(b);
    }
    (lan, backends, leases)
}

fn v6_mac(l: &SubnetLease) -> String {
    l.attrs
        .backend_v6_data
        .as_ref()
        .expect("BackendV6Data")
        .to_value()["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_string()
}

fn v4_mac(l: &SubnetLease) -> String {
    l.attrs
        .backend_data
        .as_ref()
        .expect("BackendData")
        .to_value()["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_string()
}

#[tokio::test]
async fn dual_stack_hosts_get_flannels_v6_layout_and_ping6() {
    twill_testbed::require_root!();
    let (lan, mut backends, leases) = dual_stack_lan().await;
    // The IPv6 device has a MAC of its own, published as flannel does.
    assert_ne!(v6_mac(&leases[0]), v4_mac(&leases[0]));
    assert_eq!(
        leases[0]
            .attrs
            .backend_v6_data
            .as_ref()
            .expect("data")
            .to_value()["VNI"],
        1
    );
    for b in &mut backends {
        let report = b.reconcile(&refs(&leases)).await.expect("reconcile");
        // Four IPv4 ops (ARP, FDB, nexthop object, route) and three IPv6
        // ones (NDP, FDB, route: IPv6 routes carry their gateway).
        assert_eq!((report.planned, report.applied), (7, 7), "{report:?}");
        assert!(
            report.failed.is_empty() && report.skipped.is_empty(),
            "{report:?}"
        );
    }

    let h1 = &lan.hosts[0].ns;
    let mac2 = v6_mac(&leases[1]);
    let link = h1
        .ip(&["-d", "link", "show", "flannel-v6.1"])
        .expect("ip link");
    assert!(link.contains("mtu 1430"), "underlay 1500 - 70: {link}");
    assert!(
        link.contains(&format!("link/ether {}", v6_mac(&leases[0]))),
        "{link}"
    );
    assert!(link.contains("vxlan id 1 local fd00::2 dev eth0"), "{link}");
    assert!(link.contains("nolearning"), "{link}");
    let addr = h1
        .ip(&[
            "-6",
            "addr",
            "show",
            "dev",
            "flannel-v6.1",
            "scope",
            "global",
        ])
        .expect("ip addr");
    assert!(addr.contains("inet6 fd10:244:0:1::/128"), "{addr}");
    let fdb = h1
        .exec("bridge", &["fdb", "show", "dev", "flannel-v6.1"])
        .expect("fdb");
    assert!(
        fdb.contains(&format!("{mac2} dst fd00::3 self permanent")),
        "{fdb}"
    );
    assert_eq!(count_lines(&fdb, " dst "), 1, "{fdb}");
    let neigh = h1
        .ip(&[
            "-6",
            "neigh",
            "show",
            "dev",
            "flannel-v6.1",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    assert_eq!(
        neigh.trim(),
        format!("fd10:244:0:2:: lladdr {mac2} PERMANENT")
    );
    let routes = h1
        .ip(&["-6", "route", "show", "proto", "241"])
        .expect("route");
    assert!(
        routes.contains("fd10:244:0:2::/64 via fd10:244:0:2:: dev flannel-v6.1"),
        "{routes}"
    );
    assert!(routes.contains("onlink"), "{routes}");
    assert_eq!(routes.trim().lines().count(), 1, "{routes}");
    // The IPv4 half is as before.
    let routes4 = h1
        .ip_routes(&["route", "show", "proto", "241"])
        .expect("route");
    assert_eq!(
        routes4.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );

    for (from, to) in [(h1, "fd10:244:0:2::"), (&lan.hosts[1].ns, "fd10:244:0:1::")] {
        let ping = from
            .exec("ping", &["-6", "-c1", "-W2", to])
            .expect("ping6 over the IPv6 VXLAN");
        assert!(ping.contains("1 received"), "{ping}");
    }
    let ping = h1
        .exec("ping", &["-c1", "-W2", "10.244.2.0"])
        .expect("ping over the IPv4 VXLAN");
    assert!(ping.contains("1 received"), "{ping}");

    for b in &mut backends {
        let again = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!(again.planned, 0, "{again:?}");
    }
}

#[tokio::test]
async fn ipv6_half_repairs_gc_and_skips_like_the_ipv4_half() {
    twill_testbed::require_root!();
    let (lan, mut backends, leases) = dual_stack_lan().await;
    let b1 = &mut backends[0];
    let h1 = &lan.hosts[0].ns;
    let first = b1.reconcile(&refs(&leases)).await.expect("reconcile");
    assert_eq!(first.planned, 7, "{first:?}");

    // A route of someone else's in the main table stays untouched.
    h1.ip(&[
        "-6",
        "route",
        "add",
        "fd99::/64",
        "via",
        "fd00::9",
        "dev",
        "eth0",
    ])
    .expect("foreign route");

    // Deleting the IPv6 device is repaired, with its entries.
    h1.ip(&["link", "del", "flannel-v6.1"]).expect("del");
    let r = b1.reconcile(&refs(&leases)).await.expect("reconcile");
    assert_eq!((r.planned, r.applied), (3, 3), "{r:?}");
    let link = h1.ip(&["link", "show", "flannel-v6.1"]).expect("link");
    assert!(link.contains(&v6_mac(&leases[0])), "same MAC back: {link}");

    // Bad IPv6 halves are skipped; their IPv4 halves are still programmed.
    let peer = |n: u8, v6: &str, attrs: LeaseAttrs| SubnetLease {
        key: SubnetKey::dual(
            format!("10.244.{n}.0/24").parse().expect("v4"),
            v6.parse().expect("v6"),
        ),
        attrs,
        kind: LeaseKind::Expiring,
        revision: 0,
    };
    let attrs = |ip4: u8, ip6: Option<&str>, mac6: &str| {
        let mut a = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, ip4), "vxlan");
        a.backend_data = Some(
            serde_json::json!({
                "VNI": 1, "VtepMAC": format!("0e:00:00:00:00:{ip4:02x}")
            })
            .into(),
        );
        a.public_ipv6 = ip6.map(|s| s.parse().expect("ip6"));
        a.backend_v6_data = Some(serde_json::json!({ "VNI": 1, "VtepMAC": mac6 }).into());
        a
    };
    let mut all = leases.clone();
    // Outside IPv6Network.
    all.push(peer(
        5,
        "fd77::/64",
        attrs(5, Some("fd00::5"), "1e:00:00:00:00:05"),
    ));
    // No PublicIPv6.
    all.push(peer(
        6,
        "fd10:244:0:6::/64",
        attrs(6, None, "1e:00:00:00:00:06"),
    ));
    // Our own IPv6 VTEP MAC.
    all.push(peer(
        7,
        "fd10:244:0:7::/64",
        attrs(7, Some("fd00::7"), &v6_mac(&leases[0])),
    ));
    // Overlapping peer 2's IPv6 subnet.
    all.push(peer(
        8,
        "fd10:244:0:2::/64",
        attrs(8, Some("fd00::8"), "1e:00:00:00:00:08"),
    ));
    let r = b1.reconcile(&refs(&all)).await.expect("reconcile");
    let skipped: Vec<String> = r.skipped.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(skipped.len(), 4, "{r:?}");
    assert!(r.failed.is_empty(), "{r:?}");
    // A lease outside IPv6Network or without a PublicIPv6 in a dual-stack
    // network is skipped whole by the host rules (NetworkConfig::check_peer,
    // as the lease core does); the other two keep their IPv4 halves: four
    // ops each (ARP, FDB, nexthop object, route).
    assert_eq!(r.planned, 8, "{r:?}");
    let routes6 = h1
        .ip(&["-6", "route", "show", "proto", "241"])
        .expect("routes");
    assert_eq!(routes6.trim().lines().count(), 1, "{routes6}");

    // The peer goes: its IPv6 entries are collected, foreign ones stay.
    let r = b1.reconcile(&refs(&leases[..1])).await.expect("reconcile");
    assert!(r.failed.is_empty(), "{r:?}");
    let routes6 = h1
        .ip(&["-6", "route", "show", "proto", "241"])
        .expect("routes");
    assert!(routes6.trim().is_empty(), "{routes6}");
    let fdb = h1
        .exec("bridge", &["fdb", "show", "dev", "flannel-v6.1"])
        .expect("fdb");
    assert_eq!(count_lines(&fdb, " dst "), 0, "{fdb}");
    let foreign = h1.ip(&["-6", "route", "show", "fd99::/64"]).expect("route");
    assert!(foreign.contains("via fd00::9"), "{foreign}");
    let again = b1.reconcile(&refs(&leases[..1])).await.expect("reconcile");
    assert_eq!(again.planned, 0, "{again:?}");
}

#[tokio::test]
async fn ipv4_only_config_creates_no_ipv6_device() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let h = &lan.hosts[0];
    let cfg = common::config(r#"{"Type":"vxlan"}"#);
    let mut b = VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("nl"));
    let (local, _) = common::bring_up(&mut b, h, &cfg, 1).await;
    assert_eq!(local.attrs.public_ipv6, None);
    assert_eq!(local.attrs.backend_v6_data, None);
    let links = h.ns.ip(&["link", "show"]).expect("links");
    assert!(!links.contains("flannel-v6"), "{links}");
    // EnableIPv6 without an IPv6 underlay is refused before the kernel is touched.
    let ul = underlay(h);
    let dual = dual_config();
    let mut b2 = VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("nl"));
    let err = b2
        .setup(&HostContext {
            config: &dual,
            public_ip: h.addr,
            underlay: &ul,
            ipv6: None,
        })
        .await
        .expect_err("no IPv6 underlay");
    assert!(
        matches!(err, twill_backend::BackendError::Config { .. }),
        "{err}"
    );
}

/// IPv6-only hosts (`EnableIPv4` false, no IPv4 address on the underlay):
/// flannel makes only `flannel-v6.<VNI>`, publishes `PublicIP` 0.0.0.0
/// without `BackendData`, and FLANNEL_MTU is the IPv6 device's.
#[tokio::test]
async fn ipv6_only_hosts_get_only_the_v6_device_and_ping6() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = NetworkConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .expect("config");
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        add_underlay6(h, i);
        h.ns.ip(&["-4", "addr", "flush", "dev", &h.underlay])
            .expect("remove the IPv4 underlay address");
        let mut ul = underlay(h);
        ul.addr = None;
        let v6 = Ipv6Underlay {
            addr: underlay6(i),
            public_ip: underlay6(i),
        };
        let ctx = HostContext {
            config: &cfg,
            public_ip: Ipv4Addr::UNSPECIFIED,
            underlay: &ul,
            ipv6: Some(v6),
        };
        let mut b =
            VxlanBackend::with_handle(VxlanOptions::default(), h.ns.netlink().expect("netlink"));
        let local = b.setup(&ctx).await.expect("setup");
        assert_eq!(local.mtu, 1430, "FLANNEL_MTU is the IPv6 device's");
        assert_eq!(local.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert!(local.attrs.backend_data.is_none(), "{:?}", local.attrs);
        assert_eq!(
            local.attrs.to_json().expect("json"),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                underlay6(i),
                local
                    .attrs
                    .backend_v6_data
                    .as_ref()
                    .expect("v6 data")
                    .to_value()["VtepMAC"]
                    .as_str()
                    .expect("mac")
            ),
            "flannel's IPv6-only lease"
        );
        let n = u8::try_from(i + 1).expect("n");
        let own = SubnetLease {
            key: SubnetKey::v6_only(format!("fd10:244:0:{n}::/64").parse().expect("v6")),
            attrs: local.attrs,
            kind: LeaseKind::Expiring,
            revision: 0,
        };
        b.activate(&own).await.expect("activate");
        leases.push(own);
        backends.push(b);
    }
    for b in &mut backends {
        let report = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!((report.planned, report.applied), (3, 3), "{report:?}");
        assert!(
            report.failed.is_empty() && report.skipped.is_empty(),
            "{report:?}"
        );
    }
    let h1 = &lan.hosts[0].ns;
    let links = h1.ip(&["-d", "link", "show"]).expect("ip link");
    assert!(!links.contains("flannel.1"), "no IPv4 device: {links}");
    assert!(
        links.contains("vxlan id 1 local fd00::2 dev eth0"),
        "{links}"
    );
    let routes = h1
        .ip(&["-6", "route", "show", "proto", "241"])
        .expect("route");
    assert!(
        routes.contains("fd10:244:0:2::/64 via fd10:244:0:2:: dev flannel-v6.1"),
        "{routes}"
    );
    assert_eq!(
        h1.ip_routes(&["route", "show", "proto", "241"])
            .expect("route")
            .trim(),
        ""
    );
    for (from, to) in [(h1, "fd10:244:0:2::"), (&lan.hosts[1].ns, "fd10:244:0:1::")] {
        let ping = from
            .exec("ping", &["-6", "-c1", "-W2", to])
            .expect("ping6 over the IPv6 VXLAN");
        assert!(ping.contains("1 received"), "{ping}");
    }
    // A peer the IPv4 pass would have reported (there is none) is reported
    // by the IPv6 pass: here one claiming our PublicIPv6.
    let mut hostile = leases[1].clone();
    hostile.key = SubnetKey::v6_only("fd10:244:0:9::/64".parse().expect("v6"));
    hostile.attrs.public_ipv6 = Some(underlay6(0));
    let mut with_hostile = leases.clone();
    with_hostile.push(hostile);
    let report = backends[0]
        .reconcile(&refs(&with_hostile))
        .await
        .expect("reconcile");
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.planned, 0, "{report:?}");
}
