//! The lease manager: a sans-IO [`core`] and an async driver that executes
//! its actions against a [`Registry`] on tokio.

pub mod core;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twill_model::{Ipv4Network, Ipv6Network, LeaseAttrs, SubnetKey};

use self::core::{Action, CoreConfig, Input, LeaseCore, LeaseEvent, PeerSet, RetryPolicy};
use crate::{HeldLease, LeaseWatch, Registry, SubnetError};

/// Events kept for slow [`LeaseHandle::events`] subscribers.
const EVENT_BUFFER: usize = 1024;

/// What a [`LeaseManager`] publishes and how it keeps its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseManagerConfig {
    /// The attributes to publish; they identify our leases and reservations
    /// (`public_ip`, `public_ipv6` or both, by the network's families: see
    /// [`CoreConfig::attrs`]). Set `public_ipv6` when the network has IPv6 on.
    pub attrs: LeaseAttrs,
    /// TTL of the leases we create (flannel: 24 h).
    pub ttl: Duration,
    /// Renew this long before expiry (flannel: 1 h), at most a third of the
    /// TTL: see [`CoreConfig::renew_after`].
    pub renew_margin: Duration,
    /// The subnet we held before (e.g. from subnet.env), reused if free.
    pub previous: Option<SubnetKey>,
    /// Seed for the random subnet choice and jitter; random when `None`.
    pub rng_seed: Option<u64>,
    /// Backoff for lost races and registry errors.
    pub retry: RetryPolicy,
    /// This host's own networks (underlay networks, default gateway, etcd
    /// endpoints): no subnet overlapping one is ever allocated, reused or
    /// accepted as a peer's. See [`CoreConfig::protected`].
    pub protected: Vec<Ipv4Network>,
    /// This host's own IPv6 networks, as `protected` for the IPv6 side of
    /// a dual-stack or IPv6-only network. See [`CoreConfig::protected_v6`].
    pub protected_v6: Vec<Ipv6Network>,
}

impl LeaseManagerConfig {
    /// flannel's defaults: 24 h TTL, renew 1 h before expiry.
    #[must_use]
    pub fn new(attrs: LeaseAttrs) -> Self {
        let c = CoreConfig::new(attrs);
        LeaseManagerConfig {
            attrs: c.attrs,
            ttl: c.ttl,
            renew_margin: c.renew_margin,
            previous: None,
            rng_seed: None,
            retry: c.retry,
            protected: Vec::new(),
            protected_v6: Vec::new(),
        }
    }

    fn core(&self) -> CoreConfig {
        CoreConfig {
            attrs: self.attrs.clone(),
            ttl: self.ttl,
            renew_margin: self.renew_margin,
            previous: self.previous,
            retry: self.retry,
            protected: self.protected.clone(),
            protected_v6: self.protected_v6.clone(),
        }
    }
}

/// Acquires a subnet lease, keeps it alive and watches the other hosts'
/// leases, against any [`Registry`].
///
/// [`LeaseManager::acquire`] gets the first lease (retrying lost races and
/// transient errors); [`LeaseManager::spawn`] then runs a background task
/// that renews it, re-acquires it if it is lost, and publishes the peer set.
/// See the crate docs for an example.
pub struct LeaseManager<R: Registry + ?Sized + 'static> {
    registry: Arc<R>,
    config: LeaseManagerConfig,
    core: Option<LeaseCore>,
    peers_tx: watch::Sender<PeerSet>,
    lease_tx: watch::Sender<Option<HeldLease>>,
    events_tx: broadcast::Sender<LeaseEvent>,
}

impl<R: Registry + ?Sized + 'static> std::fmt::Debug for LeaseManager<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseManager")
            .field("config", &self.config)
            .field("lease", &self.current_lease())
            .finish_non_exhaustive()
    }
}

fn random_seed() -> u64 {
    // std's per-process random hash keys: OS randomness without a feature.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x7477_696c_6c00_0000);
    h.finish()
}

/// A jitter for [`RetryPolicy::delay`]: uniform in `[0, 1)`, from std's
/// per-process random hash keys (the core has its own seeded generator; these
/// waits happen before there is a core).
fn jitter() -> f64 {
    let bits = random_seed() >> 11;
    #[allow(clippy::cast_precision_loss)]
    let unit = bits as f64 / (1u64 << 53) as f64;
    unit
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl<R: Registry + ?Sized + 'static> LeaseManager<R> {
    /// A manager that has not contacted the registry yet.
    pub fn new(registry: Arc<R>, config: LeaseManagerConfig) -> Self {
        let (peers_tx, _) = watch::channel(PeerSet::default());
        let (lease_tx, _) = watch::channel(None);
        let (events_tx, _) = broadcast::channel(EVENT_BUFFER);
        LeaseManager {
            registry,
            config,
            core: None,
            peers_tx,
            lease_tx,
            events_tx,
        }
    }

    /// The peer set, updated as leases come and go (subscribe before
    /// [`LeaseManager::acquire`] to see the first one).
    #[must_use]
    pub fn peers(&self) -> watch::Receiver<PeerSet> {
        self.peers_tx.subscribe()
    }

    /// What happens (acquired, renewed, lost, peers added...), for logs
    /// and metrics.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.events_tx.subscribe()
    }

    /// The lease we hold, if any.
    #[must_use]
    pub fn current_lease(&self) -> Option<HeldLease> {
        self.lease_tx.borrow().clone()
    }

    /// Failed acquisition attempts so far (lost races, registry errors).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.core.as_ref().map_or(0, LeaseCore::attempts)
    }

    /// Reads the network config and acquires a lease: our own lease or
    /// reservation (by `PublicIP`), else `previous` if free, else a random
    /// free subnet. Lost races and transient registry errors are retried
    /// with backoff, forever.
    ///
    /// # Errors
    /// Only what retrying cannot fix: [`SubnetError::Exhausted`], or
    /// [`crate::RegistryError::ConfigNotFound`] / `InvalidConfig` (wrapped
    /// in [`SubnetError::Registry`]) so the caller can wait for a config.
    /// Calling `acquire` again retries.
    pub async fn acquire(&mut self) -> Result<HeldLease, SubnetError> {
        if let Some(held) = self.core.as_ref().and_then(LeaseCore::held) {
            return Ok(held.clone());
        }
        let network = {
            let mut failures = 0u32;
            loop {
                match self.registry.get_config().await {
                    Ok(c) => break c,
                    Err(e) if e.is_transient() => {
                        failures = failures.saturating_add(1);
                        tracing::warn!("reading the network config: {e}; retrying");
                        let d = self.config.retry.delay(failures, jitter());
                        tokio::time::sleep(d).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if network.enable_ipv6 && self.config.attrs.public_ipv6.is_none() {
            return Err(SubnetError::MissingAttribute {
                field: "PublicIPv6",
                because: "EnableIPv6 true",
            });
        }
        let mut core = match self.core.take() {
            Some(c) if *c.network() == network => c,
            _ => LeaseCore::new(
                self.config.core(),
                network,
                self.config.rng_seed.unwrap_or_else(random_seed),
            ),
        };
        core.start(now());
        let mut driver = self.driver(core);
        let result = loop {
            driver.flush().await;
            if let Some(e) = driver.core.take_error() {
                break Err(e);
            }
            if let Some(held) = driver.core.held() {
                break Ok(held.clone());
            }
            match driver.core.poll_timeout() {
                Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
                None => driver.core.start(now()),
            }
            driver.core.handle_timeout(now());
        };
        self.core = Some(driver.core);
        result
    }

    fn driver(&self, core: LeaseCore) -> Driver<R> {
        Driver {
            registry: Arc::clone(&self.registry),
            core,
            watch: None,
            peers_tx: self.peers_tx.clone(),
            lease_tx: self.lease_tx.clone(),
            events_tx: self.events_tx.clone(),
        }
    }

    /// Starts the background task: renew, watch, re-acquire, publish peers.
    /// If [`LeaseManager::acquire`] was not called (or failed), the task
    /// acquires by itself and never gives up.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(mut self) -> LeaseHandle {
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let core = self.core.take();
        let registry = Arc::clone(&self.registry);
        let config = self.config.clone();
        let (peers_tx, lease_tx, events_tx) = (
            self.peers_tx.clone(),
            self.lease_tx.clone(),
            self.events_tx.clone(),
        );
        let task = tokio::spawn(async move {
            let core = match core {
                Some(c) => c,
                None => {
                    // Wait for a config, then acquire in the background.
                    let mut failures = 0u32;
                    let network = loop {
                        match registry.get_config().await {
                            Ok(c) => break c,
                            Err(e) => {
                                failures = failures.saturating_add(1);
                                tracing::warn!("reading the network config: {e}; retrying");
                                tokio::time::sleep(config.retry.delay(failures, jitter())).await;
                            }
                        }
                    };
                    LeaseCore::new(
                        config.core(),
                        network,
                        config.rng_seed.unwrap_or_else(random_seed),
                    )
                }
            };
            let driver = Driver {
                registry,
                core,
                watch: None,
                peers_tx,
                lease_tx,
                events_tx,
            };
            driver.run(cmd_rx).await;
        });
        LeaseHandle {
            cmd_tx,
            peers: self.peers_tx.subscribe(),
            lease: self.lease_tx.subscribe(),
            events_tx: self.events_tx.clone(),
            task,
        }
    }
}

enum Command {
    Release(oneshot::Sender<Result<(), SubnetError>>),
    Shutdown,
}

/// At most this many queued watch events are applied before the peer set is
/// published again (bounds the delay a burst adds to the first of its events).
const MAX_EVENT_BURST: usize = 4096;

/// Executes a core's actions against a registry and publishes its state.
struct Driver<R: Registry + ?Sized> {
    registry: Arc<R>,
    core: LeaseCore,
    watch: Option<LeaseWatch>,
    peers_tx: watch::Sender<PeerSet>,
    lease_tx: watch::Sender<Option<HeldLease>>,
    events_tx: broadcast::Sender<LeaseEvent>,
}

impl<R: Registry + ?Sized> Driver<R> {
    /// Executes queued actions until there are none, publishing as it goes.
    async fn flush(&mut self) {
        self.publish();
        while let Some(action) = self.core.poll_action() {
            let input = match action {
                Action::List => Input::Listed(self.registry.list_leases().await),
                Action::Create { key, attrs, ttl } => Input::Created {
                    key,
                    result: self.registry.create_lease(&key, &attrs, ttl).await,
                },
                Action::Renew { held } => Input::Renewed(self.registry.renew_lease(&held).await),
                Action::Update { held, attrs } => {
                    Input::Updated(self.registry.update_lease(&held, &attrs).await)
                }
                Action::Restore { held, revision } => {
                    Input::Restored(self.registry.restore_lease(&held, revision).await)
                }
                Action::Delete { key } => Input::Deleted(self.registry.delete_lease(&key).await),
                Action::Watch { from_revision } => {
                    match self.registry.watch_leases(from_revision).await {
                        Ok(w) => {
                            self.watch = Some(w);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("starting the lease watch: {e}");
                            self.watch = None;
                            Input::WatchEnded
                        }
                    }
                }
            };
            self.core.handle_input(now(), input);
            self.publish();
        }
        self.publish();
    }

    fn publish(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            log_event(&ev);
            let _ = self.events_tx.send(ev);
        }
        let peers = self.core.peers();
        let published = self.peers_tx.borrow();
        let stale = published.generation != peers.generation || published.skipped != peers.skipped;
        drop(published);
        if stale {
            self.peers_tx.send_replace(peers.clone());
        }
        let held = self.core.held().cloned();
        self.lease_tx.send_if_modified(|cur| {
            if *cur == held {
                false
            } else {
                *cur = held;
                true
            }
        });
    }

    async fn run(mut self, mut cmd_rx: mpsc::Receiver<Command>) {
        self.core.set_persistent();
        self.core.start(now());
        self.core.start_watch(now());
        loop {
            self.flush().await;
            let timeout = self.core.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            let next_event = async {
                match self.watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Release(reply)) => {
                        self.core.release(now());
                        self.flush().await;
                        let _ = reply.send(self.core.take_error().map_or(Ok(()), Err));
                        return;
                    }
                    Some(Command::Shutdown) | None => return,
                },
                ev = next_event => match ev {
                    Some(ev) => {
                        self.core.handle_input(now(), Input::Event(ev));
                        // Apply the events already queued behind it (a join
                        // storm, a revoked etcd lease deleting many keys)
                        // before publishing: one peer-set copy per burst
                        // instead of one per event, which is O(n²) at
                        // 10,000 peers.
                        // Only while we hold our lease: an event that costs
                        // it (or anything before it is held) is acted on at once.
                        if let Some(w) = self.watch.as_mut() {
                            for _ in 0..MAX_EVENT_BURST {
                                if !self.core.is_held() {
                                    break;
                                }
                                let Some(ev) = w.try_next() else { break };
                                self.core.handle_input(now(), Input::Event(ev));
                            }
                        }
                    }
                    None => {
                        self.watch = None;
                        self.core.handle_input(now(), Input::WatchEnded);
                    }
                },
                () = sleep => self.core.handle_timeout(now()),
            }
        }
    }
}

/// Events are the API: the embedder subscribes to [`LeaseHandle::events`]
/// and logs them at the level it wants (twilld logs each at info/warn). The
/// core logs nothing; the driver traces events at debug, so nothing is
/// logged twice, except skipped leases (see below).
fn log_event(ev: &LeaseEvent) {
    match ev {
        LeaseEvent::Acquired { lease, attempts } => tracing::debug!(
            subnet = %lease.key, attempts, reservation = lease.is_reservation(), "acquired lease"
        ),
        LeaseEvent::Reacquired { lease, previous } => {
            tracing::debug!(subnet = %lease.key, %previous, "re-acquired lease");
        }
        LeaseEvent::Renewed { key, ttl } => tracing::debug!(subnet = %key, ?ttl, "renewed lease"),
        LeaseEvent::RenewFailed { key, reason } => {
            tracing::debug!(subnet = %key, "renewing lease failed: {reason}");
        }
        LeaseEvent::Overwritten { key, by } => {
            tracing::debug!(subnet = %key, %by, "our key was overwritten; restoring it");
        }
        LeaseEvent::Lost { key, reason } => tracing::debug!(subnet = %key, "lost lease: {reason}"),
        LeaseEvent::AcquireRetry { attempts, reason } => {
            tracing::debug!(attempts, "acquiring a lease failed, retrying: {reason}");
        }
        LeaseEvent::AcquireFailed { reason } => {
            tracing::debug!("acquiring a lease failed: {reason}");
        }
        LeaseEvent::PeerAdded(key) => tracing::debug!(subnet = %key, "peer added"),
        LeaseEvent::PeerUpdated(key) => tracing::debug!(subnet = %key, "peer updated"),
        LeaseEvent::PeerRemoved(key) => tracing::debug!(subnet = %key, "peer removed"),
        // The exception: a junk key in the store is the operator's to fix,
        // so the manager warns itself, within the core's log budget (the
        // embedder sees the same events, for metrics).
        LeaseEvent::Skipped {
            key,
            reason,
            within_log_budget: true,
        } => tracing::warn!(%key, "skipping lease: {reason}"),
        LeaseEvent::Skipped { key, reason, .. } => {
            tracing::debug!(%key, "skipping lease: {reason}");
        }
        LeaseEvent::SkipsSuppressed { count } => tracing::warn!(
            count,
            "... and {count} more leases skipped (see twill_leases_skipped and the debug log)"
        ),
        LeaseEvent::Resynced { peers } => tracing::debug!(peers, "peer set resynced"),
        LeaseEvent::Released { key } => tracing::debug!(subnet = ?key, "released lease"),
    }
}

/// The running lease manager: its peer set, its events, our lease.
///
/// Dropping the handle stops the task like [`LeaseHandle::shutdown`] (the
/// lease stays in the store until it expires or we come back).
#[derive(Debug)]
pub struct LeaseHandle {
    cmd_tx: mpsc::Sender<Command>,
    peers: watch::Receiver<PeerSet>,
    lease: watch::Receiver<Option<HeldLease>>,
    events_tx: broadcast::Sender<LeaseEvent>,
    task: JoinHandle<()>,
}

impl LeaseHandle {
    /// The desired peer set: every other host's valid lease.
    #[must_use]
    pub fn peers(&self) -> watch::Receiver<PeerSet> {
        self.peers.clone()
    }

    /// Our lease as it changes (`None` while re-acquiring): rewrite
    /// subnet.env when it does.
    #[must_use]
    pub fn lease(&self) -> watch::Receiver<Option<HeldLease>> {
        self.lease.clone()
    }

    /// The lease we hold now.
    #[must_use]
    pub fn current_lease(&self) -> Option<HeldLease> {
        self.lease.borrow().clone()
    }

    /// Events from now on.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.events_tx.subscribe()
    }

    /// Whether the background task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Deletes our lease (not a reservation) and stops the task, as
    /// flannel's `--release-on-exit`.
    ///
    /// # Errors
    /// The registry's error if the delete failed; [`SubnetError::Stopped`]
    /// if the task had already ended.
    pub async fn release(self) -> Result<(), SubnetError> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(Command::Release(tx))
            .await
            .map_err(|_| SubnetError::Stopped)?;
        let r = rx.await.map_err(|_| SubnetError::Stopped)?;
        let _ = self.task.await;
        r
    }

    /// Stops the task, leaving the lease in the store.
    pub async fn shutdown(self) {
        let _ = self.cmd_tx.send(Command::Shutdown).await;
        let _ = self.task.await;
    }
}
