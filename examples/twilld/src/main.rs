//! twilld: a flannel-compatible overlay agent, composed from the twill
//! crates. It is the example an embedder copies: flags, then registry, lease
//! manager and backend wired together, and a loop that reconciles the kernel
//! whenever the peer set changes or a timer fires. Decisions live in the
//! libraries; this file only sequences them.

// Modules of a binary: `pub` marks what main uses, nothing is exported.
#![allow(unreachable_pub)]

mod flags;
mod iface;
mod masq;
mod status;
mod subnet_file;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};
use twill_backend::{Backend, BackendRegistry, HostContext, LocalSetup, UnderlayInterface};
use twill_etcd::{EtcdConfig, EtcdError, EtcdRegistry, EtcdTls};
use twill_model::{NetworkConfig, SubnetEnv, SubnetKey, SubnetLease};
use twill_subnet::{
    HeldLease, LeaseEvent, LeaseHandle, LeaseManager, LeaseManagerConfig, LogBudget, PeerSet,
    Registry, RegistryError, SKIP_LOG_LIMIT, SKIP_LOG_WINDOW,
};

use crate::flags::Flags;
use crate::status::Status;

fn main() -> ExitCode {
    let flags = match Flags::parse_from_go_style(std::env::args()) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "twilld: {} (see twilld --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if flags.version {
        println!("twilld {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(&flags);
    // One thread: the agent waits on etcd and netlink, it never computes for
    // long, and a single malloc arena keeps RSS flat across peer churn (two
    // workers left glibc holding 1.4x the memory after 10 cycles of 10,000).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, once: logging also goes to stderr, so the error is
            // not logged as well.
            eprintln!("twilld: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(flags: &Flags) {
    let level = match flags.verbosity {
        0 => "info",
        1 | 2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,tower=warn,hyper=warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Joins a possibly multi-line message (e.g. nft's or a TLS library's) into one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that can be checked before touching etcd or the kernel, so bad
/// input fails fast with one line.
fn check_flags(flags: &Flags) -> anyhow::Result<EtcdConfig> {
    for ep in &flags.etcd_endpoints {
        if let Err(e) = ep.parse::<twill_etcd::EtcdEndpoint>() {
            match e {
                EtcdError::InvalidEndpoint { reason, .. } => {
                    bail!("bad -etcd-endpoints URL {ep:?}: {reason}")
                }
                other => bail!("bad -etcd-endpoints URL {ep:?}: {other}"),
            }
        }
    }
    for (flag, path) in [
        ("-etcd-cafile", &flags.etcd_cafile),
        ("-etcd-certfile", &flags.etcd_certfile),
        ("-etcd-keyfile", &flags.etcd_keyfile),
    ] {
        if let Some(p) = path {
            std::fs::metadata(p)
                .with_context(|| format!("{flag} {}: cannot read it", p.display()))?;
        }
    }
    if flags.etcd_username.is_some() != flags.etcd_password.is_some() {
        bail!("-etcd-username and -etcd-password must be given together");
    }
    // A zero interval would panic the timer or spin on etcd; under 100 ms is a typo.
    for (flag, value, min) in [
        (
            "-reconcile-interval",
            flags.reconcile_interval,
            Duration::from_millis(100),
        ),
        (
            "-retry-interval",
            flags.retry_interval,
            Duration::from_millis(100),
        ),
        ("-lease-ttl", flags.lease_ttl, Duration::from_secs(1)),
    ] {
        if value < min {
            bail!("{flag} {value:?} is too short: it must be at least {min:?}");
        }
    }
    if let Some(ip) = flags.public_ip {
        check_public_ip("-public-ip", ip)?;
    }
    subnet_file::check_path(&flags.subnet_file)?;

    let mut config = EtcdConfig::new(flags.etcd_endpoints.clone()).with_prefix(&flags.etcd_prefix);
    if flags.etcd_cafile.is_some() || flags.etcd_certfile.is_some() || flags.etcd_keyfile.is_some()
    {
        config = config.with_tls(EtcdTls {
            ca_file: flags.etcd_cafile.clone(),
            cert_file: flags.etcd_certfile.clone(),
            key_file: flags.etcd_keyfile.clone(),
        });
    }
    if let (Some(u), Some(p)) = (&flags.etcd_username, &flags.etcd_password) {
        config = config.with_user(u, p);
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (check -etcd-prefix and the -etcd-* flags)"))?;
    Ok(config)
}

/// The address peers will send to must be one they can reach: published in
/// etcd, 0.0.0.0, a multicast, broadcast or loopback address would make every
/// peer program a tunnel to nowhere (or to themselves).
fn check_public_ip(flag: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let reason = if ip.is_unspecified() {
        "is the unspecified address"
    } else if ip.is_loopback() {
        "is a loopback address, which other hosts cannot reach"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_broadcast() || ip.octets()[0] >= 240 {
        "is a broadcast or reserved (240.0.0.0/4) address"
    } else {
        return Ok(());
    };
    bail!("{flag} {ip} {reason}: give a unicast address other hosts reach this one at")
}

/// One twilld per network namespace. Two daemons in one namespace manage
/// the same kernel state whatever their `-public-ip`: with vxlan the same
/// `flannel.<VNI>` (each rewriting its address to its own subnet every
/// reconcile), with host-gw the same main-table routes of protocol 241 (each
/// deleting the other's as not needed). The lock is an abstract Unix socket:
/// it belongs to the network namespace and disappears with the process,
/// even on SIGKILL, so it never goes stale. It is taken before etcd or the
/// kernel is touched.
fn instance_lock() -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(INSTANCE_LOCK)
        .context("cannot name the instance lock")?;
    match std::os::unix::net::UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let pid = lock_holder(&addr)
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            bail!(
                "another twilld is already running in this network namespace{pid}; one daemon per host"
            )
        }
        Err(e) => Err(e).context("cannot take the instance lock"),
    }
}

/// The abstract socket name of [`instance_lock`]. It had the public IP in
/// it (`twilld/<ip>`), which let a second daemon with another `-public-ip`
/// start; a daemon of that version still holds that name, not this one.
const INSTANCE_LOCK: &[u8] = b"twilld";

/// The pid of the process listening on the lock, from the credentials the
/// kernel records for a Unix socket connection (SO_PEERCRED): only for the
/// error message, so any failure just leaves it out.
fn lock_holder(addr: &std::os::unix::net::SocketAddr) -> Option<i32> {
    let stream = std::os::unix::net::UnixStream::connect_addr(addr).ok()?;
    let cred =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.pid())
}

async fn connect(config: EtcdConfig, retry: Duration) -> anyhow::Result<EtcdRegistry> {
    let mut logged = false;
    loop {
        match EtcdRegistry::connect(config.clone()).await {
            Ok(r) => return Ok(r),
            Err(
                e @ (EtcdError::InvalidSettings { .. }
                | EtcdError::InvalidEndpoint { .. }
                | EtcdError::TlsFile { .. }),
            ) => return Err(e.into()),
            Err(e) => {
                if logged {
                    debug!("etcd still unreachable: {e}");
                } else {
                    warn!("waiting for etcd at {}: {e}", config.endpoints.join(","));
                    logged = true;
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Waits until `<prefix>/config` holds a valid config whose backend can be
/// built and set up on this host: a missing or invalid config, an unknown
/// backend type, bad backend options or options this host cannot carry (an
/// `MTU` above the underlay's) are all logged (once per distinct message,
/// naming the key and the field) and waited on, since the operator fixes
/// them in etcd. Those are all found before the kernel is touched; any other
/// set-up failure is returned.
async fn wait_for_config(
    registry: &EtcdRegistry,
    backends: &BackendRegistry,
    underlay: &UnderlayInterface,
    public_ip: std::net::Ipv4Addr,
    retry: Duration,
    status: &Status,
) -> anyhow::Result<(NetworkConfig, Box<dyn Backend>, LocalSetup)> {
    let key = registry.config().config_key();
    let mut last = String::new();
    loop {
        let msg = match registry.get_config().await {
            Ok(cfg) => match backends.create(&cfg.backend) {
                Ok(mut backend) => {
                    let host = HostContext {
                        config: &cfg,
                        public_ip,
                        underlay,
                    };
                    match backend.setup(&host).await {
                        Ok(local) => return Ok((cfg, backend, local)),
                        Err(e) if e.is_config() => {
                            format!("waiting for a valid network config at {key}: Backend: {e}")
                        }
                        Err(e) => return Err(e).context("backend set-up failed"),
                    }
                }
                Err(e) => format!("waiting for a valid network config at {key}: Backend: {e}"),
            },
            Err(e) => {
                status
                    .etcd_errors
                    .fetch_add(u64::from(e.is_transient()), Ordering::Relaxed);
                match &e {
                    RegistryError::ConfigNotFound { .. } => {
                        format!("waiting for network config at {key}")
                    }
                    RegistryError::InvalidConfig { source, .. } => {
                        format!("waiting for a valid network config at {key}: {source}")
                    }
                    other => format!("waiting for a valid network config at {key}: {other}"),
                }
            }
        };
        if msg != last {
            warn!("{msg}");
            last = msg;
        }
        tokio::time::sleep(retry).await;
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let etcd_config = check_flags(&flags)?;
    let underlay = iface::choose(&flags.iface, &flags.iface_regex)?;
    let public_ip = match flags.public_ip {
        Some(ip) => ip,
        None => {
            check_public_ip(
                &format!("-iface {}: its address", underlay.name),
                underlay.addr,
            )?;
            underlay.addr
        }
    };
    let _instance = instance_lock()?;
    info!(iface = %underlay.name, %public_ip, mtu = underlay.mtu, "using interface {} ({public_ip}) for inter-host traffic", underlay.name);

    let status = Arc::new(Status::default());
    let _http = if flags.healthz_port == 0 {
        None
    } else {
        let addr = SocketAddr::from((flags.healthz_ip, flags.healthz_port));
        info!("serving /healthz, /readyz and /metrics on {addr}");
        Some(status::serve(addr, status.clone()).await?)
    };

    let etcd_ips: Vec<std::net::Ipv4Addr> = flags
        .etcd_endpoints
        .iter()
        .filter_map(|e| e.parse::<twill_etcd::EtcdEndpoint>().ok()?.ip())
        .filter_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let protected = iface::host_networks(&underlay, public_ip, &etcd_ips)?;
    // Before waiting for etcd: a route of ours over the host's own networks
    // (left by an older version, or planted with our protocol) may be what
    // cuts the host off etcd, and nothing else would ever remove it.
    for route in iface::remove_our_routes_over(&protected)? {
        warn!(
            "removed a route of ours over this host's own network: {} via {:?} (it would cut the host off its LAN, gateway or etcd)",
            route.dst, route.gateway
        );
    }
    let registry = Arc::new(connect(etcd_config, flags.retry_interval).await?);
    status.etcd_reachable.store(true, Ordering::Relaxed);
    let backends = BackendRegistry::with_builtins();
    let (config, mut backend, local) = wait_for_config(
        &registry,
        &backends,
        &underlay,
        public_ip,
        flags.retry_interval,
        &status,
    )
    .await?;
    info!(network = %config.network, subnet_len = config.subnet_len, backend = %config.backend.backend_type, "network config read");

    for net in protected
        .iter()
        .filter(|n| n.contains(config.network.network()) || config.network.contains(n.network()))
    {
        warn!(
            "Network {} overlaps this host's own network {net} (underlay {}, its gateway or etcd): subnets overlapping it are never used; choose a Network apart from the hosts' own",
            config.network, underlay.name
        );
    }

    let mut mgr_config = LeaseManagerConfig::new(local.attrs.clone());
    mgr_config.ttl = flags.lease_ttl;
    mgr_config.renew_margin =
        Duration::from_secs(flags.subnet_lease_renew_margin.saturating_mul(60));
    mgr_config.previous = subnet_file::previous_subnet(&flags.subnet_file);
    mgr_config.protected = protected;
    let mut manager = LeaseManager::new(registry.clone(), mgr_config);
    let mut events = manager.events();
    let held = loop {
        match manager.acquire().await {
            Ok(held) => break held,
            Err(e) => {
                status.etcd_errors.fetch_add(1, Ordering::Relaxed);
                warn!("cannot acquire a subnet lease yet: {e}; retrying");
                tokio::time::sleep(flags.retry_interval).await;
            }
        }
    };
    let handle = manager.spawn();
    status.lease_held.store(true, Ordering::Relaxed);
    let mut own = held.lease.key;
    activate(&mut backend, &held, &config, local.mtu, &flags)?;
    backend
        .activate(&held.lease)
        .await
        .context("backend activation failed")?;

    let mut agent = Agent {
        backend,
        status: status.clone(),
        reported: HashSet::new(),
        report_log: LogBudget::new(SKIP_LOG_LIMIT, SKIP_LOG_WINDOW),
    };
    let mut peers = handle.peers();
    let mut lease = handle.lease();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut stored_config = StoredConfig::Same;
    let mut tick = tokio::time::interval(flags.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // A PeerSet copy shares its leases (Arc): cheap, and no lock is held
    // across the reconcile.
    let set = peers.borrow_and_update().clone();
    agent.reconcile(&set).await;
    loop {
        tokio::select! {
            changed = peers.changed() => {
                if changed.is_err() { bail!("the lease manager stopped"); }
                let set = peers.borrow_and_update().clone();
                agent.reconcile(&set).await;
            }
            _ = tick.tick() => {
                let set = peers.borrow().clone();
                agent.reconcile(&set).await;
                check_config_drift(&registry, &config, &status, &mut stored_config).await;
            }
            changed = lease.changed() => {
                if changed.is_err() { bail!("the lease manager stopped"); }
                let current = lease.borrow_and_update().clone();
                status.lease_held.store(current.is_some(), Ordering::Relaxed);
                if let Some(held) = current {
                    if held.lease.key != own {
                        warn!(old = %own, new = %held.lease.key, "our subnet changed: re-activating");
                        own = held.lease.key;
                        activate(&mut agent.backend, &held, &config, local.mtu, &flags)?;
                        agent.backend.activate(&held.lease).await.context("backend activation failed")?;
                    }
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => log_event(&ev, &status),
                // A burst (a join storm) outran the event log; the
                // reconcile line still reports what changed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => debug!("{n} lease events not logged individually"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => bail!("the lease manager stopped"),
            },
            _ = sigterm.recv() => { info!("SIGTERM received"); break; }
            _ = sigint.recv() => { info!("SIGINT received"); break; }
        }
    }
    shutdown(handle, flags.release_on_exit).await;
    if flags.release_on_exit && flags.ip_masq {
        // The subnet is given back, so are the rules that mention it.
        if let Err(e) = masq::remove() {
            warn!("could not remove masquerade rules: {e:#}");
        }
    }
    Ok(())
}

/// What depends on our subnet outside the backend: subnet.env and masquerading.
fn activate(
    _backend: &mut Box<dyn Backend>,
    held: &HeldLease,
    config: &NetworkConfig,
    mtu: u32,
    flags: &Flags,
) -> anyhow::Result<()> {
    let env = SubnetEnv::new(config, &held.lease.key, mtu, flags.ip_masq);
    subnet_file::write_atomically(&flags.subnet_file, &env)?;
    info!(file = %flags.subnet_file.display(), subnet = %env.subnet, mtu, "subnet file written");
    if flags.ip_masq {
        masq::apply(config.network, held.lease.key.ipv4)
            .context("cannot install masquerade rules")?;
        info!("masquerade rules installed (nft table ip {})", masq::TABLE);
    }
    Ok(())
}

async fn shutdown(handle: LeaseHandle, release: bool) {
    if release {
        match handle.release().await {
            Ok(()) => info!("lease released"),
            Err(e) => warn!("could not release the lease: {e}"),
        }
    } else {
        handle.shutdown().await;
        info!("stopped; lease and kernel state kept for the next start");
    }
}

/// What the stored config looked like at the last check, so that each change
/// is logged once, not at every reconcile tick.
#[derive(Debug, Default, PartialEq)]
enum StoredConfig {
    /// The same as the running config.
    #[default]
    Same,
    /// Valid but different.
    Changed(NetworkConfig),
    /// Missing or invalid.
    Unusable(String),
}

/// A changed config is not applied while running: half of the hosts would
/// route the old network and half the new. Each change is logged once (and
/// a return to the running config too); the config stays the one read at
/// start-up until restart.
async fn check_config_drift(
    registry: &EtcdRegistry,
    running: &NetworkConfig,
    status: &Status,
    last: &mut StoredConfig,
) {
    let answer = registry.get_config().await;
    let reachable = !matches!(&answer, Err(e) if e.is_transient());
    if status.etcd_reachable.swap(reachable, Ordering::Relaxed) != reachable {
        if reachable {
            info!("etcd reachable again");
        } else {
            warn!("etcd unreachable: not ready until it answers again (the kernel state is kept)");
        }
    }
    let now = match answer {
        Ok(cfg) if cfg == *running => StoredConfig::Same,
        Ok(cfg) => StoredConfig::Changed(cfg),
        Err(e) if e.is_transient() => {
            status.etcd_errors.fetch_add(1, Ordering::Relaxed);
            debug!("cannot re-read the network config: {e}");
            return;
        }
        Err(e) => StoredConfig::Unusable(e.to_string()),
    };
    if now == *last {
        return;
    }
    match &now {
        StoredConfig::Same => info!(
            network = %running.network,
            "network config in etcd is the running one again"
        ),
        StoredConfig::Changed(cfg) => warn!(
            running = %running.network, stored = %cfg.network,
            "network config changed in etcd; still using the config read at start-up: restart twilld to apply it"
        ),
        StoredConfig::Unusable(reason) => warn!(
            running = %running.network,
            "network config in etcd is not usable ({reason}); still using the config read at start-up"
        ),
    }
    *last = now;
}

fn log_event(ev: &LeaseEvent, status: &Status) {
    match ev {
        LeaseEvent::Acquired { lease, attempts } => {
            info!(subnet = %lease.key, attempts, "lease acquired");
        }
        LeaseEvent::Reacquired { lease, previous } => {
            warn!(subnet = %lease.key, %previous, "lease re-acquired");
        }
        LeaseEvent::Renewed { key, ttl } => {
            status.renewals.fetch_add(1, Ordering::Relaxed);
            status.etcd_reachable.store(true, Ordering::Relaxed);
            info!(subnet = %key, ttl = ?ttl, "lease renewed");
        }
        LeaseEvent::RenewFailed { key, reason } => {
            status.etcd_errors.fetch_add(1, Ordering::Relaxed);
            status.etcd_reachable.store(false, Ordering::Relaxed);
            warn!(subnet = %key, "lease renewal failed, retrying: {reason}");
        }
        LeaseEvent::Overwritten { key, by } => {
            status.lease_overwrites.fetch_add(1, Ordering::Relaxed);
            error!(
                subnet = %key, writer = %by,
                "our lease {key} was overwritten in place with PublicIP {by}: restoring our value and keeping the subnet (someone with write access to etcd is claiming it)"
            );
        }
        LeaseEvent::Lost { key, reason } => {
            warn!(subnet = %key, "lease lost: {reason}; re-acquiring");
        }
        LeaseEvent::AcquireRetry { attempts, reason } => {
            status.etcd_errors.fetch_add(1, Ordering::Relaxed);
            warn!(attempts, "lease acquisition retry: {reason}");
        }
        LeaseEvent::AcquireFailed { reason } => error!("lease acquisition failed: {reason}"),
        LeaseEvent::PeerAdded(key) => {
            status.lease_events.fetch_add(1, Ordering::Relaxed);
            // Debug only: the lease core accepted the lease, but the backend
            // may still refuse it (a bad VtepMAC), which is logged as "peer
            // not programmed"; the info record of a programmed peer is the
            // "reconciled" line that applied its entries.
            debug!(peer = %key, "peer added");
        }
        LeaseEvent::PeerUpdated(key) => {
            status.lease_events.fetch_add(1, Ordering::Relaxed);
            info!(peer = %key, "peer updated");
        }
        LeaseEvent::PeerRemoved(key) => {
            status.lease_events.fetch_add(1, Ordering::Relaxed);
            info!(peer = %key, "peer removed");
        }
        // Logged once per key and reason by the lease manager itself.
        LeaseEvent::Skipped { key, reason, .. } => debug!(%key, "lease skipped: {reason}"),
        LeaseEvent::Resynced { peers } => info!(peers, "resynced with a full listing"),
        LeaseEvent::Released { key } => {
            info!(subnet = ?key.map(|k| k.to_string()), "lease released");
        }
        other => debug!(?other, "lease event"),
    }
}

struct Agent {
    backend: Box<dyn Backend>,
    status: Arc<Status>,
    /// Peers skipped at the last reconcile, with the reason: each is logged
    /// when it enters the set, and forgotten once programmed or gone, so a
    /// peer that goes bad again is reported again.
    reported: HashSet<(SubnetKey, String)>,
    /// Rate limit of the "peer not programmed" warnings.
    report_log: LogBudget,
}

impl Agent {
    /// Logs one line for the "not programmed" warnings not logged
    /// individually, if any.
    fn summarize_reports(&mut self) {
        if let Some(n) = self.report_log.take_suppressed() {
            warn!(
                count = n,
                "... and {n} more peers not programmed (see twill_leases_skipped and the debug log)"
            );
        }
    }

    async fn reconcile(&mut self, set: &PeerSet) {
        let peers: Vec<&SubnetLease> = set.leases.values().map(AsRef::as_ref).collect();
        let started = Instant::now();
        let result = self.backend.reconcile_refs(&peers).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let status = self.status.clone();
        let s = &*status;
        s.reconciles.fetch_add(1, Ordering::Relaxed);
        s.reconcile_micros.fetch_add(micros, Ordering::Relaxed);
        s.last_reconcile_micros.store(micros, Ordering::Relaxed);
        s.peers.store(peers.len() as u64, Ordering::Relaxed);
        match result {
            Ok(report) => {
                s.ops_applied
                    .fetch_add(report.applied as u64, Ordering::Relaxed);
                let now = Instant::now();
                if self.report_log.summary_due().is_some_and(|t| t <= now) {
                    self.summarize_reports();
                }
                let current: HashSet<(SubnetKey, String)> =
                    report.skipped.iter().cloned().collect();
                for skipped in &report.skipped {
                    if self.reported.contains(skipped) {
                        continue;
                    }
                    if self.report_log.admit(now) {
                        warn!(peer = %skipped.0, "peer not programmed: {}", skipped.1);
                    } else {
                        debug!(peer = %skipped.0, "peer not programmed: {}", skipped.1);
                    }
                }
                self.reported = current;
                s.leases_skipped.store(
                    (set.skipped + self.reported.len()) as u64,
                    Ordering::Relaxed,
                );
                for f in &report.failed {
                    warn!("reconcile: {f}");
                }
                if report.failed.is_empty() {
                    s.dataplane_ready.store(true, Ordering::Relaxed);
                } else {
                    s.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                }
                if report.planned > 0 {
                    info!(
                        peers = peers.len(),
                        planned = report.planned,
                        applied = report.applied,
                        failed = report.failed.len(),
                        duration_us = micros,
                        "reconciled"
                    );
                } else {
                    debug!(
                        peers = peers.len(),
                        duration_us = micros,
                        "reconciled, nothing to do"
                    );
                }
            }
            Err(e) => {
                s.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                error!("reconcile failed: {e}");
            }
        }
    }
}
