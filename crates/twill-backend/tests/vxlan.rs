//! The VXLAN backend against real kernels in network namespaces.

mod common;

use common::IpRoutes;

use common::{bring_up, config, count_lines, lease, refs, underlay, vxlan_attrs, PEER_OPS};
use twill_backend::{Backend, HostContext, VxlanBackend, VxlanOptions};
use twill_model::{LeaseAttrs, SkipReason, SubnetLease};
use twill_testbed::netns::Lan;

fn backend(host: &twill_testbed::netns::Host, opts: VxlanOptions) -> VxlanBackend {
    VxlanBackend::with_handle(opts, host.ns.netlink().expect("netlink"))
}

fn vtep_mac(l: &SubnetLease) -> String {
    l.attrs.backend_data.as_ref().expect("data").to_value()["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_string()
}

#[tokio::test]
async fn two_hosts_get_the_flannel_layout_and_ping() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        let mut b = backend(h, VxlanOptions::default());
        let (local, own) = bring_up(&mut b, h, &cfg, u8::try_from(i + 1).expect("n")).await;
        assert_eq!(local.mtu, 1450);
        let data = local
            .attrs
            .backend_data
            .as_ref()
            .expect("BackendData")
            .to_value();
        assert_eq!(data["VNI"], 1);
        assert!(data["VtepMAC"].as_str().is_some());
        backends.push(b);
        leases.push(own);
    }
    for b in &mut backends {
        let report = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!(report.planned, PEER_OPS, "{report:?}");
        assert_eq!(report.applied, PEER_OPS, "{report:?}");
        assert!(
            report.failed.is_empty() && report.skipped.is_empty(),
            "{report:?}"
        );
    }
    let h1 = &lan.hosts[0].ns;
    let mac2 = vtep_mac(&leases[1]);
    let link = h1
        .ip(&["-d", "link", "show", "flannel.1"])
        .expect("ip link");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(
        link.contains(&format!("link/ether {}", vtep_mac(&leases[0]))),
        "{link}"
    );
    assert!(
        link.contains("vxlan id 1 local 10.0.0.2 dev eth0"),
        "{link}"
    );
    assert!(link.contains("dstport 8472"), "{link}");
    assert!(link.contains("nolearning"), "{link}");
    let addr = h1
        .ip(&["-4", "addr", "show", "dev", "flannel.1"])
        .expect("ip addr");
    assert!(addr.contains("inet 10.244.1.0/32"), "{addr}");
    let fdb = h1
        .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
        .expect("fdb");
    assert!(
        fdb.contains(&format!("{mac2} dst 10.0.0.3 self permanent")),
        "{fdb}"
    );
    assert_eq!(count_lines(&fdb, " dst "), 1, "{fdb}");
    let neigh = h1
        .ip(&["neigh", "show", "dev", "flannel.1"])
        .expect("neigh");
    assert_eq!(neigh.trim(), format!("10.244.2.0 lladdr {mac2} PERMANENT"));
    let routes = h1
        .ip_routes(&["route", "show", "proto", "241"])
        .expect("route");
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );

    let ping = h1
        .exec("ping", &["-c1", "-W2", "10.244.2.0"])
        .expect("ping over vxlan");
    assert!(ping.contains("1 received"), "{ping}");
    let ping = lan.hosts[1]
        .ns
        .exec("ping", &["-c1", "-W2", "10.244.1.0"])
        .expect("ping back");
    assert!(ping.contains("1 received"), "{ping}");

    for b in &mut backends {
        let again = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!(again.planned, 0, "{again:?}");
    }
}

#[tokio::test]
async fn three_hosts_reach_containers_behind_each_others_bridges() {
    twill_testbed::require_root!();
    let mut lan = Lan::new(3).expect("lan");
    let cfg = config(r#"{"Type":"vxlan","VNI":7}"#);
    let opts = VxlanOptions {
        vni: 7,
        ..VxlanOptions::default()
    };
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        let mut b = backend(h, opts.clone());
        let (_, own) = bring_up(&mut b, h, &cfg, u8::try_from(i + 1).expect("n")).await;
        backends.push(b);
        leases.push(own);
    }
    for b in &mut backends {
        let r = b.reconcile(&refs(&leases)).await.expect("reconcile");
        assert_eq!(
            (r.planned, r.applied),
            (2 * PEER_OPS, 2 * PEER_OPS),
            "{r:?}"
        );
    }
    for (i, h) in lan.hosts.iter_mut().enumerate() {
        h.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .expect("forwarding");
        let n = i + 1;
        h.add_container(
            "cni0",
            format!("10.244.{n}.2/24").parse().expect("net"),
            format!("10.244.{n}.1").parse().expect("gw"),
        )
        .expect("container");
    }
    let h1 = &lan.hosts[0];
    let fdb = h1
        .ns
        .exec("bridge", &["fdb", "show", "dev", "flannel.7"])
        .expect("fdb");
    assert_eq!(count_lines(&fdb, " dst "), 2, "{fdb}");
    let routes = h1
        .ns
        .ip_routes(&["route", "show", "proto", "241"])
        .expect("routes");
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev flannel.7 onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.3.0/24 via 10.244.3.0 dev flannel.7 onlink"),
        "{routes}"
    );
    // host -> remote container, container -> remote container.
    let ping = h1
        .ns
        .exec("ping", &["-c1", "-W2", "10.244.3.2"])
        .expect("h1 -> c3");
    assert!(ping.contains("1 received"), "{ping}");
    let ping = h1.containers[0]
        .exec("ping", &["-c1", "-W2", "10.244.2.2"])
        .expect("c1 -> c2");
    assert!(ping.contains("1 received"), "{ping}");
}

#[tokio::test]
async fn reconcile_repairs_collects_garbage_and_keeps_foreign_entries() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let ns = &h.ns;
    let mut b = backend(h, VxlanOptions::default());
    let (local, _own) = bring_up(&mut b, h, &cfg, 1).await;
    let peer = lease(
        "10.244.2.0/24",
        vxlan_attrs("10.0.0.3".parse().expect("ip"), "0e:00:00:00:00:02"),
    );
    let peers = vec![peer.clone()];
    assert_eq!(
        b.reconcile(&refs(&peers)).await.expect("first").planned,
        PEER_OPS
    );

    // A stale route of ours, a foreign static route and a foreign boot route.
    ns.ip(&[
        "route",
        "add",
        "10.244.99.0/24",
        "via",
        "10.244.99.0",
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "241",
    ])
    .expect("stale");
    ns.ip(&[
        "route",
        "add",
        "10.244.98.0/24",
        "via",
        "10.0.0.9",
        "dev",
        "eth0",
        "proto",
        "static",
    ])
    .expect("foreign");
    ns.ip(&[
        "route",
        "add",
        "10.244.97.0/24",
        "via",
        "10.244.97.0",
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "boot",
    ])
    .expect("foreign boot");
    let r = b.reconcile(&refs(&peers)).await.expect("gc");
    assert_eq!(r.planned, 1, "{r:?}");
    let routes = ns.ip_routes(&["route", "show"]).expect("routes");
    assert!(!routes.contains("10.244.99.0/24"), "{routes}");
    assert!(
        routes.contains("10.244.98.0/24 via 10.0.0.9 dev eth0 proto static"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.97.0/24 via 10.244.97.0 dev flannel.1 onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 241 onlink"),
        "{routes}"
    );
    assert_eq!(b.reconcile(&refs(&peers)).await.expect("again").planned, 0);

    // A deleted device comes back with the same MAC, address and entries.
    let mac_before = ns.ip(&["link", "show", "flannel.1"]).expect("link");
    ns.ip(&["link", "del", "flannel.1"]).expect("del");
    let r = b.reconcile(&refs(&peers)).await.expect("repair");
    assert_eq!(r.planned, PEER_OPS, "{r:?}");
    let mac_after = ns.ip(&["link", "show", "flannel.1"]).expect("link");
    let mac_of = |s: &str| s.split("link/ether ").nth(1).map(|x| x[..17].to_string());
    assert_eq!(mac_of(&mac_before), mac_of(&mac_after));
    assert_eq!(
        mac_of(&mac_after).as_deref(),
        local
            .attrs
            .backend_data
            .as_ref()
            .and_then(|d| d.to_value()["VtepMAC"].as_str().map(str::to_string))
            .as_deref()
    );
    assert!(ns
        .ip(&["addr", "show", "flannel.1"])
        .expect("addr")
        .contains("inet 10.244.1.0/32"));
    assert!(ns
        .ip_routes(&["route", "show", "proto", "241"])
        .expect("r")
        .contains("10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"));

    // A downed device is brought up.
    ns.ip(&["link", "set", "flannel.1", "down"]).expect("down");
    let r = b.reconcile(&refs(&peers)).await.expect("up again");
    assert!(r.failed.is_empty(), "{r:?}");
    let link = ns.ip(&["link", "show", "flannel.1"]).expect("link");
    assert!(link.contains(",UP"), "{link}");
    assert_eq!(b.reconcile(&refs(&peers)).await.expect("quiet").planned, 0);

    // A device whose port no longer matches the config is re-created, MAC kept.
    let mut b2 = backend(
        h,
        VxlanOptions {
            port: 4789,
            ..VxlanOptions::default()
        },
    );
    let ul = underlay(h);
    let ctx = HostContext {
        config: &cfg,
        public_ip: h.addr,
        underlay: &ul,
        ipv6: None,
    };
    let local2 = b2.setup(&ctx).await.expect("setup with new port");
    assert_eq!(
        local2.attrs.backend_data, local.attrs.backend_data,
        "VtepMAC stable"
    );
    let link = ns.ip(&["-d", "link", "show", "flannel.1"]).expect("link");
    assert!(link.contains("dstport 4789"), "{link}");
}

#[tokio::test]
async fn invalid_peers_are_skipped_with_a_reason() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    let (_local, own) = bring_up(&mut b, h, &cfg, 1).await;
    let ip = |s: &str| s.parse().expect("ip");
    let no_data = LeaseAttrs::new(ip("10.0.0.5"), "vxlan");
    let peers = vec![
        own.clone(),
        lease("10.244.2.0/24", vxlan_attrs(ip("10.0.0.3"), "not-a-mac")),
        lease("10.244.3.0/24", no_data),
        lease(
            "10.244.4.0/24",
            vxlan_attrs(ip("10.0.0.2"), "0e:00:00:00:00:04"),
        ),
        lease(
            "10.99.5.0/24",
            vxlan_attrs(ip("10.0.0.6"), "0e:00:00:00:00:05"),
        ),
        lease(
            "10.244.6.0/24",
            vxlan_attrs(ip("10.0.0.7"), "01:00:5e:00:00:01"),
        ),
        // The old seed lease form: only VtepMAC. Valid.
        {
            let mut a = LeaseAttrs::new(ip("10.0.0.8"), "vxlan");
            a.backend_data = Some(serde_json::json!({ "VtepMAC": "0e:00:00:00:00:08" }).into());
            lease("10.244.8.0/24", a)
        },
    ];
    let r = b.reconcile(&refs(&peers)).await.expect("reconcile");
    assert_eq!(r.skipped.len(), 5, "{r:?}");
    let reason = |n: &str| {
        r.skipped
            .iter()
            .find(|(k, _)| k.ipv4.to_string() == n)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| panic!("{n} not skipped: {r:?}"))
    };
    assert_eq!(
        reason("10.244.2.0/24"),
        SkipReason::BadVtepMac("not-a-mac".into())
    );
    assert!(
        matches!(reason("10.244.3.0/24"), SkipReason::BadBackendData { .. }),
        "{r:?}"
    );
    assert_eq!(
        reason("10.244.4.0/24"),
        SkipReason::ClaimsOurPublicIp(ip("10.0.0.2"))
    );
    assert_eq!(
        reason("10.99.5.0/24").to_string(),
        "subnet 10.99.5.0/24 is not inside Network 10.244.0.0/16"
    );
    assert_eq!(
        reason("10.244.6.0/24"),
        SkipReason::VtepMacNotUnicast("01:00:5e:00:00:01".parse().expect("mac"))
    );
    assert_eq!(
        r.planned, PEER_OPS,
        "only the old-style lease is programmed: {r:?}"
    );
    let routes =
        h.ns.ip_routes(&["route", "show", "proto", "241"])
            .expect("routes");
    assert_eq!(
        routes.trim(),
        "10.244.8.0/24 via 10.244.8.0 dev flannel.1 onlink"
    );
}

#[tokio::test]
async fn thousand_peers_then_half_removed_leaves_exactly_half() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    bring_up(&mut b, h, &cfg, 0).await;
    // 1,000 peers in 10.244.0.0/16 with /26 subnets would not fit /24 leases; use /28s.
    let mut peers = Vec::new();
    for i in 1..=1000u32 {
        let net = std::net::Ipv4Addr::from(0x0af4_0000 + 0x100 + i * 16);
        let public = std::net::Ipv4Addr::from(0x0a01_0000 + i);
        let mac = format!("0e:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        peers.push(lease(&format!("{net}/28"), vxlan_attrs(public, &mac)));
    }
    let r = b.reconcile(&refs(&peers)).await.expect("1000");
    assert_eq!(
        (r.planned, r.applied),
        (1000 * PEER_OPS, 1000 * PEER_OPS),
        "failed: {:?}",
        r.failed.first()
    );
    let r = b.reconcile(&refs(&peers[..500])).await.expect("500");
    assert_eq!(
        (r.planned, r.applied),
        (500 * PEER_OPS, 500 * PEER_OPS),
        "failed: {:?}",
        r.failed.first()
    );
    let mut nl = h.ns.netlink().expect("nl");
    let dev = nl.link().get_by_name("flannel.1").expect("dev").index;
    let routes = nl
        .route()
        .list(None)
        .expect("routes")
        .into_iter()
        .filter(|r| r.protocol == twill_netlink::TWILL_RTPROT)
        .count();
    let neigh = nl.neighbour().list(Some(dev)).expect("neigh").len();
    let fdb = nl
        .fdb()
        .list(Some(dev))
        .expect("fdb")
        .into_iter()
        .filter(|e| e.dst.is_some())
        .count();
    assert_eq!((routes, neigh, fdb), (500, 500, 500));
    let shown =
        h.ns.ip_routes(&["route", "show", "proto", "241"])
            .expect("ip route");
    assert_eq!(shown.lines().count(), 500);
    assert_eq!(
        b.reconcile(&refs(&peers[..500]))
            .await
            .expect("again")
            .planned,
        0
    );
}

/// Migrating a host from flanneld: flanneld's routes (same layout, another
/// route protocol) are taken over, not left blocking the peer.
#[tokio::test]
async fn flanneld_routes_are_taken_over_in_place() {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let mut backends = Vec::new();
    let mut leases = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        let mut b = backend(h, VxlanOptions::default());
        let (_, own) = bring_up(&mut b, h, &cfg, u8::try_from(i + 1).expect("n")).await;
        backends.push(b);
        leases.push(own);
    }
    let h1 = &lan.hosts[0].ns;
    // What flanneld programmed for the peer (iproute2's default proto boot),
    // and a route to somewhere else on the device that no lease justifies.
    h1.ip(&[
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "10.244.2.0",
        "dev",
        "flannel.1",
        "onlink",
    ])
    .expect("flanneld-style route");
    h1.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ])
    .expect("unjustified foreign route");
    let report = backends[0]
        .reconcile(&refs(&leases))
        .await
        .expect("reconcile");
    assert!(report.skipped.is_empty(), "{report:?}");
    let ours = h1
        .ip_routes(&["route", "show", "proto", "241"])
        .expect("route");
    assert_eq!(
        ours.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );
    let boot = h1
        .ip_routes(&["route", "show", "proto", "boot"])
        .expect("route");
    assert_eq!(
        boot.trim(),
        "10.244.9.0/24 via 10.244.9.0 dev flannel.1 onlink",
        "only the unjustified foreign route is left as it was"
    );
    let again = backends[0]
        .reconcile(&refs(&leases))
        .await
        .expect("reconcile");
    assert_eq!(again.planned, 0, "{again:?}");
}

/// Two peers announcing the same VtepMAC (a host whose PublicIP changed kept
/// its stable MAC and left its old lease behind, or cloned machines): the
/// kernel holds one `dst` per unicast MAC and silently ignores an `fdb
/// append` of a second one, so before the fix every pass planned (and
/// "applied") that append again, forever. Now the later peer is skipped with
/// a reason and a second pass plans nothing.
#[tokio::test]
async fn peers_sharing_a_vtep_mac_converge_to_zero_ops() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    bring_up(&mut b, h, &cfg, 1).await;
    let ip = |s: &str| s.parse().expect("ip");
    let shared = "0e:00:00:00:00:02";
    let mut old = lease("10.244.2.0/24", vxlan_attrs(ip("10.0.0.3"), shared));
    old.revision = 10;
    let mut new = lease("10.244.3.0/24", vxlan_attrs(ip("10.0.0.4"), shared));
    new.revision = 20;
    let peers = vec![new, old];
    let first = b.reconcile(&refs(&peers)).await.expect("first");
    assert!(first.failed.is_empty(), "{first:?}");
    for pass in 0..3 {
        let r = b.reconcile(&refs(&peers)).await.expect("again");
        assert_eq!((r.planned, r.applied), (0, 0), "pass {pass}: {r:?}");
    }
    // The older lease keeps the MAC (claim order); the other is reported.
    assert_eq!(first.skipped.len(), 1, "{first:?}");
    assert_eq!(first.skipped[0].0.ipv4.to_string(), "10.244.3.0/24");
    assert_eq!(
        first.skipped[0].1,
        SkipReason::VtepMacInUse {
            mac: shared.parse().expect("mac"),
            peer: "10.244.2.0-24".parse().expect("key"),
        },
        "{first:?}"
    );
    assert_eq!(
        (first.planned, first.applied),
        (PEER_OPS, PEER_OPS),
        "{first:?}"
    );
    let fdb =
        h.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .expect("fdb");
    assert_eq!(count_lines(&fdb, " dst "), 1, "{fdb}");
    assert!(
        fdb.contains(&format!("{shared} dst 10.0.0.3 self permanent")),
        "{fdb}"
    );
}

/// A lease written on a free subnet with a live peer's PublicIP (and a MAC
/// of nobody's): one address is one host, so it would send a subnet nobody
/// holds to that host. The older lease keeps the address; the later one is
/// skipped with a reason, whatever the order the peers come in, and
/// nothing of it reaches the kernel.
#[tokio::test]
async fn a_second_lease_with_a_live_peers_public_ip_is_not_programmed() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    bring_up(&mut b, h, &cfg, 1).await;
    let ip = |s: &str| s.parse().expect("ip");
    let mut live = lease(
        "10.244.2.0/24",
        vxlan_attrs(ip("10.0.0.3"), "0e:00:00:00:00:02"),
    );
    live.revision = 10;
    let mut hostile = lease(
        "10.244.7.0/24",
        vxlan_attrs(ip("10.0.0.3"), "0e:00:00:00:00:77"),
    );
    hostile.revision = 20;
    let r = b.reconcile(&refs(&[live.clone()])).await.expect("live");
    assert_eq!((r.planned, r.applied), (PEER_OPS, PEER_OPS), "{r:?}");
    for peers in [
        vec![hostile.clone(), live.clone()],
        vec![live.clone(), hostile.clone()],
    ] {
        let r = b.reconcile(&refs(&peers)).await.expect("both");
        assert_eq!((r.planned, r.applied), (0, 0), "{r:?}");
        assert_eq!(
            r.skipped,
            [(
                hostile.key,
                SkipReason::PublicIpInUse {
                    ip: ip("10.0.0.3").into(),
                    peer: live.key,
                }
            )],
            "{r:?}"
        );
    }
    let fdb =
        h.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .expect("fdb");
    assert_eq!(count_lines(&fdb, " dst "), 1, "{fdb}");
    assert!(!fdb.contains("0e:00:00:00:00:77"), "{fdb}");
    let routes =
        h.ns.ip_routes(&["route", "show", "proto", "241"])
            .expect("route");
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );
}

/// A peer whose PublicIP changed in place (same lease, same stable VtepMAC):
/// its FDB entry must move to the new `dst` in one pass. Before the fix the
/// plan was `append new` (ignored by the kernel: the MAC already had a
/// `dst`) then `del old`, leaving no FDB entry at all until the next pass.
#[tokio::test]
async fn a_peer_whose_public_ip_moved_keeps_its_fdb_entry() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    bring_up(&mut b, h, &cfg, 1).await;
    let ip = |s: &str| s.parse().expect("ip");
    let mac = "0e:00:00:00:00:02";
    let before = vec![lease("10.244.2.0/24", vxlan_attrs(ip("10.0.0.3"), mac))];
    let r = b.reconcile(&refs(&before)).await.expect("first");
    assert_eq!((r.planned, r.applied), (PEER_OPS, PEER_OPS), "{r:?}");
    let moved = vec![lease("10.244.2.0/24", vxlan_attrs(ip("10.0.0.4"), mac))];
    let r = b.reconcile(&refs(&moved)).await.expect("moved");
    assert!(r.failed.is_empty(), "{r:?}");
    let fdb =
        h.ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .expect("fdb");
    assert_eq!(count_lines(&fdb, " dst "), 1, "{fdb}");
    assert!(
        fdb.contains(&format!("{mac} dst 10.0.0.4 self permanent")),
        "{fdb}"
    );
    assert_eq!((r.planned, r.applied), (1, 1), "one replace: {r:?}");
    let r = b.reconcile(&refs(&moved)).await.expect("again");
    assert_eq!((r.planned, r.applied), (0, 0), "{r:?}");
}

/// A device repair the kernel refuses is a failed request of the report,
/// with its errno, and the peers are still programmed on the device: here
/// the underlay's MTU was lowered below what the device's MTU (changed by
/// hand) must go back to, so the kernel refuses it (`EINVAL`).
#[tokio::test]
async fn a_refused_device_repair_is_reported_with_its_request_and_errno() {
    twill_testbed::require_root!();
    let lan = Lan::new(1).expect("lan");
    let cfg = config(r#"{"Type":"vxlan"}"#);
    let h = &lan.hosts[0];
    let mut b = backend(h, VxlanOptions::default());
    bring_up(&mut b, h, &cfg, 1).await;
    let ip = |s: &str| s.parse().expect("ip");
    let peers = vec![lease(
        "10.244.2.0/24",
        vxlan_attrs(ip("10.0.0.3"), "0e:00:00:00:00:02"),
    )];
    h.ns.ip(&["link", "set", "flannel.1", "mtu", "1300"])
        .expect("device mtu");
    h.ns.ip(&["link", "set", &h.underlay, "mtu", "1400"])
        .expect("underlay mtu");
    let r = b.reconcile(&refs(&peers)).await.expect("reconcile");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    let f = &r.failed[0];
    assert!(
        matches!(&f.request, twill_backend::Request::LinkSet(c) if c.mtu == Some(1450)),
        "{f:?}"
    );
    assert_eq!(f.errno, Some(22), "EINVAL: {f}");
    assert!(f.to_string().ends_with("(errno 22)"), "{f}");
    assert_eq!(
        (r.planned, r.applied),
        (PEER_OPS, PEER_OPS),
        "peers still programmed: {r:?}"
    );
}
