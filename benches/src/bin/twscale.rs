//! `twscale`: many lease managers on one etcd cluster (issue 16, part 4;
//! `benches/scripts/scale.sh` runs it, docs/benchmarks.md §8 has the figures).
//!
//! Starts a 3-member etcd cluster on loopback and runs `--agents` N
//! [`LeaseManager`]s in this one process, each over its own
//! [`EtcdRegistry`] connection, so what is measured is the registry
//! protocol, not N process start-ups and N network namespaces (a 2-core
//! machine cannot run 1,000 twillds). Each agent is what twilld runs before
//! it touches the kernel: it reads the config, lists, creates its lease,
//! renews it and watches everyone else's.
//!
//! Phases, each printed as `name: value unit` lines:
//!
//! * `join`: all N start at once; the time until every agent holds a lease
//!   and until every agent's peer set holds all N-1 others; lost races
//!   (creates etcd refused because the key existed) and duplicate subnets
//!   (checked against the final etcd listing); etcd requests the storm made.
//! * `steady`: etcd requests per second over `--steady-secs` (etcd's own
//!   `grpc_server_msg_received_total`, summed over the members), beside the
//!   same cluster's figure under flannel's algorithm (the model is in the
//!   docs and in [`flannel_steady_requests`]).
//! * `restart`: every agent stops and starts again at once (new manager, new
//!   connection, `previous` = its subnet); how many got their subnet back and
//!   how long until all converged.
//! * `failover`: the same restart storm, and the etcd leader is killed as
//!   soon as the first agent holds its lease again (the others are
//!   mid-acquisition); time until all converged.
//!
//! Resources (CPU seconds, VmRSS, open fds of this process and of each etcd
//! member, from /proc) are printed per phase, with the 1-minute load average.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use tokio::task::JoinSet;
use twill_etcd::{EtcdConfig, EtcdError, EtcdRegistry};
use twill_model::{LeaseAttrs, NetworkConfig, SubnetKey};
use twill_subnet::{
    HeldLease, LeaseHandle, LeaseListing, LeaseManager, LeaseManagerConfig, LeaseWatch, Registry,
    RegistryError,
};
use twill_testbed::etcd::EtcdCluster;

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, 100 on every arch we run.
const USER_HZ: f64 = 100.0;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts::parse(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}

/// Command-line settings (`--name value`).
#[derive(Debug, Clone)]
struct Opts {
    agents: usize,
    ttl: Duration,
    renew_margin: Duration,
    steady: Duration,
    timeout: Duration,
    network: String,
    subnet_len: u8,
    threads: usize,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut named = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .with_context(|| format!("expected --flag, got {a:?}"))?;
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            named.insert(name.to_string(), value.clone());
        }
        let num = |name: &str, default: u64| -> Result<u64> {
            named.get(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| anyhow::anyhow!("--{name}: not a number: {v:?}"))
            })
        };
        let opts = Opts {
            agents: usize::try_from(num("agents", 100)?)?,
            ttl: Duration::from_secs(num("ttl-secs", 60)?),
            renew_margin: Duration::from_secs(num("renew-margin-secs", 20)?),
            steady: Duration::from_secs(num("steady-secs", 80)?),
            timeout: Duration::from_secs(num("timeout-secs", 600)?),
            network: named
                .get("network")
                .cloned()
                .unwrap_or_else(|| "10.0.0.0/8".into()),
            subnet_len: u8::try_from(num("subnet-len", 24)?)?,
            threads: usize::try_from(num("threads", 2)?)?,
        };
        if opts.agents < 2 {
            bail!("--agents must be at least 2");
        }
        if opts.agents > 65_000 {
            bail!("--agents: at most 65,000 (public IPs come from 100.64.0.0/16)");
        }
        Ok(opts)
    }

    /// When the manager renews: `ttl - min(margin, ttl/3)` (its rule).
    fn renew_every(&self) -> Duration {
        self.ttl - self.renew_margin.min(self.ttl / 3)
    }
}

/// What the agents' registries saw, counted by [`Counted`].
#[derive(Debug, Default)]
struct Counters {
    creates: AtomicU64,
    lost_races: AtomicU64,
    /// Every other failed registry call or connect, of which `timeouts`
    /// did not answer within the request timeout.
    errors: AtomicU64,
    timeouts: AtomicU64,
}

impl Counters {
    /// Counts a failed call other than a lost race, telling timeouts apart
    /// by the etcd error's variant.
    fn error(&self, e: &RegistryError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let RegistryError::Unavailable { source } = e {
            if matches!(
                source.downcast_ref::<EtcdError>(),
                Some(EtcdError::Timeout { .. })
            ) {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An [`EtcdRegistry`] that counts create attempts, lost races (a create
/// answered [`RegistryError::Conflict`]: the key existed) and other errors.
/// The manager exposes no per-cause retry count (its events carry reasons as
/// text), so the typed result is counted where it is returned.
struct Counted {
    inner: EtcdRegistry,
    counters: Arc<Counters>,
}

impl Counted {
    fn note<T>(&self, r: Result<T, RegistryError>) -> Result<T, RegistryError> {
        if let Err(e) = &r {
            self.counters.error(e);
        }
        r
    }
}

#[async_trait]
impl Registry for Counted {
    fn config_key(&self) -> String {
        Registry::config_key(&self.inner)
    }

    async fn get_config(&self) -> Result<NetworkConfig, RegistryError> {
        self.note(self.inner.get_config().await)
    }

    async fn list_leases(&self) -> Result<LeaseListing, RegistryError> {
        self.note(self.inner.list_leases().await)
    }

    async fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<HeldLease, RegistryError> {
        self.counters.creates.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.create_lease(key, attrs, ttl).await;
        match &r {
            Err(RegistryError::Conflict { .. }) => {
                self.counters.lost_races.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.counters.error(e),
            Ok(_) => {}
        }
        r
    }

    async fn renew_lease(&self, held: &HeldLease) -> Result<HeldLease, RegistryError> {
        self.note(self.inner.renew_lease(held).await)
    }

    async fn update_lease(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<HeldLease, RegistryError> {
        self.note(self.inner.update_lease(held, attrs).await)
    }

    async fn restore_lease(
        &self,
        held: &HeldLease,
        revision: i64,
    ) -> Result<HeldLease, RegistryError> {
        self.note(self.inner.restore_lease(held, revision).await)
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        self.note(self.inner.delete_lease(key).await)
    }

    async fn watch_leases(&self, from_revision: i64) -> Result<LeaseWatch, RegistryError> {
        self.note(self.inner.watch_leases(from_revision).await)
    }
}

/// Agent `i`'s attributes: public IP `100.64.0.0 + i + 1`, a VTEP MAC from `i`.
fn attrs_of(i: usize) -> Result<LeaseAttrs> {
    let n = u32::try_from(i)? + 1;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n);
    let [_, a, b, c] = n.to_be_bytes();
    let json = format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VtepMAC":"0e:00:00:{a:02x}:{b:02x}:{c:02x}"}}}}"#
    );
    LeaseAttrs::from_json(&json).context("agent attributes")
}

/// One running agent.
struct Agent {
    handle: LeaseHandle,
    key: SubnetKey,
    registry: Arc<Counted>,
}

/// When one agent got there, from the storm's start.
struct Started {
    agent: Agent,
    held_after: Duration,
    converged_after: Duration,
}

/// Everything one storm's agents share.
struct Storm {
    endpoints: Vec<String>,
    opts: Opts,
    counters: Arc<Counters>,
    held: AtomicUsize,
    start: Instant,
    deadline: Instant,
}

/// Starts agent `i` (connect, spawn its manager) and waits until it holds
/// a lease and sees every other agent's.
async fn start_agent(storm: Arc<Storm>, i: usize, previous: Option<SubnetKey>) -> Result<Started> {
    let config = EtcdConfig::new(storm.endpoints.clone())
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(5));
    // A connect can fail while the cluster elects a leader (failover phase):
    // retry it, as twilld does at start-up.
    let inner = loop {
        match EtcdRegistry::connect(config.clone()).await {
            Ok(r) => break r,
            // Counted, not logged: 1,000 agents would flood stderr.
            Err(e) if Instant::now() < storm.deadline => {
                storm.counters.errors.fetch_add(1, Ordering::Relaxed);
                if let EtcdError::Connect { source, .. } = &e {
                    if matches!(**source, EtcdError::Timeout { .. }) {
                        storm.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context(format!("agent {i}: connecting")),
        }
    };
    let registry = Arc::new(Counted {
        inner,
        counters: Arc::clone(&storm.counters),
    });
    let mut config = LeaseManagerConfig::new(attrs_of(i)?);
    config.ttl = storm.opts.ttl;
    config.renew_margin = storm.opts.renew_margin;
    config.previous = previous;
    let manager = LeaseManager::new(Arc::clone(&registry), config);
    let mut peers = manager.peers();
    let handle = manager.spawn();
    let mut lease = handle.lease();
    let left = storm.deadline.saturating_duration_since(Instant::now());
    let held = tokio::time::timeout(left, lease.wait_for(Option::is_some))
        .await
        .with_context(|| format!("agent {i}: no lease within the deadline"))?
        .context("manager stopped")?
        .clone();
    let Some(held) = held else {
        bail!("agent {i}: lease vanished");
    };
    let held_after = storm.start.elapsed();
    storm.held.fetch_add(1, Ordering::Relaxed);
    let others = storm.opts.agents - 1;
    let left = storm.deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, peers.wait_for(|p| p.len() >= others))
        .await
        .with_context(|| format!("agent {i}: did not see all {others} peers in time"))?
        .context("manager stopped")?;
    Ok(Started {
        agent: Agent {
            handle,
            key: held.lease.key,
            registry,
        },
        held_after,
        converged_after: storm.start.elapsed(),
    })
}

/// What a storm measured.
struct StormResult {
    agents: Vec<Agent>,
    start: Instant,
    all_held: Duration,
    all_converged: Duration,
    held_p50: Duration,
}

/// Starts every agent at once (`previous[i]` for agent `i` if given) and
/// waits until all have converged. `on_first` runs once the first agent
/// holds a lease: the storm is under way, most agents are mid-acquisition.
async fn storm(
    cluster_endpoints: &[String],
    opts: &Opts,
    counters: &Arc<Counters>,
    previous: &[Option<SubnetKey>],
    mut on_first: Option<Box<dyn FnMut() -> Result<()> + Send>>,
) -> Result<StormResult> {
    let start = Instant::now();
    let storm = Arc::new(Storm {
        endpoints: cluster_endpoints.to_vec(),
        opts: opts.clone(),
        counters: Arc::clone(counters),
        held: AtomicUsize::new(0),
        start,
        deadline: start + opts.timeout,
    });
    let mut set = JoinSet::new();
    for i in 0..opts.agents {
        let prev = previous.get(i).copied().flatten();
        set.spawn(start_agent(Arc::clone(&storm), i, prev).map_index(i));
    }
    if let Some(f) = on_first.as_mut() {
        while storm.held.load(Ordering::Relaxed) < 1 && Instant::now() < storm.deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        f()?;
    }
    let mut done: Vec<Option<Started>> = (0..opts.agents).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, started) = r.context("an agent task panicked")?;
        let slot = done.get_mut(i).context("agent index out of range")?;
        *slot = Some(started?);
    }
    let started: Vec<Started> = done.into_iter().flatten().collect();
    let all_held = started
        .iter()
        .map(|s| s.held_after)
        .max()
        .unwrap_or_default();
    let all_converged = started
        .iter()
        .map(|s| s.converged_after)
        .max()
        .unwrap_or_default();
    let mut helds: Vec<Duration> = started.iter().map(|s| s.held_after).collect();
    helds.sort();
    let held_p50 = helds.get(helds.len() / 2).copied().unwrap_or_default();
    Ok(StormResult {
        agents: started.into_iter().map(|s| s.agent).collect(),
        start,
        all_held,
        all_converged,
        held_p50,
    })
}

/// Tags a future's output with the agent's index.
trait MapIndex: std::future::Future + Sized {
    fn map_index(self, i: usize) -> impl std::future::Future<Output = (usize, Self::Output)> {
        async move { (i, self.await) }
    }
}

impl<F: std::future::Future> MapIndex for F {}

/// Stops every agent at once (the lease stays in etcd; dropping the last
/// registry clone closes its keepalive streams, as a process exit does).
async fn stop_all(agents: Vec<Agent>) {
    let mut set = JoinSet::new();
    for a in agents {
        set.spawn(async move {
            a.handle.shutdown().await;
            drop(a.registry);
        });
    }
    while set.join_next().await.is_some() {}
}

/// Checks the agents against etcd's listing: duplicate subnets (a key two
/// agents think they hold), listing entries that do not belong to the agent
/// holding that key, and agents whose peer set is not exactly everyone else.
struct Check {
    leases_in_etcd: usize,
    duplicate_subnets: usize,
    listing_mismatches: usize,
    agents_seeing_all: usize,
}

async fn check(checker: &EtcdRegistry, agents: &[Agent]) -> Result<Check> {
    // Right after a member loss the first answer can be "leader changed":
    // retry what retrying fixes, as the agents do.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        match checker.list().await {
            Ok(l) => break l,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("final listing"),
        }
    };
    let in_etcd: HashMap<SubnetKey, Ipv4Addr> = listing
        .leases
        .iter()
        .map(|l| (l.key, l.attrs.public_ip))
        .collect();
    let mut holders: HashMap<SubnetKey, usize> = HashMap::new();
    for a in agents {
        *holders.entry(a.key).or_default() += 1;
    }
    let duplicate_subnets = holders.values().map(|c| c - 1).sum();
    let mut listing_mismatches = 0;
    let mut agents_seeing_all = 0;
    let all: BTreeSet<SubnetKey> = in_etcd.keys().copied().collect();
    for a in agents {
        let ours = a.handle.current_lease().map(|h| h.lease.attrs.public_ip);
        if ours.is_none() || in_etcd.get(&a.key).copied() != ours {
            listing_mismatches += 1;
        }
        let peers = a.handle.peers();
        let seen: BTreeSet<SubnetKey> = peers.borrow().leases.keys().copied().collect();
        let mut expected = all.clone();
        expected.remove(&a.key);
        if seen == expected {
            agents_seeing_all += 1;
        }
    }
    Ok(Check {
        leases_in_etcd: listing.leases.len(),
        duplicate_subnets,
        listing_mismatches,
        agents_seeing_all,
    })
}

/// CPU seconds (user + system), VmRSS in KiB and open fds of one process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    rss_kib: u64,
    fds: usize,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may contain spaces: state is field 3,
    // utime 14 and stime 15 (1-based), so 11 and 12 after the state.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Usage {
        cpu_s: (tick(11) + tick(12)) / USER_HZ,
        rss_kib,
        fds,
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "nan".into())
}

/// One etcd member's usage and `grpc_server_msg_received_total` per method.
#[derive(Debug, Clone, Default)]
struct MemberSnapshot {
    usage: Usage,
    grpc: HashMap<String, u64>,
}

/// This process and every etcd member (`None`: not running).
#[derive(Debug, Clone, Default)]
struct Snapshot {
    at: Option<Instant>,
    ours: Usage,
    members: Vec<Option<MemberSnapshot>>,
}

fn snapshot(cluster: &EtcdCluster) -> Snapshot {
    let mut s = Snapshot {
        at: Some(Instant::now()),
        ours: usage(std::process::id()),
        ..Snapshot::default()
    };
    for i in 0..cluster.len() {
        s.members.push(member_snapshot(cluster, i));
    }
    s
}

fn member_snapshot(cluster: &EtcdCluster, i: usize) -> Option<MemberSnapshot> {
    let m = cluster.member(i).ok()?;
    let pid = m.pid()?;
    let text = m.metrics().ok()?;
    let mut grpc: HashMap<String, u64> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let method = rest
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|m| m.split('"').next())
            .unwrap_or("?");
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value.max(0.0) as u64;
        *grpc.entry(method.to_string()).or_default() += value;
    }
    Some(MemberSnapshot {
        usage: usage(pid),
        grpc,
    })
}

/// Per member: the change from `a` to `b`, or to `last` (its final
/// snapshot, taken just before it was killed) when it is gone in `b`.
fn member_deltas<'s>(
    a: &'s Snapshot,
    b: &'s Snapshot,
    last: Option<&'s Snapshot>,
) -> Vec<(&'s MemberSnapshot, &'s MemberSnapshot)> {
    let mut out = Vec::new();
    for (i, from) in a.members.iter().enumerate() {
        let Some(from) = from else { continue };
        let to = b
            .members
            .get(i)
            .and_then(Option::as_ref)
            .or_else(|| last.and_then(|l| l.members.get(i)).and_then(Option::as_ref));
        if let Some(to) = to {
            out.push((from, to));
        }
    }
    out
}

/// Prints one phase's resource figures between two snapshots.
fn print_usage(phase: &str, a: &Snapshot, b: &Snapshot, last: Option<&Snapshot>) {
    let wall = match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x).as_secs_f64(),
        _ => 0.0,
    };
    let ours = b.ours.cpu_s - a.ours.cpu_s;
    let cpu: Vec<f64> = member_deltas(a, b, last)
        .iter()
        .map(|(x, y)| (y.usage.cpu_s - x.usage.cpu_s).max(0.0))
        .collect();
    let etcd: f64 = cpu.iter().sum();
    let etcd_max = cpu.iter().copied().fold(0.0, f64::max);
    println!("{phase}_wall: {wall:.2} s");
    println!("{phase}_cpu_agents: {ours:.2} s");
    println!("{phase}_cpu_etcd_total: {etcd:.2} s");
    println!("{phase}_cpu_etcd_busiest_member: {etcd_max:.2} s");
    if wall > 0.0 {
        println!("{phase}_cpu_agents_share: {:.2} cores", ours / wall);
        println!("{phase}_cpu_etcd_share: {:.2} cores", etcd / wall);
    }
    let running: Vec<&MemberSnapshot> = b.members.iter().flatten().collect();
    println!("{phase}_rss_agents: {:.1} MiB", mib(b.ours.rss_kib));
    let etcd_rss: u64 = running.iter().map(|m| m.usage.rss_kib).sum();
    let etcd_rss_max = running.iter().map(|m| m.usage.rss_kib).max().unwrap_or(0);
    println!("{phase}_rss_etcd_total: {:.1} MiB", mib(etcd_rss));
    println!("{phase}_rss_etcd_max_member: {:.1} MiB", mib(etcd_rss_max));
    println!("{phase}_fds_agents: {} fds", b.ours.fds);
    let etcd_fds = running.iter().map(|m| m.usage.fds).max().unwrap_or(0);
    println!("{phase}_fds_etcd_max_member: {etcd_fds} fds");
    println!("{phase}_load_avg: {} 1-min", load_avg());
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// etcd requests between two snapshots, summed over members; returns the total.
fn print_requests(phase: &str, a: &Snapshot, b: &Snapshot, last: Option<&Snapshot>) -> u64 {
    let mut methods: HashMap<&str, u64> = HashMap::new();
    for (x, y) in member_deltas(a, b, last) {
        for (m, v) in &y.grpc {
            let d = v.saturating_sub(x.grpc.get(m).copied().unwrap_or(0));
            *methods.entry(m.as_str()).or_default() += d;
        }
    }
    let total: u64 = methods.values().sum();
    println!("{phase}_etcd_requests: {total} requests");
    let mut methods: Vec<(&str, u64)> = methods.into_iter().filter(|(_, d)| *d > 0).collect();
    methods.sort_unstable();
    for (m, d) in methods {
        println!("{phase}_etcd_requests_{m}: {d} requests");
    }
    total
}

/// flannel's steady state for `n` hosts, in etcd requests per renewal period
/// (`TTL - margin`), from pkg/subnet/etcd: a renewal is `updateSubnet`, a
/// Grant and a Put (2); the Put reaches every host's `WatchLeases` watch
/// (`watchSubnets`), whose `parseSubnetWatchResponse` asks `TimeToLive` for
/// the event's lease (n), and the owner's own `WatchLease` (`watchSubnet`,
/// from `CompleteLease`) asks once more (1): `n + 3` per renewal, `n (n + 3)`
/// per period.
fn flannel_steady_requests(n: f64) -> f64 {
    n * (n + 3.0)
}

/// A lower bound on flannel's join storm for `n` hosts starting at once, in
/// etcd requests: per host a config Get, `getSubnets` (a Range, plus
/// `TimeToLive` per lease it lists), Grant, Txn, then `WatchLeases` (a Range
/// and `TimeToLive` per listed lease, then a Watch) and `WatchLease` (Range,
/// `TimeToLive`, Watch): 9. Every host learns every lease's expiry through
/// exactly one `TimeToLive` in `WatchLeases` (listed, or as a watch event
/// after the listing's revision): n². The first listing's `TimeToLive`s
/// (0 to n each) and lost races (another listing, Grant, Txn, Revoke) come
/// on top.
fn flannel_join_requests_min(n: f64) -> f64 {
    n * n + 9.0 * n
}

async fn run(opts: Opts) -> Result<()> {
    let n = opts.agents;
    let nf = n as f64;
    eprintln!(
        "twscale: {n} agents, TTL {:?}, renew margin {:?} (renew every {:?}), steady window {:?}",
        opts.ttl,
        opts.renew_margin,
        opts.renew_every(),
        opts.steady
    );
    let mut cluster = tokio::task::block_in_place(|| EtcdCluster::start(3))
        .context("starting the 3-member etcd cluster")?;
    let endpoints = cluster.endpoints();
    let checker = EtcdRegistry::connect(EtcdConfig::new(endpoints.clone()))
        .await
        .context("connecting the checker")?;
    checker
        .put_config(&format!(
            r#"{{"Network":"{}","SubnetLen":{},"Backend":{{"Type":"vxlan","VNI":1}}}}"#,
            opts.network, opts.subnet_len
        ))
        .await
        .context("writing the network config")?;
    if opts.steady < opts.renew_every() {
        eprintln!("twscale: the steady window is shorter than a renewal period: it may see none");
    }
    println!("agents: {n} agents");
    println!("etcd_members: {} members", cluster.len());
    println!("ttl: {} s", opts.ttl.as_secs());
    println!("renew_every: {} s", opts.renew_every().as_secs());

    // Join storm.
    let counters = Arc::new(Counters::default());
    let s0 = snapshot(&cluster);
    let joined = storm(&endpoints, &opts, &counters, &[], None).await?;
    let s1 = snapshot(&cluster);
    println!("join_all_held: {:.3} s", joined.all_held.as_secs_f64());
    println!("join_held_p50: {:.3} s", joined.held_p50.as_secs_f64());
    println!(
        "join_all_see_all: {:.3} s",
        joined.all_converged.as_secs_f64()
    );
    let c = check(&checker, &joined.agents).await?;
    println!("join_leases_in_etcd: {} leases", c.leases_in_etcd);
    println!("join_duplicate_subnets: {} subnets", c.duplicate_subnets);
    println!("join_listing_mismatches: {} agents", c.listing_mismatches);
    println!("join_agents_seeing_all: {} agents", c.agents_seeing_all);
    println!(
        "join_creates: {} requests",
        counters.creates.load(Ordering::Relaxed)
    );
    println!(
        "join_lost_races: {} retries",
        counters.lost_races.load(Ordering::Relaxed)
    );
    println!(
        "join_registry_errors: {} errors",
        counters.errors.load(Ordering::Relaxed)
    );
    println!(
        "join_registry_timeouts: {} errors",
        counters.timeouts.load(Ordering::Relaxed)
    );
    print_requests("join", &s0, &s1, None);
    println!(
        "join_flannel_model_min_requests: {:.0} requests",
        flannel_join_requests_min(nf)
    );
    print_usage("join", &s0, &s1, None);
    if c.duplicate_subnets != 0 || c.agents_seeing_all != n || c.leases_in_etcd != n {
        bail!("join storm did not converge cleanly");
    }

    // Steady state: renewals only. Start the window after the storm's
    // stragglers have opened their keepalive streams.
    let s2 = snapshot(&cluster);
    tokio::time::sleep(opts.steady).await;
    let s3 = snapshot(&cluster);
    let window = opts.steady.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let measured = print_requests("steady", &s2, &s3, None) as f64 / window;
    println!("steady_etcd_requests_per_s: {measured:.2} requests/s");
    let renew = opts.renew_every().as_secs_f64();
    println!("steady_twill_model_per_s: {:.2} requests/s", nf / renew);
    let flannel_period = (opts.ttl - opts.renew_margin).as_secs_f64();
    println!(
        "steady_flannel_model_per_s: {:.2} requests/s",
        flannel_steady_requests(nf) / flannel_period
    );
    let day = 24.0 * 3600.0;
    println!(
        "steady_flannel_defaults_per_s: {:.3} requests/s",
        flannel_steady_requests(nf) / (day - 3600.0)
    );
    println!(
        "steady_twill_defaults_per_s: {:.4} requests/s",
        nf / (day - 3600.0)
    );
    let agent_requests: u64 = joined
        .agents
        .iter()
        .map(|a| a.registry.inner.requests_made())
        .sum();
    println!("agents_client_side_requests_total: {agent_requests} requests");
    print_usage("steady", &s2, &s3, None);

    // Restart storm: all stop, all start again.
    let previous: Vec<Option<SubnetKey>> = joined.agents.iter().map(|a| Some(a.key)).collect();
    let counters = Arc::new(Counters::default());
    stop_all(joined.agents).await;
    let s4 = snapshot(&cluster);
    let restarted = storm(&endpoints, &opts, &counters, &previous, None).await?;
    let s5 = snapshot(&cluster);
    let same = restarted
        .agents
        .iter()
        .zip(&previous)
        .filter(|(a, p)| Some(a.key) == **p)
        .count();
    println!("restart_same_subnet: {same} agents");
    println!(
        "restart_all_held: {:.3} s",
        restarted.all_held.as_secs_f64()
    );
    println!(
        "restart_all_see_all: {:.3} s",
        restarted.all_converged.as_secs_f64()
    );
    let c = check(&checker, &restarted.agents).await?;
    println!("restart_duplicate_subnets: {} subnets", c.duplicate_subnets);
    println!("restart_agents_seeing_all: {} agents", c.agents_seeing_all);
    println!(
        "restart_lost_races: {} retries",
        counters.lost_races.load(Ordering::Relaxed)
    );
    print_requests("restart", &s4, &s5, None);
    print_usage("restart", &s4, &s5, None);

    // Restart storm again, losing the etcd leader as it starts.
    let previous: Vec<Option<SubnetKey>> = restarted.agents.iter().map(|a| Some(a.key)).collect();
    let counters = Arc::new(Counters::default());
    stop_all(restarted.agents).await;
    let leader = leader_index(&cluster).context("no etcd leader found")?;
    let killed_at = Arc::new(std::sync::Mutex::new(None::<(Instant, Snapshot)>));
    let s6 = snapshot(&cluster);
    let cluster_cell = Arc::new(std::sync::Mutex::new(cluster));
    let kill = {
        let cluster_cell = Arc::clone(&cluster_cell);
        let killed_at = Arc::clone(&killed_at);
        Box::new(move || -> Result<()> {
            let mut c = cluster_cell
                .lock()
                .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
            // Its counters die with it: read them first.
            let last = snapshot(&c);
            c.kill_member(leader).context("killing the leader")?;
            *killed_at
                .lock()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))? = Some((Instant::now(), last));
            Ok(())
        })
    };
    let failover = storm(&endpoints, &opts, &counters, &previous, Some(kill)).await?;
    cluster = Arc::try_unwrap(cluster_cell)
        .map_err(|_| anyhow::anyhow!("cluster still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
    let s7 = snapshot(&cluster);
    let same = failover
        .agents
        .iter()
        .zip(&previous)
        .filter(|(a, p)| Some(a.key) == **p)
        .count();
    println!("failover_killed_member: {leader} index");
    println!("failover_same_subnet: {same} agents");
    println!(
        "failover_all_held: {:.3} s",
        failover.all_held.as_secs_f64()
    );
    println!(
        "failover_all_see_all: {:.3} s",
        failover.all_converged.as_secs_f64()
    );
    let (since_kill, at_kill) = match killed_at
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .take()
    {
        Some((k, last)) => (
            (failover.start + failover.all_converged)
                .saturating_duration_since(k)
                .as_secs_f64(),
            Some(last),
        ),
        None => (f64::NAN, None),
    };
    println!("failover_converged_after_kill: {since_kill:.3} s");
    let c = check(&checker, &failover.agents).await?;
    println!(
        "failover_duplicate_subnets: {} subnets",
        c.duplicate_subnets
    );
    println!("failover_agents_seeing_all: {} agents", c.agents_seeing_all);
    println!(
        "failover_lost_races: {} retries",
        counters.lost_races.load(Ordering::Relaxed)
    );
    println!(
        "failover_registry_errors: {} errors",
        counters.errors.load(Ordering::Relaxed)
    );
    println!(
        "failover_registry_timeouts: {} errors",
        counters.timeouts.load(Ordering::Relaxed)
    );
    print_requests("failover", &s6, &s7, at_kill.as_ref());
    print_usage("failover", &s6, &s7, at_kill.as_ref());
    stop_all(failover.agents).await;
    drop(checker);
    drop(cluster);
    Ok(())
}

/// The member whose /metrics says `etcd_server_is_leader 1`.
fn leader_index(cluster: &EtcdCluster) -> Option<usize> {
    (0..cluster.len()).find(|&i| {
        cluster
            .member(i)
            .ok()
            .and_then(|m| m.metrics().ok())
            .is_some_and(|t| t.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
    })
}
