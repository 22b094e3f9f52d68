//! The prober thread: sends what [`HealthCore`] asks, feeds it replies and
//! the clock, publishes its report and logs its changes. A thread of its
//! own, so that waiting on the socket never blocks the agent's runtime.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};
use twill_subnet::{LogBudget, PeerSet, SKIP_LOG_LIMIT, SKIP_LOG_WINDOW};

use super::icmp::EchoSocket;
use super::{target_of, HealthChange, HealthCore, HealthOptions, HealthReport, UnreachableCause};
use crate::{AgentEvent, AgentStatus};

/// Longest wait on the socket: how soon a peer-set change or a stop is
/// seen.
const TICK: Duration = Duration::from_millis(100);

/// Tells probers of one process apart on the wire.
static INSTANCES: AtomicU16 = AtomicU16::new(0);

/// A running prober; [`HealthProber::stop`] ends it.
#[derive(Debug)]
pub(crate) struct HealthProber {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthProber {
    /// Opens the ICMP socket here (in the caller's network namespace) and
    /// starts probing `peers`.
    pub(crate) fn start(
        options: HealthOptions,
        tunnel_port: Option<u16>,
        peers: watch::Receiver<PeerSet>,
        status: Arc<AgentStatus>,
        events: broadcast::Sender<AgentEvent>,
    ) -> std::io::Result<Self> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation)] // any 16 bits of the pid do
        let ident = (std::process::id() as u16) ^ n.wrapping_mul(0x9e37);
        let socket = EchoSocket::open(ident)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("twill-health".into())
            .spawn(move || {
                run(
                    &socket,
                    options,
                    tunnel_port,
                    peers,
                    &status,
                    &events,
                    &flag,
                );
            })?;
        Ok(HealthProber {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (within [`TICK`]) and waits for it.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HealthProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(
    socket: &EchoSocket,
    options: HealthOptions,
    tunnel_port: Option<u16>,
    mut peers: watch::Receiver<PeerSet>,
    status: &AgentStatus,
    events: &broadcast::Sender<AgentEvent>,
    stop: &AtomicBool,
) {
    let shared = Arc::new(Mutex::new(HealthCore::new(
        options,
        tunnel_port,
        Instant::now(),
    )));
    // The report is made when asked for, from the state under the lock.
    let source = shared.clone();
    status.set_health(Some(Arc::new(move || {
        let core = lock(&source);
        HealthReport {
            peers: core.report(),
            probes_sent: core.probes_sent(),
        }
    })));
    let mut first = true;
    // The peer set's generation the targets were last taken from.
    let mut seen: Option<u64> = None;
    let mut send_error_logged = false;
    // A partition that takes 10,000 peers away logs the first ones, then a
    // count: one line each for the few peers an operator looks for.
    let mut log_budget = LogBudget::new(SKIP_LOG_LIMIT, SKIP_LOG_WINDOW);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut core = lock(&shared);
        match peers.has_changed() {
            Ok(changed) if changed || first => {
                first = false;
                let set = peers.borrow_and_update();
                // A lease event updates the peers it names; only a first
                // look, or more changes than the set remembers, reads all.
                match seen.and_then(|g| set.changed_since(g)) {
                    Some(keys) => {
                        let changes: Vec<_> = keys
                            .into_iter()
                            .map(|k| {
                                (
                                    k,
                                    set.leases.get(&k).and_then(|l| target_of(l, tunnel_port)),
                                )
                            })
                            .collect();
                        core.update_targets(&changes, now);
                    }
                    None => {
                        let targets: Vec<_> = set
                            .leases
                            .values()
                            .filter_map(|l| target_of(l, tunnel_port))
                            .collect();
                        core.set_targets(&targets, now);
                    }
                }
                seen = Some(set.generation);
            }
            Ok(_) => {}
            // The lease manager is gone: the agent is stopping.
            Err(_) => break,
        }
        while let Some(probe) = core.poll_probe(now) {
            if let Err(e) = socket.send(probe.dst, probe.seq) {
                // Counts as unanswered; the timeout tells the rest.
                if send_error_logged {
                    debug!("health probe to {} not sent: {e}", probe.dst);
                } else {
                    warn!(
                        "health probe to {} not sent: {e} (later failures at debug level)",
                        probe.dst
                    );
                    send_error_logged = true;
                }
            }
        }
        while let Some(change) = core.poll_change() {
            let logged = log_budget.admit(now);
            report_change(&change, logged, events);
        }
        if log_budget.summary_due().is_some_and(|t| t <= now) {
            if let Some(n) = log_budget.take_suppressed() {
                warn!(
                    count = n,
                    "... and {n} more peer health changes (see twill_peer_reachable and the debug log)"
                );
            }
        }
        let wait = core
            .poll_timeout()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
            .min(TICK);
        // Not held while waiting: a request for the report gets it at once.
        drop(core);
        match socket.recv(wait) {
            Ok(Some(reply)) => lock(&shared).handle_reply(reply.seq, reply.from, Instant::now()),
            Ok(None) => {}
            Err(e) => {
                debug!("health probe socket: {e}");
                std::thread::sleep(wait);
            }
        }
    }
    status.set_health(None);
}

/// The prober's state; a panic while it was held left nothing half done
/// that a report could not show.
fn lock(core: &Mutex<HealthCore>) -> MutexGuard<'_, HealthCore> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs a change (at warn/info when `logged`, else at debug) and sends its
/// event.
fn report_change(change: &HealthChange, logged: bool, events: &broadcast::Sender<AgentEvent>) {
    match change {
        HealthChange::Unreachable { target, cause } => {
            let advice = match cause {
                UnreachableCause::TunnelBlocked { port } => format!(
                    "; allow UDP port {port} from this host to {} (firewall, security group, hypervisor)",
                    target.public_ip
                ),
                UnreachableCause::HostDown => "; check that the host is up and on the network".into(),
                UnreachableCause::NoReply => String::new(),
            };
            let line = format!(
                "peer {} (subnet {}) unreachable: {cause}{advice}",
                target.public_ip, target.key
            );
            if logged {
                warn!(peer = %target.public_ip, subnet = %target.key, "{line}");
            } else {
                debug!(peer = %target.public_ip, subnet = %target.key, "{line}");
            }
            let _ = events.send(AgentEvent::PeerUnreachable {
                key: target.key,
                public_ip: target.public_ip,
                cause: *cause,
            });
        }
        HealthChange::Recovered { target, rtt } => {
            let line = format!(
                "peer {} (subnet {}) reachable again (round trip {rtt:?})",
                target.public_ip, target.key
            );
            if logged {
                info!(peer = %target.public_ip, subnet = %target.key, "{line}");
            } else {
                debug!(peer = %target.public_ip, subnet = %target.key, "{line}");
            }
            let _ = events.send(AgentEvent::PeerRecovered {
                key: target.key,
                public_ip: target.public_ip,
                rtt: *rtt,
            });
        }
    }
}

/// Probes `targets` once, blocking, until each has a verdict or `deadline`
/// passes (see [`super::probe_once`]).
pub(crate) fn probe_until(
    targets: &[super::ProbeTarget],
    tunnel_port: Option<u16>,
    options: HealthOptions,
    deadline: Instant,
) -> std::io::Result<HealthReport> {
    let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
    #[allow(clippy::cast_possible_truncation)] // any 16 bits of the pid do
    let ident = (std::process::id() as u16) ^ n.wrapping_mul(0x9e37) ^ 0x5a5a;
    let socket = EchoSocket::open(ident)?;
    let mut core = HealthCore::new(options, tunnel_port, Instant::now());
    core.set_targets(targets, Instant::now());
    loop {
        let now = Instant::now();
        while let Some(probe) = core.poll_probe(now) {
            // A probe not sent times out like a lost one.
            let _ = socket.send(probe.dst, probe.seq);
        }
        while core.poll_change().is_some() {}
        let report = core.report();
        if now >= deadline
            || report
                .iter()
                .all(|p| p.reachability != super::Reachability::Unknown)
        {
            return Ok(HealthReport {
                peers: report,
                probes_sent: core.probes_sent(),
            });
        }
        let wait = core
            .poll_timeout()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
            .min(deadline.saturating_duration_since(Instant::now()))
            .min(TICK);
        if let Some(reply) = socket.recv(wait)? {
            core.handle_reply(reply.seq, reply.from, Instant::now());
        }
    }
}
