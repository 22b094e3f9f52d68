//! twilld: a flannel-compatible overlay agent, composed from the twill
//! crates: flanneld's flags → [`AgentOptions`] → [`Agent::run`] on an etcd
//! registry, plus what only a daemon has (the instance lock, signals, the
//! HTTP status endpoint). The agent loop itself is twill-agent's.

// Modules of a binary: `pub` marks what main uses, nothing is exported.
#![allow(unreachable_pub)]

mod diagnose;
mod flags;
mod iface;
mod malloc;
mod status;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};
use twill_agent::{Agent, AgentError, AgentOption, AgentOptions, AgentStatus, BackendRegistry};
use twill_etcd::{EtcdConfig, EtcdError, EtcdRegistry, EtcdTls};
use twill_model::{Ipv4Network, Ipv6Network};

use crate::flags::Flags;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    // `twilld diagnose [the daemon's flags] [--json]`: the same flags, so the
    // daemon's unit file or environment can be reused as is.
    let diagnose = args.get(1).map(String::as_str) == Some("diagnose");
    if diagnose {
        args.remove(1);
    }
    let flags = match Flags::parse_from_go_style(args) {
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
    if diagnose {
        return run_diagnose(&flags);
    }
    init_logging(&flags);
    // Before the runtime and the backend start their threads.
    malloc::configure();
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
            eprintln!("twilld: {}", one_line(&chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// `twilld diagnose`: exit 0 when all is well, 1 with problems, 2 when it
/// cannot diagnose at all.
fn run_diagnose(flags: &Flags) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld diagnose: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(diagnose::run(flags)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twilld diagnose: {}", one_line(&chain(&e)));
            ExitCode::from(2)
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
/// An error and its causes, each cause once: the library errors put their
/// cause in their own message and also give it as their source, so
/// anyhow's `{:#}` would print it two or three times.
fn chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

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
    let mut config = EtcdConfig::new(flags.etcd_endpoints.clone()).with_prefix(&flags.etcd_prefix);
    // The lease manager makes one request at a time: one held by a member
    // whose packets are dropped must give up early enough for the renewal
    // behind it to go round the other members before the lease expires.
    // 10 s (the default) with flannel's 24 h TTL; a fifth of a short one.
    let request = config
        .request_timeout
        .min(flags.lease_ttl / 5)
        .max(Duration::from_secs(1));
    let dial = config.dial_timeout;
    config = config.with_timeouts(dial, request);
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

/// flanneld's flags as the agent's options. Checked here, before the
/// instance lock, etcd or the kernel: each problem is one line naming the
/// flag.
fn agent_options(
    flags: &Flags,
    underlay: twill_agent::UnderlayInterface,
) -> anyhow::Result<AgentOptions> {
    let iface = underlay.name.clone();
    let mut o = AgentOptions::new(underlay);
    o.public_ip = flags.public_ip.or(o.public_ip);
    o.public_ipv6 = flags.public_ipv6.or(o.public_ipv6);
    o.subnet_file = Some(flags.subnet_file.clone());
    o.lease_ttl = flags.lease_ttl;
    o.renew_margin = Duration::from_secs(flags.subnet_lease_renew_margin.saturating_mul(60));
    o.reconcile_interval = flags.reconcile_interval;
    o.retry_interval = flags.retry_interval;
    o.ip_masq = flags.ip_masq;
    o.release_on_exit = flags.release_on_exit;
    o.health.enabled = flags.peer_health;
    o.health.interval = flags.peer_health_interval;
    o.health.max_probes_per_second = flags.peer_health_budget;
    // The etcd endpoints given as addresses; DNS names are not resolved.
    for ip in flags
        .etcd_endpoints
        .iter()
        .filter_map(|e| e.parse::<twill_etcd::EtcdEndpoint>().ok()?.ip())
    {
        match ip {
            std::net::IpAddr::V4(v4) => o.protected.extend(Ipv4Network::new(v4, 32).ok()),
            std::net::IpAddr::V6(v6) => o.protected_v6.extend(Ipv6Network::new(v6, 128).ok()),
        }
    }
    o.validate().map_err(|e| flag_error(flags, &iface, e))?;
    Ok(o)
}

/// An agent error, with an option named by the flag that sets it.
fn flag_error(flags: &Flags, iface: &str, e: AgentError) -> anyhow::Error {
    match e {
        AgentError::InvalidOption {
            option,
            value,
            reason,
        } => {
            let flag = match option {
                AgentOption::PublicIp if flags.public_ip.is_some() => "-public-ip".to_string(),
                AgentOption::PublicIp => format!("-iface {iface}: its address"),
                AgentOption::PublicIpv6 if flags.public_ipv6.is_some() => "-public-ipv6".into(),
                AgentOption::PublicIpv6 => format!("-iface {iface}: its IPv6 address"),
                AgentOption::Underlay => "-iface".into(),
                AgentOption::SubnetFile => "-subnet-file".into(),
                AgentOption::LeaseTtl => "-lease-ttl".into(),
                AgentOption::RenewMargin => "-subnet-lease-renew-margin".into(),
                AgentOption::ReconcileInterval => "-reconcile-interval".into(),
                AgentOption::RetryInterval => "-retry-interval".into(),
                AgentOption::HealthInterval => "-peer-health-interval".into(),
                AgentOption::HealthBudget => "-peer-health-budget".into(),
                other => other.to_string(),
            };
            anyhow::anyhow!("{flag} {value} {reason}")
        }
        other => other.into(),
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let etcd_config = check_flags(&flags)?;
    let underlay = iface::choose(&flags.iface, &flags.iface_regex)?;
    let options = agent_options(&flags, underlay)?;
    let _instance = instance_lock()?;
    let (underlay, public_ip) = (&options.underlay, options.public_ip);
    let addrs: Vec<String> = public_ip
        .map(|ip| ip.to_string())
        .into_iter()
        .chain(options.public_ipv6.map(|ip| ip.to_string()))
        .collect();
    info!(iface = %underlay.name, public_ip = ?public_ip, public_ipv6 = ?options.public_ipv6, mtu = underlay.mtu, "using interface {} ({}) for inter-host traffic", underlay.name, addrs.join(", "));

    let status = Arc::new(AgentStatus::default());
    let _http = if flags.healthz_port == 0 {
        None
    } else {
        let addr = SocketAddr::from((flags.healthz_ip, flags.healthz_port));
        info!("serving /healthz, /readyz and /metrics on {addr}");
        let source = status.clone();
        Some(status::serve(addr, Arc::new(move || source.snapshot())).await?)
    };

    // Before waiting for etcd: a route of ours over the host's own networks
    // (left by an older version, or planted with our protocol) may be what
    // cuts the host off etcd, and nothing else would ever remove it. (The
    // agent checks again once running.)
    let mut protected = twill_agent::host::host_networks(underlay, public_ip)
        .context("reading this host's networks")?;
    protected.extend(options.protected.iter().copied());
    let mut protected6 = twill_agent::host::host_networks6(underlay, options.public_ipv6)
        .context("reading this host's networks")?;
    protected6.extend(options.protected_v6.iter().copied());
    let removed = twill_agent::host::remove_our_routes_over(&protected)
        .context("removing routes of ours over this host's networks")?
        .iter()
        .map(|r| format!("{} via {:?}", r.dst, r.gateway))
        .chain(
            twill_agent::host::remove_our_routes_over6(&protected6)
                .context("removing routes of ours over this host's networks")?
                .iter()
                .map(|r| format!("{} via {:?}", r.dst, r.gateway)),
        )
        .collect::<Vec<_>>();
    for route in removed {
        warn!(
            "removed a route of ours over this host's own network: {route} (it would cut the host off its LAN, gateway or etcd)"
        );
    }
    let registry = Arc::new(connect(etcd_config, flags.retry_interval).await?);
    let iface = options.underlay.name.clone();
    let agent =
        Agent::new(registry, BackendRegistry::with_builtins(), options)?.with_status(status);

    tokio::spawn(malloc::release_after_reconciles(agent.events()));
    let stop = agent.shutdown_handle();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM received"),
            _ = sigint.recv() => info!("SIGINT received"),
        }
        stop.shutdown();
    });
    agent.run().await.map_err(|e| flag_error(&flags, &iface, e))
}
