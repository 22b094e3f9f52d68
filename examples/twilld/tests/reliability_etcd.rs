//! etcd faults against real twilld hosts: a member down, all members down
//! for 30 s, restarts with data, a host partitioned from etcd for longer
//! than its lease TTL, watch history compacted while a daemon is away, and
//! the network config changed under running daemons.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    missing_docs
)]

mod reliability_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reliability_common::{self as common, dataplane, report, Dataplane, DEADLINE};
use twill_testbed::cluster::TwillCluster;

const FAKE_MAC: &str = "0e:00:00:00:00:32";

/// Whether host `i` routes `subnet` (e.g. `192.168.200.0/24`) through flannel.N.
fn routes_to(c: &TwillCluster, i: usize, subnet: &str) -> bool {
    dataplane(c, i).routes.iter().any(|r| r.0 == subnet)
}

/// Adds a lease for a host that does not exist (10.0.0.50) and waits until
/// every host with a daemon in `hosts` programs it, then deletes it and
/// waits until they all removed it. Returns how long each took.
fn lease_change_applied(c: &TwillCluster, hosts: &[usize], subnet: &str) -> (Duration, Duration) {
    let key = subnet.replace('/', "-");
    let t = Instant::now();
    common::put_lease(c, &key, &common::vxlan_lease("10.0.0.50", FAKE_MAC), 0);
    common::wait_for(
        c,
        DEADLINE,
        &format!("{subnet} programmed on every host"),
        || hosts.iter().all(|&i| routes_to(c, i, subnet)),
    );
    let added = t.elapsed();
    let t = Instant::now();
    c.etcdctl(&["del", &common::lease_key(&key)]).unwrap();
    common::wait_for(
        c,
        DEADLINE,
        &format!("{subnet} removed on every host"),
        || hosts.iter().all(|&i| !routes_to(c, i, subnet)),
    );
    (added, t.elapsed())
}

fn snapshot(c: &TwillCluster) -> Vec<Dataplane> {
    (0..c.len()).map(|i| dataplane(c, i)).collect()
}

fn renewals(c: &TwillCluster, i: usize) -> f64 {
    common::metric(c, i, "twill_lease_renewals_total").unwrap_or(-1.0)
}

/// A cluster whose daemons know every etcd member (not only their local one).
fn cluster_with_all_endpoints(n: usize, extra: &[&str]) -> TwillCluster {
    let mut c = common::builder(n)
        .no_daemons()
        .build(common::TWILLD)
        .unwrap();
    let endpoints = format!("-etcd-endpoints={}", c.etcd().endpoints().join(","));
    for i in 0..n {
        let mut args = c.base_args(i);
        args.retain(|a| !a.starts_with("-etcd-endpoints"));
        args.push(endpoints.clone());
        args.extend(extra.iter().map(ToString::to_string));
        c.start_twilld_with(i, args).unwrap();
    }
    c.wait_all_ready(DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    common::wait_converged(&c, DEADLINE);
    c
}

#[test]
fn one_member_of_three_down_has_no_effect() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = cluster_with_all_endpoints(3, &["--lease-ttl=4s"]);
    c.add_containers().unwrap();
    let before = snapshot(&c);
    // Crash the member host 1's daemon was using first.
    c.etcd_mut().kill_member(0).unwrap();
    let r0: Vec<f64> = (0..3).map(|i| renewals(&c, i)).collect();
    let down = Instant::now();
    // Longer than two TTLs, and until every lease has been renewed twice
    // through the other members; the kernel unchanged all along.
    loop {
        assert_eq!(
            snapshot(&c),
            before,
            "kernel changed with one member down\n{}",
            c.logs()
        );
        let now: Vec<f64> = (0..3).map(|i| renewals(&c, i)).collect();
        if down.elapsed() >= Duration::from_secs(9) && (0..3).all(|i| now[i] >= r0[i] + 2.0) {
            break;
        }
        assert!(
            down.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for 2 renewals by every host with one member down: {r0:?} -> {now:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    common::all_ping(&c).unwrap();
    assert_eq!(c.leases().unwrap().len(), 3);
    let (add, del) = lease_change_applied(&c, &[0, 1, 2], "192.168.200.0/24");
    assert!(
        c.daemon(0).log().matches("lease lost").count() == 0,
        "{}",
        c.logs()
    );
    c.etcd_mut().start_member(0).unwrap();
    c.etcd_mut().wait_healthy().unwrap();
    report(
        "etcd: 1 of 3 members down",
        &format!(
            "kernel unchanged for 9 s (> 2 TTLs), every lease renewed twice via the other members, new lease programmed in {} ms, removal in {} ms",
            add.as_millis(),
            del.as_millis()
        ),
    );
}

/// A host running an etcd member cut off from etcd (its packets dropped,
/// no reset) for three TTLs: a daemon that knows every member must keep
/// its lease through the other two. Its client balances over the members
/// whose connection looks alive, and a black-holed one looks alive for
/// seconds; before the fix its keepalive waited there for the request
/// timeout (10 s) and the 5 s lease expired (issue 18's chaos soak, seeds
/// 2, 5 and 11). Each member is cut in turn, so the one carrying the
/// daemon's keepalive stream is cut at least once, whichever it is.
#[test]
fn a_black_holed_member_does_not_expire_the_leases_of_others() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // Hosts 0-2 run a member each and use it; host 3 knows all three.
    let c = common::start(
        common::builder(4)
            .etcd_members(3)
            .twilld_args(&["--lease-ttl=5s"]),
    );
    let watched = 3;
    let renewed = |i| renewals(&c, i);
    for cut in 0..3 {
        let r0 = renewed(watched);
        common::partition_from_etcd(&c, cut);
        let t = Instant::now();
        // Three TTLs, and at least two renewals meanwhile.
        while t.elapsed() < Duration::from_secs(15) || renewed(watched) < r0 + 2.0 {
            assert!(
                t.elapsed() < DEADLINE,
                "member {cut} cut off: host {watched} renewed {} times in {DEADLINE:?}\n{}",
                renewed(watched) - r0,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        common::heal_partition(&c, cut);
        let log = c.daemon(watched).log();
        assert!(
            !log.contains("lease was lost") && !log.contains("lease lost"),
            "member {cut} cut off: host {watched} lost its lease\n{}",
            c.logs()
        );
        common::wait_converged(&c, DEADLINE);
    }
    report(
        "etcd: a member's host black-holed",
        "each of 3 members cut off for 15 s (3 TTLs) in turn: the daemon knowing every member renewed through the others and never lost its lease",
    );
}

#[test]
fn all_members_down_for_30s() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3).twilld_args(&["--lease-ttl=5s"]));
    c.add_containers().unwrap();
    common::all_ping(&c).unwrap();
    let before = snapshot(&c);
    let leases_before = c.leases().unwrap();
    for m in 0..3 {
        c.etcd_mut().kill_member(m).unwrap();
    }
    let down = Instant::now();
    let mut pings = 0;
    let mut last_ping = Instant::now() - Duration::from_secs(10);
    while down.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            snapshot(&c),
            before,
            "kernel changed {} after etcd went down\n{}",
            common::secs(down),
            c.logs()
        );
        if last_ping.elapsed() > Duration::from_secs(5) {
            common::all_ping(&c).unwrap_or_else(|e| panic!("{e} with etcd down\n{}", c.logs()));
            pings += 1;
            last_ping = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..3 {
        assert!(c.daemon_mut(i).is_running(), "{}", c.logs());
        assert_eq!(common::http_status(&c, i, "/healthz"), Some(200));
    }
    for m in 0..3 {
        c.etcd_mut().start_member(m).unwrap();
    }
    c.etcd_mut().wait_healthy().unwrap();
    let up = Instant::now();
    // Leases re-established: the same subnets, renewed again, and the
    // kernel never disturbed on the way.
    let r0: Vec<f64> = (0..3).map(|i| renewals(&c, i)).collect();
    common::wait_for(&c, DEADLINE, "every host to renew its lease again", || {
        assert_eq!(
            snapshot(&c),
            before,
            "kernel changed during recovery\n{}",
            c.logs()
        );
        (0..3).all(|i| renewals(&c, i) > r0[i])
    });
    let renewed = up.elapsed();
    let leases_after = c.leases().unwrap();
    let keys = |ls: &[twill_testbed::cluster::StoredLease]| -> BTreeSet<(String, Option<std::net::Ipv4Addr>)> {
        ls.iter().map(|l| (l.key.clone(), l.public_ip)).collect()
    };
    assert_eq!(
        keys(&leases_after),
        keys(&leases_before),
        "same leases after recovery"
    );
    assert_eq!(
        snapshot(&c),
        before,
        "kernel unchanged after recovery\n{}",
        c.logs()
    );
    let (add, del) = lease_change_applied(&c, &[0, 1, 2], "192.168.201.0/24");
    common::all_ping(&c).unwrap();
    report(
        "etcd: all members down 30 s",
        &format!(
            "kernel unchanged for 30 s, {pings} rounds of pings ok; after recovery every lease renewed within {} ms, same subnets; lease added/removed after recovery applied in {}/{} ms",
            renewed.as_millis(),
            add.as_millis(),
            del.as_millis()
        ),
    );
}

#[test]
fn etcd_restarted_with_its_data() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3).twilld_args(&["--lease-ttl=5s"]));
    let before = snapshot(&c);
    let leases_before = c.leases().unwrap();
    // Rolling restart, one member at a time.
    for m in 0..3 {
        c.etcd_mut().restart_member(m).unwrap();
    }
    assert_eq!(snapshot(&c), before);
    // The whole cluster at once (graceful stop, start with the same data).
    for m in 0..3 {
        c.etcd_mut().stop_member(m).unwrap();
    }
    for m in 0..3 {
        c.etcd_mut().start_member(m).unwrap();
    }
    c.etcd_mut().wait_healthy().unwrap();
    let r0: Vec<f64> = (0..3).map(|i| renewals(&c, i)).collect();
    common::wait_for(&c, DEADLINE, "renewals after the restart", || {
        (0..3).all(|i| renewals(&c, i) > r0[i])
    });
    let leases_after = c.leases().unwrap();
    assert_eq!(
        leases_after.iter().map(|l| &l.key).collect::<Vec<_>>(),
        leases_before.iter().map(|l| &l.key).collect::<Vec<_>>()
    );
    assert_eq!(snapshot(&c), before, "{}", c.logs());
    let (add, del) = lease_change_applied(&c, &[0, 1, 2], "192.168.202.0/24");
    for i in 0..3 {
        let log = c.daemon(i).log();
        assert!(!log.contains("lease lost"), "{log}");
    }
    report(
        "etcd restarted with its data (rolling, then all at once)",
        &format!(
            "no lease lost, kernel unchanged, watch resumed: lease change applied in {}/{} ms",
            add.as_millis(),
            del.as_millis()
        ),
    );
}

/// The partitioned host (index 2) and a late joiner (index 3, no etcd
/// member). Four subnets for four hosts: when host 2's lease has expired and
/// host 3 joins while the fourth subnet is held by a reservation, host 3
/// can only take host 2's subnet.
#[test]
fn partition_from_etcd_longer_than_the_ttl() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let config = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.1.0","SubnetMax":"192.168.4.0","Backend":{"Type":"vxlan","VNI":100}}"#;
    let mut c = TwillCluster::builder()
        .hosts(4)
        .etcd_members(3)
        .config(config)
        .twilld_args(&["--lease-ttl=3s"])
        .without_daemon(3)
        .build(common::TWILLD)
        .unwrap();
    c.wait_all_ready(DEADLINE).unwrap();
    common::wait_converged_among(&c, &[0, 1, 2], DEADLINE);
    let cut = 2;
    let old = c.subnet_env(cut).unwrap().subnet_network();

    // --- 1. Nobody takes the subnet: the same one is claimed again. ---
    let before = dataplane(&c, cut);
    common::partition_from_etcd(&c, cut);
    let t = Instant::now();
    common::wait_for(&c, DEADLINE, "the cut-off host's lease to expire", || {
        c.leases()
            .is_ok_and(|ls| ls.iter().all(|l| l.public_ip != Some(c.ip(cut))))
    });
    let expired = t.elapsed();
    // The others stop routing to it; it keeps routing everything it knew.
    common::wait_converged_among(&c, &[0, 1], DEADLINE);
    assert_eq!(
        dataplane(&c, cut),
        before,
        "the cut-off host keeps its dataplane"
    );
    // Cut off from etcd it cannot keep its lease nor see peers change: not
    // ready (issue 13), while its kernel state stays as it was.
    common::wait_for(&c, DEADLINE, "the cut-off host to report not ready", || {
        common::http_status(&c, cut, "/readyz") == Some(503)
    });
    assert_eq!(common::metric(&c, cut, "twill_etcd_reachable"), Some(0.0));
    assert_eq!(
        dataplane(&c, cut),
        before,
        "not ready, but the dataplane is kept"
    );
    common::heal_partition(&c, cut);
    let t = Instant::now();
    common::wait_converged_among(&c, &[0, 1, 2], DEADLINE);
    let rejoined = t.elapsed();
    assert_eq!(
        c.own_lease(cut).unwrap().unwrap().subnet,
        old,
        "same subnet again\n{}",
        c.logs()
    );
    assert_eq!(c.subnet_env(cut).unwrap().subnet_network(), old);
    c.wait_ready(cut, DEADLINE)
        .unwrap_or_else(|e| panic!("ready again once etcd answers: {e}\n{}", c.logs()));
    report(
        "partition > TTL, subnet not taken",
        &format!(
            "lease expired {} ms after the cut; after healing the same subnet was claimed again and every host converged in {} ms",
            expired.as_millis(),
            rejoined.as_millis()
        ),
    );

    // --- 2. Someone takes it while the host is cut off. ---
    common::partition_from_etcd(&c, cut);
    common::wait_for(&c, DEADLINE, "the cut-off host's lease to expire", || {
        c.leases()
            .is_ok_and(|ls| ls.iter().all(|l| l.public_ip != Some(c.ip(cut))))
    });
    // Hold the only other free subnet with a reservation.
    let taken: BTreeSet<String> = c
        .leases()
        .unwrap()
        .iter()
        .map(|l| l.subnet.to_string())
        .collect();
    let spare = (1..=4)
        .map(|n| format!("192.168.{n}.0/24"))
        .find(|s| !taken.contains(s) && *s != old.to_string())
        .unwrap();
    let spare_key = spare.replace('/', "-");
    // Written while no daemon allocates: hosts 0 and 1 hold theirs, host 2
    // is cut off, host 3 not started.
    common::reserve(
        &c,
        &spare_key,
        &common::vxlan_lease("10.0.0.99", "0e:00:00:00:00:99"),
    );
    c.start_twilld(3).unwrap();
    c.wait_ready(3, DEADLINE).unwrap();
    let joiner = c.own_lease(3).unwrap().unwrap().subnet;
    assert_eq!(joiner, old, "the joiner takes the expired subnet");
    // While cut off, host 2 still has the old subnet on its device: the
    // conflict this test documents. The other hosts route it to host 3.
    assert_eq!(c.subnet_env(cut).unwrap().subnet_network(), old);
    c.etcdctl(&["del", &common::lease_key(&spare_key)]).unwrap();
    common::heal_partition(&c, cut);
    let t = Instant::now();
    common::wait_for(
        &c,
        DEADLINE,
        "the cut-off host to move to a new subnet",
        || {
            c.own_lease(cut)
                .ok()
                .flatten()
                .is_some_and(|l| l.subnet != old)
                && c.subnet_env(cut).is_ok_and(|e| e.subnet_network() != old)
        },
    );
    common::wait_converged_among(&c, &[0, 1, 2, 3], DEADLINE);
    let moved = t.elapsed();
    // No two live hosts route the same subnet: leases, subnet files and
    // device addresses are pairwise distinct and agree with each other.
    let mut seen = BTreeSet::new();
    for i in 0..4 {
        let lease = c.own_lease(i).unwrap().unwrap();
        let env = c.subnet_env(i).unwrap();
        assert_eq!(env.subnet_network(), lease.subnet, "host {i}");
        let addrs = c.vxlan_addrs(i).unwrap();
        assert_eq!(addrs.len(), 1, "host {i}: {addrs:?}");
        assert!(
            lease.subnet.contains(addrs[0].ip()),
            "host {i}: {addrs:?} vs {lease:?}"
        );
        assert!(seen.insert(lease.subnet), "two hosts with {}", lease.subnet);
    }
    let new = c.own_lease(cut).unwrap().unwrap().subnet;
    let log = c.daemon(cut).log();
    assert!(log.contains("our subnet changed: re-activating"), "{log}");
    report(
        "partition > TTL, subnet taken meanwhile",
        &format!(
            "the joiner took {old} once it expired; after healing the cut-off host moved to {new}, rewrote subnet.env and re-activated in {} ms; 4 hosts, 4 distinct subnets",
            moved.as_millis()
        ),
    );
}

/// The sum of etcd's gRPC messages received by the member in host `i`
/// (every unary request and every stream message: watch creations,
/// keepalives).
fn etcd_grpc_messages(c: &TwillCluster, i: usize) -> u64 {
    c.etcd()
        .member(i)
        .unwrap()
        .grpc_messages_received(None)
        .expect("etcd metrics")
}

#[test]
fn watch_history_compacted_while_disconnected() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // Host 2's daemon only talks to its local member (127.0.0.1:2379); its
    // connections are reset and refused while the member itself stays in
    // the cluster and applies everything, the compaction included.
    let mut c = common::start(common::builder(3).twilld_args(&["--lease-ttl=30s"]));
    let away = 2;
    common::reset_local_etcd_clients(&c, away);
    common::wait_for_log(c.daemon_mut(away), "lease watch", DEADLINE);
    // Changes it misses, then history compacted past them.
    common::put_lease(
        &c,
        "192.168.210.0-24",
        &common::vxlan_lease("10.0.0.51", "0e:00:00:00:00:51"),
        0,
    );
    common::put_lease(
        &c,
        "192.168.211.0-24",
        &common::vxlan_lease("10.0.0.52", "0e:00:00:00:00:52"),
        0,
    );
    for n in 0..20 {
        c.etcdctl(&["put", "/twill-test/filler", &n.to_string()])
            .unwrap();
    }
    c.etcdctl(&["del", &common::lease_key("192.168.211.0-24")])
        .unwrap();
    let status = c.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap();
    let rev: String = status
        .split("\"revision\":")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    c.etcdctl(&["compact", &rev, "--physical"]).unwrap();
    // Until host 2's member has applied the compaction, an old revision
    // there is still readable.
    let endpoint = format!("--endpoints=http://{}:2379", c.ip(away));
    common::wait_for(&c, DEADLINE, "host 2's member to compact", || {
        c.ns(away)
            .exec(
                "etcdctl",
                &[
                    &endpoint,
                    "get",
                    "--rev=2",
                    "--consistency=s",
                    "/coreos.com/network/config",
                ],
            )
            .is_err_and(|e| e.to_string().contains("compacted"))
    });
    assert!(
        !routes_to(&c, away, "192.168.210.0/24"),
        "the change reached host 2 while it was away"
    );
    common::allow_local_etcd_clients(&c, away);
    let back = Instant::now();
    common::wait_for(&c, DEADLINE, "the missed changes applied", || {
        routes_to(&c, away, "192.168.210.0/24") && !routes_to(&c, away, "192.168.211.0/24")
    });
    let resynced = back.elapsed();
    let log = c.daemon(away).log();
    let resyncs = log
        .matches("watch history compacted; resynced from a full listing")
        .count();
    assert_eq!(resyncs, 1, "one resync after the compaction\n{log}");
    // No hot loop: over the daemon's next 5 reconcile passes (about 5 s at
    // the 1 s interval; the window is the daemon's own pace, so a loaded
    // machine stretches it rather than shortening it), the member serving
    // host 2 receives only a handful of messages (keepalives, the config
    // check after each periodic pass) and the daemon logs little.
    let m0 = etcd_grpc_messages(&c, away);
    let lines0 = c.daemon(away).log().lines().count();
    common::wait_reconciles(&mut c, &[away], 5);
    let msgs = etcd_grpc_messages(&c, away) - m0;
    let lines = c.daemon(away).log().lines().count() - lines0;
    assert!(
        msgs < 50,
        "{msgs} etcd messages in 5 reconcile passes\n{}",
        c.daemon(away).log_tail(40)
    );
    assert!(
        lines < 20,
        "{lines} log lines in 5 reconcile passes\n{}",
        c.daemon(away).log_tail(40)
    );
    let after = c
        .daemon(away)
        .log()
        .matches("watch history compacted; resynced from a full listing")
        .count();
    assert_eq!(after, resyncs, "resyncs keep happening");
    c.etcdctl(&["del", &common::lease_key("192.168.210.0-24")])
        .unwrap();
    report(
        "watch history compacted while disconnected",
        &format!(
            "{resyncs} resync, missed changes applied {} ms after reconnecting; then {msgs} gRPC messages and {lines} log lines in 5 reconcile passes",
            resynced.as_millis()
        ),
    );
}

#[test]
fn network_config_changed_while_running() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(2));
    c.add_containers().unwrap();
    let before = snapshot(&c);
    let envs: Vec<_> = (0..2).map(|i| c.subnet_env(i).unwrap()).collect();
    let leases = c.leases().unwrap();
    let moved = r#"{"Network":"10.50.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":100}}"#;
    c.etcdctl(&["put", "/coreos.com/network/config", moved])
        .unwrap();
    let warning = "network config changed in etcd; still using the config read at start-up: restart the agent to apply it";
    for i in 0..2 {
        common::wait_for_log(c.daemon_mut(i), warning, DEADLINE);
    }
    // A peer lease in the new network is outside the running one: skipped.
    common::put_lease(
        &c,
        "10.50.7.0-24",
        &common::vxlan_lease("10.0.0.53", "0e:00:00:00:00:53"),
        0,
    );
    // A peer lease in the running network is still programmed.
    common::put_lease(
        &c,
        "192.168.220.0-24",
        &common::vxlan_lease("10.0.0.54", "0e:00:00:00:00:54"),
        0,
    );
    common::wait_for(
        &c,
        DEADLINE,
        "a lease in the running network programmed",
        || (0..2).all(|i| routes_to(&c, i, "192.168.220.0/24")),
    );
    for i in 0..2 {
        common::wait_for_log(c.daemon_mut(i), "10.50.7.0-24", DEADLINE);
    }
    // Several periodic passes, each followed by a config check: the skipped
    // lease stays unrouted and the warning is not repeated. (4 passes: at
    // least 3 began after this point, the config checked after 2 of them.)
    common::wait_reconciles(&mut c, &[0, 1], 4);
    for i in 0..2 {
        assert!(!routes_to(&c, i, "10.50.7.0/24"));
        assert_eq!(
            c.daemon(i).log().matches(warning).count(),
            1,
            "warned once\n{}",
            c.daemon(i).log()
        );
    }
    c.etcdctl(&["put", "/coreos.com/network/config", "{not json"])
        .unwrap();
    for i in 0..2 {
        common::wait_for_log(
            c.daemon_mut(i),
            "network config in etcd is not usable",
            DEADLINE,
        );
    }
    common::wait_reconciles(&mut c, &[0, 1], 4);
    for i in 0..2 {
        let log = c.daemon(i).log();
        assert_eq!(
            log.matches(warning).count(),
            1,
            "warned once per change\n{log}"
        );
        assert_eq!(
            log.matches("network config in etcd is not usable").count(),
            1,
            "{log}"
        );
        assert_eq!(c.subnet_env(i).unwrap(), envs[i], "subnet.env untouched");
        assert!(c.daemon_mut(i).is_running());
    }
    c.etcdctl(&["del", &common::lease_key("10.50.7.0-24")])
        .unwrap();
    c.etcdctl(&["del", &common::lease_key("192.168.220.0-24")])
        .unwrap();
    common::wait_for(&c, DEADLINE, "kernel back to the start", || {
        snapshot(&c) == before
    });
    assert_eq!(c.leases().unwrap(), leases);
    common::all_ping(&c).unwrap();

    // Restart applies a config: back to the original here, so the host
    // keeps its lease and nothing moves.
    c.etcdctl(&["put", "/coreos.com/network/config", common::CONFIG])
        .unwrap();
    common::wait_for_log(
        c.daemon_mut(0),
        "network config in etcd is the running one again",
        DEADLINE,
    );
    c.daemon_mut(0).restart().unwrap();
    c.wait_ready(0, DEADLINE).unwrap();
    assert_eq!(c.subnet_env(0).unwrap(), envs[0]);
    common::wait_converged(&c, DEADLINE);
    report(
        "network config changed in etcd while running",
        "warned once per change (changed, unusable, back), config of start-up kept: subnet.env, leases and kernel untouched, leases outside the running Network skipped",
    );
}
