//! The leases in etcd, read with `etcdctl` (the tool an operator would
//! use, so the tests see what flannel's own tooling sees).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use twill_model::SubnetKey;

use super::{ClusterError, TwillCluster};

/// A subnet lease as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// The full key (`/coreos.com/network/subnets/192.168.4.0-24`, or
    /// `10.1.2.0-24&fd00:1:2::-64` dual-stack, `0.0.0.0-0&fd00:1:2::-64`
    /// IPv6-only).
    pub key: String,
    /// The IPv4 subnet named by the key; `0.0.0.0/0` (flannel's empty
    /// network) in an IPv6-only key.
    pub subnet: Ipv4Network,
    /// The IPv6 subnet named by the key, in a dual-stack or IPv6-only key.
    pub subnet6: Option<Ipv6Network>,
    /// The value's `PublicIP` (`0.0.0.0` in an IPv6-only lease).
    pub public_ip: Option<Ipv4Addr>,
    /// The value's `PublicIPv6`.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The value's `BackendType`.
    pub backend_type: Option<String>,
    /// The value's `BackendData.VtepMAC`.
    pub vtep_mac: Option<String>,
    /// The value's `BackendV6Data.VtepMAC`.
    pub vtep_mac6: Option<String>,
    /// The raw value (flannel's JSON).
    pub value: String,
}

impl StoredLease {
    /// Parses a key and its value; `None` when the key is not a subnet key.
    #[must_use]
    pub fn parse(key: &str, value: &str) -> Option<Self> {
        let last = key.rsplit('/').next()?;
        // A non-canonical IPv4 key (`192.168.4.0-024`, as hostile tests
        // write them) is still read, so that a test can see it in etcd.
        let parsed: SubnetKey = match last.parse() {
            Ok(k) => k,
            Err(_) => {
                let (ip, len) = last.split_once('-')?;
                SubnetKey::v4(Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?)
            }
        };
        let v6_data = json_object_field(value, "BackendV6Data");
        Some(StoredLease {
            key: key.into(),
            subnet: parsed.ipv4,
            subnet6: parsed.ipv6,
            public_ip: json_string_field(value, "PublicIP").and_then(|s| s.parse().ok()),
            public_ipv6: json_string_field(value, "PublicIPv6").and_then(|s| s.parse().ok()),
            backend_type: json_string_field(value, "BackendType"),
            vtep_mac: json_object_field(value, "BackendData")
                .and_then(|data| json_string_field(data, "VtepMAC")),
            vtep_mac6: v6_data.and_then(|data| json_string_field(data, "VtepMAC")),
            value: value.into(),
        })
    }

    /// Whether this is an IPv6-only lease (no IPv4 subnet in its key).
    #[must_use]
    pub fn is_v6_only(&self) -> bool {
        self.subnet.prefix() == 0 && self.subnet6.is_some()
    }
}

/// The text of the object value of the first `"field": {...}` in a JSON text
/// (braces matched; flannel's lease values hold no braces inside strings).
#[must_use]
pub fn json_object_field<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let pat = format!("\"{field}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    if !rest.starts_with('{') {
        return None;
    }
    let mut depth = 0usize;
    for (n, ch) in rest.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=n]);
                }
            }
            _ => {}
        }
    }
    None
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

    /// Whether `lease` names host `i` as its writer: its `PublicIP` is the
    /// host's IPv4 address or (on an IPv6 LAN) its `PublicIPv6` the host's
    /// IPv6 address.
    ///
    /// # Panics
    /// When `i` is out of range (a test bug).
    #[must_use]
    pub fn is_lease_of(&self, i: usize, lease: &StoredLease) -> bool {
        let h = &self.lan.hosts[i];
        let by_v4 = !h.addr.is_unspecified() && lease.public_ip == Some(h.addr);
        let by_v6 = h.addr6.is_some() && lease.public_ipv6 == h.addr6;
        by_v4 || by_v6
    }

    /// The lease whose `PublicIP` (or `PublicIPv6`, see
    /// [`TwillCluster::is_lease_of`]) is host `i`'s address, if any.
    ///
    /// # Errors
    /// etcdctl's failure, or [`ClusterError::Parse`] when two leases name
    /// this host (a duplicate).
    pub fn own_lease(&self, i: usize) -> Result<Option<StoredLease>, ClusterError> {
        self.check(i)?;
        let ip = self.ip_label(i);
        let mut own: Vec<StoredLease> = self
            .leases()?
            .into_iter()
            .filter(|l| self.is_lease_of(i, l))
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
        assert_eq!(l.subnet6, None);
        assert_eq!(l.vtep_mac6, None);
        // flannel's dual-stack lease: both MACs, each from its own object.
        let d = StoredLease::parse(
            "/coreos.com/network/subnets/10.5.3.0-24&fd00:5:3::-64",
            r#"{"PublicIP":"10.0.0.2","PublicIPv6":"fd00:10::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:02"}}"#,
        )
        .unwrap();
        assert_eq!(d.subnet.to_string(), "10.5.3.0/24");
        assert_eq!(d.subnet6.unwrap().to_string(), "fd00:5:3::/64");
        assert_eq!(d.public_ipv6, Some("fd00:10::2".parse().unwrap()));
        assert_eq!(d.vtep_mac.as_deref(), Some("aa:bb:cc:00:00:01"));
        assert_eq!(d.vtep_mac6.as_deref(), Some("aa:bb:cc:00:00:02"));
        assert!(!d.is_v6_only());
        // IPv6-only: no IPv4 MAC even though a VtepMAC comes first in the text.
        let v6 = StoredLease::parse(
            "/coreos.com/network/subnets/0.0.0.0-0&fd00:5:3::-64",
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:10::2","BackendType":"vxlan","BackendData":null,"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:02"}}"#,
        )
        .unwrap();
        assert!(v6.is_v6_only());
        assert_eq!(v6.vtep_mac, None);
        assert_eq!(v6.vtep_mac6.as_deref(), Some("aa:bb:cc:00:00:02"));
        assert_eq!(v6.public_ip, Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            json_number_field(r#"{"Backend":{"Type":"vxlan","VNI": 100}}"#, "VNI"),
            Some(100)
        );
    }
}
