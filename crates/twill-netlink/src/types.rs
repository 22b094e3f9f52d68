//! Typed values: what we ask the kernel for and what its dumps give back.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub use twill_model::MacAddr;

/// `RT_TABLE_MAIN`, the table `ip route` uses by default.
pub const MAIN_TABLE: u32 = linux_raw_sys::netlink::rt_class_t::RT_TABLE_MAIN as u32;

/// Route protocol number (`rtm_protocol`) that marks routes twill created.
///
/// 241 (0xf1) is not assigned in iproute2's `/etc/iproute2/rt_protos`
/// (0–18, 42, 99, 186–192 are); `ip route` shows it as `proto 241`.
/// Reconcile only ever deletes routes carrying this protocol.
pub const TWILL_RTPROT: u8 = 241;

/// Default VXLAN UDP port the kernel uses when none is given (8472, Linux's
/// historical default, which flannel relies on with `Port: 0`).
pub const LINUX_VXLAN_DEFAULT_PORT: u16 = 8472;

/// Kind-specific attributes of a VXLAN link, as configured or as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Local (source) underlay address.
    pub local: Option<Ipv4Addr>,
    /// Local (source) IPv6 underlay address (`IFLA_VXLAN_LOCAL6`): the
    /// device encapsulates in IPv6 (flannel's `flannel-v6.<VNI>`).
    pub local6: Option<Ipv6Addr>,
    /// UDP destination port (host order here; big-endian on the wire).
    pub port: u16,
    /// Whether source-MAC learning is on.
    pub learning: bool,
    /// Group Based Policy extension.
    pub gbp: bool,
    /// Underlay device index (`dev` in `ip link add ... type vxlan`).
    pub underlay: Option<u32>,
}

/// A request to create a VXLAN device: `ip link add NAME type vxlan id VNI ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name (at most 15 bytes).
    pub name: String,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Local (source) underlay address.
    pub local: Option<Ipv4Addr>,
    /// Local (source) IPv6 underlay address; set this instead of `local`
    /// for a device that encapsulates in IPv6 (the kernel takes one family).
    pub local6: Option<Ipv6Addr>,
    /// UDP destination port; `None` lets the kernel pick its default (8472).
    pub port: Option<u16>,
    /// Source-MAC learning (flannel: off).
    pub learning: bool,
    /// Group Based Policy extension.
    pub gbp: bool,
    /// MTU; `None` for the kernel default.
    pub mtu: Option<u32>,
    /// MAC address; `None` for a random one.
    pub mac: Option<MacAddr>,
    /// Underlay device index.
    pub underlay: Option<u32>,
}

impl VxlanSpec {
    /// A spec with flannel's defaults: learning off, no GBP, kernel-chosen port, MTU and MAC.
    #[must_use]
    pub fn new(name: impl Into<String>, vni: u32) -> Self {
        Self {
            name: name.into(),
            vni,
            local: None,
            local6: None,
            port: None,
            learning: false,
            gbp: false,
            mtu: None,
            mac: None,
            underlay: None,
        }
    }
}

/// A network interface as the kernel reports it (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`vxlan`, `bridge`, `veth`...); `None` for plain devices (lo, physical).
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, when the device has a 6-byte one.
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Bridge (or other master) index.
    pub master: Option<u32>,
    /// VXLAN attributes when `kind == "vxlan"`.
    pub vxlan: Option<VxlanInfo>,
}

/// A kind of link to create besides VXLAN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkKind {
    /// `ip link add NAME type bridge`.
    Bridge,
    /// `ip link add NAME type veth peer name PEER`.
    Veth {
        /// Name of the other end.
        peer: String,
    },
    /// `ip link add NAME type dummy`.
    Dummy,
    /// A VXLAN device.
    Vxlan(VxlanSpec),
}

/// A change to an existing link: `ip link set dev INDEX ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// Interface index.
    pub index: u32,
    /// Set up (`Some(true)`) or down (`Some(false)`).
    pub up: Option<bool>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// New MAC address.
    pub mac: Option<MacAddr>,
    /// Enslave to this master (bridge) index; `Some(0)` to release.
    pub master: Option<u32>,
}

/// An IPv4 address on a device: `ip addr add ADDR/LEN dev INDEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// Address and prefix length (host bits kept: `10.0.0.2/24`).
    pub addr: Ipv4Network,
}

/// An IP address family, named by its address type: [`Ipv4Addr`] or
/// [`Ipv6Addr`].
///
/// The neighbour, FDB and route types are written once over it
/// ([`IpNeighbour`], [`IpFdbEntry`], [`IpRoute`]) so that a rule about them
/// (a key, an ownership test, a plan) is written once for both families;
/// [`Neighbour`]/[`Neighbour6`], [`FdbEntry`]/[`FdbEntry6`] and
/// [`Route`]/[`Route6`] name the two instances. Sealed: the kernel knows
/// these two families and [`Request`](crate::Request) a variant for each.
pub trait IpFamily:
    crate::request::FamilyWire
    + Copy
    + Ord
    + Hash
    + fmt::Debug
    + fmt::Display
    + Into<IpAddr>
    + Send
    + Sync
    + 'static
{
    /// A prefix of this family ([`Ipv4Network`], [`Ipv6Network`]).
    type Network: Copy
        + Ord
        + Hash
        + fmt::Debug
        + fmt::Display
        + Into<IpNetwork>
        + Send
        + Sync
        + 'static;

    /// The first address of `net` (its network address: `10.244.1.0` of
    /// `10.244.1.0/24`, `fd10:1::` of `fd10:1::/64`).
    fn network_addr(net: &Self::Network) -> Self;
}

impl IpFamily for Ipv4Addr {
    type Network = Ipv4Network;

    fn network_addr(net: &Ipv4Network) -> Self {
        net.network()
    }
}

impl IpFamily for Ipv6Addr {
    type Network = Ipv6Network;

    fn network_addr(net: &Ipv6Network) -> Self {
        net.network()
    }
}

/// A neighbour entry of family `A`: `ip [-6] neigh replace IP lladdr MAC dev
/// INDEX nud permanent` (ARP for IPv4, NDP for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNeighbour<A: IpFamily> {
    /// Interface index.
    pub index: u32,
    /// The neighbour's address.
    pub ip: A,
    /// Its link-layer address (`None` in dumps for incomplete entries; required to add).
    pub mac: Option<MacAddr>,
    /// Whether the entry is `NUD_PERMANENT` (always true for entries we add).
    pub permanent: bool,
}

/// An IPv4 neighbour (ARP) entry: `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
pub type Neighbour = IpNeighbour<Ipv4Addr>;

/// An IPv6 neighbour (NDP) entry: `ip -6 neigh replace IP lladdr MAC dev INDEX nud permanent`.
pub type Neighbour6 = IpNeighbour<Ipv6Addr>;

impl<A: IpFamily> IpNeighbour<A> {
    /// A permanent entry `ip` → `mac` on `index`.
    #[must_use]
    pub fn permanent(index: u32, ip: A, mac: MacAddr) -> Self {
        Self {
            index,
            ip,
            mac: Some(mac),
            permanent: true,
        }
    }
}

/// A bridge forwarding database entry on a device (`self`) whose remote is
/// an underlay address of family `A`:
/// `bridge fdb append MAC dev INDEX dst IP self permanent`.
///
/// A dump of one family ([`FdbEntry`] or [`FdbEntry6`]) skips the entries
/// whose remote is of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpFdbEntry<A: IpFamily> {
    /// Interface index (the VXLAN device).
    pub index: u32,
    /// The MAC address.
    pub mac: MacAddr,
    /// Remote underlay address (`dst`), for VXLAN devices.
    pub dst: Option<A>,
    /// `NUD_PERMANENT` (always true for entries we add).
    pub permanent: bool,
}

/// An FDB entry with an IPv4 remote (or none).
pub type FdbEntry = IpFdbEntry<Ipv4Addr>;

/// An FDB entry with an IPv6 remote: `bridge fdb append MAC dev INDEX dst IP6 self permanent`.
pub type FdbEntry6 = IpFdbEntry<Ipv6Addr>;

impl<A: IpFamily> IpFdbEntry<A> {
    /// A permanent entry `mac` → `dst` on `index`.
    #[must_use]
    pub fn permanent(index: u32, mac: MacAddr, dst: A) -> Self {
        Self {
            index,
            mac,
            dst: Some(dst),
            permanent: true,
        }
    }
}

/// A unicast route of family `A`:
/// `ip [-6] route replace DST [via GW] [dev OIF] [onlink] [table T] [proto P]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRoute<A: IpFamily> {
    /// Destination prefix.
    pub dst: A::Network,
    /// Next hop.
    pub gateway: Option<A>,
    /// Output device index.
    pub oif: Option<u32>,
    /// `RTNH_F_ONLINK`: the gateway is on link even if no prefix says so.
    pub onlink: bool,
    /// Routing table (default [`MAIN_TABLE`]).
    pub table: u32,
    /// Route protocol (`rtm_protocol`); [`TWILL_RTPROT`] for ours.
    pub protocol: u8,
    /// The nexthop object the route goes through (`nhid N`, `RTA_NH_ID`).
    /// When set, the route is sent with the id alone (the kernel refuses a
    /// gateway or device beside it) and `gateway`, `oif` and `onlink`
    /// describe where the object sends traffic: the kernel reports them in
    /// dumps (`net.ipv4.nexthop_compat_mode`, on by default), and a caller
    /// that has the object can fill them in whatever that mode is.
    pub nexthop_id: Option<u32>,
}

/// An IPv4 unicast route: `ip route replace DST [via GW] [dev OIF] [onlink] [table T] [proto P]`.
pub type Route = IpRoute<Ipv4Addr>;

/// An IPv6 unicast route: `ip -6 route replace DST [via GW] [dev OIF] [onlink] [table T] [proto P]`.
pub type Route6 = IpRoute<Ipv6Addr>;

impl<A: IpFamily> IpRoute<A> {
    /// A route to `dst` in the main table with protocol [`TWILL_RTPROT`].
    #[must_use]
    pub fn new(dst: A::Network) -> Self {
        Self {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            table: MAIN_TABLE,
            protocol: TWILL_RTPROT,
            nexthop_id: None,
        }
    }

    /// Routes through nexthop object `id` (`nhid ID`).
    #[must_use]
    pub fn nexthop(mut self, id: u32) -> Self {
        self.nexthop_id = Some(id);
        self
    }

    /// Sets the gateway.
    #[must_use]
    pub fn via(mut self, gateway: A) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Sets the output device.
    #[must_use]
    pub fn dev(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }

    /// Sets the onlink flag.
    #[must_use]
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Sets the table.
    #[must_use]
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Sets the protocol.
    #[must_use]
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }
}

impl<A: IpFamily> fmt::Display for IpRoute<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        // Through an object, the id is what is sent (and all `ip` takes).
        if let Some(id) = self.nexthop_id {
            write!(f, " nhid {id}")?;
        } else {
            if let Some(gw) = self.gateway {
                write!(f, " via {gw}")?;
            }
            if let Some(oif) = self.oif {
                write!(f, " dev #{oif}")?;
            }
            if self.onlink {
                f.write_str(" onlink")?;
            }
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// A nexthop object of family `A` (Linux 5.3 and later):
/// `ip nexthop replace id ID via GW dev OIF [onlink] proto P`.
///
/// Routes name it by id (`ip route replace DST nhid ID`). The kernel hashes
/// these objects by id, where it hashes a route's own gateway into one
/// bucket per device: 10,000 onlink routes with as many gateways on one
/// device make every route insert walk all the others (docs/benchmarks.md
/// §4), 10,000 objects do not.
///
/// Ids are one space per network namespace, shared by both families, groups
/// and blackholes. A dump lists every object, read as this family: one of
/// the other family, a group or a blackhole reads with no gateway (and the
/// last two with no device), so it is never mistaken for a gateway nexthop
/// of `A` while its id is still seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNexthop<A: IpFamily> {
    /// The object's id (`NHA_ID`, never 0: 0 asks the kernel to pick one).
    pub id: u32,
    /// Gateway (`NHA_GATEWAY`).
    pub gateway: Option<A>,
    /// Output device (`NHA_OIF`).
    pub oif: Option<u32>,
    /// `RTNH_F_ONLINK`: the gateway is on link even if no prefix says so.
    pub onlink: bool,
    /// Protocol (`nh_protocol`); [`TWILL_RTPROT`] for ours.
    pub protocol: u8,
}

/// An IPv4 nexthop object: `ip nexthop replace id ID via GW dev OIF [onlink]`.
pub type Nexthop = IpNexthop<Ipv4Addr>;

/// An IPv6 nexthop object: `ip -6 nexthop replace id ID via GW dev OIF [onlink]`.
pub type Nexthop6 = IpNexthop<Ipv6Addr>;

impl<A: IpFamily> IpNexthop<A> {
    /// Object `id` sending to `gateway` on `oif`, with protocol [`TWILL_RTPROT`].
    #[must_use]
    pub fn via(id: u32, gateway: A, oif: u32) -> Self {
        Self {
            id,
            gateway: Some(gateway),
            oif: Some(oif),
            onlink: false,
            protocol: TWILL_RTPROT,
        }
    }

    /// Sets the onlink flag.
    #[must_use]
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Sets the protocol.
    #[must_use]
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }
}

impl<A: IpFamily> fmt::Display for IpNexthop<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id {}", self.id)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// An IPv6 address on a device: `ip -6 addr add ADDR/LEN dev INDEX nodad`.
///
/// Added with `IFA_F_NODAD`: an overlay address is unique by allocation, and
/// duplicate address detection would leave it unusable ("tentative") for a
/// second after every add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address6 {
    /// Interface index.
    pub index: u32,
    /// Address and prefix length (host bits kept: `fd00::2/64`).
    pub addr: Ipv6Network,
}
