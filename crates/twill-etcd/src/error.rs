use std::path::PathBuf;
use std::time::Duration;

use twill_subnet::RegistryError;

/// What is etcd-specific in [`crate::EtcdRegistry`]'s failures: settings,
/// connecting, and requests that failed or timed out. What a [`twill_subnet::Registry`]
/// can fail with whatever the store (a missing config, a lost race, a lease
/// not found...) is a [`RegistryError`]; an `EtcdError` reaches a registry
/// user as the source of [`RegistryError::Unavailable`].
///
/// Messages name the endpoint, key or file involved and the etcd client's
/// message (`invalid peer certificate: UnknownIssuer`), never a password or
/// key material. The client's error is kept as the source, with its gRPC
/// status: see [`EtcdError::grpc_code`].
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
    #[error("cannot connect to etcd at {endpoints}: {source}{hint}", hint = hint.unwrap_or(""))]
    Connect {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// What failed: a [`EtcdError::Request`] or [`EtcdError::Timeout`].
        #[source]
        source: Box<EtcdError>,
        /// What to check, for a TLS connection the server refused or did not
        /// answer (the client reports a bad certificate as an unavailable
        /// endpoint, not as a type of its own).
        hint: Option<&'static str>,
    },
    /// An etcd request failed.
    #[error("etcd {op} failed: {}", describe(source))]
    Request {
        /// The operation (`range`, `txn`, `lease grant`, ...).
        op: &'static str,
        /// The etcd client's error; its gRPC status, if any, is
        /// [`EtcdError::grpc_code`].
        #[source]
        source: etcd_client::Error,
    },
    /// etcd answered a request with an error in the response body (a lease
    /// grant's `error` field) rather than a gRPC status.
    #[error("etcd {op} failed: {reason}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// etcd's message, the only thing the response carries.
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
}

/// The hint [`EtcdError::Connect`] adds for TLS connections.
pub(crate) const TLS_HINT: &str =
    " (check the etcd CA, client certificate and key, and that the endpoints use https://)";

impl EtcdError {
    /// Whether retrying later may succeed (transport errors and timeouts).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EtcdError::Connect { .. }
                | EtcdError::Request { .. }
                | EtcdError::Refused { .. }
                | EtcdError::Timeout { .. }
        )
    }

    /// The gRPC status code etcd answered with, when the failure was one
    /// (`NotFound` for an unknown etcd lease, `OutOfRange` for a compacted
    /// revision, `Unavailable` for an endpoint that does not answer...).
    #[must_use]
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            EtcdError::Request {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } => Some(status.code()),
            EtcdError::Connect { source, .. } => source.grpc_code(),
            _ => None,
        }
    }

    /// Whether the connection failed below gRPC (refused, reset, TLS
    /// handshake) or etcd said it is unavailable: the cases where a TLS
    /// setup problem shows.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EtcdError::Request {
                source: etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_),
                ..
            } | EtcdError::Timeout { .. }
        ) || self.grpc_code() == Some(tonic::Code::Unavailable)
    }
}

impl From<EtcdError> for RegistryError {
    fn from(e: EtcdError) -> Self {
        RegistryError::unavailable(e)
    }
}

/// The client error's message with its sources, `: `-separated, without
/// repeats (tonic nests the same message at several levels). The chain is
/// for people; code branches on [`EtcdError::grpc_code`].
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    // etcd_client::Error has no source(); its gRPC status does.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        _ => None,
    };
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code) -> EtcdError {
        EtcdError::Request {
            op: "range",
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(
                code,
                "etcdserver: whatever",
            )),
        }
    }

    #[test]
    fn the_grpc_code_is_kept_through_connect_and_registry_errors() {
        assert_eq!(
            status(tonic::Code::NotFound).grpc_code(),
            Some(tonic::Code::NotFound)
        );
        let connect = EtcdError::Connect {
            endpoints: "https://127.0.0.1:2379".into(),
            source: Box::new(status(tonic::Code::Unavailable)),
            hint: Some(TLS_HINT),
        };
        assert_eq!(connect.grpc_code(), Some(tonic::Code::Unavailable));
        assert!(connect.to_string().ends_with(TLS_HINT), "{connect}");
        // A registry user gets the EtcdError back, code and all.
        let reg = RegistryError::from(status(tonic::Code::OutOfRange));
        assert!(reg.is_transient());
        let source = std::error::Error::source(&reg).and_then(|s| s.downcast_ref::<EtcdError>());
        assert_eq!(
            source.and_then(EtcdError::grpc_code),
            Some(tonic::Code::OutOfRange)
        );
    }

    #[test]
    fn unreachable_is_decided_by_kind_not_text() {
        assert!(status(tonic::Code::Unavailable).is_unreachable());
        assert!(EtcdError::Timeout {
            op: "range",
            after: Duration::from_secs(1)
        }
        .is_unreachable());
        // A message mentioning certificates does not make it one.
        let e = EtcdError::Request {
            op: "range",
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(
                tonic::Code::PermissionDenied,
                "certificate tls handshake",
            )),
        };
        assert!(!e.is_unreachable());
        assert_eq!(e.grpc_code(), Some(tonic::Code::PermissionDenied));
    }
}
