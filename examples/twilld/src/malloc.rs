//! How twilld's heap gives memory back to the system (glibc's malloc).
//!
//! A full reconcile at 10,000 peers allocates a few MB for a moment (kernel
//! dumps, the desired state, the plan, the batch) and frees it; a watch
//! batch of 10,000 leases does the same while it is decoded. glibc keeps
//! what is freed: in one arena per thread that allocated (the backend runs
//! on a thread of its own), and inside the heap wherever a live allocation
//! sits above the free space. Measured with `benches/scripts/memory.sh`
//! (docs/benchmarks.md §5): with glibc's defaults VmRSS grew 1.41× over 10
//! cycles of −10,000 / +10,000 peers and stayed at 27 MiB once every peer
//! was gone.
//!
//! So, at start, one arena and fixed thresholds ([`configure`]), and after
//! each burst of reconciles, `malloc_trim(0)`, which also hands back the
//! free pages in the middle of the heap ([`release_after_reconciles`]).
//!
//! [`ffi`] is the one module of the workspace with `unsafe` code: glibc's
//! `mallopt` and `malloc_trim` are C functions with no safe wrapper. Both
//! take integers only and may be called at any time from any thread.
//! With another C library (musl) both are no-ops.

use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::RecvError};
use twill_agent::AgentEvent;

/// Environment variables by which an operator tunes glibc's malloc: when
/// one is set, twilld leaves the heap as the operator configured it.
const OPERATOR_TUNING: [&str; 4] = [
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
];

/// The shortest time between two trims: a trim walks the heap's free
/// chunks, and a busy cluster may reconcile many times a second.
const TRIM_GAP: Duration = Duration::from_millis(200);

/// Sets one arena and fixed trim/mmap thresholds, unless the environment
/// already tunes malloc. Call before any other thread starts: an arena
/// made before is kept.
pub fn configure() {
    if OPERATOR_TUNING
        .iter()
        .any(|var| std::env::var_os(var).is_some())
    {
        tracing::debug!("malloc tuned by the environment; leaving it as is");
        return;
    }
    for (param, value, name) in ffi::SETTINGS {
        if !ffi::set(param, value) {
            tracing::debug!(param = name, value, "mallopt refused the setting");
        }
    }
}

/// Trims the heap after reconciles, at most once per [`TRIM_GAP`]: the
/// first reconcile of a burst at once, the rest of the burst once it is
/// over. Ends when the agent stops.
pub async fn release_after_reconciles(mut events: broadcast::Receiver<AgentEvent>) {
    let mut last = None::<Instant>;
    loop {
        match events.recv().await {
            // After incremental passes too: a burst of lease events (10,000
            // leases written at once) frees as much as a full pass, and
            // TRIM_GAP bounds what the trims cost.
            // A subscriber that lagged missed reconciles too.
            Ok(AgentEvent::Reconciled(_)) | Err(RecvError::Lagged(_)) => {}
            Ok(AgentEvent::Stopped { .. }) | Err(RecvError::Closed) => return,
            Ok(_) => continue,
        }
        if let Some(at) = last {
            tokio::time::sleep_until((at + TRIM_GAP).into()).await;
        }
        // What the gap let pile up is covered by this trim: nothing runs
        // on this runtime while it does.
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, AgentEvent::Stopped { .. }) {
                return;
            }
        }
        let started = Instant::now();
        ffi::trim();
        last = Some(Instant::now());
        tracing::debug!(took_us = started.elapsed().as_micros(), "malloc_trim");
    }
}

/// glibc's malloc controls.
#[allow(unsafe_code)]
mod ffi {
    /// What [`super::configure`] sets, as (parameter, value, name).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub(super) const SETTINGS: [(i32, i32, &str); 3] = [
        // One arena: the backend thread's transients reuse the runtime's
        // free memory instead of keeping a second high-water mark (the two
        // threads seldom allocate at once, so the shared lock costs little).
        (libc::M_ARENA_MAX, 1, "M_ARENA_MAX"),
        // Fixed, small thresholds: glibc raises both after each large free
        // (up to 32 MiB), after which the next large Vec comes from the heap
        // and stays there. At their initial values, a buffer over 128 KiB is
        // a mapping of its own, returned to the system when freed.
        (libc::M_MMAP_THRESHOLD, 128 << 10, "M_MMAP_THRESHOLD"),
        (libc::M_TRIM_THRESHOLD, 128 << 10, "M_TRIM_THRESHOLD"),
    ];
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub(super) const SETTINGS: [(i32, i32, &str); 0] = [];

    /// `mallopt(param, value)`; false if glibc refused it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub(super) fn set(param: i32, value: i32) -> bool {
        // SAFETY: mallopt takes two integers and changes only malloc's own
        // settings, under its lock; an unknown parameter is refused (0).
        unsafe { libc::mallopt(param, value) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub(super) fn set(_param: i32, _value: i32) -> bool {
        true
    }

    /// `malloc_trim(0)`: returns the free pages of every arena, its top
    /// and inside it, to the system.
    pub(super) fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes an integer (the padding to keep, 0) and
        // releases only memory malloc holds free; no pointer is involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
