//! Kernel faults: hand-made damage to what twilld programmed is repaired by
//! the next reconcile (`--reconcile-interval=1s`), and what twilld did not
//! make is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::time::{Duration, Instant};

use reliability_common::{self as common, dataplane, ip, report, DEADLINE};

/// Generous: the promise is "within the reconcile interval (1 s)", measured
/// and printed; the deadline only catches "never".
const REPAIR_DEADLINE: Duration = DEADLINE;

fn wait_repaired(
    c: &twill_testbed::cluster::TwillCluster,
    want: &common::Dataplane,
    what: &str,
) -> Duration {
    let t = Instant::now();
    let r = twill_testbed::cluster::TwillCluster::poll(REPAIR_DEADLINE, what, || {
        dataplane(c, 0) == *want
    });
    if let Err(e) = r {
        panic!(
            "{e}\nwant: {want:?}\nhave: {:?}\n{}",
            dataplane(c, 0),
            c.logs()
        );
    }
    let took = t.elapsed();
    report(what, &format!("repaired in {} ms", took.as_millis()));
    took
}

#[test]
fn hand_made_damage_is_repaired_and_foreign_routes_are_untouched() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3));
    c.add_containers().unwrap();
    common::all_ping(&c).unwrap();
    let dev = c.vxlan_device().to_string();
    let want = dataplane(&c, 0);
    assert_eq!(want.routes.len(), 2, "{want:?}");
    let (mac, mtu, up, _) = want.device.clone().unwrap();
    assert!(up);
    assert_eq!(mtu, 1450);

    // Routes that twill did not make, through the underlay and through our
    // own device: never touched by any reconcile below.
    ip(
        &c,
        0,
        &[
            "route",
            "add",
            "172.31.5.0/24",
            "via",
            "10.0.0.9",
            "dev",
            "eth0",
        ],
    );
    ip(&c, 0, &["route", "add", "172.31.6.0/24", "dev", &dev]);
    let foreign = |c: &twill_testbed::cluster::TwillCluster, with_dev: bool| {
        let routes = ip(c, 0, &["route", "show"]);
        let mut ok = routes.contains("172.31.5.0/24 via 10.0.0.9 dev eth0");
        if with_dev {
            ok &= routes.contains(&format!("172.31.6.0/24 dev {dev}"));
        }
        ok
    };

    let (peer_subnet, peer_gw) = {
        let r = want.routes.iter().next().unwrap();
        (r.0.clone(), r.1.unwrap().to_string())
    };
    let (peer_mac, peer_ip) = want.fdb.iter().next().cloned().unwrap();

    // A route of ours deleted.
    // Without `dev`: a route through a nexthop object is matched by its
    // destination (the kernel matches no device on it).
    ip(&c, 0, &["route", "del", &peer_subnet]);
    wait_repaired(&c, &want, "route deleted by hand");

    // An FDB entry deleted.
    c.ns(0)
        .exec(
            "bridge",
            &[
                "fdb",
                "del",
                &peer_mac,
                "dev",
                &dev,
                "dst",
                &peer_ip.to_string(),
                "self",
            ],
        )
        .unwrap();
    wait_repaired(&c, &want, "FDB entry deleted by hand");

    // An ARP entry deleted.
    ip(&c, 0, &["neigh", "del", &peer_gw, "dev", &dev]);
    wait_repaired(&c, &want, "ARP entry deleted by hand");

    // All three of a peer at once, and a wrong MAC in an ARP entry.
    // Without `dev`: a route through a nexthop object is matched by its
    // destination (the kernel matches no device on it).
    ip(&c, 0, &["route", "del", &peer_subnet]);
    ip(
        &c,
        0,
        &[
            "neigh",
            "replace",
            &peer_gw,
            "lladdr",
            "02:00:00:00:00:66",
            "dev",
            &dev,
            "nud",
            "permanent",
        ],
    );
    wait_repaired(&c, &want, "route deleted and ARP entry corrupted");

    // Stale entries of ours (our device, our protocol) for a subnet no lease
    // names, above the daemons' allocation range: removed.
    ip(
        &c,
        0,
        &[
            "route",
            "add",
            "192.168.177.0/24",
            "via",
            "192.168.177.0",
            "dev",
            &dev,
            "onlink",
            "proto",
            "241",
        ],
    );
    ip(
        &c,
        0,
        &[
            "neigh",
            "add",
            "192.168.177.0",
            "lladdr",
            "0e:00:00:00:01:77",
            "dev",
            &dev,
            "nud",
            "permanent",
        ],
    );
    c.ns(0)
        .exec(
            "bridge",
            &[
                "fdb",
                "append",
                "0e:00:00:00:01:77",
                "dev",
                &dev,
                "dst",
                "10.0.0.177",
                "self",
                "permanent",
            ],
        )
        .unwrap();
    wait_repaired(&c, &want, "stale route, ARP and FDB entries added by hand");
    assert!(foreign(&c, true), "{}", ip(&c, 0, &["route", "show"]));

    // MTU changed.
    ip(&c, 0, &["link", "set", &dev, "mtu", "1300"]);
    wait_repaired(&c, &want, "device MTU changed");

    // MAC changed: peers' FDB and ARP entries point at the old one.
    ip(
        &c,
        0,
        &["link", "set", &dev, "address", "0e:11:22:33:44:55"],
    );
    wait_repaired(&c, &want, "device MAC changed");

    // Device down: the kernel also drops every route through it.
    ip(&c, 0, &["link", "set", &dev, "down"]);
    wait_repaired(&c, &want, "device set down");

    // Device deleted: re-created with the same MAC, address, entries.
    ip(&c, 0, &["link", "del", &dev]);
    wait_repaired(&c, &want, "device deleted");
    assert_eq!(dataplane(&c, 0).device.unwrap().0, mac, "same VTEP MAC");

    // Traffic flows again both ways, the routes twill did not make (off
    // the device) are still there, and nobody restarted.
    wait_for_ping(&c);
    assert!(foreign(&c, false), "{}", ip(&c, 0, &["route", "show"]));
    for i in 0..3 {
        assert!(c.daemon_mut(i).is_running(), "{}", c.logs());
    }
    // The other hosts were never disturbed.
    common::wait_converged(&c, DEADLINE);
    let failures = common::metric(&c, 0, "twill_reconcile_failures_total").unwrap();
    report(
        "reconcile failures during kernel faults",
        &failures.to_string(),
    );
}

fn wait_for_ping(c: &twill_testbed::cluster::TwillCluster) {
    let r = twill_testbed::cluster::TwillCluster::poll(DEADLINE, "pings", || {
        common::all_ping(c).is_ok()
    });
    if let Err(e) = r {
        panic!("{e}: {:?}\n{}", common::all_ping(c), c.logs());
    }
}

#[test]
fn a_second_pass_changes_nothing() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let c = common::start(common::builder(2));
    let before = common::metric(&c, 0, "twill_ops_applied_total").unwrap();
    let reconciles = common::metric(&c, 0, "twill_reconciles_total").unwrap();
    // Several 1 s reconcile passes with nothing changed apply nothing.
    common::wait_for(&c, DEADLINE, "3 more reconciles", || {
        common::metric(&c, 0, "twill_reconciles_total").unwrap_or(0.0) >= reconciles + 3.0
    });
    assert_eq!(
        common::metric(&c, 0, "twill_ops_applied_total").unwrap(),
        before,
        "{}",
        c.logs()
    );
}

/// Issue 13: after a VNI change and a restart, `flannel.100` was left
/// behind with its routes to the peers, which the new `flannel.200` then
/// found in the way ("a route twill did not create is in the way"), and
/// traffic kept using the old VNI. Our device of the old VNI is deleted at
/// set-up (its routes go with it); a bridge that happens to be called
/// `flannel.7` is not ours and is never touched.
#[test]
fn a_vni_change_removes_our_old_device_and_only_it() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(2));
    ip(&c, 0, &["link", "add", "flannel.7", "type", "bridge"]);
    ip(&c, 0, &["link", "set", "flannel.7", "up"]);
    for i in 0..2 {
        c.daemon_mut(i).sigterm().unwrap();
    }
    let vni200 = common::CONFIG.replace(r#""VNI":100"#, r#""VNI":200"#);
    assert_ne!(vni200, common::CONFIG);
    c.etcdctl(&["put", "/coreos.com/network/config", &vni200])
        .unwrap();
    for i in 0..2 {
        c.daemon_mut(i).spawn().unwrap();
    }
    for i in 0..2 {
        c.wait_ready(i, DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    let subnets: Vec<_> = (0..2)
        .map(|i| c.subnet_env(i).unwrap().subnet_network())
        .collect();
    // Each host: flannel.100 gone, the peer routed through flannel.200.
    for (i, peer) in [(0, 1), (1, 0)] {
        let peer_net = format!("{}/{}", subnets[peer].network(), subnets[peer].prefix());
        common::wait_for(&c, DEADLINE, "old device gone, peer on flannel.200", || {
            let links = ip(&c, i, &["-o", "link", "show"]);
            let routes = ip(&c, i, &["-4", "route", "show", "proto", "241"]);
            !links.contains("flannel.100")
                && routes
                    .lines()
                    .any(|l| l.starts_with(&peer_net) && l.contains("dev flannel.200"))
        });
        let log = c.daemon(i).log_since_start();
        assert!(
            log.lines()
                .any(|l| l.contains("deleting VXLAN device") && l.contains("flannel.100")),
            "{log}"
        );
        assert!(!log.contains("did not create is in the way"), "{log}");
    }
    // The bridge is untouched: still there, still a bridge, still up.
    let bridge = ip(&c, 0, &["-d", "-o", "link", "show", "flannel.7"]);
    assert!(
        bridge.contains("bridge") && bridge.contains(",UP"),
        "{bridge}"
    );
    c.add_containers().unwrap();
    common::wait_for(&c, DEADLINE, "containers ping over VNI 200", || {
        common::all_ping(&c).is_ok()
    });
}
