//! The agent loop: config → backend set-up → lease → subnet.env and
//! activation → reconcile on every peer change and on a timer → shutdown.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, error, info, warn};
use twill_backend::{BackendRegistry, LocalSetup};
use twill_model::{
    Ipv4Network, Ipv6Network, LeaseAttrs, NetworkConfig, SkipReason, SubnetEnv, SubnetKey,
};
use twill_subnet::{
    HeldLease, LeaseEvent, LeaseHandle, LeaseManager, LeaseManagerConfig, LogBudget, PeerSet,
    Registry, RegistryError, SKIP_LOG_LIMIT, SKIP_LOG_WINDOW,
};

use crate::event::{ConfigDrift, ConfigProblem, ReconcileOutcome};
use crate::health::prober::HealthProber;
use crate::worker::{BackendWorker, Reconciled};
use crate::{
    host, masq, subnet_file, AgentError, AgentEvent, AgentOption, AgentOptions, AgentStatus,
};

/// Events kept for a slow [`Agent::events`] subscriber before it lags.
/// As many as the lease manager keeps: its tokio channel allocates every slot
/// up front (~200 bytes each; 4,096 of them were 0.8 MB).
const EVENT_BUFFER: usize = 1024;

/// Stops a running [`Agent`] from anywhere (a signal handler, another
/// task). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the agent to stop: it finishes the backend's current job,
    /// releases or keeps its lease as its options say, and
    /// [`Agent::run`] returns `Ok`.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A flannel-compatible host agent on any [`Registry`] and any backend of
/// a [`BackendRegistry`] (chosen by the config's `Backend.Type`).
///
/// Build it with [`Agent::new`], take what you need ([`Agent::events`],
/// [`Agent::status`], [`Agent::shutdown_handle`]), then
/// [`Agent::run`] it. See the crate docs for an example.
pub struct Agent<R: Registry + ?Sized + 'static> {
    registry: Arc<R>,
    backends: BackendRegistry,
    options: AgentOptions,
    status: Arc<AgentStatus>,
    events: broadcast::Sender<AgentEvent>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl<R: Registry + ?Sized + 'static> std::fmt::Debug for Agent<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("backends", &self.backends)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<R: Registry + ?Sized + 'static> Agent<R> {
    /// An agent on `registry`, with the backends it may be asked for.
    ///
    /// # Errors
    /// [`AgentError::InvalidOption`] from [`AgentOptions::validate`]:
    /// nothing has been leased or programmed.
    pub fn new(
        registry: Arc<R>,
        backends: BackendRegistry,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        options.validate()?;
        Ok(Agent {
            registry,
            backends,
            options,
            status: Arc::new(AgentStatus::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            shutdown: Arc::new(watch::channel(false).0),
        })
    }

    /// Reports into `status` instead of a status of its own: a daemon
    /// that serves health checks before the registry is reachable (and so
    /// before the agent exists) creates the status first.
    #[must_use]
    pub fn with_status(mut self, status: Arc<AgentStatus>) -> Self {
        self.status = status;
        self
    }

    /// The live status (what `/healthz`, `/readyz` and `/metrics` report),
    /// readable while the agent runs.
    #[must_use]
    pub fn status(&self) -> Arc<AgentStatus> {
        self.status.clone()
    }

    /// Events from now on. A subscriber that falls more than a few
    /// thousand events behind gets [`RecvError::Lagged`].
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// A handle that stops [`Agent::run`].
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs the agent until [`ShutdownHandle::shutdown`]: waits for a usable
    /// network config (logging each distinct problem once), sets the
    /// backend up on its own thread, acquires a lease, writes subnet.env,
    /// activates, then reconciles on every peer change and every
    /// `reconcile_interval`, re-activating when our subnet changes.
    ///
    /// Must be called within a tokio runtime (a current-thread one is
    /// enough: the backend never runs on it).
    ///
    /// # Errors
    /// What retrying cannot fix: the backend's set-up or activation failing
    /// for a reason other than the config, subnet.env or the masquerade
    /// rules not writable, the host's networks unreadable, the lease
    /// manager stopping. A config problem is waited on, never an error.
    pub async fn run(self) -> Result<(), AgentError> {
        let mut stop = self.shutdown.subscribe();
        let protected = self.protect_host().await?;
        let Some((config, worker, local)) = self.wait_for_config(&mut stop).await? else {
            return self.stopped(false);
        };
        info!(network = %config.network, subnet_len = config.subnet_len, backend = %config.backend.backend_type, "network config read");
        self.emit(AgentEvent::ConfigRead {
            config: config.clone(),
            mtu: local.mtu,
        });
        for net in protected.0.iter().filter(|n| {
            config.enable_ipv4
                && (n.contains(config.network.network()) || config.network.contains(n.network()))
        }) {
            warn!(
                "Network {} overlaps this host's own network {net} (underlay {}, its gateway or etcd): subnets overlapping it are never used; choose a Network apart from the hosts' own",
                config.network, self.options.underlay.name
            );
        }
        if let Some(v6) = config.ipv6_network.filter(|_| config.enable_ipv6) {
            for net in protected
                .1
                .iter()
                .filter(|n| n.contains(v6.network()) || v6.contains(n.network()))
            {
                warn!(
                    "IPv6Network {v6} overlaps this host's own network {net} (underlay {}, its gateway or etcd): subnets overlapping it are never used; choose an IPv6Network apart from the hosts' own",
                    self.options.underlay.name
                );
            }
        }

        let mut manager = LeaseManager::new(
            self.registry.clone(),
            self.manager_config(&config, &local, protected).await,
        );
        let mut lease_events = manager.events();
        let held = loop {
            let attempt = tokio::select! {
                r = manager.acquire() => r,
                () = stop_requested(&mut stop) => {
                    worker.stop().await;
                    return self.stopped(false);
                }
            };
            match attempt {
                Ok(held) => break held,
                Err(e) => {
                    AgentStatus::count(&self.status.etcd_errors, 1);
                    warn!("cannot acquire a subnet lease yet: {e}; retrying");
                    tokio::time::sleep(self.options.retry_interval).await;
                }
            }
        };
        let handle = manager.spawn();
        self.status.set_subnet(Some(held.lease.key));
        self.emit(AgentEvent::LeaseAcquired(held.lease.clone()));
        let mut run = Running {
            agent: &self,
            config,
            mtu: local.mtu,
            own: held.lease.key,
            worker,
            reported: HashSet::new(),
            report_log: LogBudget::new(SKIP_LOG_LIMIT, SKIP_LOG_WINDOW),
            in_flight: None,
            wanted: false,
            sent: None,
            full_due: true,
            stored: ConfigDrift::Same,
            health: None,
        };
        let result = run
            .main_loop(&handle, &held, &mut lease_events, &mut stop)
            .await;
        if let Some(pass) = run.in_flight.take() {
            // Let the kernel batch in progress finish before we exit.
            let _ = pass.await;
        }
        if let Some(prober) = run.health.take() {
            // Joins within the prober's 100 ms tick.
            let _ = tokio::task::spawn_blocking(move || prober.stop()).await;
        }
        run.worker.stop().await;
        result?;
        let released = self.options.release_on_exit;
        if released {
            match handle.release().await {
                Ok(()) => info!("lease released"),
                Err(e) => warn!("could not release the lease: {e}"),
            }
            if self.options.ip_masq {
                // The subnet is given back, so are the rules that mention it.
                if let Err(e) = blocking(masq::remove).await {
                    warn!("could not remove masquerade rules: {e}");
                }
            }
        } else {
            handle.shutdown().await;
            info!("stopped; lease and kernel state kept for the next start");
        }
        self.status.set_subnet(None);
        self.stopped(released)
    }

    /// Sends [`AgentEvent::Stopped`]; the end of [`Agent::run`].
    fn stopped(&self, released: bool) -> Result<(), AgentError> {
        self.emit(AgentEvent::Stopped { released });
        Ok(())
    }

    fn emit(&self, event: AgentEvent) {
        // No subscriber is fine: events are for whoever wants them.
        let _ = self.events.send(event);
    }

    /// The host's own networks, computed and cleared of routes of ours
    /// before anything is leased.
    async fn protect_host(&self) -> Result<(Vec<Ipv4Network>, Vec<Ipv6Network>), AgentError> {
        let mut protected = self.options.protected.clone();
        let mut protected_v6 = self.options.protected_v6.clone();
        if !self.options.protect_host {
            return Ok((protected, protected_v6));
        }
        let o = &self.options;
        let (underlay, public_ip, public_ipv6) = (o.underlay.clone(), o.public_ip, o.public_ipv6);
        let (mut nets, mut nets6) = blocking(move || {
            Ok::<_, AgentError>((
                host::host_networks(&underlay, public_ip)?,
                host::host_networks6(&underlay, public_ipv6)?,
            ))
        })
        .await?;
        protected.append(&mut nets);
        protected.sort_unstable();
        protected.dedup();
        protected_v6.append(&mut nets6);
        protected_v6.sort_unstable();
        protected_v6.dedup();
        let (clear, clear6) = (protected.clone(), protected_v6.clone());
        let removed = blocking(move || {
            let v4: Vec<String> = host::remove_our_routes_over(&clear)?
                .iter()
                .map(|r| format!("{} via {:?}", r.dst, r.gateway))
                .collect();
            let v6: Vec<String> = host::remove_our_routes_over6(&clear6)?
                .iter()
                .map(|r| format!("{} via {:?}", r.dst, r.gateway))
                .collect();
            Ok::<_, AgentError>([v4, v6].concat())
        })
        .await?;
        for route in removed {
            warn!(
                "removed a route of ours over this host's own network: {route} (it would cut the host off its LAN, gateway or etcd)"
            );
        }
        Ok((protected, protected_v6))
    }

    /// What each address family the config enables needs of this host, checked
    /// before the backend touches the kernel: an IPv4 address to publish with
    /// `EnableIPv4`, an IPv6 one with `EnableIPv6` (without it there is no
    /// lease of ours to find, nor an address to publish).
    fn check_families(&self, config: &NetworkConfig) -> Result<(), AgentError> {
        let o = &self.options;
        if config.enable_ipv4 && o.public_ip.is_none() {
            return Err(AgentError::option(
                AgentOption::PublicIp,
                "(none)",
                format!(
                    "is required: the network config has EnableIPv4 true and underlay {} has no IPv4 address; add one, give the address to publish, or set EnableIPv4 false for an IPv6-only network",
                    o.underlay.name
                ),
            ));
        }
        if config.enable_ipv6 && o.public_ipv6.is_none() {
            return Err(AgentError::option(
                AgentOption::PublicIpv6,
                "(none)",
                format!(
                    "is required: the network config has EnableIPv6 true and underlay {} has no global IPv6 address; add one, or give the address to publish",
                    o.underlay.name
                ),
            ));
        }
        Ok(())
    }

    /// Waits until the registry holds a valid config whose backend can be
    /// built and set up on this host. Each distinct problem is logged and
    /// sent once. `None` if asked to stop meanwhile.
    async fn wait_for_config(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<(NetworkConfig, BackendWorker, LocalSetup)>, AgentError> {
        let key = self.registry.config_key();
        let mut last = String::new();
        loop {
            let problem = match self.registry.get_config().await {
                Ok(config) => {
                    self.reachable(true);
                    self.check_families(&config)?;
                    match self.backends.create(&config.backend) {
                        Ok(backend) => {
                            let worker = BackendWorker::start(backend)?;
                            let o = &self.options;
                            // The VXLAN `local` is the interface's own IPv6
                            // address; a host that publishes one it does not
                            // hold (1:1 NAT without a global address of its
                            // own is rare) sends from the published one.
                            let ipv6 = o.public_ipv6.map(|public_ip| twill_backend::Ipv6Underlay {
                                addr: o.underlay.addr6.unwrap_or(public_ip),
                                public_ip,
                            });
                            // flannel's PublicIP of an IPv6-only lease.
                            let public_ip = o
                                .public_ip
                                .filter(|_| config.enable_ipv4)
                                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                            match worker.setup(&config, public_ip, &o.underlay, ipv6).await? {
                                Ok(local) => return Ok(Some((config, worker, local))),
                                Err(e) if e.is_config() => {
                                    worker.stop().await;
                                    ConfigProblem::Backend(Arc::new(e))
                                }
                                Err(source) => {
                                    worker.stop().await;
                                    return Err(AgentError::Backend {
                                        step: "set-up",
                                        source,
                                    });
                                }
                            }
                        }
                        Err(e) => ConfigProblem::Backend(Arc::new(e)),
                    }
                }
                Err(e) => {
                    if e.is_transient() {
                        AgentStatus::count(&self.status.etcd_errors, 1);
                        self.reachable(false);
                    } else {
                        self.reachable(true);
                    }
                    match e {
                        RegistryError::ConfigNotFound { .. } => ConfigProblem::Missing,
                        other => ConfigProblem::Registry(Arc::new(other)),
                    }
                }
            };
            let msg = match &problem {
                ConfigProblem::Missing => format!("waiting for network config at {key}"),
                other => format!("waiting for a valid network config at {key}: {other}"),
            };
            if msg != last {
                warn!("{msg}");
                self.emit(AgentEvent::ConfigInvalid {
                    key: key.clone(),
                    problem,
                });
                last = msg;
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.retry_interval) => {}
                () = stop_requested(stop) => return Ok(None),
            }
        }
    }

    async fn manager_config(
        &self,
        config: &NetworkConfig,
        local: &LocalSetup,
        (protected, protected_v6): (Vec<Ipv4Network>, Vec<Ipv6Network>),
    ) -> LeaseManagerConfig {
        let mut c = LeaseManagerConfig::new(lease_attrs(config, local, &self.options));
        c.ttl = self.options.lease_ttl;
        c.renew_margin = self.options.renew_margin;
        c.protected = protected;
        c.protected_v6 = protected_v6;
        c.rng_seed = self.options.rng_seed;
        if let Some(path) = self.options.subnet_file.clone() {
            c.previous = blocking(move || Ok::<_, AgentError>(subnet_file::previous_subnet(&path)))
                .await
                .ok()
                .flatten();
        }
        c
    }

    /// Records whether the registry answers; logs a change.
    fn reachable(&self, now: bool) {
        if AgentStatus::set(&self.status.etcd_reachable, now) != now {
            self.emit(AgentEvent::RegistryReachable(now));
        }
    }
}

/// Resolves once [`ShutdownHandle::shutdown`] was called (the guard of
/// `wait_for` is dropped here, so the future stays `Send`).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        // The sender lives in the agent, which outlives its loop.
        std::future::pending::<()>().await;
    }
}

/// Runs blocking work (netlink reads, `nft`, file writes) off the runtime.
async fn blocking<T, E, F>(f: F) -> Result<T, AgentError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<AgentError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Worker(format!("a blocking task failed: {e}")))?
        .map_err(Into::into)
}

/// The state of a running agent, once it holds a lease.
struct Running<'a, R: Registry + ?Sized + 'static> {
    agent: &'a Agent<R>,
    config: NetworkConfig,
    mtu: u32,
    own: SubnetKey,
    worker: BackendWorker,
    /// Peers the backend refused at the last pass, with the reason: each
    /// is reported when it enters the set and forgotten once programmed
    /// or gone, so a peer that goes bad again is reported again.
    reported: HashSet<(SubnetKey, SkipReason)>,
    /// Rate limit of the "peer not programmed" warnings.
    report_log: LogBudget,
    /// The pass the backend is running, if any.
    in_flight: Option<oneshot::Receiver<Reconciled>>,
    /// The peers changed (or the timer fired) since the pass in flight
    /// started: run another when it ends. Changes during a pass coalesce
    /// into one more pass over the latest set.
    wanted: bool,
    /// The generation of the peer set the last pass sent to the backend
    /// covered: the next pass need only apply what changed since.
    sent: Option<u64>,
    /// The next pass must be a full one (the first, the timer's, after our
    /// subnet changed or an incremental pass failed).
    full_due: bool,
    /// The stored config at the last drift check.
    stored: ConfigDrift,
    /// The peer health prober, once started.
    health: Option<HealthProber>,
}

impl<R: Registry + ?Sized + 'static> Running<'_, R> {
    async fn main_loop(
        &mut self,
        handle: &LeaseHandle,
        held: &HeldLease,
        lease_events: &mut broadcast::Receiver<LeaseEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        self.activate(held).await?;
        self.start_health(handle);
        let mut peers = handle.peers();
        let mut lease = handle.lease();
        let mut tick = tokio::time::interval(self.agent.options.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: the first pass.
        loop {
            tokio::select! {
                changed = peers.changed() => {
                    if changed.is_err() { return Err(AgentError::Lease(twill_subnet::SubnetError::Stopped)); }
                    self.want(&mut peers)?;
                }
                _ = tick.tick() => {
                    // The safety net: a full pass repairs what no lease
                    // event announces (entries changed by hand, a device
                    // deleted).
                    self.full_due = true;
                    self.want(&mut peers)?;
                    self.check_config_drift().await;
                }
                done = async {
                    match self.in_flight.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                }, if self.in_flight.is_some() => {
                    self.in_flight = None;
                    if let Ok(done) = done {
                        let skipped = peers.borrow().skipped;
                        self.reconciled(done, skipped);
                    }
                    if self.wanted {
                        self.want(&mut peers)?;
                    }
                }
                changed = lease.changed() => {
                    if changed.is_err() { return Err(AgentError::Lease(twill_subnet::SubnetError::Stopped)); }
                    let current = lease.borrow_and_update().clone();
                    self.agent.status.set_subnet(current.as_ref().map(|h| h.lease.key));
                    if let Some(held) = current.filter(|h| h.lease.key != self.own) {
                        warn!(old = %self.own, new = %held.lease.key, "our subnet changed: re-activating");
                        let previous = std::mem::replace(&mut self.own, held.lease.key);
                        self.activate(&held).await?;
                        self.full_due = true;
                        self.want(&mut peers)?;
                        self.agent.emit(AgentEvent::LeaseChanged { previous, lease: held.lease.clone() });
                    }
                }
                ev = lease_events.recv() => match ev {
                    Ok(ev) => self.lease_event(ev),
                    // A burst (a join storm) outran the event log; the
                    // reconcile line still reports what changed.
                    Err(RecvError::Lagged(n)) => debug!("{n} lease events not logged individually"),
                    Err(RecvError::Closed) => return Err(AgentError::Lease(twill_subnet::SubnetError::Stopped)),
                },
                () = stop_requested(stop) => return Ok(()),
            }
        }
    }

    /// Starts probing the peers, if the options and the backend allow: a
    /// failure (no `CAP_NET_RAW`) is logged and leaves the agent without
    /// health reports, never stops it.
    fn start_health(&mut self, handle: &LeaseHandle) {
        let options = self.agent.options.health;
        if !options.enabled {
            info!("peer health probes off");
            return;
        }
        let Some(tunnel) = crate::health::probe_mode(&self.config) else {
            info!(
                backend = %self.config.backend.backend_type,
                "peer health probes not run: the backend's data path is its own (vxlan and host-gw are probed)"
            );
            return;
        };
        match HealthProber::start(
            options,
            tunnel,
            handle.peers(),
            self.agent.status.clone(),
            self.agent.events.clone(),
        ) {
            Ok(prober) => {
                info!(
                    interval = ?options.interval,
                    budget = options.max_probes_per_second,
                    "probing peers' health ({})",
                    match tunnel {
                        Some(port) => format!("ICMP through the tunnel, UDP port {port}, and over the underlay when it fails"),
                        None => "ICMP to their PublicIP: host-gw has no tunnel".into(),
                    }
                );
                self.health = Some(prober);
            }
            Err(e) => warn!("peer health probes not run: cannot open an ICMP socket: {e}"),
        }
    }

    /// Asks for a pass over the latest peer set: now if the backend is
    /// idle, else when the pass in flight ends.
    fn want(&mut self, peers: &mut watch::Receiver<PeerSet>) -> Result<(), AgentError> {
        if self.in_flight.is_some() {
            self.wanted = true;
            return Ok(());
        }
        self.wanted = false;
        // A PeerSet copy shares its map and its leases: O(1).
        let set = peers.borrow_and_update().clone();
        let changed = match self.sent {
            Some(g) if !self.full_due => set.changed_since(g),
            _ => None,
        };
        if changed.as_ref().is_some_and(BTreeSet::is_empty) {
            // Only the skipped count moved: nothing to program.
            return Ok(());
        }
        self.full_due = false;
        self.sent = Some(set.generation);
        self.in_flight = Some(self.worker.reconcile(set, changed)?);
        Ok(())
    }

    /// What depends on our subnet: subnet.env, masquerading, the backend.
    async fn activate(&mut self, held: &HeldLease) -> Result<(), AgentError> {
        let options = &self.agent.options;
        let env = SubnetEnv::new(&self.config, &held.lease.key, self.mtu, options.ip_masq);
        if let Some(path) = options.subnet_file.clone() {
            let (p, e) = (path.clone(), env.clone());
            blocking(move || subnet_file::write_atomically(&p, &e)).await?;
            info!(file = %path.display(), subnet = %env.subnet, mtu = self.mtu, "subnet file written");
            self.agent.emit(AgentEvent::SubnetFileWritten {
                path,
                subnet: held.lease.key,
            });
        }
        if options.ip_masq {
            let networks = masq::MasqNetworks::for_lease(&self.config, &held.lease.key);
            blocking(move || masq::apply(&networks)).await?;
            info!("masquerade rules installed (nft tables: {networks})");
        }
        // Queued behind a pass in flight, if any: the backend runs one job
        // at a time.
        self.worker
            .activate(&held.lease)
            .await?
            .map_err(|source| AgentError::Backend {
                step: "activation",
                source,
            })
    }

    fn reconciled(&mut self, done: Reconciled, lease_skipped: usize) {
        let s = &*self.agent.status;
        let micros = u64::try_from(done.duration.as_micros()).unwrap_or(u64::MAX);
        AgentStatus::count(&s.reconciles, 1);
        AgentStatus::count(&s.reconcile_micros, micros);
        s.last_reconcile_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
        s.peers
            .store(done.peers as u64, std::sync::atomic::Ordering::Relaxed);
        if done.changed.is_some() {
            AgentStatus::count(&s.incremental_reconciles, 1);
            // A failed event pass is retried as a full one, at once: an
            // error there may come from entries the event path cannot see.
            let failed = done.result.as_ref().map_or(true, |r| !r.failed.is_empty());
            if failed {
                self.full_due = true;
                self.wanted = true;
            }
        }
        let result = match done.result {
            Ok(report) => {
                self.report(
                    &report,
                    done.changed.as_ref(),
                    done.peers,
                    micros,
                    lease_skipped,
                );
                Ok(report)
            }
            Err(e) => {
                AgentStatus::count(&s.reconcile_failures, 1);
                error!("reconcile failed: {e}");
                Err(Arc::new(e))
            }
        };
        self.agent
            .emit(AgentEvent::Reconciled(Arc::new(ReconcileOutcome {
                peers: done.peers,
                duration: done.duration,
                incremental: done.changed.is_some(),
                result,
            })));
    }

    /// Logs and counts a pass. `changed`: the peers an incremental pass
    /// applied, whose skip verdicts alone it reports (a full pass reports
    /// every peer's).
    fn report(
        &mut self,
        report: &twill_backend::ReconcileReport,
        changed: Option<&BTreeSet<SubnetKey>>,
        peers: usize,
        micros: u64,
        lease_skipped: usize,
    ) {
        let s = &*self.agent.status;
        AgentStatus::count(&s.ops_applied, report.applied as u64);
        let now = Instant::now();
        if self.report_log.summary_due().is_some_and(|t| t <= now) {
            if let Some(n) = self.report_log.take_suppressed() {
                warn!(
                    count = n,
                    "... and {n} more peers not programmed (see twill_leases_skipped and the debug log)"
                );
            }
        }
        let mut current: HashSet<(SubnetKey, SkipReason)> =
            report.skipped.iter().cloned().collect();
        if let Some(changed) = changed {
            current.extend(
                self.reported
                    .iter()
                    .filter(|(k, _)| !changed.contains(k))
                    .cloned(),
            );
        }
        for (key, reason) in &report.skipped {
            if self.reported.contains(&(*key, reason.clone())) {
                continue;
            }
            if self.report_log.admit(now) {
                warn!(peer = %key, "peer not programmed: {reason}");
            } else {
                debug!(peer = %key, "peer not programmed: {reason}");
            }
            self.agent.emit(AgentEvent::PeerSkipped {
                key: *key,
                reason: reason.clone(),
            });
        }
        self.reported = current;
        s.leases_skipped.store(
            (lease_skipped + self.reported.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for f in &report.failed {
            warn!("reconcile: {f}");
        }
        if report.failed.is_empty() {
            AgentStatus::set(&s.dataplane_ready, true);
        } else {
            AgentStatus::count(&s.reconcile_failures, 1);
        }
        if report.planned > 0 {
            info!(
                peers,
                planned = report.planned,
                applied = report.applied,
                failed = report.failed.len(),
                duration_us = micros,
                "reconciled"
            );
        } else {
            debug!(peers, duration_us = micros, "reconciled, nothing to do");
        }
    }

    /// A changed config is not applied while running: half of the hosts
    /// would route the old network and half the new. Each change is logged
    /// once (and a return to the running config too).
    async fn check_config_drift(&mut self) {
        let answer = self.agent.registry.get_config().await;
        let reachable = !matches!(&answer, Err(e) if e.is_transient());
        if AgentStatus::set(&self.agent.status.etcd_reachable, reachable) != reachable {
            if reachable {
                info!("etcd reachable again");
            } else {
                warn!(
                    "etcd unreachable: not ready until it answers again (the kernel state is kept)"
                );
            }
            self.agent.emit(AgentEvent::RegistryReachable(reachable));
        }
        let now = match answer {
            Ok(cfg) if cfg == self.config => ConfigDrift::Same,
            Ok(cfg) => ConfigDrift::Changed(cfg),
            Err(e) if e.is_transient() => {
                AgentStatus::count(&self.agent.status.etcd_errors, 1);
                debug!("cannot re-read the network config: {e}");
                return;
            }
            Err(e) => ConfigDrift::Unusable(e.to_string()),
        };
        if now == self.stored {
            return;
        }
        let running = &self.config;
        match &now {
            ConfigDrift::Same => info!(
                network = %running.network,
                "network config in etcd is the running one again"
            ),
            ConfigDrift::Changed(cfg) => warn!(
                running = %running.network, stored = %cfg.network,
                "network config changed in etcd; still using the config read at start-up: restart the agent to apply it"
            ),
            ConfigDrift::Unusable(reason) => warn!(
                running = %running.network,
                "network config in etcd is not usable ({reason}); still using the config read at start-up"
            ),
        }
        self.stored = now.clone();
        self.agent.emit(AgentEvent::ConfigDrift(now));
    }

    /// Counts, logs and forwards a lease-manager event.
    fn lease_event(&mut self, ev: LeaseEvent) {
        let agent = self.agent;
        let s = &*agent.status;
        let forwarded = match &ev {
            LeaseEvent::Acquired { lease, attempts } => {
                info!(subnet = %lease.key, attempts, "lease acquired");
                None
            }
            LeaseEvent::Reacquired { lease, previous } => {
                warn!(subnet = %lease.key, %previous, "lease re-acquired");
                None
            }
            LeaseEvent::Renewed { key, ttl } => {
                AgentStatus::count(&s.renewals, 1);
                agent.reachable(true);
                info!(subnet = %key, ttl = ?ttl, "lease renewed");
                None
            }
            LeaseEvent::RenewFailed { key, reason } => {
                AgentStatus::count(&s.etcd_errors, 1);
                agent.reachable(false);
                warn!(subnet = %key, "lease renewal failed, retrying: {reason}");
                None
            }
            LeaseEvent::Overwritten { key, by } => {
                AgentStatus::count(&s.lease_overwrites, 1);
                error!(
                    subnet = %key, writer = %by,
                    "our lease {key} was overwritten in place with PublicIP {by}: restoring our value and keeping the subnet (someone with write access to etcd is claiming it)"
                );
                None
            }
            LeaseEvent::Lost { key, reason } => {
                warn!(subnet = %key, "lease lost: {reason}; re-acquiring");
                Some(AgentEvent::LeaseLost {
                    key: *key,
                    reason: reason.clone(),
                })
            }
            LeaseEvent::AcquireRetry { attempts, reason } => {
                AgentStatus::count(&s.etcd_errors, 1);
                warn!(attempts, "lease acquisition retry: {reason}");
                None
            }
            LeaseEvent::AcquireFailed { reason } => {
                error!("lease acquisition failed: {reason}");
                None
            }
            LeaseEvent::PeerAdded(key) => {
                AgentStatus::count(&s.lease_events, 1);
                // Debug only: the backend may still refuse the peer (a bad
                // VtepMAC), which is logged as "peer not programmed"; the
                // info record of a programmed peer is the "reconciled" line.
                debug!(peer = %key, "peer added");
                Some(AgentEvent::PeerAdded(*key))
            }
            LeaseEvent::PeerUpdated(key) => {
                AgentStatus::count(&s.lease_events, 1);
                info!(peer = %key, "peer updated");
                Some(AgentEvent::PeerUpdated(*key))
            }
            LeaseEvent::PeerRemoved(key) => {
                AgentStatus::count(&s.lease_events, 1);
                info!(peer = %key, "peer removed");
                Some(AgentEvent::PeerRemoved(*key))
            }
            // Logged once per key and reason by the lease manager itself.
            LeaseEvent::Skipped { key, reason, .. } => {
                debug!(%key, "lease skipped: {reason}");
                None
            }
            LeaseEvent::Resynced { peers } => {
                info!(peers, "resynced with a full listing");
                None
            }
            LeaseEvent::Released { key } => {
                info!(subnet = ?key.map(|k| k.to_string()), "lease released");
                None
            }
            other => {
                debug!(?other, "lease event");
                None
            }
        };
        agent.emit(forwarded.unwrap_or(AgentEvent::Lease(ev)));
    }
}

/// The attributes to publish: the backend's, with the `PublicIPv6` of the
/// options when the network has IPv6 on (unless the backend set one), and
/// flannel's `PublicIP` `0.0.0.0` when it has IPv4 off, as flannel writes an
/// IPv6-only lease.
fn lease_attrs(config: &NetworkConfig, local: &LocalSetup, options: &AgentOptions) -> LeaseAttrs {
    let mut attrs = local.attrs.clone();
    if config.enable_ipv6 && attrs.public_ipv6.is_none() {
        attrs.public_ipv6 = options.public_ipv6;
    }
    if !config.enable_ipv4 {
        attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
    }
    attrs
}
