use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::EtcdError;

/// flannel's default key prefix, defined once in twill-model.
pub use twill_model::DEFAULT_PREFIX;
/// flannel's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

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
///     .with_timeouts(Duration::from_secs(5), Duration::from_secs(10));
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

    /// Checks the settings without connecting: endpoints that parse as
    /// [`EtcdEndpoint`]s, a prefix starting with `/`, user and password
    /// together, a certificate with its key.
    /// [`crate::EtcdRegistry::connect`] calls it first; a daemon calls it to
    /// refuse bad flags before it does anything else.
    ///
    /// # Errors
    /// [`EtcdError::InvalidEndpoint`] or [`EtcdError::InvalidSettings`].
    pub fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::InvalidSettings {
                reason: "no endpoints".into(),
            });
        }
        for ep in &self.endpoints {
            ep.parse::<EtcdEndpoint>()?;
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
        Ok(())
    }
}

/// The host part of an [`EtcdEndpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointHost {
    /// An address literal (`10.0.0.2`, `[fd00::2]`).
    Ip(IpAddr),
    /// A DNS name (`etcd-0.example`), resolved when connecting.
    Name(String),
}

impl fmt::Display for EndpointHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            EndpointHost::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            EndpointHost::Name(n) => f.write_str(n),
        }
    }
}

/// One etcd client URL, checked: `http://host:port` or `https://host:port`
/// (a trailing `/` allowed), the host a DNS name, an IPv4 address or a
/// bracketed IPv6 address, the port 1–65535. An endpoint that fails here
/// would otherwise pass to the client and be retried forever.
///
/// ```
/// use twill_etcd::{EndpointHost, EtcdEndpoint};
/// let ep: EtcdEndpoint = "http://[fd00::2]:2379".parse().unwrap();
/// assert_eq!(ep.port, 2379);
/// assert_eq!(ep.host, EndpointHost::Ip("fd00::2".parse().unwrap()));
/// assert!("http://[::1:2379".parse::<EtcdEndpoint>().is_err());
/// assert!("http://a b:2379".parse::<EtcdEndpoint>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdEndpoint {
    /// `https://`.
    pub tls: bool,
    /// The host.
    pub host: EndpointHost,
    /// The port.
    pub port: u16,
}

impl EtcdEndpoint {
    /// The host's address when the URL names one (not a DNS name).
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            EndpointHost::Ip(ip) => Some(ip),
            EndpointHost::Name(_) => None,
        }
    }
}

impl FromStr for EtcdEndpoint {
    type Err = EtcdError;

    fn from_str(s: &str) -> Result<Self, EtcdError> {
        let bad = |reason: &'static str| EtcdError::InvalidEndpoint {
            endpoint: s.chars().take(128).collect(),
            reason,
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(bad("expected http://host:port or https://host:port"));
        };
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains('/') {
            return Err(bad("a path after host:port is not allowed"));
        }
        if hostport.contains('@') {
            return Err(bad(
                "credentials in the URL are not allowed: use -etcd-username",
            ));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address must be closed with ']'"))?;
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| bad("the part in [...] is not an IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("expected :port after the address"))?;
            (EndpointHost::Ip(IpAddr::V6(addr)), port)
        } else {
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port (the port is required)"))?;
            if host.is_empty() {
                return Err(bad("the host is empty"));
            }
            let host = if let Ok(v4) = host.parse::<Ipv4Addr>() {
                EndpointHost::Ip(IpAddr::V4(v4))
            } else if is_dns_name(host) {
                EndpointHost::Name(host.to_ascii_lowercase())
            } else if host.contains(':') {
                return Err(bad(
                    "an IPv6 address must be written in brackets: [addr]:port",
                ));
            } else {
                return Err(bad("the host is neither an IP address nor a DNS name"));
            };
            (host, port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        Ok(EtcdEndpoint { tls, host, port })
    }
}

/// RFC 1123 host names: dot-separated labels of letters, digits and `-`,
/// none empty or over 63 characters, not starting or ending with `-`.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    fn endpoints_are_checked() {
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.example.com:2379/",
            "http://localhost:1",
            "http://[::1]:2379",
            "https://[fd00::1:2]:65535",
        ] {
            assert!(good.parse::<EtcdEndpoint>().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("http://[::1:2379", "closed"),
            ("http://a b:2379", "neither"),
            ("http://::1:2379", "brackets"),
            ("http://10.0.0.1", "port"),
            ("http://10.0.0.1:0", "1 to 65535"),
            ("http://10.0.0.1:65536", "1 to 65535"),
            ("http://:2379", "empty"),
            ("ftp://10.0.0.1:2379", "http://"),
            ("http://10.0.0.1:2379/v3", "path"),
            ("http://u:p@10.0.0.1:2379", "credentials"),
            ("http://-a:2379", "neither"),
        ] {
            let err = bad.parse::<EtcdEndpoint>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
        let err = EtcdConfig::new(["http://ok:1", "http://a b:1"])
            .validate()
            .unwrap_err();
        assert!(matches!(err, EtcdError::InvalidEndpoint { .. }), "{err}");
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
