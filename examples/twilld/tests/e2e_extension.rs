#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! End to end with the `extension` backend: both examples of flannel's
//! `Documentation/extension.md`, verbatim, each on three hosts (real etcd,
//! one real `twilld` per host, the real kernel in network namespaces made
//! by the testbed), checked in each host's kernel and with container pings
//! across hosts; and a peer's removal running `SubnetRemoveCommand`.
//!
//! Timings and what an operator sees (`ip route`, `bridge fdb`, twilld's
//! log lines of the commands) are printed with `eprintln!`: run with
//! `--nocapture` to see them.

use std::time::{Duration, Instant};

use twill_model::LeaseAttrs;
use twill_testbed::cluster::{StoredLease, TwillCluster};

/// flannel's `Documentation/extension.md`, "Simple example (host-gw)",
/// byte for byte.
const HOSTGW_EXAMPLE: &str = r#"{
  "Network": "10.0.0.0/16",
  "Backend": {
    "Type": "extension",
    "SubnetAddCommand": "ip route add \"$SUBNET\" via \"$PUBLIC_IP\"",
    "SubnetRemoveCommand": "ip route del \"$SUBNET\" via \"$PUBLIC_IP\""
  }
}"#;

/// flannel's `Documentation/extension.md`, "Complex example (vxlan)",
/// byte for byte.
const VXLAN_EXAMPLE: &str = r#"{
  "Network": "10.50.0.0/16",
  "Backend": {
    "Type": "extension",
    "PreStartupCommand": "export VNI=1; export IF_NAME=flannel-vxlan; ip link del \"$IF_NAME\" 2>/dev/null; ip link add \"$IF_NAME\" type vxlan id \"$VNI\" dstport 8472 && cat \"/sys/class/net/${IF_NAME}/address\"",
    "PostStartupCommand": "export IF_NAME=flannel-vxlan; export SUBNET_IP=$(echo \"$SUBNET\" | cut -d'/' -f 1); ip addr add \"${SUBNET_IP}/32\" dev \"$IF_NAME\" && ip link set \"$IF_NAME\" up",
    "SubnetAddCommand": "export SUBNET_IP=$(echo \"$SUBNET\" | cut -d'/' -f 1); export IF_NAME=flannel-vxlan; read VTEP; ip route add \"$SUBNET\" nexthop via \"$SUBNET_IP\" dev \"$IF_NAME\" onlink && ip neigh replace \"$SUBNET_IP\" dev \"$IF_NAME\" lladdr \"$VTEP\" && bridge fdb add \"$VTEP\" dev \"$IF_NAME\" self dst \"$PUBLIC_IP\""
  }
}"#;

const NAMES: [&str; 3] = ["test", "test2", "test3"];
/// Every wait's deadline: generous, so a loaded machine passes.
const DEADLINE: Duration = Duration::from_secs(30);

fn cluster(config: &str) -> TwillCluster {
    let started = Instant::now();
    let mut c = TwillCluster::builder()
        .hosts(3)
        .names(&NAMES)
        .config(config)
        .etcd_members(1)
        .build(env!("CARGO_BIN_EXE_twilld"))
        .expect("building the cluster");
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    eprintln!(
        "e2e extension: 3 twilld ready {:?} after the build began",
        started.elapsed()
    );
    c
}

fn leases_by_host(c: &TwillCluster) -> Vec<StoredLease> {
    (0..c.len())
        .map(|i| {
            c.own_lease(i)
                .expect("reading leases")
                .unwrap_or_else(|| panic!("no lease for {}\n{}", c.name(i), c.logs()))
        })
        .collect()
}

fn show(c: &TwillCluster, i: usize, program: &str, args: &[&str]) -> String {
    c.show(i, program, args)
        .unwrap_or_else(|e| format!("({e})"))
}

/// Every container pings every other host's container.
fn ping_all(c: &mut TwillCluster) {
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
        "e2e extension: 6 container-to-container pings in {:?}",
        started.elapsed()
    );
}

/// The log lines of host `i`'s daemon about the extension's commands.
fn command_lines(c: &TwillCluster, i: usize) -> String {
    c.daemon(i)
        .log()
        .lines()
        .filter(|l| l.contains("twill_backend::extension"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether host `i`'s `ip route` has `<subnet> via <ip>`.
fn has_route_via(c: &TwillCluster, i: usize, peer: &StoredLease) -> bool {
    let want = format!("{} via {} ", peer.subnet, peer.public_ip.expect("PublicIP"));
    show(c, i, "ip", &["-4", "route"])
        .lines()
        .any(|l| l.starts_with(&want))
}

#[test]
fn flannels_hostgw_example_routes_pings_and_removes() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = cluster(HOSTGW_EXAMPLE);
    let leases = leases_by_host(&c);
    for (i, l) in leases.iter().enumerate() {
        let attrs = LeaseAttrs::from_json(&l.value).expect("flannel-format lease");
        assert_eq!(attrs.backend_type, "extension");
        assert_eq!(attrs.public_ip, c.ip(i));
        assert_eq!(
            attrs.backend_data, None,
            "no PreStartupCommand: no BackendData"
        );
        assert!(
            l.value.contains(r#""BackendType":"extension""#),
            "{}",
            l.value
        );
    }
    let started = Instant::now();
    TwillCluster::poll(DEADLINE, "every host routing both peers", || {
        (0..3).all(|i| {
            (0..3)
                .filter(|&j| j != i)
                .all(|j| has_route_via(&c, i, &leases[j]))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!(
        "e2e extension (host-gw example): both peers' routes on every host {:?} after ready",
        started.elapsed()
    );
    for i in 0..3 {
        eprintln!(
            "--- {} `ip -4 route`:\n{}",
            c.name(i),
            show(&c, i, "ip", &["-4", "route"])
        );
    }
    ping_all(&mut c);

    // A lease of another BackendType (a vxlan host's) is skipped, reported,
    // and runs no command.
    let taken: Vec<_> = leases.iter().map(|l| l.subnet.network()).collect();
    let third = (1u8..=254)
        .find(|t| !taken.contains(&std::net::Ipv4Addr::new(10, 0, *t, 0)))
        .expect("a free subnet");
    let foreign = format!("/coreos.com/network/subnets/10.0.{third}.0-24");
    c.etcdctl(&[
        "put",
        &foreign,
        r#"{"PublicIP":"10.0.0.99","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:00:00:99"}}"#,
    ])
    .expect("etcdctl put");
    let reported = format!("peer=10.0.{third}.0-24");
    TwillCluster::poll(
        DEADLINE,
        "the vxlan lease reported as not programmed",
        || {
            (0..3).all(|i| {
                c.daemon(i).log().lines().any(|l| {
                    l.contains("peer not programmed")
                        && l.contains(&reported)
                        && l.contains(r#"BackendType "vxlan" is not "extension""#)
                })
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.wait_reconciles(&[0, 1, 2], 2, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..3 {
        let routes = show(&c, i, "ip", &["-4", "route"]);
        assert!(!routes.contains(&format!("10.0.{third}.0/24")), "{routes}");
        assert!(!command_lines(&c, i).contains(&format!("10.0.{third}.0")));
    }
    c.etcdctl(&["del", &foreign]).expect("etcdctl del");

    // test3 goes (its daemon killed, its lease deleted): the others run
    // SubnetRemoveCommand, and its route leaves their kernels.
    let gone = 2;
    c.daemon_mut(gone).kill().expect("SIGKILL");
    let removed = Instant::now();
    c.etcdctl(&["del", &leases[gone].key]).expect("etcdctl del");
    TwillCluster::poll(DEADLINE, "test3's route to leave test and test2", || {
        (0..2).all(|i| !has_route_via(&c, i, &leases[gone]))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    eprintln!(
        "e2e extension (host-gw example): test3's route gone from test and test2 {:?} after `etcdctl del`",
        removed.elapsed()
    );
    for i in 0..2 {
        // The other peer is still routed, and the removal was the command's.
        let other = 1 - i;
        assert!(has_route_via(&c, i, &leases[other]), "{}", c.logs());
        let lines = command_lines(&c, i);
        let subnet = leases[gone].subnet;
        let want = format!(
            "ran SubnetRemoveCommand for peer {}-{}",
            subnet.network(),
            subnet.prefix()
        );
        assert!(
            lines.contains(&want),
            "{}: no {want:?} in\n{lines}",
            c.name(i)
        );
        assert!(!lines.contains("failed"), "{}: {lines}", c.name(i));
        eprintln!("--- {} extension log:\n{lines}", c.name(i));
    }
    assert!(c.ping(0, c.container_ip(1).expect("container")));

    // test's daemon restarts: the route to test2 it added before is still
    // there, so the example's `ip route add` is refused (File exists). It
    // is retried at each pass and logged once; forwarding is unaffected.
    c.daemon_mut(0).restart().expect("restart test's twilld");
    c.wait_ready(0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.wait_reconciles(&[0], 4, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let peer = leases[1].subnet;
    let want = format!(
        "SubnetAddCommand failed for peer {}-{}",
        peer.network(),
        peer.prefix()
    );
    let log = c.daemon(0).log_since_start();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(&want)).collect();
    assert_eq!(warned.len(), 1, "logged once over 4 passes:\n{log}");
    assert!(warned[0].contains("File exists"), "{}", warned[0]);
    eprintln!("--- test after a restart:\n{}", warned[0]);
    assert!(has_route_via(&c, 0, &leases[1]));
    assert!(c.ping(0, c.container_ip(1).expect("container")));
}

#[test]
fn flannels_vxlan_example_publishes_the_vtep_mac_and_pings() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = cluster(VXLAN_EXAMPLE);
    let leases = leases_by_host(&c);
    let macs: Vec<String> = (0..3)
        .map(|i| {
            show(&c, i, "cat", &["/sys/class/net/flannel-vxlan/address"])
                .trim()
                .to_string()
        })
        .collect();
    for (i, l) in leases.iter().enumerate() {
        // PreStartupCommand's output, the device's MAC, as a JSON string.
        let attrs = LeaseAttrs::from_json(&l.value).expect("flannel-format lease");
        assert_eq!(attrs.backend_type, "extension");
        assert_eq!(
            attrs.backend_data.map(|d| d.to_value()),
            Some(serde_json::Value::String(macs[i].clone())),
            "{}: {}",
            c.name(i),
            l.value
        );
        // PostStartupCommand gave the device our subnet's .0/32 and set it up.
        let addr = show(
            &c,
            i,
            "ip",
            &["-4", "-o", "addr", "show", "dev", "flannel-vxlan"],
        );
        assert!(
            addr.contains(&format!("{}/32", l.subnet.network())),
            "{}: {addr}",
            c.name(i)
        );
        eprintln!("--- {} lease {}: {}", c.name(i), l.key, l.value);
    }
    let programmed = |i: usize, j: usize| {
        let (l, ip) = (&leases[j], leases[j].public_ip.expect("PublicIP"));
        let routes = show(
            &c,
            i,
            "ip",
            &["-4", "route", "show", "dev", "flannel-vxlan"],
        );
        let fdb = show(&c, i, "bridge", &["fdb", "show", "dev", "flannel-vxlan"]);
        let neigh = show(
            &c,
            i,
            "ip",
            &["-4", "neigh", "show", "dev", "flannel-vxlan"],
        );
        routes
            .lines()
            .any(|r| r.starts_with(&format!("{} via {} ", l.subnet, l.subnet.network())))
            && fdb
                .lines()
                .any(|f| f.starts_with(&format!("{} dst {ip} ", macs[j])))
            && neigh
                .lines()
                .any(|n| n.starts_with(&format!("{} lladdr {} ", l.subnet.network(), macs[j])))
    };
    let started = Instant::now();
    TwillCluster::poll(
        DEADLINE,
        "every host with both peers' route, ARP and FDB",
        || (0..3).all(|i| (0..3).filter(|&j| j != i).all(|j| programmed(i, j))),
    )
    .unwrap_or_else(|e| {
        let state: String = (0..3)
            .map(|i| {
                format!(
                    "{}: {}\n{}\n{}\n",
                    c.name(i),
                    show(&c, i, "ip", &["-4", "route"]),
                    show(&c, i, "bridge", &["fdb", "show", "dev", "flannel-vxlan"]),
                    show(&c, i, "ip", &["neigh", "show", "dev", "flannel-vxlan"])
                )
            })
            .collect();
        panic!("{e}\n{state}\n{}", c.logs())
    });
    eprintln!(
        "e2e extension (vxlan example): both peers' route, ARP and FDB on every host {:?} after ready",
        started.elapsed()
    );
    eprintln!(
        "--- test `ip -4 route show dev flannel-vxlan`:\n{}\n--- test `ip neigh show dev flannel-vxlan`:\n{}\n--- test `bridge fdb show dev flannel-vxlan`:\n{}",
        show(&c, 0, "ip", &["-4", "route", "show", "dev", "flannel-vxlan"]),
        show(&c, 0, "ip", &["neigh", "show", "dev", "flannel-vxlan"]),
        show(&c, 0, "bridge", &["fdb", "show", "dev", "flannel-vxlan"]),
    );
    ping_all(&mut c);
    eprintln!("--- test extension log:\n{}", command_lines(&c, 0));
}

#[test]
fn a_hanging_add_command_is_killed_and_twilld_keeps_working() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // twilld runs the backend on a thread of its own, driving tokio's
    // process and timer from its current-thread runtime: the timeout must
    // fire there too, and the daemon go on renewing and reconciling.
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let config = serde_json::json!({
        "Network": "10.60.0.0/16",
        "Backend": {
            "Type": "extension",
            "CommandTimeout": "1s",
            "SubnetAddCommand": format!(
                "echo $$ >> '{p}'; sleep 60 & echo $! >> '{p}'; wait",
                p = pids.display()
            ),
        }
    })
    .to_string();
    let mut c = TwillCluster::builder()
        .hosts(2)
        .config(&config)
        .etcd_members(1)
        .twilld_args(&["--lease-ttl=4s"])
        .build(env!("CARGO_BIN_EXE_twilld"))
        .expect("building the cluster");
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    // Several passes, each running (and killing) the add again, while the
    // 4 s leases are renewed.
    c.wait_reconciles(&[0, 1], 4, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let renewed = TwillCluster::poll(DEADLINE, "a renewal on each host", || {
        (0..2).all(|i| {
            c.metric(i, twill_testbed::cluster::LEASE_RENEWALS_TOTAL)
                .is_ok_and(|n| n >= 1.0)
        })
    });
    renewed.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..2 {
        let log = c.daemon(i).log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("SubnetAddCommand failed for peer"))
            .collect();
        assert_eq!(warned.len(), 1, "{}: logged once:\n{log}", c.name(i));
        assert!(
            warned[0].contains("timed out after 1s and was killed"),
            "{}",
            warned[0]
        );
        assert!(c.daemon_mut(i).is_running(), "{}", c.name(i));
        eprintln!("--- {}: {}", c.name(i), warned[0]);
    }
    // Every shell the adds started, and its `sleep`, is gone (killed with
    // its process group at the timeout): those
    // recorded now belong to passes that have ended once two more have.
    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect();
    assert!(started.len() >= 8, "{started:?}");
    c.wait_reconciles(&[0, 1], 2, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let gone = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    TwillCluster::poll(
        DEADLINE,
        "every earlier add's shell and sleep to be gone",
        || started.iter().all(gone),
    )
    .unwrap_or_else(|e| panic!("{e}: {started:?}\n{}", c.logs()));
    eprintln!(
        "e2e extension: {} hanging adds (shell and sleep) started and killed across both hosts",
        started.len() / 2
    );
}

#[test]
fn a_failing_pre_startup_command_stops_twilld_with_its_output() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // As flanneld: no lease is taken, and the daemon exits naming the
    // command, its status and what it printed (never a hang).
    let config = r#"{"Network":"10.70.0.0/16","Backend":{"Type":"extension","PreStartupCommand":"echo no vxlan module >&2; exit 3"}}"#;
    let mut c = TwillCluster::builder()
        .hosts(1)
        .config(config)
        .build(env!("CARGO_BIN_EXE_twilld"))
        .expect("building the cluster");
    TwillCluster::poll(DEADLINE, "twilld to exit", || !c.daemon_mut(0).is_running())
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let status = c.daemon_mut(0).exit_status().expect("an exit status");
    assert!(!status.success(), "{status:?}");
    let log = c.daemon(0).log();
    assert!(
        log.contains("PreStartupCommand")
            && log.contains("failed (exit status: 3); stderr: no vxlan module"),
        "{log}"
    );
    // One line, each cause once (the errors' own messages carry their
    // causes, which anyhow's chain would repeat).
    let line = log
        .lines()
        .find(|l| l.starts_with("twilld: "))
        .unwrap_or_else(|| panic!("no error line\n{log}"));
    assert_eq!(line.matches("stderr: no vxlan module").count(), 1, "{line}");
    assert!(c.leases().expect("leases").is_empty(), "no lease taken");
    eprintln!("--- twilld exited ({status}):\n{}", c.daemon(0).log_tail(3));
}
