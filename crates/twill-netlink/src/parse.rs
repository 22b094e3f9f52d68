//! Decoding dump answers (neli messages) into our typed values.

use std::io::Cursor;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use linux_raw_sys::netlink as k;
use neli::consts::rtnl::{Iff, Ifla, Nda, Ntf, Nud, Rta, RtaType};
use neli::rtnl::{Ifaddrmsg, Ifinfomsg, Ndmsg, Rtattr, Rtmsg};
use neli::types::{Buffer, RtBuffer};
use neli::{FromBytesWithInput, Header};

use crate::request::{c16, c8, nh};
use crate::types::{
    Address, Address6, IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute, Link, MacAddr,
    VxlanInfo,
};

fn decode<T: FromBytesWithInput<Input = usize> + Header>(payload: &[u8]) -> Option<T> {
    T::from_bytes_with_input(&mut Cursor::new(payload), payload.len()).ok()
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn ipv4_of(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn ipv6_of(b: &[u8]) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// An IPv6 address only from an attribute of exactly 16 bytes (dumps of
/// `AF_BRIDGE` hold IPv4 and IPv6 remotes side by side).
fn exact_ipv6(b: &[u8]) -> Option<Ipv6Addr> {
    (b.len() == 16).then(|| ipv6_of(b)).flatten()
}

fn mac_of(b: &[u8]) -> Option<MacAddr> {
    let o: [u8; 6] = b.get(..6)?.try_into().ok()?;
    (b.len() == 6).then_some(MacAddr(o))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn find<T: RtaType>(attrs: &[Rtattr<T, Buffer>], ty: T) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|a| *a.rta_type() == ty)
        .map(|a| a.rta_payload().as_ref())
}

fn nested(attr: &Rtattr<Ifla, Buffer>) -> Vec<Rtattr<u16, Buffer>> {
    attr.get_attr_handle::<u16>()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default()
}

fn find_raw(attrs: &[Rtattr<u16, Buffer>], ty: u16) -> Option<&Rtattr<u16, Buffer>> {
    attrs.iter().find(|a| *a.rta_type() == ty)
}

pub(crate) fn link(payload: &[u8]) -> Option<Link> {
    let msg: Ifinfomsg = decode(payload)?;
    let attrs = msg.rtattrs().as_ref();
    let index = u32::try_from(*msg.ifi_index()).ok()?;
    let name = cstr(find(attrs, Ifla::Ifname)?);
    let mtu = find(attrs, Ifla::Mtu).and_then(u32_of).unwrap_or(0);
    let mac = find(attrs, Ifla::Address).and_then(mac_of);
    let master = find(attrs, Ifla::Master)
        .and_then(u32_of)
        .filter(|m| *m != 0);
    let mut kind = None;
    let mut vxlan = None;
    if let Some(info) = attrs.iter().find(|a| *a.rta_type() == Ifla::Linkinfo) {
        let inner = nested(info);
        kind =
            find_raw(&inner, c16(k::IFLA_INFO_KIND as u32)).map(|a| cstr(a.rta_payload().as_ref()));
        if kind.as_deref() == Some("vxlan") {
            if let Some(data) = find_raw(&inner, c16(k::IFLA_INFO_DATA as u32)) {
                let d: Vec<Rtattr<u16, Buffer>> = data
                    .get_attr_handle::<u16>()
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default();
                let get = |ty: u32| find_raw(&d, c16(ty)).map(|a| a.rta_payload().as_ref());
                vxlan = Some(VxlanInfo {
                    vni: get(k::IFLA_VXLAN_ID as u32).and_then(u32_of).unwrap_or(0),
                    local: get(k::IFLA_VXLAN_LOCAL as u32).and_then(ipv4_of),
                    local6: get(k::IFLA_VXLAN_LOCAL6 as u32).and_then(exact_ipv6),
                    port: get(k::IFLA_VXLAN_PORT as u32)
                        .and_then(|b| Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)))
                        .unwrap_or(0),
                    learning: get(k::IFLA_VXLAN_LEARNING as u32)
                        .and_then(|b| b.first().copied())
                        .is_some_and(|v| v != 0),
                    gbp: get(k::IFLA_VXLAN_GBP as u32).is_some(),
                    underlay: get(k::IFLA_VXLAN_LINK as u32)
                        .and_then(u32_of)
                        .filter(|u| *u != 0),
                });
            }
        }
    }
    Some(Link {
        index,
        name,
        kind,
        mtu,
        mac,
        up: msg.ifi_flags().contains(Iff::UP),
        master,
        vxlan,
    })
}

pub(crate) fn address(payload: &[u8]) -> Option<Address> {
    let msg: Ifaddrmsg = decode(payload)?;
    let attrs = msg.rtattrs().as_ref();
    let ip = find(attrs, neli::consts::rtnl::Ifa::Local)
        .or_else(|| find(attrs, neli::consts::rtnl::Ifa::Address))
        .and_then(ipv4_of)?;
    Some(Address {
        index: *msg.ifa_index(),
        addr: Ipv4Network::new(ip, *msg.ifa_prefixlen()).ok()?,
    })
}

pub(crate) fn neighbour<A: IpFamily>(payload: &[u8]) -> Option<IpNeighbour<A>> {
    let msg: Ndmsg = decode(payload)?;
    let attrs = msg.rtattrs().as_ref();
    let ip = find(attrs, Nda::Dst).and_then(A::from_attr)?;
    Some(IpNeighbour {
        index: u32::try_from(*msg.ndm_index()).ok()?,
        ip,
        mac: find(attrs, Nda::Lladdr).and_then(mac_of),
        permanent: msg.ndm_state().contains(Nud::PERMANENT),
    })
}

pub(crate) fn fdb<A: IpFamily>(payload: &[u8]) -> Option<IpFdbEntry<A>> {
    let msg: Ndmsg = decode(payload)?;
    if !msg.ndm_flags().contains(Ntf::SELF) {
        return None;
    }
    let attrs = msg.rtattrs().as_ref();
    Some(IpFdbEntry {
        index: u32::try_from(*msg.ndm_index()).ok()?,
        mac: find(attrs, Nda::Lladdr).and_then(mac_of)?,
        dst: A::fdb_remote(find(attrs, Nda::Dst))?,
        permanent: msg.ndm_state().contains(Nud::PERMANENT),
    })
}

pub(crate) fn route<A: IpFamily>(payload: &[u8]) -> Option<IpRoute<A>> {
    let msg: Rtmsg = decode(payload)?;
    if u8::from(*msg.rtm_type()) != c8(k::RTN_UNICAST as u32)
        || !is_family(*msg.rtm_family(), A::RT_FAMILY)
    {
        return None;
    }
    let attrs = msg.rtattrs().as_ref();
    let dst_ip = find(attrs, Rta::Dst)
        .and_then(A::from_attr)
        .unwrap_or(A::UNSPECIFIED);
    let table = find(attrs, Rta::Table)
        .and_then(u32_of)
        .unwrap_or_else(|| u32::from(u8::from(*msg.rtm_table())));
    let nh_id = Rta::from(c16(k::rtattr_type_t::RTA_NH_ID as u32));
    Some(IpRoute {
        dst: A::network(dst_ip, *msg.rtm_dst_len())?,
        // Through a nexthop object, these are the object's, as the kernel's
        // compatibility mode reports them (absent with it off).
        gateway: find(attrs, Rta::Gateway).and_then(A::from_attr),
        oif: find(attrs, Rta::Oif).and_then(u32_of),
        onlink: msg.rtm_flags().bits() & k::RTNH_F_ONLINK != 0,
        table,
        protocol: u8::from(*msg.rtm_protocol()),
        nexthop_id: find(attrs, nh_id).and_then(u32_of),
    })
}

/// A nexthop object from an `RTM_NEWNEXTHOP` dump message: `struct nhmsg`
/// then attributes. Read as family `A` whatever its family: the gateway of
/// another family is left out, so the object is never taken for one of
/// `A`'s while its id still counts.
pub(crate) fn nexthop<A: IpFamily>(payload: &[u8]) -> Option<IpNexthop<A>> {
    let header = payload.get(..nh::NHMSG_LEN)?;
    let (family, protocol) = (header[0], header[2]);
    let flags = u32_of(&header[4..8])?;
    let rest = &payload[nh::NHMSG_LEN..];
    let attrs: RtBuffer<u16, Buffer> =
        RtBuffer::from_bytes_with_input(&mut Cursor::new(rest), rest.len()).ok()?;
    let attrs = attrs.as_ref();
    let get = |ty: u16| find_raw(attrs, ty).map(|a| a.rta_payload().as_ref());
    let single = get(nh::NHA_GROUP).is_none() && get(nh::NHA_BLACKHOLE).is_none();
    let same_family = family == u8::from(A::RT_FAMILY);
    Some(IpNexthop {
        id: get(nh::NHA_ID).and_then(u32_of)?,
        gateway: get(nh::NHA_GATEWAY)
            .filter(|_| single && same_family)
            .and_then(A::from_attr),
        oif: get(nh::NHA_OIF).and_then(u32_of).filter(|_| single),
        onlink: flags & k::RTNH_F_ONLINK != 0,
        protocol,
    })
}

fn is_family(
    family: neli::consts::rtnl::RtAddrFamily,
    want: neli::consts::rtnl::RtAddrFamily,
) -> bool {
    u8::from(family) == u8::from(want)
}

pub(crate) fn address6(payload: &[u8]) -> Option<Address6> {
    let msg: Ifaddrmsg = decode(payload)?;
    if !is_family(*msg.ifa_family(), neli::consts::rtnl::RtAddrFamily::Inet6) {
        return None;
    }
    let attrs = msg.rtattrs().as_ref();
    let ip = find(attrs, neli::consts::rtnl::Ifa::Address)
        .or_else(|| find(attrs, neli::consts::rtnl::Ifa::Local))
        .and_then(exact_ipv6)?;
    Some(Address6 {
        index: *msg.ifa_index(),
        addr: Ipv6Network::new(ip, *msg.ifa_prefixlen()).ok()?,
    })
}
