//! twill-wg-agent: a flannel-compatible agent embedded in another program,
//! without twilld: the etcd registry, the lease manager and a backend chosen
//! by the network config (`wireguard` from this crate, or a built-in), and a
//! loop that reconciles on every peer change and on a timer. It writes the
//! same subnet.env as flanneld and twilld.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};
use twill_backend::{Backend, BackendRegistry, HostContext, UnderlayInterface};
use twill_etcd::{EtcdConfig, EtcdRegistry};
use twill_model::{NetworkConfig, SubnetEnv, SubnetKey, SubnetLease};
use twill_netlink::NetlinkHandle;
use twill_subnet::{LeaseEvent, LeaseManager, LeaseManagerConfig, Registry};
use twill_wireguard_backend::{WireguardBackend, WireguardOptions};

/// A flannel-compatible agent with a userspace WireGuard backend.
#[derive(Debug, Parser)]
#[command(name = "twill-wg-agent", version)]
struct Flags {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// etcd prefix holding `config` and `subnets/`.
    #[arg(long, default_value = "/coreos.com/network")]
    etcd_prefix: String,
    /// Underlay interface, by name or IPv4 address.
    #[arg(long)]
    iface: String,
    /// `PublicIP` to publish (default: the interface's address).
    #[arg(long)]
    public_ip: Option<std::net::Ipv4Addr>,
    /// The WireGuard private key file (created, mode 0600, if missing).
    #[arg(long, env = "WIREGUARD_KEY_FILE", default_value = "/run/flannel/wgkey")]
    key_file: PathBuf,
    /// Where to write FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU.
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// UDP port, ours and the peers' (overrides `Backend.ListenPort`).
    #[arg(long)]
    port: Option<u16>,
    /// TTL of our lease (`5s`, `24h`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Reconcile at least this often (`10s`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    reconcile_interval: Duration,
    /// Delete our lease on SIGTERM/SIGINT (default: keep it for the next start).
    #[arg(long)]
    release_on_exit: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    })
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(flags)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twill-wg-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The backends this agent knows: the built-ins and ours, which needs the
/// key file and port from our flags (hence a capturing factory).
fn backends(flags: &Flags) -> BackendRegistry {
    let mut registry = BackendRegistry::with_builtins();
    let (key_file, port) = (flags.key_file.clone(), flags.port);
    registry.register("wireguard", move |config| {
        let mut opts = WireguardOptions::from_config(config, key_file.clone())?;
        opts.port = port.unwrap_or(opts.port);
        Ok(Box::new(WireguardBackend::new(opts)?))
    });
    registry
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let underlay = UnderlayInterface::find(&mut nl, &flags.iface)?.with_context(|| {
        format!(
            "--iface {} matches no interface with an IPv4 address",
            flags.iface
        )
    })?;
    let public_ip = flags.public_ip.unwrap_or(underlay.addr);
    info!(iface = %underlay.name, %public_ip, "using {} for inter-host traffic", underlay.name);

    let etcd = EtcdConfig::new(flags.etcd_endpoints.clone()).with_prefix(&flags.etcd_prefix);
    let registry = Arc::new(loop {
        match EtcdRegistry::connect(etcd.clone()).await {
            Ok(r) => break r,
            Err(e) => warn!("waiting for etcd: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let config: NetworkConfig = loop {
        match registry.get_config().await {
            Ok(c) => break c,
            Err(e) => warn!("waiting for the network config: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    info!(network = %config.network, backend = %config.backend.backend_type, "network config read");

    let mut backend = backends(&flags).create(&config.backend)?;
    let host = HostContext {
        config: &config,
        public_ip,
        underlay: &underlay,
    };
    let local = backend
        .setup(&host)
        .await
        .context("backend set-up failed")?;

    let mut mgr = LeaseManagerConfig::new(local.attrs.clone());
    mgr.ttl = flags.lease_ttl;
    mgr.previous = std::fs::read_to_string(&flags.subnet_file)
        .ok()
        .and_then(|t| SubnetEnv::parse(&t).ok())
        .map(|env| env.key());
    let mut manager = LeaseManager::new(registry.clone(), mgr);
    let mut events = manager.events();
    let held = loop {
        match manager.acquire().await {
            Ok(held) => break held,
            Err(e) => warn!("cannot acquire a subnet lease yet: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let handle = manager.spawn();
    let mut own = held.lease.key;
    info!(subnet = %own, "lease acquired for {}", own.ipv4);
    activate(
        &mut backend,
        &held.lease,
        &config,
        local.mtu,
        &flags.subnet_file,
    )
    .await?;

    let mut peers = handle.peers();
    let mut lease = handle.lease();
    let mut reported = HashSet::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(flags.reconcile_interval);
    loop {
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { bail!("the lease manager stopped") },
            _ = tick.tick() => {}
            changed = lease.changed() => {
                if changed.is_err() { bail!("the lease manager stopped") }
                let current = lease.borrow_and_update().clone();
                if let Some(held) = current.filter(|h| h.lease.key != own) {
                    warn!(old = %own, new = %held.lease.key, "our subnet changed: re-activating");
                    own = held.lease.key;
                    activate(&mut backend, &held.lease, &config, local.mtu, &flags.subnet_file).await?;
                }
                continue;
            }
            ev = events.recv() => {
                match ev {
                    Ok(LeaseEvent::PeerAdded(k)) => info!(peer = %k, "peer added"),
                    Ok(LeaseEvent::PeerRemoved(k)) => info!(peer = %k, "peer removed"),
                    Ok(LeaseEvent::Skipped { key, reason, .. }) => warn!(%key, "lease skipped: {reason}"),
                    Ok(other) => debug!(?other, "lease event"),
                    Err(RecvError::Lagged(n)) => debug!("{n} lease events not logged"),
                    Err(RecvError::Closed) => bail!("the lease manager stopped"),
                }
                continue;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let set: Vec<SubnetLease> = peers
            .borrow_and_update()
            .leases
            .values()
            .map(|l| SubnetLease::clone(l))
            .collect();
        reconcile(&mut *backend, &set, &mut reported).await;
    }
    if flags.release_on_exit {
        handle.release().await?;
        info!("lease released");
    } else {
        handle.shutdown().await;
        info!("stopped; lease kept for the next start");
    }
    Ok(())
}

/// Our subnet is known: subnet.env, then the backend.
async fn activate(
    backend: &mut Box<dyn Backend>,
    own: &SubnetLease,
    config: &NetworkConfig,
    mtu: u32,
    subnet_file: &Path,
) -> anyhow::Result<()> {
    let env = SubnetEnv::new(config, &own.key, mtu, false);
    write_atomically(subnet_file, &env.render())
        .with_context(|| format!("cannot write {}", subnet_file.display()))?;
    info!(file = %subnet_file.display(), subnet = %env.subnet, mtu, "subnet file written");
    backend
        .activate(own)
        .await
        .context("backend activation failed")
}

async fn reconcile(
    backend: &mut dyn Backend,
    peers: &[SubnetLease],
    reported: &mut HashSet<(SubnetKey, String)>,
) {
    match backend.reconcile(peers).await {
        Ok(report) => {
            for skipped in report.skipped {
                if reported.insert(skipped.clone()) {
                    warn!(peer = %skipped.0, "peer not programmed: {}", skipped.1);
                }
            }
            for f in &report.failed {
                warn!("reconcile: {f}");
            }
            if report.planned > 0 {
                info!(
                    peers = peers.len(),
                    planned = report.planned,
                    applied = report.applied,
                    "reconciled"
                );
            }
        }
        Err(e) => warn!("reconcile failed: {e}"),
    }
}

/// Writes next to `path`, then renames: readers see the old or the new file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
