//! Each host's kernel state, read through netlink inside its namespace,
//! and what the leases say it must be.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use twill_netlink::{
    Address6, FdbEntry, FdbEntry6, Link, MacAddr, Neighbour, Neighbour6, Route, Route6, MAIN_TABLE,
    TWILL_RTPROT,
};

use super::{json_string_field, ClusterError, StoredLease, TwillCluster};

/// The overlay state of one host's kernel, reduced to what the leases
/// determine: permanent FDB and neighbour entries on the VXLAN device and
/// main-table routes carrying twill's protocol number; the same for IPv6
/// on `flannel-v6.<VNI>` and in the IPv6 main table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// `(VTEP MAC, underlay dst)` of each permanent FDB entry.
    pub fdb: BTreeSet<(MacAddr, Option<Ipv4Addr>)>,
    /// `(IP, MAC)` of each permanent neighbour entry.
    pub neigh: BTreeSet<(Ipv4Addr, Option<MacAddr>)>,
    /// `(dst, gateway, onlink)` of each route with protocol
    /// [`TWILL_RTPROT`] in the main table.
    pub routes: BTreeSet<(Ipv4Network, Option<Ipv4Addr>, bool)>,
    /// `(VTEP MAC, IPv6 underlay dst)` of each permanent FDB entry on the
    /// IPv6 VXLAN device.
    pub fdb6: BTreeSet<(MacAddr, Option<Ipv6Addr>)>,
    /// `(IPv6, MAC)` of each permanent NDP entry on the IPv6 VXLAN device.
    pub neigh6: BTreeSet<(Ipv6Addr, Option<MacAddr>)>,
    /// `(dst, gateway, onlink)` of each IPv6 route with protocol
    /// [`TWILL_RTPROT`] in the main table.
    pub routes6: BTreeSet<(Ipv6Network, Option<Ipv6Addr>, bool)>,
}

impl KernelState {
    /// What a host must hold for `peers` (every lease but its own) with
    /// `backend` `vxlan` (FDB `MAC → PublicIP`, neighbour `subnet.0 → MAC`,
    /// route `subnet via subnet.0 onlink`) or `host-gw` (route `subnet via
    /// PublicIP`). A vxlan lease without a valid `VtepMAC` is left out, as
    /// the backend skips it. The IPv6 half of a lease (its key's IPv6
    /// subnet, `PublicIPv6` and, for vxlan, `BackendV6Data.VtepMAC`) gives
    /// the same entries on `flannel-v6.<VNI>` (FDB `MAC → PublicIPv6`, NDP
    /// `subnet:: → MAC`, route `subnet via subnet:: onlink`) or the host-gw
    /// route `subnet via PublicIPv6`; an IPv6-only lease has no IPv4 half.
    #[must_use]
    pub fn expected<'a>(backend: &str, peers: impl IntoIterator<Item = &'a StoredLease>) -> Self {
        let mut k = KernelState::default();
        for l in peers {
            k.expect_v6_half(backend, l);
            if l.is_v6_only() {
                continue;
            }
            let Some(public) = l.public_ip else {
                continue;
            };
            let gw = l.subnet.network();
            if backend == "host-gw" {
                k.routes.insert((l.subnet, Some(public), false));
                continue;
            }
            let Some(mac) = l
                .vtep_mac
                .as_deref()
                .and_then(|m| m.parse::<MacAddr>().ok())
            else {
                continue;
            };
            k.fdb.insert((mac, Some(public)));
            k.neigh.insert((gw, Some(mac)));
            k.routes.insert((l.subnet, Some(gw), true));
        }
        k
    }

    fn expect_v6_half(&mut self, backend: &str, l: &StoredLease) {
        let (Some(subnet), Some(public)) = (l.subnet6, l.public_ipv6) else {
            return;
        };
        if backend == "host-gw" {
            self.routes6.insert((subnet, Some(public), false));
            return;
        }
        let Some(mac) = l
            .vtep_mac6
            .as_deref()
            .and_then(|m| m.parse::<MacAddr>().ok())
        else {
            return;
        };
        let gw = subnet.network();
        self.fdb6.insert((mac, Some(public)));
        self.neigh6.insert((gw, Some(mac)));
        self.routes6.insert((subnet, Some(gw), true));
    }
}
impl TwillCluster {
    /// Host `i`'s VXLAN device, if it exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan_link(&self, i: usize) -> Result<Option<Link>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        Ok(nl.link().find(&self.vxlan_device)?)
    }

    /// Host `i`'s VTEP MAC (the VXLAN device's address), if the device exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vtep_mac(&self, i: usize) -> Result<Option<MacAddr>, ClusterError> {
        Ok(self.vxlan_link(i)?.and_then(|l| l.mac))
    }

    /// The IPv4 addresses on host `i`'s VXLAN device.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan_addrs(&self, i: usize) -> Result<Vec<Ipv4Network>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        Ok(nl
            .address()
            .list(Some(link.index))?
            .into_iter()
            .map(|a| a.addr)
            .collect())
    }

    /// The FDB entries on host `i`'s VXLAN device (`bridge fdb show dev flannel.N`),
    /// sorted; empty when the device does not exist.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn fdb(&self, i: usize) -> Result<Vec<FdbEntry>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.fdb().list(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The neighbour (ARP) entries on host `i`'s VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn neigh(&self, i: usize) -> Result<Vec<Neighbour>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.neighbour().list(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The main-table routes through host `i`'s VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn routes(&self, i: usize) -> Result<Vec<Route>, ClusterError> {
        let Some(link) = self.vxlan_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v: Vec<Route> = nl
            .route()
            .list(Some(MAIN_TABLE))?
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Host `i`'s IPv6 VXLAN device (`flannel-v6.<VNI>`), if it exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan6_link(&self, i: usize) -> Result<Option<Link>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        Ok(nl.link().find(&self.vxlan6_device)?)
    }

    /// Host `i`'s IPv6 VTEP MAC (`flannel-v6.<VNI>`'s address), if the device exists.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vtep_mac6(&self, i: usize) -> Result<Option<MacAddr>, ClusterError> {
        Ok(self.vxlan6_link(i)?.and_then(|l| l.mac))
    }

    /// The IPv6 addresses on host `i`'s IPv6 VXLAN device, link-local ones
    /// included.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn vxlan6_addrs(&self, i: usize) -> Result<Vec<Address6>, ClusterError> {
        let Some(link) = self.vxlan6_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        Ok(nl.address().list6(Some(link.index))?)
    }

    /// The FDB entries with an IPv6 remote on host `i`'s IPv6 VXLAN device
    /// (`bridge fdb show dev flannel-v6.N`), sorted; empty without the device.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn fdb6(&self, i: usize) -> Result<Vec<FdbEntry6>, ClusterError> {
        let Some(link) = self.vxlan6_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.fdb().list6(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The NDP entries on host `i`'s IPv6 VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn neigh6(&self, i: usize) -> Result<Vec<Neighbour6>, ClusterError> {
        let Some(link) = self.vxlan6_link(i)? else {
            return Ok(Vec::new());
        };
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.neighbour().list6(Some(link.index))?;
        v.sort();
        Ok(v)
    }

    /// The IPv6 main-table routes through host `i`'s IPv6 VXLAN device, sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn routes6(&self, i: usize) -> Result<Vec<Route6>, ClusterError> {
        let Some(link) = self.vxlan6_link(i)? else {
            return Ok(Vec::new());
        };
        let mut v = self.all_routes6(i)?;
        v.retain(|r| r.oif == Some(link.index));
        Ok(v)
    }

    /// All IPv6 main-table routes of host `i` (any device), sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn all_routes6(&self, i: usize) -> Result<Vec<Route6>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.route().list6(Some(MAIN_TABLE))?;
        v.sort();
        Ok(v)
    }

    /// All main-table routes of host `i` (any device), sorted.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn all_routes(&self, i: usize) -> Result<Vec<Route>, ClusterError> {
        self.check(i)?;
        let mut nl = self.ns(i).netlink()?;
        let mut v = nl.route().list(Some(MAIN_TABLE))?;
        v.sort();
        Ok(v)
    }

    /// The backend type of the config (`Backend.Type`; `vxlan` without one).
    #[must_use]
    pub fn backend_type(&self) -> String {
        self.settings
            .config
            .as_deref()
            .and_then(|c| json_string_field(c, "Type"))
            .unwrap_or_else(|| "vxlan".into())
    }

    /// Host `i`'s overlay state (see [`KernelState`]).
    ///
    /// # Errors
    /// Netlink failures.
    pub fn kernel_state(&self, i: usize) -> Result<KernelState, ClusterError> {
        let fdb = self.fdb(i)?;
        let neigh = self.neigh(i)?;
        let routes = self.all_routes(i)?;
        let fdb6 = self.fdb6(i)?;
        let neigh6 = self.neigh6(i)?;
        let routes6 = self.all_routes6(i)?;
        Ok(KernelState {
            fdb6: fdb6
                .iter()
                .filter(|e| e.permanent)
                .map(|e| (e.mac, e.dst))
                .collect(),
            neigh6: neigh6
                .iter()
                .filter(|n| n.permanent)
                .map(|n| (n.ip, n.mac))
                .collect(),
            routes6: routes6
                .iter()
                .filter(|r| r.protocol == TWILL_RTPROT)
                .map(|r| (r.dst, r.gateway, r.onlink))
                .collect(),
            fdb: fdb
                .iter()
                .filter(|e| e.permanent)
                .map(|e| (e.mac, e.dst))
                .collect(),
            neigh: neigh
                .iter()
                .filter(|n| n.permanent)
                .map(|n| (n.ip, n.mac))
                .collect(),
            routes: routes
                .iter()
                .filter(|r| r.protocol == TWILL_RTPROT)
                .map(|r| (r.dst, r.gateway, r.onlink))
                .collect(),
        })
    }

    /// What host `i` must hold given `leases` (all of them: the host's own
    /// lease, the one whose `PublicIP` is its address, is left out).
    #[must_use]
    pub fn expected_state(&self, i: usize, leases: &[StoredLease]) -> KernelState {
        KernelState::expected(
            &self.backend_type(),
            leases.iter().filter(|l| !self.is_lease_of(i, l)),
        )
    }

    /// The hosts (among `hosts`) whose kernel does not match the leases in
    /// etcd now, with what they hold and what they should; empty when every
    /// one matches and each has a lease of its own.
    ///
    /// # Errors
    /// etcdctl or netlink failures.
    pub fn mismatches(&self, hosts: &[usize]) -> Result<Vec<String>, ClusterError> {
        let leases = self.leases()?;
        let mut out = Vec::new();
        for &i in hosts {
            self.check(i)?;
            if !leases.iter().any(|l| self.is_lease_of(i, l)) {
                out.push(format!(
                    "{} ({}) has no lease",
                    self.names[i],
                    self.ip_label(i)
                ));
                continue;
            }
            let want = self.expected_state(i, &leases);
            let have = self.kernel_state(i)?;
            if want != have {
                out.push(format!(
                    "{} ({}): kernel {have:?}, leases want {want:?}",
                    self.names[i],
                    self.ip_label(i)
                ));
            }
        }
        Ok(out)
    }
}
