//! `flannel`, the CNI plugin, as a drop-in for
//! [flannel-io/cni-plugin](https://github.com/flannel-io/cni-plugin): an
//! unchanged `"type":"flannel"` network config works with this binary.
//!
//! A meta-plugin: it reads its config and the host's subnet.env (written
//! by twilld or flanneld), merges them into the config of a delegate
//! plugin (`bridge` with `host-local` IPAM by default), keeps that config
//! under `dataDir` in a file named after the container id, and runs the
//! delegate found on `CNI_PATH` with the same `CNI_*` environment; `DEL`
//! hands the kept config back to the delegate and removes the file.
//!
//! The decisions are pure and tested without root: [`skel`] (the `CNI_*`
//! environment and versions, as libcni's skel), [`FlannelEnv::parse`]
//! (subnet.env as flannel's plugin reads it), [`NetConf::parse`] and
//! [`delegate_config`] (the merge). [`plugin`] is the thin IO around them
//! (files, exec); `src/main.rs` only hands it the process's environment
//! and stdio. See docs/cni.md for a worked example.
//!
//! ```
//! use twill_cni::{delegate_config, FlannelEnv, NetConf};
//! let nc = NetConf::parse(&serde_json::json!({"name": "mynet", "type": "flannel"})).unwrap();
//! let env = FlannelEnv::parse("subnet.env",
//!     "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
//! let d = delegate_config(&nc, &env).unwrap();
//! assert_eq!(d["type"], "bridge");
//! assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.1.17.0/24");
//! ```

#![deny(missing_docs)]

mod error;
mod netconf;
pub mod plugin;
pub mod skel;
mod subnet_env;

pub use error::{code, CniError};
pub use netconf::{delegate_config, NetConf, DEFAULT_DATA_DIR};
pub use subnet_env::FlannelEnv;
