//! The host-gw backend between two namespace hosts.

mod common;

use common::{bring_up, config, lease, refs};
use twill_backend::{Backend, BackendRegistry, HostGwBackend};
use twill_model::{LeaseAttrs, SkipReason};
use twill_testbed::netns::Lan;

#[tokio::test]
async fn host_gw_routes_via_peer_public_ip_and_pings() {
    twill_testbed::require_root!();
    let mut lan = Lan::new(2).expect("lan");
    let cfg = config(r#"{"Type":"host-gw"}"#);
    let mut leases = Vec::new();
    let mut backends = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        let mut b = HostGwBackend::with_handle(h.ns.netlink().expect("nl"));
        let (local, own) = bring_up(&mut b, h, &cfg, u8::try_from(i + 1).expect("n")).await;
        assert_eq!(local.mtu, 1500);
        assert_eq!(local.attrs.backend_type, "host-gw");
        leases.push(own);
        backends.push(b);
    }
    let far = lease(
        "10.244.9.0/24",
        LeaseAttrs::new("192.168.50.5".parse().expect("ip"), "host-gw"),
    );
    let mut all = leases.clone();
    all.push(far);
    for b in &mut backends {
        let r = b.reconcile(&refs(&all)).await.expect("reconcile");
        assert_eq!(r.planned, 1, "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert!(
            matches!(&r.skipped[0].1, SkipReason::NotOnSegment { public_ip, .. }
                if public_ip.to_string() == "192.168.50.5"),
            "{r:?}"
        );
        assert!(
            r.skipped[0].1.to_string().contains("not on our L2 segment"),
            "{r:?}"
        );
        assert_eq!(b.reconcile(&refs(&all)).await.expect("again").planned, 0);
    }
    for (i, h) in lan.hosts.iter_mut().enumerate() {
        h.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .expect("fwd");
        let n = i + 1;
        h.add_container(
            "cni0",
            format!("10.244.{n}.2/24").parse().expect("net"),
            format!("10.244.{n}.1").parse().expect("gw"),
        )
        .expect("container");
    }
    let routes = lan.hosts[0]
        .ns
        .ip(&["route", "show", "proto", "241"])
        .expect("routes");
    assert_eq!(routes.trim(), "10.244.2.0/24 via 10.0.0.3 dev eth0");
    let ping = lan.hosts[0].containers[0]
        .exec("ping", &["-c1", "-W2", "10.244.2.2"])
        .expect("c1 -> c2");
    assert!(ping.contains("1 received"), "{ping}");
}

#[test]
fn registry_knows_builtins_and_names_unknown_types() {
    let reg = BackendRegistry::with_builtins();
    assert_eq!(
        reg.names().collect::<Vec<_>>(),
        vec!["extension", "host-gw", "vxlan"]
    );
    let err = match reg.create(&twill_model::BackendConfig::new("udp")) {
        Err(e) => e,
        Ok(_) => panic!("udp must be unknown"),
    };
    assert!(err.to_string().contains("\"udp\""), "{err}");
    let bad = config(r#"{"Type":"vxlan","VNI":"seven"}"#);
    let err = match reg.create(&bad.backend) {
        Err(e) => e,
        Ok(_) => panic!("bad VNI must fail"),
    };
    assert!(err.to_string().contains("vxlan"), "{err}");
    let ok = reg
        .create(&config(r#"{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true}"#).backend)
        .expect("vxlan");
    assert_eq!(ok.backend_type(), "vxlan");
}

#[tokio::test]
async fn host_gw_routes_ipv6_subnets_via_peer_public_ipv6_and_pings6() {
    host_gw_ipv6(true).await;
}

/// IPv6-only hosts (`EnableIPv4` false, no IPv4 underlay address): only
/// the IPv6 routes, a lease with flannel's `PublicIP` 0.0.0.0.
#[tokio::test]
async fn host_gw_on_ipv6_only_hosts_routes_and_pings6() {
    host_gw_ipv6(false).await;
}

async fn host_gw_ipv6(dual: bool) {
    twill_testbed::require_root!();
    let lan = Lan::new(2).expect("lan");
    let v4 = if dual {
        r#""Network":"10.244.0.0/16","SubnetLen":24"#
    } else {
        r#""EnableIPv4":false"#
    };
    let cfg = twill_model::NetworkConfig::parse(&format!(
        r#"{{{v4},"EnableIPv6":true,
            "IPv6Network":"fd10:244::/56","IPv6SubnetLen":64,"Backend":{{"Type":"host-gw"}}}}"#
    ))
    .expect("config");
    let v6 = |i: usize| -> std::net::Ipv6Addr { format!("fd00::{}", i + 2).parse().expect("ip6") };
    let mut leases = Vec::new();
    let mut backends = Vec::new();
    for (i, h) in lan.hosts.iter().enumerate() {
        h.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", v6(i)),
            "dev",
            "eth0",
            "nodad",
        ])
        .expect("underlay v6");
        // The overlay address the peer pings, on loopback.
        let n = i + 1;
        h.ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
        h.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd10:244:0:{n}::1/128"),
            "dev",
            "lo",
        ])
        .expect("overlay v6");
        let mut b = HostGwBackend::with_handle(h.ns.netlink().expect("nl"));
        let mut ul = common::underlay(h);
        if !dual {
            h.ns.ip(&["-4", "addr", "flush", "dev", "eth0"])
                .expect("remove the IPv4 underlay address");
            ul.addr = None;
        }
        let local = b
            .setup(&twill_backend::HostContext {
                config: &cfg,
                public_ip: if dual {
                    h.addr
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED
                },
                underlay: &ul,
                ipv6: Some(twill_backend::Ipv6Underlay {
                    addr: v6(i),
                    public_ip: v6(i),
                }),
            })
            .await
            .expect("setup");
        assert_eq!(local.attrs.public_ipv6, Some(v6(i)));
        let v6_subnet = format!("fd10:244:0:{n}::/64").parse().expect("v6");
        let own = twill_model::SubnetLease {
            key: if dual {
                twill_model::SubnetKey::dual(
                    format!("10.244.{n}.0/24").parse().expect("v4"),
                    v6_subnet,
                )
            } else {
                twill_model::SubnetKey::v6_only(v6_subnet)
            },
            attrs: local.attrs,
            kind: twill_model::LeaseKind::Expiring,
            revision: 0,
        };
        b.activate(&own).await.expect("activate");
        leases.push(own);
        backends.push(b);
    }
    for b in &mut backends {
        let r = b.reconcile(&refs(&leases)).await.expect("reconcile");
        let ops = if dual { 2 } else { 1 };
        assert_eq!((r.planned, r.applied), (ops, ops), "{r:?}");
        assert!(r.skipped.is_empty() && r.failed.is_empty(), "{r:?}");
        assert_eq!(b.reconcile(&refs(&leases)).await.expect("again").planned, 0);
    }
    let h1 = &lan.hosts[0].ns;
    let routes = h1
        .ip(&["-6", "route", "show", "proto", "241"])
        .expect("routes");
    assert!(
        routes
            .trim()
            .starts_with("fd10:244:0:2::/64 via fd00::3 dev eth0"),
        "{routes}"
    );
    let ping = h1
        .exec("ping", &["-6", "-c1", "-W2", "fd10:244:0:2::1"])
        .expect("ping6 via host-gw");
    assert!(ping.contains("1 received"), "{ping}");
    let routes4 = h1.ip(&["route", "show", "proto", "241"]).expect("routes");
    assert_eq!(routes4.trim().is_empty(), !dual, "{routes4}");
}
