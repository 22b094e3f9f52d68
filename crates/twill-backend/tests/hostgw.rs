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
    assert_eq!(reg.names().collect::<Vec<_>>(), vec!["host-gw", "vxlan"]);
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
