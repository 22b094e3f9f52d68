//! The host-gw backend: `ip route replace <peer subnet> via <peer PublicIP>
//! dev <underlay> proto 241` for every peer on our L2 segment; with
//! `EnableIPv6`, also `ip -6 route replace <peer IPv6 subnet> via <peer
//! PublicIPv6> dev <underlay> proto 241` for each peer whose `PublicIPv6` is
//! on an IPv6 prefix of the underlay.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use twill_model::{BackendConfig, LeaseAttrs, NetworkConfig, SkipReason, SubnetKey, SubnetLease};
use twill_netlink::{NetlinkHandle, MAIN_TABLE, TWILL_RTPROT};

use crate::incremental::{apply_delta, Claims, PeerProgram, PeerTable};
use crate::peers::{
    check_common, check_ipv6, claim_of, claim_of6, claim_order, claim_order6, claim_rank,
    claim_rank6, on_segment, range, range6,
};
use crate::plan::Owner;
use crate::vxlan::{converge, converge6};
use crate::{
    Backend, BackendError, HostContext, Ipv6Underlay, LocalSetup, PeerChange, ReconcileReport,
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
    /// What the last pass routed per peer, for [`Backend::apply_changes`].
    table: Option<PeerTable<Ipv4Addr, u32>>,
    /// The same for the IPv6 halves.
    table6: Option<PeerTable<Ipv6Addr, u128>>,
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
            table: None,
            table6: None,
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
        (self.table, self.table6) = (None, None);
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
        (self.table, self.table6) = (None, None);
        Ok(())
    }

    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        (self.table, self.table6) = (None, None);
        let connected = self.connected(&r)?;
        // IPv4 off: no IPv4 route is wanted, and converging to none removes
        // any left from an IPv4 config.
        let sorted = if r.config.enable_ipv4 {
            claim_order(peers.iter().copied(), &r.config)
        } else {
            Vec::new()
        };
        let mut report = ReconcileReport::default();
        let owner = owner(&r);
        let (mut table, skipped) = PeerTable::build(
            sorted,
            claim_of,
            |peer: &SubnetLease, claims: &mut Claims<u32>| {
                self.accept(&r, &connected.0, peer, claims)
            },
        );
        report.skipped = skipped;
        let before = report.skipped.len();
        converge(&mut self.nl, &table.desired(), &owner, &mut report)?;
        if report.skipped.len() > before {
            table.found_foreign_routes();
        }
        if let Some(u) = r.ipv6 {
            let sorted = claim_order6(peers.iter().copied(), &r.config);
            let (mut table6, skipped) = PeerTable::build(
                sorted,
                claim_of6,
                |peer: &SubnetLease, claims: &mut Claims<u128>| {
                    self.accept6(&r, u, &connected.1, peer, claims)
                },
            );
            report.skipped.extend(skipped);
            let before = report.skipped.len();
            converge6(&mut self.nl, &table6.desired(), &owner, &mut report)?;
            if report.skipped.len() > before {
                table6.found_foreign_routes();
            }
            self.table6 = Some(table6);
        }
        self.table = Some(table);
        Ok(report)
    }

    async fn apply_changes(
        &mut self,
        changes: &[PeerChange<'_>],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let (table, table6) = (self.table.take(), self.table6.take());
        let Some(r) = self.ready.clone() else {
            return Ok(None);
        };
        let connected = self.connected(&r)?;
        let Some(table) = table else {
            return Ok(None);
        };
        let this = &*self;
        let accept = |peer: &SubnetLease, claims: &mut Claims<u32>| {
            this.accept(&r, &connected.0, peer, claims)
        };
        // IPv4 off: the table stays empty, as the full pass left it.
        let changes4: &[PeerChange<'_>] = if r.config.enable_ipv4 { changes } else { &[] };
        let Some((table, delta)) = table.update(changes4, claim_rank(&r.config), accept) else {
            return Ok(None);
        };
        let delta6 = match (r.ipv6, table6) {
            (None, _) => None,
            (Some(_), None) => return Ok(None),
            (Some(u), Some(t)) => {
                let accept6 = |peer: &SubnetLease, claims: &mut Claims<u128>| {
                    this.accept6(&r, u, &connected.1, peer, claims)
                };
                match t.update(changes, claim_rank6(&r.config), accept6) {
                    Some(x) => Some(x),
                    None => return Ok(None),
                }
            }
        };
        let owner = owner(&r);
        let mut report = ReconcileReport::default();
        if !apply_delta(&mut self.nl, &delta, &owner, &mut report)? {
            return Ok(None);
        }
        if let Some((t6, d6)) = delta6 {
            if !apply_delta(&mut self.nl, &d6, &owner, &mut report)? {
                return Ok(None);
            }
            self.table6 = Some(t6);
        }
        self.table = Some(table);
        Ok(Some(report))
    }
}

/// Ours: our protocol's routes over the underlay.
fn owner(r: &Ready) -> Owner {
    Owner {
        device: None,
        protocol: TWILL_RTPROT,
        table: MAIN_TABLE,
        route_oifs: vec![r.underlay.index],
    }
}

impl HostGwBackend {
    /// The underlay's IPv4 prefixes and (with IPv6) its global IPv6
    /// prefixes: the L2 segment a peer must be on.
    fn connected(
        &mut self,
        r: &Ready,
    ) -> Result<(Vec<Ipv4Network>, Vec<Ipv6Network>), BackendError> {
        let v4 = self
            .nl
            .address()
            .list(Some(r.underlay.index))?
            .into_iter()
            .map(|a| a.addr)
            .collect();
        let v6 = match r.ipv6 {
            Some(_) => self
                .nl
                .address()
                .list6(Some(r.underlay.index))?
                .into_iter()
                .map(|a| a.addr)
                .filter(|n| !n.ip().is_unicast_link_local() && n.prefix() < 128)
                .collect(),
            None => Vec::new(),
        };
        Ok((v4, v6))
    }

    /// The IPv4 route of a peer, if it can have one.
    fn accept(
        &self,
        r: &Ready,
        connected: &[Ipv4Network],
        peer: &SubnetLease,
        claims: &mut Claims<u32>,
    ) -> Result<Option<PeerProgram<Ipv4Addr>>, SkipReason> {
        if !check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "host-gw")? {
            return Ok(None);
        }
        if !on_segment(connected, peer.attrs.public_ip) {
            return Err(SkipReason::NotOnSegment {
                public_ip: peer.attrs.public_ip,
                underlay: r.underlay.name.clone(),
                connected: connected.to_vec(),
            });
        }
        let public = peer.attrs.public_ip;
        claims.claim(peer.key, range(peer.key.ipv4), public, None)?;
        Ok(Some(PeerProgram::gateway(public, r.underlay.index)))
    }

    /// The IPv6 route of a peer's IPv6 half, if it can have one. A peer
    /// the IPv4 rules skip is left out silently (the IPv4 pass reports
    /// it), unless IPv4 is off.
    fn accept6(
        &self,
        r: &Ready,
        u: Ipv6Underlay,
        connected: &[Ipv6Network],
        peer: &SubnetLease,
        claims: &mut Claims<u128>,
    ) -> Result<Option<PeerProgram<Ipv6Addr>>, SkipReason> {
        match check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "host-gw") {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(reason) if !r.config.enable_ipv4 => return Err(reason),
            Err(_) => return Ok(None),
        }
        let Some((subnet, public)) = check_ipv6(peer, u.public_ip)? else {
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
        claims.claim(peer.key, range6(subnet), public, None)?;
        Ok(Some(PeerProgram::gateway(public, r.underlay.index)))
    }
}
