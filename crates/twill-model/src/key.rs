use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::ModelError;

/// The name of a subnet lease in the store, in flannel's form:
/// `192.168.4.0-24`, or `10.1.2.0-24&fd00:1:2::-64` for a dual-stack lease.
///
/// Parsing is strict: the address must be the subnet's network address, the
/// whole string must match (flannel's regular expression is unanchored and
/// would accept trailing junk), and the key must be canonical, exactly as
/// flannel writes it. An alias such as `192.168.4.0-024` names the same
/// subnet as `192.168.4.0-24` under another key: it would slip past the
/// "one lease per subnet" check and hijack the subnet, so it is refused.
///
/// ```
/// use twill_model::SubnetKey;
/// let key: SubnetKey = "192.168.4.0-24".parse().unwrap();
/// assert_eq!(key.ipv4.to_string(), "192.168.4.0/24");
/// assert_eq!(key.to_string(), "192.168.4.0-24");
/// assert!("192.168.4.1-24".parse::<SubnetKey>().is_err());
/// assert!("192.168.4.0-024".parse::<SubnetKey>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet.
    pub ipv4: Ipv4Network,
    /// The IPv6 subnet of a dual-stack lease.
    pub ipv6: Option<Ipv6Network>,
}

impl SubnetKey {
    /// A key for an IPv4-only lease.
    #[must_use]
    pub fn v4(ipv4: Ipv4Network) -> Self {
        SubnetKey { ipv4, ipv6: None }
    }

    /// The IPv4 subnet's network address (`192.168.4.0` for `192.168.4.0/24`):
    /// flannel's VXLAN backend uses it as the peer's gateway and ARP entry.
    #[must_use]
    pub fn network_addr(&self) -> Ipv4Addr {
        self.ipv4.network()
    }

    /// The first usable address (`192.168.4.1`), the bridge address in subnet.env.
    #[must_use]
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ipv4.network()).wrapping_add(1))
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ipv4.network(), self.ipv4.prefix())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.network(), v6.prefix())?;
        }
        Ok(())
    }
}

fn key_err(key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidKey {
        key: key.chars().take(128).collect(),
        reason: reason.into(),
    }
}

fn split_prefix<'a>(key: &str, part: &'a str) -> Result<(&'a str, u8), ModelError> {
    let (addr, len) = part
        .rsplit_once('-')
        .ok_or_else(|| key_err(key, "expected <address>-<prefix length>"))?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(key_err(
            key,
            format!("prefix length {len:?} is not a number"),
        ));
    }
    let len: u8 = len
        .parse()
        .map_err(|_| key_err(key, format!("prefix length {len:?} is out of range")))?;
    Ok((addr, len))
}

fn parse_v4(key: &str, part: &str) -> Result<Ipv4Network, ModelError> {
    let (addr, len) = split_prefix(key, part)?;
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| key_err(key, format!("{addr:?} is not an IPv4 address")))?;
    let net = Ipv4Network::new(ip, len)
        .map_err(|_| key_err(key, format!("prefix length {len} is over 32")))?;
    if net.network() != ip {
        return Err(key_err(
            key,
            format!("{ip} is not the network address of {}/{len}", net.network()),
        ));
    }
    Ok(net)
}

fn parse_v6(key: &str, part: &str) -> Result<Ipv6Network, ModelError> {
    let (addr, len) = split_prefix(key, part)?;
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|_| key_err(key, format!("{addr:?} is not an IPv6 address")))?;
    let net = Ipv6Network::new(ip, len)
        .map_err(|_| key_err(key, format!("prefix length {len} is over 128")))?;
    if net.network() != ip {
        return Err(key_err(
            key,
            format!("{ip} is not the network address of {}/{len}", net.network()),
        ));
    }
    Ok(net)
}

impl FromStr for SubnetKey {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 128 {
            return Err(key_err(s, "longer than any subnet key"));
        }
        let (v4, v6) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let key = SubnetKey {
            ipv4: parse_v4(s, v4)?,
            ipv6: v6.map(|p| parse_v6(s, p)).transpose()?,
        };
        // One subnet, one key: anything but the form we (and flannel) write
        // back, e.g. a zero-padded length or a non-RFC 5952 IPv6 address, is an alias.
        let canonical = key.to_string();
        if canonical != s {
            return Err(key_err(
                s,
                format!("not in canonical form (flannel writes it {canonical:?})"),
            ));
        }
        Ok(key)
    }
}

impl From<Ipv4Network> for SubnetKey {
    fn from(net: Ipv4Network) -> Self {
        SubnetKey::v4(net)
    }
}
