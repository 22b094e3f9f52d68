use std::net::IpAddr;

/// Everything that can be wrong with flannel data: the network config, a
/// subnet key, a lease value or a MAC address.
///
/// Messages name the field and the value, so a one-line log or CLI error is
/// enough to fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The text is not JSON at all.
    #[error("{what} is not valid JSON: {reason}")]
    InvalidJson {
        /// What was being parsed (`config`, `lease`).
        what: &'static str,
        /// The JSON parser's message.
        reason: String,
    },
    /// The input is larger than we accept.
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// What was being parsed.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field has the wrong JSON type.
    #[error("{field} must be {expected}, found {found}")]
    WrongType {
        /// The field, as flannel names it (`SubnetLen`).
        field: &'static str,
        /// What we expected.
        expected: &'static str,
        /// What the JSON held.
        found: String,
    },
    /// A field has the right type but an unusable value.
    #[error("{field} {value:?} is invalid: {reason}")]
    InvalidValue {
        /// The field, as flannel names it.
        field: &'static str,
        /// The value as found.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A required field is missing.
    #[error("{field} is missing{hint}")]
    Missing {
        /// The field, as flannel names it.
        field: &'static str,
        /// Extra explanation, starting with a separator, or empty.
        hint: &'static str,
    },
    /// `SubnetLen` (or `IPv6SubnetLen`) leaves no room for hosts.
    #[error("{field} {len} is too long: it must be at most {max}")]
    SubnetLenTooLong {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The configured length.
        len: u8,
        /// The longest allowed.
        max: u8,
    },
    /// `SubnetLen` does not split the network into at least four subnets.
    #[error("{field} {len} is too short for Network {network}: it must be at least {min} so that the network holds four subnets")]
    SubnetLenTooShort {
        /// `SubnetLen` or `IPv6SubnetLen`.
        field: &'static str,
        /// The configured length.
        len: u8,
        /// The network.
        network: String,
        /// The shortest allowed.
        min: u8,
    },
    /// The network is too small to be split at all.
    #[error("{field} {network} is too small: the prefix must be at most /{max}")]
    NetworkTooSmall {
        /// `Network` or `IPv6Network`.
        field: &'static str,
        /// The network.
        network: String,
        /// The longest usable prefix.
        max: u8,
    },
    /// An address that must lie inside the network does not.
    #[error("{field} {addr} is not inside Network {network}")]
    OutsideNetwork {
        /// `SubnetMin`, `SubnetMax`, ...
        field: &'static str,
        /// The address.
        addr: IpAddr,
        /// The network.
        network: String,
    },
    /// An address is not on a subnet boundary.
    #[error("{field} {addr} is not aligned to {len_field} {len}")]
    NotAligned {
        /// `SubnetMin`, `SubnetMax`, `IPv6SubnetMin`, `IPv6SubnetMax`.
        field: &'static str,
        /// The address.
        addr: IpAddr,
        /// The length field it must be aligned to: `SubnetLen` or
        /// `IPv6SubnetLen`.
        len_field: &'static str,
        /// The subnet length it must be aligned to.
        len: u8,
    },
    /// `SubnetMin` is above `SubnetMax` (or `IPv6SubnetMin` above
    /// `IPv6SubnetMax`).
    #[error("{min_field} {min} is above {max_field} {max}")]
    MinAboveMax {
        /// `SubnetMin` or `IPv6SubnetMin`.
        min_field: &'static str,
        /// The lower bound.
        min: IpAddr,
        /// `SubnetMax` or `IPv6SubnetMax`.
        max_field: &'static str,
        /// The upper bound.
        max: IpAddr,
    },
    /// A subnet key such as `192.168.4.0-24` is malformed.
    #[error("invalid subnet key {key:?}: {reason}")]
    InvalidKey {
        /// The key as found.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A lease's subnet does not belong to the configured network.
    #[error("subnet {subnet} is not inside Network {network}")]
    SubnetOutsideNetwork {
        /// The lease's subnet.
        subnet: String,
        /// The network.
        network: String,
    },
    /// A lease's subnet does not have the configured length.
    #[error("subnet {subnet} does not have SubnetLen {len}")]
    WrongSubnetLen {
        /// The lease's subnet.
        subnet: String,
        /// The configured length.
        len: u8,
    },
    /// A MAC address is malformed.
    #[error("invalid MAC address {value:?}: expected six hex bytes like 6e:af:8f:41:72:26")]
    InvalidMac {
        /// The value as found.
        value: String,
    },
    /// A value could not be written as JSON. Kept as an error rather than
    /// an empty string, which would be stored as the value.
    #[error("cannot write {what} as JSON: {reason}")]
    Encode {
        /// What was being written (`lease`).
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// A lease value or backend data does not have the expected shape.
    #[error("invalid {what}: {reason}")]
    InvalidData {
        /// What was being parsed (`lease`, `vxlan BackendData`).
        what: &'static str,
        /// The decoder's message, which names the field.
        reason: String,
    },
}
