//! Peer health and `twilld diagnose`, end to end: the article's three hosts
//! in network namespaces, real etcd, real twilld, real nftables.
//!
//! * UDP 8472 into one host dropped with nftables: the others report it
//!   unreachable (metric 0, one log line naming its address and the port)
//!   within 15 s, and `twilld diagnose` exits non-zero naming both; the rule
//!   removed, it is reachable again and diagnose exits 0.
//! * An underlay MTU lowered under the overlay's, and a stale route of ours
//!   planted by hand (reconcile slowed to 1 h so that it stays): diagnose
//!   names each.
//!
//! Waits are on conditions with deadlines; the measured times are printed
//! (`--nocapture`).

#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::{Duration, Instant};

use twill_testbed::cluster::TwillCluster;

const CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
const NAMES: [&str; 3] = ["test", "test2", "test3"];
const DEADLINE: Duration = Duration::from_secs(30);
/// The issue's bound on noticing a blocked tunnel.
const DETECTION: Duration = Duration::from_secs(15);
const BLOCK_TABLE: &str = "twill_test_block";

fn cluster(slow_reconcile: bool) -> TwillCluster {
    let mut c = TwillCluster::builder()
        .hosts(3)
        .names(&NAMES)
        .config(CONFIG)
        .no_daemons()
        .build(env!("CARGO_BIN_EXE_twilld"))
        .expect("building the cluster");
    for i in 0..c.len() {
        let args = twilld_args(&c, i, slow_reconcile);
        c.start_twilld_with(i, args).unwrap();
    }
    if let Err(e) = c.wait_all_ready(DEADLINE) {
        panic!("twilld not ready: {e}\n{}", c.logs());
    }
    if let Err(e) = c.wait_converged(DEADLINE) {
        panic!("{e}\n{}", c.logs());
    }
    c
}

/// The daemon's arguments, with the full reconcile every hour instead of
/// every second when `slow_reconcile` (so a planted route stays).
fn twilld_args(c: &TwillCluster, i: usize, slow_reconcile: bool) -> Vec<String> {
    c.base_args(i)
        .into_iter()
        .map(|a| {
            if slow_reconcile && a.starts_with("--reconcile-interval") {
                "--reconcile-interval=1h".to_string()
            } else {
                a
            }
        })
        .collect()
}

/// `twilld diagnose` on host `i` with its daemon's flags (`slow_reconcile` as
/// the daemon was started).
fn diagnose(c: &TwillCluster, i: usize, slow_reconcile: bool, extra: &[&str]) -> Output {
    let mut cmd = c.ns(i).command(env!("CARGO_BIN_EXE_twilld"));
    cmd.arg("diagnose")
        .args(twilld_args(c, i, slow_reconcile))
        .args(extra);
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `twill_peer_reachable` for `peer` on host `i`: `None` without a sample.
fn peer_reachable(c: &TwillCluster, i: usize, peer: &str) -> Option<f64> {
    let (_, body) = c.daemon(i).http_get(c.healthz_addr(), "/metrics").ok()?;
    let prefix = format!("twill_peer_reachable{{peer=\"{peer}\",");
    body.lines()
        .find(|l| l.starts_with(&prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Waits until every host in `hosts` reports `peer` with `value`.
fn wait_peer(
    c: &TwillCluster,
    hosts: &[usize],
    peer: &str,
    value: f64,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if hosts
            .iter()
            .all(|&i| peer_reachable(c, i, peer) == Some(value))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "twill_peer_reachable{{peer={peer}}} not {value} on hosts {hosts:?} within {within:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines_with(log: &str, all: &[&str]) -> usize {
    log.lines()
        .filter(|l| all.iter().all(|w| l.contains(w)))
        .count()
}

#[test]
fn a_blocked_vxlan_port_is_reported_by_the_others_and_by_diagnose() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    const SLOW: bool = false;
    let c = cluster(SLOW);
    let ips: Vec<String> = (0..3).map(|i| c.ip(i).to_string()).collect();
    for (i, ip) in ips.iter().enumerate() {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        wait_peer(&c, &others, ip, 1.0, DEADLINE);
    }
    let healthy = diagnose(&c, 0, SLOW, &[]);
    eprintln!("healthy cluster, diagnose on test:\n{}", text(&healthy));
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));

    // Drop VXLAN into test3.
    let blocked = &ips[2];
    let rules = format!(
        "add table inet {BLOCK_TABLE}\nadd chain inet {BLOCK_TABLE} input {{ type filter hook input priority -10; }}\nadd rule inet {BLOCK_TABLE} input udp dport 8472 drop\n"
    );
    nft(&c, 2, &rules);
    let took = wait_peer(&c, &[0, 1], blocked, 0.0, DETECTION);
    eprintln!(
        "UDP 8472 into {blocked} dropped: test and test2 report it unreachable after {took:?}"
    );
    for i in [0, 1] {
        let log = c.daemon(i).log();
        for l in log.lines().filter(|l| l.contains(" unreachable: ")) {
            eprintln!("{} log: {l}", c.name(i));
        }
        assert_eq!(
            lines_with(
                &log,
                &[&format!("peer {blocked} "), "unreachable", "UDP port 8472"]
            ),
            1,
            "{}: one line naming {blocked} and the port\n{log}",
            c.name(i)
        );
    }
    let (code, readyz) = c.daemon(0).http_get(c.healthz_addr(), "/readyz").unwrap();
    eprintln!("/readyz on test:\n{readyz}");
    assert_eq!(code, 200, "a peer down does not make this host unready");
    assert!(
        readyz.contains("1 unreachable") && readyz.contains(blocked.as_str()),
        "{readyz}"
    );

    let out = diagnose(&c, 0, SLOW, &[]);
    let shown = text(&out);
    eprintln!("UDP 8472 into {blocked} dropped, diagnose on test:\n{shown}");
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        lines_with(&shown, &[blocked.as_str(), "UDP port 8472"]) >= 1,
        "diagnose names {blocked} and the port:\n{shown}"
    );
    let json = diagnose(&c, 0, SLOW, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["problems"].as_array().is_some_and(|p| !p.is_empty()),
        "{v}"
    );

    // Allowed again.
    nft(&c, 2, &format!("delete table inet {BLOCK_TABLE}\n"));
    let took = wait_peer(&c, &[0, 1], blocked, 1.0, DEADLINE);
    eprintln!("rule removed: {blocked} reachable again after {took:?}");
    for i in [0, 1] {
        let log = c.daemon(i).log();
        assert_eq!(
            lines_with(&log, &[&format!("peer {blocked} "), "reachable again"]),
            1,
            "{}\n{log}",
            c.name(i)
        );
    }
    for l in c
        .daemon(0)
        .log()
        .lines()
        .filter(|l| l.contains("reachable again"))
    {
        eprintln!("test log: {l}");
    }
    let out = diagnose(&c, 0, SLOW, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn nft(c: &TwillCluster, i: usize, rules: &str) {
    use std::io::Write;
    let mut child = c
        .ns(i)
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f - <<{rules}");
}

/// The name of host `i`'s underlay device (the one holding its address).
fn underlay_dev(c: &TwillCluster, i: usize) -> String {
    let out = c.ns(i).ip(&["-o", "-4", "addr", "show"]).unwrap();
    let ip = format!("inet {}/", c.ip(i));
    out.lines()
        .find(|l| l.contains(&ip))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no device with {ip}: {out}"))
        .to_string()
}

#[test]
fn diagnose_names_an_mtu_mismatch_and_a_stale_route() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    const SLOW: bool = true;
    let c = cluster(SLOW);
    for (i, ip) in (0..3).map(|i| (i, c.ip(i).to_string())) {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        wait_peer(&c, &others, &ip, 1.0, DEADLINE);
    }
    let out = diagnose(&c, 0, SLOW, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A route of ours to a subnet no lease has (a host that left while
    // this one was down), and the underlay's MTU lowered under the
    // overlay's.
    let dev = c.vxlan_device().to_string();
    c.ns(0)
        .ip(&[
            "route",
            "add",
            "192.168.200.0/24",
            "via",
            "192.168.200.0",
            "dev",
            &dev,
            "onlink",
            "proto",
            "241",
        ])
        .unwrap();
    let underlay = underlay_dev(&c, 0);
    c.ns(0)
        .ip(&["link", "set", &underlay, "mtu", "1400"])
        .unwrap();

    let out = diagnose(&c, 0, SLOW, &[]);
    let shown = text(&out);
    eprintln!("stale route and MTU mismatch, diagnose on test:\n{shown}");
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert_eq!(
        lines_with(
            &shown,
            &[
                "stale route 192.168.200.0/24",
                "ip route del 192.168.200.0/24",
                "(-reconcile-interval, 1h0m)"
            ]
        ),
        1,
        "{shown}"
    );
    assert_eq!(
        lines_with(
            &shown,
            &[
                &format!("{dev} MTU 1450"),
                &format!("{underlay}'s MTU 1400")
            ]
        ),
        1,
        "{shown}"
    );
}
