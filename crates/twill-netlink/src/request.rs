//! Write requests, their `ip`-style descriptions and their wire encoding (neli).

use std::fmt;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use linux_raw_sys::netlink as k;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{
    Arphrd, Ifa, IfaF, Iff, Ifla, Nda, Ntf, Nud, RtAddrFamily, RtScope, RtTable, Rta, Rtm, RtmF,
    Rtn, Rtprot,
};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::rtnl::{
    Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, Ndmsg, NdmsgBuilder, Rtattr,
    RtattrBuilder, Rtmsg, RtmsgBuilder,
};
use neli::types::{Buffer, RtBuffer};
use neli::{Size, ToBytes};

use crate::types::{
    Address, Address6, FdbEntry, FdbEntry6, IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute,
    LinkChange, LinkKind, Neighbour, Neighbour6, Nexthop, Nexthop6, Route, Route6, VxlanSpec,
};
use crate::NetlinkError;

/// `AF_BRIDGE`: neli's `RtAddrFamily` has no variant for it.
#[allow(clippy::cast_possible_truncation)] // 7 fits
pub(crate) const AF_BRIDGE: u8 = linux_raw_sys::net::AF_BRIDGE as u8;
/// `AF_INET` as the `u8` family field.
#[allow(clippy::cast_possible_truncation)] // 2 fits
pub(crate) const AF_INET: u8 = linux_raw_sys::net::AF_INET as u8;
/// `AF_INET6` as the `u8` family field.
#[allow(clippy::cast_possible_truncation)] // 10 fits
pub(crate) const AF_INET6: u8 = linux_raw_sys::net::AF_INET6 as u8;
/// `VETH_INFO_PEER` from `<linux/veth.h>`: in neither neli nor linux-raw-sys.
const VETH_INFO_PEER: u16 = 1;
/// `<linux/nexthop.h>`, in neither neli nor linux-raw-sys (which has only
/// `RTM_*NEXTHOP` and `RTA_NH_ID`): the attributes of `struct nhmsg`.
pub(crate) mod nh {
    /// `NHA_ID`: u32, the object's id.
    pub(crate) const NHA_ID: u16 = 1;
    /// `NHA_GROUP`: an array of `struct nexthop_grp` (a group object).
    pub(crate) const NHA_GROUP: u16 = 2;
    /// `NHA_BLACKHOLE`: flag.
    pub(crate) const NHA_BLACKHOLE: u16 = 4;
    /// `NHA_OIF`: u32, the device.
    pub(crate) const NHA_OIF: u16 = 5;
    /// `NHA_GATEWAY`: be32 or in6_addr.
    pub(crate) const NHA_GATEWAY: u16 = 6;
    /// `sizeof(struct nhmsg)`: family, scope, protocol, reserved (one byte
    /// each), flags (u32).
    pub(crate) const NHMSG_LEN: usize = 8;
}
/// `RTM_NEWNEXTHOP` (104), `RTM_DELNEXTHOP`, `RTM_GETNEXTHOP`: neli's `Rtm`
/// has no variant for them.
pub(crate) fn rtm_nexthop(ty: u32) -> Rtm {
    Rtm::from(c16(ty))
}
/// Longest interface name (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

/// One write operation, batched by [`crate::NetlinkHandle::execute`].
///
/// Each variant mirrors one `ip`/`bridge` command; [`fmt::Display`] prints it
/// that way, and errors name the request with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `ip link add` (fails with `EEXIST` if the name is taken).
    LinkAdd {
        /// Name of the new link.
        name: String,
        /// What to create.
        kind: LinkKind,
    },
    /// `ip link set`.
    LinkSet(LinkChange),
    /// `ip link del dev INDEX`.
    LinkDelete(u32),
    /// `ip addr add` (`EEXIST` if present).
    AddressAdd(Address),
    /// `ip addr del`.
    AddressDelete(Address),
    /// `ip neigh replace ... nud permanent`.
    NeighbourReplace(Neighbour),
    /// `ip neigh del`.
    NeighbourDelete(Neighbour),
    /// `bridge fdb append ... self permanent`.
    FdbAppend(FdbEntry),
    /// `bridge fdb replace ... self permanent`.
    FdbReplace(FdbEntry),
    /// `bridge fdb del ... self`.
    FdbDelete(FdbEntry),
    /// `ip route replace`.
    RouteReplace(Route),
    /// `ip route add` (`NLM_F_EXCL`): refused with `EEXIST` when a route
    /// already holds the destination, whoever made it.
    RouteAdd(Route),
    /// `ip route del`.
    RouteDelete(Route),
    /// `ip -6 addr add ... nodad` (`EEXIST` if present).
    AddressAdd6(Address6),
    /// `ip -6 addr del`.
    AddressDelete6(Address6),
    /// `ip -6 neigh replace ... nud permanent`.
    NeighbourReplace6(Neighbour6),
    /// `ip -6 neigh del`.
    NeighbourDelete6(Neighbour6),
    /// `bridge fdb append ... dst IP6 self permanent`.
    FdbAppend6(FdbEntry6),
    /// `bridge fdb replace ... dst IP6 self permanent`.
    FdbReplace6(FdbEntry6),
    /// `bridge fdb del ... dst IP6 self`.
    FdbDelete6(FdbEntry6),
    /// `ip -6 route replace`.
    RouteReplace6(Route6),
    /// `ip -6 route add` (`NLM_F_EXCL`): `EEXIST` when a route already
    /// holds the destination.
    RouteAdd6(Route6),
    /// `ip -6 route del`.
    RouteDelete6(Route6),
    /// `ip nexthop replace id ID via GW dev OIF [onlink] proto P`.
    NexthopReplace(Nexthop),
    /// `ip nexthop add ...` (`NLM_F_EXCL`): `EEXIST` when the id is taken.
    NexthopAdd(Nexthop),
    /// `ip nexthop del id ID` (only the id is sent).
    NexthopDelete(Nexthop),
    /// `ip -6 nexthop replace id ID via GW dev OIF [onlink] proto P`.
    NexthopReplace6(Nexthop6),
    /// `ip -6 nexthop add ...` (`NLM_F_EXCL`): `EEXIST` when the id is taken.
    NexthopAdd6(Nexthop6),
    /// `ip -6 nexthop del id ID` (only the id is sent).
    NexthopDelete6(Nexthop6),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkAdd { name, kind } => match kind {
                LinkKind::Bridge => write!(f, "ip link add {name} type bridge"),
                LinkKind::Dummy => write!(f, "ip link add {name} type dummy"),
                LinkKind::Veth { peer } => {
                    write!(f, "ip link add {name} type veth peer name {peer}")
                }
                LinkKind::Vxlan(v) => {
                    write!(f, "ip link add {name} type vxlan id {}", v.vni)?;
                    if let Some(l) = v.local {
                        write!(f, " local {l}")?;
                    }
                    if let Some(l) = v.local6 {
                        write!(f, " local {l}")?;
                    }
                    if let Some(p) = v.port {
                        write!(f, " dstport {p}")?;
                    }
                    if let Some(u) = v.underlay {
                        write!(f, " dev #{u}")?;
                    }
                    if !v.learning {
                        f.write_str(" nolearning")?;
                    }
                    if v.gbp {
                        f.write_str(" gbp")?;
                    }
                    Ok(())
                }
            },
            Self::LinkSet(c) => {
                write!(f, "ip link set dev #{}", c.index)?;
                if let Some(up) = c.up {
                    f.write_str(if up { " up" } else { " down" })?;
                }
                if let Some(m) = c.mtu {
                    write!(f, " mtu {m}")?;
                }
                if let Some(m) = c.mac {
                    write!(f, " address {m}")?;
                }
                if let Some(m) = c.master {
                    write!(f, " master #{m}")?;
                }
                Ok(())
            }
            Self::LinkDelete(i) => write!(f, "ip link del dev #{i}"),
            Self::AddressAdd(a) => write!(f, "ip addr add {} dev #{}", a.addr, a.index),
            Self::AddressDelete(a) => write!(f, "ip addr del {} dev #{}", a.addr, a.index),
            Self::NeighbourReplace(n) => fmt_neighbour(f, Write::Replace, n),
            Self::NeighbourDelete(n) => fmt_neighbour(f, Write::Delete, n),
            Self::FdbAppend(e) => fmt_fdb(f, FdbWrite::Append, e),
            Self::FdbReplace(e) => fmt_fdb(f, FdbWrite::Replace, e),
            Self::FdbDelete(e) => fmt_fdb(f, FdbWrite::Delete, e),
            Self::RouteReplace(r) => fmt_route(f, Write::Replace, r),
            Self::RouteAdd(r) => fmt_route(f, Write::Add, r),
            Self::RouteDelete(r) => fmt_route(f, Write::Delete, r),
            Self::AddressAdd6(a) => write!(f, "ip -6 addr add {} dev #{} nodad", a.addr, a.index),
            Self::AddressDelete6(a) => write!(f, "ip -6 addr del {} dev #{}", a.addr, a.index),
            Self::NeighbourReplace6(n) => fmt_neighbour(f, Write::Replace, n),
            Self::NeighbourDelete6(n) => fmt_neighbour(f, Write::Delete, n),
            Self::FdbAppend6(e) => fmt_fdb(f, FdbWrite::Append, e),
            Self::FdbReplace6(e) => fmt_fdb(f, FdbWrite::Replace, e),
            Self::FdbDelete6(e) => fmt_fdb(f, FdbWrite::Delete, e),
            Self::RouteReplace6(r) => fmt_route(f, Write::Replace, r),
            Self::RouteAdd6(r) => fmt_route(f, Write::Add, r),
            Self::RouteDelete6(r) => fmt_route(f, Write::Delete, r),
            Self::NexthopReplace(n) => fmt_nexthop(f, Write::Replace, n),
            Self::NexthopAdd(n) => fmt_nexthop(f, Write::Add, n),
            Self::NexthopDelete(n) => fmt_nexthop(f, Write::Delete, n),
            Self::NexthopReplace6(n) => fmt_nexthop(f, Write::Replace, n),
            Self::NexthopAdd6(n) => fmt_nexthop(f, Write::Add, n),
            Self::NexthopDelete6(n) => fmt_nexthop(f, Write::Delete, n),
        }
    }
}

/// A write to a neighbour or route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `replace` (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace,
    /// `add` (`NLM_F_CREATE | NLM_F_EXCL`): only where nothing is.
    Add,
    /// `del`.
    Delete,
}

/// A write to an FDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbWrite {
    /// `append` (`NLM_F_CREATE | NLM_F_APPEND`).
    Append,
    /// `replace` (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace,
    /// `del`.
    Delete,
}

impl FdbWrite {
    fn verb(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Replace => "replace",
            Self::Delete => "del",
        }
    }
}

/// What [`IpFamily`] takes from the crate's wire code: which [`Request`]
/// variant each write of a family is, how `ip` and the kernel name the
/// family, how dumps carry its addresses. Public in a private module, so
/// that [`IpFamily`] is sealed.
pub trait FamilyWire: Sized {
    /// `ip` or `ip -6`, as the family's requests print themselves.
    const IP_COMMAND: &'static str;
    /// `rtm_family` / `ndm_family` / `ifa_family`.
    const RT_FAMILY: RtAddrFamily;
    /// An address of this family from an attribute of exactly its length
    /// (dumps of `AF_BRIDGE` hold IPv4 and IPv6 remotes side by side).
    fn from_attr(b: &[u8]) -> Option<Self>;
    /// The remote of an FDB entry in this family's list, from the entry's
    /// `NDA_DST` (if any); `None` when the entry is not in the list. The
    /// IPv4 list has always held every `self` entry, those without an IPv4
    /// remote with none; the IPv6 list holds only the entries with an IPv6
    /// remote.
    fn fdb_remote(dst: Option<&[u8]>) -> Option<Option<Self>>;
    /// `0.0.0.0` / `::`, the destination of a route without `RTA_DST`.
    const UNSPECIFIED: Self;
    /// The prefix `addr/prefix`, `None` past the family's length.
    fn network(addr: Self, prefix: u8) -> Option<<Self as IpFamily>::Network>
    where
        Self: IpFamily;
    /// The request variant carrying a neighbour write of this family.
    fn neighbour_request(n: IpNeighbour<Self>, write: Write) -> Request
    where
        Self: IpFamily;
    /// The request variant carrying an FDB write with a remote of this family.
    fn fdb_request(e: IpFdbEntry<Self>, write: FdbWrite) -> Request
    where
        Self: IpFamily;
    /// The request variant carrying a route write of this family.
    fn route_request(r: IpRoute<Self>, write: Write) -> Request
    where
        Self: IpFamily;
    /// The request variant carrying a nexthop write of this family.
    fn nexthop_request(n: IpNexthop<Self>, write: Write) -> Request
    where
        Self: IpFamily;
}

impl FamilyWire for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const IP_COMMAND: &'static str = "ip";
    const RT_FAMILY: RtAddrFamily = RtAddrFamily::Inet;

    fn from_attr(b: &[u8]) -> Option<Self> {
        <[u8; 4]>::try_from(b).ok().map(Self::from)
    }

    fn fdb_remote(dst: Option<&[u8]>) -> Option<Option<Self>> {
        Some(dst.and_then(Self::from_attr))
    }

    fn network(addr: Self, prefix: u8) -> Option<Ipv4Network> {
        Ipv4Network::new(addr, prefix).ok()
    }

    fn neighbour_request(n: Neighbour, write: Write) -> Request {
        match write {
            // No exclusive neighbour write is ever asked for: a replace.
            Write::Replace | Write::Add => Request::NeighbourReplace(n),
            Write::Delete => Request::NeighbourDelete(n),
        }
    }

    fn fdb_request(e: FdbEntry, write: FdbWrite) -> Request {
        match write {
            FdbWrite::Append => Request::FdbAppend(e),
            FdbWrite::Replace => Request::FdbReplace(e),
            FdbWrite::Delete => Request::FdbDelete(e),
        }
    }

    fn route_request(r: Route, write: Write) -> Request {
        match write {
            Write::Replace => Request::RouteReplace(r),
            Write::Add => Request::RouteAdd(r),
            Write::Delete => Request::RouteDelete(r),
        }
    }

    fn nexthop_request(n: Nexthop, write: Write) -> Request {
        match write {
            Write::Replace => Request::NexthopReplace(n),
            Write::Add => Request::NexthopAdd(n),
            Write::Delete => Request::NexthopDelete(n),
        }
    }
}

impl FamilyWire for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const IP_COMMAND: &'static str = "ip -6";
    const RT_FAMILY: RtAddrFamily = RtAddrFamily::Inet6;

    fn from_attr(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(Self::from)
    }

    fn fdb_remote(dst: Option<&[u8]>) -> Option<Option<Self>> {
        dst.and_then(Self::from_attr).map(Some)
    }

    fn network(addr: Self, prefix: u8) -> Option<Ipv6Network> {
        Ipv6Network::new(addr, prefix).ok()
    }

    fn neighbour_request(n: Neighbour6, write: Write) -> Request {
        match write {
            Write::Replace | Write::Add => Request::NeighbourReplace6(n),
            Write::Delete => Request::NeighbourDelete6(n),
        }
    }

    fn fdb_request(e: FdbEntry6, write: FdbWrite) -> Request {
        match write {
            FdbWrite::Append => Request::FdbAppend6(e),
            FdbWrite::Replace => Request::FdbReplace6(e),
            FdbWrite::Delete => Request::FdbDelete6(e),
        }
    }

    fn route_request(r: Route6, write: Write) -> Request {
        match write {
            Write::Replace => Request::RouteReplace6(r),
            Write::Add => Request::RouteAdd6(r),
            Write::Delete => Request::RouteDelete6(r),
        }
    }

    fn nexthop_request(n: Nexthop6, write: Write) -> Request {
        match write {
            Write::Replace => Request::NexthopReplace6(n),
            Write::Add => Request::NexthopAdd6(n),
            Write::Delete => Request::NexthopDelete6(n),
        }
    }
}

/// The family-generic ways to name a neighbour, FDB or route write: the
/// variant of the entry's family (`NeighbourReplace` for an IPv4 entry,
/// `NeighbourReplace6` for an IPv6 one), for code written once over
/// [`IpFamily`].
impl Request {
    /// `ip [-6] neigh replace ... nud permanent`.
    #[must_use]
    pub fn neighbour_replace<A: IpFamily>(n: IpNeighbour<A>) -> Self {
        A::neighbour_request(n, Write::Replace)
    }

    /// `ip [-6] neigh del`.
    #[must_use]
    pub fn neighbour_delete<A: IpFamily>(n: IpNeighbour<A>) -> Self {
        A::neighbour_request(n, Write::Delete)
    }

    /// `bridge fdb append ... self permanent`.
    #[must_use]
    pub fn fdb_append<A: IpFamily>(e: IpFdbEntry<A>) -> Self {
        A::fdb_request(e, FdbWrite::Append)
    }

    /// `bridge fdb replace ... self permanent`.
    #[must_use]
    pub fn fdb_replace<A: IpFamily>(e: IpFdbEntry<A>) -> Self {
        A::fdb_request(e, FdbWrite::Replace)
    }

    /// `bridge fdb del ... self`.
    #[must_use]
    pub fn fdb_delete<A: IpFamily>(e: IpFdbEntry<A>) -> Self {
        A::fdb_request(e, FdbWrite::Delete)
    }

    /// `ip [-6] route replace`.
    #[must_use]
    pub fn route_replace<A: IpFamily>(r: IpRoute<A>) -> Self {
        A::route_request(r, Write::Replace)
    }

    /// `ip [-6] route add`: `EEXIST` when a route holds the destination.
    #[must_use]
    pub fn route_add<A: IpFamily>(r: IpRoute<A>) -> Self {
        A::route_request(r, Write::Add)
    }

    /// `ip [-6] route del`.
    #[must_use]
    pub fn route_delete<A: IpFamily>(r: IpRoute<A>) -> Self {
        A::route_request(r, Write::Delete)
    }

    /// `ip [-6] nexthop replace`.
    #[must_use]
    pub fn nexthop_replace<A: IpFamily>(n: IpNexthop<A>) -> Self {
        A::nexthop_request(n, Write::Replace)
    }

    /// `ip [-6] nexthop add`: `EEXIST` when the id is taken.
    #[must_use]
    pub fn nexthop_add<A: IpFamily>(n: IpNexthop<A>) -> Self {
        A::nexthop_request(n, Write::Add)
    }

    /// `ip [-6] nexthop del id ID`.
    #[must_use]
    pub fn nexthop_delete<A: IpFamily>(n: IpNexthop<A>) -> Self {
        A::nexthop_request(n, Write::Delete)
    }
}

fn fmt_neighbour<A: IpFamily>(
    f: &mut fmt::Formatter<'_>,
    write: Write,
    n: &IpNeighbour<A>,
) -> fmt::Result {
    let ip = A::IP_COMMAND;
    match write {
        Write::Replace | Write::Add => {
            write!(f, "{ip} neigh replace {} lladdr ", n.ip)?;
            match n.mac {
                Some(m) => write!(f, "{m}")?,
                None => f.write_str("?")?,
            }
            write!(f, " dev #{} nud permanent", n.index)
        }
        Write::Delete => write!(f, "{ip} neigh del {} dev #{}", n.ip, n.index),
    }
}

fn fmt_fdb<A: IpFamily>(
    f: &mut fmt::Formatter<'_>,
    write: FdbWrite,
    e: &IpFdbEntry<A>,
) -> fmt::Result {
    write!(f, "bridge fdb {} {} dev #{}", write.verb(), e.mac, e.index)?;
    if let Some(d) = e.dst {
        write!(f, " dst {d}")?;
    }
    f.write_str(" self permanent")
}

fn fmt_route<A: IpFamily>(f: &mut fmt::Formatter<'_>, write: Write, r: &IpRoute<A>) -> fmt::Result {
    let verb = match write {
        Write::Replace => "replace",
        Write::Add => "add",
        Write::Delete => "del",
    };
    write!(f, "{} route {verb} {r}", A::IP_COMMAND)
}

fn fmt_nexthop<A: IpFamily>(
    f: &mut fmt::Formatter<'_>,
    write: Write,
    n: &IpNexthop<A>,
) -> fmt::Result {
    match write {
        Write::Replace => write!(f, "{} nexthop replace {n}", A::IP_COMMAND),
        Write::Add => write!(f, "{} nexthop add {n}", A::IP_COMMAND),
        Write::Delete => write!(f, "{} nexthop del id {}", A::IP_COMMAND, n.id),
    }
}

fn ip_octets(ip: impl Into<IpAddr>) -> Vec<u8> {
    match ip.into() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn enc_err(req: &impl fmt::Display, reason: impl fmt::Display) -> NetlinkError {
    NetlinkError::Encode {
        request: req.to_string(),
        reason: reason.to_string(),
    }
}

fn i32_index(req: &Request, index: u32) -> Result<i32, NetlinkError> {
    i32::try_from(index).map_err(|_| enc_err(req, format!("interface index {index} too large")))
}

/// An attribute whose type is a raw kernel constant (for nesting).
pub(crate) fn raw_attr(ty: u16, payload: &[u8]) -> Result<Rtattr<u16, Buffer>, NetlinkError> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::from(payload))
        .build()
        .map_err(|e| enc_err(&"attribute", e))
}

fn typed_attr<T: neli::consts::rtnl::RtaType>(
    ty: T,
    payload: &[u8],
) -> Result<Rtattr<T, Buffer>, NetlinkError> {
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(Buffer::from(payload))
        .build()
        .map_err(|e| enc_err(&"attribute", e))
}

fn name_bytes(req: &Request, name: &str) -> Result<Vec<u8>, NetlinkError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
        return Err(NetlinkError::Invalid(format!(
            "{req}: interface name {name:?} must be 1..=15 bytes without '/', ' ' or NUL"
        )));
    }
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

pub(crate) fn c16<T: TryInto<u16>>(x: T) -> u16 {
    x.try_into().unwrap_or(u16::MAX)
}

pub(crate) fn c8<T: TryInto<u8>>(x: T) -> u8 {
    x.try_into().unwrap_or(u8::MAX)
}

/// Serialises a neli message, appending it to `out`.
pub(crate) fn push_msg<P: Size + ToBytes + fmt::Debug>(
    out: &mut Vec<u8>,
    ty: Rtm,
    flags: NlmF,
    seq: u32,
    payload: P,
) -> Result<(), NetlinkError> {
    let msg: Nlmsghdr<Rtm, P> = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_payload(NlPayload::Payload(payload))
        .build()
        .map_err(|e| enc_err(&"netlink header", e))?;
    let mut cur = Cursor::new(Vec::with_capacity(msg.padded_size()));
    msg.to_bytes(&mut cur)
        .map_err(|e| enc_err(&"netlink message", e))?;
    out.extend_from_slice(cur.get_ref());
    Ok(())
}

fn ifinfo(
    req: &Request,
    index: i32,
    flags: Iff,
    change: Iff,
    attrs: Vec<Rtattr<Ifla, Buffer>>,
) -> Result<Ifinfomsg, NetlinkError> {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_type(Arphrd::from(0))
        .ifi_index(index)
        .ifi_flags(flags)
        .ifi_change(change)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<Ifla, Buffer>>())
        .build()
        .map_err(|e| enc_err(req, e))
}

fn vxlan_data(req: &Request, v: &VxlanSpec) -> Result<Rtattr<u16, Buffer>, NetlinkError> {
    if v.vni >= 1 << 24 {
        return Err(NetlinkError::Invalid(format!(
            "{req}: VNI {} exceeds 24 bits",
            v.vni
        )));
    }
    let mut data = raw_attr(c16(k::IFLA_INFO_DATA as u32), &[])?;
    let mut add = |a: Rtattr<u16, Buffer>| data.clone().nest(&a).map(|d| data = d);
    let e = |e| enc_err(req, e);
    add(raw_attr(
        c16(k::IFLA_VXLAN_ID as u32),
        &v.vni.to_ne_bytes(),
    )?)
    .map_err(e)?;
    if v.local.is_some() && v.local6.is_some() {
        return Err(NetlinkError::Invalid(format!(
            "{req}: a VXLAN device has one local address, IPv4 or IPv6"
        )));
    }
    if let Some(local) = v.local {
        add(raw_attr(c16(k::IFLA_VXLAN_LOCAL as u32), &local.octets())?).map_err(e)?;
    }
    if let Some(local) = v.local6 {
        add(raw_attr(c16(k::IFLA_VXLAN_LOCAL6 as u32), &local.octets())?).map_err(e)?;
    }
    if let Some(port) = v.port {
        // IFLA_VXLAN_PORT is __be16.
        add(raw_attr(
            c16(k::IFLA_VXLAN_PORT as u32),
            &port.to_be_bytes(),
        )?)
        .map_err(e)?;
    }
    add(raw_attr(
        c16(k::IFLA_VXLAN_LEARNING as u32),
        &[u8::from(v.learning)],
    )?)
    .map_err(e)?;
    if let Some(u) = v.underlay {
        add(raw_attr(c16(k::IFLA_VXLAN_LINK as u32), &u.to_ne_bytes())?).map_err(e)?;
    }
    if v.gbp {
        add(raw_attr(c16(k::IFLA_VXLAN_GBP as u32), &[])?).map_err(e)?;
    }
    Ok(data)
}

fn linkinfo(req: &Request, kind: &LinkKind) -> Result<Rtattr<Ifla, Buffer>, NetlinkError> {
    let e = |e| enc_err(req, e);
    let kind_name: &[u8] = match kind {
        LinkKind::Bridge => b"bridge\0",
        LinkKind::Dummy => b"dummy\0",
        LinkKind::Veth { .. } => b"veth\0",
        LinkKind::Vxlan(_) => b"vxlan\0",
    };
    let mut info = typed_attr(Ifla::Linkinfo, &[])?
        .nest(&raw_attr(c16(k::IFLA_INFO_KIND as u32), kind_name)?)
        .map_err(e)?;
    match kind {
        LinkKind::Vxlan(v) => info = info.nest(&vxlan_data(req, v)?).map_err(e)?,
        LinkKind::Veth { peer } => {
            // VETH_INFO_PEER carries a struct ifinfomsg followed by the peer's attributes.
            let peer_msg = ifinfo(
                req,
                0,
                Iff::empty(),
                Iff::empty(),
                vec![typed_attr(Ifla::Ifname, &name_bytes(req, peer)?)?],
            )?;
            let mut cur = Cursor::new(Vec::new());
            peer_msg.to_bytes(&mut cur).map_err(e)?;
            let peer_attr = raw_attr(VETH_INFO_PEER, cur.get_ref())?;
            let data = raw_attr(c16(k::IFLA_INFO_DATA as u32), &[])?
                .nest(&peer_attr)
                .map_err(e)?;
            info = info.nest(&data).map_err(e)?;
        }
        LinkKind::Bridge | LinkKind::Dummy => {}
    }
    Ok(info)
}

fn route_msg<A: IpFamily>(req: &Request, r: &IpRoute<A>) -> Result<Rtmsg, NetlinkError> {
    let dst: IpNetwork = r.dst.into();
    let mut attrs = vec![typed_attr(Rta::Dst, &ip_octets(dst.network()))?];
    // Through a nexthop object the id is all: the kernel refuses a gateway
    // or device beside it (EINVAL), and deleting matches by id alone.
    let (gateway, oif, onlink) = match r.nexthop_id {
        Some(id) => {
            let nh_id = Rta::from(c16(k::rtattr_type_t::RTA_NH_ID as u32));
            attrs.push(typed_attr(nh_id, &id.to_ne_bytes())?);
            (None, None, false)
        }
        None => (r.gateway, r.oif, r.onlink),
    };
    if let Some(gw) = gateway {
        attrs.push(typed_attr(Rta::Gateway, &ip_octets(gw))?);
    }
    if let Some(oif) = oif {
        attrs.push(typed_attr(Rta::Oif, &oif.to_ne_bytes())?);
    }
    attrs.push(typed_attr(Rta::Table, &r.table.to_ne_bytes())?);
    let scope = if gateway.is_none() && oif.is_some() {
        RtScope::Link
    } else {
        RtScope::Universe
    };
    let flags = if onlink {
        RtmF::from_bits_retain(k::RTNH_F_ONLINK)
    } else {
        RtmF::empty()
    };
    RtmsgBuilder::default()
        .rtm_family(A::RT_FAMILY)
        .rtm_dst_len(dst.prefix())
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::from(u8::try_from(r.table).unwrap_or(0)))
        .rtm_protocol(Rtprot::from(r.protocol))
        .rtm_scope(scope)
        .rtm_type(Rtn::Unicast)
        .rtm_flags(flags)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<Rta, Buffer>>())
        .build()
        .map_err(|e| enc_err(req, e))
}

/// Appends the message of a neighbour write.
fn push_neighbour<A: IpFamily>(
    req: &Request,
    n: &IpNeighbour<A>,
    write: Write,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    let mut attrs = vec![typed_attr(Nda::Dst, &ip_octets(n.ip))?];
    let (ty, flags) = match write {
        Write::Replace | Write::Add => {
            let mac = n
                .mac
                .ok_or_else(|| NetlinkError::Invalid(format!("{req}: no lladdr")))?;
            attrs.push(typed_attr(Nda::Lladdr, &mac.0)?);
            (Rtm::Newneigh, create_replace())
        }
        Write::Delete => (Rtm::Delneigh, ack_request()),
    };
    let msg = nd_msg(req, A::RT_FAMILY, n.index, Ntf::empty(), attrs)?;
    push_msg(out, ty, flags, seq, msg)
}

/// Appends the message of an FDB write (family `AF_BRIDGE`, whatever the remote's).
fn push_fdb<A: IpFamily>(
    req: &Request,
    e: &IpFdbEntry<A>,
    write: FdbWrite,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    let mut attrs = vec![typed_attr(Nda::Lladdr, &e.mac.0)?];
    if let Some(dst) = e.dst {
        attrs.push(typed_attr(Nda::Dst, &ip_octets(dst))?);
    }
    let family = RtAddrFamily::from(AF_BRIDGE);
    let msg = nd_msg(req, family, e.index, Ntf::SELF, attrs)?;
    let (ty, flags) = match write {
        FdbWrite::Append => (Rtm::Newneigh, ack_request() | NlmF::CREATE | NlmF::APPEND),
        FdbWrite::Replace => (Rtm::Newneigh, create_replace()),
        FdbWrite::Delete => (Rtm::Delneigh, ack_request()),
    };
    push_msg(out, ty, flags, seq, msg)
}

/// Appends the message of a route write.
fn push_route<A: IpFamily>(
    req: &Request,
    r: &IpRoute<A>,
    write: Write,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    let (ty, flags) = match write {
        Write::Replace => (Rtm::Newroute, create_replace()),
        Write::Add => (Rtm::Newroute, ack_request() | NlmF::CREATE | NlmF::EXCL),
        Write::Delete => (Rtm::Delroute, ack_request()),
    };
    push_msg(out, ty, flags, seq, route_msg(req, r)?)
}

/// Appends the message of a nexthop write: `struct nhmsg` then its
/// attributes, written by hand (neli has no type for it).
fn push_nexthop<A: IpFamily>(
    req: &Request,
    n: &IpNexthop<A>,
    write: Write,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    if n.id == 0 {
        // 0 asks the kernel to choose an id, which we could not then name.
        return Err(NetlinkError::Invalid(format!(
            "{req}: nexthop id 0 is not an id"
        )));
    }
    let mut attrs = vec![raw_attr(nh::NHA_ID, &n.id.to_ne_bytes())?];
    let (ty, flags, family, header_flags) = match write {
        Write::Replace | Write::Add => {
            if let Some(oif) = n.oif {
                attrs.push(raw_attr(nh::NHA_OIF, &oif.to_ne_bytes())?);
            }
            if let Some(gw) = n.gateway {
                attrs.push(raw_attr(nh::NHA_GATEWAY, &ip_octets(gw))?);
            }
            let flags = if n.onlink { k::RTNH_F_ONLINK } else { 0 };
            let nl_flags = match write {
                Write::Add => ack_request() | NlmF::CREATE | NlmF::EXCL,
                _ => create_replace(),
            };
            (
                rtm_nexthop(k::RTM_NEWNEXTHOP as u32),
                nl_flags,
                u8::from(A::RT_FAMILY),
                flags,
            )
        }
        Write::Delete => (rtm_nexthop(k::RTM_DELNEXTHOP as u32), ack_request(), 0, 0),
    };
    let protocol = if write != Write::Delete {
        n.protocol
    } else {
        0
    };
    let body = nhmsg(req, family, protocol, header_flags, attrs)?;
    push_msg(out, ty, flags, seq, Buffer::from(body))
}

/// `struct nhmsg` (scope 0, as the kernel wants it) followed by `attrs`.
fn nhmsg(
    req: &impl fmt::Display,
    family: u8,
    protocol: u8,
    flags: u32,
    attrs: Vec<Rtattr<u16, Buffer>>,
) -> Result<Vec<u8>, NetlinkError> {
    let mut body = Vec::with_capacity(nh::NHMSG_LEN + 32);
    body.extend_from_slice(&[family, 0, protocol, 0]);
    body.extend_from_slice(&flags.to_ne_bytes());
    let attrs: RtBuffer<u16, Buffer> = attrs.into_iter().collect();
    let mut cur = Cursor::new(Vec::new());
    attrs.to_bytes(&mut cur).map_err(|e| enc_err(req, e))?;
    body.extend_from_slice(cur.get_ref());
    Ok(body)
}

/// Encodes `RTM_GETNEXTHOP` with `NLM_F_DUMP` for every object, of every
/// family (the header all zeros, as the kernel requires of a dump).
pub(crate) fn encode_nexthop_dump(seq: u32, out: &mut Vec<u8>) -> Result<(), NetlinkError> {
    let body = nhmsg(&"ip nexthop show", 0, 0, 0, Vec::new())?;
    push_msg(
        out,
        rtm_nexthop(k::RTM_GETNEXTHOP as u32),
        NlmF::REQUEST | NlmF::DUMP,
        seq,
        Buffer::from(body),
    )
}

/// Every request asks for an ACK.
fn ack_request() -> NlmF {
    NlmF::REQUEST | NlmF::ACK
}

/// `replace`: create, or replace what is there.
fn create_replace() -> NlmF {
    ack_request() | NlmF::CREATE | NlmF::REPLACE
}

fn nd_msg(
    req: &Request,
    family: RtAddrFamily,
    index: u32,
    flags: Ntf,
    attrs: Vec<Rtattr<Nda, Buffer>>,
) -> Result<Ndmsg, NetlinkError> {
    NdmsgBuilder::default()
        .ndm_family(family)
        .ndm_index(i32_index(req, index)?)
        .ndm_state(Nud::PERMANENT)
        .ndm_flags(flags)
        .ndm_type(Rtn::Unspec)
        .rtattrs(attrs.into_iter().collect::<RtBuffer<Nda, Buffer>>())
        .build()
        .map_err(|e| enc_err(req, e))
}

fn addr_msg(req: &Request, a: &Address) -> Result<Ifaddrmsg, NetlinkError> {
    let ip = a.addr.ip().octets();
    IfaddrmsgBuilder::default()
        .ifa_family(RtAddrFamily::Inet)
        .ifa_prefixlen(a.addr.prefix())
        .ifa_flags(IfaF::PERMANENT)
        .ifa_scope(RtScope::Universe)
        .ifa_index(a.index)
        .rtattrs(
            [typed_attr(Ifa::Local, &ip)?, typed_attr(Ifa::Address, &ip)?]
                .into_iter()
                .collect::<RtBuffer<Ifa, Buffer>>(),
        )
        .build()
        .map_err(|e| enc_err(req, e))
}

fn addr6_msg(req: &Request, a: &Address6) -> Result<Ifaddrmsg, NetlinkError> {
    IfaddrmsgBuilder::default()
        .ifa_family(RtAddrFamily::Inet6)
        .ifa_prefixlen(a.addr.prefix())
        .ifa_flags(IfaF::PERMANENT | IfaF::NODAD)
        .ifa_scope(RtScope::Universe)
        .ifa_index(a.index)
        .rtattrs(
            // IPv6 takes the address in IFA_ADDRESS alone (an IFA_LOCAL
            // that differs would make it a peer address).
            [typed_attr(Ifa::Address, &a.addr.ip().octets())?]
                .into_iter()
                .collect::<RtBuffer<Ifa, Buffer>>(),
        )
        .build()
        .map_err(|e| enc_err(req, e))
}

impl Request {
    /// Appends this request, with sequence number `seq` and `NLM_F_ACK`, to `out`.
    pub(crate) fn encode(&self, seq: u32, out: &mut Vec<u8>) -> Result<(), NetlinkError> {
        let req = ack_request();
        let create_excl = req | NlmF::CREATE | NlmF::EXCL;
        match self {
            Self::LinkAdd { name, kind } => {
                let mut attrs = vec![typed_attr(Ifla::Ifname, &name_bytes(self, name)?)?];
                if let LinkKind::Vxlan(v) = kind {
                    if let Some(mtu) = v.mtu {
                        attrs.push(typed_attr(Ifla::Mtu, &mtu.to_ne_bytes())?);
                    }
                    if let Some(mac) = v.mac {
                        attrs.push(typed_attr(Ifla::Address, &mac.0)?);
                    }
                }
                attrs.push(linkinfo(self, kind)?);
                let msg = ifinfo(self, 0, Iff::empty(), Iff::empty(), attrs)?;
                push_msg(out, Rtm::Newlink, create_excl, seq, msg)
            }
            Self::LinkSet(c) => {
                let mut attrs = Vec::new();
                if let Some(mtu) = c.mtu {
                    attrs.push(typed_attr(Ifla::Mtu, &mtu.to_ne_bytes())?);
                }
                if let Some(mac) = c.mac {
                    attrs.push(typed_attr(Ifla::Address, &mac.0)?);
                }
                if let Some(m) = c.master {
                    attrs.push(typed_attr(Ifla::Master, &m.to_ne_bytes())?);
                }
                let (flags, change) = match c.up {
                    Some(true) => (Iff::UP, Iff::UP),
                    Some(false) => (Iff::empty(), Iff::UP),
                    None => (Iff::empty(), Iff::empty()),
                };
                let msg = ifinfo(self, i32_index(self, c.index)?, flags, change, attrs)?;
                push_msg(out, Rtm::Newlink, req, seq, msg)
            }
            Self::LinkDelete(index) => {
                let msg = ifinfo(
                    self,
                    i32_index(self, *index)?,
                    Iff::empty(),
                    Iff::empty(),
                    vec![],
                )?;
                push_msg(out, Rtm::Dellink, req, seq, msg)
            }
            Self::AddressAdd(a) => {
                push_msg(out, Rtm::Newaddr, create_excl, seq, addr_msg(self, a)?)
            }
            Self::AddressDelete(a) => push_msg(out, Rtm::Deladdr, req, seq, addr_msg(self, a)?),
            Self::NeighbourReplace(n) => push_neighbour(self, n, Write::Replace, seq, out),
            Self::NeighbourDelete(n) => push_neighbour(self, n, Write::Delete, seq, out),
            Self::FdbAppend(e) => push_fdb(self, e, FdbWrite::Append, seq, out),
            Self::FdbReplace(e) => push_fdb(self, e, FdbWrite::Replace, seq, out),
            Self::FdbDelete(e) => push_fdb(self, e, FdbWrite::Delete, seq, out),
            Self::RouteReplace(r) => push_route(self, r, Write::Replace, seq, out),
            Self::RouteAdd(r) => push_route(self, r, Write::Add, seq, out),
            Self::RouteDelete(r) => push_route(self, r, Write::Delete, seq, out),
            Self::AddressAdd6(a) => {
                push_msg(out, Rtm::Newaddr, create_excl, seq, addr6_msg(self, a)?)
            }
            Self::AddressDelete6(a) => push_msg(out, Rtm::Deladdr, req, seq, addr6_msg(self, a)?),
            Self::NeighbourReplace6(n) => push_neighbour(self, n, Write::Replace, seq, out),
            Self::NeighbourDelete6(n) => push_neighbour(self, n, Write::Delete, seq, out),
            Self::FdbAppend6(e) => push_fdb(self, e, FdbWrite::Append, seq, out),
            Self::FdbReplace6(e) => push_fdb(self, e, FdbWrite::Replace, seq, out),
            Self::FdbDelete6(e) => push_fdb(self, e, FdbWrite::Delete, seq, out),
            Self::RouteReplace6(r) => push_route(self, r, Write::Replace, seq, out),
            Self::RouteAdd6(r) => push_route(self, r, Write::Add, seq, out),
            Self::RouteDelete6(r) => push_route(self, r, Write::Delete, seq, out),
            Self::NexthopReplace(n) => push_nexthop(self, n, Write::Replace, seq, out),
            Self::NexthopAdd(n) => push_nexthop(self, n, Write::Add, seq, out),
            Self::NexthopDelete(n) => push_nexthop(self, n, Write::Delete, seq, out),
            Self::NexthopReplace6(n) => push_nexthop(self, n, Write::Replace, seq, out),
            Self::NexthopAdd6(n) => push_nexthop(self, n, Write::Add, seq, out),
            Self::NexthopDelete6(n) => push_nexthop(self, n, Write::Delete, seq, out),
        }
    }
}

/// Encodes a dump request (`NLM_F_DUMP`) for `ty` with an empty family header.
pub(crate) fn encode_dump(
    ty: Rtm,
    family: u8,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    let flags = NlmF::REQUEST | NlmF::DUMP;
    let fam = RtAddrFamily::from(family);
    match ty {
        Rtm::Getlink => {
            let msg = IfinfomsgBuilder::default()
                .ifi_family(fam)
                .build()
                .map_err(|x| enc_err(&"dump request", x))?;
            push_msg(out, ty, flags, seq, msg)
        }
        Rtm::Getaddr => {
            let msg = IfaddrmsgBuilder::default()
                .ifa_family(fam)
                .ifa_prefixlen(0)
                .ifa_scope(RtScope::Universe)
                .ifa_index(0)
                .build()
                .map_err(|x| enc_err(&"dump request", x))?;
            push_msg(out, ty, flags, seq, msg)
        }
        Rtm::Getneigh => {
            let msg = NdmsgBuilder::default()
                .ndm_family(fam)
                .ndm_index(0)
                .ndm_state(Nud::empty())
                .ndm_type(Rtn::Unspec)
                .build()
                .map_err(|x| enc_err(&"dump request", x))?;
            push_msg(out, ty, flags, seq, msg)
        }
        _ => {
            let msg = RtmsgBuilder::default()
                .rtm_family(fam)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .build()
                .map_err(|x| enc_err(&"dump request", x))?;
            push_msg(out, Rtm::Getroute, flags, seq, msg)
        }
    }
}

/// Encodes `RTM_GETLINK` for one link by index or name (answered by one message).
pub(crate) fn encode_get_link(
    index: Option<u32>,
    name: Option<&str>,
    seq: u32,
    out: &mut Vec<u8>,
) -> Result<(), NetlinkError> {
    let label = Request::LinkDelete(index.unwrap_or(0));
    let mut attrs = Vec::new();
    if let Some(n) = name {
        attrs.push(typed_attr(Ifla::Ifname, &name_bytes(&label, n)?)?);
    }
    let idx = match index {
        Some(i) => i32_index(&label, i)?,
        None => 0,
    };
    let msg = ifinfo(&label, idx, Iff::empty(), Iff::empty(), attrs)?;
    push_msg(out, Rtm::Getlink, NlmF::REQUEST | NlmF::ACK, seq, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MacAddr;

    #[test]
    fn requests_describe_themselves_like_ip_commands() {
        let r = Request::RouteReplace(
            Route::new("10.1.2.0/24".parse().expect("net"))
                .via("10.1.2.0".parse().expect("ip"))
                .dev(4)
                .onlink(),
        );
        assert_eq!(
            r.to_string(),
            "ip route replace 10.1.2.0/24 via 10.1.2.0 dev #4 onlink proto 241"
        );
        let f = Request::FdbAppend(FdbEntry::permanent(
            4,
            MacAddr([0x0e, 0, 0, 0, 0, 1]),
            "10.0.0.3".parse().expect("ip"),
        ));
        assert_eq!(
            f.to_string(),
            "bridge fdb append 0e:00:00:00:00:01 dev #4 dst 10.0.0.3 self permanent"
        );
    }

    #[test]
    fn nexthop_requests_describe_themselves_like_ip_commands() {
        let nh = Nexthop::via(5, "10.244.1.0".parse().expect("ip"), 4).onlink();
        assert_eq!(
            Request::NexthopReplace(nh).to_string(),
            "ip nexthop replace id 5 via 10.244.1.0 dev #4 onlink proto 241"
        );
        assert_eq!(
            Request::NexthopDelete(nh).to_string(),
            "ip nexthop del id 5"
        );
        let r = Route::new("10.244.1.0/24".parse().expect("net"))
            .via("10.244.1.0".parse().expect("ip"))
            .dev(4)
            .onlink()
            .nexthop(5);
        assert_eq!(
            Request::RouteReplace(r).to_string(),
            "ip route replace 10.244.1.0/24 nhid 5 proto 241"
        );
        let mut out = Vec::new();
        let zero = Request::NexthopReplace(Nexthop { id: 0, ..nh });
        assert!(matches!(
            zero.encode(1, &mut out),
            Err(NetlinkError::Invalid(_))
        ));
        Request::NexthopReplace(nh)
            .encode(9, &mut out)
            .expect("encode");
        // nlmsghdr (16 bytes), then struct nhmsg: family, scope, protocol.
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), 104, "RTM_NEWNEXTHOP");
        assert_eq!((out[16], out[18]), (AF_INET, 241));
    }

    #[test]
    fn ipv6_requests_describe_themselves_like_ip_commands() {
        let r = Request::RouteReplace6(
            Route6::new("fd10:1:2::/64".parse().expect("net"))
                .via("fd10:1:2::".parse().expect("ip"))
                .dev(4)
                .onlink(),
        );
        assert_eq!(
            r.to_string(),
            "ip -6 route replace fd10:1:2::/64 via fd10:1:2:: dev #4 onlink proto 241"
        );
        let f = Request::FdbReplace6(FdbEntry6::permanent(
            4,
            MacAddr([0x0e, 0, 0, 0, 0, 1]),
            "fd00::3".parse().expect("ip"),
        ));
        assert_eq!(
            f.to_string(),
            "bridge fdb replace 0e:00:00:00:00:01 dev #4 dst fd00::3 self permanent"
        );
        let mut out = Vec::new();
        r.encode(5, &mut out).expect("encode");
        // rtmsg follows the 16-byte header; its first byte is the family.
        assert_eq!(out[16], AF_INET6);
    }

    #[test]
    fn encoding_rejects_bad_names_and_vnis_without_panicking() {
        let mut out = Vec::new();
        let long = Request::LinkAdd {
            name: "a-name-that-is-too-long".into(),
            kind: LinkKind::Bridge,
        };
        assert!(matches!(
            long.encode(1, &mut out),
            Err(NetlinkError::Invalid(_))
        ));
        let vni = Request::LinkAdd {
            name: "vx".into(),
            kind: LinkKind::Vxlan(VxlanSpec::new("vx", 1 << 24)),
        };
        assert!(matches!(
            vni.encode(1, &mut out),
            Err(NetlinkError::Invalid(_))
        ));
        let no_mac = Request::NeighbourReplace(Neighbour {
            index: 1,
            ip: "10.0.0.1".parse().expect("ip"),
            mac: None,
            permanent: true,
        });
        assert!(no_mac.encode(1, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn encoded_messages_carry_length_seq_and_ack_flag() {
        let mut out = Vec::new();
        let r = Request::RouteDelete(Route::new("10.1.2.0/24".parse().expect("net")).dev(3));
        r.encode(77, &mut out).expect("encode");
        r.encode(78, &mut out).expect("encode");
        let len = u32::from_ne_bytes(out[0..4].try_into().expect("4")) as usize;
        assert_eq!(out.len(), 2 * len);
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().expect("4")), 77);
        assert_eq!(
            u32::from_ne_bytes(out[len + 8..len + 12].try_into().expect("4")),
            78
        );
        let flags = u16::from_ne_bytes(out[6..8].try_into().expect("2"));
        assert_ne!(u32::from(flags) & k::NLM_F_ACK, 0);
    }
}
