//! The host-gw backend: `ip route replace <peer subnet> via <peer PublicIP>
//! dev <underlay> proto 241` for every peer on our L2 segment.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig, SkipReason, SubnetKey, SubnetLease};
use twill_netlink::{NetlinkHandle, Route, MAIN_TABLE, TWILL_RTPROT};

use crate::peers::{check_common, claim_order, dedupe, on_segment, Claimed};
use crate::plan::{DataplaneState, Owner};
use crate::vxlan::converge;
use crate::{Backend, BackendError, HostContext, LocalSetup, ReconcileReport, UnderlayInterface};

#[derive(Debug, Clone)]
struct Ready {
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    underlay: UnderlayInterface,
}

/// flannel's `host-gw` backend: plain routes via peers' public IPs.
///
/// Peers whose `PublicIP` is not on a prefix connected to the underlay
/// interface cannot be reached this way and are reported in
/// [`ReconcileReport::skipped`].
#[derive(Debug)]
pub struct HostGwBackend {
    nl: NetlinkHandle,
    ready: Option<Ready>,
    own: Option<SubnetKey>,
}

impl HostGwBackend {
    /// Builds from the `Backend` object (host-gw has no options), opening a
    /// netlink socket in the current thread's network namespace.
    ///
    /// # Errors
    /// No netlink socket.
    pub fn from_config(_config: &BackendConfig) -> Result<Self, BackendError> {
        Ok(Self::with_handle(NetlinkHandle::new()?))
    }

    /// Builds on an existing netlink handle.
    #[must_use]
    pub fn with_handle(nl: NetlinkHandle) -> Self {
        Self {
            nl,
            ready: None,
            own: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for HostGwBackend {
    fn backend_type(&self) -> &str {
        "host-gw"
    }

    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        self.ready = Some(Ready {
            config: host.config.clone(),
            public_ip: host.public_ip,
            underlay: host.underlay.clone(),
        });
        Ok(LocalSetup {
            attrs: LeaseAttrs::new(host.public_ip, "host-gw"),
            mtu: host.underlay.mtu,
        })
    }

    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError> {
        let r = self
            .ready
            .as_ref()
            .ok_or(BackendError::NotReady("activate", "setup"))?;
        BackendError::check_own_lease(&r.config, own)?;
        self.own = Some(own.key);
        Ok(())
    }

    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        let connected: Vec<Ipv4Network> = self
            .nl
            .address()
            .list(Some(r.underlay.index))?
            .into_iter()
            .map(|a| a.addr)
            .collect();
        let sorted = claim_order(peers.iter().copied(), &r.config);
        let mut report = ReconcileReport::default();
        let mut desired = DataplaneState::default();
        let mut accepted = Claimed::default();
        for peer in sorted {
            let verdict = check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "host-gw")
                .and_then(|is_peer| {
                    if !is_peer {
                        return Ok(None);
                    }
                    if !on_segment(&connected, peer.attrs.public_ip) {
                        return Err(SkipReason::NotOnSegment {
                            public_ip: peer.attrs.public_ip,
                            underlay: r.underlay.name.clone(),
                            connected: connected.clone(),
                        });
                    }
                    dedupe(&mut accepted, peer.key)?;
                    Ok(Some(()))
                });
            match verdict {
                Ok(Some(())) => desired.routes.push(
                    Route::new(peer.key.ipv4)
                        .via(peer.attrs.public_ip)
                        .dev(r.underlay.index),
                ),
                Ok(None) => {}
                Err(reason) => report.skipped.push((peer.key, reason)),
            }
        }
        let owner = Owner {
            device: None,
            protocol: TWILL_RTPROT,
            table: MAIN_TABLE,
            route_oifs: vec![r.underlay.index],
        };
        converge(&mut self.nl, &desired, &owner, &mut report)?;
        Ok(report)
    }
}
