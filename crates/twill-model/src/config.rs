use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use crate::{ModelError, SubnetKey};

/// flannel's default etcd key prefix: the config is `<prefix>/config`, the
/// leases are under `<prefix>/subnets/`. The one definition every crate and
/// flag default uses, so a registry, a daemon and a test harness cannot
/// disagree about where an unconfigured cluster lives.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// The largest config we accept. flannel's are a few hundred bytes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The `Backend` object of the config: its `Type`, and the whole object kept
/// as JSON for the backend to parse its own fields (`VNI`, `Port`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `Backend.Type`; `udp` when the config has no `Backend`, as in flannel.
    pub backend_type: String,
    /// The whole `Backend` object (an empty object when absent).
    pub raw: Value,
}

impl BackendConfig {
    /// A backend config with only a `Type`.
    #[must_use]
    pub fn new(backend_type: &str) -> Self {
        let mut raw = Map::new();
        raw.insert("Type".into(), Value::String(backend_type.into()));
        BackendConfig {
            backend_type: backend_type.into(),
            raw: Value::Object(raw),
        }
    }

    /// Parses the backend's own fields into `T`, matching keys as flanneld
    /// (Go's `encoding/json`) does: exact name first, else
    /// case-insensitively (`"vNI"` is `VNI`); the last key naming a field
    /// wins; `null` leaves the field's default (so give every field one,
    /// e.g. `#[serde(default)]` on the struct); unknown keys are ignored.
    /// Nested structs follow the same rules.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// #[serde(default)]
    /// struct Options {
    ///     #[serde(rename = "VNI")]
    ///     vni: u32,
    /// }
    /// impl Default for Options {
    ///     fn default() -> Self { Options { vni: 1 } }
    /// }
    /// let cfg = twill_model::NetworkConfig::parse(
    ///     r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","vni":7,"VNi":8}}"#,
    /// ).unwrap();
    /// assert_eq!(cfg.backend.parse_as::<Options>().unwrap().vni, 8);
    /// ```
    ///
    /// # Errors
    /// [`ModelError::InvalidData`] naming the field that does not fit.
    pub fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        crate::gojson::from_value(&self.raw).map_err(|e| ModelError::InvalidData {
            what: "Backend",
            reason: e.to_string(),
        })
    }
}

/// flannel's network configuration, the JSON at `<prefix>/config`, with
/// flannel v0.28's defaults applied and validated.
///
/// Keys are matched as Go's `encoding/json` matches them, as flanneld does:
/// exact name, else case-insensitively; the last key naming a field wins;
/// `null` is absent; unknown fields are ignored.
///
/// Both address families are parsed and validated as flannel does
/// (`EnableIPv4` true by default, `EnableIPv6` false; dual stack and
/// IPv6-only configs parse).
///
/// ```
/// use twill_model::NetworkConfig;
/// let cfg = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
/// assert_eq!(cfg.subnet_len, 24);
/// assert_eq!(cfg.subnet_min.to_string(), "10.5.1.0"); // flannel skips the first subnet
/// assert_eq!(cfg.subnet_max.to_string(), "10.5.255.0");
/// let err = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.0.5"}"#).unwrap_err();
/// assert_eq!(err.to_string(), "SubnetMin 10.5.0.5 is not aligned to SubnetLen 24");
///
/// // Dual stack: flannel's IPv6 defaults (a /64 per host, the first skipped).
/// let cfg = NetworkConfig::parse(
///     r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#,
/// ).unwrap();
/// assert_eq!(cfg.ipv6_subnet_len, 64);
/// assert_eq!(cfg.ipv6_subnet_min.unwrap().to_string(), "fd00:10:0:1::");
/// assert_eq!(cfg.ipv6_subnet_max.unwrap().to_string(), "fd00:10:0:ff::");
/// assert_eq!(cfg.ipv6_subnet_count(), 255);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `Network`: the cluster network every subnet comes from. `0.0.0.0/0`,
    /// flannel's empty network, when `EnableIPv4` is false (and then it and
    /// the other IPv4 fields are neither checked nor used).
    pub network: Ipv4Network,
    /// `SubnetLen`: prefix length of each host's subnet.
    pub subnet_len: u8,
    /// `SubnetMin`: the first allocatable subnet's address.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last allocatable subnet's address.
    pub subnet_max: Ipv4Addr,
    /// `IPv6Network`: the cluster's IPv6 network. Always `Some` when
    /// `EnableIPv6` is true; read but neither checked nor used otherwise
    /// (flannel ignores it then too).
    pub ipv6_network: Option<Ipv6Network>,
    /// `IPv6SubnetLen`: prefix length of each host's IPv6 subnet (flannel's
    /// default: 64, or the network's prefix + 2 when that is longer).
    pub ipv6_subnet_len: u8,
    /// `IPv6SubnetMin`: the first allocatable IPv6 subnet's address
    /// (default: the network's second subnet). Always `Some` when
    /// `EnableIPv6` is true.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`: the last allocatable IPv6 subnet's address
    /// (default: the network's last subnet). Always `Some` when
    /// `EnableIPv6` is true.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `Backend`.
    pub backend: BackendConfig,
}

pub(crate) fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {:?}", s.chars().take(64).collect::<String>()),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The config's fields, in the order of flannel's Go `Config` struct (a key
/// that matches several case-insensitively goes to the first).
const CONFIG_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
];

/// An object's entries as Go assigns them to a struct's fields
/// ([`crate::gojson::struct_entries`]: keys renamed to the field they name,
/// last one wins, `null` dropped), looked up by the field's exact name.
struct Fields<'a>(Vec<(&'a str, &'a Value)>);

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>, fields: &[&'a str]) -> Self {
        Fields(crate::gojson::struct_entries(obj, fields))
    }
}

fn field<'a>(obj: &Fields<'a>, name: &str) -> Option<&'a Value> {
    obj.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

fn get_bool(obj: &Fields<'_>, name: &'static str, default: bool) -> Result<bool, ModelError> {
    match field(obj, name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ModelError::WrongType {
            field: name,
            expected: "a boolean",
            found: type_name(v),
        }),
    }
}

fn get_len(obj: &Fields<'_>, name: &'static str) -> Result<u8, ModelError> {
    match field(obj, name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let v = n.as_u64().ok_or_else(|| ModelError::InvalidValue {
                field: name,
                value: n.to_string(),
                reason: "must be a non-negative integer".into(),
            })?;
            u8::try_from(v).map_err(|_| ModelError::InvalidValue {
                field: name,
                value: n.to_string(),
                reason: "is larger than any prefix length".into(),
            })
        }
        Some(v) => Err(ModelError::WrongType {
            field: name,
            expected: "a number",
            found: type_name(v),
        }),
    }
}

fn get_str<'a>(obj: &Fields<'a>, name: &'static str) -> Result<Option<&'a str>, ModelError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(ModelError::WrongType {
            field: name,
            expected: "a string",
            found: type_name(v),
        }),
    }
}

fn invalid(field: &'static str, value: &str, reason: &str) -> ModelError {
    ModelError::InvalidValue {
        field,
        value: value.chars().take(64).collect(),
        reason: reason.into(),
    }
}

fn get_v4(obj: &Fields<'_>, name: &'static str) -> Result<Option<Ipv4Addr>, ModelError> {
    get_str(obj, name)?
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(name, s, "not an IPv4 address"))
        })
        .transpose()
}

fn get_v6(obj: &Fields<'_>, name: &'static str) -> Result<Option<Ipv6Addr>, ModelError> {
    get_str(obj, name)?
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(name, s, "not an IPv6 address"))
        })
        .transpose()
}

impl NetworkConfig {
    /// Parses and validates the config JSON, applying flannel's defaults.
    ///
    /// # Errors
    /// A [`ModelError`] naming the field and value at fault.
    pub fn parse(json: &str) -> Result<Self, ModelError> {
        Self::parse_slice(json.as_bytes())
    }

    /// As [`NetworkConfig::parse`], from bytes as stored in etcd.
    ///
    /// # Errors
    /// A [`ModelError`] naming the field and value at fault.
    pub fn parse_slice(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ModelError::TooLarge {
                what: "config",
                len: bytes.len(),
                max: MAX_CONFIG_BYTES,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ModelError::InvalidJson {
                what: "config",
                reason: "it is empty".into(),
            });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ModelError::InvalidJson {
            what: "config",
            reason: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(ModelError::WrongType {
                field: "config",
                expected: "a JSON object",
                found: type_name(&value),
            });
        };
        Self::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, ModelError> {
        let obj = &Fields::new(obj, CONFIG_FIELDS);
        let enable_ipv4 = get_bool(obj, "EnableIPv4", true)?;
        let enable_ipv6 = get_bool(obj, "EnableIPv6", false)?;

        let backend = match field(obj, "Backend") {
            None => BackendConfig::new("udp"),
            Some(Value::Object(b)) => {
                // flannel reads Type as one field of a struct, by the same
                // rules; the rest of the object is the backend's to read.
                let backend_type = get_str(&Fields::new(b, &["Type"]), "Type")?
                    .unwrap_or_default()
                    .to_string();
                BackendConfig {
                    backend_type,
                    raw: Value::Object(b.clone()),
                }
            }
            Some(v) => {
                return Err(ModelError::WrongType {
                    field: "Backend",
                    expected: "an object",
                    found: type_name(v),
                })
            }
        };

        let network = match get_str(obj, "Network")? {
            Some(s) => Some(parse_v4_cidr("Network", s)?),
            None => None,
        };
        let ipv6_network = match get_str(obj, "IPv6Network")? {
            Some(s) => Some(parse_v6_cidr("IPv6Network", s)?),
            None => None,
        };

        let mut cfg = NetworkConfig {
            enable_ipv4,
            enable_ipv6,
            network: network.unwrap_or(crate::key::EMPTY_V4),
            subnet_len: get_len(obj, "SubnetLen")?,
            subnet_min: get_v4(obj, "SubnetMin")?.unwrap_or(Ipv4Addr::UNSPECIFIED),
            subnet_max: get_v4(obj, "SubnetMax")?.unwrap_or(Ipv4Addr::UNSPECIFIED),
            ipv6_network,
            ipv6_subnet_len: get_len(obj, "IPv6SubnetLen")?,
            ipv6_subnet_min: get_v6(obj, "IPv6SubnetMin")?,
            ipv6_subnet_max: get_v6(obj, "IPv6SubnetMax")?,
            backend,
        };

        if enable_ipv4 {
            if network.is_none() {
                return Err(ModelError::Missing {
                    field: "Network",
                    hint: ": the config must say which network to split, e.g. \"Network\": \"10.5.0.0/16\"",
                });
            }
            cfg.validate_v4()?;
        } else if !enable_ipv6 {
            return Err(invalid(
                "EnableIPv4",
                "false",
                "with EnableIPv6 false no address family is enabled",
            ));
        }
        if enable_ipv6 {
            cfg.validate_v6()?;
        }
        Ok(cfg)
    }

    /// flannel's `CheckNetworkConfig` for IPv4, with typed errors, plus
    /// SubnetMin <= SubnetMax which flannel leaves to fail at allocation.
    fn validate_v4(&mut self) -> Result<(), ModelError> {
        let prefix = self.network.prefix();
        let net_str = self.network.to_string();
        // Ranges no host can route through an overlay: "this network",
        // loopback (the kernel answers EINVAL to a route through a device),
        // multicast and the reserved class E (broadcast included).
        for (range, what) in [
            ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
            ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
            ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
            ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ] {
            let range: Ipv4Network = range
                .parse()
                .map_err(|_| invalid("Network", range, "bad built-in range"))?;
            if range.contains(self.network.network()) || self.network.contains(range.network()) {
                return Err(invalid(
                    "Network",
                    &net_str,
                    &format!("overlaps {what}, which cannot carry an overlay: choose a private range such as 10.244.0.0/16"),
                ));
            }
        }
        if self.subnet_len > 0 {
            if self.subnet_len > 30 {
                return Err(ModelError::SubnetLenTooLong {
                    field: "SubnetLen",
                    len: self.subnet_len,
                    max: 30,
                });
            }
            if self.subnet_len < prefix + 2 {
                return Err(ModelError::SubnetLenTooShort {
                    field: "SubnetLen",
                    len: self.subnet_len,
                    network: net_str,
                    min: prefix + 2,
                });
            }
        } else if prefix > 28 {
            return Err(ModelError::NetworkTooSmall {
                field: "Network",
                network: net_str,
                max: 28,
            });
        } else if prefix <= 22 {
            self.subnet_len = 24;
        } else {
            self.subnet_len = prefix + 2;
        }

        let size = subnet_size_v4(self.subnet_len).ok_or_else(|| {
            invalid(
                "SubnetLen",
                &self.subnet_len.to_string(),
                "is not a usable prefix length",
            )
        })?;
        let net = u32::from(self.network.network());
        let last = net | (u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0));
        if self.subnet_min.is_unspecified() {
            // Skip the first subnet: its .0 would be the network address.
            self.subnet_min = Ipv4Addr::from(net + size);
        } else if !self.network.contains(self.subnet_min) {
            return Err(ModelError::OutsideNetwork {
                field: "SubnetMin",
                addr: IpAddr::V4(self.subnet_min),
                network: net_str,
            });
        }
        if self.subnet_max.is_unspecified() {
            self.subnet_max = Ipv4Addr::from(last - (size - 1));
        } else if !self.network.contains(self.subnet_max) {
            return Err(ModelError::OutsideNetwork {
                field: "SubnetMax",
                addr: IpAddr::V4(self.subnet_max),
                network: net_str,
            });
        }
        for (field, addr) in [
            ("SubnetMin", self.subnet_min),
            ("SubnetMax", self.subnet_max),
        ] {
            if u32::from(addr) & (size - 1) != 0 {
                return Err(ModelError::NotAligned {
                    field,
                    addr: IpAddr::V4(addr),
                    len_field: "SubnetLen",
                    len: self.subnet_len,
                });
            }
        }
        if self.subnet_min > self.subnet_max {
            return Err(ModelError::MinAboveMax {
                min_field: "SubnetMin",
                min: IpAddr::V4(self.subnet_min),
                max_field: "SubnetMax",
                max: IpAddr::V4(self.subnet_max),
            });
        }
        Ok(())
    }

    fn validate_v6(&mut self) -> Result<(), ModelError> {
        let Some(network) = self.ipv6_network else {
            return Err(ModelError::Missing {
                field: "IPv6Network",
                hint: ": EnableIPv6 is true",
            });
        };
        let prefix = network.prefix();
        let net_str = network.to_string();
        // As for IPv4 (beyond flannel's checks): ranges no overlay can use.
        // ::/8 holds the unspecified and loopback addresses and the
        // IPv4-mapped and -compatible ones, which Go's flannel writes in
        // dotted IPv4 form, so its keys and subnet.env would not even name
        // an IPv6 subnet; every interface routes fe80::/64 itself.
        for (range, what) in [
            (
                "::/8",
                "reserved (::/8: unspecified, loopback, IPv4-mapped)",
            ),
            ("fe80::/10", "link-local (fe80::/10)"),
            ("ff00::/8", "multicast (ff00::/8)"),
        ] {
            let range: Ipv6Network = range
                .parse()
                .map_err(|_| invalid("IPv6Network", range, "bad built-in range"))?;
            if range.contains(network.network()) || network.contains(range.network()) {
                return Err(invalid(
                    "IPv6Network",
                    &net_str,
                    &format!("overlaps {what}, which cannot carry an overlay: choose a unique local range such as fd00:10:244::/56"),
                ));
            }
        }
        if self.ipv6_subnet_len > 0 {
            if self.ipv6_subnet_len > 126 {
                return Err(ModelError::SubnetLenTooLong {
                    field: "IPv6SubnetLen",
                    len: self.ipv6_subnet_len,
                    max: 126,
                });
            }
            if self.ipv6_subnet_len < prefix + 2 {
                return Err(ModelError::SubnetLenTooShort {
                    field: "IPv6SubnetLen",
                    len: self.ipv6_subnet_len,
                    network: net_str,
                    min: prefix + 2,
                });
            }
        } else if prefix > 124 {
            return Err(ModelError::NetworkTooSmall {
                field: "IPv6Network",
                network: net_str,
                max: 124,
            });
        } else if prefix <= 62 {
            self.ipv6_subnet_len = 64;
        } else {
            self.ipv6_subnet_len = prefix + 2;
        }
        let size = 128u32
            .checked_sub(u32::from(self.ipv6_subnet_len))
            .and_then(|s| 1u128.checked_shl(s))
            .ok_or_else(|| {
                invalid(
                    "IPv6SubnetLen",
                    &self.ipv6_subnet_len.to_string(),
                    "is not a usable prefix length",
                )
            })?;
        let net = u128::from(network.network());
        let last = net | u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        // flannel's ip.IsEmpty: "::" is the same as no value.
        let min = match self.ipv6_subnet_min.filter(|a| !a.is_unspecified()) {
            None => Ipv6Addr::from(net + size),
            Some(a) if !network.contains(a) => {
                return Err(ModelError::OutsideNetwork {
                    field: "IPv6SubnetMin",
                    addr: IpAddr::V6(a),
                    network: net_str,
                })
            }
            Some(a) => a,
        };
        let max = match self.ipv6_subnet_max.filter(|a| !a.is_unspecified()) {
            None => Ipv6Addr::from(last - (size - 1)),
            Some(a) if !network.contains(a) => {
                return Err(ModelError::OutsideNetwork {
                    field: "IPv6SubnetMax",
                    addr: IpAddr::V6(a),
                    network: net_str,
                })
            }
            Some(a) => a,
        };
        for (field, addr) in [("IPv6SubnetMin", min), ("IPv6SubnetMax", max)] {
            if u128::from(addr) & (size - 1) != 0 {
                return Err(ModelError::NotAligned {
                    field,
                    addr: IpAddr::V6(addr),
                    len_field: "IPv6SubnetLen",
                    len: self.ipv6_subnet_len,
                });
            }
        }
        if min > max {
            return Err(ModelError::MinAboveMax {
                min_field: "IPv6SubnetMin",
                min: IpAddr::V6(min),
                max_field: "IPv6SubnetMax",
                max: IpAddr::V6(max),
            });
        }
        self.ipv6_subnet_min = Some(min);
        self.ipv6_subnet_max = Some(max);
        Ok(())
    }

    /// How many subnets lie in `[SubnetMin, SubnetMax]`: 0 for a config
    /// that does not describe any (`EnableIPv4` false, SubnetMin above
    /// SubnetMax, SubnetLen over 32), saturating at `u32::MAX` (all 2^32 /32s).
    ///
    /// The fields are public, so this and [`NetworkConfig::subnet_at`] /
    /// [`NetworkConfig::subnet_index`] never overflow whatever they hold;
    /// a parsed config always has `1..=30`.
    #[must_use]
    pub fn subnet_count(&self) -> u32 {
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        match subnet_shift_v4(self.subnet_len) {
            // Without IPv4 the fields are flannel's zeros: one 0.0.0.0/0
            // "subnet" that must never be handed out.
            Some(_) if !self.enable_ipv4 => 0,
            Some(shift) if min <= max => shr(max - min, shift).saturating_add(1),
            _ => 0,
        }
    }

    /// The `index`-th allocatable subnet (0 is `SubnetMin`), if in range.
    #[must_use]
    pub fn subnet_at(&self, index: u32) -> Option<Ipv4Network> {
        if index >= self.subnet_count() {
            return None;
        }
        let offset = shl(index, subnet_shift_v4(self.subnet_len)?)?;
        let addr = u32::from(self.subnet_min).checked_add(offset)?;
        Ipv4Network::new(Ipv4Addr::from(addr), self.subnet_len).ok()
    }

    /// The allocation index of `subnet` if it is one of the allocatable
    /// subnets (right length, aligned, within `[SubnetMin, SubnetMax]`).
    #[must_use]
    pub fn subnet_index(&self, subnet: Ipv4Network) -> Option<u32> {
        if !self.enable_ipv4 || subnet.prefix() != self.subnet_len {
            return None;
        }
        let addr = u32::from(subnet.network());
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        if addr < min || addr > max {
            return None;
        }
        Some(shr(addr - min, subnet_shift_v4(self.subnet_len)?))
    }

    /// Checks that a lease's subnet may be programmed: for each enabled
    /// family, its subnet lies entirely inside `Network` / `IPv6Network`. In
    /// a dual-stack config a lease without an IPv6 part passes (its IPv4
    /// side is routable, as flannel routes it); in an IPv6-only config it
    /// does not. (A lease with another length, left from an older config,
    /// is still routable; the allocator never hands such subnets out.)
    ///
    /// # Errors
    /// [`ModelError::SubnetOutsideNetwork`].
    pub fn check_subnet(&self, key: &SubnetKey) -> Result<(), ModelError> {
        if self.enable_ipv4 {
            let sn = key.ipv4;
            if sn.prefix() < self.network.prefix() || !self.network.contains(sn.network()) {
                return Err(ModelError::SubnetOutsideNetwork {
                    subnet: sn.to_string(),
                    network: self.network.to_string(),
                });
            }
        }
        if self.enable_ipv6 {
            match (key.ipv6, self.ipv6_network) {
                (Some(sn), Some(net)) => {
                    if sn.prefix() < net.prefix() || !net.contains(sn.network()) {
                        return Err(ModelError::SubnetOutsideNetwork {
                            subnet: sn.to_string(),
                            network: net.to_string(),
                        });
                    }
                }
                // A dual-stack cluster may hold IPv4-only leases (flannel
                // programs their IPv4 side); an IPv6-only one may not.
                (None, _) if self.enable_ipv4 => {}
                (None, net) => {
                    return Err(ModelError::SubnetOutsideNetwork {
                        subnet: key.to_string(),
                        network: net.map_or_else(String::new, |n| n.to_string()),
                    })
                }
                (Some(sn), None) => {
                    return Err(ModelError::SubnetOutsideNetwork {
                        subnet: sn.to_string(),
                        network: String::new(),
                    })
                }
            }
        }
        Ok(())
    }

    /// How many IPv6 subnets lie in `[IPv6SubnetMin, IPv6SubnetMax]`: 0
    /// when `EnableIPv6` is false or the fields describe none, saturating
    /// at `u128::MAX`. Never overflows whatever the public fields hold.
    #[must_use]
    pub fn ipv6_subnet_count(&self) -> u128 {
        let Some((min, max, shift)) = self.ipv6_range() else {
            return 0;
        };
        shr128(max - min, shift).saturating_add(1)
    }

    /// The `index`-th allocatable IPv6 subnet (0 is `IPv6SubnetMin`), if in
    /// range.
    #[must_use]
    pub fn ipv6_subnet_at(&self, index: u128) -> Option<Ipv6Network> {
        if index >= self.ipv6_subnet_count() {
            return None;
        }
        let (min, _, shift) = self.ipv6_range()?;
        let offset = if index == 0 {
            0
        } else {
            index.checked_shl(shift).filter(|v| v >> shift == index)?
        };
        Ipv6Network::new(
            Ipv6Addr::from(min.checked_add(offset)?),
            self.ipv6_subnet_len,
        )
        .ok()
    }

    /// The allocation index of `subnet` if it is one of the allocatable IPv6
    /// subnets (right length, aligned, within `[IPv6SubnetMin,
    /// IPv6SubnetMax]`).
    #[must_use]
    pub fn ipv6_subnet_index(&self, subnet: Ipv6Network) -> Option<u128> {
        if subnet.prefix() != self.ipv6_subnet_len {
            return None;
        }
        let (min, max, shift) = self.ipv6_range()?;
        let addr = u128::from(subnet.network());
        if addr < min || addr > max {
            return None;
        }
        Some(shr128(addr - min, shift))
    }

    /// `(IPv6SubnetMin, IPv6SubnetMax, 128 - IPv6SubnetLen)` when IPv6 is
    /// enabled and they describe at least one subnet.
    fn ipv6_range(&self) -> Option<(u128, u128, u32)> {
        if !self.enable_ipv6 {
            return None;
        }
        let min = u128::from(self.ipv6_subnet_min?);
        let max = u128::from(self.ipv6_subnet_max?);
        let shift = 128u32.checked_sub(u32::from(self.ipv6_subnet_len))?;
        (min <= max).then_some((min, max, shift))
    }
}

/// `x >> shift`, 0 for a shift by the full width (IPv6SubnetLen 0).
fn shr128(x: u128, shift: u32) -> u128 {
    x.checked_shr(shift).unwrap_or(0)
}

/// How far a subnet index is shifted to become an address offset
/// (`32 - SubnetLen`); `None` for a length over 32.
fn subnet_shift_v4(len: u8) -> Option<u32> {
    32u32.checked_sub(u32::from(len))
}

/// Addresses in one subnet of length `len`; `None` for /0 (2^32 does not
/// fit) and lengths over 32.
fn subnet_size_v4(len: u8) -> Option<u32> {
    1u32.checked_shl(subnet_shift_v4(len)?)
}

/// `x >> shift`, where a shift by the full width (SubnetLen 0: one /0
/// subnet) gives 0: Rust's `>>` by the full width panics in debug builds
/// and shifts by 0 in release.
fn shr(x: u32, shift: u32) -> u32 {
    x.checked_shr(shift).unwrap_or(0)
}

/// `x << shift`, `None` if bits would be lost (0 shifts to 0 by any amount).
fn shl(x: u32, shift: u32) -> Option<u32> {
    if x == 0 {
        return Some(0);
    }
    x.checked_shl(shift).filter(|v| v >> shift == x)
}

fn parse_v4_cidr(field: &'static str, s: &str) -> Result<Ipv4Network, ModelError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| invalid(field, s, "expected an IPv4 CIDR such as 10.5.0.0/16"))?;
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| invalid(field, s, "not an IPv4 CIDR"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(field, s, "prefix length is not a number"))?;
    let net =
        Ipv4Network::new(ip, len).map_err(|_| invalid(field, s, "prefix length is over 32"))?;
    // flannel masks host bits (Go's net.ParseCIDR), so "10.5.1.2/16" means 10.5.0.0/16.
    Ipv4Network::new(net.network(), len).map_err(|_| invalid(field, s, "prefix length is over 32"))
}

fn parse_v6_cidr(field: &'static str, s: &str) -> Result<Ipv6Network, ModelError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| invalid(field, s, "expected an IPv6 CIDR such as fd00::/56"))?;
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|_| invalid(field, s, "not an IPv6 CIDR"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(field, s, "prefix length is not a number"))?;
    let net =
        Ipv6Network::new(ip, len).map_err(|_| invalid(field, s, "prefix length is over 128"))?;
    Ipv6Network::new(net.network(), len).map_err(|_| invalid(field, s, "prefix length is over 128"))
}
