//! The backend on a thread of its own. Backends make blocking netlink (and
//! `nft`, TUN...) calls inside their async methods; run on the agent's
//! runtime, a 10,000-peer reconcile would stall renewals, watch delivery,
//! signals and health checks for seconds. Here the runtime only waits on a
//! channel. The thread drives the backend's futures with the runtime's
//! handle, so a backend may still spawn tasks or use tokio's timers and IO.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use twill_backend::{
    Backend, BackendError, HostContext, Ipv6Underlay, LocalSetup, PeerChange, ReconcileReport,
    UnderlayInterface,
};
use twill_model::{NetworkConfig, SubnetKey, SubnetLease};
use twill_subnet::PeerSet;

use crate::AgentError;

/// A finished reconcile pass.
pub(crate) struct Reconciled {
    pub(crate) peers: usize,
    pub(crate) duration: Duration,
    pub(crate) result: Result<ReconcileReport, BackendError>,
    /// The peers an incremental pass applied; `None` for a full pass.
    pub(crate) changed: Option<BTreeSet<SubnetKey>>,
}

enum Job {
    Setup {
        config: NetworkConfig,
        public_ip: std::net::Ipv4Addr,
        underlay: UnderlayInterface,
        ipv6: Option<Ipv6Underlay>,
        reply: oneshot::Sender<Result<LocalSetup, BackendError>>,
    },
    Activate {
        own: SubnetLease,
        reply: oneshot::Sender<Result<(), BackendError>>,
    },
    Reconcile {
        peers: PeerSet,
        /// The keys changed since the previous pass, when known: the
        /// backend may then apply those alone.
        changed: Option<BTreeSet<SubnetKey>>,
        reply: oneshot::Sender<Reconciled>,
    },
}

/// The backend's thread and the channel to it. Jobs run in order.
pub(crate) struct BackendWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

fn gone() -> AgentError {
    AgentError::Worker("the backend thread ended".into())
}

impl BackendWorker {
    /// Moves `backend` to a new thread (in this thread's network namespace,
    /// as a new thread inherits it).
    pub(crate) fn start(mut backend: Box<dyn Backend>) -> Result<Self, AgentError> {
        let runtime = Handle::current();
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("twill-backend".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Setup {
                            config,
                            public_ip,
                            underlay,
                            ipv6,
                            reply,
                        } => {
                            let host = HostContext {
                                config: &config,
                                public_ip,
                                underlay: &underlay,
                                ipv6,
                            };
                            let _ = reply.send(runtime.block_on(backend.setup(&host)));
                        }
                        Job::Activate { own, reply } => {
                            let _ = reply.send(runtime.block_on(backend.activate(&own)));
                        }
                        Job::Reconcile {
                            peers,
                            changed,
                            reply,
                        } => {
                            let started = Instant::now();
                            let (result, changed) = pass(&mut *backend, &runtime, &peers, changed);
                            let _ = reply.send(Reconciled {
                                peers: peers.len(),
                                duration: started.elapsed(),
                                result,
                                changed,
                            });
                        }
                    }
                }
            })
            .map_err(|e| AgentError::Worker(format!("cannot start it: {e}")))?;
        Ok(BackendWorker {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> Result<(), AgentError> {
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())
    }

    pub(crate) async fn setup(
        &self,
        config: &NetworkConfig,
        public_ip: std::net::Ipv4Addr,
        underlay: &UnderlayInterface,
        ipv6: Option<Ipv6Underlay>,
    ) -> Result<Result<LocalSetup, BackendError>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Setup {
            config: config.clone(),
            public_ip,
            underlay: underlay.clone(),
            ipv6,
            reply,
        })?;
        rx.await.map_err(|_| gone())
    }

    pub(crate) async fn activate(
        &self,
        own: &SubnetLease,
    ) -> Result<Result<(), BackendError>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Activate {
            own: own.clone(),
            reply,
        })?;
        rx.await.map_err(|_| gone())
    }

    /// Queues a pass over `peers` (a cheap copy: the map is persistent
    /// and the leases are shared), incremental over `changed` when given;
    /// the receiver yields it when done.
    pub(crate) fn reconcile(
        &self,
        peers: PeerSet,
        changed: Option<BTreeSet<SubnetKey>>,
    ) -> Result<oneshot::Receiver<Reconciled>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Reconcile {
            peers,
            changed,
            reply,
        })?;
        Ok(rx)
    }

    /// Lets the queued jobs finish, then ends the thread (off the runtime).
    pub(crate) async fn stop(mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// One pass: the backend's incremental path over `changed` when known and
/// the backend takes it, else a full reconcile over every peer. Returns
/// the keys applied incrementally (`None` for a full pass).
fn pass(
    backend: &mut dyn Backend,
    runtime: &Handle,
    peers: &PeerSet,
    changed: Option<BTreeSet<SubnetKey>>,
) -> (
    Result<ReconcileReport, BackendError>,
    Option<BTreeSet<SubnetKey>>,
) {
    if let Some(keys) = changed {
        let changes: Vec<PeerChange<'_>> = keys
            .iter()
            .map(|k| PeerChange {
                key: *k,
                lease: peers.leases.get(k).map(AsRef::as_ref),
            })
            .collect();
        match runtime.block_on(backend.apply_changes(&changes)) {
            Ok(Some(report)) => return (Ok(report), Some(keys)),
            Err(e) => return (Err(e), Some(keys)),
            Ok(None) => {}
        }
    }
    let leases: Vec<&SubnetLease> = peers.leases.values().map(AsRef::as_ref).collect();
    (runtime.block_on(backend.reconcile(&leases)), None)
}

impl Drop for BackendWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current job; it is
        // not joined here, which would block the runtime.
        self.jobs = None;
    }
}
