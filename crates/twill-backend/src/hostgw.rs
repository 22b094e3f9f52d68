//! The host-gw backend: `ip route replace <peer subnet> via <peer PublicIP>
//! dev <underlay> proto 241` for every peer on our L2 segment; with
//! `EnableIPv6`, also `ip -6 route replace <peer IPv6 subnet> via <peer
//! PublicIPv6> dev <underlay> proto 241` for each peer whose `PublicIPv6` is
//! on an IPv6 prefix of the underlay.

use std::net::Ipv4Addr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig, SkipReason, SubnetKey, SubnetLease};
use twill_netlink::{NetlinkHandle, MAIN_TABLE, TWILL_RTPROT};

use crate::peers::{
    check_common, check_ipv6, claim_order, dedupe, dedupe6, on_segment, Claimed, Claimed6,
};
use crate::plan::{hostgw_peer, DataplaneState, DataplaneState6, Owner};
use crate::vxlan::{converge, converge6};
use crate::{
    Backend, BackendError, HostContext, Ipv6Underlay, LocalSetup, ReconcileReport,
    UnderlayInterface,
};

#[derive(Debug, Clone)]
struct Ready {
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    underlay: UnderlayInterface,
    /// With `EnableIPv6`.
    ipv6: Option<Ipv6Underlay>,
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
        host.ipv4_side("host-gw")?;
        let ipv6 = host.ipv6_side("host-gw")?;
        self.ready = Some(Ready {
            config: host.config.clone(),
            public_ip: host.public_ip,
            underlay: host.underlay.clone(),
            ipv6,
        });
        let mut attrs = LeaseAttrs::new(host.public_ip, "host-gw");
        attrs.public_ipv6 = ipv6.map(|u| u.public_ip);
        Ok(LocalSetup {
            attrs,
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
        // IPv4 off: no IPv4 route is wanted, and converging to none removes
        // any left from an IPv4 config.
        let sorted = if r.config.enable_ipv4 {
            claim_order(peers.iter().copied(), &r.config)
        } else {
            Vec::new()
        };
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
                Ok(Some(())) => desired.routes.push(hostgw_peer(
                    peer.key.ipv4,
                    peer.attrs.public_ip,
                    r.underlay.index,
                )),
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
        if let Some(u) = r.ipv6 {
            let desired6 = self.desired6(&r, u, peers, &mut report)?;
            converge6(&mut self.nl, &desired6, &owner, &mut report)?;
        }
        Ok(report)
    }
}

impl HostGwBackend {
    /// The IPv6 routes for `peers`; IPv6 halves that cannot be routed are
    /// put in `report.skipped` (peers the IPv4 pass skipped are left out
    /// silently: their reason is there already, unless IPv4 is off).
    fn desired6(
        &mut self,
        r: &Ready,
        u: Ipv6Underlay,
        peers: &[&SubnetLease],
        report: &mut ReconcileReport,
    ) -> Result<DataplaneState6, BackendError> {
        let connected: Vec<Ipv6Network> = self
            .nl
            .address()
            .list6(Some(r.underlay.index))?
            .into_iter()
            .map(|a| a.addr)
            .filter(|n| !n.ip().is_unicast_link_local() && n.prefix() < 128)
            .collect();
        let mut sorted = claim_order(peers.iter().copied(), &r.config);
        sorted.sort_by_key(|p| {
            (
                p.key.ipv6.map(|n| n.prefix()) != Some(r.config.ipv6_subnet_len),
                p.revision,
                p.key,
            )
        });
        let mut desired = DataplaneState6::default();
        let mut accepted = Claimed6::default();
        for peer in sorted {
            match check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "host-gw") {
                Ok(true) => {}
                Ok(false) => continue,
                Err(reason) => {
                    // Reported by the IPv4 pass, unless IPv4 is off.
                    if !r.config.enable_ipv4 {
                        report.skipped.push((peer.key, reason));
                    }
                    continue;
                }
            }
            let verdict = check_ipv6(peer, u.public_ip).and_then(
                |half| {
                    let Some((subnet, public)) = half else {
                        return Ok(None);
                    };
                    if !connected.iter().any(|n| n.contains(public)) {
                        return Err(SkipReason::Malformed {
                            reason: format!(
                                "PublicIPv6 {public} is not on our L2 segment ({} has no IPv6 prefix holding it)",
                                r.underlay.name
                            ),
                        });
                    }
                    dedupe6(&mut accepted, peer.key, subnet)?;
                    Ok(Some((subnet, public)))
                },
            );
            match verdict {
                Ok(Some((subnet, public))) => {
                    desired
                        .routes
                        .push(hostgw_peer(subnet, public, r.underlay.index));
                }
                Ok(None) => {}
                Err(reason) => report.skipped.push((peer.key, reason)),
            }
        }
        Ok(desired)
    }
}
