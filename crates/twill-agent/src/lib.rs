//! The twill agent loop as a library: what turns a [`Registry`] and a
//! backend into a flannel-compatible host agent.
//!
//! [`Agent::run`] waits for a usable network config at `<prefix>/config`,
//! sets the backend up (on a thread of its own, so blocking netlink calls
//! never stall the runtime), acquires a subnet lease, writes
//! `/run/flannel/subnet.env`, activates the backend, then reconciles the
//! kernel on every peer change and on a timer, re-activating when our
//! subnet changes, until [`ShutdownHandle::shutdown`]. It reports what
//! happens as typed [`AgentEvent`]s, keeps a [`StatusSnapshot`] for health
//! checks and metrics, and logs with `tracing` (target `twill_agent`).
//!
//! The registry is yours to choose: `twill_etcd::EtcdRegistry` to share
//! etcd with flanneld, or the in-memory [`twill_subnet::MemoryRegistry`];
//! so are the backends ([`BackendRegistry`]: vxlan, host-gw, extension, or
//! your own).
//!
//! ```
//! use std::sync::Arc;
//! use twill_agent::{Agent, AgentEvent, AgentOptions};
//! use twill_backend::{
//!     async_trait, Backend, BackendError, BackendRegistry, HostContext, LocalSetup,
//!     ReconcileReport, UnderlayInterface,
//! };
//! use twill_model::{LeaseAttrs, SubnetLease};
//! use twill_subnet::MemoryRegistry;
//!
//! /// A backend that only counts the peers it is given.
//! struct Counting;
//!
//! #[async_trait]
//! impl Backend for Counting {
//!     fn backend_type(&self) -> &str { "counting" }
//!     async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
//!         Ok(LocalSetup { attrs: LeaseAttrs::new(host.public_ip, "counting"), mtu: 1500 })
//!     }
//!     async fn activate(&mut self, _own: &SubnetLease) -> Result<(), BackendError> { Ok(()) }
//!     async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
//!         Ok(ReconcileReport { planned: peers.len(), applied: peers.len(), ..Default::default() })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Arc::new(MemoryRegistry::new());
//! registry.set_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"counting"}}"#);
//! let mut backends = BackendRegistry::new();
//! backends.register("counting", |_| Ok(Box::new(Counting)));
//!
//! let underlay = UnderlayInterface { name: "eth0".into(), index: 0, mtu: 1500, addr: Some("192.0.2.10".parse()?), addr6: None };
//! let mut options = AgentOptions::new(underlay);
//! options.subnet_file = None;      // no /run/flannel/subnet.env in a doc test
//! options.protect_host = false;    // and no netlink reads of this host
//! let agent = Agent::new(registry, backends, options)?;
//! let (mut events, stop) = (agent.events(), agent.shutdown_handle());
//! let running = tokio::spawn(agent.run());
//! while let Ok(event) = events.recv().await {
//!     if let AgentEvent::Reconciled(_) = event {
//!         stop.shutdown();
//!     }
//! }
//! running.await??;
//! # Ok(()) }
//! ```

mod agent;
mod error;
mod event;
pub mod health;
pub mod host;
pub mod masq;
mod options;
mod status;
pub mod subnet_file;
mod worker;

pub use agent::{Agent, ShutdownHandle};
pub use error::{AgentError, AgentOption};
pub use event::{AgentEvent, ConfigDrift, ConfigProblem, ReconcileOutcome};
pub use health::{HealthOptions, HealthReport, PeerHealth, Reachability, UnreachableCause};
pub use options::{
    check_public_ip, check_public_ipv6, parse_duration, AgentOptions, MIN_INTERVAL, MIN_LEASE_TTL,
    MIN_PROBE_TIMEOUT,
};
pub use status::{AgentStatus, StatusSnapshot};
// The types of other crates this API exposes, so an embedder needs no
// direct dependency to name them.
pub use twill_backend::{
    Backend, BackendError, BackendRegistry, NetlinkError, ReconcileReport, Route, SkipReason,
    UnderlayInterface,
};
pub use twill_model::{NetworkConfig, SubnetKey, SubnetLease};
pub use twill_subnet::{LeaseEvent, Registry, RegistryError, SubnetError};
