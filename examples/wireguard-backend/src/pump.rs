//! The userspace WireGuard data path: packets between the TUN device and
//! one UDP socket, through one boringtun [`Tunn`] per peer.
//!
//! Three tokio tasks:
//! * TUN → UDP: read an IP packet, find the peer whose subnet holds its
//!   destination (longest prefix), `encapsulate`, send to the peer's endpoint;
//! * UDP → TUN: read a datagram, find its peer (a handshake initiation by the
//!   sender's static key, anything else by our receiver index), `decapsulate`,
//!   write the packet to the TUN if its source is in that peer's subnet
//!   (WireGuard's "allowed IPs"), send handshake replies and queued packets;
//! * timers: `update_timers` for every peer every [`TIMER_TICK`]
//!   (handshake retries, rekeying, persistent keepalive).
//!
//! The peer table is replaced by [`Pump::set_peers`]; a peer whose key,
//! subnet and endpoint are unchanged keeps its session.

use std::collections::{BTreeMap, HashMap};
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
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_tun::Tun;

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
    /// Packets sent to the network / written to the TUN.
    pub sent: AtomicU64,
    /// Packets written to the TUN.
    pub received: AtomicU64,
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

/// The running data path; its tasks stop when it is dropped.
pub struct Pump {
    shared: Arc<Shared>,
    udp: Arc<UdpSocket>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("peers", &self.shared.table().by_key.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Pump {
    /// Creates the TUN device `device` and binds UDP `port` (on every
    /// address, with 4 MiB buffers), then [`Pump::start`]s.
    ///
    /// # Errors
    /// When the device cannot be created (not root? no `/dev/net/tun`?)
    /// or the port is taken.
    pub async fn open(
        device: &str,
        port: u16,
        keys: KeyPair,
        keepalive: Option<u16>,
        psk: Option<[u8; 32]>,
    ) -> std::io::Result<Self> {
        let tun = Tun::builder()
            .name(device)
            .build()
            .map_err(std::io::Error::other)?
            .pop()
            .ok_or_else(|| std::io::Error::other("no TUN queue"))?;
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
        socket.set_nonblocking(true)?;
        // Bursts overflow the default 208 KiB (the benchmark saw it). Forcing
        // needs CAP_NET_ADMIN, which creating the device needed too.
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &UDP_BUFFER);
        let _ = setsockopt(&socket, sockopt::SndBufForce, &UDP_BUFFER);
        let udp = UdpSocket::from_std(socket)?;
        Ok(Self::start(tun, udp, keys, keepalive, psk))
    }

    /// Starts the three tasks on the current tokio runtime.
    #[must_use]
    pub fn start(
        tun: Tun,
        udp: UdpSocket,
        keys: KeyPair,
        keepalive: Option<u16>,
        psk: Option<[u8; 32]>,
    ) -> Self {
        let limiter = Arc::new(RateLimiter::new(&keys.public, HANDSHAKE_RATE_LIMIT));
        let shared = Arc::new(Shared {
            keys,
            keepalive,
            psk,
            table: RwLock::new(PeerTable::default()),
            next_index: AtomicU32::new(1),
            limiter,
            stats: PumpStats::default(),
        });
        let (tun, udp) = (Arc::new(tun), Arc::new(udp));
        let tasks = vec![
            tokio::spawn(tun_to_udp(shared.clone(), tun.clone(), udp.clone())),
            tokio::spawn(udp_to_tun(shared.clone(), tun, udp.clone())),
            tokio::spawn(timers(shared.clone(), udp.clone())),
        ];
        Pump { shared, udp, tasks }
    }

    /// Stops the tasks and waits until they (and their sockets) are gone,
    /// so the UDP port can be bound again.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
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
                let _ = self.udp.try_send_to(p, st.endpoint);
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

async fn send(shared: &Shared, udp: &UdpSocket, packet: &[u8], to: SocketAddr) {
    match udp.send_to(packet, to).await {
        Ok(_) => {
            shared.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(%to, "send failed: {e}"),
    }
}

async fn tun_to_udp(shared: Arc<Shared>, tun: Arc<Tun>, udp: Arc<UdpSocket>) {
    let mut packet = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; OUT_BUFFER];
    loop {
        let n = match tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("reading the TUN device: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(dst) = ipv4_dst(&packet[..n]) else {
            continue;
        };
        let Some(peer) = shared.table().route(dst).cloned() else {
            shared.stats.no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (len, to) = {
            let mut st = peer.lock();
            match st.tunn.encapsulate(&packet[..n], &mut out) {
                TunnResult::WriteToNetwork(p) => (p.len(), st.endpoint),
                TunnResult::Err(e) => {
                    tracing::debug!(%dst, "encapsulate: {e:?}");
                    continue;
                }
                _ => continue,
            }
        };
        send(&shared, &udp, &out[..len], to).await;
    }
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

async fn udp_to_tun(shared: Arc<Shared>, tun: Arc<Tun>, udp: Arc<UdpSocket>) {
    let mut datagram = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; OUT_BUFFER];
    loop {
        let (n, from) = match udp.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the UDP socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = match find_peer(&shared, from, &datagram[..n], &mut out) {
            Found::Peer(p) => p,
            Found::Cookie(len) => {
                send(&shared, &udp, &out[..len], from).await;
                continue;
            }
            Found::None => {
                shared.stats.unknown_peer.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut input: &[u8] = &datagram[..n];
        // A handshake message may be followed by packets boringtun queued
        // while it waited: repeat with an empty datagram until Done.
        loop {
            let action = {
                let mut st = peer.lock();
                match st.tunn.decapsulate(Some(from.ip()), input, &mut out) {
                    TunnResult::WriteToNetwork(p) => {
                        st.endpoint = from;
                        Some((p.len(), None))
                    }
                    TunnResult::WriteToTunnelV4(p, src) => {
                        st.endpoint = from;
                        Some((p.len(), Some(src)))
                    }
                    TunnResult::Err(e) => {
                        tracing::debug!(%from, "decapsulate: {e:?}");
                        None
                    }
                    TunnResult::Done | TunnResult::WriteToTunnelV6(..) => None,
                }
            };
            match action {
                Some((len, None)) => {
                    send(&shared, &udp, &out[..len], from).await;
                    input = &[];
                }
                Some((len, Some(src))) => {
                    if peer.config.subnet.contains(src) {
                        if let Err(e) = tun.send(&out[..len]).await {
                            tracing::debug!("writing the TUN device: {e}");
                        }
                        shared.stats.received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.stats.bad_source.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                None => break,
            }
        }
    }
}

async fn timers(shared: Arc<Shared>, udp: Arc<UdpSocket>) {
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
            send(&shared, &udp, &out[..len], to).await;
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
