//! The agent on the in-memory registry with backends of the test's own:
//! the loop stays responsive while the backend blocks, passes coalesce,
//! config problems are waited on, and shutdown works in every phase.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{next, underlay, DEADLINE};
use tokio::sync::broadcast;
use twill_agent::{Agent, AgentEvent, AgentOptions, ConfigProblem};
use twill_backend::{async_trait, Backend, BackendError, BackendRegistry, HostContext};
use twill_backend::{LocalSetup, ReconcileReport};
use twill_model::{LeaseAttrs, SubnetKey, SubnetLease};
use twill_subnet::{MemoryRegistry, Registry};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"gate"}}"#;

/// What the backend shares with the test.
#[derive(Default)]
struct Shared {
    /// Peers of each pass, in order.
    passes: Mutex<Vec<usize>>,
    /// Set to make the next pass with peers block until `gate` yields.
    block_next: AtomicBool,
    /// Passes started (blocked or not).
    started: AtomicUsize,
}

/// A backend whose pass can be held, standing in for a blocking 10,000-peer
/// netlink batch.
struct GateBackend {
    shared: Arc<Shared>,
    gate: Arc<Mutex<mpsc::Receiver<()>>>,
}

#[async_trait]
impl Backend for GateBackend {
    fn backend_type(&self) -> &str {
        "gate"
    }
    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        Ok(LocalSetup {
            attrs: LeaseAttrs::new(host.public_ip, "gate"),
            mtu: 1400,
        })
    }
    async fn activate(&mut self, _own: &SubnetLease) -> Result<(), BackendError> {
        Ok(())
    }
    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        self.shared.started.fetch_add(1, Ordering::SeqCst);
        if !peers.is_empty() && self.shared.block_next.swap(false, Ordering::SeqCst) {
            // Blocks this thread, as a netlink syscall does.
            let _ = self.gate.lock().unwrap().recv();
        }
        self.shared.passes.lock().unwrap().push(peers.len());
        Ok(ReconcileReport::default())
    }
}

fn options() -> AgentOptions {
    let mut o = AgentOptions::new(underlay());
    o.subnet_file = None;
    o.protect_host = false;
    o.reconcile_interval = Duration::from_secs(3600);
    o.retry_interval = Duration::from_millis(100);
    o
}

struct Harness {
    registry: Arc<MemoryRegistry>,
    shared: Arc<Shared>,
    release: mpsc::Sender<()>,
    events: broadcast::Receiver<AgentEvent>,
    stop: twill_agent::ShutdownHandle,
    status: Arc<twill_agent::AgentStatus>,
    running: tokio::task::JoinHandle<Result<(), twill_agent::AgentError>>,
}

fn start(registry: Arc<MemoryRegistry>, options: AgentOptions) -> Harness {
    let shared = Arc::new(Shared::default());
    let (release, gate) = mpsc::channel();
    let gate = Arc::new(Mutex::new(gate));
    let mut backends = BackendRegistry::new();
    let (s, g) = (shared.clone(), gate.clone());
    backends.register("gate", move |_| {
        Ok(Box::new(GateBackend {
            shared: s.clone(),
            gate: g.clone(),
        }))
    });
    let agent = Agent::new(registry.clone(), backends, options).unwrap();
    let (events, stop, status) = (agent.events(), agent.shutdown_handle(), agent.status());
    let running = tokio::spawn(agent.run());
    Harness {
        registry,
        shared,
        release,
        events,
        stop,
        status,
        running,
    }
}

async fn add_peer(registry: &MemoryRegistry, key: &str, ip: &str) -> SubnetKey {
    let key: SubnetKey = key.parse().unwrap();
    let attrs = LeaseAttrs::new(ip.parse().unwrap(), "gate");
    registry
        .create_lease(&key, &attrs, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    key
}

fn config_registry() -> Arc<MemoryRegistry> {
    let registry = Arc::new(MemoryRegistry::new());
    registry.set_config(CONFIG);
    registry
}

/// A pass the backend holds (as a long netlink batch does) does not hold
/// the agent: on a one-thread runtime, peer events are still taken in and
/// the status still moves. The changes made meanwhile coalesce into one
/// more pass over the latest set.
#[tokio::test(flavor = "current_thread")]
async fn a_blocked_backend_does_not_stall_the_agent() {
    let mut h = start(config_registry(), options());
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Reconciled(p) if p.peers == 0).then_some(())
    })
    .await;

    h.shared.block_next.store(true, Ordering::SeqCst);
    // Fail-safe: were the pass run on this one-thread runtime, the test
    // would hang (no timer fires on a blocked thread); this releases it
    // late, and the assertions below then fail instead.
    let late = h.release.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = late.send(());
    });
    let a = add_peer(&h.registry, "10.5.7.0-24", "192.0.2.7").await;
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::PeerAdded(k) if *k == a).then_some(())
    })
    .await;
    // Wait until the backend is inside the held pass.
    tokio::time::timeout(DEADLINE, async {
        while h.shared.started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the pass with the first peer starts");
    assert!(
        !h.shared.block_next.load(Ordering::SeqCst),
        "the pass is held"
    );

    // Held: two more peers join. The agent still sees them (its loop and
    // the lease manager run), and counts them.
    let events_before = h.status.snapshot().lease_events;
    let b = add_peer(&h.registry, "10.5.9.0-24", "192.0.2.9").await;
    let c = add_peer(&h.registry, "10.5.11.0-24", "192.0.2.11").await;
    for k in [b, c] {
        next(&mut h.events, |e| {
            matches!(e, AgentEvent::PeerAdded(x) if *x == k).then_some(())
        })
        .await;
    }
    assert_eq!(h.status.snapshot().lease_events, events_before + 2);
    assert_eq!(
        h.shared.passes.lock().unwrap().len(),
        1,
        "only the first pass ended: the second is still held"
    );

    // Released: the held pass ends, then one pass covers both changes.
    h.release.send(()).unwrap();
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Reconciled(p) if p.peers == 3).then_some(())
    })
    .await;
    let passes = h.shared.passes.lock().unwrap().clone();
    assert_eq!(passes, vec![0, 1, 3], "changes during a pass coalesce");

    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
}

/// No config, then a config the registered backends do not know, then a
/// good one: each problem is reported once, and the agent goes on once
/// it is fixed.
#[tokio::test(flavor = "current_thread")]
async fn config_problems_are_waited_on_and_reported_once() {
    let registry = Arc::new(MemoryRegistry::new());
    let mut h = start(registry.clone(), options());
    let key = next(&mut h.events, |e| match e {
        AgentEvent::ConfigInvalid {
            problem: ConfigProblem::Missing,
            key,
        } => Some(key.clone()),
        _ => None,
    })
    .await;
    assert_eq!(key, "/coreos.com/network/config");
    registry.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"nope"}}"#);
    let err = next(&mut h.events, |e| match e {
        AgentEvent::ConfigInvalid {
            problem: ConfigProblem::Backend(err),
            ..
        } => Some(err.to_string()),
        AgentEvent::ConfigInvalid { problem, .. } => panic!("reported again: {problem}"),
        _ => None,
    })
    .await;
    assert!(err.contains("nope"), "{err}");
    registry.set_config(CONFIG);
    let mtu = next(&mut h.events, |e| match e {
        AgentEvent::ConfigRead { mtu, .. } => Some(*mtu),
        AgentEvent::ConfigInvalid { problem, .. } => panic!("reported again: {problem}"),
        _ => None,
    })
    .await;
    assert_eq!(mtu, 1400);
    let lease = next(&mut h.events, |e| match e {
        AgentEvent::LeaseAcquired(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(h.status.snapshot().subnet, Some(lease.key));
    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
}

/// Shutdown while waiting for a config returns at once and says so; with
/// `release_on_exit` the lease is deleted.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_in_every_phase() {
    let mut h = start(Arc::new(MemoryRegistry::new()), options());
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::ConfigInvalid { .. }).then_some(())
    })
    .await;
    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Stopped { released: false }).then_some(())
    })
    .await;

    let mut o = options();
    o.release_on_exit = true;
    let mut h = start(config_registry(), o);
    let lease = next(&mut h.events, |e| match e {
        AgentEvent::LeaseAcquired(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Reconciled(_)).then_some(())
    })
    .await;
    assert!(h.status.is_ready());
    h.stop.shutdown();
    h.running.await.unwrap().unwrap();
    next(&mut h.events, |e| {
        matches!(e, AgentEvent::Stopped { released: true }).then_some(())
    })
    .await;
    let listing = h.registry.list_leases().await.unwrap();
    assert!(
        listing.leases.iter().all(|l| l.key != lease.key),
        "released"
    );
    assert!(!h.status.snapshot().lease_held);
}

/// Bad options are refused before anything runs, naming the option.
#[test]
fn bad_options_are_refused_up_front() {
    let mut o = options();
    o.public_ip = "0.0.0.0".parse().ok();
    let err = Agent::new(Arc::new(MemoryRegistry::new()), BackendRegistry::new(), o).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("public_ip 0.0.0.0 is the unspecified address"),
        "{err}"
    );
}
