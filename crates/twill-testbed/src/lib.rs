//! Real parts for twill's tests, benchmarks and demo: network-namespace hosts
//! ([`netns`]), etcd server processes ([`etcd`]), daemon processes run inside
//! a namespace ([`daemon`]) and whole clusters of twilld hosts with etcd,
//! containers and kernel-state readers ([`cluster`], the end-to-end harness).
//!
//! Nothing here is a mock. Hosts are real network namespaces (named with a
//! unique prefix, removed on drop, even when a test panics) and etcd is the
//! real `etcd` binary started on free ports with a temporary data directory.
//!
//! Tests that need root, namespaces or etcd call [`require_root!`] /
//! [`require_etcd!`] first. Locally a missing capability skips the test with a
//! printed reason; with `TWILL_REQUIRE_PRIVILEGED=1` (as CI sets it) it is a
//! test failure with a clear message, never a silent skip.
//!
//! ```no_run
//! fn my_test() {
//!     twill_testbed::require_root!();
//!     // ... create namespaces, start etcd, run the real code ...
//! }
//! ```

pub mod chaos;
pub mod cluster;
pub mod daemon;
pub mod etcd;
pub mod netns;

/// Environment variable that turns a missing capability into a test failure.
pub const REQUIRE_PRIVILEGED_ENV: &str = "TWILL_REQUIRE_PRIVILEGED";

/// Whether missing capabilities must fail tests (`TWILL_REQUIRE_PRIVILEGED=1`).
#[must_use]
pub fn privileged_required() -> bool {
    std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports a missing capability: panics (test failure) when
/// [`privileged_required`], otherwise prints the reason so the caller can skip.
///
/// # Panics
/// When `TWILL_REQUIRE_PRIVILEGED=1` is set: that is the point.
pub fn skip_or_fail(reason: &str) {
    if privileged_required() {
        panic!("{REQUIRE_PRIVILEGED_ENV}=1 but this test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason} (set {REQUIRE_PRIVILEGED_ENV}=1 to make this a failure)");
}

/// Checks that we are root and can create network namespaces.
///
/// # Errors
/// A human-readable reason when we cannot.
pub fn check_root() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, netlink writes)".into());
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Err("kernel without network namespace support".into());
    }
    Ok(())
}

/// Skips (or fails, under `TWILL_REQUIRE_PRIVILEGED=1`) the calling test
/// unless we are root with network namespaces.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Err(reason) = $crate::check_root() {
            $crate::skip_or_fail(&reason);
            return;
        }
    };
}

/// Skips (or fails, under `TWILL_REQUIRE_PRIVILEGED=1`) the calling test
/// unless the `etcd` binary is installed.
#[macro_export]
macro_rules! require_etcd {
    () => {
        if let Err(reason) = $crate::etcd::check_etcd() {
            $crate::skip_or_fail(&reason);
            return;
        }
    };
}
