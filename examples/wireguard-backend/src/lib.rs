//! A userspace WireGuard backend for twill, written outside the core crates
//! on their public API only: what a third party would write to add a
//! backend.
//!
//! * [`WireguardBackend`] implements [`twill_backend::Backend`] with
//!   flannel's `wireguard` lease format (`BackendData`
//!   `{"PublicKey":"<base64>"}`), a `flannel-wg` TUN device, a route per peer
//!   subnet into it and an X25519 key pair persisted in a 0600 file;
//! * [`pump`] is the data path: boringtun's `Tunn` per peer between the TUN
//!   device and UDP port 51820, so WireGuard works on kernels without the
//!   `wireguard` module, at several Gbit/s: TUN segmentation offload and
//!   GRO, UDP GSO/GRO, batched syscalls, a queue and a worker per core;
//! * `twill-wg-agent` (`examples/wg-agent`, a package of its own so that
//!   this library never depends on twill-etcd) runs it on twill-agent with
//!   the etcd registry, without twilld.
//!
//! ```no_run
//! use twill_backend::BackendRegistry;
//! use twill_wireguard_backend::{WireguardBackend, WireguardOptions};
//! let mut registry = BackendRegistry::with_builtins();
//! registry.register("wireguard", |config| {
//!     let opts = WireguardOptions::from_config(config, "/run/flannel/wgkey".into())?;
//!     Ok(Box::new(WireguardBackend::new(opts)?))
//! });
//! ```
//!
//! See `docs/custom-backend.md` for a walk through this crate.

mod backend;
pub mod keys;
pub mod pump;

pub use backend::{
    check_families, WireguardBackend, WireguardOptions, BACKEND_TYPE, DEFAULT_KEEPALIVE,
    DEFAULT_PORT, DEVICE, WIREGUARD_OVERHEAD,
};
