use std::path::PathBuf;
use std::time::Duration;

use twill_model::{ModelError, SubnetKey};
use twill_subnet::RegistryError;

/// Everything [`crate::EtcdRegistry`] can fail with.
///
/// Messages name the endpoint, key or file involved and, for transport
/// errors, the whole chain of causes (`invalid peer certificate: UnknownIssuer`),
/// never a password or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The [`crate::EtcdConfig`] itself is unusable (no endpoints, a
    /// certificate without its key, ...).
    #[error("invalid etcd configuration: {reason}")]
    InvalidSettings {
        /// What is wrong.
        reason: String,
    },
    /// An endpoint URL that cannot be used (`http://[::1:2379`, `http://a b:2379`).
    #[error("bad etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The URL as given (at most 128 characters).
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A TLS file (CA, certificate or key) is missing or unreadable.
    #[error("cannot read TLS {what} file {path}: {source}")]
    TlsFile {
        /// `CA`, `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting (or the first request after connecting) failed.
    #[error("cannot connect to etcd at {endpoints}: {reason}")]
    Connect {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The chain of causes, with a hint for certificate problems.
        reason: String,
    },
    /// An etcd request failed.
    #[error("etcd {op} failed: {reason}")]
    Request {
        /// The operation (`range`, `txn`, `lease grant`, ...).
        op: &'static str,
        /// The chain of causes.
        reason: String,
    },
    /// An etcd request did not complete within the request timeout.
    #[error("etcd {op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// `<prefix>/config` does not exist.
    #[error("no network config at {key}")]
    ConfigNotFound {
        /// The key read.
        key: String,
    },
    /// `<prefix>/config` exists but is invalid.
    #[error("invalid network config at {key}: {source}")]
    InvalidConfig {
        /// The key read.
        key: String,
        /// What is wrong with it.
        #[source]
        source: ModelError,
    },
    /// Create-if-absent lost: the key exists.
    #[error("subnet {key} is already leased")]
    Conflict {
        /// The contested subnet.
        key: SubnetKey,
    },
    /// The lease is not (or no longer) in etcd, or not ours.
    #[error("lease {key} not found")]
    LeaseNotFound {
        /// The subnet.
        key: SubnetKey,
    },
    /// Our lease value could not be encoded, so nothing was written.
    #[error("cannot write the lease for {key}: {source}")]
    Encode {
        /// The subnet.
        key: SubnetKey,
        /// The encoder's error.
        #[source]
        source: ModelError,
    },
}

impl EtcdError {
    /// Whether retrying later may succeed (transport errors and timeouts).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EtcdError::Connect { .. } | EtcdError::Request { .. } | EtcdError::Timeout { .. }
        )
    }
}

impl From<EtcdError> for RegistryError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::ConfigNotFound { key } => RegistryError::ConfigNotFound { key },
            EtcdError::InvalidConfig { key, source } => {
                RegistryError::InvalidConfig { key, source }
            }
            EtcdError::Conflict { key } => RegistryError::Conflict { key },
            EtcdError::LeaseNotFound { key } => RegistryError::LeaseNotFound { key },
            EtcdError::Encode { key, source } => RegistryError::Encode { key, source },
            other => RegistryError::Unavailable {
                reason: other.to_string(),
            },
        }
    }
}

/// The error and all its sources, `: `-separated, without repeats (tonic
/// nests the same message at several levels).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    let mut s = parts.join(": ");
    let lower = s.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
        s.push_str(
            " (check the etcd CA, client certificate and key, and that the endpoints use https://)",
        );
    }
    s
}
