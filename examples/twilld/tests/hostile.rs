//! Mistaken or hostile input that used to cut a host off or hijack traffic
//! (issue 13), in the real system: hosts in network namespaces on the
//! 10.0.0.0/24 underlay, real etcd, the real twilld.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::net::Ipv4Addr;

use reliability_common as common;
use reliability_common::DEADLINE;
use twill_testbed::cluster::TwillCluster;

/// Each host routes its default through a gateway on the LAN (nobody
/// answers there; it only has to be in the routing table), as real hosts do.
fn add_default_route(c: &TwillCluster, i: usize) {
    c.ns(i)
        .ip(&[
            "route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "onlink",
        ])
        .unwrap();
}

/// Every route in host `i`'s main table whose destination overlaps `net`,
/// other than the kernel's own connected route.
fn routes_into(c: &TwillCluster, i: usize, net: &str) -> Vec<String> {
    let net: twill_model::Ipv4Network = net.parse().unwrap();
    c.all_routes(i)
        .unwrap()
        .into_iter()
        // Not the kernel's connected route (RTPROT_KERNEL) nor the default route.
        .filter(|r| r.protocol != 2 && r.dst.prefix() > 0)
        .filter(|r| net.contains(r.dst.network()) || r.dst.contains(net.network()))
        .map(|r| format!("{r:?}"))
        .collect()
}

/// Waits until host `i` logged that it skips the lease `key`.
fn wait_skipped(c: &TwillCluster, i: usize, key: &str) {
    // `key=<key>`, or the whole etcd key for one that does not parse.
    let suffix = format!("/{key}");
    let names = |w: &str| {
        w.strip_prefix("key=")
            .is_some_and(|k| k == key || k.ends_with(&suffix))
    };
    common::wait_for(
        c,
        DEADLINE,
        &format!("host {i} to log that it skips {key}"),
        || {
            c.daemon(i)
                .log_since_start()
                .lines()
                .any(|l| l.contains("skipping lease") && l.split_whitespace().any(names))
        },
    );
}

/// The underlay still works: every host reaches every other over the LAN.
fn lan_pings(c: &TwillCluster) {
    for a in 0..c.len() {
        for b in 0..c.len() {
            if a == b {
                continue;
            }
            let dst = c.ip(b).to_string();
            c.ns(a)
                .exec("ping", &["-c", "1", "-W", "2", "-q", &dst])
                .unwrap_or_else(|e| panic!("host {a} cannot reach {dst} on the LAN: {e}"));
        }
    }
}

/// Network 10.0.0.0/8 with hosts on 10.0.0.0/24 (the article's warning):
/// accepted with a warning naming the overlap; leases on the LAN
/// (`10.0.0.0-25`, one host's `10.0.0.3-32`) are skipped on every host, and
/// the hosts keep their LAN, each other and etcd.
#[test]
fn a_network_over_the_underlay_never_cuts_hosts_off() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let config = r#"{"Network":"10.0.0.0/8","SubnetMin":"10.1.0.0","SubnetMax":"10.1.99.0","Backend":{"Type":"vxlan","VNI":100}}"#;
    let mut c = TwillCluster::builder()
        .hosts(3)
        .config(config)
        .no_daemons()
        .build(common::TWILLD)
        .unwrap();
    for i in 0..3 {
        add_default_route(&c, i);
        c.start_twilld(i).unwrap();
    }
    c.wait_all_ready(DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..3 {
        common::wait_for_log(
            c.daemon_mut(i),
            "Network 10.0.0.0/8 overlaps this host's own network 10.0.0.0/24",
            DEADLINE,
        );
    }

    let mac = "0e:64:0a:00:00:c8";
    let value = common::vxlan_lease("10.0.0.200", mac);
    for key in ["10.0.0.0-25", "10.0.0.3-32"] {
        common::put_lease(&c, key, &value, 600);
    }
    // Evidence that the daemons processed them: each logs the skip, and a
    // valid lease written after them is programmed.
    for i in 0..3 {
        for key in ["10.0.0.0-25", "10.0.0.3-32"] {
            wait_skipped(&c, i, key);
        }
    }
    common::put_lease(
        &c,
        "10.200.0.0-24",
        &common::vxlan_lease("10.0.0.201", "0e:64:0a:00:00:c9"),
        600,
    );
    for i in 0..3 {
        common::wait_for(&c, DEADLINE, "the valid lease 10.200.0.0/24 routed", || {
            !routes_into(&c, i, "10.200.0.0/24").is_empty()
        });
    }
    common::wait_reconciles(&mut c, &[0, 1, 2], 2);
    for i in 0..3 {
        assert_eq!(
            routes_into(&c, i, "10.0.0.0/24"),
            Vec::<String>::new(),
            "host {i} routes part of its LAN into the overlay"
        );
        assert_eq!(common::http_status(&c, i, "/readyz"), Some(200));
    }
    lan_pings(&c);
    common::report(
        "a_network_over_the_underlay_never_cuts_hosts_off",
        "Network 10.0.0.0/8 warned about on 3 hosts; 10.0.0.0-25 and 10.0.0.3-32 skipped, no route into 10.0.0.0/24, LAN pings ok, ready",
    );
}

/// twilld's own allocation never takes the host's networks: with only LAN
/// subnets in [SubnetMin, SubnetMax] it takes nothing (and says why); with
/// one subnet clear of them, it takes that one.
#[test]
fn own_allocation_never_takes_the_hosts_networks() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // Both /25s of the range are the LAN (10.0.0.0/24).
    let lan_only = r#"{"Network":"10.0.0.0/16","SubnetLen":25,"SubnetMin":"10.0.0.0","SubnetMax":"10.0.0.128","Backend":{"Type":"vxlan","VNI":100}}"#;
    let mut c = TwillCluster::builder()
        .hosts(1)
        .config(lan_only)
        .no_daemons()
        .build(common::TWILLD)
        .unwrap();
    add_default_route(&c, 0);
    c.start_twilld(0).unwrap();
    common::wait_for_log(
        c.daemon_mut(0),
        "cannot acquire a subnet lease yet",
        DEADLINE,
    );
    // Retried, never taken.
    common::wait_for_log(c.daemon_mut(0), "all 2 of 2 subnets", DEADLINE);
    assert!(c.leases().unwrap().is_empty(), "{:?}", c.leases());
    assert!(!c.subnet_file(0).exists());
    assert_eq!(routes_into(&c, 0, "10.0.0.0/24"), Vec::<String>::new());
    assert_eq!(common::http_status(&c, 0, "/readyz"), Some(503));
    c.daemon_mut(0).sigterm().unwrap();

    // SubnetMin = SubnetMax = 10.0.0.0 /24: the LAN itself (subnet.env once
    // said FLANNEL_SUBNET=10.0.0.1/24, the gateway's address). Then a
    // range with one subnet clear of the LAN: that one is taken.
    let one_clear = r#"{"Network":"10.0.0.0/16","SubnetLen":24,"SubnetMin":"10.0.0.0","SubnetMax":"10.0.1.0","Backend":{"Type":"vxlan","VNI":100}}"#;
    c.etcdctl(&["put", "/coreos.com/network/config", one_clear])
        .unwrap();
    c.start_twilld(0).unwrap();
    c.wait_ready(0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        c.subnet_env(0).unwrap().subnet_network().to_string(),
        "10.0.1.0/24"
    );
    assert_eq!(routes_into(&c, 0, "10.0.0.0/24"), Vec::<String>::new());
    c.ns(0)
        .exec("ping", &["-c", "1", "-W", "2", "-q", &c.ip(0).to_string()])
        .unwrap();
    common::report(
        "own_allocation_never_takes_the_hosts_networks",
        "LAN-only range: no lease, not ready, says why; one subnet clear of the LAN: 10.0.1.0/24 taken",
    );
}

/// A zero-padded alias of a live host's key (`<subnet>-024`) with an
/// attacker's PublicIP is skipped: peers keep routing the subnet to its
/// owner, also after the alias is deleted.
#[test]
fn an_alias_key_cannot_hijack_a_live_subnet() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let c = common::start(common::builder(2));
    let victim = c.subnet_env(1).unwrap().subnet_network();
    let before = common::dataplane(&c, 0);
    let alias = format!("{}-0{}", victim.network(), victim.prefix());
    // Written as is: put_lease would (rightly) refuse a key that names an
    // allocatable subnet, which is the point of this one.
    c.etcdctl(&[
        "put",
        &common::lease_key(&alias),
        &common::vxlan_lease("10.0.0.200", "0e:64:0a:00:00:c8"),
    ])
    .unwrap();
    wait_skipped(&c, 0, &alias);
    c.etcdctl(&["del", &common::lease_key(&alias)]).unwrap();
    // Evidence the deletion was seen: a later valid lease is programmed.
    common::put_lease(
        &c,
        "192.168.200.0-24",
        &common::vxlan_lease("10.0.0.201", "0e:64:0a:00:00:c9"),
        600,
    );
    common::wait_for(&c, DEADLINE, "the later lease routed on host 0", || {
        !routes_into(&c, 0, "192.168.200.0/24").is_empty()
    });
    c.etcdctl(&["del", &common::lease_key("192.168.200.0-24")])
        .unwrap();
    common::wait_converged(&c, DEADLINE);
    assert_eq!(
        common::dataplane(&c, 0),
        before,
        "host 0 still routes {victim} to host 1"
    );
    common::all_ping(&c).unwrap();
    common::report(
        "an_alias_key_cannot_hijack_a_live_subnet",
        &format!("{alias} skipped; {victim} still routed to its owner after the alias was deleted"),
    );
}

/// A planted lease with the host's own PublicIP that the allocator could not
/// have handed out (`192.168.0.0-17`) is not adopted at start: the host
/// takes a /24 of the range, and never routes or re-creates the /17.
#[test]
fn a_planted_wide_lease_with_our_ip_is_not_adopted() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::builder(2)
        .without_daemon(0)
        .build(common::TWILLD)
        .unwrap();
    c.wait_ready(1, DEADLINE).unwrap();
    let ours = c.ip(0).to_string();
    common::put_lease(
        &c,
        "192.168.0.0-17",
        &common::vxlan_lease(&ours, "0e:64:0a:00:00:02"),
        600,
    );
    c.start_twilld(0).unwrap();
    c.wait_ready(0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let own = c.subnet_env(0).unwrap().subnet_network();
    assert_eq!(own.prefix(), 24, "{own}");
    assert!(
        (common::ALLOCATED_MIN..=common::ALLOCATED_MAX).contains(&own.network()),
        "{own}"
    );
    // Each host routes the other's /24 (the /17 is no peer of either).
    let other = c.subnet_env(1).unwrap().subnet_network();
    for (i, peer) in [(0, other), (1, own)] {
        common::wait_for(&c, DEADLINE, &format!("host {i} to route {peer}"), || {
            c.routes(i).unwrap().iter().any(|r| r.dst == peer)
        });
    }
    // Nobody routes the /17 (host 1 skips it: it overlaps host 0's own and
    // its own subnet, or claims host 0's IP).
    for i in 0..2 {
        assert!(
            c.routes(i).unwrap().iter().all(|r| r.dst.prefix() != 17),
            "host {i}: {:?}",
            c.routes(i)
        );
    }
    // Deleted, it stays deleted: host 0 holds its /24, not the /17.
    c.etcdctl(&["del", &common::lease_key("192.168.0.0-17")])
        .unwrap();
    common::wait_reconciles(&mut c, &[0], 2);
    let keys: Vec<String> = c.leases().unwrap().iter().map(|l| l.key.clone()).collect();
    assert!(!keys.iter().any(|k| k.ends_with("-17")), "{keys:?}");
    assert_eq!(c.subnet_env(0).unwrap().subnet_network(), own);
    common::report(
        "a_planted_wide_lease_with_our_ip_is_not_adopted",
        &format!("192.168.0.0-17 with our IP present at start: took {own}, the /17 never routed nor re-created"),
    );
}

#[test]
fn gateway_helper_is_on_the_lan() {
    // A guard for add_default_route: the gateway lies on the testbed's LAN.
    let lan: twill_model::Ipv4Network = twill_testbed::netns::Lan::UNDERLAY.parse().unwrap();
    assert!(lan.contains(Ipv4Addr::new(10, 0, 0, 1)));
}

/// A route of ours over the host's LAN, left by an older version (or planted
/// with twill's protocol), cut the host off etcd; a restart then sat in
/// "waiting for etcd" with the route in place forever. Now it is removed
/// before twilld waits for etcd.
#[test]
fn a_leftover_route_over_the_lan_is_removed_before_waiting_for_etcd() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // etcd on host 0 only; host 1 reaches it at 10.0.0.2 over the LAN.
    let mut c = common::builder(2)
        .etcd_members(1)
        .without_daemon(1)
        .build(common::TWILLD)
        .unwrap();
    c.wait_ready(0, DEADLINE).unwrap();
    let ns = c.ns(1);
    common::add_vxlan_by_hand(ns, "10.0.0.3");
    ns.ip(&[
        "route",
        "add",
        "10.0.0.0/29",
        "via",
        "10.0.0.0",
        "dev",
        "flannel.100",
        "onlink",
        "proto",
        "241",
    ])
    .unwrap();
    // The damage is real: host 1 no longer reaches etcd's host.
    assert!(ns
        .exec("ping", &["-c", "1", "-W", "1", "-q", "10.0.0.2"])
        .is_err());
    c.start_twilld(1).unwrap();
    c.wait_ready(1, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    common::wait_for_log(
        c.daemon_mut(1),
        "removed a route of ours over this host's own network: 10.0.0.0/29",
        DEADLINE,
    );
    assert_eq!(routes_into(&c, 1, "10.0.0.0/24"), Vec::<String>::new());
    c.ns(1)
        .exec("ping", &["-c", "1", "-W", "2", "-q", "10.0.0.2"])
        .unwrap();
    common::report(
        "a_leftover_route_over_the_lan_is_removed_before_waiting_for_etcd",
        "10.0.0.0/29 via flannel.100 proto 241 (etcd unreachable) removed at start; ready",
    );
}

/// A lease on a free subnet carrying a live peer's VtepMAC (issue 13 #3): a
/// host building its FDB from scratch used to send that peer's traffic to
/// the newcomer, and running hosts logged `planned=1 applied=1` forever. The
/// older lease keeps the MAC: the newcomer is skipped, reported once, and
/// every host, also one that rebuilds its device, keeps the MAC at its owner.
#[test]
fn a_live_peers_vtep_mac_cannot_be_claimed_by_another_lease() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3));
    c.add_containers().unwrap();
    let mac = c.vtep_mac(1).unwrap().unwrap().to_string();
    let owner = c.ip(1);
    common::put_lease(
        &c,
        "192.168.200.0-24",
        &common::vxlan_lease("10.0.0.200", &mac),
        600,
    );
    let refused = "peer not programmed";
    for i in [0, 2] {
        common::wait_for(
            &c,
            DEADLINE,
            &format!("host {i} to refuse the MAC thief"),
            || {
                c.daemon(i)
                    .log_since_start()
                    .lines()
                    .any(|l| l.contains(refused) && l.contains("192.168.200.0-24"))
            },
        );
    }
    // Host 0 rebuilds its FDB from scratch: its device deleted by hand.
    c.ns(0).ip(&["link", "del", c.vxlan_device()]).unwrap();
    common::wait_reconciles(&mut c, &[0, 2], 3);
    for i in [0, 2] {
        let dsts: Vec<_> = c
            .fdb(i)
            .unwrap()
            .into_iter()
            .filter(|e| e.mac.to_string() == mac)
            .map(|e| e.dst)
            .collect();
        assert_eq!(
            dsts,
            vec![Some(owner)],
            "host {i}: {mac} must stay at {owner}"
        );
        assert!(
            c.routes(i)
                .unwrap()
                .iter()
                .all(|r| r.dst.to_string() != "192.168.200.0/24"),
            "host {i} routes the thief's subnet"
        );
        let lines = c
            .daemon(i)
            .log_since_start()
            .lines()
            .filter(|l| l.contains(refused) && l.contains("192.168.200.0-24"))
            .count();
        assert_eq!(lines, 1, "host {i}: reported once, not at every pass");
    }
    common::all_ping(&c).unwrap();
    common::report(
        "a_live_peers_vtep_mac_cannot_be_claimed_by_another_lease",
        "192.168.200.0-24 with host 1's VtepMAC skipped on both peers, reported once; FDB keeps the MAC at its owner, also after a device rebuild; containers ping",
    );
}
