//! An in-process [`Registry`]: TTLs, revisions, watch with history and
//! compaction, on tokio's clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use twill_model::{LeaseAttrs, LeaseKind, ModelError, NetworkConfig, SubnetKey, SubnetLease};

use crate::{
    HeldLease, LeaseListing, LeaseWatch, MalformedLease, Registry, RegistryError, RegistryEvent,
};

/// flannel's default etcd prefix, defined once in twill-model.
pub use twill_model::DEFAULT_PREFIX;

/// Events buffered per watcher before the watcher task waits for the reader.
const WATCH_BUFFER: usize = 256;

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    /// `None` for a reservation (no TTL).
    expires: Option<Instant>,
    /// The store-side TTL the key is attached to, as an etcd lease ID:
    /// `None` for a reservation. Kept by writes in place (update, restore,
    /// [`MemoryRegistry::overwrite_in_place`]).
    ttl_id: Option<u64>,
    mod_revision: i64,
}

#[derive(Debug, Clone)]
enum Change {
    Put {
        name: String,
        value: Vec<u8>,
        reservation: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Default)]
struct State {
    config: Option<Vec<u8>>,
    /// Keyed by the name under `subnets/` (`10.0.1.0-24`).
    entries: BTreeMap<String, Entry>,
    revision: i64,
    /// Changes in revision order, from `first_retained` on.
    history: Vec<(i64, Change)>,
    /// The oldest revision a watch can start from without a resync.
    first_retained: i64,
    /// The last TTL ID handed out.
    last_ttl_id: u64,
    /// By key, the TTL ID that create (or a renewal re-creating the key)
    /// attached: "the store-side TTL we hold" of [`Registry::restore_lease`].
    /// Everyone using this registry shares it, as the clones of one
    /// `EtcdRegistry` share their etcd leases.
    granted: BTreeMap<String, u64>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    prefix: String,
    state: Mutex<State>,
    /// The current revision, to wake watchers.
    rev_tx: watch::Sender<i64>,
}

/// An in-memory lease store with etcd's semantics where twill relies on them:
/// create-if-absent, TTLs that expire by themselves, a revision per change,
/// watches that resume from a revision with history, and compaction (a watch
/// from a compacted revision starts with [`RegistryEvent::Resync`]).
///
/// Time comes from tokio's clock, so under `#[tokio::test(start_paused = true)]`
/// leases expire when the test advances the virtual clock. Expired leases
/// are removed on the next call and by running watches, each expiry being a
/// revision with a [`RegistryEvent::Removed`].
///
/// For embedders (one process, several networks), for tests, and as the
/// reference for the etcd implementation's behaviour.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use twill_model::LeaseAttrs;
/// use twill_subnet::{MemoryRegistry, Registry, RegistryError};
///
/// let reg = MemoryRegistry::new();
/// assert!(matches!(reg.get_config().await, Err(RegistryError::ConfigNotFound { .. })));
/// reg.set_config(r#"{"Network":"10.5.0.0/16"}"#);
/// assert_eq!(reg.get_config().await.unwrap().subnet_len, 24);
///
/// let key = "10.5.1.0-24".parse().unwrap();
/// let attrs = LeaseAttrs::new("192.0.2.1".parse().unwrap(), "vxlan");
/// reg.create_lease(&key, &attrs, Some(Duration::from_secs(60))).await.unwrap();
/// let again = reg.create_lease(&key, &attrs, Some(Duration::from_secs(60))).await;
/// assert!(matches!(again, Err(RegistryError::Conflict { .. })));
/// assert_eq!(reg.list_leases().await.unwrap().leases.len(), 1);
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryRegistry {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.rev_tx.send_modify(|_| {});
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the registry; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn full_key(&self, name: &str) -> String {
        format!("{}/subnets/{}", self.prefix, name)
    }

    fn parse(
        &self,
        name: &str,
        value: &[u8],
        reservation: bool,
        revision: i64,
    ) -> Result<SubnetLease, MalformedLease> {
        let malformed = |reason: String| MalformedLease {
            key: self.full_key(name),
            reason,
        };
        let key: SubnetKey = name
            .parse()
            .map_err(|e: twill_model::ModelError| malformed(e.to_string()))?;
        let attrs = LeaseAttrs::from_slice(value).map_err(|e| malformed(e.to_string()))?;
        Ok(SubnetLease {
            key,
            attrs,
            kind: if reservation {
                LeaseKind::Reservation
            } else {
                LeaseKind::Expiring
            },
            revision,
        })
    }

    fn listing(&self, st: &State) -> LeaseListing {
        let mut listing = LeaseListing {
            revision: st.revision,
            ..LeaseListing::default()
        };
        for (name, e) in &st.entries {
            match self.parse(name, &e.value, e.expires.is_none(), e.mod_revision) {
                Ok(l) => listing.leases.push(l),
                Err(m) => listing.malformed.push(m),
            }
        }
        listing
    }

    fn event(&self, revision: i64, change: &Change) -> Option<RegistryEvent> {
        match change {
            Change::Put {
                name,
                value,
                reservation,
            } => Some(match self.parse(name, value, *reservation, revision) {
                Ok(l) => RegistryEvent::Upserted(l),
                Err(m) => RegistryEvent::Malformed(m),
            }),
            Change::Delete { name } => name
                .parse::<SubnetKey>()
                .ok()
                .map(|key| RegistryEvent::Removed { key, revision }),
        }
    }

    /// Runs `f` on the state after expiring due leases; wakes watchers if
    /// the revision moved.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.lock();
        let before = st.revision;
        st.expire(Instant::now());
        let out = f(&mut st);
        let after = st.revision;
        drop(st);
        if after != before {
            self.rev_tx.send_replace(after);
        }
        out
    }
}

impl State {
    fn record(&mut self, change: Change) -> i64 {
        self.revision += 1;
        self.history.push((self.revision, change));
        self.revision
    }

    /// A new TTL ID for `name`, recorded as the one we hold.
    fn grant(&mut self, name: &str) -> u64 {
        self.last_ttl_id += 1;
        self.granted.insert(name.to_string(), self.last_ttl_id);
        self.last_ttl_id
    }

    fn put(
        &mut self,
        name: String,
        value: Vec<u8>,
        expires: Option<Instant>,
        ttl_id: Option<u64>,
    ) -> i64 {
        let rev = self.record(Change::Put {
            name: name.clone(),
            value: value.clone(),
            reservation: expires.is_none(),
        });
        self.entries.insert(
            name,
            Entry {
                value,
                expires,
                ttl_id,
                mod_revision: rev,
            },
        );
        rev
    }

    fn delete(&mut self, name: &str) -> bool {
        self.granted.remove(name);
        if self.entries.remove(name).is_some() {
            self.record(Change::Delete {
                name: name.to_string(),
            });
            true
        } else {
            false
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.delete(&name);
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.expires).min()
    }
}

/// The value to store for `attrs`, or the typed error (never an empty value).
fn encode(key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Vec<u8>, RegistryError> {
    attrs
        .to_json()
        .map(String::into_bytes)
        .map_err(|source| RegistryError::Encode { key: *key, source })
}

fn held(key: &SubnetKey, attrs: &LeaseAttrs, ttl: Option<Duration>, revision: i64) -> HeldLease {
    HeldLease::new(*key, attrs.clone(), ttl, revision)
}

impl MemoryRegistry {
    /// An empty registry under flannel's default prefix, `/coreos.com/network`.
    #[must_use]
    pub fn new() -> Self {
        Self::with_prefix(DEFAULT_PREFIX)
    }

    /// An empty registry whose keys (as reported in [`MalformedLease::key`]
    /// and errors) live under `prefix`.
    #[must_use]
    pub fn with_prefix(prefix: &str) -> Self {
        let (rev_tx, _) = watch::channel(0);
        MemoryRegistry {
            shared: Arc::new(Shared {
                prefix: prefix.trim_end_matches('/').to_string(),
                state: Mutex::new(State::default()),
                rev_tx,
            }),
        }
    }

    /// Writes `<prefix>/config` (validated on [`Registry::get_config`], as
    /// flannel does).
    pub fn set_config(&self, json: &str) {
        self.shared.lock().config = Some(json.as_bytes().to_vec());
    }

    /// Writes any value under `<prefix>/subnets/<name>`, without a TTL and
    /// without validation: operator reservations, or garbage for tests.
    pub fn put_raw(&self, name: &str, value: &[u8]) {
        self.shared.with(|st| {
            st.put(name.to_string(), value.to_vec(), None, None);
        });
    }

    /// Replaces the value under `<prefix>/subnets/<name>` keeping its TTL,
    /// as `etcdctl put --ignore-lease` does: a host writing over someone
    /// else's lease. Returns whether the key existed (nothing is written
    /// otherwise).
    pub fn overwrite_in_place(&self, name: &str, value: &[u8]) -> bool {
        self.shared.with(|st| {
            let Some(entry) = st.entries.get(name) else {
                return false;
            };
            let (expires, ttl_id) = (entry.expires, entry.ttl_id);
            st.put(name.to_string(), value.to_vec(), expires, ttl_id);
            true
        })
    }

    /// Writes (or overwrites) a reservation: a lease without a TTL, which the
    /// host whose `PublicIP` matches will use.
    ///
    /// # Errors
    /// [`twill_model::ModelError::Encode`] if `attrs` cannot be written;
    /// nothing is stored then.
    pub fn reserve(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), ModelError> {
        self.put_raw(&key.to_string(), attrs.to_json()?.as_bytes());
        Ok(())
    }

    /// Deletes whatever is stored under `<prefix>/subnets/<name>`; returns
    /// whether something was there.
    pub fn delete_raw(&self, name: &str) -> bool {
        self.shared.with(|st| st.delete(name))
    }

    /// The current store revision (0 when nothing was ever written).
    #[must_use]
    pub fn revision(&self) -> i64 {
        self.shared.with(|st| st.revision)
    }

    /// Discards history before `revision` (at most the current revision plus
    /// one), as etcd's compaction: a watch from an earlier revision starts
    /// with a [`RegistryEvent::Resync`].
    pub fn compact(&self, revision: i64) {
        self.shared.with(|st| {
            let upto = revision.min(st.revision + 1);
            if upto > st.first_retained {
                st.history.retain(|(r, _)| *r >= upto);
                st.first_retained = upto;
            }
        });
    }

    /// How many keys are stored under `subnets/` (expired ones excluded).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.with(|st| st.entries.len())
    }

    /// Whether no key is stored under `subnets/`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn run_watch(shared: Arc<Shared>, mut next: i64, tx: mpsc::Sender<RegistryEvent>) {
    let mut rev_rx = shared.rev_tx.subscribe();
    loop {
        rev_rx.borrow_and_update();
        let (batch, deadline) = {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            let before = st.revision;
            st.expire(Instant::now());
            let mut batch = Vec::new();
            if next < st.first_retained {
                batch.push(RegistryEvent::Resync(shared.listing(&st)));
            } else {
                let start = st.history.partition_point(|(r, _)| *r < next);
                batch.extend(
                    st.history[start..]
                        .iter()
                        .filter_map(|(r, c)| shared.event(*r, c)),
                );
            }
            next = st.revision + 1;
            let deadline = st.next_expiry();
            if st.revision != before {
                shared.rev_tx.send_replace(st.revision);
                rev_rx.borrow_and_update();
            }
            (batch, deadline)
        };
        for ev in batch {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rev_rx.changed() => if r.is_err() { return },
            () = sleep => {}
            () = tx.closed() => return,
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn config_key(&self) -> String {
        format!("{}/config", self.shared.prefix)
    }

    async fn get_config(&self) -> Result<NetworkConfig, RegistryError> {
        let key = format!("{}/config", self.shared.prefix);
        let raw = self.shared.lock().config.clone();
        match raw {
            None => Err(RegistryError::ConfigNotFound { key }),
            Some(bytes) => NetworkConfig::parse_slice(&bytes)
                .map_err(|source| RegistryError::InvalidConfig { key, source }),
        }
    }

    async fn list_leases(&self) -> Result<LeaseListing, RegistryError> {
        Ok(self.shared.with(|st| self.shared.listing(st)))
    }

    async fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<HeldLease, RegistryError> {
        let name = key.to_string();
        let value = encode(key, attrs)?;
        self.shared.with(|st| {
            if st.entries.contains_key(&name) {
                return Err(RegistryError::Conflict { key: *key });
            }
            let expires = ttl.map(|t| Instant::now() + t);
            let ttl_id = ttl.map(|_| st.grant(&name));
            let rev = st.put(name, value, expires, ttl_id);
            Ok(held(key, attrs, ttl, rev))
        })
    }

    async fn renew_lease(&self, held_lease: &HeldLease) -> Result<HeldLease, RegistryError> {
        let key = held_lease.lease.key;
        let attrs = &held_lease.lease.attrs;
        let name = key.to_string();
        self.shared.with(|st| {
            let Some(entry) = st.entries.get_mut(&name) else {
                return match held_lease.ttl {
                    None => Err(RegistryError::LeaseNotFound { key }),
                    Some(ttl) => {
                        // Lost by the store: re-create it, the key being absent.
                        let value = encode(&key, attrs)?;
                        let ttl_id = st.grant(&name);
                        let rev = st.put(name, value, Some(Instant::now() + ttl), Some(ttl_id));
                        Ok(held(&key, attrs, Some(ttl), rev))
                    }
                };
            };
            let stored = LeaseAttrs::from_slice(&entry.value).ok();
            if stored.as_ref() != Some(attrs) {
                return Err(RegistryError::Conflict { key });
            }
            match (held_lease.ttl, entry.expires) {
                (Some(ttl), Some(_)) => {
                    entry.expires = Some(Instant::now() + ttl);
                    Ok(held(&key, attrs, Some(ttl), entry.mod_revision))
                }
                (_, None) => Ok(held(&key, attrs, None, entry.mod_revision)),
                (None, Some(_)) => Err(RegistryError::LeaseNotFound { key }),
            }
        })
    }

    async fn update_lease(
        &self,
        held_lease: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<HeldLease, RegistryError> {
        let key = held_lease.lease.key;
        let name = key.to_string();
        let value = encode(&key, attrs)?;
        self.shared.with(|st| {
            let Some(entry) = st.entries.get(&name) else {
                return Err(RegistryError::LeaseNotFound { key });
            };
            if LeaseAttrs::from_slice(&entry.value).ok().as_ref() != Some(&held_lease.lease.attrs) {
                return Err(RegistryError::Conflict { key });
            }
            let (expires, ttl_id) = (entry.expires, entry.ttl_id);
            let rev = st.put(name, value, expires, ttl_id);
            let ttl = expires.map(|_| held_lease.ttl.unwrap_or_default());
            Ok(held(&key, attrs, ttl, rev))
        })
    }

    async fn restore_lease(
        &self,
        held_lease: &HeldLease,
        revision: i64,
    ) -> Result<HeldLease, RegistryError> {
        let key = held_lease.lease.key;
        let name = key.to_string();
        let value = encode(&key, &held_lease.lease.attrs)?;
        self.shared.with(|st| {
            let ours = st.entries.get(&name).is_some_and(|e| {
                e.mod_revision == revision
                    && e.ttl_id.is_some()
                    && e.ttl_id == st.granted.get(&name).copied()
            });
            let Some(entry) = st.entries.get(&name).filter(|_| ours) else {
                return Err(RegistryError::Conflict { key });
            };
            let (expires, ttl_id) = (entry.expires, entry.ttl_id);
            let rev = st.put(name, value, expires, ttl_id);
            let mut restored = held_lease.clone();
            restored.lease.revision = rev;
            Ok(restored)
        })
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let name = key.to_string();
        if self.shared.with(|st| st.delete(&name)) {
            Ok(())
        } else {
            Err(RegistryError::LeaseNotFound { key: *key })
        }
    }

    async fn watch_leases(&self, from_revision: i64) -> Result<LeaseWatch, RegistryError> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(run_watch(
            Arc::clone(&self.shared),
            from_revision.max(1),
            tx,
        ));
        Ok(LeaseWatch::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs::new(ip.parse().unwrap(), "vxlan")
    }

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap()
    }

    const TTL: Option<Duration> = Some(Duration::from_secs(30));

    #[tokio::test(start_paused = true)]
    async fn leases_expire_on_the_virtual_clock_and_watchers_see_it() {
        let reg = MemoryRegistry::new();
        let a = reg
            .create_lease(&key("10.0.1.0-24"), &attrs("192.0.2.1"), TTL)
            .await
            .unwrap();
        reg.reserve(&key("10.0.9.0-24"), &attrs("192.0.2.9"))
            .unwrap();
        let mut w = reg.watch_leases(reg.revision() + 1).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        reg.renew_lease(&a).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(reg.len(), 2, "renewed at 20 s, so alive at 40 s");
        // Nobody renews any more: the watch reports the expiry by itself.
        let ev = w.next().await.unwrap();
        assert_eq!(
            ev,
            RegistryEvent::Removed {
                key: key("10.0.1.0-24"),
                revision: 3
            }
        );
        let listing = reg.list_leases().await.unwrap();
        assert_eq!(listing.leases.len(), 1);
        assert!(listing.leases[0].is_reservation());
    }

    #[tokio::test(start_paused = true)]
    async fn watch_replays_history_and_resyncs_after_compaction() {
        let reg = MemoryRegistry::new();
        for i in 1..=3 {
            reg.create_lease(&key(&format!("10.0.{i}.0-24")), &attrs("192.0.2.1"), TTL)
                .await
                .unwrap();
        }
        reg.delete_lease(&key("10.0.2.0-24")).await.unwrap();
        reg.put_raw("garbage", b"{");
        let mut w = reg.watch_leases(2).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(w.next().await.unwrap());
        }
        assert!(
            matches!(&got[0], RegistryEvent::Upserted(l) if l.key == key("10.0.2.0-24") && l.revision == 2)
        );
        assert!(matches!(&got[1], RegistryEvent::Upserted(l) if l.key == key("10.0.3.0-24")));
        assert!(
            matches!(&got[2], RegistryEvent::Removed { key: k, revision: 4 } if *k == key("10.0.2.0-24"))
        );
        assert!(
            matches!(&got[3], RegistryEvent::Malformed(m) if m.key == "/coreos.com/network/subnets/garbage")
        );

        reg.compact(5);
        let mut w = reg.watch_leases(3).await.unwrap();
        match w.next().await.unwrap() {
            RegistryEvent::Resync(l) => {
                assert_eq!(l.revision, 5);
                assert_eq!(l.leases.len(), 2);
                assert_eq!(l.malformed.len(), 1);
            }
            other => panic!("expected Resync, got {other:?}"),
        }
        // After the resync the watch goes on from the listing's revision.
        reg.delete_lease(&key("10.0.1.0-24")).await.unwrap();
        assert!(matches!(
            w.next().await.unwrap(),
            RegistryEvent::Removed { revision: 6, .. }
        ));
        // From the first retained revision there is no resync.
        let mut w = reg.watch_leases(5).await.unwrap();
        assert!(matches!(
            w.next().await.unwrap(),
            RegistryEvent::Malformed(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn renew_update_delete_semantics() {
        let reg = MemoryRegistry::new();
        let k = key("10.0.1.0-24");
        let h = reg
            .create_lease(&k, &attrs("192.0.2.1"), TTL)
            .await
            .unwrap();
        let h2 = reg.update_lease(&h, &attrs("192.0.2.2")).await.unwrap();
        assert_eq!(h2.lease.attrs.public_ip.to_string(), "192.0.2.2");
        // The old attributes are no longer ours.
        assert!(matches!(
            reg.renew_lease(&h).await,
            Err(RegistryError::Conflict { .. })
        ));
        reg.renew_lease(&h2).await.unwrap();
        reg.delete_lease(&k).await.unwrap();
        assert!(matches!(
            reg.delete_lease(&k).await,
            Err(RegistryError::LeaseNotFound { .. })
        ));
        assert!(matches!(
            reg.update_lease(&h2, &attrs("192.0.2.3")).await,
            Err(RegistryError::LeaseNotFound { .. })
        ));
        // Renewing a lease the store lost re-creates it.
        let h3 = reg.renew_lease(&h2).await.unwrap();
        assert!(h3.lease.revision > h2.lease.revision);
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn config_errors_are_typed() {
        let reg = MemoryRegistry::with_prefix("/twill/");
        match reg.get_config().await {
            Err(RegistryError::ConfigNotFound { key }) => assert_eq!(key, "/twill/config"),
            other => panic!("{other:?}"),
        }
        reg.set_config(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.0.5"}"#);
        assert!(matches!(
            reg.get_config().await,
            Err(RegistryError::InvalidConfig { .. })
        ));
    }

    #[tokio::test]
    async fn watch_ends_when_registry_is_dropped() {
        let reg = MemoryRegistry::new();
        let mut w = reg.watch_leases(1).await.unwrap();
        drop(reg);
        assert_eq!(w.next().await, None);
    }
}
