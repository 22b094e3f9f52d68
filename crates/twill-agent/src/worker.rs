//! The backend on a thread of its own. Backends make blocking netlink (and
//! `nft`, TUN...) calls inside their async methods; run on the agent's
//! runtime, a 10,000-peer reconcile would stall renewals, watch delivery,
//! signals and health checks for seconds. Here the runtime only waits on a
//! channel. The thread drives the backend's futures with the runtime's
//! handle, so a backend may still spawn tasks or use tokio's timers and IO.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use twill_backend::{
    Backend, BackendError, HostContext, Ipv6Underlay, LocalSetup, ReconcileReport,
    UnderlayInterface,
};
use twill_model::{NetworkConfig, SubnetLease};
use twill_subnet::PeerSet;

use crate::AgentError;

/// A finished reconcile pass.
pub(crate) struct Reconciled {
    pub(crate) peers: usize,
    pub(crate) duration: Duration,
    pub(crate) result: Result<ReconcileReport, BackendError>,
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
                        Job::Reconcile { peers, reply } => {
                            let leases: Vec<&SubnetLease> =
                                peers.leases.values().map(AsRef::as_ref).collect();
                            let started = Instant::now();
                            let result = runtime.block_on(backend.reconcile(&leases));
                            let _ = reply.send(Reconciled {
                                peers: leases.len(),
                                duration: started.elapsed(),
                                result,
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

    /// Queues a pass over `peers` (a cheap copy: the leases are shared);
    /// the receiver yields it when done.
    pub(crate) fn reconcile(
        &self,
        peers: PeerSet,
    ) -> Result<oneshot::Receiver<Reconciled>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Reconcile { peers, reply })?;
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

impl Drop for BackendWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current job; it is
        // not joined here, which would block the runtime.
        self.jobs = None;
    }
}
