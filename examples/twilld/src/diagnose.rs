//! `twilld diagnose`: on one host, reads etcd, the kernel and the running
//! daemon's status, probes every peer through the overlay and over the
//! underlay, and prints a per-peer table, host checks, and one line per
//! problem saying what is wrong and what to do. Exit status 0 only when
//! nothing is wrong; `--json` for tools.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twill_agent::health::{self, HealthOptions, ProbeTarget};
use twill_agent::{Reachability, UnreachableCause};
use twill_etcd::EtcdRegistry;
use twill_model::{NetworkConfig, PeerVerdict, SubnetLease};
use twill_netlink::{NetlinkHandle, MAIN_TABLE, TWILL_RTPROT};

use crate::flags::Flags;

/// Longest wait for etcd, and for the daemon's status endpoint.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the probes run: a peer still without a verdict by then is
/// reported as not answering in time.
const PROBE_DEADLINE: Duration = Duration::from_secs(6);

/// One line of the peer table.
#[derive(Debug)]
struct PeerRow {
    public_ip: Ipv4Addr,
    subnet: String,
    /// `ok`, or why the lease is not programmed.
    lease: String,
    /// `ok`, or what the kernel lacks.
    kernel: String,
    /// `reachable`, `unreachable`, `not probed`...
    overlay: String,
    rtt: Option<Duration>,
    /// The probes' verdict, when probed.
    verdict: Option<Reachability>,
}

/// One host check.
#[derive(Debug)]
struct HostCheck {
    name: String,
    ok: bool,
    detail: String,
}

/// What is wrong and what to do, one line.
#[derive(Debug)]
struct Problem {
    what: String,
    todo: String,
}

#[derive(Debug, Default)]
struct Report {
    host: String,
    peers: Vec<PeerRow>,
    checks: Vec<HostCheck>,
    problems: Vec<Problem>,
}

impl Report {
    fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(HostCheck {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    fn problem(&mut self, what: impl Into<String>, todo: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            todo: todo.into(),
        });
    }
}

/// Runs the diagnosis with the daemon's flags; 0 when all is well, 1 when
/// a problem was found.
///
/// # Errors
/// What prevents a diagnosis at all (bad flags, no underlay interface).
pub async fn run(flags: &Flags) -> anyhow::Result<ExitCode> {
    let etcd_config = super::check_flags(flags)?;
    let underlay = crate::iface::choose(&flags.iface, &flags.iface_regex)?;
    let public_ip = flags
        .public_ip
        .or(underlay.addr)
        .context("-iface: the underlay has no IPv4 address (diagnose checks IPv4 networks)")?;
    let mut r = Report {
        host: format!("{public_ip} ({})", underlay.name),
        ..Report::default()
    };

    let endpoints = flags.etcd_endpoints.join(",");
    let etcd = match tokio::time::timeout(ANSWER_TIMEOUT, EtcdRegistry::connect(etcd_config)).await
    {
        Ok(Ok(registry)) => Some(registry),
        Ok(Err(e)) => {
            r.check("etcd", false, format!("{endpoints}: {e}"));
            r.problem(
                format!("etcd at {endpoints} does not answer: {e}"),
                "check -etcd-endpoints, that etcd runs, and that this host reaches it (and its TLS flags)",
            );
            None
        }
        Err(_) => {
            r.check(
                "etcd",
                false,
                format!("{endpoints}: no answer in {ANSWER_TIMEOUT:?}"),
            );
            r.problem(
                format!("etcd at {endpoints} does not answer within {ANSWER_TIMEOUT:?}"),
                "check -etcd-endpoints, that etcd runs, and that this host reaches it",
            );
            None
        }
    };
    let mut state = None;
    let mut network = None;
    if let Some(etcd) = &etcd {
        match read_etcd(etcd).await {
            Ok((config, leases)) => {
                r.check(
                    "etcd",
                    true,
                    format!(
                        "{endpoints}: network {}, {} leases",
                        config.network,
                        leases.len()
                    ),
                );
                network = Some(config.network);
                state = Some((config, leases));
            }
            Err(e) => {
                r.check("etcd", false, format!("{endpoints}: {e}"));
                r.problem(
                    format!("cannot read the network config or the leases: {e}"),
                    format!(
                        "check -etcd-prefix ({}) and the config at {}/config",
                        flags.etcd_prefix, flags.etcd_prefix
                    ),
                );
            }
        }
    }
    agent_status(flags, &mut r).await;
    host_sysctls(&underlay.name, &mut r);
    if let Some((config, leases)) = state {
        let own = leases
            .iter()
            .find(|l| !l.key.is_ipv6_only() && l.attrs.public_ip == public_ip)
            .cloned();
        match &own {
            Some(l) => {
                let ttl = match etcd.as_ref() {
                    Some(e) => lease_ttl(e, &flags.etcd_prefix, l).await,
                    None => None,
                };
                let detail = match ttl {
                    Some(Some(t)) => format!("{} expires in {}", l.key, human(t)),
                    Some(None) => format!("{} (a reservation: no TTL)", l.key),
                    None => format!("{} (TTL not read)", l.key),
                };
                r.check("our lease", true, detail);
                if let Some(Some(t)) = ttl {
                    if t < Duration::from_secs(flags.subnet_lease_renew_margin.saturating_mul(60)) {
                        r.problem(
                            format!("our lease {} expires in {} and was not renewed", l.key, human(t)),
                            "twilld renews it before expiry: check that it runs and reaches etcd (its log says why renewals fail)",
                        );
                    }
                }
            }
            None => {
                r.check(
                    "our lease",
                    false,
                    format!("no lease with PublicIP {public_ip}"),
                );
                r.problem(
                    format!("etcd holds no lease with this host's PublicIP {public_ip}"),
                    "start twilld on this host (with the same -iface/-public-ip), or check -public-ip",
                );
            }
        }
        overlay_checks(
            &config,
            &leases,
            own.as_ref(),
            public_ip,
            &underlay,
            flags,
            &mut r,
        )
        .await;
    }
    forward_policy(&mut r, network);
    if flags.json {
        println!("{}", to_json(&r));
    } else {
        print!("{}", to_text(&r));
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn read_etcd(etcd: &EtcdRegistry) -> anyhow::Result<(NetworkConfig, Vec<SubnetLease>)> {
    let config = tokio::time::timeout(ANSWER_TIMEOUT, etcd.read_config())
        .await
        .context("no answer")??;
    let listing = tokio::time::timeout(ANSWER_TIMEOUT, etcd.list())
        .await
        .context("no answer")??;
    Ok((config, listing.leases))
}

/// The remaining TTL of `lease`'s key: `Some(None)` for a key without one
/// (a reservation), `None` when it cannot be read.
async fn lease_ttl(
    etcd: &EtcdRegistry,
    prefix: &str,
    lease: &SubnetLease,
) -> Option<Option<Duration>> {
    let mut client = etcd.client().clone();
    let key = format!("{}/subnets/{}", prefix.trim_end_matches('/'), lease.key);
    let got = tokio::time::timeout(ANSWER_TIMEOUT, client.get(key, None))
        .await
        .ok()?
        .ok()?;
    let id = got.kvs().first()?.lease();
    if id == 0 {
        return Some(None);
    }
    let ttl = tokio::time::timeout(ANSWER_TIMEOUT, client.lease_time_to_live(id, None))
        .await
        .ok()?
        .ok()?
        .ttl();
    Some(u64::try_from(ttl).ok().map(Duration::from_secs))
}

/// The running daemon's `/readyz`, when it serves one (`-healthz-port`).
async fn agent_status(flags: &Flags, r: &mut Report) {
    if flags.healthz_port == 0 {
        r.check("twilld status", true, "not checked: -healthz-port is 0");
        return;
    }
    let ip = if flags.healthz_ip.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        flags.healthz_ip
    };
    let addr = SocketAddr::from((ip, flags.healthz_port));
    match tokio::time::timeout(ANSWER_TIMEOUT, get(addr, "/readyz")).await {
        Ok(Ok((code, body))) => {
            let summary = body.lines().collect::<Vec<_>>().join("; ");
            if code == 200 {
                r.check(
                    "twilld status",
                    true,
                    format!("http://{addr}/readyz: {summary}"),
                );
            } else {
                r.check(
                    "twilld status",
                    false,
                    format!("http://{addr}/readyz {code}: {summary}"),
                );
                r.problem(
                    format!("twilld reports not ready (http://{addr}/readyz answers {code})"),
                    "its log says why: no lease, the dataplane not programmed, or etcd unreachable",
                );
            }
        }
        Ok(Err(e)) => {
            r.check("twilld status", false, format!("http://{addr}/readyz: {e}"));
            r.problem(
                format!("twilld does not answer at http://{addr}/readyz ({e})"),
                "start twilld on this host (or give diagnose its -healthz-ip/-healthz-port)",
            );
        }
        Err(_) => {
            r.check(
                "twilld status",
                false,
                format!("http://{addr}/readyz: no answer"),
            );
            r.problem(
                format!("twilld does not answer at http://{addr}/readyz within {ANSWER_TIMEOUT:?}"),
                "check that twilld runs and is not stuck (its log)",
            );
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    Ok((code, body.to_string()))
}

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn host_sysctls(underlay: &str, r: &mut Report) {
    match sysctl("/proc/sys/net/ipv4/ip_forward") {
        Some(1) => r.check("ip_forward", true, "1"),
        Some(v) => {
            r.check("ip_forward", false, v.to_string());
            r.problem(
                format!("net.ipv4.ip_forward is {v}: this host does not forward pod traffic"),
                "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d)",
            );
        }
        None => r.check("ip_forward", false, "unreadable"),
    }
    let all = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let dev = sysctl(&format!("/proc/sys/net/ipv4/conf/{underlay}/rp_filter")).unwrap_or(0);
    // The kernel applies the larger of `all` and the device's value.
    let effective = all.max(dev);
    r.check(
        format!("rp_filter ({underlay})"),
        effective != 1,
        format!("all={all} {underlay}={dev}"),
    );
    if effective == 1 {
        r.problem(
            format!("rp_filter is strict (1) on {underlay}: packets arriving where the reply would not leave are dropped"),
            format!("use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{underlay}.rp_filter=2"),
        );
    }
}

/// FORWARD chains with policy drop and no rule for the network: pods' traffic
/// through this host is dropped (Docker sets such a policy).
fn forward_policy(r: &mut Report, network: Option<twill_model::Ipv4Network>) {
    let Ok(out) = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
    else {
        r.check("FORWARD policy", true, "not checked: nft is not installed");
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        r.check(
            "FORWARD policy",
            true,
            "not checked: nft's answer did not parse",
        );
        return;
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let dropping: Vec<String> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .map(|c| {
            format!(
                "{} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["table"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if dropping.is_empty() {
        r.check("FORWARD policy", true, "accept");
    } else {
        let network = network.map_or("<Network>".into(), |n| n.to_string());
        r.check(
            "FORWARD policy",
            false,
            format!("drop in {}", dropping.join(", ")),
        );
        r.problem(
            format!("the FORWARD chain {} drops by default", dropping.join(", ")),
            format!(
                "accept the pod network in it: nft add rule {} ip saddr {network} accept; nft add rule {} ip daddr {network} accept",
                dropping.first().cloned().unwrap_or_default(),
                dropping.first().cloned().unwrap_or_default(),
            ),
        );
    }
}

/// The overlay device's TX checksum offload, reported as a state, not a
/// problem: it only breaks VXLAN behind some NATs (flannel#2152), which this
/// host cannot see.
fn offload_state(dev: &str, r: &mut Report) {
    let name = format!("checksum offload ({dev})");
    let Ok(out) = std::process::Command::new("ethtool")
        .args(["-k", dev])
        .output()
    else {
        r.check(name, true, "not checked: ethtool is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let state = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
        .map(str::trim);
    match state {
        Some(state) => r.check(
            name,
            true,
            format!("tx-checksumming {state} (behind NAT, if only the tunnel fails: ethtool -K {dev} tx-checksum-ip-generic off)"),
        ),
        None => r.check(name, true, "not reported by ethtool"),
    }
}

#[allow(clippy::too_many_lines)]
async fn overlay_checks(
    config: &NetworkConfig,
    leases: &[SubnetLease],
    own: Option<&SubnetLease>,
    public_ip: Ipv4Addr,
    underlay: &twill_agent::UnderlayInterface,
    flags: &Flags,
    r: &mut Report,
) {
    let backend = config.backend.backend_type.clone();
    let tunnel = health::probe_mode(config);
    let vxlan = config
        .backend
        .parse_as::<twill_backend::VxlanOptions>()
        .ok()
        .filter(|_| backend == "vxlan");
    let dev_name = vxlan.as_ref().map(twill_backend::VxlanOptions::device_name);
    let peers: Vec<&SubnetLease> = leases
        .iter()
        .filter(|l| {
            matches!(
                config.check_peer(l, own.map(|o| &o.key), public_ip),
                PeerVerdict::Peer
            )
        })
        .collect();

    // The kernel, read once (netlink calls block: off the runtime).
    let underlay_index = underlay.index;
    let dev = dev_name.clone();
    let kernel = tokio::task::spawn_blocking(move || read_kernel(dev.as_deref()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|k| k);
    let kernel = match kernel {
        Ok(k) => Some(k),
        Err(e) => {
            r.problem(
                format!("cannot read the kernel's state: {e:#}"),
                "run diagnose as root on the host",
            );
            None
        }
    };

    if let (Some(k), Some(name), Some(opts)) = (&kernel, &dev_name, &vxlan) {
        match &k.link {
            None => {
                r.check(name.clone(), false, "missing");
                r.problem(
                    format!("{name} does not exist"),
                    "twilld creates it when it starts with a lease: check that it runs (its log)",
                );
            }
            Some(link) => {
                let overhead = twill_backend::VXLAN_OVERHEAD;
                let want = opts.mtu.unwrap_or(underlay.mtu.saturating_sub(overhead));
                let fits = underlay.mtu.saturating_sub(overhead);
                let port = link.vxlan.as_ref().map_or(0, |v| v.port);
                r.check(
                    name.clone(),
                    link.up && link.mtu <= fits,
                    format!(
                        "{}, MTU {} (underlay {} MTU {} - {overhead}), UDP port {port}",
                        if link.up { "up" } else { "down" },
                        link.mtu,
                        underlay.name,
                        underlay.mtu
                    ),
                );
                offload_state(name, r);
                if !link.up {
                    r.problem(
                        format!("{name} is down"),
                        format!(
                            "ip link set {name} up (twilld sets it up at start; check its log)"
                        ),
                    );
                }
                if link.mtu > fits {
                    r.problem(
                        format!(
                            "{name} MTU {} is more than the underlay {}'s MTU {} minus VXLAN's {overhead} bytes ({fits}): pod packets over {fits} bytes are dropped",
                            link.mtu, underlay.name, underlay.mtu
                        ),
                        format!("restart twilld so that it sets {name} to {fits} (and pods read FLANNEL_MTU again), or raise {}'s MTU back", underlay.name),
                    );
                } else if link.mtu != want {
                    r.problem(
                        format!(
                            "{name} MTU {} is not the {want} twilld sets for underlay {} MTU {}",
                            link.mtu, underlay.name, underlay.mtu
                        ),
                        "restart twilld: it sets the MTU at start, and pods get it from subnet.env",
                    );
                }
                if let Ok(text) = std::fs::read_to_string(&flags.subnet_file) {
                    let env_mtu = text
                        .lines()
                        .find_map(|l| l.strip_prefix("FLANNEL_MTU=")?.trim().parse::<u32>().ok());
                    if let Some(env_mtu) = env_mtu.filter(|m| *m != link.mtu) {
                        r.problem(
                            format!("{} says FLANNEL_MTU={env_mtu} but {name} has MTU {}: pods use the wrong MTU", flags.subnet_file.display(), link.mtu),
                            "restart twilld (it rewrites subnet.env), then restart the pods so they read it",
                        );
                    }
                }
            }
        }
    }

    // Per peer: lease, kernel entries, probes.
    let targets: Vec<ProbeTarget> = peers
        .iter()
        .filter_map(|l| tunnel.and_then(|t| health::target_of(l, t)))
        .collect();
    let probe_options = {
        let mut o = HealthOptions::default();
        o.interval = Duration::from_millis(500);
        o.timeout = Duration::from_millis(800);
        o.misses = 2;
        o.max_probes_per_second = 1000;
        o
    };
    let deadline = Instant::now() + PROBE_DEADLINE;
    let probed = match tunnel {
        Some(t) if !targets.is_empty() => {
            let targets = targets.clone();
            tokio::task::spawn_blocking(move || {
                health::probe_once(&targets, t, probe_options, deadline)
            })
            .await
            .ok()
        }
        _ => None,
    };
    let probed = match probed {
        Some(Ok(report)) => Some(report),
        Some(Err(e)) => {
            r.problem(
                format!("cannot probe peers: {e}"),
                "run diagnose as root (it sends ICMP echoes)",
            );
            None
        }
        None => None,
    };
    let port = tunnel.flatten();
    let mut expected_routes = Vec::new();
    for lease in leases.iter().filter(|l| own.is_none_or(|o| o.key != l.key)) {
        let verdict = config.check_peer(lease, own.map(|o| &o.key), public_ip);
        let mut row = PeerRow {
            public_ip: lease.attrs.public_ip,
            subnet: lease.key.ipv4.to_string(),
            lease: "ok".into(),
            kernel: "-".into(),
            overlay: "not probed".into(),
            rtt: None,
            verdict: None,
        };
        if let PeerVerdict::Skip(reason) = &verdict {
            row.lease = format!("skipped: {reason}");
            r.problem(
                format!(
                    "lease {} (PublicIP {}) is not usable: {reason}",
                    lease.key, lease.attrs.public_ip
                ),
                "fix or delete the key in etcd (its writer is another host or a person)",
            );
            r.peers.push(row);
            continue;
        }
        let mac = lease
            .attrs
            .backend_data_as::<serde_json::Value>()
            .ok()
            .and_then(|d| {
                d.get("VtepMAC")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .and_then(|m| m.parse::<twill_netlink::MacAddr>().ok());
        if let Some(k) = &kernel {
            let missing = kernel_entries(k, lease, mac, &backend, underlay_index);
            expected_routes.push(lease.key.ipv4);
            if missing.is_empty() {
                row.kernel = "ok".into();
            } else {
                row.kernel = format!("missing {}", missing.join(", "));
                r.problem(
                    format!(
                        "peer {} (subnet {}): the kernel lacks its {}",
                        lease.attrs.public_ip,
                        lease.key.ipv4,
                        missing.join(", ")
                    ),
                    "twilld programs it at its next reconcile; if it stays missing, its log says why (\"peer not programmed\")",
                );
            }
        }
        if let Some(report) = &probed {
            if let Some(h) = report.peers.iter().find(|h| h.key == lease.key) {
                row.rtt = h.rtt;
                row.verdict = Some(h.reachability);
                row.overlay = match h.reachability {
                    Reachability::Reachable => "reachable".into(),
                    Reachability::Unreachable(cause) => {
                        let (what, todo) = unreachable_advice(lease, public_ip, cause);
                        r.problem(what, todo);
                        match cause {
                            UnreachableCause::TunnelBlocked { port } => {
                                format!("unreachable (UDP {port} blocked)")
                            }
                            UnreachableCause::HostDown => "unreachable (host down)".into(),
                            _ => "unreachable".into(),
                        }
                    }
                    _ => {
                        r.problem(
                            format!(
                                "peer {} (subnet {}) gave no verdict within {PROBE_DEADLINE:?}",
                                lease.attrs.public_ip, lease.key.ipv4
                            ),
                            "run diagnose again; a host this slow to answer is overloaded",
                        );
                        "no verdict".into()
                    }
                };
            }
        }
        r.peers.push(row);
    }
    if let Some(p) = port {
        let blocked = r
            .peers
            .iter()
            .filter(|p| {
                matches!(
                    p.verdict,
                    Some(Reachability::Unreachable(
                        UnreachableCause::TunnelBlocked { .. }
                    ))
                )
            })
            .count();
        let answering = r
            .peers
            .iter()
            .filter(|p| p.verdict == Some(Reachability::Reachable))
            .count();
        r.check(
            format!("VXLAN port {p}"),
            blocked == 0,
            format!(
                "{answering} of {} peers answer through the tunnel, {blocked} blocked",
                r.peers.len()
            ),
        );
    }
    if let Some(k) = &kernel {
        let through: Option<u32> = match backend.as_str() {
            "vxlan" => k.link.as_ref().map(|l| l.index),
            "host-gw" => Some(underlay_index),
            _ => None,
        };
        for route in k.routes.iter().filter(|rt| {
            rt.protocol == TWILL_RTPROT
                && through.is_some_and(|i| rt.oif == Some(i))
                && config.network.contains(rt.dst.network())
                && !expected_routes.contains(&rt.dst)
                && own.is_none_or(|o| o.key.ipv4 != rt.dst)
        }) {
            r.problem(
                format!(
                    "stale route {} via {} (ours, proto {TWILL_RTPROT}): no lease in etcd has this subnet, so its traffic goes to a host that left",
                    route.dst,
                    route.gateway.map_or("-".into(), |g| g.to_string())
                ),
                format!(
                    "twilld removes it at its next full reconcile (-reconcile-interval, {}); to remove it now: ip route del {}",
                    human(flags.reconcile_interval),
                    route.dst
                ),
            );
        }
    }
}

fn unreachable_advice(
    lease: &SubnetLease,
    ours: Ipv4Addr,
    cause: UnreachableCause,
) -> (String, String) {
    let peer = lease.attrs.public_ip;
    let subnet = lease.key.ipv4;
    match cause {
        UnreachableCause::TunnelBlocked { port } => (
            format!("peer {peer} (subnet {subnet}) is unreachable through the tunnel but answers on the underlay: VXLAN's UDP port {port} is dropped between {ours} and {peer}"),
            format!("allow UDP port {port} both ways between {ours} and {peer} (host firewall, security group, hypervisor)"),
        ),
        UnreachableCause::HostDown => (
            format!("peer {peer} (subnet {subnet}) answers neither through the tunnel nor on the underlay"),
            format!("check that {peer} is up and reachable from this host (ping {peer}); if it left for good, its lease expires"),
        ),
        _ => (
            format!("peer {peer} (subnet {subnet}) does not answer"),
            format!("check that {peer} is up and that ICMP is allowed to it"),
        ),
    }
}

/// What the kernel holds, for the checks.
struct Kernel {
    link: Option<twill_netlink::Link>,
    routes: Vec<twill_netlink::Route>,
    neigh: Vec<twill_netlink::Neighbour>,
    fdb: Vec<twill_netlink::FdbEntry>,
}

fn read_kernel(dev: Option<&str>) -> anyhow::Result<Kernel> {
    let mut h = NetlinkHandle::new().context("netlink")?;
    let link = match dev {
        Some(d) => h.link().find(d).context("reading the overlay device")?,
        None => None,
    };
    let index = link.as_ref().map(|l| l.index);
    let routes = h.route().list(Some(MAIN_TABLE)).context("reading routes")?;
    let (neigh, fdb) = match index {
        Some(i) => (
            h.neighbour().list(Some(i)).context("reading neighbours")?,
            h.fdb().list(Some(i)).context("reading the FDB")?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Kernel {
        link,
        routes,
        neigh,
        fdb,
    })
}

/// The kernel entries `lease` needs that are missing or wrong.
fn kernel_entries(
    k: &Kernel,
    lease: &SubnetLease,
    mac: Option<twill_netlink::MacAddr>,
    backend: &str,
    underlay_index: u32,
) -> Vec<&'static str> {
    let subnet = lease.key.ipv4;
    let gw = subnet.network();
    let public = lease.attrs.public_ip;
    let mut missing = Vec::new();
    match backend {
        "vxlan" => {
            let Some(dev) = k.link.as_ref().map(|l| l.index) else {
                return vec!["overlay device"];
            };
            if !k
                .routes
                .iter()
                .any(|r| r.dst == subnet && r.gateway == Some(gw) && r.oif == Some(dev) && r.onlink)
            {
                missing.push("route");
            }
            if !k
                .neigh
                .iter()
                .any(|n| n.ip == gw && mac.is_some() && n.mac == mac)
            {
                missing.push("ARP entry");
            }
            if !k
                .fdb
                .iter()
                .any(|f| mac == Some(f.mac) && f.dst == Some(public))
            {
                missing.push("FDB entry");
            }
        }
        "host-gw"
            if !k.routes.iter().any(|r| {
                r.dst == subnet && r.gateway == Some(public) && r.oif == Some(underlay_index)
            }) =>
        {
            missing.push("route");
        }
        _ => {}
    }
    missing
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn to_text(r: &Report) -> String {
    let mut s = format!("twilld diagnose on {}\n\n", r.host);
    let _ = writeln!(
        s,
        "{:<16} {:<18} {:<10} {:<22} {:<28} RTT",
        "PEER", "SUBNET", "LEASE", "KERNEL", "OVERLAY"
    );
    for p in &r.peers {
        let _ = writeln!(
            s,
            "{:<16} {:<18} {:<10} {:<22} {:<28} {}",
            p.public_ip,
            p.subnet,
            p.lease,
            p.kernel,
            p.overlay,
            p.rtt.map_or("-".into(), |d| format!(
                "{:.2} ms",
                d.as_secs_f64() * 1000.0
            ))
        );
    }
    if r.peers.is_empty() {
        s.push_str("(no peers)\n");
    }
    s.push_str("\nHOST\n");
    for c in &r.checks {
        let _ = writeln!(
            s,
            "{:<4} {:<22} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if r.problems.is_empty() {
        s.push_str("\nNo problems found.\n");
    } else {
        let _ = writeln!(s, "\nPROBLEMS ({})", r.problems.len());
        for p in &r.problems {
            let _ = writeln!(s, "- {}: {}", p.what, p.todo);
        }
    }
    s
}

fn to_json(r: &Report) -> serde_json::Value {
    json!({
        "host": r.host,
        "ok": r.problems.is_empty(),
        "peers": r.peers.iter().map(|p| json!({
            "public_ip": p.public_ip.to_string(),
            "subnet": p.subnet,
            "lease": p.lease,
            "kernel": p.kernel,
            "overlay": p.overlay,
            "rtt_seconds": p.rtt.map(|d| d.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "checks": r.checks.iter().map(|c| json!({
            "name": c.name, "ok": c.ok, "detail": c.detail,
        })).collect::<Vec<_>>(),
        "problems": r.problems.iter().map(|p| json!({
            "what": p.what, "todo": p.todo,
        })).collect::<Vec<_>>(),
    })
}
