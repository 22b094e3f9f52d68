//! What the agent tells its embedder, as typed values
//! ([`crate::Agent::events`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use twill_backend::{BackendError, ReconcileReport};
use twill_model::{NetworkConfig, SkipReason, SubnetKey, SubnetLease};
use twill_subnet::{LeaseEvent, RegistryError};

/// Why the stored network config cannot be used yet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// No config at the key.
    Missing,
    /// The registry cannot be read or the config does not parse.
    Registry(Arc<RegistryError>),
    /// The backend refuses the config's `Backend` object (an unknown type,
    /// bad options, an `MTU` this host's underlay cannot carry).
    Backend(Arc<BackendError>),
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigProblem::Missing => f.write_str("no network config"),
            ConfigProblem::Registry(e) => match &**e {
                RegistryError::InvalidConfig { source, .. } => write!(f, "{source}"),
                other => write!(f, "{other}"),
            },
            ConfigProblem::Backend(e) => write!(f, "Backend: {e}"),
        }
    }
}

/// The stored config compared with the running one, each time it changes
/// ([`AgentEvent::ConfigDrift`]). A changed config is not applied while
/// running: half of the hosts would route the old network and half the new.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigDrift {
    /// The stored config is the running one (again).
    Same,
    /// Valid but different: applied at the next start.
    Changed(NetworkConfig),
    /// Missing or invalid; the running one is kept.
    Unusable(String),
}

/// One reconcile pass.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconcileOutcome {
    /// Peers in the desired set.
    pub peers: usize,
    /// How long the backend took.
    pub duration: Duration,
    /// An incremental pass over the peers whose lease changed
    /// ([`twill_backend::Backend::apply_changes`]); `false` for a full pass
    /// over every peer.
    pub incremental: bool,
    /// What it did, or why it could not read the kernel at all.
    pub result: Result<ReconcileReport, Arc<BackendError>>,
}

/// Something that happened to the agent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AgentEvent {
    /// Waiting for a usable network config at `key`; sent once per
    /// distinct problem.
    ConfigInvalid {
        /// The registry key of the config.
        key: String,
        /// What is wrong.
        problem: ConfigProblem,
    },
    /// The network config was read and the backend set up for it.
    ConfigRead {
        /// The config.
        config: NetworkConfig,
        /// The overlay MTU the backend chose (`FLANNEL_MTU`).
        mtu: u32,
    },
    /// The stored config changed with respect to the running one.
    ConfigDrift(ConfigDrift),
    /// We hold a subnet lease (the first time).
    LeaseAcquired(SubnetLease),
    /// We hold a lease on another subnet after losing ours: everything was
    /// activated again for it.
    LeaseChanged {
        /// The subnet we had.
        previous: SubnetKey,
        /// The new lease.
        lease: SubnetLease,
    },
    /// Our lease is gone; the lease manager is re-acquiring.
    LeaseLost {
        /// The subnet we held.
        key: SubnetKey,
        /// Why.
        reason: String,
    },
    /// subnet.env was written.
    SubnetFileWritten {
        /// The file.
        path: PathBuf,
        /// `FLANNEL_SUBNET`.
        subnet: SubnetKey,
    },
    /// A peer's lease appeared.
    PeerAdded(SubnetKey),
    /// A peer's lease changed.
    PeerUpdated(SubnetKey),
    /// A peer's lease disappeared.
    PeerRemoved(SubnetKey),
    /// The backend refused to program a peer; sent when the peer starts
    /// being refused for this reason (again after it was programmed or
    /// gone).
    PeerSkipped {
        /// The peer.
        key: SubnetKey,
        /// Why.
        reason: SkipReason,
    },
    /// A reconcile pass ended.
    Reconciled(Arc<ReconcileOutcome>),
    /// A peer stopped answering the health probes ([`crate::health`]).
    PeerUnreachable {
        /// The peer.
        key: SubnetKey,
        /// Its `PublicIP`.
        public_ip: std::net::Ipv4Addr,
        /// What the probes tell of why.
        cause: crate::health::UnreachableCause,
    },
    /// A peer that was unreachable answers again.
    PeerRecovered {
        /// The peer.
        key: SubnetKey,
        /// Its `PublicIP`.
        public_ip: std::net::Ipv4Addr,
        /// The answer's round trip.
        rtt: Duration,
    },
    /// The registry answered again, or stopped answering.
    RegistryReachable(bool),
    /// Any other lease-manager event (renewals, retries, overwrites,
    /// stored values skipped...), as the manager sent it.
    Lease(LeaseEvent),
    /// The agent stopped; `released` if it gave its lease back.
    Stopped {
        /// Whether the lease was deleted.
        released: bool,
    },
}
