//! Bad input, at the daemon level: flags (the binary run directly: one-line
//! error, non-zero exit), network configs in etcd (logged naming the field,
//! waited on, then used once valid) and lease values in etcd (logged once
//! with the key, skipped, never programmed; the daemon keeps serving).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod reliability_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use reliability_common as common;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// Runs twilld with `args` (never reaching etcd: every case fails before),
/// and returns (exit code, stderr). Killed after 10 s if it did not exit.
fn run_twilld(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(TWILLD)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twilld");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "twilld {args:?} did not exit within 10 s; stderr:\n{}",
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
    let (code, stderr) = run_twilld(args);
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
    assert_one_line_error(&[&arg], &["subnet file", &path.display().to_string()]);
    assert_one_line_error(
        &["-subnet-file=/proc/twill-no-such/subnet.env"],
        &["subnet file"],
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

#[test]
fn help_and_version_succeed() {
    let out = Command::new(TWILLD).arg("-version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("twilld "));
    let out = Command::new(TWILLD).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-etcd-endpoints"));
}
