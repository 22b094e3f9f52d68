use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::ModelError;

/// The name of a subnet lease in the store, in flannel's form:
/// `192.168.4.0-24`, `10.1.2.0-24&fd00:1:2::-64` for a dual-stack lease,
/// and `0.0.0.0-0&fd00:1:2::-64` for an IPv6-only one (flannel's
/// `MakeSubnetKey` writes its empty IPv4 network as `0.0.0.0-0`; here that
/// is `ipv4 == 0.0.0.0/0`, see [`SubnetKey::ipv4_subnet`]).
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
///
/// let v6: SubnetKey = "0.0.0.0-0&fd00:1:2::-64".parse().unwrap();
/// assert_eq!(v6.ipv4_subnet(), None);
/// assert_eq!(v6.ipv6.unwrap().to_string(), "fd00:1:2::/64");
/// assert_eq!(v6, SubnetKey::v6_only("fd00:1:2::/64".parse().unwrap()));
/// // The empty IPv4 network alone names no subnet.
/// assert!("0.0.0.0-0".parse::<SubnetKey>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet; `0.0.0.0/0`, flannel's empty network, in an
    /// IPv6-only lease (then `ipv6` is `Some`).
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

    /// A key for a dual-stack lease (`10.1.2.0-24&fd00:1:2::-64`).
    #[must_use]
    pub fn dual(ipv4: Ipv4Network, ipv6: Ipv6Network) -> Self {
        SubnetKey {
            ipv4,
            ipv6: Some(ipv6),
        }
    }

    /// A key for an IPv6-only lease, as flannel writes it
    /// (`0.0.0.0-0&fd00:1:2::-64`).
    #[must_use]
    pub fn v6_only(ipv6: Ipv6Network) -> Self {
        SubnetKey {
            ipv4: EMPTY_V4,
            ipv6: Some(ipv6),
        }
    }

    /// The IPv4 subnet, `None` in an IPv6-only lease.
    #[must_use]
    pub fn ipv4_subnet(&self) -> Option<Ipv4Network> {
        (self.ipv4 != EMPTY_V4).then_some(self.ipv4)
    }

    /// Whether this lease has no IPv4 subnet.
    #[must_use]
    pub fn is_ipv6_only(&self) -> bool {
        self.ipv4 == EMPTY_V4
    }

    /// The first usable IPv6 address (`fd00:1:2::1`), the bridge address in
    /// subnet.env's `FLANNEL_IPV6_SUBNET`.
    #[must_use]
    pub fn first_ipv6_host(&self) -> Option<Ipv6Addr> {
        self.ipv6
            .map(|n| Ipv6Addr::from(u128::from(n.network()).wrapping_add(1)))
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

/// flannel's empty `IP4Net`, the IPv4 part of an IPv6-only key.
pub(crate) const EMPTY_V4: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
    Some(n) => n,
    // A /0 is always a valid prefix; checked at compile time.
    None => panic!("0.0.0.0/0 is a valid network"),
};

/// Whether Go's `net.IP.String` (through flannel's big-integer `IP6`) writes
/// `addr` in dotted IPv4 form: IPv4-mapped addresses, and those whose value
/// takes exactly four bytes (`::100:0` to `::ffff:ffff`). Such a key part
/// would not read back in flannel, so it names no subnet.
fn go_writes_as_ipv4(addr: Ipv6Addr) -> bool {
    let v = u128::from(addr);
    v >> 32 == 0xffff || (1 << 24..1 << 32).contains(&v)
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
    if go_writes_as_ipv4(ip) {
        return Err(key_err(
            key,
            format!("{ip} is an IPv6 address flannel writes as IPv4"),
        ));
    }
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
        if key.ipv6.is_none() && key.is_ipv6_only() {
            // flannel would read it as a lease of 0.0.0.0/0: everything.
            return Err(key_err(s, "0.0.0.0-0 names no subnet without an IPv6 part"));
        }
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
