//! Bad input, at the daemon level: flags (the binary run directly: one-line
//! error, non-zero exit), network configs in etcd (logged naming the field,
//! waited on, then used once valid) and lease values in etcd (logged once
//! with the key, skipped, never programmed; the daemon keeps serving).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use reliability_common as common;
use reliability_common::DEADLINE;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// Runs twilld with `args` (never reaching etcd: every case fails before),
/// and returns (exit code, stderr). Killed after [`DEADLINE`] if it did not exit.
fn run_twilld(args: &[&str]) -> (Option<i32>, String) {
    run_twilld_cmd(Command::new(TWILLD), args)
}

/// As [`run_twilld`], with the command built by the caller (e.g. to run in
/// a network namespace of the test's own).
fn run_twilld_cmd(mut cmd: Command, args: &[&str]) -> (Option<i32>, String) {
    let mut child = cmd
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twilld");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "twilld {args:?} did not exit within {DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a one-line error on stderr mentioning every `needle`, and a
/// non-zero exit status.
fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    assert_one_line_error_cmd(Command::new(TWILLD), args, needles);
}

fn assert_one_line_error_cmd(cmd: Command, args: &[&str], needles: &[&str]) {
    let (code, stderr) = run_twilld_cmd(cmd, args);
    assert!(
        matches!(code, Some(c) if c != 0),
        "twilld {args:?} exited with {code:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "twilld {args:?}: expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("twilld: "),
        "twilld {args:?}: {stderr}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "twilld {args:?}: {n:?} missing from {stderr:?}"
        );
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal colours in {stderr:?}"
    );
}

#[test]
fn unknown_flag() {
    assert_one_line_error(&["-no-such-flag"], &["no-such-flag"]);
    assert_one_line_error(&["--etcd-endpoint=http://a:1"], &["etcd-endpoint"]);
}

#[test]
fn malformed_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    assert_one_line_error(&[&sf, "-public-ip=10.0.0.300"], &["10.0.0.300"]);
    assert_one_line_error(&[&sf, "--lease-ttl=soon"], &["soon", "duration"]);
    assert_one_line_error(&[&sf, "--reconcile-interval=1.5s"], &["1.5s"]);
    assert_one_line_error(&[&sf, "-healthz-port=99999"], &["99999"]);
    assert_one_line_error(&[&sf, "-ip-masq=maybe"], &["maybe"]);
    assert_one_line_error(&[&sf, "-iface-regex=("], &["-iface-regex", "("]);
}

#[test]
fn bad_endpoint_urls() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    for url in [
        "foo",
        "127.0.0.1:2379",
        "ftp://127.0.0.1:2379",
        "http://:2379",
        "http://127.0.0.1",
        "http://127.0.0.1:0",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:2379/v3/path",
        "http://127.0.0.1:2379,bogus",
    ] {
        let flag = format!("-etcd-endpoints={url}");
        assert_one_line_error(&[&sf, &flag], &["-etcd-endpoints"]);
    }
}

#[test]
fn missing_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    for flag in ["-etcd-cafile", "-etcd-certfile", "-etcd-keyfile"] {
        let missing = dir.path().join(format!("missing{flag}.pem"));
        let arg = format!("{flag}={}", missing.display());
        assert_one_line_error(
            &[&sf, "-etcd-endpoints=https://127.0.0.1:2379", &arg],
            &[flag, &missing.display().to_string()],
        );
    }
}

#[test]
fn username_without_password() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    assert_one_line_error(&[&sf, "-etcd-username=root"], &["-etcd-password"]);
    // The password is never echoed, even in an error.
    let (_, stderr) = run_twilld(&[&sf, "-etcd-password=s3cr3t-PW"]);
    assert!(!stderr.contains("s3cr3t-PW"), "{stderr}");
}

#[test]
fn unwritable_subnet_file() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory is needed: unwritable even for root.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let path = file.join("subnet.env");
    let arg = format!("-subnet-file={}", path.display());
    assert_one_line_error(&[&arg], &["-subnet-file", &path.display().to_string()]);
    assert_one_line_error(
        &["-subnet-file=/proc/twill-no-such/subnet.env"],
        &["-subnet-file"],
    );
}

#[test]
fn iface_that_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    assert_one_line_error(&[&sf, "-iface=twl-nosuch0"], &["-iface", "twl-nosuch0"]);
    assert_one_line_error(&[&sf, "-iface=203.0.113.254"], &["203.0.113.254"]);
    assert_one_line_error(&[&sf, "-iface-regex=^twl-nosuch$"], &["-iface-regex"]);
}

/// Issue 13: flags that passed the checks and then hurt the host or the
/// cluster (a panic after taking a lease, ~560 etcd requests a second, a
/// wait forever, 0.0.0.0 published in etcd) are refused before anything is
/// leased or touched.
#[test]
fn flags_that_would_hurt_are_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    for (flag, needles) in [
        (
            "-reconcile-interval=0",
            &["-reconcile-interval", "at least 100ms"][..],
        ),
        ("-retry-interval=0", &["-retry-interval", "at least 100ms"]),
        ("-retry-interval=10ms", &["-retry-interval", "10ms"]),
        ("-lease-ttl=0", &["-lease-ttl", "at least 1s"]),
        (
            "-etcd-endpoints=http://[::1:2379",
            &["-etcd-endpoints", "http://[::1:2379", "]"],
        ),
        (
            "-etcd-endpoints=http://a b:2379",
            &["-etcd-endpoints", "http://a b:2379"],
        ),
        (
            "-etcd-endpoints=http://::1:2379",
            &["-etcd-endpoints", "brackets"],
        ),
        (
            "-public-ip=0.0.0.0",
            &["-public-ip", "0.0.0.0", "unspecified"],
        ),
        (
            "-public-ip=224.0.0.1",
            &["-public-ip", "224.0.0.1", "multicast"],
        ),
        (
            "-public-ip=127.0.0.1",
            &["-public-ip", "127.0.0.1", "loopback"],
        ),
        (
            "-public-ip=255.255.255.255",
            &["-public-ip", "255.255.255.255", "broadcast"],
        ),
    ] {
        assert_one_line_error(&[&sf, flag], needles);
    }
    assert!(!dir.path().join("s.env").exists());
}

/// Issue 13: the subnet file is replaced by an atomic rename, so anything
/// but a regular file (or nothing) at its path is refused before anything
/// is written: `-subnet-file=/dev/null` once replaced the host's /dev/null.
/// (A FIFO and a character device of the test's own stand in for it.)
#[test]
fn a_subnet_file_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let null = dir.path().join("null");
    // Our own node with /dev/null's numbers (1, 3), in our own directory.
    assert!(Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    let sub = dir.path().join("adir");
    std::fs::create_dir(&sub).unwrap();
    for (path, what) in [
        (&fifo, "not a regular file"),
        (&null, "not a regular file"),
        (&sub, "a directory"),
    ] {
        let arg = format!("-subnet-file={}", path.display());
        assert_one_line_error(
            &[&arg],
            &["-subnet-file", &path.display().to_string(), what],
        );
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::metadata(&null)
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(sub.is_dir() && std::fs::read_dir(&sub).unwrap().next().is_none());
}

/// Issue 13: the overlay's own device is never the underlay (`-iface=flannel.100`
/// used to delete the live device, then exit), nor is loopback.
#[test]
fn overlay_devices_and_loopback_are_never_the_underlay() {
    twill_testbed::require_root!();
    let ns = twill_testbed::netns::Netns::new("badiface").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.0.0.2/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    common::add_vxlan_by_hand(&ns, "10.0.0.2");
    ns.ip(&["addr", "add", "192.168.5.0/32", "dev", "flannel.100"])
        .unwrap();
    let before = ns.ip(&["-d", "link", "show", "flannel.100"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sf = format!("-subnet-file={}", dir.path().join("s.env").display());
    for (flag, needles) in [
        (
            "-iface=flannel.100",
            &["-iface", "flannel.100", "overlay device"][..],
        ),
        (
            "-iface=192.168.5.0",
            &["-iface", "flannel.100", "overlay device"],
        ),
        ("-iface=127.0.0.1", &["-iface", "127.0.0.1", "loopback"]),
        ("-iface=lo", &["-iface", "127.0.0.1", "loopback"]),
    ] {
        assert_one_line_error_cmd(ns.command(TWILLD), &[&sf, flag], needles);
    }
    assert_eq!(
        ns.ip(&["-d", "link", "show", "flannel.100"]).unwrap(),
        before,
        "the overlay device was touched"
    );
}

#[test]
fn help_and_version_succeed() {
    let out = Command::new(TWILLD).arg("-version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("twilld "));
    let out = Command::new(TWILLD).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-etcd-endpoints"));
}

// ---------------------------------------------------------------------------
// Network configs in etcd.

use std::io::Write as _;

use twill_testbed::cluster::TwillCluster;

const CONFIG_KEY: &str = "/coreos.com/network/config";

/// `etcdctl put KEY` with the value on stdin (a 1 MB value does not fit in
/// one command-line argument), run in host 0's namespace.
fn put_stdin(c: &TwillCluster, key: &str, value: &[u8]) {
    if value.len() < 64 * 1024 {
        let value = String::from_utf8(value.to_vec()).unwrap();
        c.etcdctl(&["put", key, &value]).unwrap();
        return;
    }
    let mut child = c
        .ns(0)
        .command("etcdctl")
        .args(["put", key])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of host `i`'s current log containing `needle`.
fn log_lines(c: &TwillCluster, i: usize, needle: &str) -> Vec<String> {
    c.daemon(i)
        .log_since_start()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn invalid_configs_are_logged_naming_the_field_and_waited_on() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // No config yet: the daemon waits for one.
    let mut c = TwillCluster::builder()
        .hosts(1)
        .twilld_args(&["--retry-interval=100ms"])
        .build(common::TWILLD)
        .unwrap();
    let missing = format!("waiting for network config at {CONFIG_KEY}");
    let invalid = format!("waiting for a valid network config at {CONFIG_KEY}: ");
    common::wait_for_log(c.daemon_mut(0), &missing, DEADLINE);
    let huge = format!(
        r#"{{"Network":"10.0.0.0/16","Pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not valid JSON", "{\"Network\":".into()),
        ("not valid JSON", "not json".into()),
        ("array", "[1,2]".into()),
        ("Network is missing", "{}".into()),
        ("Network is missing", r#"{"SubnetLen":24}"#.into()),
        ("Network", r#"{"Network":"10.5.0.0"}"#.into()),
        ("Network", r#"{"Network":"not a cidr"}"#.into()),
        ("Network must be a string", r#"{"Network":16}"#.into()),
        ("Network", r#"{"Network":"10.0.0.0/29"}"#.into()),
        (
            "SubnetLen",
            r#"{"Network":"10.5.0.0/16","SubnetLen":33}"#.into(),
        ),
        (
            "SubnetLen",
            r#"{"Network":"10.5.0.0/16","SubnetLen":8}"#.into(),
        ),
        (
            "SubnetLen must be a number",
            r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#.into(),
        ),
        (
            "SubnetMin",
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#.into(),
        ),
        (
            "SubnetMax",
            r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.0.7"}"#.into(),
        ),
        (
            "SubnetMin",
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.1.0"}"#.into(),
        ),
        (
            "Backend must be an object",
            r#"{"Network":"10.5.0.0/16","Backend":"vxlan"}"#.into(),
        ),
        (
            "Type must be a string",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":7}}"#.into(),
        ),
        (
            "EnableIPv4",
            r#"{"Network":"10.5.0.0/16","EnableIPv4":"yes"}"#.into(),
        ),
        // Issue 15: a bad IPv6 side gets its own error (IPv6 configs are
        // programmed now; a valid one is not bad input).
        (
            "IPv6Network is missing",
            r#"{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#.into(),
        ),
        (
            "IPv6SubnetLen 40 is too short",
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":40,"Backend":{"Type":"vxlan"}}"#.into(),
        ),
        // Issue 13: networks that cannot carry an overlay (127.0.0.0/8 used
        // to fail with "Invalid argument" on every reconcile).
        (
            "Network \"127.0.0.0/8\" is invalid: overlaps loopback",
            r#"{"Network":"127.0.0.0/8","Backend":{"Type":"vxlan"}}"#.into(),
        ),
        (
            "Network \"0.0.0.0/0\" is invalid: overlaps",
            r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#.into(),
        ),
        (
            "Network \"224.0.0.0/4\" is invalid: overlaps multicast",
            r#"{"Network":"224.0.0.0/4","Backend":{"Type":"vxlan"}}"#.into(),
        ),
        (
            "Network \"240.0.0.0/4\" is invalid: overlaps reserved",
            r#"{"Network":"240.0.0.0/4","Backend":{"Type":"vxlan"}}"#.into(),
        ),
        ("bytes, more than the 65536 allowed", huge),
    ];
    for (n, (field, json)) in cases.iter().enumerate() {
        // Back to "missing" between cases, so that each error is a new
        // message (twilld logs a message when it changes, not every retry).
        if n > 0 {
            let before = log_lines(&c, 0, &missing).len();
            c.etcdctl(&["del", CONFIG_KEY]).unwrap();
            common::wait_for(&c, DEADLINE, "the missing config noticed", || {
                log_lines(&c, 0, &missing).len() > before
            });
        }
        let before = log_lines(&c, 0, &invalid).len();
        put_stdin(&c, CONFIG_KEY, json.as_bytes());
        common::wait_for(&c, DEADLINE, &format!("an error naming {field:?}"), || {
            log_lines(&c, 0, &invalid).len() > before
        });
        let lines = log_lines(&c, 0, &invalid);
        let line = lines.last().unwrap();
        assert!(line.contains(field), "{field:?} not named in {line:?}");
        eprintln!("config error: {}", &line[line.find(&invalid).unwrap()..]);
        assert!(
            line.len() < 600,
            "a short line, not the value: {} bytes",
            line.len()
        );
        assert_eq!(lines.len(), before + 1, "logged once: {lines:#?}");
    }
    // Waiting all along: alive, not ready, no lease, no subnet file.
    assert!(c.daemon_mut(0).is_running());
    assert_eq!(common::http_status(&c, 0, "/healthz"), Some(200));
    assert_eq!(common::http_status(&c, 0, "/readyz"), Some(503));
    assert!(c.leases().unwrap().is_empty());
    assert!(!c.subnet_file(0).exists());
    // Retried every 100 ms, logged once per distinct error: the daemon is
    // the only client of host 0's etcd member now, so its config reads
    // (Range requests) are the count of its retries.
    let last = log_lines(&c, 0, &invalid).len();
    let member = c.etcd().member(0).unwrap();
    let reads = member.grpc_messages_received(Some("Range")).unwrap();
    common::wait_for(&c, DEADLINE, "5 more config reads by the daemon", || {
        member
            .grpc_messages_received(Some("Range"))
            .is_ok_and(|n| n >= reads + 5)
    });
    assert_eq!(
        log_lines(&c, 0, &invalid).len(),
        last,
        "no repeated log lines"
    );

    // A valid config: it proceeds.
    c.etcdctl(&["put", CONFIG_KEY, common::CONFIG]).unwrap();
    c.wait_ready(0, DEADLINE).unwrap();
    assert!(c.subnet_env(0).unwrap().network.to_string() == "192.168.0.0/16");
    common::report(
        "bad config in etcd",
        &format!(
            "{} invalid configs: each logged once, naming the field; daemon kept waiting, then used the valid one",
            cases.len()
        ),
    );
}

#[test]
fn invalid_backend_options_are_waited_on_too() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = TwillCluster::builder()
        .hosts(1)
        .twilld_args(&["--retry-interval=100ms"])
        .build(common::TWILLD)
        .unwrap();
    for (what, json) in [
        (
            "nosuch",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"nosuch"}}"#,
        ),
        (
            "VNI",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
        ),
        (
            "VNI",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"x"}}"#,
        ),
        // Issue 13: these said "invalid value: integer `-1`, expected u32"
        // and "MTU Some(0) outside 68..=65535": the field, the value and
        // the allowed range, in the one line.
        (
            "VNI -1 is out of range: it must be 0 to 16777215",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#,
        ),
        (
            "Port 65536 is out of range: it must be 1 to 65535",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":65536}}"#,
        ),
        (
            "MTU 0 is out of range: it must be 68 to the underlay's MTU - 50",
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":0}}"#,
        ),
    ] {
        c.etcdctl(&["put", CONFIG_KEY, json]).unwrap();
        common::wait_for(&c, DEADLINE, what, || {
            c.daemon(0)
                .log_since_start()
                .lines()
                .any(|l| l.contains(what) && l.contains(CONFIG_KEY))
        });
        assert!(c.daemon_mut(0).is_running(), "{}", c.logs());
    }
    c.etcdctl(&["put", CONFIG_KEY, common::CONFIG]).unwrap();
    c.wait_ready(0, DEADLINE).unwrap();
}

/// Issue 13: a vxlan `MTU` above the underlay's MTU − 50 made twilld exit
/// with "ip link set dev #19 mtu 9000: Invalid argument", leaving a DOWN
/// `flannel.100` behind. It is a config problem like any bad option: found
/// before the kernel is touched, logged once naming MTU and the underlay's
/// MTU, waited on, and a fixed config is then used.
#[test]
fn an_mtu_above_the_underlay_is_waited_on_and_leaves_no_device() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = TwillCluster::builder()
        .hosts(1)
        .vxlan_device("flannel.100")
        .twilld_args(&["--retry-interval=100ms"])
        .build(common::TWILLD)
        .unwrap();
    let underlay_mtu: u32 = c
        .ns(0)
        .exec("cat", &["/sys/class/net/eth0/mtu"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let too_big = common::CONFIG.replace(r#""Port":8472"#, r#""Port":8472,"MTU":9000"#);
    assert_ne!(too_big, common::CONFIG);
    c.etcdctl(&["put", CONFIG_KEY, &too_big]).unwrap();
    let want = format!(
        "MTU 9000 is out of range: it must be 68 to {} (the MTU {underlay_mtu} of underlay",
        underlay_mtu - 50
    );
    let named = |c: &TwillCluster| {
        c.daemon(0)
            .log_since_start()
            .lines()
            .filter(|l| l.contains(&want) && l.contains(CONFIG_KEY))
            .count()
    };
    common::wait_for(&c, DEADLINE, "the MTU logged", || named(&c) > 0);
    assert!(c.daemon_mut(0).is_running(), "{}", c.logs());
    assert!(c.vxlan_link(0).unwrap().is_none(), "a device was created");
    // A fixed MTU is used; meanwhile the daemon retried every 100 ms and
    // logged the bad one once.
    let fixed = common::CONFIG.replace(r#""Port":8472"#, r#""Port":8472,"MTU":1400"#);
    c.etcdctl(&["put", CONFIG_KEY, &fixed]).unwrap();
    c.wait_ready(0, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let link = c.vxlan_link(0).unwrap().expect("flannel.100");
    assert!(link.up && link.mtu == 1400, "{link:?}");
    assert_eq!(named(&c), 1, "{}", c.logs());
}

// ---------------------------------------------------------------------------
// Lease values in etcd.

const GOOD_MAC: &str = "0e:00:00:00:00:61";

#[test]
fn bad_leases_are_logged_once_skipped_and_never_programmed() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    // The daemons allocate in 192.168.1.0-192.168.99.0 (common::CONFIG):
    // never one of the fixed subnets below.
    let mut c = common::start(common::builder(2));
    let own = c.subnet_env(0).unwrap().subnet_network();
    // A /23 around our own /24.
    let around_own = format!(
        "{}-23",
        std::net::Ipv4Addr::from(u32::from(own.network()) & !0x100)
    );
    let our_mac = c.vtep_mac(0).unwrap().unwrap().to_string();
    let lease = common::vxlan_lease;
    // A valid peer everything else is compared with.
    common::put_lease(&c, "192.168.231.0-24", &lease("10.0.0.61", GOOD_MAC), 0);
    let huge = format!(
        r#"{{"PublicIP":"10.0.0.62","BackendType":"vxlan","Pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    // (key, value): every one of them must be skipped by host 0.
    let bad: Vec<(String, String)> = vec![
        ("192.168.240.0-24".into(), r#"{"PublicIP":"#.into()),
        ("192.168.241.0-24".into(), "not json at all".into()),
        ("192.168.242.0-24".into(), r#"{"PublicIP":10}"#.into()),
        ("192.168.243.0-24".into(), r#"{"PublicIP":"10.0.0.63","BackendType":"vxlan","BackendData":"x"}"#.into()),
        ("192.168.244.0-24".into(), r#"{"PublicIP":"10.0.0.64","BackendType":"vxlan"}"#.into()),
        ("garbage".into(), lease("10.0.0.65", "0e:00:00:00:00:65")),
        ("192.168.245.1-24".into(), lease("10.0.0.66", "0e:00:00:00:00:66")),
        ("192.168.245.0-33".into(), lease("10.0.0.67", "0e:00:00:00:00:67")),
        ("10.99.0.0-24".into(), lease("10.0.0.68", "0e:00:00:00:00:68")),
        ("192.168.230.0-23".into(), lease("10.0.0.69", "0e:00:00:00:00:69")),
        (around_own, lease("10.0.0.70", "0e:00:00:00:00:70")),
        ("192.168.246.0-24".into(), lease("10.0.0.2", "0e:00:00:00:00:71")),
        ("192.168.247.0-24".into(), lease("10.0.0.72", "zz:zz:zz:zz:zz:zz")),
        ("192.168.248.0-24".into(), lease("10.0.0.73", "01:00:5e:00:00:01")),
        ("192.168.249.0-24".into(), lease("10.0.0.74", &our_mac)),
        ("192.168.250.0-24".into(), r#"{"PublicIP":"10.0.0.75","BackendType":"nosuch","BackendData":{"VtepMAC":"0e:00:00:00:00:75"}}"#.into()),
        ("192.168.251.0-24".into(), r#"{"PublicIP":"10.0.0.76","BackendType":"vxlan","BackendData":{"VNI":7,"VtepMAC":"0e:00:00:00:00:76"}}"#.into()),
        ("192.168.252.0-24".into(), lease("127.0.0.1", "0e:00:00:00:00:77")),
        ("192.168.253.0-24".into(), lease("224.0.0.1", "0e:00:00:00:00:78")),
        ("192.168.254.0-24".into(), huge),
    ];
    for (key, value) in &bad {
        put_stdin(&c, &common::lease_key(key), value.as_bytes());
    }
    let valid_after = "192.168.232.0-24";
    // Host 0 has taken every one of them (each is logged once it is)...
    let warned = |key: &str| log_lines(&c, 0, key).iter().any(|l| l.contains(" WARN "));
    common::wait_for(&c, DEADLINE, "every bad lease logged by host 0", || {
        bad.iter().all(|(key, _)| warned(key))
    });
    // ...and run passes after that: a bad lease programmed, or logged again,
    // would show now.
    common::wait_reconciles(&mut c, &[0], 2);
    for (key, _) in &bad {
        let warned: Vec<String> = log_lines(&c, 0, key)
            .into_iter()
            .filter(|l| l.contains(" WARN "))
            .collect();
        assert_eq!(
            warned.len(),
            1,
            "{key}: logged once with the key: {warned:#?}"
        );
        assert!(
            warned[0].len() < 600,
            "{key}: short line ({} bytes)",
            warned[0].len()
        );
        eprintln!(
            "lease skipped: {}",
            &warned[0][warned[0].find("WARN").unwrap()..]
        );
    }
    // Never programmed: host 0 routes, ARPs and forwards to its one real
    // peer and the valid fake one, nothing else.
    let dp = common::dataplane(&c, 0);
    let routes: BTreeSet<String> = dp.routes.iter().map(|r| r.0.clone()).collect();
    let peer = c.subnet_env(1).unwrap().subnet_network().to_string();
    assert_eq!(
        routes,
        BTreeSet::from([peer, "192.168.231.0/24".to_string()]),
        "{dp:?}"
    );
    let dsts: BTreeSet<String> = dp.fdb.iter().map(|f| f.1.to_string()).collect();
    assert_eq!(
        dsts,
        BTreeSet::from(["10.0.0.3".to_string(), "10.0.0.61".to_string()])
    );
    assert_eq!(dp.neigh.len(), 2, "{dp:?}");
    assert_eq!(
        dp.device.as_ref().unwrap().3,
        vec![format!("{}/32", own.network())]
    );
    // Our own lease is intact, and we still serve.
    // (The harness's lease listing cannot parse the bad keys: read ours directly.)
    let own_key = common::lease_key(&format!("{}-{}", own.network(), own.prefix()));
    let own_value = c.etcdctl(&["get", "--print-value-only", &own_key]).unwrap();
    assert!(
        own_value.contains(r#""PublicIP":"10.0.0.2""#),
        "{own_value}"
    );
    assert_eq!(common::http_status(&c, 0, "/healthz"), Some(200));
    assert_eq!(common::http_status(&c, 0, "/readyz"), Some(200));
    assert!(c.daemon_mut(0).is_running());
    // A valid lease added afterwards is programmed.
    common::put_lease(&c, valid_after, &lease("10.0.0.79", "0e:00:00:00:00:79"), 0);
    common::wait_for(&c, DEADLINE, "a valid lease programmed", || {
        common::dataplane(&c, 0)
            .routes
            .iter()
            .any(|r| r.0 == "192.168.232.0/24")
    });
    // The same bad values, written again: still logged once. A valid lease
    // written after them and programmed shows that host 0 has taken them.
    for (key, value) in bad.iter().take(3) {
        put_stdin(&c, &common::lease_key(key), value.as_bytes());
    }
    let marker = "192.168.233.0-24";
    common::put_lease(&c, marker, &lease("10.0.0.80", "0e:00:00:00:00:80"), 0);
    common::wait_for(
        &c,
        DEADLINE,
        "a lease written after them programmed",
        || {
            common::dataplane(&c, 0)
                .routes
                .iter()
                .any(|r| r.0 == "192.168.233.0/24")
        },
    );
    common::wait_reconciles(&mut c, &[0], 2);
    for (key, _) in bad.iter().take(3) {
        let n = log_lines(&c, 0, key)
            .iter()
            .filter(|l| l.contains(" WARN "))
            .count();
        assert_eq!(n, 1, "{key}");
    }
    common::report(
        "bad leases in etcd",
        &format!(
            "{} bad values: each logged once with its key, none programmed; /readyz 200; a valid lease added after them programmed",
            bad.len()
        ),
    );
}

/// Writes `n` junk keys (`<prefix>/subnets/junk-<i>`, unparseable) in
/// transactions of 100 puts (etcd's default limit is 128 operations), run in
/// host 0's namespace: fast, a few etcdctl runs instead of `n`.
fn put_junk_keys(c: &TwillCluster, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        // etcdctl txn on stdin: compares, blank line, success ops, blank
        // line, failure ops, blank line.
        let mut script = String::from("\n");
        for i in chunk {
            script.push_str(&format!(
                "put {} junk\n",
                common::lease_key(&format!("junk-{i}"))
            ));
        }
        script.push_str("\n\n");
        let mut child = c
            .ns(0)
            .command("etcdctl")
            .args(["txn"])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SUCCESS"),
            "etcdctl txn: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 13: 10,000 junk keys gave 15,000 log lines, and a peer the backend
/// refuses was logged as "peer added" as well as "peer not programmed".
/// Now: at most SKIP_LOG_LIMIT (20) skip warnings, then one line with the
/// count; the gauge counts them all; a refused peer is one warning.
#[test]
fn a_flood_of_junk_keys_is_logged_with_a_count_and_a_refused_peer_once() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let mut c = common::start(common::builder(1));
    // Refused by the backend (not a MAC), accepted by the lease core.
    let refused = "192.168.247.0-24";
    common::put_lease(
        &c,
        refused,
        &common::vxlan_lease("10.0.0.72", "zz:zz:zz:zz:zz:zz"),
        0,
    );
    put_junk_keys(&c, 1000);
    // A restart reads them all in one listing: one burst.
    c.daemon_mut(0).restart().unwrap();
    common::wait_for_log(c.daemon_mut(0), "more leases skipped", DEADLINE);
    common::wait_for(
        &c,
        DEADLINE,
        "twill_leases_skipped counts every one",
        || common::metric(&c, 0, "twill_leases_skipped").is_some_and(|v| v >= 1001.0),
    );
    common::wait_reconciles(&mut c, &[0], 2);
    let skip_lines = log_lines(&c, 0, "skipping lease");
    assert!(
        skip_lines.len() <= 20,
        "{} skip lines, expected at most 20",
        skip_lines.len()
    );
    let summary = log_lines(&c, 0, "more leases skipped");
    assert_eq!(summary.len(), 1, "{summary:#?}");
    assert!(
        summary[0].contains(&format!("and {} more", 1000 - skip_lines.len())),
        "the count of the rest: {summary:#?}"
    );
    let refused_lines = log_lines(&c, 0, refused);
    assert_eq!(
        refused_lines.len(),
        1,
        "the refused peer is logged once, as not programmed: {refused_lines:#?}"
    );
    assert!(
        refused_lines[0].contains("peer not programmed"),
        "{refused_lines:#?}"
    );
}
