//! flannel-compatible data for twill: the network config, subnet keys, lease
//! values and subnet.env, parsed, validated and written exactly as flannel
//! does. Pure data: no IO, no clock.
//!
//! ```
//! use twill_model::{LeaseAttrs, NetworkConfig, SubnetKey};
//!
//! // The config from the article this project implements.
//! let cfg = NetworkConfig::parse(r#"{
//!     "Network": "192.168.0.0/16", "SubnetLen": 24,
//!     "SubnetMin": "192.168.0.0", "SubnetMax": "192.168.5.0",
//!     "Backend": { "Type": "vxlan", "VNI": 100, "Port": 8472 }
//! }"#).unwrap();
//! assert_eq!(cfg.subnet_count(), 6);
//! assert_eq!(cfg.backend.backend_type, "vxlan");
//!
//! // A lease as flanneld writes it under <prefix>/subnets/.
//! let key: SubnetKey = "192.168.4.0-24".parse().unwrap();
//! cfg.check_subnet(&key).unwrap();
//! let attrs = LeaseAttrs::from_json(
//!     r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#,
//! ).unwrap();
//! assert_eq!(attrs.backend_type, "vxlan");
//! ```

mod config;
mod env;
mod error;
mod extension;
mod gojson;
mod key;
mod lease;
mod mac;
mod peer;

pub use config::{BackendConfig, NetworkConfig, DEFAULT_PREFIX, MAX_CONFIG_BYTES};
pub use env::{SubnetEnv, DEFAULT_SUBNET_FILE};
pub use error::ModelError;
pub use extension::{ExtensionConfig, MAX_COMMAND_TIMEOUT};
pub use key::SubnetKey;
pub use lease::{BackendData, LeaseAttrs, LeaseKind, SubnetLease, MAX_LEASE_BYTES};
pub use mac::MacAddr;
pub use peer::{is_usable_public_ipv6, PeerVerdict, SkipReason};

pub use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
