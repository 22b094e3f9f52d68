//! Typed, batched rtnetlink for twill's kernel dataplane, over [`neli`] 0.7.
//!
//! A [`NetlinkHandle`] owns one `NETLINK_ROUTE` socket in the network
//! namespace of the thread that created it, and exposes operations shaped
//! like `ip` and `bridge`:
//!
//! | handle | like |
//! | --- | --- |
//! | [`NetlinkHandle::link`] | `ip link add/set/show/del` (VXLAN, bridge, veth, dummy) |
//! | [`NetlinkHandle::address`] | `ip addr add/del/show` |
//! | [`NetlinkHandle::neighbour`] | `ip neigh replace/del/show` (`nud permanent`) |
//! | [`NetlinkHandle::fdb`] | `bridge fdb append/replace/del/show ... self` |
//! | [`NetlinkHandle::route`] | `ip route replace/del/show` (gateway, onlink, table, protocol, `nhid`) |
//! | [`NetlinkHandle::nexthop`] | `ip nexthop replace/del/show` (nexthop objects: id, gateway, device, onlink, protocol) |
//!
//! Each IPv4 operation has an IPv6 twin with a `6` suffix ([`Address6`],
//! [`Neighbour6`], [`FdbEntry6`] (IPv6 remote), [`Route6`]), batched by the
//! same [`NetlinkHandle::execute`]; a VXLAN device encapsulates in IPv6 when
//! its [`VxlanSpec::local6`] is set. Neighbours, FDB entries and routes are
//! one type each over the family ([`IpNeighbour`], [`IpFdbEntry`],
//! [`IpRoute`] of an [`IpFamily`]), so code about them can be written once
//! for both (the `Request::neighbour_replace`-style constructors pick the
//! family's request).
//!
//! Many writes go through [`NetlinkHandle::execute`]: up to
//! [`NetlinkHandle::batch_size`] requests are serialised into one buffer per
//! `send(2)`, each with `NLM_F_ACK` and its own sequence number; every ACK is
//! collected and mapped back to its request, keeping the errno
//! ([`NetlinkError::is_exists`], [`NetlinkError::is_not_found`]). The
//! receive buffer is raised (`SO_RCVBUFFORCE` as root) so a whole batch of
//! ACKs fits. Programming 10,000 peers is a handful of `send`s, not 30,000
//! round trips.
//!
//! Routes we create carry [`TWILL_RTPROT`] so reconcilers can tell ours from
//! everyone else's.
//!
//! This crate does IO (netlink syscalls) and nothing else: no clocks, no
//! threads, no async. Writes need `CAP_NET_ADMIN`.
//!
//! ```no_run
//! use twill_netlink::{NetlinkHandle, Neighbour, FdbEntry, Route, Request, VxlanSpec, MacAddr};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut nl = NetlinkHandle::new()?;
//! let mut spec = VxlanSpec::new("flannel.1", 1);
//! spec.local = Some("10.0.0.2".parse()?);
//! spec.port = Some(8472);
//! let dev = nl.link().add_vxlan(&spec)?;
//! nl.link().set_up(dev.index)?;
//!
//! let mac: MacAddr = "6e:af:8f:41:72:26".parse()?;
//! let gw = "10.244.1.0".parse()?;
//! let outcome = nl.execute(&[
//!     Request::NeighbourReplace(Neighbour::permanent(dev.index, gw, mac)),
//!     Request::FdbAppend(FdbEntry::permanent(dev.index, mac, "10.0.0.3".parse()?)),
//!     Request::RouteReplace(Route::new("10.244.1.0/24".parse()?).via(gw).dev(dev.index).onlink()),
//! ])?;
//! outcome.ok_ignoring_exists_and_missing()?;
//! # Ok(()) }
//! ```
//!
//! # What neli 0.7 lacked
//!
//! Taken from `linux-raw-sys` (or, where even that lacks it, written here with
//! the header it comes from):
//! - all `IFLA_VXLAN_*` attributes (`ID`, `LOCAL`, `LOCAL6`, `PORT`, `LEARNING`, `GBP`, `LINK`),
//!   `IFLA_INFO_DATA` nesting for them;
//! - `RTNH_F_ONLINK` (neli's `RtmF` has no `ONLINK`);
//! - `AF_BRIDGE` (neli's `RtAddrFamily` has no `Bridge`);
//! - `NLMSG_ERROR` / `NLMSG_DONE` as plain numbers, `RT_TABLE_MAIN` as `u32`;
//! - `VETH_INFO_PEER` (`<linux/veth.h>`; in neither crate: the value 1 is written here);
//! - `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` (neli only sets `SO_RCVBUF`, capped by
//!   `rmem_max`): we open the socket with `nix` and use neli for messages only;
//! - any route protocol beyond `static` (`Rtprot::UnrecognizedConst` carries ours);
//! - nexthop objects: `RTM_*NEXTHOP` and `RTA_NH_ID` come from
//!   `linux-raw-sys` as numbers (`Rtm`/`Rta` carry them as unrecognised
//!   constants); `struct nhmsg` and `NHA_*` (`<linux/nexthop.h>`) are in
//!   neither crate and are written here, the attributes built as the VXLAN
//!   ones are (raw `u16` types).

mod error;
mod handle;
mod parse;
mod request;
mod types;

pub use error::NetlinkError;
pub use handle::{
    AddressHandle, BatchOutcome, FdbHandle, LinkHandle, NeighbourHandle, NetlinkHandle,
    NexthopHandle, RouteHandle, DEFAULT_BATCH,
};
pub use request::Request;
pub use types::{
    Address, Address6, FdbEntry, FdbEntry6, IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute,
    Link, LinkChange, LinkKind, MacAddr, Neighbour, Neighbour6, Nexthop, Nexthop6, Route, Route6,
    VxlanInfo, VxlanSpec, LINUX_VXLAN_DEFAULT_PORT, MAIN_TABLE, TWILL_RTPROT,
};
