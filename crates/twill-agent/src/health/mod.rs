//! Peer health: each agent probes every peer with ICMP echoes through the
//! overlay, within a budget of packets per second, and reports per-peer
//! reachability and round trip ([`HealthReport`], in
//! [`crate::StatusSnapshot::health`]), one log line when a peer becomes
//! unreachable and one when it recovers ([`crate::AgentEvent::PeerUnreachable`],
//! [`crate::AgentEvent::PeerRecovered`]).
//!
//! With a tunnel (VXLAN), the probe goes to the peer's `<subnet>.0`, the
//! address its `flannel.<VNI>` holds, so it crosses the tunnel both ways.
//! When it goes unanswered, an echo to the peer's `PublicIP` tells a
//! blocked tunnel (the underlay answers: the VXLAN UDP port is dropped
//! somewhere) from a host that is down. host-gw has no tunnel and no
//! overlay address on the peer (its subnet is routed to the peer's
//! `PublicIP`), so there the probe is the underlay echo, which is the data
//! path's first hop. Other backends are not probed (their data path is
//! theirs to know). IPv4 only: an IPv6-only peer is not probed.
//!
//! The decisions (schedule, budget, timeouts, state) are [`HealthCore`]'s,
//! without IO or clock; the prober thread only sends and receives.

mod core;
pub mod icmp;
pub(crate) mod prober;

use std::net::Ipv4Addr;
use std::time::Duration;

use twill_model::SubnetKey;

pub use self::core::{HealthChange, HealthCore, Probe, ProbeKind, ProbeTarget};

/// How the agent probes its peers ([`crate::AgentOptions::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthOptions {
    /// Probe at all (default on). Off: no packets, no per-peer metrics.
    pub enabled: bool,
    /// Time between two probes of one peer, at least (default 2 s). With
    /// many peers the budget stretches it: each peer is probed every
    /// `max(interval, peers / max_probes_per_second)`.
    pub interval: Duration,
    /// Time an echo has to come back (default 1 s).
    pub timeout: Duration,
    /// Consecutive unanswered probes before a peer is declared unreachable
    /// (default 3).
    pub misses: u32,
    /// The budget: probes sent per second at most, whatever the number of
    /// peers (default 100).
    pub max_probes_per_second: u32,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            misses: 3,
            max_probes_per_second: 100,
        }
    }
}

/// Why a peer is unreachable, as far as the probes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnreachableCause {
    /// The peer answers on the underlay but not through the tunnel: the
    /// tunnel's UDP `port` is dropped on the way (a firewall, a security
    /// group, the hypervisor), or the peer's overlay device is down.
    TunnelBlocked {
        /// The tunnel's UDP port (VXLAN's, from the config).
        port: u16,
    },
    /// The peer answers neither through the tunnel nor on the underlay: the
    /// host is down or cut off (or drops ICMP altogether).
    HostDown,
    /// No answer, and nothing else to tell (host-gw: the probe is the
    /// underlay's).
    NoReply,
}

impl std::fmt::Display for UnreachableCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnreachableCause::TunnelBlocked { port } => write!(
                f,
                "the tunnel is blocked: the host answers on the underlay but not through VXLAN (UDP port {port})"
            ),
            UnreachableCause::HostDown => {
                f.write_str("the host answers neither through the tunnel nor on the underlay")
            }
            UnreachableCause::NoReply => f.write_str("no answer"),
        }
    }
}

/// What is known of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reachability {
    /// Not probed yet (or no verdict yet).
    Unknown,
    /// The last probe was answered.
    Reachable,
    /// Several probes in a row were not.
    Unreachable(UnreachableCause),
}

/// One peer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    /// The peer's lease.
    pub key: SubnetKey,
    /// Its `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// The address probed (its overlay address, or `PublicIP` with host-gw).
    pub target: Ipv4Addr,
    /// What the probes say.
    pub reachability: Reachability,
    /// Round trip of the last answered probe.
    pub rtt: Option<Duration>,
}

/// All peers' health at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Per peer, in key order.
    pub peers: Vec<PeerHealth>,
    /// Probes sent since the agent started.
    pub probes_sent: u64,
}

impl HealthReport {
    /// Peers by state: (reachable, unreachable, unknown).
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for p in &self.peers {
            match p.reachability {
                Reachability::Reachable => c.0 += 1,
                Reachability::Unreachable(_) => c.1 += 1,
                Reachability::Unknown => c.2 += 1,
            }
        }
        c
    }

    /// A few lines for a health endpoint's body: the counts, then each
    /// unreachable peer (at most `limit` of them) with its cause.
    #[must_use]
    pub fn summary(&self, limit: usize) -> String {
        let (up, down, unknown) = self.counts();
        let mut s =
            format!("peers: {up} reachable, {down} unreachable, {unknown} not yet probed\n");
        let unreachable = self.peers.iter().filter_map(|p| match p.reachability {
            Reachability::Unreachable(cause) => Some((p, cause)),
            _ => None,
        });
        for (p, cause) in unreachable.clone().take(limit) {
            s.push_str(&format!(
                "unreachable: {} (subnet {}, probed at {}): {cause}\n",
                p.public_ip, p.key, p.target
            ));
        }
        if down > limit {
            s.push_str(&format!("... and {} more unreachable\n", down - limit));
        }
        s
    }
}

/// The tunnel port a config's backend uses, and whether its peers have an
/// overlay address to probe: `Some(Some(port))` for vxlan, `Some(None)` for
/// host-gw (probe the underlay), `None` for backends not probed.
#[must_use]
pub fn probe_mode(config: &twill_model::NetworkConfig) -> Option<Option<u16>> {
    match config.backend.backend_type.as_str() {
        "vxlan" => {
            let port = config
                .backend
                .parse_as::<twill_backend::VxlanOptions>()
                .map_or(0, |o| o.port);
            Some(Some(if port == 0 { DEFAULT_VXLAN_PORT } else { port }))
        }
        "host-gw" => Some(None),
        _ => None,
    }
}

/// The kernel's VXLAN port when the config's `Port` is 0 (Linux's 8472,
/// not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// What to probe for a peer, under [`probe_mode`]'s answer: `None` for an
/// IPv6-only peer (no IPv4 to probe).
#[must_use]
pub fn target_of(lease: &twill_model::SubnetLease, tunnel: Option<u16>) -> Option<ProbeTarget> {
    if lease.key.is_ipv6_only() || lease.attrs.public_ip.is_unspecified() {
        return None;
    }
    Some(ProbeTarget {
        key: lease.key,
        public_ip: lease.attrs.public_ip,
        overlay: tunnel.map(|_| lease.key.network_addr()),
    })
}

/// Probes `targets` once, as the agent does, and returns each peer's
/// verdict: reachable at the first answer, unreachable after
/// `options.misses` unanswered probes (with the cause), unknown if
/// `deadline` came first. Blocking; opens its own ICMP socket in the calling
/// thread's network namespace (root or `CAP_NET_RAW`). For one-shot tools
/// such as `twilld diagnose`.
///
/// # Errors
/// The socket's error (EPERM without `CAP_NET_RAW`).
pub fn probe_once(
    targets: &[ProbeTarget],
    tunnel_port: Option<u16>,
    options: HealthOptions,
    deadline: std::time::Instant,
) -> std::io::Result<HealthReport> {
    prober::probe_until(targets, tunnel_port, options, deadline)
}
