//! The VXLAN backend, laid out exactly as flannel v0.28 lays it out.
//!
//! Device `flannel.<VNI>` (learning off, `local` = our underlay address,
//! underlay device set, MTU = underlay MTU − 50 unless `MTU` is configured,
//! `accept_ra` 0 as flannel sets it),
//! our subnet's network address as a `/32` on it, and per peer:
//!
//! ```text
//! ip neigh replace <subnet>.0 lladdr <VtepMAC> dev flannel.N nud permanent
//! bridge fdb replace <VtepMAC> dev flannel.N dst <PublicIP> self permanent
//! ip route replace <subnet> via <subnet>.0 dev flannel.N onlink proto 241
//! ```
//!
//! With `DirectRouting`, a peer on our L2 segment gets
//! `ip route replace <subnet> via <PublicIP> dev <underlay>` instead.
//! `BackendData` is `{"VNI":N,"VtepMAC":"..."}` as flannel writes it; leases
//! with only `VtepMAC` (older flannel) are read too.
//!
//! With `EnableIPv6`, the IPv6 half of each dual-stack lease goes over a
//! second device as flannel lays it out: `flannel-v6.<VNI>` (`local` = our
//! IPv6 underlay address, its own MAC, MTU = underlay MTU − 70 unless `MTU`
//! is configured), our IPv6 subnet's first address as a `/128` on it, and
//! per peer with an IPv6 subnet:
//!
//! ```text
//! ip -6 neigh replace <v6 subnet>:: lladdr <v6 VtepMAC> dev flannel-v6.N nud permanent
//! bridge fdb replace <v6 VtepMAC> dev flannel-v6.N dst <PublicIPv6> self permanent
//! ip -6 route replace <v6 subnet> via <v6 subnet>:: dev flannel-v6.N onlink proto 241
//! ```
//!
//! `BackendV6Data` is `{"VNI":N,"VtepMAC":"..."}` with the IPv6 device's MAC.
//! Without `EnableIPv6` nothing of this exists and no IPv6 state is read.
//!
//! Beyond flannel: the VTEP MAC is stable across restarts (an existing
//! device's MAC is reused, else one is derived from VNI and public IP), a
//! deleted or downed device is repaired at the next reconcile, a device whose
//! VNI/port/local/underlay no longer match the config is re-created, and
//! stale routes of ours are garbage-collected.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;
use twill_model::{
    BackendConfig, LeaseAttrs, MacAddr, NetworkConfig, SkipReason, SubnetKey, SubnetLease,
};
use twill_netlink::{
    Address, Address6, Link, LinkChange, NetlinkError, NetlinkHandle, Nexthop, Request, VxlanSpec,
    LINUX_VXLAN_DEFAULT_PORT, MAIN_TABLE, TWILL_RTPROT,
};

use crate::incremental::{apply_delta, Claims, PeerProgram, PeerTable, Skipped};
use crate::peers::{
    check_common, check_ipv6, claim_of, claim_of6, claim_order, claim_order6, claim_rank,
    claim_rank6, on_segment, range, range6,
};
use crate::plan::{plan, route_conflicts, DataplaneState, DataplaneState6, Owner};
use crate::{
    Backend, BackendError, FailedOp, HostContext, Ipv6Underlay, LocalSetup, PeerChange,
    ReconcileReport, UnderlayInterface,
};

/// VXLAN encapsulation overhead flannel subtracts from the underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN encapsulation overhead over an IPv6 underlay (the kernel's
/// `VXLAN6_HEADROOM`: the IPv6 header is 20 bytes longer than IPv4's), the
/// MTU the kernel and flannel give `flannel-v6.<VNI>`.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The `Backend` object of a `vxlan` network, with flannel's field names.
/// Keys are matched as flanneld (Go) matches them, by
/// [`BackendConfig::parse_as`]: `"vNI"` is `VNI`, the last key naming a
/// field wins, `null` leaves the default (every field has one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct VxlanOptions {
    /// `VNI` (default 1).
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// `Port`: UDP port, 0 for the kernel default (8472).
    #[serde(rename = "Port")]
    pub port: u16,
    /// `GBP`: Group Based Policy.
    #[serde(rename = "GBP")]
    pub gbp: bool,
    /// `Learning`: source-MAC learning (flannel default: off).
    #[serde(rename = "Learning")]
    pub learning: bool,
    /// `DirectRouting`: plain routes to peers on our L2 segment.
    #[serde(rename = "DirectRouting")]
    pub direct_routing: bool,
    /// `MTU`: overrides underlay MTU − 50 (twill extension).
    #[serde(rename = "MTU")]
    pub mtu: Option<u32>,
    /// `Nexthops`: whether peers' routes go through nexthop objects (twill
    /// extension; flanneld ignores the key). Read by
    /// [`VxlanOptions::from_config`] only.
    #[serde(skip)]
    pub nexthops: NexthopMode,
}

/// How routes to peers are laid out (`"Nexthops"` in the `Backend` object).
///
/// flannel's route carries its gateway (`<subnet> via <subnet>.0 dev
/// flannel.N onlink`); the kernel's insert of such routes is quadratic in
/// their number on one device (docs/benchmarks.md §4). Through nexthop
/// objects (`ip nexthop replace id <id> via <subnet>.0 dev flannel.N onlink`,
/// `ip route replace <subnet> nhid <id>`) the forwarding is the same and a
/// cold start with 10,000 peers several times faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NexthopMode {
    /// Absent, `null` or `"auto"`: nexthop objects when the kernel has them
    /// (a nexthop dump at setup is answered), flannel's routes otherwise.
    #[default]
    Auto,
    /// `true`: nexthop objects, and setup fails where the kernel has none.
    On,
    /// `false`: flannel's routes exactly; objects of ours left from an
    /// earlier run are removed.
    Off,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        Self {
            vni: 1,
            port: 0,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
            nexthops: NexthopMode::Auto,
        }
    }
}

/// The `Backend` object as written, before its numbers are range-checked:
/// serde's own message for `-1` in a `u32` ("invalid value: integer `-1`,
/// expected u32") names neither the field nor what is allowed, so the
/// numbers are taken as JSON values and checked by [`int_option`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVxlanOptions {
    #[serde(rename = "VNI")]
    vni: Option<serde_json::Value>,
    #[serde(rename = "Port")]
    port: Option<serde_json::Value>,
    #[serde(rename = "GBP")]
    gbp: bool,
    #[serde(rename = "Learning")]
    learning: bool,
    #[serde(rename = "DirectRouting")]
    direct_routing: bool,
    #[serde(rename = "MTU")]
    mtu: Option<serde_json::Value>,
    #[serde(rename = "Nexthops")]
    nexthops: Option<serde_json::Value>,
}

/// Largest VNI: 24 bits.
const MAX_VNI: u32 = (1 << 24) - 1;
/// Smallest MTU of an IPv4 link (RFC 791).
const MIN_MTU: u32 = 68;

/// `value` of option `field` as an integer in `lo..=hi`, else an error
/// naming the field, the value as written and `allowed`.
fn int_option(
    field: &str,
    value: &serde_json::Value,
    lo: i64,
    hi: i64,
    allowed: &str,
) -> Result<i64, BackendError> {
    let reason = match value.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => return Ok(n),
        Some(_) => "is out of range",
        // u64 above i64::MAX is an integer too, just out of range.
        None if value.is_u64() => "is out of range",
        None => "is not an integer",
    };
    Err(BackendError::Config {
        backend: "vxlan",
        reason: format!("{field} {value} {reason}: it must be {allowed}"),
    })
}

impl VxlanOptions {
    /// Parses and validates the `Backend` object.
    ///
    /// # Errors
    /// [`BackendError::Config`] for a wrong type or a number out of range,
    /// naming the field, the value and the allowed range.
    pub fn from_config(config: &BackendConfig) -> Result<Self, BackendError> {
        let raw: RawVxlanOptions = config.parse_as().map_err(|e| BackendError::Config {
            backend: "vxlan",
            reason: e.to_string(),
        })?;
        let mut o = Self {
            gbp: raw.gbp,
            learning: raw.learning,
            direct_routing: raw.direct_routing,
            ..Self::default()
        };
        // Each `as` below is exact: the value was range-checked first.
        if let Some(v) = &raw.vni {
            // VNI 0 is valid for the kernel and flanneld on Linux takes it.
            let vni = int_option("VNI", v, 0, MAX_VNI.into(), "0 to 16777215 (24 bits)")?;
            o.vni = u32::try_from(vni).unwrap_or(o.vni);
        }
        if let Some(v) = &raw.port {
            let port = int_option(
                "Port",
                v,
                0,
                65535,
                "1 to 65535, or 0 for the kernel's 8472",
            )?;
            o.port = u16::try_from(port).unwrap_or(o.port);
        }
        if let Some(v) = &raw.mtu {
            let mtu = int_option(
                "MTU",
                v,
                MIN_MTU.into(),
                65535,
                "68 to the underlay's MTU - 50",
            )?;
            o.mtu = u32::try_from(mtu).ok();
        }
        if let Some(v) = &raw.nexthops {
            o.nexthops = match v {
                serde_json::Value::Bool(true) => NexthopMode::On,
                serde_json::Value::Bool(false) => NexthopMode::Off,
                serde_json::Value::String(s) if s.eq_ignore_ascii_case("auto") => NexthopMode::Auto,
                other => {
                    return Err(BackendError::Config {
                        backend: "vxlan",
                        reason: format!(
                            "Nexthops {other} is not a choice: it must be true, false or \"auto\""
                        ),
                    })
                }
            };
        }
        Ok(o)
    }

    /// The device name, `flannel.<VNI>`.
    #[must_use]
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// The IPv6 device's name, `flannel-v6.<VNI>` as flannel names it.
    #[must_use]
    pub fn device_name6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }
}

/// `BackendData` of a vxlan lease (keys matched as Go does, by
/// [`LeaseAttrs::backend_data_as`]: `"VTEPMAC"` is `VtepMAC`).
#[derive(Debug, Deserialize)]
struct VxlanLeaseData {
    #[serde(rename = "VNI", default)]
    vni: Option<u32>,
    /// Required: a lease without one cannot be programmed.
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

impl VxlanLeaseData {
    /// The peer's VTEP MAC, if usable: a unicast MAC that is not `ours`,
    /// for our `vni` (or none given). One rule for both families'
    /// `BackendData`.
    fn check(self, ours: MacAddr, vni: u32) -> Result<MacAddr, SkipReason> {
        let Ok(mac) = self.vtep_mac.parse::<MacAddr>() else {
            return Err(SkipReason::BadVtepMac(self.vtep_mac));
        };
        if !mac.is_unicast() {
            return Err(SkipReason::VtepMacNotUnicast(mac));
        }
        if mac == ours {
            return Err(SkipReason::VtepMacIsOurs(mac));
        }
        if let Some(other) = self.vni.filter(|v| *v != vni) {
            return Err(SkipReason::OtherVni {
                vni: other,
                ours: vni,
            });
        }
        Ok(mac)
    }
}

/// A locally administered unicast MAC derived from the VNI and public IP:
/// stable across restarts and distinct per host.
#[must_use]
pub fn derived_vtep_mac(vni: u32, public_ip: Ipv4Addr) -> MacAddr {
    let v = vni.to_be_bytes();
    let o = public_ip.octets();
    MacAddr([0x0e, v[1] ^ v[2] ^ v[3], o[0], o[1], o[2], o[3]])
}

/// [`derived_vtep_mac`] for the IPv6 device: from the VNI and the low 32
/// bits of the public IPv6 address, first octet `0x1e` (locally
/// administered, unicast) so it never equals the IPv4 device's.
#[must_use]
pub fn derived_vtep_mac6(vni: u32, public_ipv6: Ipv6Addr) -> MacAddr {
    let v = vni.to_be_bytes();
    let o = public_ipv6.octets();
    MacAddr([0x1e, v[1] ^ v[2] ^ v[3], o[12], o[13], o[14], o[15]])
}

/// The IPv6 half once set up (`EnableIPv6`).
#[derive(Debug, Clone)]
struct Ready6 {
    underlay: Ipv6Underlay,
    mac: MacAddr,
    mtu: u32,
}

#[derive(Debug, Clone)]
struct Ready {
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    underlay: UnderlayInterface,
    /// The `local` of `flannel.<VNI>`; `None` with `EnableIPv4` false, when
    /// there is no IPv4 device (an IPv6-only host, as flannel does it).
    local: Option<Ipv4Addr>,
    mac: MacAddr,
    mtu: u32,
    /// Peers' IPv4 routes go through nexthop objects (decided at setup).
    nexthops: bool,
}

/// flannel's `vxlan` backend over the kernel's VXLAN driver.
#[derive(Debug)]
pub struct VxlanBackend {
    opts: VxlanOptions,
    nl: NetlinkHandle,
    ready: Option<Ready>,
    ready6: Option<Ready6>,
    own: Option<SubnetKey>,
    /// The handle is in this thread's namespace, so its `/proc/sys` is ours
    /// to set (not known for a handle given to [`Self::with_handle`]).
    sysctls: bool,
    /// What the last pass programmed per peer on `flannel.<VNI>` (its
    /// index first), for [`Backend::apply_changes`]; `None` until a full
    /// pass, and after anything that invalidates it.
    table: Option<(u32, PeerTable<Ipv4Addr, u32>)>,
    /// The same on `flannel-v6.<VNI>`.
    table6: Option<(u32, PeerTable<Ipv6Addr, u128>)>,
}

impl VxlanBackend {
    /// Builds from the `Backend` object, opening a netlink socket in the
    /// current thread's network namespace.
    ///
    /// # Errors
    /// Bad config or no netlink socket.
    pub fn from_config(config: &BackendConfig) -> Result<Self, BackendError> {
        Ok(Self {
            sysctls: true,
            ..Self::with_handle(VxlanOptions::from_config(config)?, NetlinkHandle::new()?)
        })
    }

    /// Builds from parsed options and an existing netlink handle (whose
    /// namespace is the one programmed).
    #[must_use]
    pub fn with_handle(opts: VxlanOptions, nl: NetlinkHandle) -> Self {
        Self {
            opts,
            nl,
            ready: None,
            ready6: None,
            own: None,
            sysctls: false,
            table: None,
            table6: None,
        }
    }

    /// The underlay's IPv4 prefixes, when `DirectRouting` needs them.
    fn connected(&mut self, underlay: u32) -> Result<Vec<Ipv4Network>, BackendError> {
        if !self.opts.direct_routing {
            return Ok(Vec::new());
        }
        Ok(self
            .nl
            .address()
            .list(Some(underlay))?
            .into_iter()
            .map(|a| a.addr)
            .collect())
    }

    /// The IPv6 pass's verdict on a peer: the rules common to both passes
    /// first (a peer they skip is reported by the IPv4 pass, or here when
    /// there is none), then its IPv6 half.
    fn accept6(
        &self,
        r: &Ready,
        r6: &Ready6,
        dev: u32,
        peer: &SubnetLease,
        claims: &mut Claims<u128>,
    ) -> Result<Option<PeerProgram<Ipv6Addr>>, SkipReason> {
        match check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "vxlan") {
            Ok(true) => self.peer_entries6(r6, dev, peer, claims),
            Ok(false) => Ok(None),
            Err(reason) if r.local.is_none() => Err(reason),
            Err(_) => Ok(None),
        }
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &VxlanOptions {
        &self.opts
    }

    fn spec(&self, r: &Ready) -> VxlanSpec {
        VxlanSpec {
            name: self.opts.device_name(),
            vni: self.opts.vni,
            local: r.local,
            local6: None,
            port: (self.opts.port != 0).then_some(self.opts.port),
            learning: self.opts.learning,
            gbp: self.opts.gbp,
            mtu: Some(r.mtu),
            mac: Some(r.mac),
            underlay: Some(r.underlay.index),
        }
    }

    fn compatible(&self, r: &Ready, link: &Link) -> bool {
        self.compatible_with(link, r.local, None, r.underlay.index)
    }

    /// Whether `link` is the VXLAN device our options ask for with these
    /// local addresses on underlay `underlay`.
    fn compatible_with(
        &self,
        link: &Link,
        local: Option<Ipv4Addr>,
        local6: Option<Ipv6Addr>,
        underlay: u32,
    ) -> bool {
        let want_port = if self.opts.port == 0 {
            LINUX_VXLAN_DEFAULT_PORT
        } else {
            self.opts.port
        };
        link.kind.as_deref() == Some("vxlan")
            && link.vxlan.as_ref().is_some_and(|v| {
                v.vni == self.opts.vni
                    && v.local == local
                    && v.local6 == local6
                    && v.port == want_port
                    && v.underlay == Some(underlay)
                    && v.gbp == self.opts.gbp
                    && v.learning == self.opts.learning
            })
    }

    /// Makes sure the device exists, matches the config, is up, has our MAC
    /// and MTU (and our address once activated). Returns its index and
    /// whether anything had to be repaired. A MAC, MTU or up/down change the
    /// kernel refuses is pushed to `failed` and the others are still tried
    /// (the device exists, so peers can be programmed on it); anything else
    /// that fails is the error.
    fn ensure_device(
        &mut self,
        failed: &mut Vec<(Request, NetlinkError)>,
    ) -> Result<(u32, bool), BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        let found = self.nl.link().find(&self.opts.device_name())?;
        let compatible = found.as_ref().filter(|l| self.compatible(&r, l)).cloned();
        let spec = self.spec(&r);
        let (index, mut repaired) = self.ensure_link(found, compatible, &spec, failed)?;
        if let Some(own) = self.own {
            repaired |= self.ensure_address(index, own)?;
        }
        Ok((index, repaired))
    }

    /// Makes sure the device of `spec` exists as `compatible` (the link
    /// `found` under its name if its attributes match), is up and has the
    /// spec's MAC and MTU; the device-independent part of
    /// [`Self::ensure_device`] and [`Self::ensure_device6`].
    fn ensure_link(
        &mut self,
        found: Option<Link>,
        compatible: Option<Link>,
        spec: &VxlanSpec,
        failed: &mut Vec<(Request, NetlinkError)>,
    ) -> Result<(u32, bool), BackendError> {
        let name = &spec.name;
        let mut repaired = false;
        let link = match compatible {
            Some(l) => l,
            None => {
                if let Some(old) = found {
                    tracing::info!(device = %name, "re-creating VXLAN device whose attributes no longer match");
                    self.nl.link().delete(old.index)?;
                }
                repaired = true;
                let link = self.nl.link().add_vxlan(spec)?;
                if self.sysctls {
                    disable_accept_ra(name);
                }
                link
            }
        };
        let (want_mac, want_mtu) = (spec.mac, spec.mtu.unwrap_or(link.mtu));
        let change = LinkChange {
            index: link.index,
            ..LinkChange::default()
        };
        let mut repairs = Vec::new();
        if want_mac.is_some() && link.mac != want_mac {
            repairs.push(LinkChange {
                mac: want_mac,
                ..change
            });
        }
        if link.mtu != want_mtu {
            repairs.push(LinkChange {
                mtu: Some(want_mtu),
                ..change
            });
        }
        if !link.up {
            repairs.push(LinkChange {
                up: Some(true),
                ..change
            });
        }
        for repair in repairs {
            let request = Request::LinkSet(repair);
            let outcome = self.nl.execute(std::slice::from_ref(&request))?;
            if let Some(Err(e)) = outcome.results.into_iter().next() {
                failed.push((request, e));
            }
            repaired = true;
        }
        Ok((link.index, repaired))
    }

    fn spec6(&self, r: &Ready6, underlay: u32) -> VxlanSpec {
        VxlanSpec {
            name: self.opts.device_name6(),
            vni: self.opts.vni,
            local: None,
            local6: Some(r.underlay.addr),
            port: (self.opts.port != 0).then_some(self.opts.port),
            learning: self.opts.learning,
            gbp: self.opts.gbp,
            mtu: Some(r.mtu),
            mac: Some(r.mac),
            underlay: Some(underlay),
        }
    }

    /// [`Self::ensure_device`] for `flannel-v6.<VNI>`, with our IPv6
    /// subnet's first address as its only `/128` once activated.
    fn ensure_device6(
        &mut self,
        failed: &mut Vec<(Request, NetlinkError)>,
    ) -> Result<(u32, bool), BackendError> {
        let (r, r6) = match (self.ready.clone(), self.ready6.clone()) {
            (Some(r), Some(r6)) => (r, r6),
            _ => return Err(BackendError::NotReady("reconcile", "setup")),
        };
        let spec = self.spec6(&r6, r.underlay.index);
        let found = self.nl.link().find(&spec.name)?;
        let compatible = found
            .as_ref()
            .filter(|l| self.compatible_with(l, None, Some(r6.underlay.addr), r.underlay.index))
            .cloned();
        let (index, mut repaired) = self.ensure_link(found, compatible, &spec, failed)?;
        if let Some(own6) = self.own.and_then(|k| k.ipv6) {
            let want = Address6 {
                index,
                addr: Ipv6Network::new(own6.network(), 128).map_err(|e| {
                    BackendError::OwnLease {
                        key: self.own.unwrap_or(SubnetKey::v6_only(own6)),
                        reason: e.to_string(),
                    }
                })?,
            };
            repaired |= self.nl.address().set_only6(want)?;
        }
        Ok((index, repaired))
    }

    /// [`Self::ensure_device6`] where the first refusal is the error.
    fn ensure_device6_or_fail(&mut self) -> Result<(u32, bool), BackendError> {
        let mut failed = Vec::new();
        let device = self.ensure_device6(&mut failed)?;
        match failed.into_iter().next() {
            Some((_, e)) => Err(e.into()),
            None => Ok(device),
        }
    }

    /// [`Self::ensure_device`] where there is no report to put a refused
    /// repair in (setup, activate): the first refusal is the error.
    fn ensure_device_or_fail(&mut self) -> Result<(u32, bool), BackendError> {
        let mut failed = Vec::new();
        let device = self.ensure_device(&mut failed)?;
        match failed.into_iter().next() {
            Some((_, e)) => Err(e.into()),
            None => Ok(device),
        }
    }

    /// Whether peers' routes go through nexthop objects: as the options say,
    /// and for [`NexthopMode::Auto`] as the kernel says, by answering a
    /// nexthop dump (Linux 5.3 and later) or refusing it (`EOPNOTSUPP`).
    fn use_nexthops(&mut self) -> Result<bool, BackendError> {
        if self.opts.nexthops == NexthopMode::Off {
            return Ok(false);
        }
        match self.nl.nexthop().list() {
            Ok(_) => Ok(true),
            Err(e) => match e.errno() {
                Some(errno) if self.opts.nexthops == NexthopMode::On => {
                    Err(BackendError::NexthopsUnsupported { errno })
                }
                Some(errno) => {
                    tracing::info!(
                        errno,
                        "the kernel has no nexthop objects ({e}): peers' routes carry their gateway"
                    );
                    Ok(false)
                }
                None => Err(e.into()),
            },
        }
    }

    /// Deletes our devices of a previous config (a VNI change): left in
    /// place, `flannel.<old VNI>` keeps its routes to the peers, which are in
    /// the way of ours (reported as routes twill did not create) and keep
    /// traffic on the old VNI. The kernel removes routes, neighbours and FDB
    /// entries through a deleted device with it.
    fn remove_stale_devices(
        &mut self,
        local: Option<Ipv4Addr>,
        local6: Option<Ipv6Addr>,
    ) -> Result<(), BackendError> {
        let links = self.nl.link().list()?;
        for link in stale_devices(&links, self.opts.vni, local, local6) {
            tracing::info!(device = %link.name, vni = self.opts.vni, "deleting VXLAN device of a previous config (another VNI)");
            match self.nl.link().delete(link.index) {
                // Gone meanwhile (deleted by hand): what we wanted.
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// `<subnet network address>/32` on the device, and no other IPv4 address.
    fn ensure_address(&mut self, dev: u32, own: SubnetKey) -> Result<bool, BackendError> {
        let want = Address {
            index: dev,
            addr: Ipv4Network::new(own.network_addr(), 32).map_err(|e| BackendError::OwnLease {
                key: own,
                reason: e.to_string(),
            })?,
        };
        Ok(self.nl.address().set_only(want)?)
    }

    /// What each of `peers` gets on `dev`, and the peers skipped with why.
    fn desired(
        &mut self,
        r: &Ready,
        dev: u32,
        peers: &[&SubnetLease],
    ) -> Result<(PeerTable<Ipv4Addr, u32>, Skipped), BackendError> {
        let connected = self.connected(r.underlay.index)?;
        let sorted = claim_order(peers.iter().copied(), &r.config);
        let this = &*self;
        Ok(PeerTable::build(
            sorted,
            claim_of,
            |peer: &SubnetLease, claims: &mut Claims<u32>| {
                this.peer_entries(r, dev, peer, &connected, claims)
            },
        ))
    }

    fn peer_entries(
        &self,
        r: &Ready,
        dev: u32,
        peer: &SubnetLease,
        connected: &[Ipv4Network],
        claims: &mut Claims<u32>,
    ) -> Result<Option<PeerProgram<Ipv4Addr>>, SkipReason> {
        if !check_common(peer, self.own.as_ref(), r.public_ip, &r.config, "vxlan")? {
            return Ok(None);
        }
        let data: VxlanLeaseData =
            peer.attrs
                .backend_data_as()
                .map_err(|e| SkipReason::BadBackendData {
                    reason: e.to_string(),
                })?;
        let mac = data.check(r.mac, self.opts.vni)?;
        let public = peer.attrs.public_ip;
        let direct = self.opts.direct_routing && on_segment(connected, public);
        // The device's FDB holds one dst per unicast MAC: a second peer with
        // the same VtepMAC (a host that changed PublicIP and left its old
        // lease behind, cloned machines) cannot be reached, and its traffic
        // would go to the first one; the first in claim order keeps the MAC
        // (a direct-routing peer has no FDB entry, so claims none).
        claims.claim(
            peer.key,
            range(peer.key.ipv4),
            public,
            (!direct).then_some(mac),
        )?;
        if direct {
            return Ok(Some(PeerProgram::gateway(public, r.underlay.index)));
        }
        Ok(Some(PeerProgram::tunnel(public, dev, mac, r.nexthops)))
    }
}

impl VxlanBackend {
    /// What each of `peers` gets on the IPv6 device `dev` (their IPv6
    /// halves), and the peers whose IPv6 half is skipped with why. A peer
    /// the IPv4 pass skips ([`check_common`]) is left out here too,
    /// reported only when there is no IPv4 pass (IPv4 off) to report it.
    fn desired6(
        &self,
        r: &Ready,
        r6: &Ready6,
        dev: u32,
        peers: &[&SubnetLease],
    ) -> (PeerTable<Ipv6Addr, u128>, Skipped) {
        let sorted = claim_order6(peers.iter().copied(), &r.config);
        PeerTable::build(
            sorted,
            claim_of6,
            |peer: &SubnetLease, claims: &mut Claims<u128>| self.accept6(r, r6, dev, peer, claims),
        )
    }

    /// The IPv6 entries of one peer, `None` when it has no IPv6 subnet.
    fn peer_entries6(
        &self,
        r6: &Ready6,
        dev: u32,
        peer: &SubnetLease,
        claims: &mut Claims<u128>,
    ) -> Result<Option<PeerProgram<Ipv6Addr>>, SkipReason> {
        let Some((subnet, public)) = check_ipv6(peer, r6.underlay.public_ip)? else {
            return Ok(None);
        };
        let data: VxlanLeaseData =
            peer.attrs
                .backend_v6_data_as()
                .map_err(|e| SkipReason::BadBackendData {
                    reason: e.to_string(),
                })?;
        let mac = data.check(r6.mac, self.opts.vni)?;
        claims.claim(peer.key, range6(subnet), public, Some(mac))?;
        Ok(Some(PeerProgram::tunnel(public, dev, mac, false)))
    }
}

/// The devices among `links` that are ours by flannel's convention but not
/// the one of `vni`: kind `vxlan`, named `flannel.<N>` (N in canonical
/// decimal, as we name them) with N != `vni`, and whose `local` is our
/// underlay address. Anything else (a bridge named `flannel.7`, a VXLAN
/// device of another name or another local address) is not ours.
///
/// The same for `flannel-v6.<N>` devices whose `local` is `local6`, our
/// IPv6 underlay address (when we have one).
fn stale_devices(
    links: &[Link],
    vni: u32,
    local: Option<Ipv4Addr>,
    local6: Option<Ipv6Addr>,
) -> Vec<&Link> {
    let other_vni = |n: &str| {
        n.parse::<u32>()
            .is_ok_and(|n2| n2 != vni && n2.to_string() == n)
    };
    links
        .iter()
        .filter(|l| {
            let Some(v) = l
                .vxlan
                .as_ref()
                .filter(|_| l.kind.as_deref() == Some("vxlan"))
            else {
                return false;
            };
            if let Some(n) = l.name.strip_prefix("flannel-v6.") {
                return other_vni(n) && local6.is_some() && v.local6 == local6;
            }
            l.name
                .strip_prefix("flannel.")
                .is_some_and(|n| other_vni(n) && local.is_some() && v.local == local)
        })
        .collect()
}

/// As flannel does for its device: no IPv6 router advertisements accepted on
/// the overlay. Best effort (IPv6 may be disabled). Writes the sysctl of the
/// calling thread's network namespace: only for a backend whose handle was
/// opened there ([`VxlanBackend::from_config`], as twilld builds it).
fn disable_accept_ra(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/accept_ra");
    if let Err(e) = std::fs::write(&path, b"0") {
        tracing::debug!(%path, "cannot disable accept_ra: {e}");
    }
}

/// Dumps the kernel state relevant to `owner` (its device's neighbours and
/// FDB entries, the routes of its table, and with a device every nexthop
/// object, none where the kernel has no such objects), reports routes of others that are
/// in the way of `desired` as skipped, and applies [`plan()`]'s ops in one
/// netlink batch: the reconcile step every route/neighbour/FDB-based backend
/// shares, also for backends outside this crate. Adds to `report.planned`,
/// `report.applied` (ops the kernel acknowledged, and deletes whose target
/// was already gone: [`IpOp::is_done_despite`](crate::IpOp::is_done_despite)) and `report.failed` (every
/// other refusal, e.g. a route whose device or gateway is missing, with its
/// request and errno).
///
/// # Errors
/// Only when the kernel cannot be dumped or the batch cannot be sent.
pub fn converge(
    nl: &mut NetlinkHandle,
    desired: &DataplaneState,
    owner: &Owner,
    report: &mut ReconcileReport,
) -> Result<(), BackendError> {
    let observed = DataplaneState {
        neighbours: match owner.device {
            Some(d) => nl.neighbour().list(Some(d))?,
            None => Vec::new(),
        },
        fdb: match owner.device {
            Some(d) => nl.fdb().list(Some(d))?,
            None => Vec::new(),
        },
        routes: nl.route().list(Some(owner.table))?,
        nexthops: match owner.device {
            Some(_) => observed_nexthops(nl)?,
            None => Vec::new(),
        },
    };
    apply_plan(nl, desired, &observed, owner, report, |dst| {
        (SubnetKey::v4(dst), SkipReason::ForeignRoute(dst))
    })
}

/// Every nexthop object (read as IPv4), or none where the kernel refuses
/// the dump (no nexthop objects: before Linux 5.3).
fn observed_nexthops(nl: &mut NetlinkHandle) -> Result<Vec<Nexthop>, BackendError> {
    match nl.nexthop().list() {
        Ok(n) => Ok(n),
        Err(e) if e.errno().is_some() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// [`converge`] for the IPv6 half: dumps `owner`'s IPv6 neighbours, FDB
/// entries with an IPv6 remote and IPv6 routes, reports foreign IPv6 routes
/// in the way, applies [`plan()`]'s ops in one batch, and adds its counts to
/// `report` (so a dual-stack pass reports both halves together).
///
/// # Errors
/// Only when the kernel cannot be dumped or the batch cannot be sent.
pub fn converge6(
    nl: &mut NetlinkHandle,
    desired: &DataplaneState6,
    owner: &Owner,
    report: &mut ReconcileReport,
) -> Result<(), BackendError> {
    let observed = DataplaneState6 {
        neighbours: match owner.device {
            Some(d) => nl.neighbour().list6(Some(d))?,
            None => Vec::new(),
        },
        fdb: match owner.device {
            Some(d) => nl.fdb().list6(Some(d))?,
            None => Vec::new(),
        },
        routes: nl.route().list6(Some(owner.table))?,
        // IPv6 peers' routes carry their gateway: a /64 gives no 32-bit id
        // that follows from the lease alone, and the IPv6 insert is not
        // quadratic in this layout (docs/benchmarks.md § IPv6).
        nexthops: Vec::new(),
    };
    apply_plan(nl, desired, &observed, owner, report, |dst| {
        (
            SubnetKey::v6_only(dst),
            SkipReason::Malformed {
                reason: format!("a route to {dst} that twill did not create is in the way"),
            },
        )
    })
}

/// The family-independent part of [`converge`] and [`converge6`]: reports
/// the foreign routes in the way (as `foreign` names them), plans, applies
/// the ops in one batch and adds the counts to `report`.
fn apply_plan<A: twill_netlink::IpFamily>(
    nl: &mut NetlinkHandle,
    desired: &crate::IpDataplaneState<A>,
    observed: &crate::IpDataplaneState<A>,
    owner: &Owner,
    report: &mut ReconcileReport,
    foreign: impl Fn(A::Network) -> (SubnetKey, SkipReason),
) -> Result<(), BackendError> {
    report.skipped.extend(
        route_conflicts(desired, observed, owner)
            .into_iter()
            .map(|r| foreign(r.dst)),
    );
    let ops = plan(desired, observed, owner);
    report.planned += ops.len();
    if ops.is_empty() {
        return Ok(());
    }
    let requests: Vec<_> = ops.iter().map(crate::IpOp::to_request).collect();
    let outcome = nl.execute(&requests)?;
    // One result per request, in order. Counting every EEXIST/ENOENT/ENODEV
    // as applied reported a route add refused for a missing device as done.
    for ((op, request), r) in ops.iter().zip(requests).zip(outcome.results) {
        match r {
            Ok(()) => report.applied += 1,
            Err(e) if op.is_done_despite(&e) => report.applied += 1,
            Err(e) => report.failed.push(FailedOp::new(request, &e)),
        }
    }
    tracing::debug!(
        planned = report.planned,
        applied = report.applied,
        failed = report.failed.len(),
        "reconciled"
    );
    Ok(())
}

#[async_trait::async_trait]
impl Backend for VxlanBackend {
    fn backend_type(&self) -> &str {
        "vxlan"
    }

    async fn setup(&mut self, host: &HostContext<'_>) -> Result<LocalSetup, BackendError> {
        // Checked before the kernel is touched: the kernel refuses a VXLAN
        // MTU above the underlay's minus the encapsulation (EINVAL, after the
        // device was created DOWN).
        let max_mtu = host.underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
        if let Some(mtu) = self.opts.mtu.filter(|m| *m > max_mtu) {
            return Err(BackendError::MtuAboveUnderlay {
                mtu,
                max: max_mtu,
                underlay: host.underlay.name.clone(),
                underlay_mtu: host.underlay.mtu,
            });
        }
        let max_mtu6 = host.underlay.mtu.saturating_sub(VXLAN6_OVERHEAD);
        let local = host.ipv4_side("vxlan")?;
        let v6 = host.ipv6_side("vxlan")?;
        if v6.is_some() {
            if let Some(mtu) = self.opts.mtu.filter(|m| *m > max_mtu6) {
                return Err(BackendError::MtuAboveUnderlay {
                    mtu,
                    max: max_mtu6,
                    underlay: host.underlay.name.clone(),
                    underlay_mtu: host.underlay.mtu,
                });
            }
        }
        self.remove_stale_devices(local, v6.map(|u| u.addr))?;
        let name = self.opts.device_name();
        // Reuse the MAC of an existing device so peers' FDB/ARP stay valid.
        let existing = match local {
            Some(_) => self.nl.link().find(&name)?,
            None => None,
        };
        let mac = existing
            .as_ref()
            .and_then(|l| l.mac)
            .filter(|m| m.is_unicast())
            .unwrap_or_else(|| derived_vtep_mac(self.opts.vni, host.public_ip));
        let mtu = self
            .opts
            .mtu
            .unwrap_or_else(|| host.underlay.mtu.saturating_sub(VXLAN_OVERHEAD));
        (self.table, self.table6) = (None, None);
        let nexthops = match local {
            Some(_) => self.use_nexthops()?,
            None => false,
        };
        self.ready = Some(Ready {
            config: host.config.clone(),
            public_ip: host.public_ip,
            underlay: host.underlay.clone(),
            local,
            mac,
            mtu,
            nexthops,
        });
        let mut attrs = LeaseAttrs::new(host.public_ip, "vxlan");
        if local.is_some() {
            self.ensure_device_or_fail()?;
            attrs.backend_data = Some(
                serde_json::json!({ "VNI": self.opts.vni, "VtepMAC": mac.to_string() }).into(),
            );
        }
        self.ready6 = None;
        let mut mtu6 = None;
        if let Some(u) = v6 {
            let existing = self.nl.link().find(&self.opts.device_name6())?;
            let mac6 = existing
                .as_ref()
                .and_then(|l| l.mac)
                .filter(|m| m.is_unicast() && (local.is_none() || *m != mac))
                .unwrap_or_else(|| derived_vtep_mac6(self.opts.vni, u.public_ip));
            let ready6 = Ready6 {
                underlay: u,
                mac: mac6,
                mtu: self.opts.mtu.unwrap_or(max_mtu6),
            };
            mtu6 = Some(ready6.mtu);
            self.ready6 = Some(ready6);
            self.ensure_device6_or_fail()?;
            attrs.public_ipv6 = Some(u.public_ip);
            attrs.backend_v6_data = Some(
                serde_json::json!({ "VNI": self.opts.vni, "VtepMAC": mac6.to_string() }).into(),
            );
        }
        // FLANNEL_MTU is one MTU for the workloads' interfaces, whichever
        // family a packet is: the smaller device's, so that an IPv6 packet
        // of a dual-stack workload fits flannel-v6 (20 bytes more overhead)
        // instead of being dropped for its size. flannel writes the IPv4
        // device's.
        let mtu = match (local, mtu6) {
            (Some(_), Some(m6)) => mtu.min(m6),
            (None, Some(m6)) => m6,
            _ => mtu,
        };
        Ok(LocalSetup { attrs, mtu })
    }

    async fn activate(&mut self, own: &SubnetLease) -> Result<(), BackendError> {
        let r = self
            .ready
            .as_ref()
            .ok_or(BackendError::NotReady("activate", "setup"))?;
        BackendError::check_own_lease(&r.config, own)?;
        self.own = Some(own.key);
        // Whether a lease is a peer depends on our own.
        (self.table, self.table6) = (None, None);
        if r.local.is_some() {
            self.ensure_device_or_fail()?;
        }
        if self.ready6.is_some() {
            self.ensure_device6_or_fail()?;
        }
        Ok(())
    }

    async fn reconcile(&mut self, peers: &[&SubnetLease]) -> Result<ReconcileReport, BackendError> {
        let r = self
            .ready
            .clone()
            .ok_or(BackendError::NotReady("reconcile", "setup"))?;
        (self.table, self.table6) = (None, None);
        let mut report = ReconcileReport::default();
        if r.local.is_some() {
            let mut repairs_failed = Vec::new();
            let (dev, repaired) = self.ensure_device(&mut repairs_failed)?;
            report.failed.extend(
                repairs_failed
                    .into_iter()
                    .map(|(request, e)| FailedOp::new(request, &e)),
            );
            if repaired {
                tracing::info!(device = %self.opts.device_name(), "repaired VXLAN device");
            }
            let (mut table, skipped) = self.desired(&r, dev, peers)?;
            report.skipped = skipped;
            let before = report.skipped.len();
            converge(&mut self.nl, &table.desired(), &owner(dev, &r), &mut report)?;
            if report.skipped.len() > before {
                table.found_foreign_routes();
            }
            self.table = Some((dev, table));
        }
        if let Some(r6) = self.ready6.clone() {
            let mut repairs_failed = Vec::new();
            let (dev6, repaired) = self.ensure_device6(&mut repairs_failed)?;
            report.failed.extend(
                repairs_failed
                    .into_iter()
                    .map(|(request, e)| FailedOp::new(request, &e)),
            );
            if repaired {
                tracing::info!(device = %self.opts.device_name6(), "repaired IPv6 VXLAN device");
            }
            let (mut table6, skipped6) = self.desired6(&r, &r6, dev6, peers);
            report.skipped.extend(skipped6);
            let before = report.skipped.len();
            converge6(
                &mut self.nl,
                &table6.desired(),
                &owner(dev6, &r),
                &mut report,
            )?;
            if report.skipped.len() > before {
                table6.found_foreign_routes();
            }
            self.table6 = Some((dev6, table6));
        }
        Ok(report)
    }

    async fn apply_changes(
        &mut self,
        changes: &[PeerChange<'_>],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        // Taken out: a change this cannot decide leaves both to be rebuilt
        // by the full pass the caller then runs.
        let (table, table6) = (self.table.take(), self.table6.take());
        let Some(underlay) = self.ready.as_ref().map(|r| r.underlay.index) else {
            return Ok(None);
        };
        let connected = self.connected(underlay)?;
        let this = &*self;
        let Some(r) = this.ready.as_ref() else {
            return Ok(None);
        };
        let delta = match (r.local, table) {
            (None, _) => None,
            (Some(_), None) => return Ok(None),
            (Some(_), Some((dev, t))) => {
                let accept = |peer: &SubnetLease, claims: &mut Claims<u32>| {
                    this.peer_entries(r, dev, peer, &connected, claims)
                };
                match t.update(changes, claim_rank(&r.config), accept) {
                    Some((t, d)) => Some((dev, t, d)),
                    None => return Ok(None),
                }
            }
        };
        let delta6 = match (this.ready6.as_ref(), table6) {
            (None, _) => None,
            (Some(_), None) => return Ok(None),
            (Some(r6), Some((dev, t))) => {
                let accept = |peer: &SubnetLease, claims: &mut Claims<u128>| {
                    this.accept6(r, r6, dev, peer, claims)
                };
                match t.update(changes, claim_rank6(&r.config), accept) {
                    Some((t, d)) => Some((dev, t, d)),
                    None => return Ok(None),
                }
            }
        };
        let owners = (
            delta.as_ref().map(|(dev, ..)| owner(*dev, r)),
            delta6.as_ref().map(|(dev, ..)| owner(*dev, r)),
        );
        let mut report = ReconcileReport::default();
        if let (Some((dev, t, d)), Some(o)) = (delta, owners.0) {
            if !apply_delta(&mut self.nl, &d, &o, &mut report)? {
                return Ok(None);
            }
            self.table = Some((dev, t));
        }
        if let (Some((dev, t, d)), Some(o)) = (delta6, owners.1) {
            if !apply_delta(&mut self.nl, &d, &o, &mut report)? {
                self.table = None;
                return Ok(None);
            }
            self.table6 = Some((dev, t));
        }
        Ok(Some(report))
    }
}

/// What is ours on a VXLAN device `dev`: its neighbours and FDB entries,
/// our protocol's routes over it or (direct routing) the underlay.
fn owner(dev: u32, r: &Ready) -> Owner {
    Owner {
        device: Some(dev),
        protocol: TWILL_RTPROT,
        table: MAIN_TABLE,
        route_oifs: vec![dev, r.underlay.index],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_netlink::VxlanInfo;

    fn options(backend: &str) -> VxlanOptions {
        let cfg = NetworkConfig::parse(&format!(
            r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#
        ))
        .unwrap();
        VxlanOptions::from_config(&cfg.backend).unwrap_or_else(|e| panic!("{backend}: {e}"))
    }

    /// Issue 12: flanneld (Go's encoding/json) matches option names
    /// case-insensitively, the last matching key wins and `null` leaves the
    /// default; `"VNi":5` used to leave the VNI at 1.
    #[test]
    fn options_match_keys_as_go_does() {
        for (backend, vni, port) in [
            (r#"{"Type":"vxlan","VNI":5}"#, 5, 0),
            (r#"{"Type":"vxlan","VNi":5}"#, 5, 0),
            (r#"{"Type":"vxlan","vNI":5}"#, 5, 0),
            (r#"{"Type":"vxlan","vni":5}"#, 5, 0),
            (r#"{"Type":"vxlan","PORT":8472}"#, 1, 8472),
            (r#"{"Type":"vxlan","pOrt":8472}"#, 1, 8472),
            (r#"{"Type":"vxlan","Port":8472}"#, 1, 8472),
            (r#"{"Type":"vxlan","VNI":7,"vni":8}"#, 8, 0),
            (r#"{"Type":"vxlan","vni":8,"VNI":7}"#, 7, 0),
            (
                r#"{"Type":"vxlan","Vni":6,"vNi":9,"port":1,"PORT":2}"#,
                9,
                2,
            ),
            (r#"{"Type":"vxlan","VNI":null,"Port":null}"#, 1, 0),
            (r#"{"Type":"vxlan","VNI":4,"vni":null}"#, 4, 0),
        ] {
            let o = options(backend);
            assert_eq!((o.vni, o.port), (vni, port), "{backend}");
        }
        let o = options(
            r#"{"Type":"vxlan","MTu":1400,"LEARNING":true,"GbP":true,"directROUTING":true}"#,
        );
        assert_eq!(
            o,
            VxlanOptions {
                mtu: Some(1400),
                learning: true,
                gbp: true,
                direct_routing: true,
                ..VxlanOptions::default()
            }
        );
        let o = options(
            r#"{"Type":"vxlan","MTU":1400,"mtu":null,"Learning":null,"GBP":null,"DirectRouting":null}"#,
        );
        assert_eq!(o.mtu, Some(1400));
        assert_eq!(
            options(r#"{"Type":"vxlan","MTU":null}"#),
            VxlanOptions::default()
        );
        // A bad value under any spelling is still refused, naming it.
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","vNi":16777216}}"#,
        )
        .unwrap();
        let err = VxlanOptions::from_config(&cfg.backend)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VNI 16777216 is out of range: it must be 0 to 16777215"),
            "{err}"
        );
    }

    /// Issue 13: out-of-range options said "invalid value: integer `-1`,
    /// expected u32" or "MTU Some(0) outside 68..=65535"; each names the
    /// field, the value as written and what is allowed.
    #[test]
    fn out_of_range_options_name_field_value_and_range() {
        for (backend, want) in [
            (
                r#""VNI":-1"#,
                "VNI -1 is out of range: it must be 0 to 16777215",
            ),
            (
                r#""vni":16777216"#,
                "VNI 16777216 is out of range: it must be 0 to 16777215",
            ),
            (
                r#""VNI":18446744073709551615"#,
                "VNI 18446744073709551615 is out of range",
            ),
            (
                r#""VNI":1.5"#,
                "VNI 1.5 is not an integer: it must be 0 to 16777215",
            ),
            (r#""VNI":"x""#, r#"VNI "x" is not an integer"#),
            (
                r#""Port":65536"#,
                "Port 65536 is out of range: it must be 1 to 65535",
            ),
            (
                r#""Port":-1"#,
                "Port -1 is out of range: it must be 1 to 65535",
            ),
            (
                r#""MTU":0"#,
                "MTU 0 is out of range: it must be 68 to the underlay's MTU - 50",
            ),
            (r#""MTU":67"#, "MTU 67 is out of range: it must be 68"),
            (r#""MTU":65536"#, "MTU 65536 is out of range: it must be 68"),
            (r#""MTU":true"#, "MTU true is not an integer"),
        ] {
            let cfg = NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"vxlan",{backend}}}}}"#
            ))
            .unwrap();
            let err = VxlanOptions::from_config(&cfg.backend)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{backend}: {err}");
        }
        // The bounds themselves are accepted.
        for (backend, vni, port, mtu) in [
            (r#""VNI":0,"Port":1,"MTU":68"#, 0, 1, 68),
            (
                r#""VNI":16777215,"Port":65535,"MTU":65535"#,
                MAX_VNI,
                65535,
                65535,
            ),
        ] {
            let o = options(&format!(r#"{{"Type":"vxlan",{backend}}}"#));
            assert_eq!((o.vni, o.port, o.mtu), (vni, port, Some(mtu)), "{backend}");
        }
    }

    /// Issue 16: `Nexthops` (twill's key; flanneld ignores it) is true,
    /// false or "auto", matched as Go matches keys; anything else names
    /// the field and the choices.
    #[test]
    fn nexthops_option_is_true_false_or_auto() {
        for (backend, want) in [
            (r#"{"Type":"vxlan"}"#, NexthopMode::Auto),
            (r#"{"Type":"vxlan","Nexthops":null}"#, NexthopMode::Auto),
            (r#"{"Type":"vxlan","Nexthops":"auto"}"#, NexthopMode::Auto),
            (r#"{"Type":"vxlan","nexthops":"AUTO"}"#, NexthopMode::Auto),
            (r#"{"Type":"vxlan","Nexthops":true}"#, NexthopMode::On),
            (r#"{"Type":"vxlan","NEXTHOPS":false}"#, NexthopMode::Off),
        ] {
            assert_eq!(options(backend).nexthops, want, "{backend}");
        }
        for bad in [r#"1"#, r#""yes""#, r#"[]"#] {
            let cfg = NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"vxlan","Nexthops":{bad}}}}}"#
            ))
            .unwrap();
            let err = VxlanOptions::from_config(&cfg.backend)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    r#"Nexthops {bad} is not a choice: it must be true, false or "auto""#
                )),
                "{err}"
            );
        }
    }

    /// Issue 13: only our devices of another VNI are stale: kind vxlan,
    /// named `flannel.<N>`, with our underlay address as `local`.
    #[test]
    fn only_our_vxlan_devices_of_another_vni_are_stale() {
        let local: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let link = |name: &str, kind: Option<&str>, vni: u32, l: &str| Link {
            index: 1,
            name: name.into(),
            kind: kind.map(str::to_string),
            mtu: 1450,
            mac: None,
            up: true,
            master: None,
            vxlan: (kind == Some("vxlan")).then(|| VxlanInfo {
                vni,
                local: l.parse().ok(),
                local6: None,
                port: 8472,
                learning: false,
                gbp: false,
                underlay: Some(2),
            }),
        };
        let links = [
            link("flannel.100", Some("vxlan"), 100, "10.0.0.2"),
            link("flannel.200", Some("vxlan"), 200, "10.0.0.2"),
            link("flannel.7", Some("bridge"), 0, ""),
            link("flannel.8", Some("vxlan"), 8, "10.0.0.9"),
            link("flannel.9", Some("vxlan"), 9, ""),
            link("flannel.x", Some("vxlan"), 1, "10.0.0.2"),
            link("flannel.010", Some("vxlan"), 10, "10.0.0.2"),
            link("flannel.+11", Some("vxlan"), 11, "10.0.0.2"),
            link("vx100", Some("vxlan"), 100, "10.0.0.2"),
            link("flannel.1", None, 0, ""),
        ];
        let stale: Vec<&str> = stale_devices(&links, 200, Some(local), None)
            .into_iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(stale, ["flannel.100"]);
    }

    /// Issue 15: `flannel-v6.<N>` devices of another VNI on our IPv6
    /// underlay address are stale too; without an IPv6 underlay none is.
    #[test]
    fn ipv6_devices_of_another_vni_are_stale_only_with_our_local6() {
        let local6: Ipv6Addr = "fd00::2".parse().unwrap();
        let link = |name: &str, l6: &str| Link {
            index: 1,
            name: name.into(),
            kind: Some("vxlan".into()),
            mtu: 1430,
            mac: None,
            up: true,
            master: None,
            vxlan: Some(VxlanInfo {
                vni: 0,
                local: None,
                local6: l6.parse().ok(),
                port: 8472,
                learning: false,
                gbp: false,
                underlay: Some(2),
            }),
        };
        let links = [
            link("flannel-v6.100", "fd00::2"),
            link("flannel-v6.200", "fd00::2"),
            link("flannel-v6.101", "fd00::9"),
            link("flannel-v6.102", ""),
            link("flannel-v6.0100", "fd00::2"),
        ];
        let stale: Vec<&str> = stale_devices(&links, 200, "10.0.0.2".parse().ok(), Some(local6))
            .into_iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(stale, ["flannel-v6.100"]);
        assert!(stale_devices(&links, 200, "10.0.0.2".parse().ok(), None).is_empty());
    }

    #[test]
    fn ipv6_vtep_mac_is_stable_unicast_and_not_the_ipv4_one() {
        let v6: Ipv6Addr = "fd00::a:3".parse().unwrap();
        let m = derived_vtep_mac6(1, v6);
        assert!(m.is_unicast());
        assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(m, derived_vtep_mac6(1, v6));
        assert_ne!(m, derived_vtep_mac6(2, v6));
        assert_ne!(m, derived_vtep_mac(1, "0.10.0.3".parse().unwrap()));
    }

    /// Issue 12: a lease whose `BackendData` says `VTEPMAC` (Go reads it)
    /// used to be rejected.
    #[test]
    fn lease_data_matches_keys_as_go_does() {
        for (data, vni) in [
            (r#"{"VtepMAC":"6e:af:8f:41:72:26"}"#, None),
            (r#"{"VTEPMAC":"6e:af:8f:41:72:26","vni":3}"#, Some(3)),
            (r#"{"vtepmac":"6e:af:8f:41:72:26","VNI":null}"#, None),
            (
                r#"{"VtepMac":"00:00:00:00:00:01","vtepMAC":"6e:af:8f:41:72:26","Vni":1,"VNI":2}"#,
                Some(2),
            ),
        ] {
            let attrs = LeaseAttrs::from_json(&format!(
                r#"{{"publicip":"10.0.0.3","BACKENDTYPE":"vxlan","backendData":{data}}}"#
            ))
            .unwrap_or_else(|e| panic!("{data}: {e}"));
            let d: VxlanLeaseData = attrs
                .backend_data_as()
                .unwrap_or_else(|e| panic!("{data}: {e}"));
            assert_eq!(d.vtep_mac, "6e:af:8f:41:72:26", "{data}");
            assert_eq!(d.vni, vni, "{data}");
        }
    }
}
