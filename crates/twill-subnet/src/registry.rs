//! The store of leases, as the lease manager sees it.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use twill_model::{LeaseAttrs, LeaseKind, ModelError, NetworkConfig, SubnetKey, SubnetLease};

/// What a [`Registry`] can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// `<prefix>/config` does not exist (yet).
    #[error("no network config at {key}")]
    ConfigNotFound {
        /// The key that was read.
        key: String,
    },
    /// The config exists but is invalid.
    #[error("invalid network config at {key}: {source}")]
    InvalidConfig {
        /// The key that was read.
        key: String,
        /// What is wrong with it.
        #[source]
        source: ModelError,
    },
    /// Create-if-absent lost: the key already exists.
    #[error("subnet {key} is already leased")]
    Conflict {
        /// The contested key.
        key: SubnetKey,
    },
    /// The lease to renew, update or delete is not (or no longer) ours or absent.
    #[error("lease {key} not found")]
    LeaseNotFound {
        /// The key.
        key: SubnetKey,
    },
    /// The store is unreachable or answered with an error; retry later.
    #[error("registry unavailable: {source}")]
    Unavailable {
        /// The transport's or server's error, as its own type (for etcd a
        /// `twill_etcd::EtcdError` keeping the gRPC status): downcast it to
        /// branch on the cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Our lease value could not be encoded, so nothing was written.
    #[error("cannot write the lease for {key}: {source}")]
    Encode {
        /// The lease's subnet.
        key: SubnetKey,
        /// The encoder's error.
        #[source]
        source: ModelError,
    },
    /// The watch stream ended for good (the registry was dropped).
    #[error("watch closed")]
    WatchClosed,
}

impl RegistryError {
    /// [`RegistryError::Unavailable`] caused by `source` (an error, or a
    /// message for registries that have nothing more).
    pub fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        RegistryError::Unavailable {
            source: source.into(),
        }
    }

    /// Whether retrying later may succeed (transport errors).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A value under `subnets/` that could not be used, reported once and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedLease {
    /// The full key as stored.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// All leases at one store revision, from a single listing request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseListing {
    /// The valid leases and reservations.
    pub leases: Vec<SubnetLease>,
    /// Values that could not be parsed, skipped.
    pub malformed: Vec<MalformedLease>,
    /// The store revision of this snapshot; watch from `revision + 1`.
    pub revision: i64,
}

/// A change under `subnets/`, in store order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A lease was created or its value changed.
    Upserted(SubnetLease),
    /// A lease was deleted or expired.
    Removed {
        /// The subnet whose lease is gone.
        key: SubnetKey,
        /// The revision of the deletion.
        revision: i64,
    },
    /// A value was written that cannot be used; it is skipped.
    Malformed(MalformedLease),
    /// History was compacted (or the watch otherwise lost continuity): this
    /// full listing replaces everything known so far.
    Resync(LeaseListing),
}

/// A stream of [`RegistryEvent`]s. The registry reconnects by itself; the
/// stream ends only when the registry shuts down.
#[derive(Debug)]
pub struct LeaseWatch {
    rx: mpsc::Receiver<RegistryEvent>,
}

impl LeaseWatch {
    /// Wraps the receiving half of a channel fed by a registry's watch task.
    #[must_use]
    pub fn new(rx: mpsc::Receiver<RegistryEvent>) -> Self {
        LeaseWatch { rx }
    }

    /// The next event, or `None` once the registry has shut the watch down.
    pub async fn next(&mut self) -> Option<RegistryEvent> {
        self.rx.recv().await
    }

    /// An event that is already waiting, without waiting for one: `None`
    /// when there is none right now (or the watch has ended; [`Self::next`]
    /// tells which). Lets a consumer apply a burst of events at once.
    pub fn try_next(&mut self) -> Option<RegistryEvent> {
        self.rx.try_recv().ok()
    }
}

/// Proof that we hold a lease, returned by create and renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The lease as stored.
    pub lease: SubnetLease,
    /// Time to live granted by the store; `None` for a reservation.
    pub ttl: Option<Duration>,
}

impl HeldLease {
    /// The lease a registry just wrote: expiring when the store granted a
    /// TTL, a reservation when it did not.
    #[must_use]
    pub fn new(key: SubnetKey, attrs: LeaseAttrs, ttl: Option<Duration>, revision: i64) -> Self {
        let kind = if ttl.is_some() {
            LeaseKind::Expiring
        } else {
            LeaseKind::Reservation
        };
        HeldLease {
            lease: SubnetLease {
                key,
                attrs,
                kind,
                revision,
            },
            ttl,
        }
    }
}

/// The shared store of leases: etcd in production ([`twill-etcd`]), memory for
/// embedders and tests ([`crate::MemoryRegistry`]).
///
/// Implementations keep keys and values in flannel's format. All methods are
/// cancel-safe with respect to the store: a dropped future leaves either the
/// old or the new state.
///
/// **Whose is a key.** A stored value is ours when it *parses* to
/// attributes equal to ours ([`LeaseAttrs`]' `==`), whatever its bytes: the
/// same attributes written by flanneld, by an older twill or by hand (other
/// key order, spacing) are ours; an unparsable value is nobody's. Create,
/// renew (when re-creating), update and restore all decide by this rule, and
/// write our own encoding. Whether a renewal notices a value overwritten in
/// place while the store-side TTL lives is not specified (etcd's keepalive
/// does not read the value): the watch reports it, and
/// [`Registry::restore_lease`] answers it.
///
/// [`crate::contract`] checks an implementation against this contract; run
/// it from the implementation's tests.
///
/// [`twill-etcd`]: https://docs.rs/twill-etcd
#[async_trait]
pub trait Registry: Send + Sync {
    /// Where the network config is stored (`/coreos.com/network/config`),
    /// for messages that tell an operator where to fix it.
    fn config_key(&self) -> String;

    /// Reads and validates the network config ([`NetworkConfig::parse_slice`]):
    /// [`RegistryError::InvalidConfig`] carrying the model's error when it
    /// is not a valid flannel config.
    async fn get_config(&self) -> Result<NetworkConfig, RegistryError>;

    /// Lists every lease with the store revision, in one request.
    async fn list_leases(&self) -> Result<LeaseListing, RegistryError>;

    /// Creates the lease only if no key exists for `key`; `ttl: None` writes
    /// a reservation. A lost race is [`RegistryError::Conflict`].
    async fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<HeldLease, RegistryError>;

    /// Keeps our lease alive for another TTL. If the store lost it (expired,
    /// etcd restarted without it), re-creates it only if the key is absent or
    /// still holds our attributes; otherwise [`RegistryError::LeaseNotFound`]
    /// or [`RegistryError::Conflict`].
    async fn renew_lease(&self, held: &HeldLease) -> Result<HeldLease, RegistryError>;

    /// Replaces the attributes of our lease, keeping its TTL.
    async fn update_lease(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<HeldLease, RegistryError>;

    /// Puts our value back on our key after someone overwrote it in place,
    /// only if the key was not modified since `revision` and is still
    /// attached to the store-side TTL (etcd lease) we hold for it: a key
    /// re-created under another TTL or without one is someone else's claim.
    /// [`RegistryError::Conflict`] when it is not ours any more. The default
    /// refuses: a registry without store-side TTLs cannot tell.
    async fn restore_lease(
        &self,
        held: &HeldLease,
        revision: i64,
    ) -> Result<HeldLease, RegistryError> {
        let _ = revision;
        Err(RegistryError::Conflict {
            key: held.lease.key,
        })
    }

    /// Deletes a lease (and its store-side TTL), e.g. on `--release-on-exit`.
    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError>;

    /// Watches changes under `subnets/` from `from_revision` on (use a
    /// listing's `revision + 1`). The implementation reconnects with backoff,
    /// resumes without losing or repeating events, and sends
    /// [`RegistryEvent::Resync`] when history was compacted.
    async fn watch_leases(&self, from_revision: i64) -> Result<LeaseWatch, RegistryError>;
}
