//! Helpers shared by the reliability, bad-input and security tests: a
//! cluster with the article's network, normalised kernel snapshots,
//! convergence checks, metrics, and an etcd partition with nftables.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_testbed::cluster::{TwillCluster, TwillClusterBuilder};

pub const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// The article's network (VNI 100, flannel.100). The daemons allocate only
/// in [`ALLOCATED_MIN`, `ALLOCATED_MAX`] (SubnetMin/SubnetMax); the fixed
/// leases the tests write ([`put_lease`]) lie above, at 192.168.100.0 and
/// beyond, or outside the Network: a random allocation can never land on a
/// subnet a test is about to write (or route by hand).
pub const CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.1.0","SubnetMax":"192.168.99.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
/// `SubnetMin` of [`CONFIG`].
pub const ALLOCATED_MIN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 0);
/// `SubnetMax` of [`CONFIG`] (the last allocatable /24).
pub const ALLOCATED_MAX: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 0);

/// The deadline of every wait: generous, so that a loaded machine (both
/// cores busy) passes; it only catches "never", nothing asserts a duration.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A builder for `n` hosts with one etcd member each and the article's network.
pub fn builder(n: usize) -> TwillClusterBuilder {
    TwillCluster::builder().hosts(n).config(CONFIG)
}

/// Builds, waits until every daemon is ready and every host has routes,
/// FDB and ARP entries for every other host.
pub fn start(b: TwillClusterBuilder) -> TwillCluster {
    let mut c = b.build(TWILLD).expect("build cluster");
    c.wait_all_ready(DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    wait_converged(&c, DEADLINE);
    c
}

/// One host's dataplane, independent of interface indexes (a re-created
/// device has a new index): routes through flannel.N, FDB entries with a
/// destination, permanent ARP entries, and the device itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    /// Our routes (protocol 241) through the device: (dst, gateway, onlink, protocol).
    pub routes: BTreeSet<(String, Option<Ipv4Addr>, bool, u8)>,
    /// (mac, dst)
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    /// (ip, mac)
    pub neigh: BTreeSet<(Ipv4Addr, String)>,
    /// (mac, mtu, up, addresses)
    pub device: Option<(String, u32, bool, Vec<String>)>,
}

pub fn dataplane(c: &TwillCluster, i: usize) -> Dataplane {
    let routes = c
        .routes(i)
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == twill_netlink::TWILL_RTPROT)
        .map(|r| (r.dst.to_string(), r.gateway, r.onlink, r.protocol))
        .collect();
    let fdb = c
        .fdb(i)
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.mac.to_string(), e.dst?)))
        .collect();
    let neigh = c
        .neigh(i)
        .unwrap()
        .into_iter()
        .filter(|n| n.permanent)
        .map(|n| (n.ip, n.mac.map(|m| m.to_string()).unwrap_or_default()))
        .collect();
    let device = c.vxlan_link(i).unwrap().map(|l| {
        let mut addrs: Vec<String> = c
            .vxlan_addrs(i)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        addrs.sort();
        (
            l.mac.map(|m| m.to_string()).unwrap_or_default(),
            l.mtu,
            l.up,
            addrs,
        )
    });
    Dataplane {
        routes,
        fdb,
        neigh,
        device,
    }
}

/// Each host's subnet, from its subnet file.
pub fn subnets(c: &TwillCluster) -> Vec<twill_model::Ipv4Network> {
    (0..c.len())
        .map(|i| c.subnet_env(i).unwrap().subnet_network())
        .collect()
}

/// Whether host `i` has exactly one route, ARP and FDB entry per other
/// running host, matching that host's subnet and lease.
pub fn converged_host(c: &TwillCluster, i: usize, hosts: &[usize]) -> bool {
    let Ok(leases) = c.leases() else { return false };
    let dp = dataplane(c, i);
    let mut want_routes = BTreeSet::new();
    let mut want_fdb = BTreeSet::new();
    for &j in hosts {
        if j == i {
            continue;
        }
        let Some(l) = leases.iter().find(|l| l.public_ip == Some(c.ip(j))) else {
            return false;
        };
        want_routes.insert((l.subnet.to_string(), Some(l.subnet.network()), true, 241));
        want_fdb.insert((l.vtep_mac.clone().unwrap_or_default(), c.ip(j)));
    }
    dp.routes == want_routes && dp.fdb == want_fdb && dp.neigh.len() == want_routes.len()
}

/// Waits until every host with a daemon is converged with all the others.
pub fn wait_converged(c: &TwillCluster, timeout: Duration) {
    let hosts: Vec<usize> = (0..c.len())
        .filter(|&i| c.try_daemon(i).is_some())
        .collect();
    wait_converged_among(c, &hosts, timeout);
}

/// Waits until each of `hosts` is converged with the others of `hosts`.
pub fn wait_converged_among(c: &TwillCluster, hosts: &[usize], timeout: Duration) {
    let r = TwillCluster::poll(timeout, "every host to program every peer", || {
        hosts.iter().all(|&i| converged_host(c, i, hosts))
    });
    if let Err(e) = r {
        let state: Vec<String> = hosts
            .iter()
            .map(|&i| format!("{}: {:?}", c.name(i), dataplane(c, i)))
            .collect();
        panic!(
            "{e}\nleases: {:#?}\nkernel:\n{}\n{}",
            c.leases(),
            state.join("\n"),
            c.logs()
        );
    }
}

/// Polls `check` until true; panics with `what` and the logs after `timeout`.
/// Returns how long it took.
pub fn wait_for(
    c: &TwillCluster,
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> bool,
) -> Duration {
    TwillCluster::poll(timeout, what, check).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
}

/// A metric of host `i`'s daemon from `/metrics` (None when unreachable).
pub fn metric(c: &TwillCluster, i: usize, name: &str) -> Option<f64> {
    c.metric(i, name).ok()
}

/// Waits (up to [`DEADLINE`]) until each daemon of `hosts` has run `n` more
/// reconcile passes than now (see [`TwillCluster::wait_reconciles`]): the
/// evidence to take before asserting that something did *not* happen.
pub fn wait_reconciles(c: &mut TwillCluster, hosts: &[usize], n: u32) {
    if let Err(e) = c.wait_reconciles(hosts, n, DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
}

/// `GET path` on host `i`'s health port: the status code.
pub fn http_status(c: &TwillCluster, i: usize, path: &str) -> Option<u16> {
    c.daemon(i)
        .http_get(c.healthz_addr(), path)
        .ok()
        .map(|(code, _)| code)
}

/// Cuts host `i` from etcd with nftables inside its namespace: every TCP
/// packet to or from port 2379/2380 of another host is dropped, so its
/// daemon cannot reach any member with a quorum (its local member, if it
/// has one, is cut from its peers). VXLAN (UDP) is untouched: the
/// dataplane keeps working.
pub fn partition_from_etcd(c: &TwillCluster, i: usize) {
    let script = format!(
        "table inet twill_partition {{\n\
         \tchain input {{ type filter hook input priority -10; policy accept;\n\
         \t\tip saddr != {me} tcp sport {{ 2379, 2380 }} drop\n\
         \t\tip saddr != {me} tcp dport {{ 2379, 2380 }} drop\n\t}}\n\
         \tchain output {{ type filter hook output priority -10; policy accept;\n\
         \t\tip daddr != {me} ip daddr != 127.0.0.0/8 tcp dport {{ 2379, 2380 }} drop\n\
         \t\tip daddr != {me} ip daddr != 127.0.0.0/8 tcp sport {{ 2379, 2380 }} drop\n\t}}\n\
         }}\n",
        me = c.ip(i)
    );
    let path = c.dir().join(format!("partition-{i}.nft"));
    std::fs::write(&path, script).unwrap();
    c.ns(i)
        .exec("nft", &["-f", &path.to_string_lossy()])
        .expect("nft partition");
}

/// Removes the partition of [`partition_from_etcd`].
pub fn heal_partition(c: &TwillCluster, i: usize) {
    c.ns(i)
        .exec("nft", &["delete", "table", "inet", "twill_partition"])
        .expect("nft heal");
}

/// Disconnects host `i`'s daemon from its local etcd member (loopback port
/// 2379) without disturbing the member: every packet to it is answered with
/// a TCP reset, so open streams break at once and reconnects are refused.
pub fn reset_local_etcd_clients(c: &TwillCluster, i: usize) {
    let script = "table ip twill_reset {\n\
         \tchain output { type filter hook output priority -10; policy accept;\n\
         \t\tip daddr 127.0.0.1 tcp dport 2379 reject with tcp reset\n\t}\n\
         }\n";
    let path = c.dir().join(format!("reset-{i}.nft"));
    std::fs::write(&path, script).unwrap();
    c.ns(i)
        .exec("nft", &["-f", &path.to_string_lossy()])
        .expect("nft reset");
}

/// Removes the rule of [`reset_local_etcd_clients`].
pub fn allow_local_etcd_clients(c: &TwillCluster, i: usize) {
    c.ns(i)
        .exec("nft", &["delete", "table", "ip", "twill_reset"])
        .expect("nft allow");
}

/// `ip ARGS` in host `i`'s namespace, panicking with the error.
pub fn ip(c: &TwillCluster, i: usize, args: &[&str]) -> String {
    c.ns(i)
        .ip(args)
        .unwrap_or_else(|e| panic!("ip {args:?} on {}: {e}", c.name(i)))
}

/// Every container pings every other one.
pub fn all_ping(c: &TwillCluster) -> Result<(), String> {
    let n = c.len();
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let (Some(_), Some(dst)) = (c.container(a), c.container_ip(b)) else {
                continue;
            };
            if !c.ping(a, dst) {
                return Err(format!("{} cannot ping {} ({dst})", c.name(a), c.name(b)));
            }
        }
    }
    Ok(())
}

/// Milliseconds, for test output.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Prints a result line the docs table is filled from.
pub fn report(test: &str, result: &str) {
    eprintln!("RESULT {test}: {result}");
}

/// Seconds since `start`, to one decimal.
pub fn secs(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

/// A lease value as flannel writes it for a vxlan host.
pub fn vxlan_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":100,"VtepMAC":"{mac}"}}}}"#
    )
}

/// The key of `subnet` (e.g. `192.168.77.0-24`) under the default prefix.
pub fn lease_key(subnet: &str) -> String {
    format!("/coreos.com/network/subnets/{subnet}")
}

/// Whether a key such as `192.168.77.0-24` names a subnet a daemon of
/// [`CONFIG`] may hold: a /24 in [`ALLOCATED_MIN`, `ALLOCATED_MAX`]. (A
/// lease of another length, e.g. one covering the whole Network, is never
/// a daemon's key.)
pub fn allocatable(subnet: &str) -> bool {
    let Some((ip, len)) = subnet.split_once('-') else {
        return false;
    };
    let (Ok(ip), Ok(24)) = (ip.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
        return false;
    };
    (ALLOCATED_MIN..=ALLOCATED_MAX).contains(&ip)
}

/// Puts a fixed lease with an etcd lease of `ttl_secs` (0: no TTL, a
/// reservation). Panics if `subnet` is one the daemons may have been
/// allocated (see [`CONFIG`], [`allocatable`]): a test never writes where a
/// random allocation may have landed. A deliberate reservation in a test's own range is [`reserve`].
pub fn put_lease(c: &TwillCluster, subnet: &str, value: &str, ttl_secs: u64) {
    assert!(
        !allocatable(subnet),
        "{subnet} is in the daemons' allocation range {ALLOCATED_MIN}-{ALLOCATED_MAX}: \
         write fixed leases at 192.168.100.0 and above"
    );
    put_lease_anywhere(c, subnet, value, ttl_secs);
}

/// Holds `subnet` with a reservation (no TTL) even where daemons allocate:
/// for tests that steer an allocation, written while no daemon can be
/// allocating it.
pub fn reserve(c: &TwillCluster, subnet: &str, value: &str) {
    put_lease_anywhere(c, subnet, value, 0);
}

fn put_lease_anywhere(c: &TwillCluster, subnet: &str, value: &str, ttl_secs: u64) {
    let key = lease_key(subnet);
    if ttl_secs == 0 {
        c.etcdctl(&["put", &key, value]).unwrap();
        return;
    }
    let out = c
        .etcdctl(&["lease", "grant", &ttl_secs.to_string()])
        .unwrap();
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    c.etcdctl(&["put", &format!("--lease={id}"), &key, value])
        .unwrap();
}

/// Waits until `d`'s current run logged `pattern`, panicking with its log.
pub fn wait_for_log(d: &mut twill_testbed::daemon::Daemon, pattern: &str, timeout: Duration) {
    if let Err(e) = d.wait_for_log(pattern, timeout) {
        panic!("{e}\n{}", d.log());
    }
}

/// Makes `flannel.100` by hand in `ns` (VNI 100, `local` on `eth0`, port
/// 8472, learning off) and brings it up: the device an older twilld or
/// flanneld would have left, for tests that start from such a host.
pub fn add_vxlan_by_hand(ns: &twill_testbed::netns::Netns, local: &str) {
    ns.ip(&[
        "link",
        "add",
        "flannel.100",
        "type",
        "vxlan",
        "id",
        "100",
        "local",
        local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    ns.ip(&["link", "set", "flannel.100", "up"]).unwrap();
}
