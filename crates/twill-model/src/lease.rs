use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::{ModelError, SubnetKey};

/// The largest lease value we accept from the store. flannel's values are
/// about 100 bytes; anything near this limit is garbage or an attack.
pub const MAX_LEASE_BYTES: usize = 16 * 1024;

/// What a host publishes about itself in its lease: the JSON value stored at
/// `<prefix>/subnets/<key>`, field for field as flannel's `LeaseAttrs`.
///
/// Serialization follows flannel's: the same field names and order,
/// `BackendData` and `BackendV6Data` omitted when absent, as flannel's
/// `omitempty` does. One difference: flannel v0.28 writes a missing
/// `PublicIPv6` as `"PublicIPv6":null` (its field has no `omitempty`),
/// twill omits it, as flannel releases without IPv6 did; each reads the other's value
/// as the same attributes, which is what lease ownership compares.
/// `BackendData` and `BackendV6Data` stay opaque JSON; each backend parses
/// its own. An IPv6-only lease, as flannel writes it, has
/// `"PublicIP":"0.0.0.0"`, a `PublicIPv6` and a `BackendV6Data` only.
///
/// Parsing matches keys as flanneld (Go's `encoding/json`) does:
/// `"publicip"` is `PublicIP`, the last of duplicate keys wins, `null` is
/// absent; [`LeaseAttrs::backend_data_as`] applies the same rules inside
/// `BackendData`.
///
/// ```
/// use twill_model::LeaseAttrs;
/// let json = r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#;
/// let attrs = LeaseAttrs::from_json(json).unwrap();
/// assert_eq!(attrs.public_ip.to_string(), "10.0.0.3");
/// assert_eq!(attrs.to_json().unwrap(), json);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The host's underlay address: where peers send encapsulated traffic.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// The host's IPv6 underlay address (dual stack).
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend's `Type` (`vxlan`, `host-gw`, ...).
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    /// Backend-specific data, e.g. `{"VtepMAC":"..."}` for vxlan.
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<BackendData>,
    /// Backend-specific data for IPv6.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<BackendData>,
}

impl LeaseAttrs {
    /// Attributes with no backend data.
    #[must_use]
    pub fn new(public_ip: Ipv4Addr, backend_type: impl Into<String>) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Parses a lease value as stored in etcd.
    ///
    /// # Errors
    /// [`ModelError::TooLarge`], [`ModelError::InvalidJson`] or
    /// [`ModelError::InvalidData`] naming the offending field.
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        Self::from_slice(json.as_bytes())
    }

    /// Parses a lease value from raw bytes (etcd values are bytes).
    ///
    /// # Errors
    /// As [`LeaseAttrs::from_json`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() > MAX_LEASE_BYTES {
            return Err(ModelError::TooLarge {
                what: "lease",
                len: bytes.len(),
                max: MAX_LEASE_BYTES,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ModelError::InvalidJson {
                what: "lease",
                reason: e.to_string(),
            })?;
        crate::gojson::from_value(&value).map_err(|e| ModelError::InvalidData {
            what: "lease",
            reason: e.to_string(),
        })
    }

    /// The value to store, exactly as flannel writes it.
    ///
    /// # Errors
    /// [`ModelError::Encode`] if serde_json refuses the value. Strings,
    /// addresses and JSON values always serialize, so this is not expected;
    /// it is an error rather than an empty value written to the store.
    pub fn to_json(&self) -> Result<String, ModelError> {
        serde_json::to_string(self).map_err(|e| ModelError::Encode {
            what: "lease",
            reason: e.to_string(),
        })
    }

    /// Parses `BackendData` as the backend's own type, matching keys as Go
    /// does (`"VTEPMAC"` is `VtepMAC`; last duplicate wins; `null` is absent,
    /// so give such fields a `#[serde(default)]`).
    ///
    /// # Errors
    /// [`ModelError::Missing`] when there is none, [`ModelError::InvalidData`]
    /// when it does not have the expected shape.
    pub fn backend_data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        self.backend_data
            .as_ref()
            .ok_or(ModelError::Missing {
                field: "BackendData",
                hint: "",
            })?
            .parse_as("BackendData")
    }
}

impl LeaseAttrs {
    /// Parses `BackendV6Data` (the backend's data for its IPv6 device, e.g.
    /// vxlan's `flannel-v6.<VNI>` `VtepMAC`) as the backend's own type, by
    /// the rules of [`LeaseAttrs::backend_data_as`].
    ///
    /// ```
    /// use twill_model::LeaseAttrs;
    /// #[derive(serde::Deserialize)]
    /// struct Vxlan { #[serde(rename = "VtepMAC")] vtep_mac: String }
    /// let json = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"6e:af:8f:41:72:27"}}"#;
    /// let attrs = LeaseAttrs::from_json(json).unwrap();
    /// assert_eq!(attrs.backend_v6_data_as::<Vxlan>().unwrap().vtep_mac, "6e:af:8f:41:72:27");
    /// assert!(attrs.backend_data_as::<Vxlan>().is_err());
    /// assert_eq!(attrs.to_json().unwrap(), json);
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Missing`] when there is none, [`ModelError::InvalidData`]
    /// when it does not have the expected shape.
    pub fn backend_v6_data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        self.backend_v6_data
            .as_ref()
            .ok_or(ModelError::Missing {
                field: "BackendV6Data",
                hint: "",
            })?
            .parse_as("BackendV6Data")
    }
}

/// A lease's `BackendData` or `BackendV6Data`: opaque JSON that each
/// backend parses as its own type ([`LeaseAttrs::backend_data_as`]).
///
/// Kept as its compact JSON text, not as a parsed [`serde_json::Value`]: a
/// vxlan peer's `{"VNI":1,"VtepMAC":"..."}` is one 40-byte allocation
/// instead of a map of small ones (about 700 bytes), which is most of a
/// lease's memory when an agent holds 10,000 of them. It is parsed again
/// when a backend reads it. Two values are equal when they are the same
/// JSON (key order aside, as for a parsed map).
///
/// ```
/// use twill_model::BackendData;
/// let data = BackendData::from(serde_json::json!({"VNI": 1, "VtepMAC": "6e:af:8f:41:72:26"}));
/// assert_eq!(data.as_str(), r#"{"VNI":1,"VtepMAC":"6e:af:8f:41:72:26"}"#);
/// assert_eq!(data.to_value()["VNI"], 1);
/// let reordered = BackendData::from(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26", "VNI": 1}));
/// assert_eq!(data, reordered);
/// ```
#[derive(Clone)]
pub struct BackendData(Box<str>);

impl BackendData {
    /// The compact JSON text, as written in the lease.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, parsed.
    #[must_use]
    pub fn to_value(&self) -> serde_json::Value {
        // Only ever built from a Value's own serialization, so it parses;
        // Null is unreachable, not a silent default.
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// Parses the value as `T` by Go's key rules (see
    /// [`LeaseAttrs::backend_data_as`]); `what` names the field in errors.
    fn parse_as<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
    ) -> Result<T, ModelError> {
        let value = self.to_value();
        crate::gojson::from_value(&value).map_err(|e| ModelError::InvalidData {
            what,
            reason: e.to_string(),
        })
    }
}

impl From<serde_json::Value> for BackendData {
    fn from(value: serde_json::Value) -> Self {
        // A Value's Display is its compact JSON text and cannot fail.
        BackendData(value.to_string().into_boxed_str())
    }
}

impl From<&serde_json::Value> for BackendData {
    fn from(value: &serde_json::Value) -> Self {
        BackendData(value.to_string().into_boxed_str())
    }
}

impl PartialEq for BackendData {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.to_value() == other.to_value()
    }
}

impl Eq for BackendData {}

impl std::fmt::Debug for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for BackendData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BackendData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(BackendData::from)
    }
}

/// Whether a lease expires or is a permanent reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseKind {
    /// A lease with a TTL, renewed by its holder.
    Expiring,
    /// A key written by an operator without a TTL: never allocated to
    /// anyone else, used by the host whose `PublicIP` matches.
    Reservation,
}

/// A subnet lease as read from (or written to) the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLease {
    /// The subnet, i.e. the key.
    pub key: SubnetKey,
    /// What the holder published.
    pub attrs: LeaseAttrs,
    /// Expiring lease or reservation.
    pub kind: LeaseKind,
    /// The store revision at which this value was last modified (0 if unknown).
    pub revision: i64,
}

impl SubnetLease {
    /// Whether this is an operator's reservation (no TTL).
    #[must_use]
    pub fn is_reservation(&self) -> bool {
        self.kind == LeaseKind::Reservation
    }
}
