//! twill-wg-agent: a flannel-compatible agent embedded in another program,
//! without twilld: its flags → [`AgentOptions`] → [`Agent::run`] on the etcd
//! registry, with the backends the network config may ask for (`wireguard`
//! from this crate, or a built-in). It writes the same subnet.env as
//! flanneld and twilld.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use twill_agent::{parse_duration, Agent, AgentOptions, UnderlayInterface};
use twill_backend::BackendRegistry;
use twill_etcd::{EtcdConfig, EtcdRegistry};
use twill_netlink::NetlinkHandle;
use twill_wireguard_backend::{WireguardBackend, WireguardOptions};

/// A flannel-compatible agent with a userspace WireGuard backend.
#[derive(Debug, Parser)]
#[command(name = "twill-wg-agent", version)]
struct Flags {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// etcd prefix holding `config` and `subnets/`.
    #[arg(long, default_value = twill_model::DEFAULT_PREFIX)]
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
    /// Data path workers, each with a TUN queue and a UDP socket (default:
    /// one per core, at most 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=8))]
    queues: Option<u16>,
    /// Ask for the TUN device's segmentation offload and GRO (`false`: one
    /// packet per syscall, for a kernel whose offloads misbehave).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tun_offload: bool,
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
    let (key_file, port, queues) = (flags.key_file.clone(), flags.port, flags.queues);
    let tun_offload = flags.tun_offload;
    registry.register("wireguard", move |config| {
        let mut opts = WireguardOptions::from_config(config, key_file.clone())?;
        opts.port = port.unwrap_or(opts.port);
        opts.queues = queues.map_or(opts.queues, usize::from);
        opts.tun_offload = tun_offload;
        Ok(Box::new(WireguardBackend::new(opts)?))
    });
    registry
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let underlay = UnderlayInterface::find(&mut nl, &flags.iface)?.with_context(|| {
        format!(
            "--iface {} matches no interface with an address",
            flags.iface
        )
    })?;
    let mut options = AgentOptions::new(underlay);
    options.public_ip = flags.public_ip.or(options.public_ip);
    options.subnet_file = Some(flags.subnet_file.clone());
    options.lease_ttl = flags.lease_ttl;
    options.reconcile_interval = flags.reconcile_interval;
    options.release_on_exit = flags.release_on_exit;
    options.validate()?;
    info!(iface = %options.underlay.name, public_ip = ?options.public_ip, "using {} for inter-host traffic", options.underlay.name);

    let etcd = EtcdConfig::new(flags.etcd_endpoints.clone()).with_prefix(&flags.etcd_prefix);
    let registry = Arc::new(loop {
        match EtcdRegistry::connect(etcd.clone()).await {
            Ok(r) => break r,
            Err(e) => warn!("waiting for etcd: {e}"),
        }
        tokio::time::sleep(options.retry_interval).await;
    });
    let agent = Agent::new(registry, backends(&flags), options)?;
    let stop = agent.shutdown_handle();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        stop.shutdown();
    });
    Ok(agent.run().await?)
}
