//! twilld faults: crashes and restarts, two daemons for one host, and 100
//! daemons racing for 100 subnets in one etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reliability_common::{self as common, report, DEADLINE, TWILLD};
use twill_testbed::cluster::TwillCluster;
use twill_testbed::daemon::{Daemon, DaemonOptions};

#[test]
fn sigkill_and_restart_keeps_subnet_mac_and_lease() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3).twilld_args(&["--lease-ttl=4s"]));
    c.add_containers().unwrap();
    common::all_ping(&c).unwrap();
    let lease = c.own_lease(1).unwrap().unwrap();
    let mac = c.vtep_mac(1).unwrap().unwrap();
    let env = c.subnet_env(1).unwrap();
    assert_eq!(lease.vtep_mac.as_deref(), Some(mac.to_string().as_str()));

    // 1. SIGKILL, restart at once: the lease is still in etcd.
    c.daemon_mut(1).kill().unwrap();
    // The dataplane outlives the daemon: the dead daemon's host still
    // reaches every peer. (Not the reverse: with a 4 s TTL the peers may
    // rightly drop it while the pings run on a loaded machine.)
    for b in [0, 2] {
        let dst = c.container_ip(b).unwrap();
        assert!(
            c.ping(1, dst),
            "host 1, its daemon killed, cannot ping {dst}"
        );
    }
    c.start_twilld(1).unwrap();
    c.wait_ready(1, DEADLINE).unwrap();
    // own_lease fails if two leases carry host 1's IP.
    let again = c.own_lease(1).unwrap().unwrap();
    assert_eq!(again.key, lease.key, "same subnet\n{}", c.logs());
    assert_eq!(again.vtep_mac, lease.vtep_mac, "same VTEP MAC in the lease");
    assert_eq!(
        c.vtep_mac(1).unwrap(),
        Some(mac),
        "same VTEP MAC on the device"
    );
    assert_eq!(c.subnet_env(1).unwrap(), env, "same subnet.env");
    assert_eq!(c.leases().unwrap().len(), 3, "{:?}", c.leases());
    common::wait_converged(&c, DEADLINE);
    common::all_ping(&c).unwrap();
    // Adopted as it was: nothing to change in the kernel.
    assert_eq!(
        common::metric(&c, 1, "twill_ops_applied_total"),
        Some(0.0),
        "{}",
        c.daemon(1).log_since_start()
    );
    report(
        "twilld SIGKILL + restart",
        "same subnet, same VTEP MAC, one lease, 0 kernel ops after restart",
    );

    // 2. SIGKILL, and stay down longer than the TTL: the lease expires and
    // the peers drop the host; on restart subnet.env names the old subnet,
    // which is free, so it is claimed again.
    c.daemon_mut(1).kill().unwrap();
    let down = Instant::now();
    common::wait_for(&c, DEADLINE, "host 1's lease to expire", || {
        c.own_lease(1).ok().flatten().is_none()
    });
    common::wait_converged_among(&c, &[0, 2], DEADLINE);
    report(
        "twilld down longer than the TTL",
        &format!(
            "lease expired and peers dropped it {} after the kill",
            common::secs(down)
        ),
    );
    c.start_twilld(1).unwrap();
    c.wait_ready(1, DEADLINE).unwrap();
    let third = c.own_lease(1).unwrap().unwrap();
    assert_eq!(
        third.key,
        lease.key,
        "same subnet from subnet.env\n{}",
        c.logs()
    );
    assert_eq!(c.vtep_mac(1).unwrap(), Some(mac));
    assert_eq!(third.vtep_mac, lease.vtep_mac);
    common::wait_converged(&c, DEADLINE);
    common::all_ping(&c).unwrap();

    // 3. SIGKILL and lose the subnet file too: the lease carrying our
    // PublicIP is found in etcd.
    c.daemon_mut(1).kill().unwrap();
    std::fs::remove_file(c.subnet_file(1)).unwrap();
    c.start_twilld(1).unwrap();
    c.wait_ready(1, DEADLINE).unwrap();
    assert_eq!(c.own_lease(1).unwrap().unwrap().key, lease.key);
    assert_eq!(c.subnet_env(1).unwrap(), env);
    assert_eq!(c.leases().unwrap().len(), 3);
}

/// Starts a second daemon for host `i` with its own log, subnet file and
/// health port, and the same public IP.
fn second_daemon(c: &TwillCluster, i: usize, tag: &str) -> Daemon {
    let mut args = c.base_args(i);
    args.retain(|a| !a.starts_with("-subnet-file=") && !a.starts_with("-healthz-port="));
    args.push(format!(
        "-subnet-file={}",
        c.dir().join(format!("{tag}.env")).display()
    ));
    args.push("-healthz-port=8472".into());
    Daemon::start(
        DaemonOptions::new(TWILLD, args)
            .netns(c.ns(i).name())
            .name(tag)
            .log_path(c.dir().join(format!("{tag}.log"))),
    )
    .unwrap()
}

#[test]
fn two_daemons_with_one_public_ip_never_make_two_leases() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(2).without_daemon(1));
    for round in 0..3 {
        // Both started at once on host 1.
        let tag = format!("second{round}");
        c.start_twilld(1).unwrap();
        let mut other = second_daemon(&c, 1, &tag);
        let deadline = Instant::now() + DEADLINE;
        // One of them refuses; the other becomes ready.
        let refused = loop {
            let first_running = c.daemon_mut(1).is_running();
            let other_running = other.is_running();
            if !first_running || !other_running {
                break if first_running {
                    other.log()
                } else {
                    c.daemon(1).log_since_start()
                };
            }
            assert!(
                Instant::now() < deadline,
                "neither refused\n{}\n{}",
                c.logs(),
                other.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            refused.contains("another twilld is already running in this network namespace (pid "),
            "{refused}"
        );
        assert_eq!(
            refused.lines().filter(|l| !l.starts_with("===")).count(),
            1,
            "{refused}"
        );
        let code = if c.daemon_mut(1).is_running() {
            other.exit_status()
        } else {
            c.daemon_mut(1).exit_status()
        };
        assert!(code.is_some_and(|s| !s.success()), "{code:?}");
        // The winner serves; then never two leases for 10.0.0.3.
        if c.daemon_mut(1).is_running() {
            c.wait_ready(1, DEADLINE).unwrap();
        } else {
            other
                .wait_ready("127.0.0.1:8472".parse().unwrap(), DEADLINE)
                .unwrap();
        }
        let leases = c.leases().unwrap();
        let ours: Vec<_> = leases
            .iter()
            .filter(|l| l.public_ip == Some(c.ip(1)))
            .collect();
        assert_eq!(ours.len(), 1, "{leases:?}\n{}\n{}", c.logs(), other.log());
        // Stop both for the next round.
        c.daemon_mut(1).sigterm().unwrap();
        other.sigterm().unwrap();
    }
    report(
        "two daemons, one public IP",
        "the second refuses with one line (3 of 3 races), one lease",
    );
}

/// Issue 13: the lock was keyed on the public IP, so a second daemon with
/// another `-public-ip` in the same namespace started, took a second lease
/// and rewrote `flannel.100`'s address to its own subnet on every reconcile.
#[test]
fn a_second_daemon_in_one_namespace_is_refused_whatever_its_public_ip() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(1));
    let addr_of_device = |c: &TwillCluster| {
        c.ns(0)
            .ip(&["-4", "-o", "addr", "show", "dev", "flannel.100"])
            .unwrap()
    };
    let before = addr_of_device(&c);
    assert!(before.contains("inet 192.168."), "{before}");
    let pid = c.daemon(0).pid().unwrap();
    let mut args = c.base_args(0);
    args.retain(|a| !a.starts_with("-subnet-file=") && !a.starts_with("-healthz-port="));
    args.extend([
        "-public-ip=10.0.0.99".to_string(),
        format!("-subnet-file={}", c.dir().join("other2.env").display()),
        "-healthz-port=0".into(),
    ]);
    let mut other = Daemon::start(
        DaemonOptions::new(TWILLD, args)
            .netns(c.ns(0).name())
            .name("other2")
            .log_path(c.dir().join("other2.log")),
    )
    .unwrap();
    common::wait_for(&c, DEADLINE, "the second daemon to exit", || {
        !other.is_running()
    });
    let log = other.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("===")).collect();
    assert_eq!(
        lines,
        [format!(
            "twilld: another twilld is already running in this network namespace (pid {pid}); one daemon per host"
        )],
        "{log}"
    );
    assert!(other.exit_status().is_some_and(|s| !s.success()));
    assert!(c.daemon_mut(0).is_running(), "{}", c.logs());
    // Nothing of the second one reached etcd or the kernel.
    let leases = c.leases().unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.public_ip != Some("10.0.0.99".parse().unwrap())),
        "{leases:?}"
    );
    assert!(!c.dir().join("other2.env").exists());
    // A reconcile tick later the address is still the first daemon's.
    let ticks = common::metric(&c, 0, "twill_reconciles_total");
    common::wait_for(&c, DEADLINE, "a reconcile after the refusal", || {
        common::metric(&c, 0, "twill_reconciles_total") > ticks
    });
    assert_eq!(addr_of_device(&c), before);
}

#[test]
fn hundred_daemons_race_for_hundred_subnets() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // 100 namespaces, one daemon each (twilld refuses a second one in a
    // namespace: two would manage the same routes), with public IPs
    // 10.0.1.x off the segment: the host-gw backend programs nothing for
    // them, so this is a test of the lease race in etcd, not of the kernel.
    let c = TwillCluster::builder()
        .hosts(100)
        .etcd_members(1)
        .no_daemons()
        .build(TWILLD)
        .unwrap();
    let endpoint = c.etcd().endpoints().join(",");
    let mut daemons = Vec::new();
    // All start before the config exists, polling for it every 100 ms; the
    // config then releases them all at once.
    for x in 1..=100u32 {
        let host = usize::try_from(x - 1).unwrap();
        let args = vec![
            format!("-iface={}", c.ip(host)),
            format!("-public-ip=10.0.1.{x}"),
            format!("-etcd-endpoints={endpoint}"),
            format!(
                "-subnet-file={}",
                c.dir().join(format!("d{x}/subnet.env")).display()
            ),
            "-healthz-port=0".into(),
            "--retry-interval=100ms".into(),
            "--lease-ttl=120s".into(),
        ];
        daemons.push(
            Daemon::start(
                DaemonOptions::new(TWILLD, args)
                    .netns(c.ns(host).name())
                    .name(&format!("d{x}"))
                    .log_path(c.dir().join(format!("d{x}/twilld.log"))),
            )
            .unwrap(),
        );
    }
    let all_waiting = TwillCluster::poll(DEADLINE, "100 daemons waiting for the config", || {
        daemons
            .iter()
            .all(|d| d.log_since_start().contains("waiting for network config"))
    });
    all_waiting.unwrap();
    let config = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.99.0","Backend":{"Type":"host-gw"}}"#;
    let released = Instant::now();
    c.etcdctl(&["put", "/coreos.com/network/config", config])
        .unwrap();
    let r = TwillCluster::poll(Duration::from_secs(60), "100 subnet files", || {
        (1..=100).all(|x| c.dir().join(format!("d{x}/subnet.env")).exists())
    });
    if let Err(e) = r {
        let stuck: Vec<String> = daemons
            .iter()
            .filter(|d| !d.log_since_start().contains("subnet file written"))
            .map(|d| format!("{}:\n{}", d.name(), d.log_tail(5)))
            .collect();
        panic!("{e}\n{}", stuck.join("\n"));
    }
    let took = released.elapsed();

    let leases = c.leases().unwrap();
    assert_eq!(leases.len(), 100, "{leases:?}");
    let subnets: BTreeSet<_> = leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets.len(), 100, "distinct subnets");
    let by_ip: BTreeMap<_, _> = leases
        .iter()
        .map(|l| (l.public_ip.unwrap(), l.subnet))
        .collect();
    assert_eq!(by_ip.len(), 100, "one lease per daemon");
    let config_net: twill_model::Ipv4Network = "192.168.0.0/16".parse().unwrap();
    for x in 1..=100u32 {
        let ip: std::net::Ipv4Addr = format!("10.0.1.{x}").parse().unwrap();
        let text = std::fs::read_to_string(c.dir().join(format!("d{x}/subnet.env"))).unwrap();
        let env = twill_testbed::cluster::SubnetEnvFile::parse(&text).unwrap();
        assert_eq!(env.network, config_net);
        assert_eq!(Some(&env.subnet_network()), by_ip.get(&ip), "d{x}");
        assert!(
            u32::from(env.subnet.network()) < u32::from(std::net::Ipv4Addr::new(192, 168, 100, 0))
        );
    }
    let mut retries = 0;
    for d in &mut daemons {
        assert!(d.is_running(), "{} exited:\n{}", d.name(), d.log_tail(10));
        retries += d.log_since_start().matches("lost the race").count();
    }
    report(
        "100 daemons, 100 subnets",
        &format!(
            "100 leases, 0 duplicates, all subnet files written {} ms after the config appeared; {retries} lost races retried",
            took.as_millis()
        ),
    );
    for mut d in daemons {
        d.kill().unwrap();
    }
}
