//! The watch task behind [`crate::EtcdRegistry::watch`].
//!
//! One etcd watch on `<prefix>/subnets/` at a time. Each event's revision is
//! remembered; after a disconnect the next watch starts at the last seen
//! revision + 1, so nothing is lost or repeated. When etcd says that revision
//! was compacted, the task lists everything, sends
//! [`RegistryEvent::Resync`] and watches from the listing's revision + 1.
//! Reconnects wait with jittered exponential backoff (100 ms doubling to
//! 5 s), reset only after a connection stayed up for a while, so a server that
//! keeps refusing or cancelling never makes the task spin.
//!
//! After a large response the watch is re-created at once from the next
//! revision ([`End::Renew`]): tonic's response stream keeps its receive
//! buffer at the size of the largest message it decoded, for as long as the
//! stream lives. One lease revoke that removes 10,000 leases is one
//! response of ~600 KB (every delete of one revision comes in one message),
//! which twilld otherwise kept for good: 0.6 MiB of the RSS growth after
//! the first cycle of `benches/scripts/memory.sh` (docs/benchmarks.md §5).

use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use twill_model::SubnetKey;
use twill_subnet::{RegistryEvent, RetryPolicy};

use crate::registry::Shared;
use crate::EtcdError;

/// Reconnect delays: 100 ms doubling to 5 s.
pub(crate) const RECONNECT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));
/// A connection that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
/// A response estimated at more than this many bytes renews the watch, so
/// that its stream's buffer is freed. The responses of ordinary churn are
/// far smaller (one lease is ~250 bytes; a transaction of 128 leases ~40
/// KB), so this costs one watch creation per mass change only. A watch
/// catching up on a long history after a disconnect renews after each
/// large batch it is sent; each renewal starts past what was delivered.
pub(crate) const RENEW_AFTER_BYTES: usize = 128 << 10;
/// What an event costs in a response besides its key and value (revisions,
/// version, lease id, field tags), for [`response_bytes`].
const EVENT_OVERHEAD: usize = 32;

/// [`RECONNECT`]'s attempts and jitter for one watch task.
struct Backoff {
    failures: u32,
    rng: rand::rngs::SmallRng,
}

impl Backoff {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            ^ u64::from(std::process::id());
        Backoff {
            failures: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        RECONNECT.delay(self.failures, self.rng.random())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Why one watch connection ended.
enum End {
    /// The receiver is gone: stop.
    ReceiverGone,
    /// Transport error or stream end: reconnect from `next_rev`.
    Disconnected,
    /// The start revision was compacted: resync.
    Compacted,
    /// A large response was delivered: watch again from `next_rev` at once,
    /// to drop the stream and the buffer it grew.
    Renew,
}

/// About how many bytes `resp` took on the wire (what the stream's buffer
/// grew to hold).
fn response_bytes(resp: &WatchResponse) -> usize {
    resp.events()
        .iter()
        .map(|ev| EVENT_OVERHEAD + ev.kv().map_or(0, |kv| kv.key().len() + kv.value().len()))
        .sum()
}

/// etcd answers a request for a compacted revision with gRPC `OutOfRange`
/// (`ErrGRPCCompacted`); a watch on one is canceled with `compact_revision`
/// set instead, see [`watch_once`].
fn is_compacted(e: &EtcdError) -> bool {
    e.grpc_code() == Some(tonic::Code::OutOfRange)
}

pub(crate) async fn run(shared: Shared, from_revision: i64, tx: mpsc::Sender<RegistryEvent>) {
    let mut next_rev = from_revision;
    let mut backoff = Backoff::new();
    // The first watch, and one renewed after a large response (no
    // failure: progress was made), start without a delay.
    let mut at_once = true;
    loop {
        if !std::mem::take(&mut at_once) {
            let delay = backoff.next_delay();
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let started = Instant::now();
        let end = tokio::select! {
            () = tx.closed() => End::ReceiverGone,
            end = watch_once(&shared, &mut next_rev, &tx) => end,
        };
        match end {
            End::ReceiverGone => {
                tracing::debug!("lease watch receiver dropped; stopping");
                return;
            }
            End::Disconnected => {
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
            }
            End::Renew => {
                backoff.reset();
                at_once = true;
            }
            End::Compacted => match resync(&shared, &tx, &mut backoff).await {
                Some(rev) => next_rev = rev + 1,
                None => return,
            },
        }
    }
}

/// Lists until it works; `None` when the receiver went away.
async fn resync(
    shared: &Shared,
    tx: &mpsc::Sender<RegistryEvent>,
    backoff: &mut Backoff,
) -> Option<i64> {
    loop {
        match shared.list().await {
            Ok(listing) => {
                let rev = listing.revision;
                tracing::info!(
                    revision = rev,
                    leases = listing.leases.len(),
                    "watch history compacted; resynced from a full listing"
                );
                tx.send(RegistryEvent::Resync(listing)).await.ok()?;
                return Some(rev);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing for resync failed; retrying");
                let delay = backoff.next_delay();
                tokio::select! {
                    () = tx.closed() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn watch_once(shared: &Shared, next_rev: &mut i64, tx: &mpsc::Sender<RegistryEvent>) -> End {
    let mut wc = shared.client.watch_client();
    let mut opts = WatchOptions::new().with_prefix();
    if *next_rev > 0 {
        opts = opts.with_start_revision(*next_rev);
    }
    shared
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let created = tokio::time::timeout(
        shared.dial_timeout + shared.request_timeout,
        wc.watch(shared.subnets_prefix.as_bytes(), Some(opts)),
    )
    .await;
    let mut stream = match created {
        Err(_) => {
            tracing::warn!(
                revision = *next_rev,
                "creating the lease watch timed out; retrying"
            );
            return End::Disconnected;
        }
        Ok(Err(source)) => {
            let e = EtcdError::Request {
                op: "watch",
                source,
            };
            if is_compacted(&e) {
                return End::Compacted;
            }
            tracing::warn!(revision = *next_rev, error = %e, "creating the lease watch failed; retrying");
            return End::Disconnected;
        }
        Ok(Ok(s)) => s,
    };
    tracing::debug!(revision = *next_rev, "lease watch started");
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled() {
                    // etcd sets compact_revision (the oldest revision it
                    // still has) exactly when the start revision is gone.
                    if resp.compact_revision() != 0 {
                        tracing::warn!(
                            revision = *next_rev,
                            compact_revision = resp.compact_revision(),
                            "lease watch revision was compacted"
                        );
                        return End::Compacted;
                    }
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        "lease watch canceled by etcd; reconnecting"
                    );
                    return End::Disconnected;
                }
                if deliver(shared, &resp, next_rev, tx).await.is_err() {
                    return End::ReceiverGone;
                }
                let bytes = response_bytes(&resp);
                if bytes > RENEW_AFTER_BYTES {
                    tracing::debug!(
                        bytes,
                        revision = *next_rev,
                        "large watch response; renewing the watch to free its buffer"
                    );
                    return End::Renew;
                }
            }
            Ok(None) => {
                tracing::warn!("lease watch stream ended; reconnecting");
                return End::Disconnected;
            }
            Err(source) => {
                let e = EtcdError::Request {
                    op: "watch",
                    source,
                };
                if is_compacted(&e) {
                    return End::Compacted;
                }
                tracing::warn!(error = %e, "lease watch failed; reconnecting");
                return End::Disconnected;
            }
        }
    }
}

/// Sends the response's events in order, advancing `next_rev` past each.
async fn deliver(
    shared: &Shared,
    resp: &WatchResponse,
    next_rev: &mut i64,
    tx: &mpsc::Sender<RegistryEvent>,
) -> Result<(), ()> {
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let rev = kv.mod_revision();
        let event = match ev.event_type() {
            EventType::Put => match shared.parse_kv(kv) {
                Ok(lease) => Some(RegistryEvent::Upserted(lease)),
                Err(m) => {
                    // Reported (once per key and reason) by whoever consumes it.
                    tracing::debug!(key = %m.key, reason = %m.reason, "malformed lease");
                    Some(RegistryEvent::Malformed(m))
                }
            },
            EventType::Delete => match shared.parse_key(kv.key()) {
                Ok(key) => Some(removed(key, rev)),
                Err(reason) => {
                    // Reported when it was written; nothing to remove.
                    tracing::debug!(key = %String::from_utf8_lossy(kv.key()), %reason, "malformed key deleted");
                    None
                }
            },
        };
        if let Some(event) = event {
            tx.send(event).await.map_err(|_| ())?;
        }
        *next_rev = (*next_rev).max(rev + 1);
    }
    Ok(())
}

fn removed(key: SubnetKey, revision: i64) -> RegistryEvent {
    RegistryEvent::Removed { key, revision }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_100_ms_to_5_s_and_reset() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= RECONNECT.initial);
        assert!(delays.iter().all(|d| *d <= RECONNECT.max));
        assert!(delays[9] >= RECONNECT.max / 2, "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= RECONNECT.initial);
    }
}
