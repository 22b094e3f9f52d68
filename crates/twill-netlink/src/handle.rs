//! The socket, batching and the `ip`-shaped sub-handles.

use std::os::fd::{AsRawFd, OwnedFd};

use neli::consts::rtnl::Rtm;
use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::parse;
use crate::request::{
    encode_dump, encode_get_link, encode_nexthop_dump, Request, AF_BRIDGE, AF_INET, AF_INET6,
};
use crate::types::{
    Address, Address6, FdbEntry, FdbEntry6, IpFamily, IpFdbEntry, IpNeighbour, IpNexthop, IpRoute,
    Link, LinkChange, LinkKind, Neighbour, Neighbour6, Nexthop, Nexthop6, Route, Route6, VxlanSpec,
};
use crate::NetlinkError;

#[allow(clippy::cast_possible_truncation)] // 2 fits
const NLMSG_ERROR: u16 = linux_raw_sys::netlink::NLMSG_ERROR as u16;
#[allow(clippy::cast_possible_truncation)] // 3 fits
const NLMSG_DONE: u16 = linux_raw_sys::netlink::NLMSG_DONE as u16;

/// Receive buffer we ask for (with `SO_RCVBUFFORCE` when root). Every ACK of a
/// batch is queued before we read any, so it must hold a whole batch's ACKs.
const WANTED_RCVBUF: usize = 32 << 20;
/// Kernel memory one queued ACK costs (skb truesize, rounded up generously).
const ACK_TRUESIZE: usize = 1280;
/// Default messages per `send`.
pub const DEFAULT_BATCH: usize = 1024;
const RECV_BUF: usize = 256 << 10;

/// What [`NetlinkHandle::execute`] returns: one result per request, in order.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// `results[i]` is the kernel's answer to request `i`.
    pub results: Vec<Result<(), NetlinkError>>,
}

impl BatchOutcome {
    /// Number of requests the kernel accepted.
    #[must_use]
    pub fn ok_count(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }

    /// The failures, with their request index.
    pub fn errors(&self) -> impl Iterator<Item = (usize, &NetlinkError)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }

    /// Fails with the first error that is not `EEXIST`/`ENOENT`-like; those count as success.
    ///
    /// # Errors
    /// The first error that is neither "exists" nor "not found".
    pub fn ok_ignoring_exists_and_missing(self) -> Result<(), NetlinkError> {
        match self
            .results
            .into_iter()
            .filter_map(Result::err)
            .find(|e| !e.is_exists() && !e.is_not_found())
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Fails with the first error of any kind.
    ///
    /// # Errors
    /// The first error.
    pub fn ok(self) -> Result<(), NetlinkError> {
        self.results.into_iter().collect()
    }
}

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that
/// created it. Synchronous; `Send`, so it can move to another thread (it keeps
/// talking to the namespace it was opened in).
#[derive(Debug)]
pub struct NetlinkHandle {
    fd: OwnedFd,
    seq: u32,
    batch: usize,
    buf: Vec<u8>,
}

fn sock_err(op: &'static str) -> impl Fn(Errno) -> NetlinkError {
    move |e| NetlinkError::Socket {
        op,
        source: std::io::Error::from(e),
    }
}

impl NetlinkHandle {
    /// Opens a socket in the current thread's network namespace, raising its
    /// receive buffer (`SO_RCVBUFFORCE` when permitted, else `SO_RCVBUF`) so a
    /// batch's ACKs fit.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn new() -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(sock_err("socket"))?;
        if setsockopt(&fd, sockopt::RcvBufForce, &WANTED_RCVBUF).is_err() {
            // Unprivileged: capped by net.core.rmem_max.
            let _ = setsockopt(&fd, sockopt::RcvBuf, &WANTED_RCVBUF);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &(4usize << 20)).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &(4usize << 20));
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err("bind"))?;
        let rcvbuf = nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).unwrap_or(212_992);
        let batch = (rcvbuf / ACK_TRUESIZE).clamp(16, DEFAULT_BATCH);
        Ok(Self {
            fd,
            seq: 1,
            batch,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Messages sent per `send(2)` (bounded by what the receive buffer can hold in ACKs).
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Sets the messages per `send(2)` (clamped to 1..=what the receive buffer allows).
    pub fn set_batch_size(&mut self, n: usize) {
        let rcvbuf = nix::sys::socket::getsockopt(&self.fd, sockopt::RcvBuf).unwrap_or(212_992);
        self.batch = n.clamp(1, (rcvbuf / ACK_TRUESIZE).max(1));
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// `ip link` operations.
    pub fn link(&mut self) -> LinkHandle<'_> {
        LinkHandle(self)
    }

    /// `ip addr` operations.
    pub fn address(&mut self) -> AddressHandle<'_> {
        AddressHandle(self)
    }

    /// `ip neigh` operations.
    pub fn neighbour(&mut self) -> NeighbourHandle<'_> {
        NeighbourHandle(self)
    }

    /// `bridge fdb` operations.
    pub fn fdb(&mut self) -> FdbHandle<'_> {
        FdbHandle(self)
    }

    /// `ip route` operations.
    pub fn route(&mut self) -> RouteHandle<'_> {
        RouteHandle(self)
    }

    /// `ip nexthop` operations (nexthop objects, Linux 5.3 and later).
    pub fn nexthop(&mut self) -> NexthopHandle<'_> {
        NexthopHandle(self)
    }

    /// Sends all `requests`, many per `send(2)`, each with `NLM_F_ACK` and
    /// its own sequence number, and maps every ACK back to its request.
    ///
    /// Requests are applied in order. A failed request does not stop the
    /// others. The outer `Err` is for socket failures only; kernel refusals are
    /// in [`BatchOutcome::results`].
    ///
    /// # Errors
    /// When sending or receiving fails (then nothing after the failed chunk was sent).
    pub fn execute(&mut self, requests: &[Request]) -> Result<BatchOutcome, NetlinkError> {
        let mut results: Vec<Option<Result<(), NetlinkError>>> = Vec::with_capacity(requests.len());
        results.resize_with(requests.len(), || None);
        let mut out = Vec::new();
        for (chunk_no, chunk) in requests.chunks(self.batch).enumerate() {
            let base = chunk_no * self.batch;
            out.clear();
            // seq -> request index
            let first_seq = self.seq.wrapping_add(1);
            let mut seqs = Vec::with_capacity(chunk.len());
            for (i, req) in chunk.iter().enumerate() {
                let seq = self.next_seq();
                match req.encode(seq, &mut out) {
                    Ok(()) => seqs.push((seq, base + i)),
                    Err(e) => results[base + i] = Some(Err(e)),
                }
            }
            if seqs.is_empty() {
                continue;
            }
            let _ = first_seq;
            self.send_all(&out)?;
            let mut pending = seqs.len();
            let lookup: std::collections::HashMap<u32, usize> = seqs.into_iter().collect();
            while pending > 0 {
                let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::ENOBUFS) => {
                        // ACKs were dropped: the requests may or may not have been applied.
                        for (_, &idx) in lookup.iter() {
                            if results[idx].is_none() {
                                results[idx] = Some(Err(NetlinkError::Kernel {
                                    request: requests[idx].to_string(),
                                    errno: Errno::ENOBUFS as i32,
                                }));
                            }
                        }
                        break;
                    }
                    Err(e) => return Err(sock_err("recv")(e)),
                };
                for frame in Frames::new(&self.buf[..n], "batch") {
                    let frame = frame?;
                    if frame.ty != NLMSG_ERROR {
                        continue;
                    }
                    if let Some(&idx) = lookup.get(&frame.seq) {
                        if results[idx].is_none() {
                            pending -= 1;
                            results[idx] = Some(if frame.errno == 0 {
                                Ok(())
                            } else {
                                Err(NetlinkError::Kernel {
                                    request: requests[idx].to_string(),
                                    errno: -frame.errno,
                                })
                            });
                        }
                    }
                }
            }
        }
        Ok(BatchOutcome {
            results: results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect(),
        })
    }

    /// Executes one request and returns its result.
    ///
    /// # Errors
    /// The kernel's refusal (with errno) or a socket failure.
    pub fn execute_one(&mut self, request: &Request) -> Result<(), NetlinkError> {
        let outcome = self.execute(std::slice::from_ref(request))?;
        outcome.ok()
    }

    fn send_all(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        loop {
            match send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(sock_err("send")(e)),
            }
        }
    }

    /// Sends one request that is answered by zero or more messages then
    /// `NLMSG_DONE` (dump) or an ACK/error, and hands each message's payload
    /// to `each` as it arrives, borrowed from the receive buffer: a dump of
    /// 10,000 routes is parsed into typed values without first holding
    /// 10,000 copies of the raw messages.
    fn transact(
        &mut self,
        bytes: &[u8],
        seq: u32,
        what: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), NetlinkError> {
        self.send_all(bytes)?;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sock_err("recv")(e)),
            };
            for frame in Frames::new(&self.buf[..n], what) {
                let frame = frame?;
                if frame.seq != seq {
                    continue;
                }
                match frame.ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR if frame.errno == 0 => return Ok(()),
                    NLMSG_ERROR => {
                        return Err(NetlinkError::Kernel {
                            request: what.to_string(),
                            errno: -frame.errno,
                        })
                    }
                    _ => each(frame.payload),
                }
            }
        }
    }

    /// Dumps `ty` of `family` and keeps what `parse` makes of each message.
    fn dump<T>(
        &mut self,
        ty: Rtm,
        family: u8,
        what: &str,
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        encode_dump(ty, family, seq, &mut out)?;
        let mut parsed = Vec::new();
        self.transact(&out, seq, what, |p| parsed.extend(parse(p)))?;
        Ok(parsed)
    }

    /// The neighbours of family `A`, of one device when `index` is given
    /// (`what` names the dump in errors).
    fn neighbours<A: IpFamily>(
        &mut self,
        index: Option<u32>,
        what: &str,
    ) -> Result<Vec<IpNeighbour<A>>, NetlinkError> {
        self.dump(Rtm::Getneigh, u8::from(A::RT_FAMILY), what, |p| {
            parse::neighbour(p).filter(|n| index.is_none_or(|i| n.index == i))
        })
    }

    /// The `self` FDB entries in family `A`'s list, of one device when
    /// `index` is given: one `AF_BRIDGE` dump holds both families' remotes.
    fn fdb_entries<A: IpFamily>(
        &mut self,
        index: Option<u32>,
    ) -> Result<Vec<IpFdbEntry<A>>, NetlinkError> {
        self.dump(Rtm::Getneigh, AF_BRIDGE, "bridge fdb show", |p| {
            parse::fdb(p).filter(|e| index.is_none_or(|i| e.index == i))
        })
    }

    /// Every nexthop object, read as family `A` ([`IpNexthop`] says how).
    fn nexthops<A: IpFamily>(&mut self) -> Result<Vec<IpNexthop<A>>, NetlinkError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        encode_nexthop_dump(seq, &mut out)?;
        let mut v = Vec::new();
        self.transact(&out, seq, "ip nexthop show", |p| {
            v.extend(parse::nexthop(p));
        })?;
        Ok(v)
    }

    /// The unicast routes of family `A` in `table` (all tables when `None`).
    fn routes<A: IpFamily>(
        &mut self,
        table: Option<u32>,
        what: &str,
    ) -> Result<Vec<IpRoute<A>>, NetlinkError> {
        self.dump(Rtm::Getroute, u8::from(A::RT_FAMILY), what, |p| {
            parse::route(p).filter(|r| table.is_none_or(|t| r.table == t))
        })
    }
}

/// One netlink message of a received datagram, borrowed from it.
struct Frame<'a> {
    seq: u32,
    ty: u16,
    /// `NLMSG_ERROR`'s error (negative errno, 0 for an ACK); 0 otherwise.
    errno: i32,
    /// What follows the header (empty for `NLMSG_ERROR`).
    payload: &'a [u8],
}

/// The messages of a datagram, in order. The 16-byte header is read here
/// rather than by neli, whose decoding copies every payload into a buffer of
/// its own (30,000 allocations for one full pass at 10,000 peers).
struct Frames<'a> {
    rest: &'a [u8],
    what: &'a str,
}

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;

impl<'a> Frames<'a> {
    fn new(buf: &'a [u8], what: &'a str) -> Self {
        Frames { rest: buf, what }
    }

    fn malformed(&mut self, reason: String) -> Option<Result<Frame<'a>, NetlinkError>> {
        self.rest = &[];
        Some(Err(NetlinkError::Decode {
            request: self.what.to_string(),
            reason,
        }))
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let left = self.rest.len();
        let (Some(header), Some(len)) = (
            self.rest.get(..NLMSG_HDRLEN),
            self.rest.get(..4).and_then(ne_u32),
        ) else {
            return self.malformed(format!("{left} bytes left, less than a message header"));
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > left {
            return self.malformed(format!("message length {len} with {left} bytes left"));
        }
        let ty = header.get(4..6).and_then(ne_u16).unwrap_or(0);
        let seq = header.get(8..12).and_then(ne_u32).unwrap_or(0);
        let body = self.rest.get(NLMSG_HDRLEN..len).unwrap_or_default();
        // Messages are 4-byte aligned; the last one may end without padding.
        self.rest = self.rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        let (errno, payload) = if ty == NLMSG_ERROR {
            match body.get(..4).and_then(ne_i32) {
                Some(errno) => (errno, &[][..]),
                None => return self.malformed(format!("an error message of {len} bytes")),
            }
        } else {
            (0, body)
        };
        Some(Ok(Frame {
            seq,
            ty,
            errno,
            payload,
        }))
    }
}

fn ne_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.try_into().ok()?))
}

fn ne_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

fn ne_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.try_into().ok()?))
}

/// `ip link`: create, change, look up, list and delete links.
#[derive(Debug)]
pub struct LinkHandle<'a>(&'a mut NetlinkHandle);

impl LinkHandle<'_> {
    /// Creates a link (`ip link add`); `EEXIST` if the name is taken.
    ///
    /// # Errors
    /// The kernel's refusal, an invalid name, or a socket failure.
    pub fn add(&mut self, name: &str, kind: LinkKind) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::LinkAdd {
            name: name.to_string(),
            kind,
        })
    }

    /// Creates a VXLAN device from `spec` and returns it as read back.
    ///
    /// # Errors
    /// As [`LinkHandle::add`].
    pub fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        self.add(&spec.name, LinkKind::Vxlan(spec.clone()))?;
        self.get_by_name(&spec.name)
    }

    /// Creates a bridge.
    ///
    /// # Errors
    /// As [`LinkHandle::add`].
    pub fn add_bridge(&mut self, name: &str) -> Result<Link, NetlinkError> {
        self.add(name, LinkKind::Bridge)?;
        self.get_by_name(name)
    }

    /// Creates a veth pair `name` ↔ `peer`.
    ///
    /// # Errors
    /// As [`LinkHandle::add`].
    pub fn add_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        self.add(
            name,
            LinkKind::Veth {
                peer: peer.to_string(),
            },
        )
    }

    /// Applies a change (`ip link set`).
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn set(&mut self, change: LinkChange) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::LinkSet(change))
    }

    /// `ip link set dev INDEX up`.
    ///
    /// # Errors
    /// As [`LinkHandle::set`].
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set(LinkChange {
            index,
            up: Some(true),
            ..LinkChange::default()
        })
    }

    /// `ip link set dev INDEX down`.
    ///
    /// # Errors
    /// As [`LinkHandle::set`].
    pub fn set_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set(LinkChange {
            index,
            up: Some(false),
            ..LinkChange::default()
        })
    }

    /// `ip link set dev INDEX mtu MTU`.
    ///
    /// # Errors
    /// As [`LinkHandle::set`].
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set(LinkChange {
            index,
            mtu: Some(mtu),
            ..LinkChange::default()
        })
    }

    /// `ip link set dev INDEX address MAC`.
    ///
    /// # Errors
    /// As [`LinkHandle::set`].
    pub fn set_mac(&mut self, index: u32, mac: crate::MacAddr) -> Result<(), NetlinkError> {
        self.set(LinkChange {
            index,
            mac: Some(mac),
            ..LinkChange::default()
        })
    }

    /// `ip link set dev INDEX master MASTER`.
    ///
    /// # Errors
    /// As [`LinkHandle::set`].
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set(LinkChange {
            index,
            master: Some(master),
            ..LinkChange::default()
        })
    }

    /// `ip link del dev INDEX`.
    ///
    /// # Errors
    /// The kernel's refusal (`ENODEV` if gone) or a socket failure.
    pub fn delete(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::LinkDelete(index))
    }

    fn get(&mut self, index: Option<u32>, name: Option<&str>) -> Result<Link, NetlinkError> {
        let what = match (index, name) {
            (_, Some(n)) => format!("ip link show {n}"),
            (Some(i), None) => format!("ip link show #{i}"),
            (None, None) => return Err(NetlinkError::Invalid("link lookup without key".into())),
        };
        let seq = self.0.next_seq();
        let mut out = Vec::new();
        encode_get_link(index, name, seq, &mut out)?;
        let mut link = None;
        match self.0.transact(&out, seq, &what, |p| {
            if link.is_none() {
                link = parse::link(p);
            }
        }) {
            Err(e) if e.is_not_found() => return Err(NetlinkError::NotFound(what)),
            other => other?,
        }
        link.ok_or(NetlinkError::NotFound(what))
    }

    /// Looks a link up by name.
    ///
    /// # Errors
    /// [`NetlinkError::NotFound`] (see [`NetlinkError::is_not_found`]) when absent.
    pub fn get_by_name(&mut self, name: &str) -> Result<Link, NetlinkError> {
        self.get(None, Some(name))
    }

    /// Looks a link up by index.
    ///
    /// # Errors
    /// [`NetlinkError::NotFound`] when absent.
    pub fn get_by_index(&mut self, index: u32) -> Result<Link, NetlinkError> {
        self.get(Some(index), None)
    }

    /// Looks a link up by name, `None` when absent.
    ///
    /// # Errors
    /// Socket failures.
    pub fn find(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        match self.get_by_name(name) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists all links (`ip -d link show`).
    ///
    /// # Errors
    /// Socket failures.
    pub fn list(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.0.dump(Rtm::Getlink, 0, "ip link show", parse::link)
    }
}

/// `ip addr`: IPv4 addresses on devices.
#[derive(Debug)]
pub struct AddressHandle<'a>(&'a mut NetlinkHandle);

impl AddressHandle<'_> {
    /// `ip addr add` (`EEXIST` if present).
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn add(&mut self, addr: Address) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::AddressAdd(addr))
    }

    /// `ip addr del`.
    ///
    /// # Errors
    /// The kernel's refusal (`EADDRNOTAVAIL` if absent) or a socket failure.
    pub fn delete(&mut self, addr: Address) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::AddressDelete(addr))
    }

    /// Makes `addr` the only IPv4 address of its device: adds it if
    /// missing, deletes every other one (flannel's
    /// `EnsureV4AddressOnLink`, for a device that carries one `/32`).
    /// Returns whether anything changed; a second call returns `false`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn set_only(&mut self, addr: Address) -> Result<bool, NetlinkError> {
        let have = self.list(Some(addr.index))?;
        let mut changed = false;
        for a in have.iter().filter(|a| **a != addr) {
            self.delete(*a)?;
            changed = true;
        }
        if !have.contains(&addr) {
            match self.add(addr) {
                Err(e) if !e.is_exists() => return Err(e),
                _ => changed = true,
            }
        }
        Ok(changed)
    }

    /// Lists IPv4 addresses, of one device when `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list(&mut self, index: Option<u32>) -> Result<Vec<Address>, NetlinkError> {
        self.0.dump(Rtm::Getaddr, AF_INET, "ip -4 addr show", |p| {
            parse::address(p).filter(|a| index.is_none_or(|i| a.index == i))
        })
    }

    /// `ip -6 addr add ADDR dev INDEX nodad` (`EEXIST` if present).
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn add6(&mut self, addr: Address6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::AddressAdd6(addr))
    }

    /// `ip -6 addr del`.
    ///
    /// # Errors
    /// The kernel's refusal (`EADDRNOTAVAIL` if absent) or a socket failure.
    pub fn delete6(&mut self, addr: Address6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::AddressDelete6(addr))
    }

    /// Makes `addr` the only IPv6 address of its device besides the
    /// kernel's link-local ones (`fe80::/10`, which NDP needs): flannel's
    /// `EnsureV6AddressOnLink`. Returns whether anything changed.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn set_only6(&mut self, addr: Address6) -> Result<bool, NetlinkError> {
        let have = self.list6(Some(addr.index))?;
        let mut changed = false;
        for a in have
            .iter()
            .filter(|a| **a != addr && !a.addr.ip().is_unicast_link_local())
        {
            self.delete6(*a)?;
            changed = true;
        }
        if !have.contains(&addr) {
            match self.add6(addr) {
                Err(e) if !e.is_exists() => return Err(e),
                _ => changed = true,
            }
        }
        Ok(changed)
    }

    /// Lists IPv6 addresses (link-local ones included), of one device when
    /// `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list6(&mut self, index: Option<u32>) -> Result<Vec<Address6>, NetlinkError> {
        self.0.dump(Rtm::Getaddr, AF_INET6, "ip -6 addr show", |p| {
            parse::address6(p).filter(|a| index.is_none_or(|i| a.index == i))
        })
    }
}

/// `ip neigh`: IPv4 neighbour (ARP) entries.
#[derive(Debug)]
pub struct NeighbourHandle<'a>(&'a mut NetlinkHandle);

impl NeighbourHandle<'_> {
    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace(&mut self, n: Neighbour) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NeighbourReplace(n))
    }

    /// `ip neigh del IP dev INDEX`.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` if absent) or a socket failure.
    pub fn delete(&mut self, n: Neighbour) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NeighbourDelete(n))
    }

    /// Dumps IPv4 neighbours, of one device when `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>, NetlinkError> {
        self.0.neighbours(index, "ip -4 neigh show")
    }

    /// `ip -6 neigh replace IP lladdr MAC dev INDEX nud permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace6(&mut self, n: Neighbour6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NeighbourReplace6(n))
    }

    /// `ip -6 neigh del IP dev INDEX`.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` if absent) or a socket failure.
    pub fn delete6(&mut self, n: Neighbour6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NeighbourDelete6(n))
    }

    /// Dumps IPv6 neighbours (NDP), of one device when `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list6(&mut self, index: Option<u32>) -> Result<Vec<Neighbour6>, NetlinkError> {
        self.0.neighbours(index, "ip -6 neigh show")
    }
}

/// `bridge fdb`: forwarding entries on a device (`self`).
#[derive(Debug)]
pub struct FdbHandle<'a>(&'a mut NetlinkHandle);

impl FdbHandle<'_> {
    /// `bridge fdb append MAC dev INDEX dst IP self permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn append(&mut self, e: FdbEntry) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbAppend(e))
    }

    /// `bridge fdb replace MAC dev INDEX dst IP self permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace(&mut self, e: FdbEntry) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbReplace(e))
    }

    /// `bridge fdb del MAC dev INDEX [dst IP] self`.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` if absent) or a socket failure.
    pub fn delete(&mut self, e: FdbEntry) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbDelete(e))
    }

    /// Dumps `self` FDB entries, of one device when `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list(&mut self, index: Option<u32>) -> Result<Vec<FdbEntry>, NetlinkError> {
        self.0.fdb_entries(index)
    }

    /// `bridge fdb append MAC dev INDEX dst IP6 self permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn append6(&mut self, e: FdbEntry6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbAppend6(e))
    }

    /// `bridge fdb replace MAC dev INDEX dst IP6 self permanent`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace6(&mut self, e: FdbEntry6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbReplace6(e))
    }

    /// `bridge fdb del MAC dev INDEX [dst IP6] self`.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` if absent) or a socket failure.
    pub fn delete6(&mut self, e: FdbEntry6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::FdbDelete6(e))
    }

    /// Dumps `self` FDB entries with an IPv6 remote, of one device when
    /// `index` is given.
    ///
    /// # Errors
    /// Socket failures.
    pub fn list6(&mut self, index: Option<u32>) -> Result<Vec<FdbEntry6>, NetlinkError> {
        self.0.fdb_entries(index)
    }
}

/// `ip route`: IPv4 unicast routes.
#[derive(Debug)]
pub struct RouteHandle<'a>(&'a mut NetlinkHandle);

impl RouteHandle<'_> {
    /// `ip route replace ...`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace(&mut self, r: Route) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::RouteReplace(r))
    }

    /// `ip route del ...`.
    ///
    /// # Errors
    /// The kernel's refusal (`ESRCH` if absent) or a socket failure.
    pub fn delete(&mut self, r: Route) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::RouteDelete(r))
    }

    /// Dumps IPv4 unicast routes of `table` (all tables when `None`).
    ///
    /// # Errors
    /// Socket failures.
    pub fn list(&mut self, table: Option<u32>) -> Result<Vec<Route>, NetlinkError> {
        self.0.routes(table, "ip route show")
    }

    /// `ip -6 route replace ...`.
    ///
    /// # Errors
    /// The kernel's refusal or a socket failure.
    pub fn replace6(&mut self, r: Route6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::RouteReplace6(r))
    }

    /// `ip -6 route del ...`.
    ///
    /// # Errors
    /// The kernel's refusal (`ESRCH` if absent) or a socket failure.
    pub fn delete6(&mut self, r: Route6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::RouteDelete6(r))
    }

    /// Dumps IPv6 unicast routes of `table` (all tables when `None`).
    ///
    /// # Errors
    /// Socket failures.
    pub fn list6(&mut self, table: Option<u32>) -> Result<Vec<Route6>, NetlinkError> {
        self.0.routes(table, "ip -6 route show")
    }
}

/// `ip nexthop`: nexthop objects, which routes name by id (`nhid`).
#[derive(Debug)]
pub struct NexthopHandle<'a>(&'a mut NetlinkHandle);

impl NexthopHandle<'_> {
    /// `ip nexthop replace id ID via GW dev OIF [onlink] proto P`.
    ///
    /// # Errors
    /// The kernel's refusal (`EOPNOTSUPP` without nexthop objects) or a
    /// socket failure.
    pub fn replace(&mut self, n: Nexthop) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NexthopReplace(n))
    }

    /// `ip nexthop del id ID`; the kernel deletes the routes through it with it.
    ///
    /// # Errors
    /// The kernel's refusal (`ENOENT` if absent) or a socket failure.
    pub fn delete(&mut self, n: Nexthop) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NexthopDelete(n))
    }

    /// Dumps every nexthop object, read as IPv4 ([`IpNexthop`] says how
    /// those of IPv6, groups and blackholes read).
    ///
    /// # Errors
    /// The kernel's refusal (`EOPNOTSUPP` from a kernel without nexthop
    /// objects: how support is detected) or a socket failure.
    pub fn list(&mut self) -> Result<Vec<Nexthop>, NetlinkError> {
        self.0.nexthops()
    }

    /// `ip -6 nexthop replace id ID via GW dev OIF [onlink] proto P`.
    ///
    /// # Errors
    /// As [`Self::replace`].
    pub fn replace6(&mut self, n: Nexthop6) -> Result<(), NetlinkError> {
        self.0.execute_one(&Request::NexthopReplace6(n))
    }

    /// Dumps every nexthop object, read as IPv6.
    ///
    /// # Errors
    /// As [`Self::list`].
    pub fn list6(&mut self) -> Result<Vec<Nexthop6>, NetlinkError> {
        self.0.nexthops()
    }

    /// Every nexthop object read as family `A`, for code written once over
    /// [`IpFamily`].
    ///
    /// # Errors
    /// As [`Self::list`].
    pub fn list_as<A: IpFamily>(&mut self) -> Result<Vec<IpNexthop<A>>, NetlinkError> {
        self.0.nexthops()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod frame_tests {
    use super::*;

    fn message(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn frames_borrow_payloads_and_read_errors() {
        let mut buf = message(24, 7, &[1, 2, 3, 4, 5]);
        buf.extend_from_slice(&[0; 3]); // padding to 4 bytes
        buf.extend(message(NLMSG_ERROR, 8, &(-17i32).to_ne_bytes()));
        buf.extend(message(NLMSG_DONE, 9, &0i32.to_ne_bytes()));
        let frames: Vec<_> = Frames::new(&buf, "t").map(Result::unwrap).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!((frames[0].seq, frames[0].ty), (7, 24));
        assert_eq!(frames[0].payload, &[1, 2, 3, 4, 5]);
        assert_eq!((frames[1].ty, frames[1].errno), (NLMSG_ERROR, -17));
        assert_eq!((frames[2].seq, frames[2].errno), (9, 0));
    }

    #[test]
    fn truncated_or_lying_lengths_are_decode_errors_not_panics() {
        let good = message(24, 1, &[0; 8]);
        for cut in 0..good.len() {
            let bad = &good[..cut];
            let out: Vec<_> = Frames::new(bad, "t").collect();
            assert!(cut == 0 || matches!(out.as_slice(), [Err(NetlinkError::Decode { .. })]));
        }
        let mut short = good.clone();
        short[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(
            Frames::new(&short, "t").next(),
            Some(Err(NetlinkError::Decode { .. }))
        ));
        let error_without_errno = message(NLMSG_ERROR, 1, &[]);
        assert!(matches!(
            Frames::new(&error_without_errno, "t").next(),
            Some(Err(NetlinkError::Decode { .. }))
        ));
    }
}
