//! End to end over IPv6 (issue 15): three hosts in network namespaces with
//! a dual-stack underlay (`10.0.0.N/24` and `fd00:10::N/64` on `eth0`) or an
//! IPv6-only one (`fd00:10::N/64` only, etcd reached at
//! `http://[fd00:10::N]:2379`), a real etcd, one real `twilld` per host and
//! the real kernel, with the vxlan and host-gw backends.
//!
//! What is checked is what flannel v0.28 writes and programs: lease keys
//! (`10.5.3.0-24&fd00:5:0:7::-64`, `0.0.0.0-0&fd00:6:0:7::-64` when IPv4 is
//! off) and values (`PublicIPv6`, `BackendV6Data.VtepMAC`), the devices
//! (`flannel.1`, `flannel-v6.1` and their `local`s), IPv6 FDB, NDP and
//! routes, subnet.env's IPv6 lines, container pings in each family across
//! hosts, restarts, an etcd outage, and hand-written IPv6 leases a host must
//! skip. Nothing depends on where the allocator lands: each host's subnets
//! are read from etcd and its subnet file, and every wait is a condition
//! polled against a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use reliability_common as common;
use reliability_common::DEADLINE;
use twill_model::{Ipv6Network, LeaseAttrs};
use twill_testbed::cluster::{StoredLease, TwillCluster, TwillClusterBuilder, Underlay};
use twill_testbed::netns::Lan;

/// A dual-stack network. The daemons allocate IPv4 subnets in
/// 10.5.1.0-10.5.99.0 and IPv6 ones in fd00:5:0:1::-fd00:5:0:99:: only, so
/// the fixed leases the tests write (10.5.200.0 and up, fd00:5:0:200:: and
/// up) can never be where an allocation landed.
fn dual_config(backend: &str) -> String {
    format!(
        r#"{{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.99.0","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:5:0:1::","IPv6SubnetMax":"fd00:5:0:99::","Backend":{{"Type":"{backend}"}}}}"#
    )
}

/// An IPv6-only network (`EnableIPv4` false): no `Network` at all.
fn v6_only_config(backend: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:6::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:6:0:1::","IPv6SubnetMax":"fd00:6:0:99::","Backend":{{"Type":"{backend}"}}}}"#
    )
}

const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";
const DEV4: &str = "flannel.1";
const DEV6: &str = "flannel-v6.1";

fn start(b: TwillClusterBuilder) -> TwillCluster {
    let started = Instant::now();
    let mut c = b
        .build(common::TWILLD)
        .unwrap_or_else(|e| panic!("building the cluster: {e}"));
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    // Two hosts whose listings missed each other may briefly hold keys
    // sharing one IPv6 half (create-if-absent cannot see it: the keys
    // differ); the later holder yields and takes another subnet. Wait for
    // one holder per IPv6 subnet and one lease per host, said plainly if
    // it never happens rather than as a convergence timeout.
    let distinct = || {
        let Ok(leases) = c.leases() else { return false };
        let halves: std::collections::BTreeSet<_> =
            leases.iter().filter_map(|l| l.subnet6).collect();
        halves.len() == leases.len() && leases.len() == c.len()
    };
    if TwillCluster::poll(DEADLINE, "one holder per IPv6 subnet", distinct).is_err() {
        panic!(
            "two hosts hold one IPv6 subnet: {:#?}\n{}",
            c.leases()
                .map(|l| l.into_iter().map(|l| l.key).collect::<Vec<_>>()),
            c.logs()
        );
    }
    // Ready means "lease held and first pass done": a host ready before the
    // others leased learns them from the watch afterwards.
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    eprintln!(
        "e2e_v6 timing: {:?} underlay, 3 hosts converged {} after start",
        c.underlay(),
        common::secs(started)
    );
    c
}

fn dual_cluster(backend: &str) -> TwillCluster {
    start(
        TwillCluster::builder()
            .hosts(3)
            .underlay(Underlay::DualStack)
            .config(&dual_config(backend)),
    )
}

fn v6_only_cluster(backend: &str) -> TwillCluster {
    start(
        TwillCluster::builder()
            .hosts(3)
            .underlay(Underlay::Ipv6Only)
            .config(&v6_only_config(backend)),
    )
}

fn sh(c: &TwillCluster, i: usize, program: &str, args: &[&str]) -> String {
    c.show(i, program, args)
        .unwrap_or_else(|e| panic!("{program} {args:?} on {}: {e}", c.name(i)))
}

/// Each host's own lease, by host index.
fn leases_by_host(c: &TwillCluster) -> Vec<StoredLease> {
    (0..c.len())
        .map(|i| {
            c.own_lease(i)
                .expect("reading leases")
                .unwrap_or_else(|| panic!("no lease for {}\n{}", c.name(i), c.logs()))
        })
        .collect()
}

/// The first address of a subnet (`::1`, the bridge's, as subnet.env names it).
fn first_host6(net: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + 1)
}

/// The kernel of every host holds exactly what the leases say, IPv6 included.
fn assert_exact(c: &TwillCluster) {
    let hosts: Vec<usize> = (0..c.len()).collect();
    let m = c.mismatches(&hosts).expect("kernel and etcd readable");
    assert!(m.is_empty(), "{m:#?}\n{}", c.logs());
}

/// Every container pings every other one in each family it has.
fn all_ping_both(c: &TwillCluster) -> Vec<String> {
    let mut failed = Vec::new();
    for a in 0..c.len() {
        for b in 0..c.len() {
            if a == b {
                continue;
            }
            if let Some(to) = c.container_ip(b) {
                if !c.ping(a, to) {
                    failed.push(format!("{} -> {} ({to})", c.name(a), c.name(b)));
                }
            }
            if let Some(to) = c.container_ip6(b) {
                if !c.ping6(a, to) {
                    failed.push(format!("{} -> {} ({to})", c.name(a), c.name(b)));
                }
            }
        }
    }
    failed
}

/// The `ip -d link show` lines of `dev` hold each of `needles`.
fn assert_link_shows(c: &TwillCluster, i: usize, dev: &str, needles: &[String]) {
    let shown = sh(c, i, "ip", &["-d", "link", "show", dev]);
    eprintln!("{}: ip -d link show {dev}\n{shown}", c.name(i));
    for needle in needles {
        assert!(
            shown.contains(needle.as_str()),
            "{}: `ip -d link show {dev}` lacks {needle:?}:\n{shown}",
            c.name(i)
        );
    }
}

/// The IPv6 half of the vxlan dataplane as iproute2 prints it: for each
/// peer `bridge fdb` has `MAC dst PublicIPv6 self permanent`, `ip -6 neigh`
/// `subnet:: lladdr MAC PERMANENT`, `ip -6 route` `subnet via subnet::
/// ... onlink`, all on flannel-v6.1.
fn assert_v6_vxlan_text(c: &TwillCluster, i: usize, leases: &[StoredLease]) {
    let name = c.name(i).to_string();
    let fdb = sh(c, i, "bridge", &["fdb", "show", "dev", DEV6]);
    let neigh = sh(c, i, "ip", &["-6", "neigh", "show", "dev", DEV6]);
    let routes = sh(c, i, "ip", &["-6", "route", "show", "dev", DEV6]);
    eprintln!("{name}: bridge fdb show dev {DEV6}\n{fdb}ip -6 neigh show dev {DEV6}\n{neigh}ip -6 route show dev {DEV6}\n{routes}");
    for l in leases.iter().filter(|l| !c.is_lease_of(i, l)) {
        let (sub, public, mac) = (
            l.subnet6.expect("IPv6 subnet"),
            l.public_ipv6.expect("PublicIPv6"),
            l.vtep_mac6.clone().expect("BackendV6Data.VtepMAC"),
        );
        let line = format!("{mac} dst {public} self permanent");
        assert!(fdb.contains(&line), "{name}: no {line:?} in\n{fdb}");
        let line = format!("{} lladdr {mac} PERMANENT", sub.network());
        assert!(neigh.contains(&line), "{name}: no {line:?} in\n{neigh}");
        let start = format!("{sub} via {} ", sub.network());
        assert!(
            routes
                .lines()
                .any(|r| r.starts_with(&start) && r.split_whitespace().any(|w| w == "onlink")),
            "{name}: no `{start}... onlink` in\n{routes}"
        );
    }
}

/// Host-gw's IPv6 routes as iproute2 prints them: `subnet via PublicIPv6
/// dev eth0 proto 241` for each peer.
fn assert_v6_host_gw_text(c: &TwillCluster, i: usize, leases: &[StoredLease]) {
    let routes = sh(c, i, "ip", &["-6", "route", "show", "proto", "241"]);
    eprintln!("{}: ip -6 route show proto 241\n{routes}", c.name(i));
    let peers: Vec<&StoredLease> = leases.iter().filter(|l| !c.is_lease_of(i, l)).collect();
    assert_eq!(routes.lines().count(), peers.len(), "{routes}");
    for l in peers {
        let line = format!(
            "{} via {} dev eth0",
            l.subnet6.expect("IPv6 subnet"),
            l.public_ipv6.expect("PublicIPv6")
        );
        assert!(
            routes.lines().any(|r| r.starts_with(&line)),
            "{}: no {line:?} in\n{routes}",
            c.name(i)
        );
    }
}

/// Stops host `h`'s daemon with SIGTERM, starts it again and checks that
/// it comes back with the same key (both subnets), both VTEP MACs (devices
/// and etcd) and the same subnet.env; then that the cluster converges.
fn restart_keeps_everything(c: &mut TwillCluster, h: usize) {
    let before = c.own_lease(h).unwrap().expect("own lease");
    let env_before = c.subnet_env(h).unwrap();
    let mac4 = c.vtep_mac(h).unwrap();
    let mac6 = c.vtep_mac6(h).unwrap();
    let status = c
        .daemon_mut(h)
        .sigterm()
        .expect("SIGTERM")
        .expect("was running");
    assert!(status.success(), "exit on SIGTERM: {status}\n{}", c.logs());
    let restarted = Instant::now();
    c.daemon_mut(h).spawn().expect("start again");
    c.wait_ready(h, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let after = c.own_lease(h).unwrap().expect("own lease after restart");
    assert_eq!(after.key, before.key, "same key, so both subnets");
    assert_eq!(after.subnet6, before.subnet6);
    assert_eq!(after.vtep_mac, before.vtep_mac, "same IPv4 VtepMAC in etcd");
    assert_eq!(
        after.vtep_mac6, before.vtep_mac6,
        "same IPv6 VtepMAC in etcd"
    );
    assert_eq!(c.vtep_mac(h).unwrap(), mac4, "same flannel.1 MAC");
    assert_eq!(c.vtep_mac6(h).unwrap(), mac6, "same flannel-v6.1 MAC");
    assert_eq!(c.subnet_env(h).unwrap(), env_before, "same subnet.env");
    assert_eq!(c.leases().unwrap().len(), 3, "no second lease");
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    eprintln!(
        "e2e_v6 timing: {} ready and converged {} after restart",
        c.name(h),
        common::secs(restarted)
    );
}

/// A dual-stack underlay and network with vxlan: both leases halves in
/// flannel's form, both devices, the IPv6 dataplane, subnet.env, pings in
/// both families, then a restart that keeps everything.
#[test]
fn dual_stack_vxlan_keys_devices_kernel_subnet_env_pings_and_restart() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = dual_cluster("vxlan");

    // --- etcd: three keys `10.5.x.0-24&fd00:5:0:y::-64`, distinct.
    let keys = c
        .etcdctl(&["get", "--prefix", "--keys-only", SUBNETS_PREFIX])
        .unwrap();
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let leases = leases_by_host(&c);
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in leases.iter().enumerate() {
        let sub6 = l.subnet6.expect("a dual-stack key");
        assert_eq!(l.subnet.prefix(), 24);
        assert_eq!(sub6.prefix(), 64);
        assert!("10.5.0.0/16"
            .parse::<twill_model::Ipv4Network>()
            .unwrap()
            .contains(l.subnet.network()));
        assert!("fd00:5::/48"
            .parse::<Ipv6Network>()
            .unwrap()
            .contains(sub6.network()));
        assert_eq!(
            l.key,
            format!(
                "{SUBNETS_PREFIX}{}-24&{}-64",
                l.subnet.network(),
                sub6.network()
            ),
            "flannel's dual-stack key"
        );
        assert!(seen.insert(l.key.clone()));
        eprintln!("{}: {} = {}", c.name(i), l.key, l.value);
        let attrs = LeaseAttrs::from_json(&l.value).expect("flannel's lease JSON");
        assert_eq!(attrs.public_ip, c.ip(i));
        assert_eq!(attrs.public_ipv6, c.ip6(i), "PublicIPv6 found on eth0");
        assert_eq!(attrs.backend_type, "vxlan");
        let mac4 = c.vtep_mac(i).unwrap().expect("flannel.1");
        let mac6 = c.vtep_mac6(i).unwrap().expect("flannel-v6.1");
        assert_ne!(mac4, mac6, "each device has its own MAC");
        assert!(attrs.backend_data.is_some() && attrs.backend_v6_data.is_some());
        assert_eq!(l.vtep_mac, Some(mac4.to_string()), "BackendData.VtepMAC");
        assert_eq!(
            l.vtep_mac6,
            Some(mac6.to_string()),
            "BackendV6Data.VtepMAC is flannel-v6.1's MAC"
        );
    }

    for i in 0..3 {
        let name = c.name(i).to_string();
        let own = &leases[i];
        let own6 = own.subnet6.unwrap();
        // --- the two devices, as flannel lays them out.
        let l4 = c.vxlan_link(i).unwrap().expect("flannel.1");
        let l6 = c.vxlan6_link(i).unwrap().expect("flannel-v6.1");
        let (vx4, vx6) = (l4.vxlan.clone().unwrap(), l6.vxlan.clone().unwrap());
        assert_eq!((vx4.vni, vx4.local, vx4.local6), (1, Some(c.ip(i)), None));
        assert_eq!((vx6.vni, vx6.local, vx6.local6), (1, None, c.ip6(i)));
        assert!(!vx6.learning, "{name}: nolearning");
        assert_eq!(l4.mtu, 1450, "{name}: underlay 1500 - 50");
        assert_eq!(l6.mtu, 1430, "{name}: underlay 1500 - 70");
        assert!(l4.up && l6.up);
        let addrs6: Vec<Ipv6Network> = c
            .vxlan6_addrs(i)
            .unwrap()
            .into_iter()
            .map(|a| a.addr)
            .filter(|a| !a.ip().is_unicast_link_local())
            .collect();
        assert_eq!(
            addrs6,
            vec![Ipv6Network::new(own6.network(), 128).unwrap()],
            "{name}: flannel-v6.1 carries its IPv6 subnet's ::/128"
        );
        assert_link_shows(
            &c,
            i,
            DEV4,
            &[
                "mtu 1450".into(),
                "vxlan id 1".into(),
                format!("local {}", c.ip(i)),
            ],
        );
        assert_link_shows(
            &c,
            i,
            DEV6,
            &[
                "mtu 1430".into(),
                "vxlan id 1".into(),
                format!("local {}", c.ip6(i).unwrap()),
                "nolearning".into(),
            ],
        );
        // --- IPv6 FDB, NDP, routes as iproute2 prints them.
        assert_v6_vxlan_text(&c, i, &leases);
        // --- subnet.env: flannel's four IPv4 lines and two IPv6 ones.
        let env = c.subnet_env(i).unwrap();
        eprintln!("{name}: subnet.env\n{}", env.text);
        assert_eq!(env.network.to_string(), "10.5.0.0/16");
        assert_eq!(env.subnet_network(), own.subnet);
        assert_eq!(env.ipv6_network, Some("fd00:5::/48".parse().unwrap()));
        let sub6 = env.ipv6_subnet.expect("FLANNEL_IPV6_SUBNET");
        assert_eq!((sub6.ip(), sub6.prefix()), (first_host6(own6), 64));
        assert_eq!(
            env.mtu,
            l4.mtu.min(l6.mtu),
            "{name}: FLANNEL_MTU fits both devices"
        );
        for line in [
            "FLANNEL_NETWORK=10.5.0.0/16".to_string(),
            format!("FLANNEL_SUBNET={}/24", env.subnet.ip()),
            "FLANNEL_IPV6_NETWORK=fd00:5::/48".to_string(),
            format!("FLANNEL_IPV6_SUBNET={}/64", first_host6(own6)),
        ] {
            assert!(
                env.text.lines().any(|l| l == line),
                "{name}: no {line:?} in\n{}",
                env.text
            );
        }
    }
    assert_exact(&c);

    // --- containers: both families across hosts, all six pairs each.
    c.add_containers().unwrap();
    let started = Instant::now();
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", c.logs());
    eprintln!(
        "e2e_v6 timing: 12 container pings (6 IPv4, 6 IPv6) in {}",
        common::secs(started)
    );

    // --- a restart keeps both subnets and both MACs.
    restart_keeps_everything(&mut c, 1);
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "after restart: {failed:?}\n{}", c.logs());
    common::report(
        "dual_stack_vxlan_keys_devices_kernel_subnet_env_pings_and_restart",
        "3 dual-stack keys and values as flannel writes them, flannel.1 + flannel-v6.1 (MTU 1450/1430), v6 FDB/NDP/onlink routes exact, subnet.env v6 lines, 12 pings, restart keeps key, both MACs, subnet.env",
    );
}

/// host-gw on a dual-stack underlay: a route per peer in each family via
/// its PublicIP / PublicIPv6, no VXLAN device, pings in both families.
#[test]
fn dual_stack_host_gw_routes_and_pings() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = dual_cluster("host-gw");
    let leases = leases_by_host(&c);
    for (i, l) in leases.iter().enumerate() {
        let attrs = LeaseAttrs::from_json(&l.value).unwrap();
        assert_eq!(attrs.backend_type, "host-gw");
        assert_eq!(attrs.public_ipv6, c.ip6(i));
        assert!(l.subnet6.is_some(), "{}", l.key);
        assert!(c.vxlan_link(i).unwrap().is_none());
        assert!(c.vxlan6_link(i).unwrap().is_none());
        assert_v6_host_gw_text(&c, i, &leases);
        let env = c.subnet_env(i).unwrap();
        assert_eq!(env.mtu, 1500, "host-gw: the underlay's MTU");
        assert!(env.ipv6_subnet.is_some());
    }
    assert_exact(&c);
    c.add_containers().unwrap();
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", c.logs());
    common::report(
        "dual_stack_host_gw_routes_and_pings",
        "v4 and v6 routes via PublicIP/PublicIPv6 on eth0 exact on 3 hosts, 12 pings",
    );
}

/// etcd stopped (every member) while the overlay carries traffic: the
/// dataplane keeps working in both families; after etcd is back the daemons
/// take a new peer from the watch and converge on it, and on its removal.
#[test]
fn dual_stack_etcd_outage_keeps_the_dataplane_and_converges_after() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = dual_cluster("vxlan");
    c.add_containers().unwrap();
    assert_eq!(all_ping_both(&c), Vec::<String>::new());

    let down = Instant::now();
    for m in 0..c.etcd().len() {
        c.etcd_mut().stop_member(m).unwrap();
    }
    // The pings take a few seconds: etcd is down all along.
    let failed = all_ping_both(&c);
    assert!(
        failed.is_empty(),
        "with etcd down: {failed:?}\n{}",
        c.logs()
    );
    assert_exact_kernel_unchanged(&c);
    for m in 0..c.etcd().len() {
        c.etcd_mut().start_member(m).unwrap();
    }
    c.etcd_mut().wait_healthy().unwrap();
    eprintln!(
        "e2e_v6 timing: etcd down for {} (12 pings made meanwhile)",
        common::secs(down)
    );

    // A peer written after the outage reaches every host: the watch is back.
    let key = "10.5.200.0-24&fd00:5:0:200::-64";
    let value = r#"{"PublicIP":"10.0.0.200","PublicIPv6":"fd00:10::c8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:0b:0c:00:00:c8"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:0b:0c:00:01:c8"}}"#;
    common::put_lease(&c, key, value, 600);
    let took = c
        .wait_converged(DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..3 {
        let fdb6 = c.fdb6(i).unwrap();
        assert!(
            fdb6.iter().any(|e| e.mac.to_string() == "0a:0b:0c:00:01:c8"
                && e.dst == Some("fd00:10::c8".parse().unwrap())),
            "{}: {fdb6:?}",
            c.name(i)
        );
    }
    c.etcdctl(&["del", &common::lease_key(key)]).unwrap();
    c.wait_converged(DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..3 {
        let k = c.kernel_state(i).unwrap();
        assert_eq!(
            (k.routes6.len(), k.fdb6.len()),
            (2, 2),
            "{}: {k:?}",
            c.name(i)
        );
    }
    assert_eq!(all_ping_both(&c), Vec::<String>::new());
    common::report(
        "dual_stack_etcd_outage_keeps_the_dataplane_and_converges_after",
        &format!("all etcd members stopped: 12 pings pass, kernel unchanged; after restart a new dual-stack peer programmed everywhere in {took:?}, removed on delete"),
    );
}

/// With etcd down nothing can change the leases, so the kernel must still
/// match the leases read before: compare with a snapshot, not with etcd.
fn assert_exact_kernel_unchanged(c: &TwillCluster) {
    for i in 0..c.len() {
        let k = c.kernel_state(i).unwrap();
        assert_eq!(k.fdb6.len(), 2, "{}: {k:?}", c.name(i));
        assert_eq!(k.neigh6.len(), 2, "{}: {k:?}", c.name(i));
        assert_eq!(k.routes6.len(), 2, "{}: {k:?}", c.name(i));
        assert_eq!(k.fdb.len(), 2, "{}: {k:?}", c.name(i));
    }
}

/// An IPv6-only underlay and network with vxlan: flannel's IPv6-only key
/// and value, only `flannel-v6.1`, subnet.env without IPv4 lines, IPv6
/// pings, a restart keeping the subnet and the MAC.
#[test]
fn ipv6_only_vxlan_keys_device_subnet_env_pings_and_restart() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = v6_only_cluster("vxlan");
    // The daemons reach etcd over IPv6 only.
    for i in 0..3 {
        let args = c.daemon(i).args().join(" ");
        assert!(
            args.contains(&format!("http://[{}]:2379", c.ip6(i).unwrap())),
            "{args}"
        );
        assert!(c.ip(i).is_unspecified(), "no IPv4 on the LAN");
    }
    let leases = leases_by_host(&c);
    for (i, l) in leases.iter().enumerate() {
        let name = c.name(i).to_string();
        eprintln!("{name}: {} = {}", l.key, l.value);
        let sub6 = l.subnet6.expect("IPv6 subnet");
        assert!(l.is_v6_only(), "{}", l.key);
        assert_eq!(
            l.key,
            format!("{SUBNETS_PREFIX}0.0.0.0-0&{}-64", sub6.network()),
            "flannel's IPv6-only key"
        );
        assert!("fd00:6::/48"
            .parse::<Ipv6Network>()
            .unwrap()
            .contains(sub6.network()));
        let attrs = LeaseAttrs::from_json(&l.value).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::UNSPECIFIED, "PublicIP 0.0.0.0");
        assert_eq!(attrs.public_ipv6, c.ip6(i));
        let mac6 = c.vtep_mac6(i).unwrap().expect("flannel-v6.1");
        assert!(attrs.backend_v6_data.is_some());
        assert_eq!(l.vtep_mac6, Some(mac6.to_string()), "BackendV6Data.VtepMAC");
        assert!(c.vxlan_link(i).unwrap().is_none(), "{name}: no flannel.1");
        let l6 = c.vxlan6_link(i).unwrap().unwrap();
        assert_eq!(l6.vxlan.as_ref().unwrap().local6, c.ip6(i));
        assert_eq!(l6.mtu, 1430);
        assert_link_shows(
            &c,
            i,
            DEV6,
            &["mtu 1430".into(), format!("local {}", c.ip6(i).unwrap())],
        );
        assert_v6_vxlan_text(&c, i, &leases);
        let v4_routes = sh(&c, i, "ip", &["-4", "route", "show", "proto", "241"]);
        assert!(v4_routes.trim().is_empty(), "{name}: {v4_routes}");
        let env = c.subnet_env(i).unwrap();
        eprintln!("{name}: subnet.env\n{}", env.text);
        assert!(!env.has_ipv4());
        assert!(
            !env.text.contains("FLANNEL_NETWORK=") && !env.text.contains("FLANNEL_SUBNET="),
            "{name}: IPv4 lines in an IPv6-only subnet.env:\n{}",
            env.text
        );
        assert_eq!(env.ipv6_network, Some("fd00:6::/48".parse().unwrap()));
        let s = env.ipv6_subnet.unwrap();
        assert_eq!((s.ip(), s.prefix()), (first_host6(sub6), 64));
        assert_eq!(env.mtu, l6.mtu, "{name}: FLANNEL_MTU is flannel-v6.1's");
    }
    assert_exact(&c);
    c.add_containers().unwrap();
    for i in 0..3 {
        assert!(c.container_ip(i).is_none() && c.container_ip6(i).is_some());
    }
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", c.logs());
    restart_keeps_everything(&mut c, 2);
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "after restart: {failed:?}\n{}", c.logs());
    common::report(
        "ipv6_only_vxlan_keys_device_subnet_env_pings_and_restart",
        "etcd over IPv6, 3 keys 0.0.0.0-0&fd00:6:..-64 with PublicIP 0.0.0.0, only flannel-v6.1, no v4 lines, 6 v6 pings, restart keeps key and MAC",
    );
}

/// host-gw on an IPv6-only underlay: IPv6 routes via PublicIPv6 only.
#[test]
fn ipv6_only_host_gw_routes_and_pings() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = v6_only_cluster("host-gw");
    let leases = leases_by_host(&c);
    for i in 0..3 {
        assert!(leases[i].is_v6_only(), "{}", leases[i].key);
        assert_v6_host_gw_text(&c, i, &leases);
        let v4_routes = sh(&c, i, "ip", &["-4", "route", "show", "proto", "241"]);
        assert!(v4_routes.trim().is_empty(), "{v4_routes}");
    }
    assert_exact(&c);
    c.add_containers().unwrap();
    let failed = all_ping_both(&c);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", c.logs());
    common::report(
        "ipv6_only_host_gw_routes_and_pings",
        "IPv6-only host-gw: v6 routes via PublicIPv6 exact, no v4 routes, 6 v6 pings",
    );
}

/// Waits until host `i` has logged that it skips or does not program `key`.
fn wait_refused(c: &TwillCluster, i: usize, key: &str) {
    common::wait_for(c, DEADLINE, &format!("host {i} to refuse {key}"), || {
        c.daemon(i).log_since_start().lines().any(|l| {
            (l.contains("skipping lease") || l.contains("peer not programmed")) && l.contains(key)
        })
    });
}

/// Hand-written dual-stack leases whose IPv6 half lies outside IPv6Network,
/// or on the underlay's IPv6 network (the IPv6Network holds the LAN here,
/// as the article's 10.0.0.0/8 holds 10.0.0.0/24), are skipped on every
/// host and never programmed in either family; the LAN, etcd and the
/// overlay keep working.
#[test]
fn ipv6_leases_outside_the_network_or_on_the_underlay_are_never_programmed() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let config = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.99.0","EnableIPv6":true,"IPv6Network":"fd00::/16","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:5:0:1::","IPv6SubnetMax":"fd00:5:0:99::","Backend":{"Type":"vxlan"}}"#;
    let mut c = start(
        TwillCluster::builder()
            .hosts(3)
            .underlay(Underlay::DualStack)
            .config(config),
    );
    c.add_containers().unwrap();
    let underlay6: Ipv6Network = Lan::UNDERLAY6.parse().unwrap();
    let value = |n: u8| {
        format!(
            r#"{{"PublicIP":"10.0.0.{n}","PublicIPv6":"fd00:10::{n:x}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:0b:0c:00:00:{n:02x}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0a:0b:0c:00:01:{n:02x}"}}}}"#
        )
    };
    let outside = "10.5.201.0-24&fd01:99::-64";
    let on_lan = format!("10.5.202.0-24&{}-64", underlay6.network());
    let good = "10.5.203.0-24&fd00:5:0:203::-64";
    common::put_lease(&c, outside, &value(201), 600);
    common::put_lease(&c, &on_lan, &value(202), 600);
    // Written last: once it is programmed, each daemon has taken both bad ones.
    common::put_lease(&c, good, &value(203), 600);
    for i in 0..3 {
        wait_refused(&c, i, outside);
        wait_refused(&c, i, &on_lan);
        common::wait_for(&c, DEADLINE, "the good lease programmed", || {
            c.routes6(i)
                .is_ok_and(|r| r.iter().any(|r| r.dst.to_string() == "fd00:5:0:203::/64"))
        });
    }
    common::wait_reconciles(&mut c, &[0, 1, 2], 2);
    for i in 0..3 {
        let name = c.name(i);
        let r6 = c.all_routes6(i).unwrap();
        for bad in ["fd01:99::/64".to_string(), underlay6.to_string()] {
            assert!(
                !r6.iter()
                    .any(|r| r.dst.to_string() == bad && r.protocol == 241),
                "{name}: routes {bad}: {r6:?}"
            );
        }
        let r4 = c.all_routes(i).unwrap();
        for bad in ["10.5.201.0/24", "10.5.202.0/24"] {
            assert!(
                !r4.iter().any(|r| r.dst.to_string() == bad),
                "{name}: the IPv4 half of a skipped lease is routed: {r4:?}"
            );
        }
        for (mac, what) in [
            ("0a:0b:0c:00:01:c9", "outside"),
            ("0a:0b:0c:00:01:ca", "on the LAN"),
        ] {
            assert!(
                !c.fdb6(i).unwrap().iter().any(|e| e.mac.to_string() == mac),
                "{name}: FDB has the {what} lease's MAC"
            );
        }
        // The LAN's own IPv6 route still goes out of eth0.
        let via = sh(&c, i, "ip", &["-6", "route", "get", "fd00:10::2"]);
        assert!(
            via.contains("dev eth0") || via.contains("dev lo"),
            "{name}: {via}"
        );
    }
    // The underlay still works in IPv6, the overlay in both families.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let dst = c.ip6(b).unwrap().to_string();
                c.ns(a)
                    .exec("ping", &["-6", "-c", "1", "-W", "2", "-q", &dst])
                    .unwrap_or_else(|e| panic!("host {a} cannot reach {dst}: {e}"));
            }
        }
    }
    assert_eq!(all_ping_both(&c), Vec::<String>::new());
    common::report(
        "ipv6_leases_outside_the_network_or_on_the_underlay_are_never_programmed",
        "v6 half outside IPv6Network and v6 half on fd00:10::/64 skipped on 3 hosts (both halves unprogrammed), a later good lease programmed, LAN v6 pings and 12 overlay pings pass",
    );
}
