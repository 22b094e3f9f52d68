//! End to end: the seed article's three hosts `test`, `test2`, `test3`
//! (10.0.0.2/.3/.4) with a real etcd, one real `twilld` process per host and
//! the real kernel, all inside network namespaces made by the testbed
//! (removed on drop, even when a test fails).
//!
//! Each test builds its own cluster (unique namespaces; ports are per
//! namespace), so they run in parallel. Timings are printed with
//! `eprintln!` (run with `--nocapture` to see them); nothing asserts on a
//! duration: convergence is polled with generous deadlines.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_model::LeaseAttrs;
use twill_netlink::MacAddr;
use twill_testbed::cluster::{StoredLease, TwillCluster, LEASE_RENEWALS_TOTAL};

/// The article's config, byte for byte.
const ARTICLE_CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
const NAMES: [&str; 3] = ["test", "test2", "test3"];
const DEV: &str = "flannel.100";
/// The deadline of every wait: generous, so that a loaded machine passes;
/// it only catches "never".
const DEADLINE: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = DEADLINE;
const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";

fn article_cluster(etcd_members: usize, extra: &[&str]) -> TwillCluster {
    let started = Instant::now();
    let mut c = TwillCluster::builder()
        .hosts(3)
        .names(&NAMES)
        .config(ARTICLE_CONFIG)
        .etcd_members(etcd_members)
        .twilld_args(extra)
        .build(env!("CARGO_BIN_EXE_twilld"))
        .expect("building the cluster");
    let built = started.elapsed();
    let ready_from = Instant::now();
    if let Err(e) = c.wait_all_ready(READY_TIMEOUT) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    let ready = ready_from.elapsed();
    // Ready means "lease held and first reconcile done": a host that became
    // ready before the others leased learns them from the watch afterwards.
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    eprintln!(
        "e2e timing: cluster with {etcd_members} etcd member(s) built in {built:?}; \
         all 3 twilld ready {ready:?} after start, every host programmed with both peers \
         {:?} after start ({:?} in all)",
        ready_from.elapsed(),
        started.elapsed()
    );
    c
}

fn mac(s: &str) -> MacAddr {
    s.parse().expect("a MAC address")
}

/// The lease of every host, by host index, checked to be unique per host.
fn leases_by_host(c: &TwillCluster) -> Vec<StoredLease> {
    (0..c.len())
        .map(|i| {
            c.own_lease(i)
                .expect("reading leases")
                .unwrap_or_else(|| panic!("no lease for {}\n{}", c.name(i), c.logs()))
        })
        .collect()
}

/// `(MAC, dst)` of every FDB entry on host `i`'s flannel.100, all permanent.
fn fdb_set(c: &TwillCluster, i: usize) -> BTreeSet<(MacAddr, Option<Ipv4Addr>)> {
    let fdb = c.fdb(i).expect("fdb dump");
    assert!(
        fdb.iter().all(|e| e.permanent),
        "{}: non-permanent FDB entry: {fdb:?}",
        c.name(i)
    );
    fdb.iter().map(|e| (e.mac, e.dst)).collect()
}

/// `(IP, MAC)` of every neighbour entry on host `i`'s flannel.100, all permanent.
fn neigh_set(c: &TwillCluster, i: usize) -> BTreeSet<(Ipv4Addr, Option<MacAddr>)> {
    let n = c.neigh(i).expect("neighbour dump");
    assert!(
        n.iter().all(|e| e.permanent),
        "{}: non-permanent neighbour: {n:?}",
        c.name(i)
    );
    n.iter().map(|e| (e.ip, e.mac)).collect()
}

/// `(dst, gateway, onlink)` of every main-table route through host `i`'s flannel.100.
fn route_set(c: &TwillCluster, i: usize) -> BTreeSet<(String, Option<Ipv4Addr>, bool)> {
    c.routes(i)
        .expect("route dump")
        .iter()
        .map(|r| (r.dst.to_string(), r.gateway, r.onlink))
        .collect()
}

/// What host `i`'s kernel must hold for `peers`: (subnet, public IP, VTEP MAC).
type Peer = (StoredLease, MacAddr);

fn expected_fdb(peers: &[Peer]) -> BTreeSet<(MacAddr, Option<Ipv4Addr>)> {
    peers
        .iter()
        .map(|(l, m)| (*m, Some(l.public_ip.expect("PublicIP"))))
        .collect()
}

fn expected_neigh(peers: &[Peer]) -> BTreeSet<(Ipv4Addr, Option<MacAddr>)> {
    peers
        .iter()
        .map(|(l, m)| (l.subnet.network(), Some(*m)))
        .collect()
}

fn expected_routes(peers: &[Peer]) -> BTreeSet<(String, Option<Ipv4Addr>, bool)> {
    peers
        .iter()
        .map(|(l, _)| (l.subnet.to_string(), Some(l.subnet.network()), true))
        .collect()
}

fn peers_of(i: usize, leases: &[StoredLease], macs: &[MacAddr]) -> Vec<Peer> {
    (0..leases.len())
        .filter(|&j| j != i)
        .map(|j| (leases[j].clone(), macs[j]))
        .collect()
}

fn assert_kernel_has_exactly(c: &TwillCluster, i: usize, peers: &[Peer]) {
    assert_eq!(
        fdb_set(c, i),
        expected_fdb(peers),
        "{}: bridge fdb",
        c.name(i)
    );
    assert_eq!(
        neigh_set(c, i),
        expected_neigh(peers),
        "{}: ip neigh",
        c.name(i)
    );
    assert_eq!(
        route_set(c, i),
        expected_routes(peers),
        "{}: routes",
        c.name(i)
    );
}

fn sh(c: &TwillCluster, i: usize, program: &str, args: &[&str]) -> String {
    c.ns(i).exec(program, args).expect("command in a host")
}

#[test]
fn article_seed_scenario_etcd_kernel_subnet_env_and_container_pings() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = article_cluster(3, &[]);

    // --- etcd: exactly three flannel-format leases, distinct, in range.
    let keys = c
        .etcdctl(&["get", "--prefix", "--keys-only", SUBNETS_PREFIX])
        .expect("etcdctl get");
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 3, "subnet keys: {keys:?}");
    let leases = leases_by_host(&c);
    let macs: Vec<MacAddr> = (0..3)
        .map(|i| {
            c.vtep_mac(i)
                .expect("link dump")
                .expect("flannel.100 exists")
        })
        .collect();
    let mut subnets = BTreeSet::new();
    for (i, l) in leases.iter().enumerate() {
        assert_eq!(l.subnet.prefix(), 24, "{l:?}");
        let third = l.subnet.network().octets();
        assert!(
            third[0] == 192 && third[1] == 168 && third[2] <= 5 && third[3] == 0,
            "{} outside 192.168.0.0-192.168.5.0",
            l.subnet
        );
        assert_eq!(
            l.key,
            format!("{SUBNETS_PREFIX}{}-24", l.subnet.network()),
            "flannel's key format"
        );
        assert!(subnets.insert(l.subnet), "duplicate subnet {}", l.subnet);
        let attrs = LeaseAttrs::from_json(&l.value).expect("flannel-format lease JSON");
        assert_eq!(attrs.public_ip, c.ip(i));
        assert_eq!(attrs.backend_type, "vxlan");
        let data = attrs.backend_data.expect("BackendData").to_value();
        assert_eq!(
            data.get("VtepMAC").and_then(|v| v.as_str()),
            Some(macs[i].to_string().as_str()),
            "{}: VtepMAC in etcd is flannel.100's MAC",
            c.name(i)
        );
    }

    for i in 0..3 {
        let name = c.name(i).to_string();
        let ip = c.ip(i);
        let own = &leases[i];
        // --- flannel.100 as the article shows it.
        let link = c.vxlan_link(i).expect("dump").expect("flannel.100 exists");
        let vx = link.vxlan.clone().expect("vxlan attributes");
        assert_eq!(link.kind.as_deref(), Some("vxlan"), "{name}");
        assert_eq!(vx.vni, 100, "{name}");
        assert_eq!(vx.port, 8472, "{name}");
        assert_eq!(vx.local, Some(ip), "{name}");
        assert!(!vx.learning, "{name}: nolearning");
        assert_eq!(link.mtu, 1450, "{name}");
        assert!(link.up, "{name}: flannel.100 up");
        let addrs = c.vxlan_addrs(i).expect("addr dump");
        assert_eq!(
            addrs,
            vec![format!("{}/32", own.subnet.network()).parse().expect("net")],
            "{name}: flannel.100 carries its subnet's .0/32"
        );
        // Independently, as iproute2 prints it.
        let shown = sh(&c, i, "ip", &["-d", "link", "show", DEV]);
        for needle in [
            "mtu 1450".to_string(),
            "vxlan id 100".to_string(),
            format!("local {ip}"),
            "dstport 8472".to_string(),
            "nolearning".to_string(),
        ] {
            assert!(
                shown.contains(&needle),
                "{name}: `ip -d link show` lacks {needle:?}:\n{shown}"
            );
        }

        // --- exactly the two peers in FDB, ARP and routes.
        let peers = peers_of(i, &leases, &macs);
        assert_kernel_has_exactly(&c, i, &peers);
        let fdb_text = sh(&c, i, "bridge", &["fdb", "show", "dev", DEV]);
        for (l, m) in &peers {
            let line = format!("{m} dst {} self permanent", l.public_ip.expect("ip"));
            assert!(
                fdb_text.contains(&line),
                "{name}: bridge fdb lacks {line:?}:\n{fdb_text}"
            );
        }
        let routes_text = sh(&c, i, "ip", &["route", "show", "dev", DEV]);
        for (l, _) in &peers {
            // Through twill's nexthop object (this kernel has them) the
            // route shows `nhid <the subnet as a number>` before flannel's
            // `via <gateway>`.
            let id = u32::from(l.subnet.network());
            let start = format!("{} nhid {id} via {} ", l.subnet, l.subnet.network());
            assert!(
                routes_text
                    .lines()
                    .any(|r| r.starts_with(&start) && r.split_whitespace().any(|w| w == "onlink")),
                "{name}: ip route lacks `{start}... onlink`:\n{routes_text}"
            );
        }

        // --- subnet.env, exactly flannel's four lines.
        let env = c.subnet_env(i).expect("subnet.env");
        assert_eq!(env.network.to_string(), "192.168.0.0/16");
        assert_eq!(env.subnet_network(), own.subnet, "{name}");
        assert_eq!(
            env.subnet.ip(),
            Ipv4Addr::from(u32::from(own.subnet.network()) + 1)
        );
        assert_eq!(env.mtu, 1450);
        assert!(!env.ip_masq);
        assert_eq!(
            env.text,
            format!(
                "FLANNEL_NETWORK=192.168.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                env.subnet.ip()
            ),
            "{name}: subnet.env"
        );
    }

    // --- each daemon reports itself ready with two peers.
    for i in 0..3 {
        let (code, metrics) = c
            .daemon(i)
            .http_get(c.healthz_addr(), "/metrics")
            .expect("GET /metrics");
        assert_eq!(code, 200);
        for line in ["twill_ready 1", "twill_lease_held 1", "twill_peers 2"] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{}: /metrics lacks {line:?}:\n{metrics}",
                c.name(i)
            );
        }
    }

    // --- containers reach each other, all six pairs.
    c.add_containers().expect("containers");
    let started = Instant::now();
    let mut failed = Vec::new();
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            let to = c.container_ip(b).expect("container");
            if !c.ping(a, to) {
                failed.push(format!("{} -> {} ({to})", c.name(a), c.name(b)));
            }
        }
    }
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", c.logs());
    eprintln!(
        "e2e timing: 6 container-to-container pings in {:?}",
        started.elapsed()
    );
}

#[test]
fn restart_keeps_subnet_vtep_mac_and_lease_key() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = article_cluster(3, &[]);
    let h = 1; // test2
    let before = leases_by_host(&c);
    let mac_before = c.vtep_mac(h).expect("dump").expect("flannel.100");
    let env_before = c.subnet_env(h).expect("subnet.env");
    c.add_containers().expect("containers");

    let status = c
        .daemon_mut(h)
        .sigterm()
        .expect("SIGTERM")
        .expect("was running");
    assert!(
        status.success(),
        "twilld exit on SIGTERM: {status}\n{}",
        c.daemon(h).log()
    );
    // Not released by default: the lease and the kernel state stay.
    let kept = c
        .own_lease(h)
        .expect("leases")
        .expect("lease kept while stopped");
    assert_eq!(kept.key, before[h].key);
    assert_eq!(c.vtep_mac(h).expect("dump"), Some(mac_before));

    let restarted = Instant::now();
    c.daemon_mut(h).spawn().expect("start again");
    c.wait_ready(h, READY_TIMEOUT).expect("ready after restart");
    eprintln!(
        "e2e timing: test2 ready {:?} after restart",
        restarted.elapsed()
    );

    let after = leases_by_host(&c);
    assert_eq!(after[h].key, before[h].key, "same etcd key");
    assert_eq!(after[h].subnet, before[h].subnet, "same subnet");
    assert_eq!(
        after[h].vtep_mac,
        Some(mac_before.to_string()),
        "same VtepMAC in etcd"
    );
    assert_eq!(c.leases().expect("leases").len(), 3, "no duplicate lease");
    assert_eq!(
        c.vtep_mac(h).expect("dump"),
        Some(mac_before),
        "same VTEP MAC"
    );
    assert_eq!(c.subnet_env(h).expect("subnet.env"), env_before);
    let macs: Vec<MacAddr> = (0..3)
        .map(|i| c.vtep_mac(i).expect("dump").expect("flannel.100"))
        .collect();
    for i in 0..3 {
        assert_kernel_has_exactly(&c, i, &peers_of(i, &after, &macs));
    }
    let log = c.daemon(h).log_since_start();
    assert!(
        log.contains(&before[h].subnet.network().to_string()),
        "{log}"
    );
    for other in [0, 2] {
        let to = c.container_ip(h).expect("container");
        assert!(
            c.ping(other, to),
            "{} -> test2 after restart\n{}",
            c.name(other),
            c.logs()
        );
        let back = c.container_ip(other).expect("container");
        assert!(
            c.ping(h, back),
            "test2 -> {} after restart\n{}",
            c.name(other),
            c.logs()
        );
    }
}

#[test]
fn killed_host_disappears_from_peers_when_its_lease_expires() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = article_cluster(1, &["--lease-ttl=3s"]);
    let dead = 2; // test3; etcd runs on test
    let leases = leases_by_host(&c);
    let macs: Vec<MacAddr> = (0..3)
        .map(|i| c.vtep_mac(i).expect("dump").expect("flannel.100"))
        .collect();
    for i in 0..2 {
        assert_kernel_has_exactly(&c, i, &peers_of(i, &leases, &macs));
    }
    // Renewals keep the 3 s lease alive well past its TTL: more than a TTL
    // goes by, and the daemon renews twice meanwhile.
    let since = Instant::now();
    let renewed = c.metric(dead, LEASE_RENEWALS_TOTAL).expect("renewals");
    TwillCluster::poll(DEADLINE, "2 renewals of test3's lease over 4 s", || {
        since.elapsed() >= Duration::from_secs(4)
            && c.metric(dead, LEASE_RENEWALS_TOTAL)
                .is_ok_and(|n| n >= renewed + 2.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        c.own_lease(dead).expect("leases").map(|l| l.key),
        Some(leases[dead].key.clone()),
        "a live host's short lease is renewed"
    );

    c.daemon_mut(dead).kill().expect("SIGKILL");
    let killed = Instant::now();
    let key = leases[dead].key.clone();
    let expired = TwillCluster::poll(DEADLINE, "the lease to expire", || {
        c.etcdctl(&["get", "--keys-only", &key])
            .is_ok_and(|o| o.trim().is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let survivors: Vec<Vec<Peer>> = (0..2)
        .map(|i| {
            peers_of(i, &leases, &macs)
                .into_iter()
                .filter(|(l, _)| l.key != key)
                .collect()
        })
        .collect();
    let gone = TwillCluster::poll(DEADLINE, "test3 to leave the peers' kernels", || {
        (0..2).all(|i| {
            fdb_set(&c, i) == expected_fdb(&survivors[i])
                && neigh_set(&c, i) == expected_neigh(&survivors[i])
                && route_set(&c, i) == expected_routes(&survivors[i])
        })
    });
    if let Err(e) = gone {
        panic!(
            "{e}: test fdb {:?} neigh {:?} routes {:?}\n{}",
            c.fdb(0),
            c.neigh(0),
            c.routes(0),
            c.logs()
        );
    }
    eprintln!(
        "e2e timing: SIGKILLed test3's 3 s lease expired {expired:?} after the kill; \
         gone from test and test2's FDB/ARP/routes {:?} after the kill",
        killed.elapsed()
    );
    for (i, peers) in survivors.iter().enumerate() {
        assert_kernel_has_exactly(&c, i, peers);
    }
    assert_eq!(c.leases().expect("leases").len(), 2);

    // Started again, it leases a subnet again and the peers learn it.
    c.start_twilld(dead).expect("start test3 again");
    c.wait_ready(dead, READY_TIMEOUT)
        .expect("test3 ready again");
    let back = leases_by_host(&c);
    assert_eq!(
        back[dead].subnet, leases[dead].subnet,
        "the subnet in subnet.env is asked for again and was free"
    );
    let macs: Vec<MacAddr> = (0..3)
        .map(|i| c.vtep_mac(i).expect("dump").expect("flannel.100"))
        .collect();
    TwillCluster::poll(DEADLINE, "test3 back in the peers' kernels", || {
        (0..3).all(|i| {
            let p = peers_of(i, &back, &macs);
            fdb_set(&c, i) == expected_fdb(&p)
                && neigh_set(&c, i) == expected_neigh(&p)
                && route_set(&c, i) == expected_routes(&p)
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

#[test]
fn hand_added_lease_is_programmed_everywhere_and_removed_on_delete() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let c = article_cluster(1, &[]);
    let leases = leases_by_host(&c);
    let taken: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.subnet.network()).collect();
    // The article's 192.168.3.0, unless a host leased it (6 subnets, 3 hosts).
    let third = [3u8, 0, 1, 2, 4, 5]
        .into_iter()
        .find(|t| !taken.contains(&Ipv4Addr::new(192, 168, *t, 0)))
        .expect("a free subnet");
    let subnet = Ipv4Addr::new(192, 168, third, 0);
    let key = format!("{SUBNETS_PREFIX}{subnet}-24");
    let value = r#"{"PublicIP":"10.0.0.99","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:00:00:99"}}"#;
    let vtep = mac("aa:bb:cc:00:00:99");
    let public = Ipv4Addr::new(10, 0, 0, 99);
    let present = |i: usize| {
        fdb_set(&c, i).contains(&(vtep, Some(public)))
            && neigh_set(&c, i).contains(&(subnet, Some(vtep)))
            && route_set(&c, i).contains(&(format!("{subnet}/24"), Some(subnet), true))
    };
    for i in 0..3 {
        assert!(
            !present(i),
            "{} has the lease before it is written",
            c.name(i)
        );
    }

    let before_put = Instant::now();
    c.etcdctl(&["put", &key, value]).expect("etcdctl put");
    let put_took = before_put.elapsed();
    let mut seen = [None; 3];
    let all = TwillCluster::poll(DEADLINE, "the hand-added lease on every host", || {
        for (i, s) in seen.iter_mut().enumerate() {
            if s.is_none() && present(i) {
                *s = Some(before_put.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    if let Err(e) = all {
        panic!("{e}: seen {seen:?}\n{}", c.logs());
    }
    eprintln!(
        "e2e timing: hand-added lease {key} in every host's FDB/ARP/routes {:?} after \
         `etcdctl put` began (put itself took {put_took:?}); per host {seen:?}",
        before_put.elapsed()
    );
    for i in 0..3 {
        assert!(present(i));
        // Nothing else changed: the two real peers are still there.
        assert_eq!(fdb_set(&c, i).len(), 3, "{}", c.name(i));
    }
    // Every kernel equals what the four leases in etcd say.
    if let Err(e) = c
        .mismatches(&[0, 1, 2])
        .map(|m| assert!(m.is_empty(), "{m:?}"))
    {
        panic!("{e}");
    }

    let before_del = Instant::now();
    c.etcdctl(&["del", &key]).expect("etcdctl del");
    TwillCluster::poll(DEADLINE, "the deleted lease to leave every host", || {
        (0..3).all(|i| !present(i))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!(
        "e2e timing: deleted lease gone from every host {:?} after `etcdctl del` began",
        before_del.elapsed()
    );
    let macs: Vec<MacAddr> = (0..3)
        .map(|i| c.vtep_mac(i).expect("dump").expect("flannel.100"))
        .collect();
    for i in 0..3 {
        assert_kernel_has_exactly(&c, i, &peers_of(i, &leases, &macs));
    }
}
