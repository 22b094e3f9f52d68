//! Security: etcd over TLS with client certificates and with user/password
//! authentication (secrets never logged), and what a lease from the store
//! can and cannot make twilld do to the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use reliability_common::{self as common, dataplane, ip, report, DEADLINE, TWILLD};
use twill_testbed::cluster::{TwillCluster, LEASE_RENEWALS_TOTAL, RECONCILES_TOTAL};
use twill_testbed::daemon::{Daemon, DaemonOptions};
use twill_testbed::etcd::{EtcdOptions, EtcdServer, TlsFiles};
use twill_testbed::netns::Lan;

const HEALTHZ: &str = "127.0.0.1:8471";

fn healthz() -> SocketAddr {
    HEALTHZ.parse().unwrap()
}

/// twilld on host `h` of `lan` with `extra` flags, at trace verbosity (the
/// most it can ever log).
fn twilld(lan: &Lan, dir: &std::path::Path, tag: &str, extra: &[String]) -> Daemon {
    let h = &lan.hosts[0];
    let mut args = vec![
        format!("-iface={}", h.addr),
        format!("-subnet-file={}", dir.join(format!("{tag}.env")).display()),
        "-healthz-ip=127.0.0.1".to_string(),
        "-healthz-port=8471".to_string(),
        "--retry-interval=200ms".to_string(),
        "-v=3".to_string(),
    ];
    args.extend(extra.iter().cloned());
    Daemon::start(
        DaemonOptions::new(TWILLD, args)
            .netns(h.ns.name())
            .name(tag)
            .log_path(dir.join(format!("{tag}.log"))),
    )
    .unwrap()
}

/// Lines of the PEM body of a key file (what must never reach a log).
fn pem_body(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}

/// How many times `d` has failed to reach etcd so far: the connect loop's
/// retries (logged at debug after the first warning; these daemons run at
/// trace level) and, once connected, the failed requests it counts in
/// `twill_etcd_errors_total` (e.g. while authentication is refused).
fn etcd_retries(d: &Daemon) -> f64 {
    let reconnects = d
        .log_since_start()
        .matches("etcd still unreachable")
        .count();
    #[allow(clippy::cast_precision_loss)]
    let reconnects = reconnects as f64;
    reconnects
        + d.metric(healthz(), "twill_etcd_errors_total")
            .unwrap_or(0.0)
}

/// Waits until `d` has failed to reach etcd 3 more times (evidence that it
/// kept trying with what it was given), then asserts that it still runs
/// and is still not ready.
fn assert_stays_unready(d: &mut Daemon) {
    let before = etcd_retries(d);
    let r = twill_testbed::cluster::TwillCluster::poll(
        DEADLINE,
        &format!("{}: 3 more failed attempts to reach etcd", d.name()),
        || etcd_retries(d) >= before + 3.0,
    );
    if let Err(e) = r {
        panic!("{e}\n{}", d.log());
    }
    // The one line that says why, for the test output.
    if let Some(l) = d.log().lines().find(|l| l.contains(" WARN ")) {
        eprintln!("{}: {}", d.name(), &l[l.find("WARN").unwrap_or(0)..]);
    }
    assert!(d.is_running(), "{}", d.log());
    assert!(
        !matches!(d.http_get(healthz(), "/readyz"), Ok((200, _))),
        "{}",
        d.log()
    );
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let lan = Lan::new(1).unwrap();
    let h = &lan.hosts[0];
    let etcd = EtcdServer::start_with(&EtcdOptions {
        tls: true,
        ..EtcdOptions::in_netns(h.ns.name(), h.addr)
    })
    .unwrap();
    etcd.etcdctl(&["put", "/coreos.com/network/config", common::CONFIG])
        .unwrap();
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("-etcd-endpoints={}", etcd.endpoint());
    assert!(endpoint.contains("https://"));

    // Without a client certificate: refused by etcd; twilld waits, says why.
    let mut d = twilld(
        &lan,
        dir.path(),
        "nocert",
        &[
            endpoint.clone(),
            format!("-etcd-cafile={}", tls.ca.display()),
        ],
    );
    common::wait_for_log(&mut d, "waiting for etcd", DEADLINE);
    assert_stays_unready(&mut d);
    d.kill().unwrap();

    // A server certificate from another CA: refused by twilld.
    let other = TlsFiles::generate(&dir.path().join("other-pki"), &[h.addr.into()]).unwrap();
    let mut d = twilld(
        &lan,
        dir.path(),
        "wrongca",
        &[
            endpoint.clone(),
            format!("-etcd-cafile={}", other.ca.display()),
            format!("-etcd-certfile={}", tls.client_cert.display()),
            format!("-etcd-keyfile={}", tls.client_key.display()),
        ],
    );
    common::wait_for_log(&mut d, "waiting for etcd", DEADLINE);
    assert_stays_unready(&mut d);
    d.kill().unwrap();

    // The right CA and a client certificate: works.
    let mut d = twilld(
        &lan,
        dir.path(),
        "tls",
        &[
            endpoint,
            format!("-etcd-cafile={}", tls.ca.display()),
            format!("-etcd-certfile={}", tls.client_cert.display()),
            format!("-etcd-keyfile={}", tls.client_key.display()),
            // Renew and reconcile every few seconds, so the trace log below
            // covers renewals and reconciles over TLS.
            "--lease-ttl=3s".into(),
            "--reconcile-interval=1s".into(),
        ],
    );
    d.wait_ready(healthz(), DEADLINE).unwrap();
    let leases = etcd
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ])
        .unwrap();
    assert_eq!(
        leases.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{leases}"
    );
    // Let it renew and reconcile a few times at trace level, then stop it.
    let passes = d.metric(healthz(), RECONCILES_TOTAL).unwrap();
    d.wait_metric(healthz(), LEASE_RENEWALS_TOTAL, 2.0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    d.wait_metric(healthz(), RECONCILES_TOTAL, passes + 2.0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    d.sigterm().unwrap();

    // No private key material in any log, at trace level.
    let mut logs = String::new();
    for tag in ["nocert", "wrongca", "tls"] {
        logs.push_str(&std::fs::read_to_string(dir.path().join(format!("{tag}.log"))).unwrap());
    }
    for key in [&tls.client_key, &other.client_key, &tls.server_key] {
        for line in pem_body(key) {
            assert!(
                !logs.contains(&line),
                "key material of {} logged",
                key.display()
            );
        }
    }
    assert!(!logs.contains("PRIVATE KEY"));
    report(
        "etcd over TLS with client certificates",
        "works with CA + client cert; no client cert or another CA: twilld waits and says why; no key material in trace logs",
    );
}

#[test]
fn etcd_with_user_and_password() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let lan = Lan::new(1).unwrap();
    let h = &lan.hosts[0];
    let etcd = EtcdServer::start_with(&EtcdOptions::in_netns(h.ns.name(), h.addr)).unwrap();
    etcd.etcdctl(&["put", "/coreos.com/network/config", common::CONFIG])
        .unwrap();
    const PASSWORD: &str = "s3cr3t-Tw1ll-pw";
    etcd.etcdctl(&[
        "user",
        "add",
        &format!("root:{PASSWORD}"),
        "--interactive=false",
    ])
    .unwrap();
    etcd.etcdctl(&["auth", "enable"]).unwrap();
    // Anonymous access is now refused.
    assert!(etcd
        .etcdctl(&["get", "/coreos.com/network/config"])
        .is_err());
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("-etcd-endpoints={}", etcd.endpoint());

    // Without credentials, or with a wrong password: not served, said why.
    let mut d = twilld(&lan, dir.path(), "anon", std::slice::from_ref(&endpoint));
    common::wait_for_log(&mut d, "user name is empty", DEADLINE);
    assert_stays_unready(&mut d);
    d.kill().unwrap();
    let mut d = twilld(
        &lan,
        dir.path(),
        "wrongpw",
        &[
            endpoint.clone(),
            "-etcd-username=root".into(),
            "-etcd-password=not-the-password".into(),
        ],
    );
    common::wait_for_log(&mut d, "waiting for etcd", DEADLINE);
    assert_stays_unready(&mut d);
    d.kill().unwrap();

    // The right credentials, as flags and from the environment.
    let mut d = twilld(
        &lan,
        dir.path(),
        "auth",
        &[
            endpoint.clone(),
            "-etcd-username=root".into(),
            format!("-etcd-password={PASSWORD}"),
            "--reconcile-interval=1s".into(),
        ],
    );
    d.wait_ready(healthz(), DEADLINE).unwrap();
    // A few reconciles (each re-reads the config with the credentials) at
    // trace level, then stop it.
    let passes = d.metric(healthz(), RECONCILES_TOTAL).unwrap();
    d.wait_metric(healthz(), RECONCILES_TOTAL, passes + 2.0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    d.sigterm().unwrap();
    let h = &lan.hosts[0];
    let mut d = Daemon::start(
        DaemonOptions::new(
            TWILLD,
            [
                format!("-iface={}", h.addr),
                format!("-subnet-file={}", dir.path().join("env.env").display()),
                "-healthz-ip=127.0.0.1".into(),
                "-healthz-port=8471".into(),
                "-v=3".into(),
                endpoint,
            ],
        )
        .netns(h.ns.name())
        .env("FLANNELD_ETCD_USERNAME", "root")
        .env("FLANNELD_ETCD_PASSWORD", PASSWORD)
        .log_path(dir.path().join("env.log")),
    )
    .unwrap();
    d.wait_ready(healthz(), DEADLINE).unwrap();
    d.sigterm().unwrap();
    let out = etcd
        .etcdctl(&[
            &format!("--user=root:{PASSWORD}"),
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ])
        .unwrap();
    assert_eq!(
        out.lines().filter(|l| !l.is_empty()).count(),
        1,
        "one lease, kept across restarts: {out}"
    );

    // The password is in no log, at trace level.
    for tag in ["anon", "wrongpw", "auth", "env"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{tag}.log"))).unwrap();
        let log = log
            .lines()
            .filter(|l| !l.starts_with("=== twill-testbed: starting"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!log.contains(PASSWORD), "{tag}: password logged");
        assert!(!log.contains("not-the-password"), "{tag}: password logged");
    }
    // Nor in --help output (hide_env_values).
    let help = std::process::Command::new(TWILLD)
        .arg("--help")
        .env("FLANNELD_ETCD_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(PASSWORD));
    report(
        "etcd with user/password",
        "works (flags and FLANNELD_ETCD_* env); anonymous or wrong password: twilld waits and says why; password in no log at trace level nor in --help",
    );
}

/// Whether any host routes `subnet` (through any device).
fn any_route_to(c: &TwillCluster, subnet: &str) -> Vec<String> {
    (0..c.len())
        .flat_map(|i| {
            c.all_routes(i)
                .unwrap()
                .into_iter()
                .filter(|r| r.dst.to_string() == subnet)
                .map(move |r| format!("host {i}: {r:?}"))
        })
        .collect()
}

#[test]
fn a_lease_cannot_steer_routes_outside_network_or_touch_what_twill_did_not_make() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3));
    let dev = c.vxlan_device().to_string();

    // 1. Outside Network: nowhere.
    common::put_lease(
        &c,
        "10.99.0.0-24",
        &common::vxlan_lease("10.0.0.80", "0e:00:00:00:00:80"),
        0,
    );
    // A covering lease over the whole Network and beyond.
    common::put_lease(
        &c,
        "192.0.0.0-8",
        &common::vxlan_lease("10.0.0.81", "0e:00:00:00:00:81"),
        0,
    );
    // A default route, by key.
    common::put_lease(
        &c,
        "0.0.0.0-0",
        &common::vxlan_lease("10.0.0.82", "0e:00:00:00:00:82"),
        0,
    );

    // 2. A foreign route at a lease's destination, on host 0, before the lease.
    ip(
        &c,
        0,
        &[
            "route",
            "add",
            "192.168.233.0/24",
            "via",
            "10.0.0.9",
            "dev",
            "eth0",
        ],
    );
    // A docker-like bridge on host 0 whose connected route is a lease's
    // destination: neither the route nor the device may be touched.
    ip(&c, 0, &["link", "add", "br-other", "type", "bridge"]);
    ip(
        &c,
        0,
        &["addr", "add", "192.168.234.1/24", "dev", "br-other"],
    );
    ip(&c, 0, &["link", "set", "br-other", "up"]);
    let br_before = ip(&c, 0, &["-4", "-br", "addr", "show", "br-other"]);
    let eth0_neigh_before = ip(&c, 0, &["neigh", "show", "dev", "eth0", "nud", "permanent"]);
    common::put_lease(
        &c,
        "192.168.233.0-24",
        &common::vxlan_lease("10.0.0.83", "0e:00:00:00:00:83"),
        0,
    );
    common::put_lease(
        &c,
        "192.168.234.0-24",
        &common::vxlan_lease("10.0.0.84", "0e:00:00:00:00:84"),
        0,
    );

    // 3. A lease whose PublicIP is host 0's.
    common::put_lease(
        &c,
        "192.168.235.0-24",
        &common::vxlan_lease("10.0.0.2", "0e:00:00:00:00:85"),
        0,
    );

    // The other hosts program 233/234 (nothing in their way) but not 235:
    // host 0's own lease, older, holds that PublicIP (one address is one
    // host), so they skip it and say why (issue 18's chaos soak found it
    // programmed as a second peer of host 0).
    common::wait_for(
        &c,
        DEADLINE,
        "hosts 1 and 2 to program 233/234 and refuse 235",
        || {
            [1, 2].iter().all(|&i| {
                let r: BTreeSet<String> = dataplane(&c, i)
                    .routes
                    .iter()
                    .map(|r| r.0.clone())
                    .collect();
                ["192.168.233.0/24", "192.168.234.0/24"]
                    .iter()
                    .all(|s| r.contains(*s))
                    && c.daemon(i)
                        .log()
                        .contains("PublicIP 10.0.0.2 is already used by peer")
            })
        },
    );
    // Host 0 has refused 233/234 (routes in the way) and 235 (our PublicIP),
    // the last leases written: it has taken every lease above.
    let refusals = [
        "a route to 192.168.233.0/24 that twill did not create is in the way",
        "a route to 192.168.234.0/24 that twill did not create is in the way",
        "it claims our PublicIP 10.0.0.2",
    ];
    common::wait_for(&c, DEADLINE, "host 0 to refuse 233, 234 and 235", || {
        let log = c.daemon(0).log();
        refusals.iter().all(|r| log.contains(r))
    });
    // Then passes after that on every host: a wrong route or a second
    // warning would be there now.
    common::wait_reconciles(&mut c, &[0, 1, 2], 2);
    for bad in ["10.99.0.0/24", "192.0.0.0/8", "0.0.0.0/0"] {
        let routes = any_route_to(&c, bad);
        assert!(routes.is_empty(), "route to {bad}: {routes:?}");
    }
    let routes = ip(&c, 0, &["route", "show"]);
    assert!(
        routes.contains("192.168.233.0/24 via 10.0.0.9 dev eth0"),
        "{routes}"
    );
    assert!(
        !routes.contains(&format!("192.168.233.0/24 via 192.168.233.0 dev {dev}"))
            && !routes.contains("192.168.233.0/24 nhid"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.234.0/24 dev br-other proto kernel"),
        "{routes}"
    );
    assert_eq!(
        ip(&c, 0, &["-4", "-br", "addr", "show", "br-other"]),
        br_before
    );
    assert_eq!(
        ip(&c, 0, &["neigh", "show", "dev", "eth0", "nud", "permanent"]),
        eth0_neigh_before
    );
    // Host 0 programs nothing towards its own IP; nor do the others
    // towards 235.
    let dp0 = dataplane(&c, 0);
    assert!(dp0.fdb.iter().all(|f| f.1 != c.ip(0)), "{dp0:?}");
    for i in 0..3 {
        let dp = dataplane(&c, i);
        assert!(
            !dp.routes.iter().any(|r| r.0 == "192.168.235.0/24"),
            "host {i}: {dp:?}"
        );
        assert!(
            dp.fdb.iter().all(|f| f.0 != "0e:00:00:00:00:85"),
            "host {i}: {dp:?}"
        );
    }
    // Each refusal logged once.
    for needle in refusals {
        let n = c.daemon(0).log().matches(needle).count();
        assert_eq!(n, 1, "{needle}: {n} times\n{}", c.daemon(0).log());
    }

    // The foreign route goes away: twill programs its own at the next reconcile.
    ip(
        &c,
        0,
        &[
            "route",
            "del",
            "192.168.233.0/24",
            "via",
            "10.0.0.9",
            "dev",
            "eth0",
        ],
    );
    common::wait_for(&c, DEADLINE, "host 0 to program 192.168.233.0/24", || {
        dataplane(&c, 0)
            .routes
            .iter()
            .any(|r| r.0 == "192.168.233.0/24")
    });

    // 4. A route of ours replaced by hand with a foreign one is not fought over.
    let peer = c.subnet_env(1).unwrap().subnet_network().to_string();
    ip(
        &c,
        0,
        &["route", "replace", &peer, "via", "10.0.0.9", "dev", "eth0"],
    );
    // Passes that started after the replacement would have fought it.
    common::wait_reconciles(&mut c, &[0], 3);
    let routes = ip(&c, 0, &["route", "show", &peer]);
    assert!(routes.contains("via 10.0.0.9 dev eth0"), "{routes}");
    ip(
        &c,
        0,
        &["route", "del", &peer, "via", "10.0.0.9", "dev", "eth0"],
    );
    common::wait_for(&c, DEADLINE, "our route back", || {
        common::converged_host(&c, 0, &[0, 1, 2])
            || dataplane(&c, 0).routes.iter().any(|r| r.0 == peer)
    });

    // 5. Our own lease overwritten by someone else: we never fight for it;
    // we move to a free subnet and say so.
    let own1 = c.own_lease(1).unwrap().unwrap();
    let hijack = common::vxlan_lease("10.0.0.86", "0e:00:00:00:00:86");
    c.etcdctl(&["put", &own1.key, &hijack]).unwrap();
    common::wait_for(&c, DEADLINE, "host 1 to move", || {
        c.own_lease(1)
            .ok()
            .flatten()
            .is_some_and(|l| l.subnet != own1.subnet)
            && c.subnet_env(1)
                .is_ok_and(|e| e.subnet_network() != own1.subnet)
    });
    let stored = c
        .etcdctl(&["get", "--print-value-only", &own1.key])
        .unwrap();
    assert_eq!(stored.trim(), hijack, "the overwritten value is left alone");
    common::wait_for_log(c.daemon_mut(1), "was overwritten by 10.0.0.86", DEADLINE);
    report(
        "lease safety",
        "leases outside Network (incl. /8 and /0) programmed nowhere; foreign routes and devices at a lease's destination untouched (logged once, programmed once they are gone); a lease with our PublicIP skipped; a hijacked lease is left to the hijacker and we move",
    );
}

/// Issue 13 #5: `etcdctl put --ignore-lease` over host 1's live key with
/// another PublicIP. The key stays on host 1's etcd lease, so host 1 puts
/// its value back (one loud line naming the writer, a counter) and keeps its
/// subnet; no peer routes host 1's subnet to the writer; containers ping.
/// (A plain put, which detaches the key from the etcd lease, still makes the
/// owner move: see the test above.)
#[test]
fn a_live_lease_overwritten_in_place_is_restored_and_never_followed() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(3));
    c.add_containers().unwrap();
    common::all_ping(&c).unwrap();
    let own1 = c.own_lease(1).unwrap().unwrap();
    let env1 = c.subnet_env(1).unwrap().subnet_network();
    let host1 = c.ip(1);
    let hijack = common::vxlan_lease("10.0.0.200", "0e:00:00:00:00:c8");
    c.etcdctl(&["put", "--ignore-lease", &own1.key, &hijack])
        .unwrap();
    common::wait_for(&c, DEADLINE, "host 1's value back in etcd", || {
        c.etcdctl(&["get", "--print-value-only", &own1.key])
            .is_ok_and(|v| v.trim() == own1.value.trim())
    });
    common::wait_for_log(
        c.daemon_mut(1),
        "overwritten in place with PublicIP 10.0.0.200",
        DEADLINE,
    );
    common::wait_for(&c, DEADLINE, "the overwrite counted", || {
        common::metric(&c, 1, "twill_lease_overwrites_total").is_some_and(|v| v >= 1.0)
    });
    // Passes after the restore: a move or a peer following the writer would
    // show now.
    common::wait_reconciles(&mut c, &[0, 1, 2], 2);
    assert_eq!(
        c.own_lease(1).unwrap().unwrap().subnet,
        own1.subnet,
        "host 1 kept its lease"
    );
    assert_eq!(
        c.subnet_env(1).unwrap().subnet_network(),
        env1,
        "subnet.env unchanged"
    );
    let writer: std::net::Ipv4Addr = "10.0.0.200".parse().unwrap();
    for i in [0, 2] {
        let dp = dataplane(&c, i);
        assert!(
            dp.fdb.iter().any(|(_, dst)| *dst == host1),
            "host {i} has host 1's FDB entry: {dp:?}"
        );
        assert!(
            !dp.fdb.iter().any(|(_, dst)| *dst == writer),
            "host {i} never routes to the writer: {dp:?}"
        );
    }
    let moved = c.daemon(1).log_since_start();
    assert!(
        !moved.contains("our subnet changed"),
        "host 1 did not move:\n{moved}"
    );
    common::all_ping(&c).unwrap();
    report(
        "lease safety",
        "a live lease overwritten in place (--ignore-lease) is restored by its owner, which keeps its subnet; no peer follows the writer",
    );
}
