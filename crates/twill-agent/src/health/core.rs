//! The probe scheduler, sans IO: which peer to probe next, within the
//! budget; what a reply or a timeout means; when a peer becomes unreachable
//! or recovers. It never reads the clock nor touches a socket: the prober
//! thread ([`super::prober`]) passes `now` in and sends what it is told.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_model::SubnetKey;

use super::{HealthOptions, PeerHealth, Reachability, UnreachableCause};

/// A peer to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The peer's lease.
    pub key: SubnetKey,
    /// Its `PublicIP` (the underlay).
    pub public_ip: Ipv4Addr,
    /// Its address on the overlay (a VXLAN peer's `<subnet>.0`), whose
    /// echo crosses the tunnel; `None` where the backend has no tunnel
    /// (host-gw routes straight to `public_ip`, so the underlay probe is
    /// the data path's probe).
    pub overlay: Option<Ipv4Addr>,
}

/// What a probe goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// To the overlay address, through the tunnel.
    Overlay,
    /// To the `PublicIP`, over the underlay.
    Underlay,
}

/// One ICMP echo to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The echo's sequence number, which its reply carries back.
    pub seq: u16,
    /// Where to send it.
    pub dst: Ipv4Addr,
    /// Through the tunnel or over the underlay.
    pub kind: ProbeKind,
}

/// A peer's reachability changed (one log line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// The peer stopped answering.
    Unreachable {
        /// The peer.
        target: ProbeTarget,
        /// What the probes tell of why.
        cause: UnreachableCause,
    },
    /// The peer answers again (or for the first time after being
    /// unreachable).
    Recovered {
        /// The peer.
        target: ProbeTarget,
        /// The round trip of the answer.
        rtt: Duration,
    },
}

/// One peer's probe state. Kept small, as there is one per peer (10,000
/// of them take 0.8 MB; with the target, its key and a `Duration` inside,
/// they took 1.9): the key is the map's, the round trip in microseconds.
#[derive(Debug, Clone)]
struct PeerState {
    public_ip: Ipv4Addr,
    overlay: Option<Ipv4Addr>,
    reachability: Reachability,
    /// Consecutive probes of the data path without an answer.
    misses: u16,
    /// Whether the underlay answered during the current run of misses
    /// (`None`: not asked, or no answer yet).
    underlay_ok: Option<bool>,
    underlay_in_flight: bool,
    /// Round trip of the last answer, in microseconds (saturating).
    rtt_us: Option<u32>,
    next_due: Instant,
}

impl PeerState {
    fn target(&self, key: SubnetKey) -> ProbeTarget {
        ProbeTarget {
            key,
            public_ip: self.public_ip,
            overlay: self.overlay,
        }
    }

    fn is(&self, t: &ProbeTarget) -> bool {
        (self.public_ip, self.overlay) == (t.public_ip, t.overlay)
    }
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    seq: u16,
    key: SubnetKey,
    dst: Ipv4Addr,
    kind: ProbeKind,
    sent: Instant,
}

/// The scheduler: the peers' states, the probes in flight and the budget.
#[derive(Debug)]
pub struct HealthCore {
    options: HealthOptions,
    /// UDP port of the tunnel, named when the tunnel is what fails.
    tunnel_port: Option<u16>,
    peers: BTreeMap<SubnetKey, PeerState>,
    /// (due, key): the data-path probes in the order they fall due.
    due: BTreeSet<(Instant, SubnetKey)>,
    /// In send order, so also in deadline order (one timeout for all).
    in_flight: VecDeque<Outstanding>,
    /// Peers whose underlay is to be asked, before any data-path probe.
    underlay_wanted: BTreeSet<SubnetKey>,
    by_seq: HashMap<u16, SubnetKey>,
    next_seq: u16,
    /// Generic cell rate: the theoretical time of the next probe. A probe
    /// may go when this is at most `burst` gaps ahead of now.
    budget_at: Instant,
    changes: VecDeque<HealthChange>,
    sent: u64,
}

/// Probes the budget lets go at once after an idle spell.
const BURST: u32 = 10;

impl HealthCore {
    /// A scheduler with no peers. `tunnel_port` is the UDP port the
    /// tunnel uses (VXLAN's), named when the overlay fails and the underlay
    /// answers.
    #[must_use]
    pub fn new(options: HealthOptions, tunnel_port: Option<u16>, now: Instant) -> Self {
        HealthCore {
            options,
            tunnel_port,
            peers: BTreeMap::new(),
            due: BTreeSet::new(),
            in_flight: VecDeque::new(),
            underlay_wanted: BTreeSet::new(),
            by_seq: HashMap::new(),
            next_seq: 0,
            budget_at: now,
            changes: VecDeque::new(),
            sent: 0,
        }
    }

    /// Time between two probes of one peer: the options' interval, or
    /// longer when the peers are so many that the budget cannot probe each
    /// that often.
    #[must_use]
    pub fn period(&self) -> Duration {
        let rate = self.options.max_probes_per_second.max(1);
        let n = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
        let spread = Duration::from_secs(1)
            .checked_mul(n)
            .map_or(Duration::MAX, |d| d / rate);
        self.options.interval.max(spread)
    }

    fn gap(&self) -> Duration {
        Duration::from_secs(1) / self.options.max_probes_per_second.max(1)
    }

    /// Sets the peers to probe. Peers kept keep their state (a peer whose
    /// addresses changed starts afresh); new peers are spread evenly over
    /// one period, in key order, so that a start with 10,000 peers does not
    /// probe them all at once.
    pub fn set_targets(&mut self, targets: &[ProbeTarget], now: Instant) {
        let wanted: BTreeMap<SubnetKey, ProbeTarget> =
            targets.iter().map(|t| (t.key, *t)).collect();
        let gone: Vec<SubnetKey> = self
            .peers
            .iter()
            .filter(|(k, p)| !wanted.get(k).is_some_and(|t| p.is(t)))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.forget(key);
        }
        let new: Vec<ProbeTarget> = wanted
            .values()
            .filter(|t| !self.peers.contains_key(&t.key))
            .copied()
            .collect();
        self.add(new, now);
    }

    /// Applies the changes of some peers only: each key's target now
    /// (`None`: no longer probed). The same rules as [`Self::set_targets`],
    /// at a cost that depends on the changes, not on the number of peers:
    /// what a lease event costs.
    pub fn update_targets(&mut self, changes: &[(SubnetKey, Option<ProbeTarget>)], now: Instant) {
        let mut new = Vec::new();
        for (key, target) in changes {
            let kept = match (self.peers.get(key), target) {
                (Some(p), Some(t)) => p.is(t),
                _ => false,
            };
            if kept {
                continue;
            }
            self.forget(*key);
            new.extend(*target);
        }
        new.sort_by_key(|t| t.key);
        self.add(new, now);
    }

    fn forget(&mut self, key: SubnetKey) {
        if let Some(p) = self.peers.remove(&key) {
            self.due.remove(&(p.next_due, key));
            self.underlay_wanted.remove(&key);
        }
    }

    /// Starts probing `new` (in this order), spread evenly over a period.
    fn add(&mut self, new: Vec<ProbeTarget>, now: Instant) {
        let n = u32::try_from(self.peers.len() + new.len()).unwrap_or(u32::MAX);
        let mut period = self.options.interval;
        let rate = self.options.max_probes_per_second.max(1);
        if let Some(d) = Duration::from_secs(1).checked_mul(n) {
            period = period.max(d / rate);
        }
        let batch = new.len();
        let count = u32::try_from(batch).unwrap_or(u32::MAX).max(1);
        let states = new.into_iter().enumerate().map(|(i, target)| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let state = PeerState {
                public_ip: target.public_ip,
                overlay: target.overlay,
                reachability: Reachability::Unknown,
                misses: 0,
                underlay_ok: None,
                underlay_in_flight: false,
                rtt_us: None,
                next_due: now + period / count * i,
            };
            (target.key, state)
        });
        if batch >= self.peers.len() {
            // Many at once (a start): maps built in one go have full nodes,
            // where inserting in key order leaves them half empty, 0.9 MB
            // more at 10,000 peers.
            let mut all: Vec<(SubnetKey, PeerState)> =
                std::mem::take(&mut self.peers).into_iter().collect();
            all.extend(states);
            self.due = all.iter().map(|(k, p)| (p.next_due, *k)).collect();
            self.peers = all.into_iter().collect();
        } else {
            for (key, state) in states {
                self.due.insert((state.next_due, key));
                self.peers.insert(key, state);
            }
        }
    }

    /// The next probe to send now, if one is due and the budget allows.
    /// Underlay probes of peers that stopped answering go first.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        self.expire(now);
        let gap = self.gap();
        if self.budget_at > now + gap * (BURST - 1) {
            return None;
        }
        let (key, kind) = if let Some(key) = self.underlay_wanted.pop_first() {
            (key, ProbeKind::Underlay)
        } else {
            let &(due, key) = self.due.first()?;
            if due > now {
                return None;
            }
            self.due.remove(&(due, key));
            let period = self.period();
            let p = self.peers.get_mut(&key)?;
            // A peer that missed is asked again as soon as the answer is
            // overdue, not a whole period later.
            p.next_due = if p.misses > 0 {
                now + self.options.timeout
            } else {
                now + period
            };
            self.due.insert((p.next_due, key));
            let kind = if p.overlay.is_some() {
                ProbeKind::Overlay
            } else {
                ProbeKind::Underlay
            };
            (key, kind)
        };
        let seq = self.free_seq()?;
        let p = self.peers.get_mut(&key)?;
        let dst = match kind {
            ProbeKind::Overlay => p.overlay.unwrap_or(p.public_ip),
            ProbeKind::Underlay => p.public_ip,
        };
        if kind == ProbeKind::Underlay && p.overlay.is_some() {
            p.underlay_in_flight = true;
        }
        self.budget_at = self.budget_at.max(now) + gap;
        self.by_seq.insert(seq, key);
        self.in_flight.push_back(Outstanding {
            seq,
            key,
            dst,
            kind,
            sent: now,
        });
        self.sent += 1;
        Some(Probe { seq, dst, kind })
    }

    fn free_seq(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            if !self.by_seq.contains_key(&seq) {
                return Some(seq);
            }
        }
        None
    }

    /// An echo reply with `seq` came from `from`. Replies to no probe of
    /// ours, from another address or after their timeout are ignored.
    pub fn handle_reply(&mut self, seq: u16, from: Ipv4Addr, now: Instant) {
        self.expire(now);
        let Some(pos) = self.in_flight.iter().position(|o| o.seq == seq) else {
            return;
        };
        let Some(out) = self.in_flight.get(pos).copied() else {
            return;
        };
        if out.dst != from {
            return;
        }
        self.in_flight.remove(pos);
        self.by_seq.remove(&seq);
        let rtt = now.saturating_duration_since(out.sent);
        let period = self.period();
        let Some(p) = self.peers.get_mut(&out.key) else {
            return;
        };
        let data_path = out.kind == ProbeKind::Overlay || p.overlay.is_none();
        if !data_path {
            p.underlay_in_flight = false;
            p.underlay_ok = Some(true);
            Self::settle(
                out.key,
                p,
                self.tunnel_port,
                self.options.misses,
                &mut self.changes,
            );
            return;
        }
        p.rtt_us = Some(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX));
        p.misses = 0;
        p.underlay_ok = None;
        if p.reachability != Reachability::Reachable {
            let was_unreachable = matches!(p.reachability, Reachability::Unreachable(_));
            p.reachability = Reachability::Reachable;
            if was_unreachable {
                self.changes.push_back(HealthChange::Recovered {
                    target: p.target(out.key),
                    rtt,
                });
            }
        }
        // Back to the normal cadence.
        if self.due.remove(&(p.next_due, out.key)) {
            p.next_due = out.sent + period;
            self.due.insert((p.next_due, out.key));
        }
    }

    /// Probes past their timeout count as misses.
    fn expire(&mut self, now: Instant) {
        while let Some(out) = self.in_flight.front().copied() {
            if now.saturating_duration_since(out.sent) < self.options.timeout {
                break;
            }
            self.in_flight.pop_front();
            self.by_seq.remove(&out.seq);
            let Some(p) = self.peers.get_mut(&out.key) else {
                continue;
            };
            let data_path = out.kind == ProbeKind::Overlay || p.overlay.is_none();
            if data_path {
                p.misses = p.misses.saturating_add(1);
                // Ask again now rather than a whole period later.
                if p.next_due > now && self.due.remove(&(p.next_due, out.key)) {
                    p.next_due = now;
                    self.due.insert((now, out.key));
                }
                if p.overlay.is_some() && !p.underlay_in_flight {
                    // Ask the underlay what it makes of it: tells a blocked
                    // tunnel from a host that is down.
                    self.underlay_wanted.insert(out.key);
                }
            } else {
                p.underlay_in_flight = false;
                p.underlay_ok = Some(false);
            }
            Self::settle(
                out.key,
                p,
                self.tunnel_port,
                self.options.misses,
                &mut self.changes,
            );
        }
    }

    /// Declares a peer unreachable once it missed enough probes and (with a
    /// tunnel) the underlay told what it knows; updates the cause of one
    /// already unreachable.
    fn settle(
        key: SubnetKey,
        p: &mut PeerState,
        port: Option<u16>,
        threshold: u32,
        changes: &mut VecDeque<HealthChange>,
    ) {
        if u32::from(p.misses) < threshold.max(1) {
            return;
        }
        let cause = if p.overlay.is_none() {
            UnreachableCause::NoReply
        } else {
            match p.underlay_ok {
                None => return,
                Some(true) => match port {
                    Some(port) => UnreachableCause::TunnelBlocked { port },
                    None => UnreachableCause::NoReply,
                },
                Some(false) => UnreachableCause::HostDown,
            }
        };
        match p.reachability {
            Reachability::Unreachable(old) if old == cause => {}
            Reachability::Unreachable(_) => p.reachability = Reachability::Unreachable(cause),
            _ => {
                p.reachability = Reachability::Unreachable(cause);
                changes.push_back(HealthChange::Unreachable {
                    target: p.target(key),
                    cause,
                });
            }
        }
    }

    /// The next reachability change, oldest first.
    pub fn poll_change(&mut self) -> Option<HealthChange> {
        self.changes.pop_front()
    }

    /// When to call [`Self::poll_probe`] again at the latest: the next due
    /// probe, the next timeout, or when the budget allows the next probe.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self
            .in_flight
            .front()
            .map(|o| o.sent + self.options.timeout);
        let due = if self.underlay_wanted.is_empty() {
            self.due.first().map(|(t, _)| *t)
        } else {
            self.in_flight
                .front()
                .map_or(Some(self.budget_at), |o| Some(o.sent))
        };
        // Not before the budget lets the next probe go.
        let allowed = self.budget_at.checked_sub(self.gap() * (BURST - 1));
        let due = due.map(|d| allowed.map_or(d, |a| d.max(a)));
        [timeout, due].into_iter().flatten().min()
    }

    /// Every peer's state, in key order.
    #[must_use]
    pub fn report(&self) -> Vec<PeerHealth> {
        self.peers
            .iter()
            .map(|(key, p)| PeerHealth {
                key: *key,
                public_ip: p.public_ip,
                target: p.overlay.unwrap_or(p.public_ip),
                reachability: p.reachability,
                rtt: p.rtt_us.map(|us| Duration::from_micros(u64::from(us))),
            })
            .collect()
    }

    /// Probes sent so far.
    #[must_use]
    pub fn probes_sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(i: u32) -> SubnetKey {
        let net = Ipv4Addr::from(0x0a05_0000 + (i << 8));
        SubnetKey::v4(twill_model::Ipv4Network::new(net, 24).unwrap())
    }

    fn target(i: u32, tunnel: bool) -> ProbeTarget {
        let k = key(i);
        ProbeTarget {
            key: k,
            public_ip: Ipv4Addr::from(0xc0a8_0000 + i),
            overlay: tunnel.then(|| k.network_addr()),
        }
    }

    /// What the network does with a probe: answer after this long, or not.
    type Network<'a> = dyn FnMut(&Probe) -> Option<Duration> + 'a;

    /// Runs the core on a virtual clock in 10 ms steps for `span`,
    /// answering as `net` says; returns the changes and the probes sent.
    fn drive(
        core: &mut HealthCore,
        start: Instant,
        span: Duration,
        net: &mut Network<'_>,
    ) -> (Vec<HealthChange>, Vec<(Instant, Probe)>) {
        let step = Duration::from_millis(10);
        let mut pending: Vec<(Instant, u16, Ipv4Addr)> = Vec::new();
        let (mut changes, mut sent) = (Vec::new(), Vec::new());
        let mut now = start;
        while now < start + span {
            pending.sort_by_key(|p| p.0);
            while pending.first().is_some_and(|p| p.0 <= now) {
                let (_, seq, from) = pending.remove(0);
                core.handle_reply(seq, from, now);
            }
            while let Some(probe) = core.poll_probe(now) {
                if let Some(rtt) = net(&probe) {
                    pending.push((now + rtt, probe.seq, probe.dst));
                }
                sent.push((now, probe));
            }
            changes.extend(std::iter::from_fn(|| core.poll_change()));
            now += step;
        }
        (changes, sent)
    }

    fn options() -> HealthOptions {
        HealthOptions::default()
    }

    #[test]
    fn a_peer_state_stays_small() {
        // One per peer: 10,000 times this (docs/benchmarks.md §5).
        assert!(std::mem::size_of::<PeerState>() <= 48);
    }

    #[test]
    fn a_blocked_tunnel_is_one_change_naming_the_port_and_recovery_another() {
        let t0 = Instant::now();
        let mut core = HealthCore::new(options(), Some(8472), t0);
        let peers = [target(1, true), target(2, true)];
        core.set_targets(&peers, t0);
        let ok = |_: &Probe| Some(Duration::from_millis(1));
        let (changes, _) = drive(&mut core, t0, Duration::from_secs(5), &mut { ok });
        assert!(changes.is_empty(), "{changes:?}");
        assert!(core
            .report()
            .iter()
            .all(|p| p.reachability == Reachability::Reachable && p.rtt.is_some()));

        // Peer 1's tunnel drops: overlay echoes unanswered, the underlay answers.
        let blocked = peers[0].overlay.unwrap();
        let mut net = move |p: &Probe| (p.dst != blocked).then_some(Duration::from_millis(1));
        let t1 = t0 + Duration::from_secs(5);
        let (changes, _) = drive(&mut core, t1, Duration::from_secs(15), &mut net);
        assert_eq!(
            changes,
            [HealthChange::Unreachable {
                target: peers[0],
                cause: UnreachableCause::TunnelBlocked { port: 8472 }
            }]
        );
        let report = core.report();
        assert_eq!(
            report[0].reachability,
            Reachability::Unreachable(UnreachableCause::TunnelBlocked { port: 8472 })
        );
        assert_eq!(report[1].reachability, Reachability::Reachable);

        let t2 = t1 + Duration::from_secs(15);
        let (changes, _) = drive(&mut core, t2, Duration::from_secs(5), &mut { ok });
        assert!(
            matches!(changes.as_slice(), [HealthChange::Recovered { target, .. }] if *target == peers[0]),
            "{changes:?}"
        );
    }

    #[test]
    fn unreachable_within_the_detection_bound() {
        // interval + misses x timeout, plus the underlay's answer.
        let t0 = Instant::now();
        let mut core = HealthCore::new(options(), Some(8472), t0);
        core.set_targets(&[target(1, true)], t0);
        let mut down = |_: &Probe| None;
        let (changes, sent) = drive(&mut core, t0, Duration::from_secs(10), &mut down);
        assert_eq!(
            changes,
            [HealthChange::Unreachable {
                target: target(1, true),
                cause: UnreachableCause::HostDown
            }]
        );
        // The first probe at t0, the verdict once three have timed out
        // (each re-asked as soon as the last one is overdue).
        let overlay: Vec<_> = sent
            .iter()
            .filter(|(_, p)| p.kind == ProbeKind::Overlay)
            .collect();
        assert!(overlay.len() >= 3, "{sent:?}");
        assert!(overlay[2].0 - t0 <= Duration::from_millis(2100), "{sent:?}");
    }

    #[test]
    fn host_gw_peers_are_probed_on_the_underlay_and_never_blame_a_tunnel() {
        let t0 = Instant::now();
        let mut core = HealthCore::new(options(), None, t0);
        core.set_targets(&[target(1, false)], t0);
        let (changes, sent) = drive(&mut core, t0, Duration::from_secs(10), &mut |_: &Probe| {
            None
        });
        let seen: Vec<Probe> = sent.iter().map(|(_, p)| *p).collect();
        assert!(seen
            .iter()
            .all(|p| p.kind == ProbeKind::Underlay && p.dst == target(1, false).public_ip));
        assert_eq!(
            changes,
            [HealthChange::Unreachable {
                target: target(1, false),
                cause: UnreachableCause::NoReply
            }]
        );
    }

    #[test]
    fn replies_from_elsewhere_or_too_late_do_not_count() {
        let t0 = Instant::now();
        let mut core = HealthCore::new(options(), Some(8472), t0);
        core.set_targets(&[target(1, true)], t0);
        let probe = core.poll_probe(t0).unwrap();
        core.handle_reply(
            probe.seq,
            Ipv4Addr::new(203, 0, 113, 9),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(core.report()[0].reachability, Reachability::Unknown);
        core.handle_reply(probe.seq, probe.dst, t0 + Duration::from_secs(2));
        assert_eq!(core.report()[0].rtt, None);
    }

    #[test]
    fn ten_thousand_peers_stay_within_the_budget_and_are_all_probed() {
        let t0 = Instant::now();
        let opts = options();
        let mut core = HealthCore::new(opts, Some(8472), t0);
        let peers: Vec<_> = (0..10_000).map(|i| target(i, true)).collect();
        core.set_targets(&peers, t0);
        assert_eq!(core.period(), Duration::from_secs(100));
        let mut ok = |_: &Probe| Some(Duration::from_millis(1));
        let span = Duration::from_secs(120);
        let (changes, sent) = drive(&mut core, t0, span, &mut ok);
        assert!(changes.is_empty());
        // Never more than the budget in any one second (plus the burst).
        let rate = u64::from(opts.max_probes_per_second);
        for second in 0..120u32 {
            let from = t0 + Duration::from_secs(second.into());
            let n = sent
                .iter()
                .filter(|(t, _)| *t >= from && *t < from + Duration::from_secs(1))
                .count() as u64;
            assert!(n <= rate + u64::from(BURST), "second {second}: {n} probes");
        }
        assert!(core
            .report()
            .iter()
            .all(|p| p.reachability == Reachability::Reachable));
    }

    #[test]
    fn a_peer_whose_address_changed_starts_afresh_and_a_gone_one_is_forgotten() {
        let t0 = Instant::now();
        let mut core = HealthCore::new(options(), Some(8472), t0);
        core.set_targets(&[target(1, true), target(2, true)], t0);
        let mut ok = |_: &Probe| Some(Duration::from_millis(1));
        drive(&mut core, t0, Duration::from_secs(3), &mut ok);
        let mut moved = target(1, true);
        moved.public_ip = Ipv4Addr::new(192, 0, 2, 77);
        core.set_targets(&[moved], t0 + Duration::from_secs(3));
        let report = core.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].public_ip, moved.public_ip);
        assert_eq!(report[0].reachability, Reachability::Unknown);
    }

    /// A lease event's update of the peers it names leaves the core as
    /// setting every target would: the untouched peers keep their state,
    /// a changed one starts afresh, a gone one is forgotten.
    #[test]
    fn updating_some_targets_matches_setting_them_all() {
        let t0 = Instant::now();
        let all: Vec<ProbeTarget> = (1..=20).map(|i| target(i, true)).collect();
        let mut by_update = HealthCore::new(options(), Some(8472), t0);
        let mut by_set = HealthCore::new(options(), Some(8472), t0);
        by_update.set_targets(&all, t0);
        by_set.set_targets(&all, t0);
        let mut ok = |_: &Probe| Some(Duration::from_millis(1));
        drive(&mut by_update, t0, Duration::from_secs(3), &mut ok);
        drive(&mut by_set, t0, Duration::from_secs(3), &mut ok);
        let t1 = t0 + Duration::from_secs(3);
        let mut moved = target(3, true);
        moved.public_ip = Ipv4Addr::new(192, 0, 2, 77);
        let mut now_all: Vec<ProbeTarget> =
            all.iter().copied().filter(|t| t.key != key(5)).collect();
        now_all[2] = moved;
        now_all.push(target(21, true));
        by_set.set_targets(&now_all, t1);
        by_update.update_targets(
            &[
                (key(3), Some(moved)),
                (key(5), None),
                (key(21), Some(target(21, true))),
                (key(7), Some(target(7, true))),
            ],
            t1,
        );
        let summary = |c: &HealthCore| {
            c.report()
                .into_iter()
                .map(|p| (p.key, p.public_ip, p.reachability))
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&by_update), summary(&by_set));
        let r = by_update.report();
        assert_eq!(r.len(), 20);
        let of = |k| r.iter().find(|p| p.key == k).map(|p| p.reachability);
        assert_eq!(of(key(7)), Some(Reachability::Reachable), "kept its state");
        assert_eq!(of(key(3)), Some(Reachability::Unknown), "moved: afresh");
        assert_eq!(of(key(5)), None, "gone");
    }
}
