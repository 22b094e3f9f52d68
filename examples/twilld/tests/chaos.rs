//! The seeded chaos soak (issue 18): five hosts in network namespaces, a
//! 3-member etcd cluster on the first three, the real twilld with a short
//! lease TTL, a container per host, and a schedule of faults drawn from a
//! seed (`twill_testbed::chaos::schedule`), one at a time or two
//! overlapping, each held then healed; the invariants
//! (`twill_testbed::chaos::check_*`) are checked about every 0.5 s, after
//! each heal once the touched hosts settle, and at the end.
//!
//! ```text
//! SEEDS="1 2" CHAOS_S=30 cargo test -p twilld --test chaos -- --nocapture
//! SEED=7 FAULT=3 cargo test -p twilld --test chaos -- --nocapture   # one fault of seed 7
//! ```
//!
//! Output: `CHAOS fault …` lines (time, seed, fault), `CHAOS VIOLATION …`
//! lines (time, seed, fault, what), one `CHAOS summary …` line per run.
//! Cleanup on panic is the testbed's: namespaces (and the nftables rules
//! inside them), daemons and etcd members go with the cluster's Drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod reliability_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reliability_common::{self as common, DEADLINE};
use twill_testbed::chaos::{
    check_all, check_ping_loss, fake_mac, proc_usage, schedule, Fault, FaultKind, HostObservation,
    Hostile, KernelEdit, Limits, Observed, Shape, Step, Violation,
};
use twill_testbed::cluster::{StoredLease, TwillCluster};

/// The CI seeds: changed only on purpose (a seed that found a bug stays).
/// Seed 2 (fault 5) found the etcd-member black-hole finding (renewals
/// waited on a member whose packets were dropped, fixed in twill-etcd's
/// renewal failover); seed 1 (faults 8, 9) the hostile-PublicIP one (fixed
/// by the PublicIP claims of twill-backend). Both replay with `SEED=`.
const CI_SEEDS: &[u64] = &[1, 2];
/// Seconds of fault holds per seed in CI (two seeds: about 60 s of faults).
const CI_BUDGET_S: u64 = 30;
const HOSTS: usize = 5;
const ETCD_MEMBERS: usize = 3;
const TTL: Duration = Duration::from_secs(5);
/// How long touched hosts may take to settle after a heal before that is a
/// violation: generous (a loaded machine), it catches "never".
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(500);
const DEVICE: &str = "flannel.100";
/// Hostile leases twilld is known to program, a finding of this soak not
/// yet fixed: their entries are logged, not counted as violations. Empty
/// since a free subnet claimed with a live host's `PublicIP` is skipped
/// (`SkipReason::PublicIpInUse`); kept for the next finding.
const KNOWN_UNFIXED: &[Hostile] = &[];
/// Whether cutting off a host that runs an etcd member may expire the
/// leases of daemons connected to that member (no failover within the
/// TTL): while true, such a fault touches every host (none is judged or
/// pinged until the step settles). False since renewals fail over to the
/// other endpoints (reliability_etcd's black-holed member test).
const KNOWN_MEMBER_BLACKHOLE: bool = false;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn chaos_soak() {
    twill_testbed::require_root!();
    twill_testbed::require_etcd!();
    let seeds: Vec<u64> = match (env_u64("SEED"), std::env::var("SEEDS")) {
        (Some(s), _) => vec![s],
        (None, Ok(list)) => list
            .split([' ', ','])
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        (None, Err(_)) => CI_SEEDS.to_vec(),
    };
    let budget = Duration::from_secs(env_u64("CHAOS_S").unwrap_or(CI_BUDGET_S));
    let only = env_u64("FAULT").and_then(|f| usize::try_from(f).ok());
    let mut total = Totals::default();
    for &seed in &seeds {
        let t = run_seed(seed, budget, only);
        total.add(&t);
    }
    eprintln!(
        "CHAOS total: seeds {seeds:?} budget {}s each: faults {} survived {} violations {} \
         worst settle {:.1}s pings {}/{} lost ({:.2}%) max rss {} KiB max fds {}",
        budget.as_secs(),
        total.faults,
        total.faults - total.faults_with_violation,
        total.violations.len(),
        total.worst_settle.as_secs_f64(),
        total.lost,
        total.sent,
        total.loss_pct(),
        total.max_rss,
        total.max_fds,
    );
    // The figures benches/scripts/chaos.sh reports (`name: value unit`).
    for (name, value, unit) in [
        ("chaos_faults", total.faults.to_string(), "faults"),
        (
            "chaos_faults_survived",
            (total.faults - total.faults_with_violation).to_string(),
            "faults",
        ),
        (
            "chaos_violations",
            total.violations.len().to_string(),
            "violations",
        ),
        (
            "chaos_worst_settle",
            format!("{:.1}", total.worst_settle.as_secs_f64()),
            "s after a heal",
        ),
        ("chaos_pings_sent", total.sent.to_string(), "pings"),
        (
            "chaos_ping_loss",
            format!("{:.2}", total.loss_pct()),
            "% of pings",
        ),
        ("chaos_max_rss", total.max_rss.to_string(), "KiB"),
        ("chaos_max_fds", total.max_fds.to_string(), "fds"),
    ] {
        eprintln!("{name}: {value} {unit}");
    }
    assert!(
        total.violations.is_empty(),
        "chaos violations (replay each with SEED=<seed> FAULT=<fault>):\n{}",
        total.violations.join("\n")
    );
}

#[derive(Default)]
struct Totals {
    faults: usize,
    faults_with_violation: usize,
    violations: Vec<String>,
    worst_settle: Duration,
    sent: u64,
    lost: u64,
    max_rss: u64,
    max_fds: u64,
}

impl Totals {
    fn add(&mut self, t: &Totals) {
        self.faults += t.faults;
        self.faults_with_violation += t.faults_with_violation;
        self.violations.extend(t.violations.iter().cloned());
        self.worst_settle = self.worst_settle.max(t.worst_settle);
        self.sent += t.sent;
        self.lost += t.lost;
        self.max_rss = self.max_rss.max(t.max_rss);
        self.max_fds = self.max_fds.max(t.max_fds);
    }

    fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let p = self.lost as f64 * 100.0 / self.sent as f64;
        p
    }
}

/// One seed's run on a fresh cluster.
struct Soak {
    c: TwillCluster,
    seed: u64,
    start: Instant,
    /// Daemons the harness means to be running.
    should_run: Vec<bool>,
    /// etcd members up.
    member_up: Vec<bool>,
    /// Hosts cut from etcd.
    partitioned: BTreeSet<usize>,
    /// Hosts whose cut was healed, with their renewal count then: settled
    /// once each has renewed since. A cut shorter than the TTL can still
    /// cost the lease (renewals come a third of the TTL before expiry, so
    /// one cut 3 s after a renewal leaves 2 s); it then expires just
    /// after the heal, and a settle judged before that was too early
    /// (seed 11, fault 60 of 600 s runs: "subnet.env but lease None" at
    /// the next step).
    renewed_since_heal: BTreeMap<usize, f64>,
    hostile_keys: BTreeSet<String>,
    tolerated_keys: BTreeSet<String>,
    /// Whether a hostile lease is being held (settling with it in place).
    holding_hostile: bool,
    network: twill_model::Ipv4Network,
    limits: Limits,
    totals: Totals,
    /// The fault that is (or was last) in effect, for violation lines.
    current: String,
    ping_round: usize,
}

fn run_seed(seed: u64, budget: Duration, only: Option<usize>) -> Totals {
    let shape = Shape {
        hosts: HOSTS,
        etcd_members: ETCD_MEMBERS,
        ttl: TTL,
    };
    let mut steps = schedule(seed, shape, budget);
    if let Some(i) = only {
        steps = steps
            .into_iter()
            .filter_map(|s| {
                let faults: Vec<Fault> = s.faults.into_iter().filter(|f| f.index == i).collect();
                (!faults.is_empty()).then_some(Step { faults, ..s })
            })
            .collect();
        assert!(!steps.is_empty(), "seed {seed} has no fault {i}");
    }
    let mut s = Soak::new(seed);
    for step in &steps {
        s.run_step(step);
    }
    s.finish();
    s.totals
}

impl Soak {
    fn new(seed: u64) -> Self {
        let mut c = common::builder(HOSTS)
            .etcd_members(ETCD_MEMBERS)
            .no_daemons()
            .build(common::TWILLD)
            .unwrap();
        // Every daemon knows every member: losing one member is a fault
        // of etcd, not a partition of the host that runs it.
        let endpoints = format!("-etcd-endpoints={}", c.etcd().endpoints().join(","));
        for i in 0..HOSTS {
            let mut args = c.base_args(i);
            args.retain(|a| !a.starts_with("-etcd-endpoints"));
            args.push(endpoints.clone());
            args.push(format!("--lease-ttl={}s", TTL.as_secs()));
            c.start_twilld_with(i, args).unwrap();
        }
        c.wait_all_ready(DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        common::wait_converged(&c, DEADLINE);
        c.add_containers().unwrap();
        common::all_ping(&c).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        let network = common::CONFIG
            .split("\"Network\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        eprintln!(
            "CHAOS seed {seed}: {HOSTS} hosts, {ETCD_MEMBERS} etcd members, ttl {}s",
            TTL.as_secs()
        );
        Soak {
            c,
            seed,
            start: Instant::now(),
            should_run: vec![true; HOSTS],
            member_up: vec![true; ETCD_MEMBERS],
            partitioned: BTreeSet::new(),
            renewed_since_heal: BTreeMap::new(),
            hostile_keys: BTreeSet::new(),
            tolerated_keys: BTreeSet::new(),
            holding_hostile: false,
            network,
            limits: Limits::default(),
            totals: Totals::default(),
            current: "setup".into(),
            ping_round: 0,
        }
    }

    /// Time into the run, and the UTC time of day the daemons' logs use.
    fn t(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (s, ms) = (now.as_secs() % 86_400, now.subsec_millis());
        format!(
            "t={:.1}s ({:02}:{:02}:{:02}.{ms:03}Z)",
            self.start.elapsed().as_secs_f64(),
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }

    fn log(&self, what: &str) {
        eprintln!("CHAOS {} seed={} {what}", self.t(), self.seed);
    }

    fn violation(&mut self, v: &Violation) -> bool {
        let line = format!(
            "CHAOS VIOLATION {} seed={} fault={}: {v}",
            self.t(),
            self.seed,
            self.current
        );
        eprintln!("{line}");
        // One line per distinct violation and fault, not one per tick.
        let key = format!("seed={} fault={}: {v}", self.seed, self.current);
        if self.totals.violations.iter().any(|l| l.ends_with(&key)) {
            return false;
        }
        self.totals.violations.push(line);
        true
    }

    /// `etcdctl ARGS` on an up member not cut off, with a short timeout so a
    /// tick never waits on a member without a quorum.
    fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let mut full = vec!["--command-timeout=2s"];
        full.extend_from_slice(args);
        (0..ETCD_MEMBERS)
            .filter(|&m| self.member_up[m] && !self.partitioned.contains(&m))
            .find_map(|m| self.c.etcd().member(m).ok()?.etcdctl(&full).ok())
    }

    fn leases(&self) -> Option<Vec<StoredLease>> {
        let out = self.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"])?;
        let lines: Vec<&str> = out.lines().collect();
        Some(
            lines
                .chunks(2)
                .filter_map(|p| match p {
                    [k, v] => StoredLease::parse(k, v),
                    _ => None,
                })
                .collect(),
        )
    }

    fn lease_of(&self, host: usize) -> Option<StoredLease> {
        let ip = self.c.ip(host);
        self.leases()?
            .into_iter()
            .find(|l| l.public_ip == Some(ip) && !self.hostile_keys.contains(&l.key))
    }

    /// Observes everything; `None` when etcd cannot be read (a majority down).
    fn observe(&mut self, touched: &BTreeSet<usize>, with_kernel: bool) -> Option<Observed> {
        let leases = self.leases()?;
        let mut hosts = Vec::new();
        for i in 0..HOSTS {
            let d = self.c.daemon_mut(i);
            let running = d.is_running();
            let exit = d.exit_status().map(|s| s.to_string());
            let (rss, fds) = d.pid().map_or((None, None), proc_usage);
            self.totals.max_rss = self.totals.max_rss.max(rss.unwrap_or(0));
            self.totals.max_fds = self.totals.max_fds.max(fds.unwrap_or(0));
            hosts.push(HostObservation {
                ip: self.c.ip(i),
                name: self.c.name(i).to_string(),
                touched: touched.contains(&i),
                should_run: self.should_run[i],
                running,
                exit,
                subnet_env: self.c.subnet_env(i).ok().map(|e| e.subnet_network()),
                kernel: if with_kernel {
                    self.c.kernel_state(i).ok()
                } else {
                    None
                },
                rss_kib: rss,
                fds,
            });
        }
        Some(Observed {
            leases,
            hostile_keys: self.hostile_keys.clone(),
            tolerated_keys: self.tolerated_keys.clone(),
            network: Some(self.network),
            backend: "vxlan".into(),
            hosts,
        })
    }

    /// One container ping between two untouched hosts (round robin).
    fn ping_untouched(&mut self, touched: &BTreeSet<usize>) {
        let ok: Vec<usize> = (0..HOSTS).filter(|i| !touched.contains(i)).collect();
        if ok.len() < 2 {
            return;
        }
        let pairs: Vec<(usize, usize)> = ok
            .iter()
            .flat_map(|&a| ok.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
            .collect();
        let (a, b) = pairs[self.ping_round % pairs.len()];
        self.ping_round += 1;
        let (Some(ns), Some(dst)) = (self.c.container(a), self.c.container_ip(b)) else {
            return;
        };
        let dst = dst.to_string();
        let answered = ns.exec("ping", &["-c", "1", "-W", "1", "-q", &dst]).is_ok();
        self.totals.sent += 1;
        if !answered {
            self.totals.lost += 1;
            self.log(&format!(
                "ping {} -> {} lost",
                self.c.name(a),
                self.c.name(b)
            ));
        }
    }

    /// Holds for `hold`, checking the always-invariants every tick.
    fn hold(&mut self, hold: Duration, touched: &BTreeSet<usize>) -> bool {
        let end = Instant::now() + hold;
        let mut bad = false;
        while Instant::now() < end {
            let tick = Instant::now();
            // Touched hosts (cut off, stopped, edited) are not judged until
            // they settle.
            if let Some(o) = self.observe(touched, false) {
                for v in check_all(&o, &self.limits) {
                    bad |= self.violation(&v);
                }
            }
            self.ping_untouched(touched);
            if let Some(rest) = TICK.checked_sub(tick.elapsed()) {
                std::thread::sleep(rest.min(end.saturating_duration_since(Instant::now())));
            }
        }
        bad
    }

    /// After a heal: waits until every host passes every invariant, kernel
    /// included; the time it took is the fault's convergence.
    fn settle(&mut self, touched: &BTreeSet<usize>) -> bool {
        let t = Instant::now();
        let mut last = Vec::new();
        while t.elapsed() < SETTLE_DEADLINE {
            let tick = Instant::now();
            if self.tolerated_keys.is_empty()
                && !self.hostile_keys.is_empty()
                && !self.holding_hostile
            {
                self.delete_hostile();
            }
            if let Some(o) = self.observe(&BTreeSet::new(), true) {
                last = check_all(&o, &self.limits);
                // A kernel that could not be read is not a settled one.
                let unread = o.hosts.iter().any(|h| h.kernel.is_none());
                let renewed = self.renewed_since_heal.iter().all(|(&h, &n)| {
                    !self.should_run[h]
                        || common::metric(&self.c, h, "twill_lease_renewals_total")
                            .is_some_and(|now| now > n)
                });
                if last.is_empty() && !unread && renewed {
                    self.renewed_since_heal.clear();
                    let took = t.elapsed();
                    self.totals.worst_settle = self.totals.worst_settle.max(took);
                    self.log(&format!("settled in {:.1}s", took.as_secs_f64()));
                    return false;
                }
                // Exits and leaks are violations at once; the rest may
                // still be converging.
                for v in &last {
                    if matches!(
                        v,
                        Violation::DaemonExited { .. } | Violation::Resource { .. }
                    ) {
                        self.violation(v);
                    }
                }
            }
            self.ping_untouched(touched);
            if let Some(rest) = TICK.checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        for v in &last {
            self.violation(v);
        }
        let names: Vec<&str> = touched.iter().map(|&h| self.c.name(h)).collect();
        let host = format!("touched {names:?}");
        self.violation(&Violation::NotSettled {
            host,
            waited: SETTLE_DEADLINE,
        });
        eprintln!("{}", self.c.logs());
        true
    }

    fn run_step(&mut self, step: &Step) {
        let names: Vec<String> = step
            .faults
            .iter()
            .map(|f| format!("{}:{}", f.index, f.kind))
            .collect();
        self.current = step
            .faults
            .iter()
            .map(|f| f.index.to_string())
            .collect::<Vec<_>>()
            .join("+");
        self.log(&format!(
            "fault {} hold {:.1}s",
            names.join(" + "),
            step.hold.as_secs_f64()
        ));
        let mut touched = BTreeSet::new();
        for f in &step.faults {
            if let Some(h) = self.apply(&f.kind) {
                touched.insert(h);
            }
            let member_cut = matches!(
                f.kind,
                FaultKind::Partition { host, .. } | FaultKind::CompactWhileAway { host }
                    if host < ETCD_MEMBERS
            );
            if KNOWN_MEMBER_BLACKHOLE && member_cut {
                self.log(
                    "KNOWN: an etcd member's host cut off; every host touched (reported, unfixed)",
                );
                touched.extend(0..HOSTS);
            }
        }
        let mut bad = self.hold(step.hold, &touched);
        let hostile = |f: &&Fault| matches!(f.kind, FaultKind::HostileLease { .. });
        if step.faults.iter().any(|f| hostile(&f)) {
            // The step's other faults healed first: with an etcd majority
            // still down there would be no store to judge the kernels by
            // (seed 11, faults 120+121 and 138+139 of a 600 s run).
            for f in step.faults.iter().filter(|f| !hostile(f)) {
                self.heal(&f.kind);
            }
            // With the hostile lease still in etcd: every kernel must come
            // to the valid leases, the hostile one left out.
            self.log("settling with the hostile lease in place");
            self.holding_hostile = true;
            bad |= self.settle(&touched);
            self.holding_hostile = false;
            for f in step.faults.iter().filter(hostile) {
                self.heal(&f.kind);
            }
        } else {
            for f in &step.faults {
                self.heal(&f.kind);
            }
        }
        self.log(&format!("healed {}", names.join(" + ")));
        bad |= self.settle(&touched);
        self.totals.faults += step.faults.len();
        if bad {
            self.totals.faults_with_violation += step.faults.len();
        }
    }

    /// Applies a fault; returns the host whose daemon or dataplane it
    /// touches (not judged until it settles; not pinged meanwhile).
    fn apply(&mut self, k: &FaultKind) -> Option<usize> {
        match *k {
            FaultKind::Kill { host, .. } => {
                self.should_run[host] = false;
                self.c.daemon_mut(host).kill().unwrap();
                Some(host)
            }
            FaultKind::Stop { host } => {
                self.signal(host, "-STOP");
                Some(host)
            }
            FaultKind::EtcdMember { member } => {
                self.member_up[member] = false;
                self.c.etcd_mut().kill_member(member).unwrap();
                None
            }
            FaultKind::EtcdMajority => {
                for m in [1, 2] {
                    self.member_up[m] = false;
                    self.c.etcd_mut().kill_member(m).unwrap();
                }
                None
            }
            FaultKind::Partition { host, .. } => {
                self.partitioned.insert(host);
                common::partition_from_etcd(&self.c, host);
                Some(host)
            }
            FaultKind::Kernel { host, edit } => {
                self.edit_kernel(host, edit);
                Some(host)
            }
            FaultKind::HostileLease { kind, victim } => {
                self.write_hostile(kind, victim);
                None
            }
            FaultKind::CompactWhileAway { host } => {
                self.partitioned.insert(host);
                common::partition_from_etcd(&self.c, host);
                self.compact_while_away();
                Some(host)
            }
        }
    }

    fn heal(&mut self, k: &FaultKind) {
        match *k {
            FaultKind::Kill { host, .. } => {
                self.c.daemon_mut(host).spawn().unwrap();
                self.should_run[host] = true;
            }
            FaultKind::Stop { host } => self.signal(host, "-CONT"),
            FaultKind::EtcdMember { member } => {
                self.c.etcd_mut().start_member(member).unwrap();
                self.member_up[member] = true;
            }
            FaultKind::EtcdMajority => {
                for m in [1, 2] {
                    self.c.etcd_mut().start_member(m).unwrap();
                    self.member_up[m] = true;
                }
            }
            FaultKind::Partition { host, .. } | FaultKind::CompactWhileAway { host } => {
                common::heal_partition(&self.c, host);
                self.partitioned.remove(&host);
                let renewals = common::metric(&self.c, host, "twill_lease_renewals_total");
                if let Some(n) = renewals.filter(|_| self.should_run[host]) {
                    self.renewed_since_heal.insert(host, n);
                }
            }
            FaultKind::Kernel { .. } => {}
            FaultKind::HostileLease { .. } => {
                self.tolerated_keys.clear();
                self.delete_hostile();
            }
        }
    }

    /// Deletes the hostile keys; one that cannot be deleted yet (etcd
    /// without a quorum in an overlapping fault) stays hostile and is
    /// retried at every settle tick, so it is never judged a valid lease.
    fn delete_hostile(&mut self) {
        for key in self.hostile_keys.clone() {
            if self.etcdctl(&["del", &key]).is_some() {
                self.hostile_keys.remove(&key);
            } else {
                self.log(&format!("could not delete hostile {key} yet"));
            }
        }
    }

    fn signal(&mut self, host: usize, sig: &str) {
        let pid = self.c.daemon(host).pid().expect("daemon pid").to_string();
        // By PID: only the daemon this harness started.
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Runs `prog args` in host `host`'s namespace; a failure (the entry
    /// already gone) is logged, not fatal: the fault is what matters.
    fn run_in(&self, host: usize, prog: &str, args: &[&str]) {
        if let Err(e) = self.c.ns(host).exec(prog, args) {
            self.log(&format!("{prog} {args:?} on h{}: {e}", host + 1));
        }
    }

    fn edit_kernel(&mut self, host: usize, edit: KernelEdit) {
        let peer = (host + 1) % HOSTS;
        let lease = self.lease_of(peer);
        let (subnet, gw, mac) = match &lease {
            Some(l) => (
                l.subnet.to_string(),
                l.subnet.network().to_string(),
                l.vtep_mac.clone().unwrap_or_default(),
            ),
            None => {
                self.log("no peer lease to edit; deleting the device instead");
                self.run_in(host, "ip", &["link", "del", DEVICE]);
                return;
            }
        };
        let peer_ip = self.c.ip(peer).to_string();
        match edit {
            KernelEdit::DeleteDevice => self.run_in(host, "ip", &["link", "del", DEVICE]),
            KernelEdit::DeleteRoute => self.run_in(host, "ip", &["route", "del", &subnet]),
            KernelEdit::DeleteFdb => self.run_in(
                host,
                "bridge",
                &["fdb", "del", &mac, "dev", DEVICE, "dst", &peer_ip],
            ),
            KernelEdit::DeleteNeigh => {
                self.run_in(host, "ip", &["neigh", "del", &gw, "dev", DEVICE]);
            }
            KernelEdit::CorruptNeigh => {
                let wrong = fake_mac(0x99).to_string();
                self.run_in(
                    host,
                    "ip",
                    &[
                        "neigh",
                        "replace",
                        &gw,
                        "lladdr",
                        &wrong,
                        "dev",
                        DEVICE,
                        "nud",
                        "permanent",
                    ],
                );
            }
            KernelEdit::AddStale => {
                let stale_mac = fake_mac(0xfa).to_string();
                self.run_in(
                    host,
                    "ip",
                    &[
                        "route",
                        "add",
                        "192.168.250.0/24",
                        "via",
                        "192.168.250.0",
                        "dev",
                        DEVICE,
                        "onlink",
                        "proto",
                        "241",
                    ],
                );
                self.run_in(
                    host,
                    "ip",
                    &[
                        "neigh",
                        "add",
                        "192.168.250.0",
                        "lladdr",
                        &stale_mac,
                        "dev",
                        DEVICE,
                        "nud",
                        "permanent",
                    ],
                );
                self.run_in(
                    host,
                    "bridge",
                    &[
                        "fdb",
                        "append",
                        &stale_mac,
                        "dev",
                        DEVICE,
                        "dst",
                        "10.0.0.250",
                    ],
                );
            }
        }
    }

    fn write_hostile(&mut self, kind: Hostile, victim: usize) {
        let victim_lease = self.lease_of(victim);
        let victim_ip = self.c.ip(victim).to_string();
        let (subnet, value) = match kind {
            Hostile::OutsideNetwork => (
                "10.99.0.0-24".to_string(),
                common::vxlan_lease("10.0.0.240", &fake_mac(0x40).to_string()),
            ),
            Hostile::Malformed => (
                "192.168.150.0-24".to_string(),
                r#"{"PublicIP":"10.0.0.241","BackendType":"#.to_string(),
            ),
            Hostile::LivePublicIp => (
                "192.168.151.0-24".to_string(),
                common::vxlan_lease(&victim_ip, &fake_mac(0x51).to_string()),
            ),
            Hostile::LiveVtepMac => {
                let mac = victim_lease
                    .as_ref()
                    .and_then(|l| l.vtep_mac.clone())
                    .unwrap_or_else(|| fake_mac(0x52).to_string());
                (
                    "192.168.152.0-24".to_string(),
                    common::vxlan_lease("10.0.0.242", &mac),
                )
            }
            Hostile::AliasKey => {
                let base = victim_lease.as_ref().map_or_else(
                    || "192.168.153.0".to_string(),
                    |l| l.subnet.ip().to_string(),
                );
                (
                    format!("{base}-024"),
                    common::vxlan_lease("10.0.0.243", &fake_mac(0x53).to_string()),
                )
            }
        };
        let key = common::lease_key(&subnet);
        self.hostile_keys.insert(key.clone());
        if KNOWN_UNFIXED.contains(&kind) {
            self.log(&format!(
                "KNOWN: {kind:?} is programmed by twilld (reported, unfixed)"
            ));
            self.tolerated_keys.insert(key.clone());
        }
        if self.etcdctl(&["put", &key, &value]).is_none() {
            self.log(&format!("could not write hostile {key}"));
        }
    }

    /// With one host cut off: a lease appears and goes, filler puts, and
    /// history is compacted past all of it.
    fn compact_while_away(&mut self) {
        let key = common::lease_key("192.168.160.0-24");
        let value = common::vxlan_lease("10.0.0.244", &fake_mac(0x60).to_string());
        let _ = self.etcdctl(&["put", &key, &value]);
        for n in 0..10 {
            let _ = self.etcdctl(&["put", "/twill-chaos/filler", &n.to_string()]);
        }
        let _ = self.etcdctl(&["del", &key]);
        let _ = self.etcdctl(&["del", "/twill-chaos/filler"]);
        let rev = self
            .etcdctl(&["endpoint", "status", "-w", "json"])
            .and_then(|s| {
                let r: String = s
                    .split("\"revision\":")
                    .nth(1)?
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                (!r.is_empty()).then_some(r)
            });
        match rev {
            Some(rev) => {
                if self.etcdctl(&["compact", &rev, "--physical"]).is_none() {
                    self.log("compaction failed");
                }
            }
            None => self.log("no revision to compact at"),
        }
    }

    /// At the end: every host converged and every pair pings.
    fn finish(&mut self) {
        self.current = "end".into();
        let all: Vec<usize> = (0..HOSTS).collect();
        let r = TwillCluster::poll(SETTLE_DEADLINE, "every host converged at the end", || {
            self.c.mismatches(&all).is_ok_and(|m| m.is_empty())
        });
        if let Err(e) = r {
            self.violation(&Violation::NotSettled {
                host: format!("{e}"),
                waited: SETTLE_DEADLINE,
            });
        }
        // A host whose subnet changed (lease expired and taken elsewhere)
        // would have a stale container; the subnet files say.
        if let Err(e) = common::all_ping(&self.c) {
            let line = format!(
                "CHAOS VIOLATION {} seed={} fault=end: {e}",
                self.t(),
                self.seed
            );
            eprintln!("{line}");
            self.totals.violations.push(line);
        }
        let pings = check_ping_loss(self.totals.sent, self.totals.lost, &self.limits);
        for v in &pings {
            self.violation(v);
        }
        let t = &self.totals;
        #[allow(clippy::cast_precision_loss)]
        let loss = if t.sent == 0 {
            0.0
        } else {
            t.lost as f64 * 100.0 / t.sent as f64
        };
        eprintln!(
            "CHAOS summary seed={} {:.0}s: faults {} survived {} violations {} worst settle {:.1}s \
             pings {}/{} lost ({loss:.2}%) max rss {} KiB max fds {}",
            self.seed,
            self.start.elapsed().as_secs_f64(),
            t.faults,
            t.faults - t.faults_with_violation,
            t.violations.len(),
            t.worst_settle.as_secs_f64(),
            t.lost,
            t.sent,
            t.max_rss,
            t.max_fds,
        );
    }
}
