//! The leases in etcd, read with `etcdctl` (the tool an operator would
//! use, so the tests see what flannel's own tooling sees).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{ClusterError, TwillCluster};

/// A subnet lease as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// The full key (`/coreos.com/network/subnets/192.168.4.0-24`).
    pub key: String,
    /// The subnet named by the key.
    pub subnet: Ipv4Network,
    /// The value's `PublicIP`.
    pub public_ip: Option<Ipv4Addr>,
    /// The value's `BackendType`.
    pub backend_type: Option<String>,
    /// The value's `BackendData.VtepMAC`.
    pub vtep_mac: Option<String>,
    /// The raw value (flannel's JSON).
    pub value: String,
}

impl StoredLease {
    /// Parses a key and its value; `None` when the key is not a subnet key.
    #[must_use]
    pub fn parse(key: &str, value: &str) -> Option<Self> {
        let last = key.rsplit('/').next()?;
        let (ip, len) = last.split_once('-')?;
        let subnet = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        Some(StoredLease {
            key: key.into(),
            subnet,
            public_ip: json_string_field(value, "PublicIP").and_then(|s| s.parse().ok()),
            backend_type: json_string_field(value, "BackendType"),
            vtep_mac: json_string_field(value, "VtepMAC"),
            value: value.into(),
        })
    }
}

/// The string value of the first `"field": "..."` in a JSON text (enough for
/// flannel's small lease values; escapes are not interpreted).
#[must_use]
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let pat = format!("\"{field}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// The unsigned integer value of the first `"field": N` in a JSON text.
#[must_use]
pub fn json_number_field(json: &str, field: &str) -> Option<u32> {
    let pat = format!("\"{field}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
impl TwillCluster {
    /// Runs `etcdctl ARGS...` against the first running etcd member.
    ///
    /// # Errors
    /// etcdctl's failure (with its stderr).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, ClusterError> {
        let mut last = None;
        for i in 0..self.etcd.len() {
            let m = self.etcd.member(i)?;
            if m.pid().is_none() {
                continue;
            }
            match m.etcdctl(args) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || ClusterError::NoSuch("no etcd member is running".into()),
            ClusterError::Etcd,
        ))
    }

    /// Every lease under `<prefix>/subnets/`, sorted by key.
    ///
    /// # Errors
    /// etcdctl's failure.
    pub fn leases(&self) -> Result<Vec<StoredLease>, ClusterError> {
        let prefix = format!("{}/subnets/", self.settings.prefix);
        let out = self.etcdctl(&["get", "--prefix", &prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut leases = Vec::new();
        for pair in lines.chunks(2) {
            if let [k, v] = pair {
                let lease = StoredLease::parse(k, v).ok_or_else(|| ClusterError::Parse {
                    what: "a subnet key".into(),
                    text: (*k).to_string(),
                })?;
                leases.push(lease);
            }
        }
        Ok(leases)
    }

    /// The lease whose `PublicIP` is host `i`'s address, if any.
    ///
    /// # Errors
    /// etcdctl's failure, or [`ClusterError::Parse`] when two leases name
    /// this host (a duplicate).
    pub fn own_lease(&self, i: usize) -> Result<Option<StoredLease>, ClusterError> {
        self.check(i)?;
        let ip = self.ip(i);
        let mut own: Vec<StoredLease> = self
            .leases()?
            .into_iter()
            .filter(|l| l.public_ip == Some(ip))
            .collect();
        match own.len() {
            0 | 1 => Ok(own.pop()),
            _ => Err(ClusterError::Parse {
                what: format!("leases of {ip} (more than one)"),
                text: own
                    .iter()
                    .map(|l| l.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_stored_leases() {
        let l = StoredLease::parse(
            "/coreos.com/network/subnets/192.168.3.0-24",
            r#"{"PublicIP": "10.0.0.99","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:00:00:99"}}"#,
        )
        .unwrap();
        assert_eq!(l.subnet.to_string(), "192.168.3.0/24");
        assert_eq!(l.public_ip, Some(Ipv4Addr::new(10, 0, 0, 99)));
        assert_eq!(l.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(l.vtep_mac.as_deref(), Some("aa:bb:cc:00:00:99"));
        assert!(StoredLease::parse("/coreos.com/network/config", "{}").is_none());
        assert_eq!(
            json_number_field(r#"{"Backend":{"Type":"vxlan","VNI": 100}}"#, "VNI"),
            Some(100)
        );
    }
}
