//! What the agent reports about itself: the figures behind a daemon's
//! `/healthz`, `/readyz` and `/metrics`. Updated by the agent with relaxed
//! atomics, read at any time from any thread without waiting for it: a
//! health check must answer while a reconcile programs 10,000 peers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twill_model::SubnetKey;

use crate::health::HealthReport;

/// Makes the peers' health report when one is asked for: the prober's
/// state, read under its lock. Nothing is kept between two requests,
/// where a report published every second held a copy of every peer's
/// state (0.56 MB at 10,000 peers, docs/benchmarks.md §5).
pub(crate) type HealthSource = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// [`HealthSource`] behind a lock; `Debug` says only whether there is one.
#[derive(Default)]
pub(crate) struct HealthSlot(Mutex<Option<HealthSource>>);

impl std::fmt::Debug for HealthSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().is_ok_and(|s| s.is_some());
        f.debug_tuple("HealthSlot").field(&set).finish()
    }
}

/// The live counters, shared between the agent and its readers
/// ([`crate::Agent::status`]). Read them with [`AgentStatus::snapshot`].
#[derive(Debug, Default)]
pub struct AgentStatus {
    pub(crate) lease_held: AtomicBool,
    pub(crate) etcd_reachable: AtomicBool,
    pub(crate) dataplane_ready: AtomicBool,
    pub(crate) peers: AtomicU64,
    pub(crate) lease_events: AtomicU64,
    pub(crate) reconciles: AtomicU64,
    pub(crate) incremental_reconciles: AtomicU64,
    pub(crate) reconcile_failures: AtomicU64,
    pub(crate) reconcile_micros: AtomicU64,
    pub(crate) last_reconcile_micros: AtomicU64,
    pub(crate) ops_applied: AtomicU64,
    pub(crate) etcd_errors: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) leases_skipped: AtomicU64,
    pub(crate) lease_overwrites: AtomicU64,
    pub(crate) subnet: Mutex<Option<SubnetKey>>,
    pub(crate) health: HealthSlot,
}

/// The agent's state at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusSnapshot {
    /// We hold a subnet lease.
    pub lease_held: bool,
    /// Our subnet, while we hold one.
    pub subnet: Option<SubnetKey>,
    /// The registry answered the last request that tells (connect, a config
    /// re-read, a renewal): a host cut off from it is not ready, since its
    /// lease and its view of the peers can no longer be kept.
    pub registry_reachable: bool,
    /// A reconcile since the lease was acquired applied everything it
    /// planned.
    pub dataplane_ready: bool,
    /// Peers in the current desired set.
    pub peers: u64,
    /// Peer changes seen from the registry (added, changed, removed).
    pub lease_events: u64,
    /// Reconcile passes run.
    pub reconciles: u64,
    /// Of those, passes that applied lease events alone
    /// ([`twill_backend::Backend::apply_changes`]); the others were full
    /// passes (the first, the periodic ones, and those an event needed).
    pub incremental_reconciles: u64,
    /// Passes that failed, entirely or in part.
    pub reconcile_failures: u64,
    /// Time spent reconciling, in total.
    pub reconcile_time: Duration,
    /// Duration of the last pass.
    pub last_reconcile_time: Duration,
    /// Kernel operations applied.
    pub ops_applied: u64,
    /// Registry errors seen.
    pub registry_errors: u64,
    /// Lease renewals.
    pub renewals: u64,
    /// Stored leases not programmed: refused by the lease manager
    /// (malformed, unusable) or by the backend.
    pub leases_skipped: u64,
    /// Times our lease was overwritten in place by another writer (and
    /// restored).
    pub lease_overwrites: u64,
    /// The peers' health from the probes ([`crate::health`]); `None` when
    /// probing is off or not running (no lease yet, no `CAP_NET_RAW`, a
    /// backend that is not probed). Shared, not copied, per snapshot.
    pub health: Option<Arc<HealthReport>>,
}

impl StatusSnapshot {
    /// Ready to carry traffic: the lease is held, the dataplane programmed
    /// and the registry reachable (what `/readyz` answers).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.lease_held && self.dataplane_ready && self.registry_reachable
    }
}

impl AgentStatus {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> StatusSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| a.load(Ordering::Relaxed);
        StatusSnapshot {
            lease_held: b(&self.lease_held),
            subnet: self.subnet.lock().map_or(None, |s| *s),
            registry_reachable: b(&self.etcd_reachable),
            dataplane_ready: b(&self.dataplane_ready),
            peers: g(&self.peers),
            lease_events: g(&self.lease_events),
            reconciles: g(&self.reconciles),
            incremental_reconciles: g(&self.incremental_reconciles),
            reconcile_failures: g(&self.reconcile_failures),
            reconcile_time: Duration::from_micros(g(&self.reconcile_micros)),
            last_reconcile_time: Duration::from_micros(g(&self.last_reconcile_micros)),
            ops_applied: g(&self.ops_applied),
            registry_errors: g(&self.etcd_errors),
            renewals: g(&self.renewals),
            leases_skipped: g(&self.leases_skipped),
            lease_overwrites: g(&self.lease_overwrites),
            health: self.health(),
        }
    }

    /// [`StatusSnapshot::is_ready`] without copying the rest.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.lease_held.load(Ordering::Relaxed)
            && self.dataplane_ready.load(Ordering::Relaxed)
            && self.etcd_reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(flag: &AtomicBool, value: bool) -> bool {
        flag.swap(value, Ordering::Relaxed)
    }

    /// The peers' health alone (what [`StatusSnapshot::health`] holds),
    /// made now from the prober's state.
    #[must_use]
    pub fn health(&self) -> Option<Arc<HealthReport>> {
        let source = self.health.0.lock().map_or(None, |s| s.clone())?;
        Some(Arc::new(source()))
    }

    pub(crate) fn set_health(&self, source: Option<HealthSource>) {
        if let Ok(mut h) = self.health.0.lock() {
            *h = source;
        }
    }

    pub(crate) fn set_subnet(&self, key: Option<SubnetKey>) {
        if let Ok(mut s) = self.subnet.lock() {
            *s = key;
        }
        self.lease_held.store(key.is_some(), Ordering::Relaxed);
    }
}
