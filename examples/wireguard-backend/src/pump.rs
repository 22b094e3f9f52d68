//! The userspace WireGuard data path: packets between the TUN device and
//! UDP port 51820, through one boringtun [`Tunn`] per peer.
//!
//! It is built for throughput the way wireguard-go and Tailscale are:
//! * the TUN device speaks `IFF_VNET_HDR` with TCP (and UDP) segmentation
//!   offload, so one read returns a TSO super-packet of up to 64 KiB that
//!   tun-rs splits into MTU-size packets, and one write takes packets that
//!   tun-rs coalesced back (GRO) into one;
//! * the UDP socket sends many ciphertexts in one `sendmsg` (UDP GSO,
//!   `UDP_SEGMENT`; grouped by `pump::batch`) and receives many per `recvmmsg`,
//!   coalesced by the kernel (UDP GRO); quinn-udp does both;
//! * the TUN is multi-queue, with one queue, one `SO_REUSEPORT` socket and
//!   one pair of tasks per worker, on a runtime of their own so the crypto
//!   never runs on the agent's threads.
//!
//! Each worker runs two tasks:
//! * TUN → UDP: read a batch, find each packet's peer (longest prefix),
//!   `encapsulate` into the batch buffer, send each run of equal-size
//!   ciphertexts to one peer as one GSO send;
//! * UDP → TUN: receive a batch, split each coalesced datagram at its
//!   stride, find its peer (a handshake initiation by the sender's static
//!   key, anything else by our receiver index), `decapsulate`, keep the
//!   packet if its source is in that peer's subnet (WireGuard's "allowed
//!   IPs"), send handshake replies and queued packets, write the batch.
//!
//! A timer task runs `update_timers` for every peer every [`TIMER_TICK`]
//! (handshake retries, rekeying, persistent keepalive). Where the kernel
//! lacks an offload, the path falls back to one packet per syscall for it.
//!
//! The peer table is replaced by [`Pump::set_peers`]; a peer whose key,
//! subnet and endpoint are unchanged keeps its session.

mod batch;

use std::collections::{BTreeMap, HashMap};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use ipnetwork::Ipv4Network;
use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use self::batch::{GsoBatch, Placement, MAX_GSO_BYTES};
use crate::keys::{encode_key, KeyPair};

/// How often the WireGuard timers run (boringtun's device uses 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(200);
/// Largest packet read from the TUN or the socket.
const MAX_PACKET: usize = 65_535;
/// Room for the WireGuard header and tag, and for a handshake message.
const OUT_BUFFER: usize = MAX_PACKET + 148;
/// UDP socket buffers: about 2,800 full-size datagrams.
const UDP_BUFFER: usize = 4 << 20;
/// Handshakes per second before cookies are demanded (boringtun's default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Receive buffers per `recvmmsg`, each big enough for a GRO-coalesced
/// datagram (up to 64 KiB).
const RX_SLOTS: usize = 8;
/// Most workers (TUN queues): past the core count they only add threads.
pub const MAX_QUEUES: usize = 8;

/// How to open the data path.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// TUN device name.
    pub device: String,
    /// UDP port, bound on every address.
    pub port: u16,
    /// Our static key pair.
    pub keys: KeyPair,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
    /// Pre-shared key mixed into every handshake.
    pub psk: Option<[u8; 32]>,
    /// Workers, each with a TUN queue and a socket (1 to [`MAX_QUEUES`]).
    pub queues: usize,
    /// Ask for the TUN offloads (TSO/USO out, GRO in). Off: one packet per
    /// read and write, for a kernel whose offloads misbehave.
    pub tun_offload: bool,
}

/// What the kernel granted: the offloads and queues in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datapath {
    /// TUN queues (= workers).
    pub queues: usize,
    /// `IFF_VNET_HDR` with TSO on the TUN device.
    pub tun_offload: bool,
    /// Datagrams per UDP send (1: no GSO).
    pub udp_gso_segments: usize,
    /// Datagrams the kernel may coalesce per receive (1: no GRO).
    pub udp_gro_segments: usize,
}

/// A peer as the backend wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Its subnet: routed to it, and the only sources accepted from it.
    pub subnet: Ipv4Network,
    /// Where to send its packets (`PublicIP:port`).
    pub endpoint: SocketAddr,
}

/// What [`Pump::set_peers`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers added (or re-created because their subnet or endpoint changed).
    pub added: usize,
    /// Peers removed.
    pub removed: usize,
}

/// Counters of the data path, for tests and metrics.
#[derive(Debug, Default)]
pub struct PumpStats {
    /// Packets read from the TUN with no peer for their destination.
    pub no_route: AtomicU64,
    /// Datagrams that matched no peer.
    pub unknown_peer: AtomicU64,
    /// Decrypted packets dropped because their source is not the peer's subnet.
    pub bad_source: AtomicU64,
    /// Datagrams sent to the network.
    pub sent: AtomicU64,
    /// Packets written to the TUN (before GRO coalesces them).
    pub received: AtomicU64,
    /// UDP sends (one per GSO batch).
    pub udp_sends: AtomicU64,
    /// TUN reads that returned packets.
    pub tun_reads: AtomicU64,
}

struct PeerState {
    tunn: Tunn,
    endpoint: SocketAddr,
}

struct Peer {
    config: PeerConfig,
    index: u32,
    state: Mutex<PeerState>,
}

impl Peer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Peers by our session index, by key, and by subnet (longest prefix first).
#[derive(Default)]
struct PeerTable {
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_prefix: BTreeMap<std::cmp::Reverse<u8>, HashMap<Ipv4Addr, Arc<Peer>>>,
}

impl PeerTable {
    fn route(&self, dst: Ipv4Addr) -> Option<&Arc<Peer>> {
        self.by_prefix.iter().find_map(|(len, nets)| {
            let net = Ipv4Network::new(dst, len.0).ok()?.network();
            nets.get(&net)
        })
    }
}

struct Shared {
    keys: KeyPair,
    keepalive: Option<u16>,
    psk: Option<[u8; 32]>,
    table: RwLock<PeerTable>,
    next_index: AtomicU32,
    limiter: Arc<RateLimiter>,
    stats: PumpStats,
}

impl Shared {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, PeerTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One worker's UDP socket and its quinn-udp state (GSO/GRO, batching).
struct Socket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    /// Sends `contents` to `to` as datagrams of `segment` bytes (the last
    /// may be shorter) in one GSO send.
    async fn send_segments(
        &self,
        contents: &[u8],
        to: SocketAddr,
        segment: usize,
    ) -> std::io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        // quinn-udp logs and swallows the errors a datagram protocol
        // retries anyway (and turns GSO off where the kernel refuses it);
        // only a full socket buffer comes back, and we wait for room.
        self.io
            .async_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), &transmit)
            })
            .await
    }
}

/// The running data path; its tasks stop when it is dropped.
pub struct Pump {
    shared: Arc<Shared>,
    control: Arc<Socket>,
    datapath: Datapath,
    tasks: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("peers", &self.shared.table().by_key.len())
            .field("datapath", &self.datapath)
            .finish_non_exhaustive()
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime may block, which an async caller must not.
            rt.shutdown_background();
        }
    }
}

/// The default number of workers: one per core, at most [`MAX_QUEUES`].
#[must_use]
pub fn default_queues() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_QUEUES)
}

/// Creates the TUN device with offloads (if `offload`) and `queues` queues,
/// or with what the kernel grants (no offload: one packet per read; no
/// multi-queue: one queue).
fn open_tun(name: &str, queues: usize, offload: bool) -> std::io::Result<Vec<AsyncDevice>> {
    let build = |offload: bool, multi: bool| {
        DeviceBuilder::new()
            .name(name)
            .offload(offload)
            .multi_queue(multi)
            .build_async()
    };
    let multi = queues > 1;
    let first = build(offload, multi)
        .or_else(|e| {
            if !offload {
                return Err(e);
            }
            tracing::warn!(
                device = name,
                "TUN offloads unavailable ({e}): one packet per read"
            );
            build(false, multi)
        })
        .or_else(|e| {
            tracing::warn!(
                device = name,
                "multi-queue TUN unavailable ({e}): one queue"
            );
            build(offload, false).or_else(|_| build(false, false))
        })?;
    let mut devices = vec![first];
    while devices.len() < queues {
        match devices[0].try_clone() {
            Ok(d) => devices.push(d),
            Err(e) => {
                tracing::warn!(device = name, "TUN queue {} refused: {e}", devices.len());
                break;
            }
        }
    }
    Ok(devices)
}

/// Binds `n` UDP sockets to `port` on every address (`SO_REUSEPORT`, so the
/// kernel spreads flows over them), with 4 MiB buffers, GRO on.
fn bind_udp(port: u16, n: usize) -> std::io::Result<Vec<Socket>> {
    use socket2::{Domain, Protocol, Type};
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        if n > 1 {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        // Bursts overflow the default 208 KiB (the benchmark saw it). Forcing
        // needs CAP_NET_ADMIN, which creating the device needed too.
        let _ = setsockopt(&s, sockopt::RcvBufForce, &UDP_BUFFER);
        let _ = setsockopt(&s, sockopt::SndBufForce, &UDP_BUFFER);
        let std_socket = std::net::UdpSocket::from(s);
        let state = UdpSocketState::new((&std_socket).into())?;
        sockets.push(Socket {
            io: UdpSocket::from_std(std_socket)?,
            state,
        });
    }
    Ok(sockets)
}

impl Pump {
    /// Creates the TUN device and binds the UDP port, then starts the
    /// workers and the timers on a runtime of their own.
    ///
    /// # Errors
    /// When the device cannot be created (not root? no `/dev/net/tun`?),
    /// the port is taken, or the runtime cannot start its threads.
    pub fn open(config: PumpConfig) -> std::io::Result<Self> {
        let queues = config.queues.clamp(1, MAX_QUEUES);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(queues)
            .thread_name("wg-pump")
            .enable_io()
            .enable_time()
            .build()?;
        // The device's and the sockets' fds register with this runtime.
        let (tuns, sockets) = {
            let _in_runtime = runtime.enter();
            let tuns = open_tun(&config.device, queues, config.tun_offload)?;
            let sockets = bind_udp(config.port, tuns.len())?;
            (tuns, sockets)
        };
        let datapath = Datapath {
            queues: tuns.len(),
            tun_offload: tuns[0].tcp_gso(),
            udp_gso_segments: sockets[0].state.max_gso_segments(),
            udp_gro_segments: sockets[0].state.gro_segments(),
        };
        let limiter = Arc::new(RateLimiter::new(&config.keys.public, HANDSHAKE_RATE_LIMIT));
        let shared = Arc::new(Shared {
            keys: config.keys,
            keepalive: config.keepalive,
            psk: config.psk,
            table: RwLock::new(PeerTable::default()),
            next_index: AtomicU32::new(1),
            limiter,
            stats: PumpStats::default(),
        });
        let sockets: Vec<Arc<Socket>> = sockets.into_iter().map(Arc::new).collect();
        let control = sockets[0].clone();
        let mut tasks = Vec::with_capacity(2 * tuns.len() + 1);
        for (tun, socket) in tuns.into_iter().zip(sockets) {
            let tun = Arc::new(tun);
            tasks.push(runtime.spawn(tun_to_udp(shared.clone(), tun.clone(), socket.clone())));
            tasks.push(runtime.spawn(udp_to_tun(shared.clone(), tun, socket)));
        }
        tasks.push(runtime.spawn(timers(shared.clone(), control.clone())));
        tracing::info!(device = %config.device, port = config.port, ?datapath, "WireGuard data path up");
        Ok(Pump {
            shared,
            control,
            datapath,
            tasks,
            runtime: Some(runtime),
        })
    }

    /// Stops the tasks and waits until they (and their sockets) are gone,
    /// so the UDP port can be bound again.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    /// The offloads and queues in use.
    #[must_use]
    pub fn datapath(&self) -> Datapath {
        self.datapath
    }

    /// The data path's counters.
    #[must_use]
    pub fn stats(&self) -> &PumpStats {
        &self.shared.stats
    }

    /// The peers' public keys (base64) and subnets.
    #[must_use]
    pub fn peers(&self) -> Vec<(String, Ipv4Network)> {
        let mut v: Vec<_> = self
            .shared
            .table()
            .by_key
            .values()
            .map(|p| {
                (
                    encode_key(&PublicKey::from(p.config.public_key)),
                    p.config.subnet,
                )
            })
            .collect();
        v.sort_by_key(|(_, s)| *s);
        v
    }

    /// Makes the peer table hold exactly `peers` (keys must be distinct).
    /// Unchanged peers keep their sessions; a new peer is sent a handshake
    /// initiation at once, so a restarted host replaces the stale sessions
    /// its peers hold without waiting for their timers.
    pub fn set_peers(&self, peers: &[PeerConfig]) -> PeerChanges {
        let mut added = Vec::new();
        let changes = self.replace_table(peers, &mut added);
        let mut out = [0u8; 256];
        for peer in added {
            let mut st = peer.lock();
            if let TunnResult::WriteToNetwork(p) =
                st.tunn.format_handshake_initiation(&mut out, false)
            {
                // Best effort: the timers retry if the socket is full.
                let _ = self.control.io.try_send_to(p, st.endpoint);
            }
        }
        changes
    }

    fn replace_table(&self, peers: &[PeerConfig], added: &mut Vec<Arc<Peer>>) -> PeerChanges {
        let mut changes = PeerChanges::default();
        let mut table = self
            .shared
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = PeerTable::default();
        for config in peers {
            let peer = match table.by_key.get(&config.public_key) {
                Some(p) if p.config == *config => p.clone(),
                _ => {
                    changes.added += 1;
                    let peer = Arc::new(self.new_peer(config.clone()));
                    added.push(peer.clone());
                    peer
                }
            };
            next.by_index.insert(peer.index, peer.clone());
            next.by_key.insert(config.public_key, peer.clone());
            next.by_prefix
                .entry(std::cmp::Reverse(config.subnet.prefix()))
                .or_default()
                .insert(config.subnet.network(), peer);
        }
        changes.removed = table
            .by_index
            .keys()
            .filter(|i| !next.by_index.contains_key(i))
            .count();
        *table = next;
        changes
    }

    fn new_peer(&self, config: PeerConfig) -> Peer {
        // 24 bits of index: boringtun keeps the low 8 for its sessions.
        let index = self.shared.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.shared.keys.secret.clone(),
            PublicKey::from(config.public_key),
            self.shared.psk,
            self.shared.keepalive,
            index,
            None,
        );
        let endpoint = config.endpoint;
        Peer {
            config,
            index,
            state: Mutex::new(PeerState { tunn, endpoint }),
        }
    }
}

fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    match Tunn::dst_address(packet)? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// A task's read errors: the first of a run is a warning, the rest until a
/// read succeeds are debug lines. An error of the descriptor (an errno) is
/// paced so that a persistent one cannot spin; one of a packet (tun-rs
/// refusing a malformed virtio header or GSO packet: no errno) only drops
/// that packet.
#[derive(Default)]
struct ReadErrors {
    failing: bool,
}

impl ReadErrors {
    async fn failed(&mut self, what: &str, e: &std::io::Error) {
        if std::mem::replace(&mut self.failing, true) {
            tracing::debug!("{what}: {e}");
        } else {
            tracing::warn!("{what}: {e} (further errors at debug level until a read succeeds)");
        }
        if e.raw_os_error().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn succeeded(&mut self) {
        self.failing = false;
    }
}

async fn tun_to_udp(shared: Arc<Shared>, tun: Arc<AsyncDevice>, udp: Arc<Socket>) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    // Each buffer zeroed by the allocator (not cloned: a clone would touch
    // every page): only the bytes packets occupy become resident.
    let mut packets: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| vec![0u8; MAX_PACKET])
        .collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // A batch of ciphertexts, plus room to encrypt one more after it.
    let mut out = vec![0u8; MAX_GSO_BYTES + OUT_BUFFER];
    let mut batch = GsoBatch::new(udp.state.max_gso_segments());
    let mut errors = ReadErrors::default();
    loop {
        let n = match tun
            .recv_multiple(&mut original, &mut packets, &mut sizes, 0)
            .await
        {
            Ok(n) => {
                errors.succeeded();
                n
            }
            Err(e) => {
                errors.failed("reading the TUN device", &e).await;
                continue;
            }
        };
        shared.stats.tun_reads.fetch_add(1, Ordering::Relaxed);
        // quinn-udp turns GSO off for good if the kernel refuses it.
        batch.set_max_segments(udp.state.max_gso_segments());
        let mut last: Option<(Ipv4Addr, Arc<Peer>)> = None;
        for (packet, &size) in packets.iter().zip(&sizes).take(n) {
            let packet = &packet[..size];
            let Some(dst) = ipv4_dst(packet) else {
                continue;
            };
            // The packets of one read are mostly one flow: skip the lookup.
            let peer = match &last {
                Some((d, p)) if *d == dst => p.clone(),
                _ => {
                    let Some(p) = shared.table().route(dst).cloned() else {
                        shared.stats.no_route.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    last = Some((dst, p.clone()));
                    p
                }
            };
            let at = batch.len();
            let (len, to) = {
                let mut st = peer.lock();
                match st.tunn.encapsulate(packet, &mut out[at..]) {
                    TunnResult::WriteToNetwork(p) => (p.len(), st.endpoint),
                    TunnResult::Err(e) => {
                        tracing::debug!(%dst, "encapsulate: {e:?}");
                        continue;
                    }
                    _ => continue,
                }
            };
            if let Placement::FlushFirst(f) = batch.place(to, len) {
                send(&shared, &udp, &out[..f.end], f.to, f.segment, f.count).await;
                out.copy_within(at..at + len, 0);
            }
        }
        if let Some(f) = batch.take() {
            send(&shared, &udp, &out[..f.end], f.to, f.segment, f.count).await;
        }
    }
}

/// Sends `datagrams` datagrams of `segment` bytes (the last may be
/// shorter), back to back in `contents`, in one send, and counts them.
async fn send(
    shared: &Shared,
    udp: &Socket,
    contents: &[u8],
    to: SocketAddr,
    segment: usize,
    datagrams: usize,
) {
    match udp.send_segments(contents, to, segment).await {
        Ok(()) => {
            let stats = &shared.stats;
            stats.sent.fetch_add(datagrams as u64, Ordering::Relaxed);
            stats.udp_sends.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(%to, "send failed: {e}"),
    }
}

/// [`send`] of one datagram.
async fn send_one(shared: &Shared, udp: &Socket, datagram: &[u8], to: SocketAddr) {
    send(shared, udp, datagram, to, datagram.len(), 1).await;
}

/// The peer a datagram is for, if any (after the handshake rate limiter).
fn find_peer(shared: &Shared, from: SocketAddr, datagram: &[u8], cookie: &mut [u8]) -> Found {
    let packet = match shared
        .limiter
        .verify_packet(Some(from.ip()), datagram, cookie)
    {
        Ok(p) => p,
        Err(TunnResult::WriteToNetwork(reply)) => return Found::Cookie(reply.len()),
        Err(_) => return Found::None,
    };
    let table = shared.table();
    let peer = match packet {
        Packet::HandshakeInit(p) => {
            parse_handshake_anon(&shared.keys.secret, &shared.keys.public, &p)
                .ok()
                .and_then(|h| table.by_key.get(&h.peer_static_public))
        }
        Packet::HandshakeResponse(p) => table.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketCookieReply(p) => table.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketData(p) => table.by_index.get(&(p.receiver_idx >> 8)),
    };
    peer.cloned().map_or(Found::None, Found::Peer)
}

enum Found {
    Peer(Arc<Peer>),
    Cookie(usize),
    None,
}

/// Decrypted packets waiting for one TUN write, each at
/// [`VIRTIO_NET_HDR_LEN`] in its buffer (room tun-rs fills with the
/// virtio header of a coalesced packet).
struct TunWrites {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunWrites {
    fn new() -> Self {
        TunWrites {
            // GRO appends a flow's packets to its first buffer, and only
            // where that buffer's capacity holds them all (it never
            // reallocates): room for a 64 KiB packet, resident only as used.
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + MAX_PACKET))
                .collect(),
            len: 0,
            gro: GROTable::default(),
        }
    }

    /// The next buffer, with room for a packet of up to `max` bytes.
    fn next(&mut self, max: usize) -> &mut Vec<u8> {
        let buf = &mut self.bufs[self.len];
        buf.resize(VIRTIO_NET_HDR_LEN + max, 0);
        buf
    }

    /// Keeps the packet of `len` bytes just written into [`TunWrites::next`].
    fn commit(&mut self, len: usize) {
        self.bufs[self.len].truncate(VIRTIO_NET_HDR_LEN + len);
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    async fn flush(&mut self, tun: &AsyncDevice) {
        if self.len == 0 {
            return;
        }
        let n = self.len;
        self.len = 0;
        if let Err(e) = tun
            .send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN)
            .await
        {
            tracing::debug!("writing the TUN device: {e}");
        }
    }
}

async fn udp_to_tun(shared: Arc<Shared>, tun: Arc<AsyncDevice>, udp: Arc<Socket>) {
    let mut slots = vec![0u8; RX_SLOTS * MAX_PACKET];
    let mut metas = [RecvMeta::default(); RX_SLOTS];
    let mut writes = TunWrites::new();
    let mut scratch = vec![0u8; OUT_BUFFER];
    let mut errors = ReadErrors::default();
    loop {
        let received = {
            let mut iovs: Vec<IoSliceMut<'_>> =
                slots.chunks_mut(MAX_PACKET).map(IoSliceMut::new).collect();
            udp.io
                .async_io(Interest::READABLE, || {
                    udp.state.recv((&udp.io).into(), &mut iovs, &mut metas)
                })
                .await
        };
        let n = match received {
            Ok(n) => {
                errors.succeeded();
                n
            }
            Err(e) => {
                errors.failed("reading the UDP socket", &e).await;
                continue;
            }
        };
        for (slot, meta) in slots.chunks(MAX_PACKET).zip(&metas).take(n) {
            let data = &slot[..meta.len.min(slot.len())];
            for datagram in data.chunks(meta.stride.max(1)) {
                handle_datagram(
                    &shared,
                    &udp,
                    datagram,
                    meta.addr,
                    &mut writes,
                    &mut scratch,
                )
                .await;
                if writes.is_full() {
                    writes.flush(&tun).await;
                }
            }
        }
        writes.flush(&tun).await;
    }
}

/// Decrypts one datagram into `writes`, or answers it (handshakes, cookies).
async fn handle_datagram(
    shared: &Shared,
    udp: &Socket,
    datagram: &[u8],
    from: SocketAddr,
    writes: &mut TunWrites,
    scratch: &mut [u8],
) {
    let peer = match find_peer(shared, from, datagram, scratch) {
        Found::Peer(p) => p,
        Found::Cookie(len) => {
            send_one(shared, udp, &scratch[..len], from).await;
            return;
        }
        Found::None => {
            shared.stats.unknown_peer.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    // A data packet decrypts into the next TUN buffer. A handshake message
    // may be answered, and followed by packets boringtun queued while it
    // waited: those are asked for with empty datagrams until Done, and
    // encrypted into `scratch`.
    let buf = writes.next(datagram.len().max(256));
    match decapsulate(&peer, from, datagram, &mut buf[VIRTIO_NET_HDR_LEN..]) {
        Some((len, Some(src))) => {
            if peer.config.subnet.contains(src) {
                writes.commit(len);
                shared.stats.received.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.stats.bad_source.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some((len, None)) => {
            let reply = &writes.next(len)[VIRTIO_NET_HDR_LEN..][..len];
            send_one(shared, udp, reply, from).await;
            while let Some((len, None)) = decapsulate(&peer, from, &[], scratch) {
                send_one(shared, udp, &scratch[..len], from).await;
            }
        }
        None => {}
    }
}

/// One `decapsulate`: `(len, None)` to send `out[..len]` back to `from`,
/// `(len, Some(source))` for a packet at `out[..len]`, `None` when done.
fn decapsulate(
    peer: &Peer,
    from: SocketAddr,
    input: &[u8],
    out: &mut [u8],
) -> Option<(usize, Option<Ipv4Addr>)> {
    let mut st = peer.lock();
    match st.tunn.decapsulate(Some(from.ip()), input, out) {
        TunnResult::WriteToNetwork(p) => {
            let len = p.len();
            st.endpoint = from;
            Some((len, None))
        }
        TunnResult::WriteToTunnelV4(p, src) => {
            let len = p.len();
            st.endpoint = from;
            Some((len, Some(src)))
        }
        TunnResult::Err(e) => {
            tracing::debug!(%from, "decapsulate: {e:?}");
            None
        }
        TunnResult::Done | TunnResult::WriteToTunnelV6(..) => None,
    }
}

async fn timers(shared: Arc<Shared>, udp: Arc<Socket>) {
    let mut out = vec![0u8; OUT_BUFFER];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        if ticks % 5 == 0 {
            shared.limiter.reset_count();
        }
        let peers: Vec<Arc<Peer>> = shared.table().by_index.values().cloned().collect();
        for peer in peers {
            let (len, to) = {
                let mut st = peer.lock();
                match st.tunn.update_timers(&mut out) {
                    TunnResult::WriteToNetwork(p) => (p.len(), st.endpoint),
                    TunnResult::Err(WireGuardError::ConnectionExpired) => continue,
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.config.subnet, "timers: {e:?}");
                        continue;
                    }
                    _ => continue,
                }
            };
            send_one(&shared, &udp, &out[..len], to).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(subnets: &[&str]) -> PeerTable {
        let mut t = PeerTable::default();
        let keys = KeyPair::from_secret([9; 32]);
        for (i, s) in subnets.iter().enumerate() {
            let subnet: Ipv4Network = s.parse().unwrap();
            let peer = Arc::new(Peer {
                config: PeerConfig {
                    public_key: [u8::try_from(i).unwrap(); 32],
                    subnet,
                    endpoint: "10.0.0.9:51820".parse().unwrap(),
                },
                index: u32::try_from(i).unwrap(),
                state: Mutex::new(PeerState {
                    tunn: Tunn::new(
                        keys.secret.clone(),
                        PublicKey::from([1; 32]),
                        None,
                        None,
                        0,
                        None,
                    ),
                    endpoint: "10.0.0.9:51820".parse().unwrap(),
                }),
            });
            t.by_prefix
                .entry(std::cmp::Reverse(subnet.prefix()))
                .or_default()
                .insert(subnet.network(), peer);
        }
        t
    }

    #[test]
    fn route_picks_the_longest_prefix() {
        let t = table(&["10.244.0.0/16", "10.244.2.0/24"]);
        let hit = |ip: &str| {
            t.route(ip.parse().unwrap())
                .map(|p| p.config.subnet.to_string())
        };
        assert_eq!(hit("10.244.2.7").as_deref(), Some("10.244.2.0/24"));
        assert_eq!(hit("10.244.3.7").as_deref(), Some("10.244.0.0/16"));
        assert_eq!(hit("10.9.0.1"), None);
    }

    #[test]
    fn ipv4_dst_reads_the_header() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        assert_eq!(ipv4_dst(&p), Some(Ipv4Addr::new(10, 244, 2, 7)));
        assert_eq!(ipv4_dst(&p[..10]), None);
    }
}
