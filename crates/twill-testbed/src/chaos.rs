//! The pure half of the seeded chaos soak (issue 18): a small PRNG, the
//! fault schedule drawn from a seed, and the invariants as plain functions
//! over observed state, so that each can be shown to catch a broken case
//! without a cluster. The half that applies faults to real hosts lives in
//! `examples/twilld/tests/chaos.rs`.
//!
//! A schedule is a list of steps; each step holds one fault or two
//! overlapping faults on different hosts, applied together, held, then
//! healed together. Faults are numbered across the whole schedule, so
//! `SEED=<s> FAULT=<i>` names one of them for a replay.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use twill_netlink::MacAddr;

use crate::cluster::{KernelState, StoredLease};

/// splitmix64: a few lines, good enough spread for picking faults, and
/// the same sequence on every platform (the point of a seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.next_u64() % n
    }

    /// A duration in `[lo, hi]`, to the millisecond.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ms = u64::try_from(lo.as_millis()).unwrap_or(u64::MAX);
        let hi_ms = u64::try_from(hi.as_millis()).unwrap_or(u64::MAX);
        if hi_ms <= lo_ms {
            return lo;
        }
        Duration::from_millis(lo_ms + self.below(hi_ms - lo_ms + 1))
    }
}

/// What a hostile lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hostile {
    /// A well-formed vxlan lease for a subnet outside the Network.
    OutsideNetwork,
    /// A value that is not JSON.
    Malformed,
    /// A free subnet claimed with a live host's `PublicIP`.
    LivePublicIp,
    /// A free subnet claimed with a live host's `VtepMAC`.
    LiveVtepMac,
    /// A non-canonical key (`…-024`) naming a live host's subnet.
    AliasKey,
}

/// Which kernel entry a hand edit breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelEdit {
    /// The overlay device deleted.
    DeleteDevice,
    /// One peer's route deleted.
    DeleteRoute,
    /// One peer's FDB entry deleted.
    DeleteFdb,
    /// One peer's ARP entry deleted.
    DeleteNeigh,
    /// One peer's ARP entry replaced with a wrong MAC.
    CorruptNeigh,
    /// A stale route, FDB and ARP entry added for a subnet nobody holds.
    AddStale,
}

/// One kind of fault, with what it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL to a host's daemon, restarted at the heal (`after_ttl`:
    /// held past the lease TTL, so its lease expires meanwhile).
    Kill {
        /// The host.
        host: usize,
        /// Whether the hold exceeds the TTL.
        after_ttl: bool,
    },
    /// SIGSTOP to a host's daemon, SIGCONT at the heal.
    Stop {
        /// The host.
        host: usize,
    },
    /// One etcd member killed, restarted with its data at the heal.
    EtcdMember {
        /// The member.
        member: usize,
    },
    /// A majority of etcd members (two of three) killed for less than
    /// the TTL, restarted with their data at the heal.
    EtcdMajority,
    /// A host cut from etcd with nftables inside its namespace.
    Partition {
        /// The host.
        host: usize,
        /// Whether the hold exceeds the TTL.
        after_ttl: bool,
    },
    /// Kernel entries deleted or corrupted by hand on a host.
    Kernel {
        /// The host.
        host: usize,
        /// What is broken.
        edit: KernelEdit,
    },
    /// A hostile lease written, removed at the heal.
    HostileLease {
        /// Which one.
        kind: Hostile,
        /// The live host whose subnet, PublicIP or VtepMAC it uses.
        victim: usize,
    },
    /// A host cut from etcd while leases change and history is compacted.
    CompactWhileAway {
        /// The host.
        host: usize,
    },
}

impl FaultKind {
    /// The host whose daemon or kernel this fault acts on, if one.
    #[must_use]
    pub fn host(&self) -> Option<usize> {
        match *self {
            FaultKind::Kill { host, .. }
            | FaultKind::Stop { host }
            | FaultKind::Partition { host, .. }
            | FaultKind::Kernel { host, .. }
            | FaultKind::CompactWhileAway { host } => Some(host),
            FaultKind::HostileLease { victim, .. } => Some(victim),
            FaultKind::EtcdMember { .. } | FaultKind::EtcdMajority => None,
        }
    }

    /// Whether this fault touches etcd's membership (two such never overlap).
    #[must_use]
    pub fn is_etcd(&self) -> bool {
        matches!(self, FaultKind::EtcdMember { .. } | FaultKind::EtcdMajority)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Kill { host, after_ttl } => {
                write!(
                    f,
                    "kill h{}{}",
                    host + 1,
                    if *after_ttl { " >ttl" } else { "" }
                )
            }
            FaultKind::Stop { host } => write!(f, "sigstop h{}", host + 1),
            FaultKind::EtcdMember { member } => write!(f, "etcd member {member} killed"),
            FaultKind::EtcdMajority => write!(f, "etcd majority down"),
            FaultKind::Partition { host, after_ttl } => write!(
                f,
                "partition h{}{}",
                host + 1,
                if *after_ttl { " >ttl" } else { " <ttl" }
            ),
            FaultKind::Kernel { host, edit } => write!(f, "kernel {edit:?} h{}", host + 1),
            FaultKind::HostileLease { kind, victim } => {
                write!(f, "hostile {kind:?} (victim h{})", victim + 1)
            }
            FaultKind::CompactWhileAway { host } => write!(f, "compact while h{} away", host + 1),
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Its number in the schedule (what `FAULT=` names).
    pub index: usize,
    /// What it is.
    pub kind: FaultKind,
}

/// Faults applied together, held for `hold`, then healed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// One fault, or two on different hosts.
    pub faults: Vec<Fault>,
    /// How long they are held.
    pub hold: Duration,
}

/// The shape of a soak: the cluster's size and the lease TTL the daemons run with.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Number of hosts (each with a daemon and a container).
    pub hosts: usize,
    /// Number of etcd members (on the first hosts).
    pub etcd_members: usize,
    /// The daemons' `--lease-ttl`.
    pub ttl: Duration,
}

/// The schedule of `seed`: steps until their holds add up to `budget`.
/// The same seed and shape always give the same schedule.
#[must_use]
pub fn schedule(seed: u64, shape: Shape, budget: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    let mut index = 0;
    while total < budget {
        let first = draw(&mut rng, shape);
        let mut faults = vec![first];
        // About one step in four overlaps a second fault, on another host
        // and never two etcd-membership faults at once (a majority plus one
        // more member down is no longer a fault the daemons can ride out).
        if rng.below(4) == 0 {
            let second = draw(&mut rng, shape);
            let clash = match (first.host(), second.host()) {
                (Some(a), Some(b)) => a == b,
                _ => first.is_etcd() && second.is_etcd(),
            };
            if !clash && !long_hold(&first) && !long_hold(&second) {
                faults.push(second);
            }
        }
        let hold = if faults.iter().any(long_hold) {
            // Past the TTL: the etcd lease expires during the hold.
            rng.between(shape.ttl * 2, shape.ttl * 2 + Duration::from_secs(2))
        } else if faults.iter().any(|k| matches!(k, FaultKind::EtcdMajority)) {
            rng.between(shape.ttl / 4, shape.ttl / 2)
        } else {
            rng.between(
                Duration::from_secs(1),
                (shape.ttl / 2).max(Duration::from_secs(2)),
            )
        };
        total += hold;
        steps.push(Step {
            faults: faults
                .into_iter()
                .map(|kind| {
                    index += 1;
                    Fault {
                        index: index - 1,
                        kind,
                    }
                })
                .collect(),
            hold,
        });
    }
    steps
}

fn long_hold(k: &FaultKind) -> bool {
    matches!(
        k,
        FaultKind::Kill {
            after_ttl: true,
            ..
        } | FaultKind::Partition {
            after_ttl: true,
            ..
        }
    )
}

fn draw(rng: &mut Rng, shape: Shape) -> FaultKind {
    let hosts = u64::try_from(shape.hosts.max(1)).unwrap_or(1);
    let host = usize::try_from(rng.below(hosts)).unwrap_or(0);
    let members = u64::try_from(shape.etcd_members.max(1)).unwrap_or(1);
    match rng.below(9) {
        0 => FaultKind::Kill {
            host,
            after_ttl: rng.below(3) == 0,
        },
        1 => FaultKind::Stop { host },
        2 => FaultKind::EtcdMember {
            member: usize::try_from(rng.below(members)).unwrap_or(0),
        },
        3 => FaultKind::EtcdMajority,
        4 => FaultKind::Partition {
            host,
            after_ttl: rng.below(3) == 0,
        },
        5 | 6 => FaultKind::Kernel {
            host,
            edit: match rng.below(6) {
                0 => KernelEdit::DeleteDevice,
                1 => KernelEdit::DeleteRoute,
                2 => KernelEdit::DeleteFdb,
                3 => KernelEdit::DeleteNeigh,
                4 => KernelEdit::CorruptNeigh,
                _ => KernelEdit::AddStale,
            },
        },
        7 => FaultKind::HostileLease {
            victim: host,
            kind: match rng.below(5) {
                0 => Hostile::OutsideNetwork,
                1 => Hostile::Malformed,
                2 => Hostile::LivePublicIp,
                3 => Hostile::LiveVtepMac,
                _ => Hostile::AliasKey,
            },
        },
        _ => FaultKind::CompactWhileAway { host },
    }
}

/// What one host looked like at one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostObservation {
    /// The host's underlay address (its lease's `PublicIP`).
    pub ip: Ipv4Addr,
    /// Its label (`h1`, …), for messages.
    pub name: String,
    /// Whether a fault acts on it now, or it has not settled since one did:
    /// its subnet file and kernel are not held to the invariants then.
    pub touched: bool,
    /// Whether the harness means its daemon to be running.
    pub should_run: bool,
    /// Whether its daemon process is alive (not exited).
    pub running: bool,
    /// Its daemon's exit status, if it exited.
    pub exit: Option<String>,
    /// The subnet in its subnet file.
    pub subnet_env: Option<Ipv4Network>,
    /// Its kernel's overlay entries, when read.
    pub kernel: Option<KernelState>,
    /// Its daemon's resident set size, KiB.
    pub rss_kib: Option<u64>,
    /// Its daemon's open file descriptors.
    pub fds: Option<u64>,
}

impl Default for HostObservation {
    fn default() -> Self {
        HostObservation {
            ip: Ipv4Addr::UNSPECIFIED,
            name: String::new(),
            touched: false,
            should_run: false,
            running: false,
            exit: None,
            subnet_env: None,
            kernel: None,
            rss_kib: None,
            fds: None,
        }
    }
}

/// One observation of the whole cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every lease under the prefix, as read from etcd.
    pub leases: Vec<StoredLease>,
    /// Keys the harness wrote as hostile: never valid.
    pub hostile_keys: BTreeSet<String>,
    /// Hostile keys (also in `hostile_keys`) whose entries a daemon is
    /// known to program still (an open finding): not judged in kernels.
    pub tolerated_keys: BTreeSet<String>,
    /// The Network of the config.
    pub network: Option<Ipv4Network>,
    /// The backend type (`vxlan`, `host-gw`).
    pub backend: String,
    /// Each host.
    pub hosts: Vec<HostObservation>,
}

impl Observed {
    /// The leases a daemon must program: not written as hostile, inside
    /// the Network, and with a `PublicIP`.
    #[must_use]
    pub fn valid_leases(&self) -> Vec<&StoredLease> {
        self.leases
            .iter()
            .filter(|l| !self.hostile_keys.contains(&l.key))
            .filter(|l| self.network.is_none_or(|n| n.contains(l.subnet.network())))
            .filter(|l| l.public_ip.is_some())
            .collect()
    }
}

/// The resource bounds a daemon must stay under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// RSS ceiling, KiB.
    pub max_rss_kib: u64,
    /// Open descriptors ceiling.
    pub max_fds: u64,
    /// Highest allowed ping loss, per cent.
    pub max_ping_loss_pct: f64,
}

impl Default for Limits {
    fn default() -> Self {
        // twilld idles at ~10 MiB and ~20 descriptors; these catch a leak,
        // not a fluctuation.
        Limits {
            max_rss_kib: 128 * 1024,
            max_fds: 256,
            max_ping_loss_pct: 5.0,
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two valid leases name one subnet.
    DuplicateSubnet {
        /// The subnet.
        subnet: Ipv4Network,
        /// Their keys.
        keys: Vec<String>,
    },
    /// Two valid leases name one `PublicIP`.
    DuplicatePublicIp {
        /// The address.
        ip: Ipv4Addr,
        /// Their keys.
        keys: Vec<String>,
    },
    /// A healthy host's subnet file does not match its lease.
    SubnetEnv {
        /// The host.
        host: String,
        /// Its subnet file's subnet.
        file: Option<Ipv4Network>,
        /// Its lease's subnet.
        lease: Option<Ipv4Network>,
    },
    /// A settled host's kernel is not exactly the other valid leases.
    Kernel {
        /// The host.
        host: String,
        /// What it lacks.
        missing: String,
        /// What it has that no valid lease asks for.
        extra: String,
    },
    /// A daemon the harness did not stop is gone.
    DaemonExited {
        /// The host.
        host: String,
        /// How it exited.
        status: String,
    },
    /// A daemon is over a resource bound.
    Resource {
        /// The host.
        host: String,
        /// What and how much.
        what: String,
    },
    /// Pings between untouched hosts lost too many.
    PingLoss {
        /// Pings sent.
        sent: u64,
        /// Pings lost.
        lost: u64,
    },
    /// A host did not settle after a heal within the deadline.
    NotSettled {
        /// The host.
        host: String,
        /// How long was waited.
        waited: Duration,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateSubnet { subnet, keys } => {
                write!(f, "two live leases for {subnet}: {keys:?}")
            }
            Violation::DuplicatePublicIp { ip, keys } => {
                write!(f, "two live leases with PublicIP {ip}: {keys:?}")
            }
            Violation::SubnetEnv { host, file, lease } => {
                write!(f, "{host}: subnet.env {file:?} but lease {lease:?}")
            }
            Violation::Kernel {
                host,
                missing,
                extra,
            } => write!(f, "{host}: kernel lacks {missing}, has extra {extra}"),
            Violation::DaemonExited { host, status } => {
                write!(f, "{host}: daemon exited on its own ({status})")
            }
            Violation::Resource { host, what } => write!(f, "{host}: {what}"),
            Violation::PingLoss { sent, lost } => {
                write!(f, "ping loss {lost}/{sent} between untouched hosts")
            }
            Violation::NotSettled { host, waited } => {
                write!(
                    f,
                    "{host}: not converged {:.1}s after the heal",
                    waited.as_secs_f64()
                )
            }
        }
    }
}

/// Never two valid leases with one subnet or one `PublicIP`.
#[must_use]
pub fn check_leases(o: &Observed) -> Vec<Violation> {
    let mut by_subnet: BTreeMap<Ipv4Network, Vec<String>> = BTreeMap::new();
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for l in o.valid_leases() {
        by_subnet.entry(l.subnet).or_default().push(l.key.clone());
        if let Some(ip) = l.public_ip {
            by_ip.entry(ip).or_default().push(l.key.clone());
        }
    }
    let mut out: Vec<Violation> = by_subnet
        .into_iter()
        .filter(|(_, k)| k.len() > 1)
        .map(|(subnet, keys)| Violation::DuplicateSubnet { subnet, keys })
        .collect();
    out.extend(
        by_ip
            .into_iter()
            .filter(|(_, k)| k.len() > 1)
            .map(|(ip, keys)| Violation::DuplicatePublicIp { ip, keys }),
    );
    out
}

/// Each healthy host's subnet file names its lease's subnet.
#[must_use]
pub fn check_subnet_env(o: &Observed) -> Vec<Violation> {
    let valid = o.valid_leases();
    o.hosts
        .iter()
        .filter(|h| !h.touched && h.should_run)
        .filter_map(|h| {
            let lease = valid
                .iter()
                .find(|l| l.public_ip == Some(h.ip))
                .map(|l| l.subnet);
            (lease.is_none() || lease != h.subnet_env).then(|| Violation::SubnetEnv {
                host: h.name.clone(),
                file: h.subnet_env,
                lease,
            })
        })
        .collect()
}

/// What host `h` must hold: the valid leases but its own.
#[must_use]
pub fn expected_kernel(o: &Observed, h: &HostObservation) -> KernelState {
    KernelState::expected(
        &o.backend,
        o.valid_leases()
            .into_iter()
            .filter(|l| l.public_ip != Some(h.ip)),
    )
}

/// Each settled running host's kernel is exactly the other valid leases:
/// nothing missing, nothing stale, nothing hostile. A host whose kernel
/// was not read is not judged.
#[must_use]
pub fn check_kernel(o: &Observed) -> Vec<Violation> {
    o.hosts
        .iter()
        .filter(|h| !h.touched && h.should_run)
        .filter_map(|h| {
            let mut have = h.kernel.clone()?;
            let tolerated = KernelState::expected(
                &o.backend,
                o.leases
                    .iter()
                    .filter(|l| o.tolerated_keys.contains(&l.key))
                    .filter(|l| l.public_ip != Some(h.ip)),
            );
            have.fdb.retain(|e| !tolerated.fdb.contains(e));
            have.neigh.retain(|e| !tolerated.neigh.contains(e));
            have.routes.retain(|e| !tolerated.routes.contains(e));
            let want = expected_kernel(o, h);
            kernel_diff(&want, &have).map(|(missing, extra)| Violation::Kernel {
                host: h.name.clone(),
                missing,
                extra,
            })
        })
        .collect()
}

/// `(missing, extra)` between `want` and `have`, `None` when equal.
#[must_use]
pub fn kernel_diff(want: &KernelState, have: &KernelState) -> Option<(String, String)> {
    if want == have {
        return None;
    }
    fn opt<T: fmt::Display>(v: Option<&T>) -> String {
        v.map_or_else(|| "-".into(), ToString::to_string)
    }
    let side = |a: &KernelState, b: &KernelState| {
        let fdb: Vec<String> = a
            .fdb
            .difference(&b.fdb)
            .map(|(m, d)| format!("{m}>{}", opt(d.as_ref())))
            .collect();
        let neigh: Vec<String> = a
            .neigh
            .difference(&b.neigh)
            .map(|(ip, m)| format!("{ip}>{}", opt(m.as_ref())))
            .collect();
        let routes: Vec<String> = a
            .routes
            .difference(&b.routes)
            .map(|(dst, gw, _)| format!("{dst} via {}", opt(gw.as_ref())))
            .collect();
        format!("fdb {fdb:?} neigh {neigh:?} routes {routes:?}")
    };
    let missing = side(want, have);
    let extra = side(have, want);
    Some((missing, extra))
}

/// No daemon the harness means to run has exited.
#[must_use]
pub fn check_daemons(o: &Observed) -> Vec<Violation> {
    o.hosts
        .iter()
        .filter(|h| h.should_run && !h.running)
        .map(|h| Violation::DaemonExited {
            host: h.name.clone(),
            status: h.exit.clone().unwrap_or_else(|| "unknown".into()),
        })
        .collect()
}

/// RSS and open descriptors under `limits`.
#[must_use]
pub fn check_resources(o: &Observed, limits: &Limits) -> Vec<Violation> {
    let mut out = Vec::new();
    for h in o.hosts.iter().filter(|h| h.running) {
        if let Some(rss) = h.rss_kib.filter(|&r| r > limits.max_rss_kib) {
            out.push(Violation::Resource {
                host: h.name.clone(),
                what: format!("RSS {rss} KiB over {} KiB", limits.max_rss_kib),
            });
        }
        if let Some(fds) = h.fds.filter(|&n| n > limits.max_fds) {
            out.push(Violation::Resource {
                host: h.name.clone(),
                what: format!("{fds} open fds over {}", limits.max_fds),
            });
        }
    }
    out
}

/// Ping loss between untouched hosts at most `limits.max_ping_loss_pct`.
#[must_use]
pub fn check_ping_loss(sent: u64, lost: u64, limits: &Limits) -> Vec<Violation> {
    if sent == 0 {
        return Vec::new();
    }
    #[allow(clippy::cast_precision_loss)]
    let pct = lost as f64 * 100.0 / sent as f64;
    if pct > limits.max_ping_loss_pct {
        vec![Violation::PingLoss { sent, lost }]
    } else {
        Vec::new()
    }
}

/// Every invariant that holds at every observation.
#[must_use]
pub fn check_all(o: &Observed, limits: &Limits) -> Vec<Violation> {
    let mut v = check_leases(o);
    v.extend(check_subnet_env(o));
    v.extend(check_kernel(o));
    v.extend(check_daemons(o));
    v.extend(check_resources(o, limits));
    v
}

/// A process's RSS (KiB) and open descriptor count from `/proc`.
#[must_use]
pub fn proc_usage(pid: u32) -> (Option<u64>, Option<u64>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| u64::try_from(d.count()).unwrap_or(u64::MAX));
    (rss, fds)
}

/// A MAC no host has: `0e:c4:a0:00:00:<n>`.
#[must_use]
pub fn fake_mac(n: u8) -> MacAddr {
    MacAddr([0x0e, 0xc4, 0xa0, 0, 0, n])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lease(subnet: &str, ip: &str, mac: &str) -> StoredLease {
        let key = format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"));
        let value = format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":100,"VtepMAC":"{mac}"}}}}"#
        );
        StoredLease::parse(&key, &value).unwrap()
    }

    /// Three hosts, each converged with the others: no violation.
    fn healthy() -> Observed {
        let leases = vec![
            lease("192.168.1.0/24", "10.0.0.2", "0e:00:00:00:00:02"),
            lease("192.168.2.0/24", "10.0.0.3", "0e:00:00:00:00:03"),
            lease("192.168.3.0/24", "10.0.0.4", "0e:00:00:00:00:04"),
        ];
        let mut o = Observed {
            leases,
            hostile_keys: BTreeSet::new(),
            tolerated_keys: BTreeSet::new(),
            network: Some("192.168.0.0/16".parse().unwrap()),
            backend: "vxlan".into(),
            hosts: Vec::new(),
        };
        for (n, ip) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
            let mut h = HostObservation {
                ip: ip.parse().unwrap(),
                name: format!("h{}", n + 1),
                should_run: true,
                running: true,
                subnet_env: Some(format!("192.168.{}.0/24", n + 1).parse().unwrap()),
                rss_kib: Some(12_000),
                fds: Some(20),
                ..HostObservation::default()
            };
            h.kernel = Some(expected_kernel(&o, &h));
            o.hosts.push(h);
        }
        o
    }

    #[test]
    fn a_healthy_cluster_has_no_violation() {
        assert_eq!(check_all(&healthy(), &Limits::default()), vec![]);
    }

    #[test]
    fn two_leases_with_one_public_ip_are_caught() {
        let mut o = healthy();
        o.leases
            .push(lease("192.168.9.0/24", "10.0.0.2", "0e:00:00:00:00:09"));
        let v = check_leases(&o);
        assert!(
            matches!(&v[..], [Violation::DuplicatePublicIp { ip, .. }] if *ip == Ipv4Addr::new(10, 0, 0, 2)),
            "{v:?}"
        );
        // Written by the harness as hostile, the same lease is no violation.
        let key = o.leases.last().unwrap().key.clone();
        o.hostile_keys.insert(key);
        assert_eq!(check_leases(&o), vec![]);
    }

    #[test]
    fn two_leases_with_one_subnet_are_caught() {
        let mut o = healthy();
        // An alias key (non-canonical length) for h1's subnet.
        let alias = StoredLease::parse(
            "/coreos.com/network/subnets/192.168.1.0-024",
            r#"{"PublicIP":"10.0.0.9","BackendType":"vxlan","BackendData":{"VNI":100,"VtepMAC":"0e:00:00:00:00:09"}}"#,
        )
        .unwrap();
        o.leases.push(alias);
        let v = check_leases(&o);
        assert!(
            matches!(&v[..], [Violation::DuplicateSubnet { keys, .. }] if keys.len() == 2),
            "{v:?}"
        );
    }

    #[test]
    fn a_subnet_file_that_disagrees_with_the_lease_is_caught() {
        let mut o = healthy();
        o.hosts[1].subnet_env = Some("192.168.7.0/24".parse().unwrap());
        let v = check_subnet_env(&o);
        assert!(
            matches!(&v[..], [Violation::SubnetEnv { host, .. }] if host == "h2"),
            "{v:?}"
        );
        // A touched host is not judged.
        o.hosts[1].touched = true;
        assert_eq!(check_subnet_env(&o), vec![]);
    }

    #[test]
    fn a_healthy_host_without_a_lease_is_caught() {
        let mut o = healthy();
        o.leases.remove(2);
        // h3 lost its lease; the others' kernels are now stale too.
        let v = check_subnet_env(&o);
        assert!(
            matches!(&v[..], [Violation::SubnetEnv { host, lease: None, .. }] if host == "h3"),
            "{v:?}"
        );
    }

    #[test]
    fn a_missing_kernel_entry_is_caught() {
        let mut o = healthy();
        let k = o.hosts[0].kernel.as_mut().unwrap();
        let r = *k.routes.iter().next().unwrap();
        k.routes.remove(&r);
        let v = check_kernel(&o);
        assert!(
            matches!(&v[..], [Violation::Kernel { host, missing, .. }] if host == "h1" && missing.contains("192.168.2.0/24")),
            "{v:?}"
        );
    }

    #[test]
    fn a_stale_kernel_entry_is_caught() {
        let mut o = healthy();
        let k = o.hosts[2].kernel.as_mut().unwrap();
        k.fdb
            .insert((fake_mac(7), Some(Ipv4Addr::new(10, 0, 0, 77))));
        let v = check_kernel(&o);
        assert!(
            matches!(&v[..], [Violation::Kernel { host, extra, .. }] if host == "h3" && extra.contains("10.0.0.77")),
            "{v:?}"
        );
    }

    #[test]
    fn a_hostile_lease_in_the_kernel_is_caught() {
        let mut o = healthy();
        // A hostile lease with h2's MAC on a free subnet, programmed by h1.
        let hostile = lease("192.168.150.0/24", "10.0.0.250", "0e:00:00:00:00:03");
        o.hostile_keys.insert(hostile.key.clone());
        o.leases.push(hostile.clone());
        let programmed = KernelState::expected("vxlan", [&hostile]);
        let k = o.hosts[0].kernel.as_mut().unwrap();
        k.routes.extend(programmed.routes);
        let v = check_kernel(&o);
        assert!(
            matches!(&v[..], [Violation::Kernel { host, extra, .. }] if host == "h1" && extra.contains("192.168.150.0/24")),
            "{v:?}"
        );
        // A known, reported gap is tolerated only when named.
        o.tolerated_keys.insert(hostile.key.clone());
        assert_eq!(check_kernel(&o), vec![]);
    }

    #[test]
    fn a_lease_outside_the_network_is_not_expected() {
        let mut o = healthy();
        o.leases
            .push(lease("10.99.0.0/24", "10.0.0.251", "0e:00:00:00:00:51"));
        assert_eq!(check_all(&o, &Limits::default()), vec![]);
    }

    #[test]
    fn a_daemon_that_exited_on_its_own_is_caught() {
        let mut o = healthy();
        o.hosts[1].running = false;
        o.hosts[1].exit = Some("signal 6 (SIGABRT)".into());
        let v = check_daemons(&o);
        assert!(
            matches!(&v[..], [Violation::DaemonExited { host, status }] if host == "h2" && status.contains("SIGABRT")),
            "{v:?}"
        );
        // Killed by the harness: not a violation.
        o.hosts[1].should_run = false;
        assert_eq!(check_daemons(&o), vec![]);
    }

    #[test]
    fn unbounded_rss_and_fds_are_caught() {
        let mut o = healthy();
        o.hosts[0].rss_kib = Some(500 * 1024);
        o.hosts[2].fds = Some(4096);
        let v = check_resources(&o, &Limits::default());
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn ping_loss_over_the_limit_is_caught() {
        let l = Limits::default();
        assert_eq!(check_ping_loss(100, 5, &l), vec![]);
        assert_eq!(
            check_ping_loss(100, 6, &l),
            vec![Violation::PingLoss { sent: 100, lost: 6 }]
        );
        assert_eq!(check_ping_loss(0, 0, &l), vec![]);
    }

    #[test]
    fn a_seed_gives_one_schedule() {
        let shape = Shape {
            hosts: 5,
            etcd_members: 3,
            ttl: Duration::from_secs(5),
        };
        let budget = Duration::from_secs(60);
        let a = schedule(7, shape, budget);
        assert_eq!(a, schedule(7, shape, budget));
        assert_ne!(a, schedule(8, shape, budget));
        // Numbered in order, overlapping faults on different hosts.
        let all: Vec<usize> = a
            .iter()
            .flat_map(|s| s.faults.iter().map(|f| f.index))
            .collect();
        assert_eq!(all, (0..all.len()).collect::<Vec<_>>());
        for s in &a {
            if let [x, y] = &s.faults[..] {
                assert!(x.kind.host().is_none() || x.kind.host() != y.kind.host());
                assert!(!(x.kind.is_etcd() && y.kind.is_etcd()));
            }
        }
    }
}
