//! The crate's one error enum.

use std::fmt;

use twill_backend::BackendError;
use twill_subnet::SubnetError;

/// An [`crate::AgentOptions`] field, named in [`AgentError::InvalidOption`]
/// so a daemon can report it under its own flag name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AgentOption {
    /// [`crate::AgentOptions::public_ip`].
    PublicIp,
    /// [`crate::AgentOptions::public_ipv6`].
    PublicIpv6,
    /// [`crate::AgentOptions::underlay`].
    Underlay,
    /// [`crate::AgentOptions::subnet_file`].
    SubnetFile,
    /// [`crate::AgentOptions::lease_ttl`].
    LeaseTtl,
    /// [`crate::AgentOptions::renew_margin`].
    RenewMargin,
    /// [`crate::AgentOptions::reconcile_interval`].
    ReconcileInterval,
    /// [`crate::AgentOptions::retry_interval`].
    RetryInterval,
    /// [`crate::health::HealthOptions::interval`].
    HealthInterval,
    /// [`crate::health::HealthOptions::timeout`].
    HealthTimeout,
    /// [`crate::health::HealthOptions::max_probes_per_second`].
    HealthBudget,
    /// [`crate::health::HealthOptions::misses`].
    HealthMisses,
}

impl fmt::Display for AgentOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentOption::PublicIp => "public_ip",
            AgentOption::PublicIpv6 => "public_ipv6",
            AgentOption::Underlay => "underlay",
            AgentOption::SubnetFile => "subnet_file",
            AgentOption::LeaseTtl => "lease_ttl",
            AgentOption::RenewMargin => "renew_margin",
            AgentOption::ReconcileInterval => "reconcile_interval",
            AgentOption::RetryInterval => "retry_interval",
            AgentOption::HealthInterval => "health.interval",
            AgentOption::HealthTimeout => "health.timeout",
            AgentOption::HealthBudget => "health.max_probes_per_second",
            AgentOption::HealthMisses => "health.misses",
        })
    }
}

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// An option is unusable; found before etcd or the kernel is touched.
    /// `reason` reads after the value: `public_ip 127.0.0.1 is a loopback
    /// address, which other hosts cannot reach`.
    #[error("{option} {value} {reason}")]
    InvalidOption {
        /// Which option.
        option: AgentOption,
        /// Its value, as shown to the user.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed in a way retrying will not fix (its set-up or
    /// activation; a reconcile failure is only reported).
    #[error("backend {step} failed: {source}")]
    Backend {
        /// `set-up` or `activation`.
        step: &'static str,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The lease manager stopped or failed for good.
    #[error("lease manager: {0}")]
    Lease(#[from] SubnetError),
    /// subnet.env could not be written.
    #[error("cannot write subnet file {path}: {source}")]
    SubnetFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `nft` could not be run (not installed, no permission).
    #[error("cannot run nft (install nftables): {0}")]
    NftSpawn(#[source] std::io::Error),
    /// `nft` refused the masquerade ruleset.
    #[error("nft failed (exit status {status:?}): {stderr}")]
    Nft {
        /// Its exit code, `None` if killed by a signal.
        status: Option<i32>,
        /// Its error output, on one line.
        stderr: String,
    },
    /// Reading the host's interfaces and routes failed.
    #[error("reading this host's networks: {0}")]
    Netlink(#[from] twill_netlink::NetlinkError),
    /// The backend thread could not be started or ended unexpectedly.
    #[error("backend thread: {0}")]
    Worker(String),
}

impl AgentError {
    /// An [`AgentError::InvalidOption`].
    pub(crate) fn option(
        option: AgentOption,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        AgentError::InvalidOption {
            option,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
