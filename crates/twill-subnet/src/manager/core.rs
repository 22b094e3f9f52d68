//! The lease manager's decisions as a state machine: no IO, no clock.
//!
//! [`LeaseCore`] takes `now` and the results of registry requests (or watch
//! events) as [`Input`], and returns [`Action`]s to execute and
//! [`LeaseEvent`]s to report, as `quinn-proto` does for connections:
//!
//! * [`LeaseCore::handle_input`] / [`LeaseCore::handle_timeout`] feed it;
//! * [`LeaseCore::poll_action`] yields the next registry request (at most one
//!   is outstanding at a time; its result must be fed back);
//! * [`LeaseCore::poll_timeout`] says when to call `handle_timeout`;
//! * [`LeaseCore::poll_event`] yields what happened, for logs and metrics;
//! * [`LeaseCore::peers`] is the desired peer set.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use twill_model::{
    Ipv4Network, Ipv6Network, LeaseAttrs, LeaseKind, NetworkConfig, PeerVerdict, SkipReason,
    SubnetKey, SubnetLease,
};

use crate::{
    HeldLease, Ipv6SubnetAllocator, LeaseListing, RegistryError, RegistryEvent, SubnetAllocator,
    SubnetError,
};

/// At most this many skipped leases are logged one by one per
/// [`SKIP_LOG_WINDOW`]; the others are counted and summarised in one line
/// ([`LeaseEvent::SkipsSuppressed`]), so 10,000 junk keys cost a few dozen
/// log lines, not 10,000.
pub const SKIP_LOG_LIMIT: u32 = 20;
/// The window of [`SKIP_LOG_LIMIT`].
pub const SKIP_LOG_WINDOW: Duration = Duration::from_secs(60);

/// A budget of log lines: at most `limit` per `window`; lines refused are
/// counted for one summary line. Takes `now` as input, reads no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBudget {
    limit: u32,
    window: Duration,
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// A budget of `limit` lines per `window`.
    #[must_use]
    pub const fn new(limit: u32, window: Duration) -> Self {
        LogBudget {
            limit,
            window,
            started: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged at `now`; a refused line is
    /// counted for [`LogBudget::take_suppressed`]. Take a due summary
    /// ([`LogBudget::summary_due`]) first, so that it precedes the new
    /// window's lines.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.logged = 0;
        }
        if self.logged < self.limit {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// The lines refused since the last summary, if any (and forgets them).
    pub fn take_suppressed(&mut self) -> Option<u64> {
        (self.suppressed > 0).then(|| std::mem::take(&mut self.suppressed))
    }

    /// When a summary is due: the end of a window in which lines were
    /// refused.
    #[must_use]
    pub fn summary_due(&self) -> Option<Instant> {
        match self.started {
            Some(s) if self.suppressed > 0 => Some(s + self.window),
            _ => None,
        }
    }
}

/// flannel's lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// flannel's renew margin: renew an hour before expiry.
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(3600);

pub use crate::backoff::RetryPolicy;

/// What the core needs to know about us.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// The attributes we publish. They identify our leases and reservations
    /// as flannel's do: `attrs.public_ip` in an IPv4-only network,
    /// `attrs.public_ipv6` in an IPv6-only one (where `public_ip` is
    /// flannel's `0.0.0.0`), both in a dual-stack one. A host in a network
    /// with IPv6 on must set `public_ipv6`.
    pub attrs: LeaseAttrs,
    /// TTL of the leases we create.
    pub ttl: Duration,
    /// Renew this long before expiry, but see [`CoreConfig::renew_after`].
    pub renew_margin: Duration,
    /// The subnet we held before (from subnet.env), tried first if free:
    /// each half (IPv4, IPv6) of an enabled family on its own, so a
    /// dual-stack host whose IPv6 subnet was taken keeps its IPv4 one.
    pub previous: Option<SubnetKey>,
    /// Backoff for lost races and registry errors.
    pub retry: RetryPolicy,
    /// This host's own networks: its underlay networks, its default
    /// gateway, its etcd endpoints. A subnet overlapping one of them is never
    /// allocated, reused or accepted as a peer's: routing it into the overlay
    /// would cut the host off its LAN or etcd.
    pub protected: Vec<Ipv4Network>,
    /// This host's own IPv6 networks, as [`CoreConfig::protected`] for the
    /// IPv6 side: no IPv6 subnet overlapping one is ever allocated, reused
    /// or accepted as a peer's. Excluded as ranges, so a short prefix costs
    /// no more than a long one.
    pub protected_v6: Vec<Ipv6Network>,
}

impl CoreConfig {
    /// A config with flannel's TTL and renew margin.
    #[must_use]
    pub fn new(attrs: LeaseAttrs) -> Self {
        CoreConfig {
            attrs,
            ttl: DEFAULT_TTL,
            renew_margin: DEFAULT_RENEW_MARGIN,
            previous: None,
            retry: RetryPolicy::default(),
            protected: Vec::new(),
            protected_v6: Vec::new(),
        }
    }

    /// When to renew a lease granted for `ttl`: at `ttl - min(renew_margin,
    /// ttl / 3)`. With flannel's 24 h TTL and 1 h margin that is flannel's
    /// schedule (after 23 h); for short TTLs at least a third of the TTL is
    /// left to retry a failed renewal before the lease expires.
    #[must_use]
    pub fn renew_after(&self, ttl: Duration) -> Duration {
        ttl - self.renew_margin.min(ttl / 3)
    }
}

/// A registry request for the driver to execute; feed its result back as the
/// matching [`Input`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// [`crate::Registry::list_leases`] → [`Input::Listed`].
    List,
    /// [`crate::Registry::create_lease`] → [`Input::Created`].
    Create {
        /// The subnet to claim.
        key: SubnetKey,
        /// What to publish.
        attrs: LeaseAttrs,
        /// `None` never happens for leases we create; kept for the trait.
        ttl: Option<Duration>,
    },
    /// [`crate::Registry::renew_lease`] → [`Input::Renewed`].
    Renew {
        /// Our lease.
        held: HeldLease,
    },
    /// [`crate::Registry::update_lease`] → [`Input::Updated`].
    Update {
        /// The lease as stored.
        held: HeldLease,
        /// Our attributes.
        attrs: LeaseAttrs,
    },
    /// [`crate::Registry::restore_lease`] → [`Input::Restored`]: our key
    /// was overwritten in place; put our value back if the key is unchanged
    /// since `revision` and still on our etcd lease.
    Restore {
        /// Our lease, with our attributes.
        held: HeldLease,
        /// The revision of the overwriting value.
        revision: i64,
    },
    /// [`crate::Registry::delete_lease`] → [`Input::Deleted`].
    Delete {
        /// Our lease's key.
        key: SubnetKey,
    },
    /// Start (or restart) the watch at this revision; events go to
    /// [`Input::Event`], its end to [`Input::WatchEnded`]. Not a request: no
    /// result is expected.
    Watch {
        /// The first revision to receive.
        from_revision: i64,
    },
}

/// What the driver feeds the core.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// Result of [`Action::List`].
    Listed(Result<LeaseListing, RegistryError>),
    /// Result of [`Action::Create`].
    Created {
        /// The key that was requested.
        key: SubnetKey,
        /// The outcome.
        result: Result<HeldLease, RegistryError>,
    },
    /// Result of [`Action::Renew`].
    Renewed(Result<HeldLease, RegistryError>),
    /// Result of [`Action::Update`].
    Updated(Result<HeldLease, RegistryError>),
    /// Result of [`Action::Restore`].
    Restored(Result<HeldLease, RegistryError>),
    /// Result of [`Action::Delete`].
    Deleted(Result<(), RegistryError>),
    /// A watch event.
    Event(RegistryEvent),
    /// The watch ended or could not be started: re-list, then watch again.
    WatchEnded,
}

/// What happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEvent {
    /// We hold a lease (first acquisition).
    Acquired {
        /// The lease.
        lease: SubnetLease,
        /// Failed attempts before this one.
        attempts: u32,
    },
    /// We hold a lease again after losing one; the subnet may differ.
    Reacquired {
        /// The new lease.
        lease: SubnetLease,
        /// The subnet we lost.
        previous: SubnetKey,
    },
    /// Our lease was renewed.
    Renewed {
        /// Its key.
        key: SubnetKey,
        /// The TTL granted.
        ttl: Duration,
    },
    /// A renewal failed; it is retried.
    RenewFailed {
        /// Our key.
        key: SubnetKey,
        /// Why.
        reason: String,
    },
    /// Our key was overwritten in place (still on our etcd lease) with
    /// another `PublicIP`; we restore our value and keep the subnet.
    Overwritten {
        /// Our key.
        key: SubnetKey,
        /// The `PublicIP` the writer put there (`0.0.0.0` in an IPv6-only
        /// network: the `Lost` reason, if it comes to that, names its
        /// `PublicIPv6`).
        by: std::net::Ipv4Addr,
    },
    /// Our lease is gone (expired, deleted or taken); re-acquiring.
    Lost {
        /// The key we held.
        key: SubnetKey,
        /// Why.
        reason: String,
    },
    /// An acquisition attempt failed; it is retried.
    AcquireRetry {
        /// Failed attempts so far.
        attempts: u32,
        /// Why.
        reason: String,
    },
    /// Acquisition failed for a reason retrying will not fix.
    AcquireFailed {
        /// Why.
        reason: String,
    },
    /// A peer's lease appeared.
    PeerAdded(SubnetKey),
    /// A peer's lease changed (e.g. new `PublicIP` or `VtepMAC`).
    PeerUpdated(SubnetKey),
    /// A peer's lease disappeared.
    PeerRemoved(SubnetKey),
    /// A stored value is not used as a peer: reported at each transition of
    /// its key into this reason (logged individually within
    /// [`SKIP_LOG_LIMIT`], see [`LeaseEvent::SkipsSuppressed`]).
    Skipped {
        /// The key as stored.
        key: String,
        /// Why.
        reason: SkipReason,
        /// Within the [`SKIP_LOG_LIMIT`] of its window: log it as a warning.
        /// When `false`, log it at most at debug: it is counted in the next
        /// [`LeaseEvent::SkipsSuppressed`].
        within_log_budget: bool,
    },
    /// This many [`LeaseEvent::Skipped`] were not logged individually
    /// (beyond [`SKIP_LOG_LIMIT`] in a [`SKIP_LOG_WINDOW`]): log one summary
    /// line for them.
    SkipsSuppressed {
        /// How many.
        count: u64,
    },
    /// A full listing replaced the peer set.
    Resynced {
        /// Peers after the resync.
        peers: usize,
    },
    /// Our lease was deleted on request.
    Released {
        /// The key.
        key: Option<SubnetKey>,
    },
}

/// The peers by subnet: a persistent map, so a copy shares every node
/// with the original (O(1)) and a change copies only its path (O(log n)).
pub type PeerMap = imbl::OrdMap<SubnetKey, Arc<SubnetLease>>;

/// How many changes a [`PeerSet`] remembers for [`PeerSet::changed_since`]:
/// more between two looks and the reader does a full pass.
pub const PEER_JOURNAL: usize = 1024;

/// The other hosts' leases, the desired state for the backend.
///
/// Publishing a new peer set copies nothing: the map is persistent
/// ([`PeerMap`]) and each lease is shared (`Arc`) with the manager's own
/// view of the store. So a lease event costs the same at 10 peers as at
/// 10,000, and a reader learns what changed from [`PeerSet::changed_since`]
/// instead of comparing two sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Peers by subnet.
    pub leases: PeerMap,
    /// Incremented on every change of `leases`, one per changed key.
    pub generation: u64,
    /// How many stored keys are skipped (malformed or unusable as peers),
    /// for metrics; a change is published without a new generation.
    pub skipped: usize,
    /// `(generation, key)` of the last [`PEER_JOURNAL`] changes, oldest
    /// first.
    changes: imbl::Vector<(u64, SubnetKey)>,
}

impl PeerSet {
    /// The keys whose lease was added, changed or removed after
    /// `generation`, each once; `None` when the set no longer remembers
    /// them all (more than [`PEER_JOURNAL`] changes since, or a
    /// `generation` this set never had): the reader should then treat
    /// every peer as changed.
    ///
    /// ```
    /// use twill_subnet::PeerSet;
    /// let set = PeerSet::default();
    /// assert_eq!(set.changed_since(0), Some(Default::default()));
    /// assert_eq!(set.changed_since(5), None);
    /// ```
    #[must_use]
    pub fn changed_since(&self, generation: u64) -> Option<BTreeSet<SubnetKey>> {
        if generation > self.generation {
            return None;
        }
        if generation < self.generation {
            let oldest = self.changes.front()?.0;
            if oldest > generation + 1 {
                return None;
            }
        }
        Some(
            self.changes
                .iter()
                .rev()
                .take_while(|(g, _)| *g > generation)
                .map(|(_, k)| *k)
                .collect(),
        )
    }

    /// Counts a change of `key`'s lease.
    fn record(&mut self, key: SubnetKey) {
        self.generation += 1;
        self.changes.push_back((self.generation, key));
        if self.changes.len() > PEER_JOURNAL {
            self.changes.pop_front();
        }
    }

    /// Number of peers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no peers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per manager
enum Phase {
    /// List, then decide.
    NeedList,
    /// Create-if-absent this key.
    Create(SubnetKey),
    /// Reuse a lease or reservation that has our `PublicIP`: update its
    /// attributes if they differ, then renew (expiring leases only).
    Reuse { held: HeldLease, update: bool },
}

#[derive(Debug, Clone, PartialEq)]
enum LeaseState {
    Idle,
    Acquiring {
        phase: Phase,
        not_before: Option<Instant>,
        /// The key we lost, for [`LeaseEvent::Reacquired`].
        lost: Option<SubnetKey>,
    },
    Held {
        held: HeldLease,
        renew_at: Option<Instant>,
        failures: u32,
    },
    Released {
        key: Option<SubnetKey>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    List,
    Create,
    Renew,
    Update,
    Restore,
    Delete,
    /// Deleting our own key after [`LeaseCore::yield_if_shared`] gave it
    /// up; then acquire again.
    Yield(SubnetKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    Off,
    /// Start a watch after the next listing.
    Wanted,
    Active,
}

/// The sans-IO lease manager. See the module docs.
#[derive(Debug)]
pub struct LeaseCore {
    cfg: CoreConfig,
    network: NetworkConfig,
    rng: SmallRng,
    state: LeaseState,
    /// Whether acquisition gives up (reports a fatal error) on `Exhausted`.
    initial: bool,
    pending: Option<Pending>,
    actions: VecDeque<Action>,
    events: VecDeque<LeaseEvent>,
    fatal: Option<SubnetError>,
    attempts: u32,
    /// Every lease in the store as last seen, ours included.
    known: BTreeMap<SubnetKey, Arc<SubnetLease>>,
    allocator: SubnetAllocator,
    /// The IPv6 side's; has no subnets unless `EnableIPv6`.
    allocator_v6: Ipv6SubnetAllocator,
    peers: PeerSet,
    /// Keys currently skipped (by [`skip_id`]), with the reason: a key is
    /// reported when it enters a reason, and forgotten when it becomes a
    /// peer, ours or absent, so that going bad again is reported again.
    skipped: HashMap<String, SkipReason>,
    /// Rate limit of the skip warnings.
    skip_log: LogBudget,
    /// The latest `now` given, for the skip log's window.
    now: Option<Instant>,
    /// Peers whose expiring lease had its `PublicIP` changed in place (a
    /// put over the live key, e.g. `etcdctl put --ignore-lease`), with the
    /// value they had: still programmed until the key is deleted or
    /// expires, or its `PublicIP` returns. A host never changes its
    /// `PublicIP` in place (it would take another lease), so following such
    /// a change would hand a live host's traffic to whoever wrote it.
    pinned: HashMap<SubnetKey, Arc<SubnetLease>>,
    /// Who overwrote our key, while its restoring is outstanding.
    overwritten_by: Option<String>,
    /// Leases with our `PublicIP` we failed to reuse (someone else's).
    rejected: BTreeSet<SubnetKey>,
    revision: i64,
    watch: WatchState,
    /// When to re-list to restart a watch (after a failed listing).
    relist_at: Option<Instant>,
    relist_failures: u32,
}

impl LeaseCore {
    /// A core for `network`; call [`LeaseCore::start`] to begin acquiring.
    #[must_use]
    pub fn new(cfg: CoreConfig, network: NetworkConfig, rng_seed: u64) -> Self {
        LeaseCore {
            allocator: new_allocator(&network, &cfg.protected),
            allocator_v6: new_allocator_v6(&network, &cfg.protected_v6),
            cfg,
            network,
            rng: SmallRng::seed_from_u64(rng_seed),
            state: LeaseState::Idle,
            initial: true,
            pending: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            fatal: None,
            attempts: 0,
            known: BTreeMap::new(),
            peers: PeerSet::default(),
            skipped: HashMap::new(),
            skip_log: LogBudget::new(SKIP_LOG_LIMIT, SKIP_LOG_WINDOW),
            now: None,
            pinned: HashMap::new(),
            overwritten_by: None,
            rejected: BTreeSet::new(),
            revision: 0,
            watch: WatchState::Off,
            relist_at: None,
            relist_failures: 0,
        }
    }

    /// Begins (or, after a fatal error, restarts) acquisition.
    pub fn start(&mut self, now: Instant) {
        self.now = Some(now);
        if matches!(self.state, LeaseState::Idle | LeaseState::Released { .. }) {
            self.state = LeaseState::Acquiring {
                phase: Phase::NeedList,
                not_before: None,
                lost: None,
            };
        }
        self.step(now);
    }

    /// From now on, never give up: `Exhausted` is retried like any error
    /// (for the background task, after the first acquisition).
    pub fn set_persistent(&mut self) {
        self.initial = false;
    }

    /// Asks for a watch: emitted as [`Action::Watch`] now if a listing was
    /// seen, else after the next one.
    pub fn start_watch(&mut self, now: Instant) {
        if self.watch != WatchState::Off {
            return;
        }
        if self.revision > 0 || !self.known.is_empty() {
            self.actions.push_back(Action::Watch {
                from_revision: self.revision + 1,
            });
            self.watch = WatchState::Active;
        } else {
            self.watch = WatchState::Wanted;
            self.relist_at = Some(now);
        }
        self.step(now);
    }

    /// Gives the lease up: emits [`Action::Delete`] for an expiring lease (a
    /// reservation is the operator's and stays) and stops renewing.
    pub fn release(&mut self, now: Instant) {
        let key = match &self.state {
            LeaseState::Held { held, .. } if !held.lease.is_reservation() => Some(held.lease.key),
            _ => None,
        };
        self.state = LeaseState::Released { key };
        self.watch = WatchState::Off;
        self.relist_at = None;
        match key {
            Some(key) => {
                // Queued after any outstanding request; nothing else follows.
                self.pending = Some(Pending::Delete);
                self.actions.push_back(Action::Delete { key });
            }
            None => self.events.push_back(LeaseEvent::Released { key: None }),
        }
        self.step(now);
    }

    /// The next registry request, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    /// A fatal acquisition error, if one occurred (taken once).
    pub fn take_error(&mut self) -> Option<SubnetError> {
        self.fatal.take()
    }

    /// When [`LeaseCore::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_some() {
            return None;
        }
        let lease = match &self.state {
            LeaseState::Acquiring { not_before, .. } => *not_before,
            LeaseState::Held { renew_at, .. } => *renew_at,
            _ => None,
        };
        [lease, self.relist_at, self.skip_log.summary_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The lease we hold, if any.
    #[must_use]
    pub fn held(&self) -> Option<&HeldLease> {
        match &self.state {
            LeaseState::Held { held, .. } => Some(held),
            _ => None,
        }
    }

    /// Whether a lease is held (not acquiring, not released).
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.held().is_some()
    }

    /// The desired peer set.
    #[must_use]
    pub fn peers(&self) -> &PeerSet {
        &self.peers
    }

    /// Failed acquisition attempts since the last success.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The latest store revision seen.
    #[must_use]
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The network config this core allocates in.
    #[must_use]
    pub fn network(&self) -> &NetworkConfig {
        &self.network
    }

    /// Timers due: retries, renewals, re-lists.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        if self.skip_log.summary_due().is_some_and(|t| t <= now) {
            self.summarize_skips();
        }
        self.step(now);
    }

    /// A registry result or watch event.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.now = Some(now);
        match input {
            Input::Listed(r) => self.on_listed(now, r),
            Input::Created { key, result } => self.on_created(now, key, result),
            Input::Renewed(r) => self.on_renewed(now, r),
            Input::Updated(r) => self.on_updated(now, r),
            Input::Restored(r) => self.on_restored(r),
            Input::Deleted(r) if matches!(self.pending, Some(Pending::Yield(_))) => {
                if let Some(Pending::Yield(key)) = self.pending.take() {
                    match r {
                        Ok(()) | Err(RegistryError::LeaseNotFound { .. }) => {
                            self.remove_known(&key);
                        }
                        // Not renewed any more, it expires with its TTL;
                        // the next listing tells.
                        Err(e) => self.events.push_back(LeaseEvent::AcquireRetry {
                            attempts: self.attempts,
                            reason: format!("deleting {key}, given up: {e}"),
                        }),
                    }
                }
            }
            Input::Deleted(r) => {
                self.pending = None;
                let key = match &self.state {
                    LeaseState::Released { key } => *key,
                    _ => None,
                };
                match r {
                    Ok(()) | Err(RegistryError::LeaseNotFound { .. }) => {
                        self.events.push_back(LeaseEvent::Released { key });
                    }
                    Err(e) => self.fatal = Some(e.into()),
                }
            }
            Input::Event(ev) => self.on_event(ev),
            Input::WatchEnded => {
                if self.watch == WatchState::Active {
                    self.watch = WatchState::Wanted;
                    self.relist_at = Some(now);
                }
            }
        }
        self.step(now);
    }

    fn own_key(&self) -> Option<SubnetKey> {
        match &self.state {
            LeaseState::Held { held, .. } => Some(held.lease.key),
            LeaseState::Acquiring {
                phase: Phase::Reuse { held, .. },
                ..
            } => Some(held.lease.key),
            _ => None,
        }
    }

    /// Issues the next request if none is outstanding and one is due.
    fn step(&mut self, now: Instant) {
        if self.pending.is_some() {
            return;
        }
        let due = |t: Option<Instant>| t.is_none_or(|t| t <= now);
        let action = match &self.state {
            LeaseState::Acquiring {
                phase, not_before, ..
            } if due(*not_before) => Some(match phase {
                Phase::NeedList => Action::List,
                Phase::Create(key) => Action::Create {
                    key: *key,
                    attrs: self.cfg.attrs.clone(),
                    ttl: Some(self.cfg.ttl),
                },
                Phase::Reuse { held, update: true } => Action::Update {
                    held: held.clone(),
                    attrs: self.cfg.attrs.clone(),
                },
                Phase::Reuse {
                    held,
                    update: false,
                } => Action::Renew { held: held.clone() },
            }),
            LeaseState::Held {
                held,
                renew_at: Some(t),
                ..
            } if *t <= now => Some(Action::Renew { held: held.clone() }),
            _ => None,
        };
        let action = action.or_else(|| {
            (self.watch == WatchState::Wanted && self.relist_at.is_some_and(|t| t <= now))
                .then_some(Action::List)
        });
        if let Some(a) = action {
            self.pending = Some(match &a {
                Action::List => Pending::List,
                Action::Create { .. } => Pending::Create,
                Action::Renew { .. } => Pending::Renew,
                Action::Update { .. } => Pending::Update,
                Action::Restore { .. } => Pending::Restore,
                Action::Delete { .. } | Action::Watch { .. } => Pending::Delete,
            });
            self.actions.push_back(a);
        }
    }

    fn backoff(&mut self, now: Instant, attempt: u32) -> Instant {
        now + self.cfg.retry.delay(attempt, self.rng.random())
    }

    /// After a failed attempt: retry from a fresh listing after a backoff.
    fn retry_acquire(&mut self, now: Instant, reason: String) {
        self.attempts += 1;
        let at = self.backoff(now, self.attempts);
        let lost = match &self.state {
            LeaseState::Acquiring { lost, .. } => *lost,
            _ => None,
        };
        self.state = LeaseState::Acquiring {
            phase: Phase::NeedList,
            not_before: Some(at),
            lost,
        };
        self.events.push_back(LeaseEvent::AcquireRetry {
            attempts: self.attempts,
            reason,
        });
    }

    fn fail(&mut self, err: SubnetError) {
        self.events.push_back(LeaseEvent::AcquireFailed {
            reason: err.to_string(),
        });
        self.fatal = Some(err);
        self.state = LeaseState::Idle;
    }

    fn on_listed(&mut self, now: Instant, r: Result<LeaseListing, RegistryError>) {
        self.pending = None;
        let listing = match r {
            Ok(l) => l,
            Err(e) => {
                if matches!(self.state, LeaseState::Acquiring { .. }) {
                    self.retry_acquire(now, format!("listing leases: {e}"));
                } else if self.watch == WatchState::Wanted {
                    self.relist_failures += 1;
                    self.relist_at = Some(self.backoff(now, self.relist_failures));
                }
                return;
            }
        };
        self.apply_snapshot(listing);
        if self.watch == WatchState::Wanted {
            self.watch = WatchState::Active;
            self.relist_at = None;
            self.relist_failures = 0;
            self.actions.push_back(Action::Watch {
                from_revision: self.revision + 1,
            });
        }
        if let LeaseState::Acquiring {
            phase: Phase::NeedList,
            ..
        } = self.state
        {
            self.decide(now);
        }
    }

    /// Chooses what to claim from the current knowledge of the store.
    fn decide(&mut self, now: Instant) {
        // flannel's rule (isSubnetConfigCompat): a lease carrying our IP is
        // reused only if the allocator could have handed it out, i.e. its
        // length is SubnetLen and it lies in [SubnetMin, SubnetMax] (and
        // the same for the IPv6 side); a planted 192.168.0.0-17 with our IP
        // is not adopted. Nor is one that overlaps the host's own networks.
        let mine = |l: &&Arc<SubnetLease>| {
            self.is_ours(&l.attrs)
                && !self.rejected.contains(&l.key)
                && self.allocatable(&l.key)
                && self.host_overlap(&l.key).is_none()
        };
        let reuse = self
            .known
            .values()
            .filter(mine)
            .find(|l| l.is_reservation())
            .or_else(|| self.known.values().find(mine))
            .map(|l| SubnetLease::clone(l));
        let lost = match &self.state {
            LeaseState::Acquiring { lost, .. } => *lost,
            _ => None,
        };
        let phase = if let Some(lease) = reuse {
            let ttl = (!lease.is_reservation()).then_some(self.cfg.ttl);
            let update = lease.attrs != self.cfg.attrs;
            let held = HeldLease { lease, ttl };
            if !update && held.ttl.is_none() {
                self.become_held(now, held);
                return;
            }
            Phase::Reuse { held, update }
        } else {
            match self.choose_key() {
                Ok(key) => Phase::Create(key),
                Err(e) => {
                    if self.initial {
                        self.fail(e);
                    } else {
                        self.retry_acquire(now, e.to_string());
                    }
                    return;
                }
            }
        };
        self.state = LeaseState::Acquiring {
            phase,
            not_before: None,
            lost,
        };
    }

    /// The key to create: for each enabled family, the previous subnet's
    /// half if it is free, else a random free subnet.
    ///
    /// In a dual-stack network the IPv6 half, when not the previous one, is
    /// drawn from a generator seeded by the IPv4 half: two hosts racing for
    /// the same IPv4 subnet from the same listing then ask for the same
    /// combined key, and create-if-absent lets one of them through, as it
    /// does for IPv4-only keys. (Independent draws would give two keys,
    /// `10.1.2.0-24&a` and `10.1.2.0-24&b`, both created.)
    fn choose_key(&mut self) -> Result<SubnetKey, SubnetError> {
        let previous = self.cfg.previous.filter(|p| !self.known.contains_key(p));
        let v4 = if self.network.enable_ipv4 {
            let prev = previous
                .and_then(|p| p.ipv4_subnet())
                .filter(|n| self.allocator.is_free(*n));
            Some(match prev {
                Some(n) => n,
                None => self.allocator.choose(&mut self.rng)?,
            })
        } else {
            None
        };
        let v6 = if self.network.enable_ipv6 {
            let prev = previous
                .and_then(|p| p.ipv6)
                .filter(|n| self.allocator_v6.is_free(*n));
            Some(match (prev, v4) {
                (Some(n), _) => n,
                (None, Some(v4)) => {
                    let seed = u64::from(u32::from(v4.network())) << 8 | u64::from(v4.prefix());
                    self.allocator_v6
                        .choose(&mut SmallRng::seed_from_u64(seed))?
                }
                (None, None) => self.allocator_v6.choose(&mut self.rng)?,
            })
        } else {
            None
        };
        match (v4, v6) {
            (Some(v4), Some(v6)) => Ok(SubnetKey::dual(v4, v6)),
            (Some(v4), None) => Ok(SubnetKey::v4(v4)),
            (None, Some(v6)) => Ok(SubnetKey::v6_only(v6)),
            // A parsed config enables at least one family.
            (None, None) => Err(SubnetError::Exhausted { total: 0, taken: 0 }),
        }
    }

    /// Whether `attrs` are ours, by the addresses that identify a host in
    /// this network (see [`CoreConfig::attrs`]).
    fn is_ours(&self, attrs: &LeaseAttrs) -> bool {
        let ours = &self.cfg.attrs;
        let v4 = attrs.public_ip == ours.public_ip;
        let v6 = attrs.public_ipv6.is_some() && attrs.public_ipv6 == ours.public_ipv6;
        match (self.network.enable_ipv4, self.network.enable_ipv6) {
            (true, true) => v4 && v6,
            (false, true) => v6,
            _ => v4,
        }
    }

    /// Whether the allocator could have handed `key` out: each enabled
    /// family's half allocatable, and no half of a family that is off.
    fn allocatable(&self, key: &SubnetKey) -> bool {
        let n = &self.network;
        let v4 = if n.enable_ipv4 {
            n.subnet_index(key.ipv4).is_some()
        } else {
            key.is_ipv6_only()
        };
        let v6 = match key.ipv6 {
            Some(sn) => n.enable_ipv6 && n.ipv6_subnet_index(sn).is_some(),
            None => !n.enable_ipv6,
        };
        v4 && v6
    }

    /// The host network a half of `key` overlaps, as a skip reason, if
    /// any; only the halves of the enabled families count.
    fn host_overlap(&self, key: &SubnetKey) -> Option<SkipReason> {
        if self.network.enable_ipv4 {
            if let Some(network) = key
                .ipv4_subnet()
                .and_then(|sn| self.allocator.excluded_overlap(sn))
            {
                return Some(SkipReason::OverlapsHostNetwork {
                    subnet: key.ipv4,
                    network,
                });
            }
        }
        if self.network.enable_ipv6 {
            if let Some(subnet) = key.ipv6 {
                if let Some(network) = self.allocator_v6.excluded_overlap(subnet) {
                    return Some(SkipReason::OverlapsHostIpv6Network { subnet, network });
                }
            }
        }
        None
    }

    /// Marks both halves of `key` taken.
    fn mark_taken(&mut self, key: &SubnetKey) {
        if let Some(sn) = key.ipv4_subnet() {
            self.allocator.mark_taken(sn);
        }
        if let Some(sn) = key.ipv6 {
            self.allocator_v6.mark_taken(sn);
        }
    }

    fn become_held(&mut self, now: Instant, held: HeldLease) {
        let lost = match &self.state {
            LeaseState::Acquiring { lost, .. } => *lost,
            _ => None,
        };
        let lease = held.lease.clone();
        let renew_at = held.ttl.map(|ttl| now + self.cfg.renew_after(ttl));
        self.cfg.previous = Some(lease.key);
        self.known.insert(lease.key, Arc::new(lease.clone()));
        self.mark_taken(&lease.key);
        self.state = LeaseState::Held {
            held,
            renew_at,
            failures: 0,
        };
        let ev = match lost {
            Some(previous) => LeaseEvent::Reacquired { lease, previous },
            None => LeaseEvent::Acquired {
                lease,
                attempts: self.attempts,
            },
        };
        self.attempts = 0;
        // Once we held a lease, never give up again.
        self.initial = false;
        self.events.push_back(ev);
        // Our key is no longer a peer; leases claiming our IP are skipped.
        self.rebuild_peers();
        let keys: Vec<SubnetKey> = self.known.keys().copied().collect();
        self.yield_if_shared(&keys);
    }

    fn lose(&mut self, reason: String, phase: Phase) {
        let Some(key) = self.own_key() else {
            return;
        };
        self.events.push_back(LeaseEvent::Lost { key, reason });
        self.state = LeaseState::Acquiring {
            phase,
            not_before: None,
            lost: Some(key),
        };
        self.rebuild_peers();
    }

    fn on_created(&mut self, now: Instant, key: SubnetKey, r: Result<HeldLease, RegistryError>) {
        self.pending = None;
        if !matches!(self.state, LeaseState::Acquiring { .. }) {
            return;
        }
        match r {
            Ok(held) => self.become_held(now, held),
            Err(RegistryError::Conflict { .. }) => {
                self.mark_taken(&key);
                self.retry_acquire(now, format!("lost the race for {key}"));
            }
            Err(e)
                if !e.is_transient()
                    && !matches!(e, RegistryError::LeaseNotFound { .. })
                    && self.initial =>
            {
                self.fail(e.into());
            }
            Err(e) => self.retry_acquire(now, format!("creating {key}: {e}")),
        }
    }

    fn on_renewed(&mut self, now: Instant, r: Result<HeldLease, RegistryError>) {
        self.pending = None;
        match (&mut self.state, r) {
            (LeaseState::Held { .. }, Ok(held)) => {
                let key = held.lease.key;
                let ttl = held.ttl;
                let renew_at = ttl.map(|t| now + self.cfg.renew_after(t));
                self.known.insert(key, Arc::new(held.lease.clone()));
                self.state = LeaseState::Held {
                    held,
                    renew_at,
                    failures: 0,
                };
                if let Some(ttl) = ttl {
                    self.events.push_back(LeaseEvent::Renewed { key, ttl });
                }
                // A competing key seen while this renewal was in flight.
                let keys: Vec<SubnetKey> = self.known.keys().copied().collect();
                self.yield_if_shared(&keys);
            }
            (LeaseState::Held { .. }, Err(RegistryError::LeaseNotFound { key })) => {
                self.lose(
                    format!("renewing: lease {key} not found"),
                    Phase::Create(key),
                );
            }
            (LeaseState::Held { .. }, Err(RegistryError::Conflict { key })) => {
                self.lose(
                    format!("renewing: {key} is held by someone else"),
                    Phase::NeedList,
                );
            }
            (LeaseState::Held { held, failures, .. }, Err(e)) => {
                *failures += 1;
                let key = held.lease.key;
                let ttl = held.ttl;
                let attempt = *failures;
                let mut at = self.backoff(now, attempt);
                // However long the store was away, retry at least every
                // quarter TTL: once it is back (an etcd cluster restarted
                // refreshes its leases for one TTL) a renewal lands before
                // the lease expires, instead of up to `retry.max` later.
                if let Some(ttl) = ttl {
                    at = at.min(now + (ttl / 4).max(Duration::from_millis(1)));
                }
                if let LeaseState::Held { renew_at, .. } = &mut self.state {
                    *renew_at = Some(at);
                }
                self.events.push_back(LeaseEvent::RenewFailed {
                    key,
                    reason: e.to_string(),
                });
            }
            // Renewal of a lease we reuse, or one we lost meanwhile: the
            // store says it is ours.
            (LeaseState::Acquiring { .. }, Ok(held)) => self.become_held(now, held),
            (LeaseState::Acquiring { phase, .. }, Err(e)) => {
                if let Phase::Reuse { held, .. } = phase {
                    let key = held.lease.key;
                    match e {
                        RegistryError::LeaseNotFound { .. } => {
                            *phase = Phase::Create(key);
                            return;
                        }
                        RegistryError::Conflict { .. } => {
                            self.rejected.insert(key);
                        }
                        _ => {}
                    }
                    self.retry_acquire(now, format!("renewing {key} to reuse it: {e}"));
                }
            }
            _ => {}
        }
    }

    fn on_restored(&mut self, r: Result<HeldLease, RegistryError>) {
        self.pending = None;
        let by = self.overwritten_by.take();
        if !matches!(self.state, LeaseState::Held { .. }) {
            return;
        }
        match r {
            Ok(h) => {
                if let LeaseState::Held { held, .. } = &mut self.state {
                    held.lease.revision = held.lease.revision.max(h.lease.revision);
                    let lease = held.lease.clone();
                    self.known.insert(lease.key, Arc::new(lease));
                }
            }
            Err(e) => {
                let key = self.own_key();
                let by = by.unwrap_or_else(|| "someone".to_string());
                let reason = match key {
                    Some(k) => format!("{k} was overwritten by {by} ({e})"),
                    None => format!("overwritten by {by} ({e})"),
                };
                self.lose(reason, Phase::NeedList);
            }
        }
    }

    fn on_updated(&mut self, now: Instant, r: Result<HeldLease, RegistryError>) {
        self.pending = None;
        let LeaseState::Acquiring {
            phase: Phase::Reuse { held, .. },
            ..
        } = &self.state
        else {
            return;
        };
        let key = held.lease.key;
        match r {
            Ok(h) if h.ttl.is_none() || h.lease.is_reservation() => {
                self.become_held(now, HeldLease { ttl: None, ..h });
            }
            Ok(h) => {
                let held = HeldLease {
                    ttl: Some(self.cfg.ttl),
                    ..h
                };
                if let LeaseState::Acquiring { phase, .. } = &mut self.state {
                    *phase = Phase::Reuse {
                        held,
                        update: false,
                    };
                }
            }
            Err(RegistryError::LeaseNotFound { .. }) => {
                if let LeaseState::Acquiring { phase, .. } = &mut self.state {
                    *phase = Phase::Create(key);
                }
            }
            Err(e) => {
                if matches!(e, RegistryError::Conflict { .. }) {
                    self.rejected.insert(key);
                }
                self.retry_acquire(now, format!("updating {key} to reuse it: {e}"));
            }
        }
    }

    fn on_event(&mut self, ev: RegistryEvent) {
        match ev {
            RegistryEvent::Upserted(lease) => {
                self.revision = self.revision.max(lease.revision);
                let key = lease.key;
                let ours = self.is_ours(&lease.attrs);
                if let LeaseState::Held { held, .. } = &mut self.state {
                    if held.lease.key == key && lease.revision >= held.lease.revision {
                        if ours {
                            held.lease.revision = lease.revision;
                        } else if lease.kind == LeaseKind::Expiring
                            && held.ttl.is_some()
                            && self.pending.is_none()
                        {
                            // Still on an etcd lease, probably ours (a put
                            // with --ignore-lease keeps it): moving would
                            // leave our running containers' subnet to the
                            // writer, so put our value back. The registry
                            // checks atomically that the key is unchanged
                            // and on our etcd lease; if not, we move.
                            let by = lease.attrs.public_ip;
                            let restore = Action::Restore {
                                held: held.clone(),
                                revision: lease.revision,
                            };
                            self.events.push_back(LeaseEvent::Overwritten { key, by });
                            self.overwritten_by = Some(writer(&lease.attrs));
                            self.pending = Some(Pending::Restore);
                            self.actions.push_back(restore);
                            // The writer's value is neither a peer nor ours.
                            self.insert_known(lease);
                            return;
                        } else {
                            let reason =
                                format!("{key} was overwritten by {}", writer(&lease.attrs));
                            self.insert_known(lease);
                            self.lose(reason, Phase::NeedList);
                            return;
                        }
                    }
                }
                self.pin_if_moved_in_place(&lease);
                self.insert_known(lease);
                self.update_peer(key);
                self.yield_if_shared(&[key]);
            }
            RegistryEvent::Removed { key, revision } => {
                self.revision = self.revision.max(revision);
                self.pinned.remove(&key);
                self.remove_known(&key);
                if let LeaseState::Held { held, .. } = &self.state {
                    if held.lease.key == key && revision > held.lease.revision {
                        // Re-create the same subnet; a conflict re-lists.
                        self.lose(
                            format!("{key} was removed from the store"),
                            Phase::Create(key),
                        );
                        return;
                    }
                }
                self.update_peer(key);
            }
            RegistryEvent::Malformed(m) => {
                self.report_skip(m.key, SkipReason::Malformed { reason: m.reason });
            }
            RegistryEvent::Resync(listing) => self.apply_snapshot(listing),
        }
    }

    /// Pins a peer whose live expiring lease is overwritten in place with
    /// another `PublicIP` (see [`LeaseCore::pinned`]). Only a watch event
    /// can tell "in place" (no deletion seen in between); a full listing
    /// cannot, and is followed. A value that is no longer expiring (put
    /// without the key's etcd lease) means the owner's lease is gone:
    /// followed too, as the owner moves in that case.
    fn pin_if_moved_in_place(&mut self, new: &SubnetLease) {
        let Some(current) = self.peers.leases.get(&new.key) else {
            return;
        };
        if (current.attrs.public_ip != new.attrs.public_ip
            || current.attrs.public_ipv6 != new.attrs.public_ipv6)
            && current.kind == LeaseKind::Expiring
            && new.kind == LeaseKind::Expiring
        {
            let original = self
                .pinned
                .get(&new.key)
                .cloned()
                .unwrap_or_else(|| current.clone());
            self.pinned.insert(new.key, original);
        }
    }

    fn insert_known(&mut self, lease: SubnetLease) {
        self.mark_taken(&lease.key);
        self.known.insert(lease.key, Arc::new(lease));
    }

    fn remove_known(&mut self, key: &SubnetKey) {
        self.known.remove(key);
        let same_v4 = self
            .known
            .range(SubnetKey::v4(key.ipv4)..)
            .next()
            .is_some_and(|(k, _)| k.ipv4 == key.ipv4);
        if !same_v4 {
            if let Some(sn) = key.ipv4_subnet() {
                self.allocator.release(sn);
            }
        }
        if let Some(v6) = key.ipv6 {
            // Keys are ordered by their IPv4 half: a scan, paid only for
            // IPv6 keys.
            if !self.known.keys().any(|k| k.ipv6 == Some(v6)) {
                self.allocator_v6.release(v6);
            }
        }
    }

    fn apply_snapshot(&mut self, listing: LeaseListing) {
        self.revision = self.revision.max(listing.revision);
        self.allocator = new_allocator(&self.network, &self.cfg.protected);
        self.allocator_v6 = new_allocator_v6(&self.network, &self.cfg.protected_v6);
        self.known.clear();
        self.pinned.clear();
        for lease in listing.leases {
            self.insert_known(lease);
        }
        for m in listing.malformed {
            self.report_skip(m.key, SkipReason::Malformed { reason: m.reason });
        }
        self.rebuild_peers();
        // A listing is one burst: its surplus is summarised now, not at the
        // end of the window.
        self.summarize_skips();
        self.events.push_back(LeaseEvent::Resynced {
            peers: self.peers.len(),
        });
        // Our lease may have vanished while we were not watching.
        if let LeaseState::Held { held, .. } = &self.state {
            let key = held.lease.key;
            if !self.known.contains_key(&key) {
                self.lose(
                    format!("{key} is missing from a full listing"),
                    Phase::Create(key),
                );
                return;
            }
        }
        let keys: Vec<SubnetKey> = self.known.keys().copied().collect();
        self.yield_if_shared(&keys);
    }

    /// The dual-stack race that create-if-absent cannot settle: two hosts
    /// whose listings missed each other can create different keys sharing a
    /// half (`10.5.1.0-24&fd00:5:0:a::-64` and `10.5.1.0-24&fd00:5:0:b::-64`;
    /// the seeded IPv6 draw of [`Self::choose_key`] makes it rare, a reused
    /// previous half can still cause it). Of two such expiring leases the
    /// backends program the one first in claim order (lower store revision,
    /// then smaller key); if that is not ours, ours is given up: deleted, and
    /// another subnet acquired. Twill's renewals keep the revision (etcd
    /// keep-alive, no put), so both hosts agree on the order. `candidates`
    /// are the keys to compare with ours (the one an event changed, or all
    /// after a listing). Reservations are the operator's and never yield.
    fn yield_if_shared(&mut self, candidates: &[SubnetKey]) {
        if self.pending.is_some() {
            return;
        }
        let (ours, rev) = match &self.state {
            LeaseState::Held { held, .. } if held.ttl.is_some() && !held.lease.is_reservation() => {
                (held.lease.key, held.lease.revision)
            }
            _ => return,
        };
        let v4 = self.network.enable_ipv4;
        let shares = |k: &SubnetKey| {
            (v4 && k.ipv4 == ours.ipv4) || (k.ipv6.is_some() && k.ipv6 == ours.ipv6)
        };
        let first = candidates
            .iter()
            .filter_map(|k| self.known.get(k))
            .find(|l| {
                l.key != ours
                    && l.kind == LeaseKind::Expiring
                    && shares(&l.key)
                    && !self.is_ours(&l.attrs)
                    && (l.revision, l.key) < (rev, ours)
            })
            .map(|l| l.key);
        let Some(first) = first else {
            return;
        };
        self.lose(
            format!("{ours} shares a subnet with {first}, which another host created first; taking another subnet"),
            Phase::NeedList,
        );
        self.pending = Some(Pending::Yield(ours));
        self.actions.push_back(Action::Delete { key: ours });
    }

    fn report_skip(&mut self, key: String, reason: SkipReason) {
        let id = skip_id(&key);
        if self.skipped.get(&id) == Some(&reason) {
            return;
        }
        self.skipped.insert(id, reason.clone());
        let admitted = match self.now {
            Some(now) => {
                if self.skip_log.summary_due().is_some_and(|t| t <= now) {
                    self.summarize_skips();
                }
                self.skip_log.admit(now)
            }
            None => true,
        };
        self.events.push_back(LeaseEvent::Skipped {
            key,
            reason,
            within_log_budget: admitted,
        });
        self.peers.skipped = self.skipped.len();
    }

    /// Reports the skips not to be logged individually, if any, for one
    /// summary line.
    fn summarize_skips(&mut self) {
        if let Some(count) = self.skip_log.take_suppressed() {
            self.events.push_back(LeaseEvent::SkipsSuppressed { count });
        }
    }

    /// How many stored keys are currently skipped (malformed or unusable).
    #[must_use]
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// Why `lease` is not a peer, if it is not (`None` reason for our own).
    fn classify(&self, lease: &SubnetLease) -> Result<(), Option<SkipReason>> {
        let own = self.own_key();
        let verdict = self.network.check_peer_dual(
            lease,
            own.as_ref(),
            self.cfg.attrs.public_ip,
            self.cfg.attrs.public_ipv6,
        );
        if !matches!(
            verdict,
            PeerVerdict::Own
                | PeerVerdict::Skip(
                    SkipReason::OutsideNetwork { .. }
                        | SkipReason::OutsideIpv6Network { .. }
                        | SkipReason::NoIpv6Subnet
                )
        ) {
            // Before the rules of a peer: reported even for a lease carrying
            // our PublicIP (silent before we hold a lease), as it would cut
            // this host off.
            if let Some(reason) = self.host_overlap(&lease.key) {
                return Err(Some(reason));
            }
        }
        match verdict {
            PeerVerdict::Peer => Ok(()),
            PeerVerdict::Own => Err(None),
            // Before we hold a lease, one carrying our PublicIP is ours from a
            // previous run, about to be reused: not a peer, not worth a warning.
            PeerVerdict::Skip(
                SkipReason::ClaimsOurPublicIp(_) | SkipReason::ClaimsOurPublicIpv6(_),
            ) if !matches!(self.state, LeaseState::Held { .. }) => Err(None),
            PeerVerdict::Skip(reason) => Err(Some(reason)),
        }
    }

    fn update_peer(&mut self, key: SubnetKey) {
        if let Some(original) = self.pinned.get(&key).cloned() {
            match self.known.get(&key) {
                Some(l) if l.attrs.public_ip != original.attrs.public_ip => {
                    // Keep programming the original; report the change.
                    let reason = SkipReason::PublicIpChanged {
                        from: original.attrs.public_ip,
                        to: l.attrs.public_ip,
                    };
                    self.report_skip(key.to_string(), reason);
                    return;
                }
                Some(l) if l.attrs.public_ipv6 != original.attrs.public_ipv6 => {
                    let reason = SkipReason::PublicIpv6Changed {
                        from: original.attrs.public_ipv6,
                        to: l.attrs.public_ipv6,
                    };
                    self.report_skip(key.to_string(), reason);
                    return;
                }
                // The value returned (or the key is gone): follow it.
                _ => {
                    self.pinned.remove(&key);
                }
            }
        }
        let verdict = self.known.get(&key).map(|l| (l.clone(), self.classify(l)));
        let changed = match verdict {
            Some((lease, Ok(()))) => {
                self.skipped.remove(&key.to_string());
                match self.peers.leases.insert(key, lease.clone()) {
                    None => {
                        self.events.push_back(LeaseEvent::PeerAdded(key));
                        true
                    }
                    Some(old) if old != lease => {
                        self.events.push_back(LeaseEvent::PeerUpdated(key));
                        true
                    }
                    Some(_) => false,
                }
            }
            other => {
                if let Some((_, Err(Some(reason)))) = other {
                    self.report_skip(key.to_string(), reason);
                } else {
                    self.skipped.remove(&key.to_string());
                }
                if self.peers.leases.remove(&key).is_some() {
                    self.events.push_back(LeaseEvent::PeerRemoved(key));
                    true
                } else {
                    false
                }
            }
        };
        if changed {
            self.peers.record(key);
        }
        self.peers.skipped = self.skipped.len();
    }

    fn rebuild_peers(&mut self) {
        let keys: BTreeSet<SubnetKey> = self
            .known
            .keys()
            .chain(self.peers.leases.keys())
            .copied()
            .collect();
        for key in keys {
            self.update_peer(key);
        }
    }
}

/// The identity of a skipped key: the subnet key for a full key ending in a
/// canonical one (a malformed value is reported with the key as stored, a
/// bad lease with its subnet key, and both must be the same key when it
/// becomes valid or is deleted), else the key as stored.
fn skip_id(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.parse::<SubnetKey>() {
        Ok(k) if k.to_string() == name => name.to_string(),
        _ => key.to_string(),
    }
}

/// An allocator for `network` that never hands out a subnet overlapping the
/// host's `protected` networks.
fn new_allocator(network: &NetworkConfig, protected: &[Ipv4Network]) -> SubnetAllocator {
    let mut a = SubnetAllocator::new(network);
    for net in protected {
        a.exclude(*net);
    }
    a
}

/// Who wrote `attrs`, for a log line: its `PublicIP`, or its `PublicIPv6`
/// when that is all it has (an IPv6-only lease's `PublicIP` is `0.0.0.0`).
fn writer(attrs: &LeaseAttrs) -> String {
    match attrs.public_ipv6 {
        Some(ip6) if attrs.public_ip.is_unspecified() => ip6.to_string(),
        _ => attrs.public_ip.to_string(),
    }
}

/// The IPv6 side's allocator, with the host's `protected` IPv6 networks
/// excluded (as ranges).
fn new_allocator_v6(network: &NetworkConfig, protected: &[Ipv6Network]) -> Ipv6SubnetAllocator {
    let mut a = Ipv6SubnetAllocator::new(network);
    for net in protected {
        a.exclude(*net);
    }
    a
}
