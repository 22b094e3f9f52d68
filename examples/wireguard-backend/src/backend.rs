//! [`WireguardBackend`]: flannel's `wireguard` backend type, in userspace.
//!
//! flannel's lease format (`BackendData` `{"PublicKey":"<base64>"}`), device
//! `flannel-wg` with our `/32`, MTU = underlay − 80. Where flannel routes the
//! whole `Network` into its device, we route each peer's subnet (proto 241).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use twill_backend::{
    converge, select_peers, Address, Backend, BackendError, DataplaneState, HostContext,
    LocalSetup, NetlinkHandle, Owner, PeerContext, ReconcileReport, Route, SkipReason, MAIN_TABLE,
    TWILL_RTPROT,
};
use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig, SubnetKey, SubnetLease};

use crate::keys::{decode_key, encode_key, KeyPair};
use crate::pump::{default_queues, PeerConfig, Pump, PumpConfig};

/// flannel's `Backend.Type` for WireGuard.
pub const BACKEND_TYPE: &str = "wireguard";
/// The device flannel creates.
pub const DEVICE: &str = "flannel-wg";
/// flannel's default `ListenPort`.
pub const DEFAULT_PORT: u16 = 51820;
/// IPv4 (20) + UDP (8) + WireGuard header (16) + tag (16) + slack: flannel's 80.
pub const WIREGUARD_OVERHEAD: u32 = 80;
/// Persistent keepalive when the config sets none (flannel: off). Keeps
/// NAT and stateful-firewall mappings open and sessions warm.
pub const DEFAULT_KEEPALIVE: u16 = 25;

/// The `Backend` object's fields, as flannel names them.
#[derive(Debug, Deserialize)]
struct ConfigFields {
    #[serde(rename = "ListenPort", default)]
    listen_port: Option<u16>,
    #[serde(rename = "PSK", default)]
    psk: Option<String>,
    #[serde(rename = "PersistentKeepaliveInterval", default)]
    keepalive: Option<u16>,
    #[serde(rename = "Mode", default)]
    mode: Option<String>,
}

/// `BackendData` of a wireguard lease.
#[derive(Debug, Deserialize)]
struct LeaseData {
    #[serde(rename = "PublicKey")]
    public_key: String,
}

/// How the backend runs: from the `Backend` config plus the key file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    /// Where the private key lives (flannel: `/run/flannel/wgkey`).
    pub key_file: PathBuf,
    /// UDP port, ours and the peers' (`ListenPort`).
    pub port: u16,
    /// Persistent keepalive in seconds (`PersistentKeepaliveInterval`; 0 = off).
    pub keepalive: u16,
    /// Pre-shared key (`PSK`, base64), mixed into every handshake.
    pub psk: Option<[u8; 32]>,
    /// TUN device name.
    pub device: String,
    /// Data path workers, each with a TUN queue and a UDP socket (default:
    /// one per core, at most [`crate::pump::MAX_QUEUES`]).
    pub queues: usize,
    /// Ask for the TUN device's offloads (default); off, one packet per
    /// syscall (see [`crate::pump::PumpConfig::tun_offload`]).
    pub tun_offload: bool,
}

impl WireguardOptions {
    /// Reads `ListenPort`, `PSK`, `PersistentKeepaliveInterval` and `Mode`
    /// (`separate`, `auto` or `ipv4`: all mean IPv4 here).
    ///
    /// # Errors
    /// [`BackendError::Config`] for a field of the wrong type, a bad PSK or
    /// an IPv6 mode.
    pub fn from_config(config: &BackendConfig, key_file: PathBuf) -> Result<Self, BackendError> {
        let bad = |reason: String| BackendError::Config {
            backend: BACKEND_TYPE,
            reason,
        };
        let f: ConfigFields = config.parse_as().map_err(|e| bad(e.to_string()))?;
        if let Some(m) = f
            .mode
            .filter(|m| !["separate", "auto", "ipv4"].contains(&m.as_str()))
        {
            return Err(bad(format!("Mode {m:?} is not supported (IPv4 only)")));
        }
        let psk = match f.psk.as_deref() {
            None | Some("") => None,
            Some(p) => Some(decode_key(p).map_err(|r| bad(format!("PSK: {r}")))?),
        };
        Ok(WireguardOptions {
            key_file,
            port: f.listen_port.filter(|p| *p != 0).unwrap_or(DEFAULT_PORT),
            keepalive: f.keepalive.unwrap_or(DEFAULT_KEEPALIVE),
            psk,
            device: DEVICE.to_string(),
            queues: default_queues(),
            tun_offload: true,
        })
    }
}

/// This example tunnels IPv4 only (one TUN device, IPv4 routes, IPv4
/// endpoints). A dual-stack or IPv6-only network is refused, before the
/// kernel is touched, rather than leased with an IPv6 subnet nothing would
/// carry; the agent waits on it as on any config its backend cannot use.
///
/// # Errors
/// [`BackendError::Config`] when the config has `EnableIPv6`.
pub fn check_families(config: &NetworkConfig) -> Result<(), BackendError> {
    if config.enable_ipv6 {
        return Err(BackendError::Config {
            backend: BACKEND_TYPE,
            reason: "this backend carries IPv4 only: set EnableIPv6 false, or use vxlan or host-gw for a dual-stack or IPv6-only network".into(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Ready {
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    mtu: u32,
}

/// flannel's `wireguard` backend with a userspace data path ([`Pump`]).
#[derive(Debug)]
pub struct WireguardBackend {
    opts: WireguardOptions,
    keys: KeyPair,
    nl: NetlinkHandle,
    ready: Option<Ready>,
    own: Option<SubnetKey>,
    pump: Option<Pump>,
}

fn custom(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::custom(BACKEND_TYPE, context, e)
}

impl WireguardBackend {
    /// Loads (or creates) the key pair and opens a netlink socket in the
    /// current thread's network namespace.
    ///
    /// # Errors
    /// When the key file cannot be read or created, or netlink is unavailable.
    pub fn new(opts: WireguardOptions) -> Result<Self, BackendError> {
        let keys = KeyPair::load_or_create(&opts.key_file)
            .map_err(|e| custom(&format!("key file {}", opts.key_file.display()), e))?;
        Ok(WireguardBackend {
            opts,
            keys,
            nl: NetlinkHandle::new()?,
            ready: None,
            own: None,
            pump: None,
        })
    }

    /// Our public key, as published (base64).
    #[must_use]
    pub fn public_key(&self) -> String {
        encode_key(&self.keys.public)
    }

    /// The data path, once [`Backend::setup`] has run.
    #[must_use]
    pub fn pump(&self) -> Option<&Pump> {
        self.pump.as_ref()
    }

    /// Makes sure the TUN device exists (re-creating it and the pump if it
    /// was deleted), is up, has our MTU and only our `/32`. Returns its index.
    async fn ensure_device(&mut self, mtu: u32) -> Result<u32, BackendError> {
        let name = self.opts.device.clone();
        let mut link = self.nl.link().find(&name)?;
        if self.pump.is_none() || link.is_none() {
            if let Some(stale) = link.take() {
                tracing::info!(device = %name, "replacing an existing {name} device");
                self.nl.link().delete(stale.index)?;
            }
            if let Some(old) = self.pump.take() {
                old.stop().await; // frees the UDP port
            }
            let port = self.opts.port;
            let pump = Pump::open(PumpConfig {
                device: name.clone(),
                port,
                keys: self.keys.clone(),
                keepalive: Some(self.opts.keepalive).filter(|k| *k > 0),
                psk: self.opts.psk,
                queues: self.opts.queues,
                tun_offload: self.opts.tun_offload,
            });
            self.pump = Some(pump.map_err(|e| custom(&format!("opening {name}, UDP {port}"), e))?);
            link = self.nl.link().find(&name)?;
        }
        let link = link.ok_or_else(|| custom("TUN device", format!("{name} vanished")))?;
        if link.mtu != mtu {
            self.nl.link().set_mtu(link.index, mtu)?;
        }
        if !link.up {
            self.nl.link().set_up(link.index)?;
        }
        if let Some(own) = self.own {
            let addr = Ipv4Network::new(own.network_addr(), 32).map_err(|e| custom("addr", e))?;
            let index = link.index;
            self.nl.address().set_only(Address { index, addr })?;
        }
        Ok(link.index)
    }
}

#[async_trait::async_trait]
impl Backend for WireguardBackend {
    fn backend_type(&self) -> &str {
        BACKEND_TYPE
    }

    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        check_families(host.config)?;
        let mtu = host
            .underlay
            .mtu
            .saturating_sub(WIREGUARD_OVERHEAD)
            .max(576);
        self.ready = Some(Ready {
            config: host.config.clone(),
            public_ip: host.public_ip,
            mtu,
        });
        self.ensure_device(mtu).await?;
        let mut attrs = LeaseAttrs::new(host.public_ip, BACKEND_TYPE);
        attrs.backend_data = Some(serde_json::json!({ "PublicKey": self.public_key() }).into());
        Ok(LocalSetup { attrs, mtu })
    }

    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("activate", "setup"))?;
        BackendError::check_own_lease(&r.config, own)?;
        self.own = Some(own.key);
        self.ensure_device(r.mtu).await?;
        Ok(())
    }

    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        let dev = self.ensure_device(r.mtu).await?;
        let cx = PeerContext {
            config: &r.config,
            own: self.own,
            public_ip: r.public_ip,
            backend_type: BACKEND_TYPE,
        };
        let ours = *self.keys.public.as_bytes();
        let ours_reason = |reason: String| SkipReason::Backend {
            backend: BACKEND_TYPE,
            reason,
        };
        let selection = select_peers(peers, &cx, |peer| {
            let data: LeaseData =
                peer.attrs
                    .backend_data_as()
                    .map_err(|e| SkipReason::BadBackendData {
                        reason: e.to_string(),
                    })?;
            let key = decode_key(&data.public_key)
                .map_err(|e| ours_reason(format!("bad PublicKey {:?}: {e}", data.public_key)))?;
            if key == ours {
                return Err(ours_reason(format!(
                    "PublicKey {} is our own",
                    data.public_key
                )));
            }
            Ok(key)
        });
        let mut report = ReconcileReport {
            skipped: selection.skipped,
            ..ReconcileReport::default()
        };
        let mut wanted: Vec<PeerConfig> = Vec::new();
        let mut desired = DataplaneState::default();
        for (lease, key) in selection.accepted {
            if let Some(first) = wanted.iter().find(|p| p.public_key == key) {
                let reason = ours_reason(format!("PublicKey already used by {}", first.subnet));
                report.skipped.push((lease.key, reason));
                continue;
            }
            desired.routes.push(Route::new(lease.key.ipv4).dev(dev));
            wanted.push(PeerConfig {
                public_key: key,
                subnet: lease.key.ipv4,
                endpoint: SocketAddr::from((lease.attrs.public_ip, self.opts.port)),
            });
        }
        let owner = Owner {
            device: Some(dev),
            protocol: TWILL_RTPROT,
            table: MAIN_TABLE,
            route_oifs: vec![dev],
        };
        converge(&mut self.nl, &desired, &owner, &mut report)?;
        if let Some(pump) = &self.pump {
            let changes = pump.set_peers(&wanted);
            let n = changes.added + changes.removed;
            report.planned += n;
            report.applied += n;
            if n > 0 {
                tracing::info!(
                    added = changes.added,
                    removed = changes.removed,
                    peers = wanted.len(),
                    "WireGuard peers updated"
                );
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_networks_are_refused_naming_the_field() {
        for json in [
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"wireguard"}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"wireguard"}}"#,
        ] {
            let cfg = NetworkConfig::parse(json).unwrap();
            let err = check_families(&cfg).unwrap_err();
            assert!(err.is_config(), "{err:?}");
            assert!(err.to_string().contains("EnableIPv6 false"), "{err}");
        }
        let v4 = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        assert!(check_families(&v4).is_ok());
    }
}
