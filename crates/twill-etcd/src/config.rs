use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::EtcdError;

/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// flannel's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// flannel's lease TTL: 24 hours.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// TLS files, as flanneld's `-etcd-cafile`, `-etcd-certfile`, `-etcd-keyfile`.
///
/// A CA alone verifies the server; a certificate and key authenticate us
/// (etcd started with `--trusted-ca-file` requires them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA certificate(s) to verify the server with.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM client private key.
    pub key_file: Option<PathBuf>,
}

/// How to reach etcd and where flannel's keys live.
///
/// `Debug` never prints the password.
///
/// ```
/// use std::time::Duration;
/// use twill_etcd::EtcdConfig;
/// let cfg = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .with_prefix("/coreos.com/network")
///     .with_lease_ttl(Duration::from_secs(3600));
/// assert_eq!(cfg.config_key(), "/coreos.com/network/config");
/// assert_eq!(cfg.subnets_prefix(), "/coreos.com/network/subnets/");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`, `https://...`); requests are
    /// balanced over those that answer.
    pub endpoints: Vec<String>,
    /// Key prefix (`-etcd-prefix`), without a trailing slash.
    pub prefix: String,
    /// How long establishing a connection may take.
    pub dial_timeout: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// TLS files, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// User name for etcd authentication (`-etcd-username`).
    pub username: Option<String>,
    /// Password for etcd authentication (`-etcd-password`).
    pub password: Option<String>,
    /// TTL of the subnet leases we create (flannel: 24 h).
    pub lease_ttl: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![DEFAULT_ENDPOINT.into()],
            prefix: DEFAULT_PREFIX.into(),
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            tls: None,
            username: None,
            password: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl EtcdConfig {
    /// The defaults with these endpoints.
    #[must_use]
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdConfig::default()
        }
    }

    /// Sets the key prefix (a trailing `/` is removed).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_string();
        self
    }

    /// Sets the TTL of created leases.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the TLS files.
    #[must_use]
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets user name and password.
    #[must_use]
    pub fn with_user(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the dial and request timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, dial: Duration, request: Duration) -> Self {
        self.dial_timeout = dial;
        self.request_timeout = request;
        self
    }

    /// `<prefix>/config`.
    #[must_use]
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix.trim_end_matches('/'))
    }

    /// `<prefix>/subnets/`.
    #[must_use]
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix.trim_end_matches('/'))
    }

    pub(crate) fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::InvalidSettings {
                reason: "no endpoints".into(),
            });
        }
        if self.prefix.is_empty() || !self.prefix.starts_with('/') {
            return Err(EtcdError::InvalidSettings {
                reason: format!("prefix {:?} must start with '/'", self.prefix),
            });
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(EtcdError::InvalidSettings {
                reason: "a user name needs a password and vice versa".into(),
            });
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(EtcdError::InvalidSettings {
                    reason: "a client certificate needs its key file and vice versa".into(),
                });
            }
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(EtcdError::InvalidSettings {
                reason: format!("lease TTL {:?} is under one second", self.lease_ttl),
            });
        }
        Ok(())
    }
}

pub(crate) fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::TlsFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let cfg = EtcdConfig::default().with_user("root", "s3cret");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("root"));
    }

    #[test]
    fn validation_names_the_problem() {
        let err = EtcdConfig::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "invalid etcd configuration: no endpoints");
        let cfg = EtcdConfig::default().with_tls(EtcdTls {
            cert_file: Some("/x.crt".into()),
            ..EtcdTls::default()
        });
        assert!(cfg.validate().unwrap_err().to_string().contains("key file"));
        assert!(EtcdConfig::default().validate().is_ok());
    }

    #[test]
    fn keys_are_flannels() {
        let cfg = EtcdConfig::default().with_prefix("/coreos.com/network/");
        assert_eq!(cfg.config_key(), "/coreos.com/network/config");
        assert_eq!(cfg.subnets_prefix(), "/coreos.com/network/subnets/");
    }

    #[test]
    fn missing_tls_file_is_named() {
        let err = read_tls_file("CA", Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
