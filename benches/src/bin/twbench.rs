//! `twbench`: the measuring half of twill's benchmark scripts
//! (`benches/scripts/*.sh`). The scripts build hosts as network namespaces,
//! start etcd and twilld; this program runs inside a host's namespace and
//! does what needs exact timestamps:
//!
//! * `converge`: puts one lease at a time into etcd and timestamps, with a
//!   netlink monitor socket (RTNLGRP_NEIGH + RTNLGRP_IPV4_ROUTE), the moment
//!   its ARP, FDB and route entries appear in the kernel; also the moment
//!   etcd's own watch delivers the put (the anchor).
//! * `storm`: puts N leases concurrently and times until all are programmed.
//! * `populate`: writes N leases in transactions (set-up, not timed).
//! * `startup`: starts twilld, polls `/readyz` every millisecond and counts
//!   the gRPC requests etcd served meanwhile (from etcd's `/metrics`).
//! * `memory`: twilld's VmRSS with 0, 1,000 and N peers and after cycles of
//!   removing and re-adding N peers.
//! * `responsiveness`: starts twilld with N leases in etcd and polls
//!   `/healthz` back to back during the cold start, on the idle daemon and
//!   while the deleted VXLAN device is re-created and reprogrammed.
//!
//! Peer `i` is subnet `10.(128 + i/256).(i%256).0/24`, public IP
//! `10.1.0.0 + i + 1`, VTEP MAC `0e:00:00:ii:ii:ii` (as `program_peers`).
//! Subnets already in etcd (twilld's own) are skipped. Every lease a command
//! writes is attached to one etcd lease, revoked at the end, so one request
//! removes them all. Results are printed as `name: value unit` lines.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use tokio::sync::mpsc;

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RTA_DST: u16 = 1;
const ENTRY_NEIGH: u8 = 1;
const ENTRY_FDB: u8 = 2;
const ENTRY_ROUTE: u8 = 4;
const ALL_ENTRIES: u8 = ENTRY_NEIGH | ENTRY_FDB | ENTRY_ROUTE;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("usage: twbench converge|storm|populate|startup|memory|responsiveness [--flag value]... (see the file's docs)");
    };
    let opts = Opts::parse(rest)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cmd.as_str() {
            "converge" => converge(&opts).await,
            "storm" => storm(&opts).await,
            "populate" => populate(&opts).await,
            "startup" => startup(&opts).await,
            "memory" => memory(&opts).await,
            "responsiveness" => responsiveness(&opts).await,
            other => bail!("unknown command {other:?}"),
        }
    })
}

/// `--name value` options, and everything after `--` (a command line).
struct Opts {
    named: HashMap<String, String>,
    command: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut named = HashMap::new();
        let mut it = args.iter();
        let mut command = Vec::new();
        while let Some(a) = it.next() {
            if a == "--" {
                command = it.cloned().collect();
                break;
            }
            let name = a
                .strip_prefix("--")
                .with_context(|| format!("expected --flag, got {a:?}"))?;
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            named.insert(name.to_string(), value.clone());
        }
        Ok(Self { named, command })
    }

    fn str(&self, name: &str, default: &str) -> String {
        self.named
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.named.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name}: not a number: {v:?}")),
        }
    }

    fn etcd(&self) -> String {
        self.str("etcd", "http://127.0.0.1:2379")
    }

    fn prefix(&self) -> String {
        format!(
            "{}/subnets/",
            self.str("prefix", "/coreos.com/network")
                .trim_end_matches('/')
        )
    }
}

/// One generated peer.
#[derive(Debug, Clone, Copy)]
struct Peer {
    gw: Ipv4Addr,
    mac: [u8; 6],
}

impl Peer {
    fn new(i: u32) -> Self {
        let [_, a, b, c] = i.to_be_bytes();
        Self {
            gw: Ipv4Addr::from(0x0a80_0000 + (i << 8)),
            mac: [0x0e, 0, 0, a, b, c],
        }
    }

    fn key(&self, prefix: &str) -> String {
        format!("{prefix}{}-24", self.gw)
    }

    fn value(&self, i: u32) -> String {
        let public = Ipv4Addr::from(0x0a01_0000 + i + 1);
        let m = self.mac;
        format!(
            r#"{{"PublicIP":"{public}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}"}}}}"#,
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// `n` peers whose subnets are not yet in etcd, starting the search at `from`.
async fn free_peers(
    client: &mut Client,
    prefix: &str,
    from: u32,
    n: u32,
) -> Result<Vec<(u32, Peer)>> {
    let taken: HashSet<Vec<u8>> = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?
        .kvs()
        .iter()
        .map(|kv| kv.key().to_vec())
        .collect();
    let mut out = Vec::with_capacity(n as usize);
    let mut i = from;
    while out.len() < n as usize {
        if i >= 32_768 {
            bail!("at most 32768 generated peers (10.128.0.0/9 in /24s)");
        }
        let p = Peer::new(i);
        if !taken.contains(p.key(prefix).as_bytes()) {
            out.push((i, p));
        }
        i += 1;
    }
    Ok(out)
}

/// A kernel change seen on the monitor socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Neigh(Ipv4Addr),
    Fdb([u8; 6]),
    Route(Ipv4Addr, u8),
    /// The socket's buffer overflowed: changes were lost.
    Overrun,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    added: bool,
    change: Change,
}

/// Opens a NETLINK_ROUTE socket subscribed to neighbour and IPv4 route
/// changes and forwards each, timestamped on arrival, from a thread.
fn monitor() -> Result<mpsc::UnboundedReceiver<Seen>> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context("netlink socket")?;
    // Large enough for a 10,000-peer burst (3 messages of ~100 bytes each).
    if setsockopt(&fd, sockopt::RcvBufForce, &(64 << 20)).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &(8 << 20)).context("SO_RCVBUF")?;
    }
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE),
    )
    .context("bind netlink monitor")?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::ENOBUFS) => {
                    let seen = Seen {
                        at: Instant::now(),
                        added: false,
                        change: Change::Overrun,
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let at = Instant::now();
            for (added, change) in parse_messages(&buf[..n]) {
                if tx.send(Seen { at, added, change }).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// (type, payload) of each rtattr in `b`.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let (Some(len), Some(ty)) = (u16_at(b, 0), u16_at(b, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty & 0x3fff, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn parse_messages(mut b: &[u8]) -> Vec<(bool, Change)> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let (Some(len), Some(ty)) = (u32_at(b, 0), u16_at(b, 4)) else {
            break;
        };
        let len = len as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let body = &b[16..len];
        match ty {
            RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= 12 => {
                let family = body[0];
                let a = attrs(&body[12..]);
                let find = |t: u16| a.iter().find(|(ty, _)| *ty == t).map(|(_, v)| *v);
                let added = ty == RTM_NEWNEIGH;
                if family == AF_INET {
                    if let Some(d) = find(NDA_DST).and_then(|v| <[u8; 4]>::try_from(v).ok()) {
                        out.push((added, Change::Neigh(Ipv4Addr::from(d))));
                    }
                } else if family == AF_BRIDGE && find(NDA_DST).is_some() {
                    if let Some(m) = find(NDA_LLADDR).and_then(|v| <[u8; 6]>::try_from(v).ok()) {
                        out.push((added, Change::Fdb(m)));
                    }
                }
            }
            RTM_NEWROUTE | RTM_DELROUTE if body.len() >= 12 && body[0] == AF_INET => {
                let dst_len = body[1];
                let a = attrs(&body[12..]);
                if let Some(d) = a
                    .iter()
                    .find(|(t, _)| *t == RTA_DST)
                    .and_then(|(_, v)| <[u8; 4]>::try_from(*v).ok())
                {
                    out.push((
                        ty == RTM_NEWROUTE,
                        Change::Route(Ipv4Addr::from(d), dst_len),
                    ));
                }
            }
            _ => {}
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// Which of peer `p`'s entries `c` is, if any.
fn entry_of(p: &Peer, c: Change) -> u8 {
    match c {
        Change::Neigh(a) if a == p.gw => ENTRY_NEIGH,
        Change::Fdb(m) if m == p.mac => ENTRY_FDB,
        Change::Route(a, 24) if a == p.gw => ENTRY_ROUTE,
        _ => 0,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil().max(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idx = (rank as usize).min(sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

async fn connect(opts: &Opts) -> Result<Client> {
    Client::connect([opts.etcd()], None)
        .await
        .with_context(|| format!("cannot connect to etcd at {}", opts.etcd()))
}

/// `converge --trials N [--gap-ms G]`: one lease at a time.
async fn converge(opts: &Opts) -> Result<()> {
    let trials: u32 = opts.num("trials", 200)?;
    let gap = Duration::from_millis(opts.num("gap-ms", 20)?);
    let timeout = Duration::from_secs(opts.num("timeout-s", 10)?);
    let prefix = opts.prefix();
    let mut client = connect(opts).await?;
    let lease = client.lease_grant(3600, None).await?.id();
    let peers = free_peers(&mut client, &prefix, opts.num("from", 20_000)?, trials).await?;

    // The anchor: etcd's own watch, in this process, on the same prefix.
    let mut watch = client
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let (wtx, mut wrx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            let at = Instant::now();
            for ev in resp.events() {
                if ev.event_type() == EventType::Put {
                    if let Some(kv) = ev.kv() {
                        if wtx.send((at, kv.key().to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut nl = monitor()?;

    let mut total = Vec::new();
    let mut put_lat = Vec::new();
    let mut watch_lat = Vec::new();
    let mut kv = client.kv_client();
    // `--cpu-of PID`: the CPU time that process (all its threads) spends
    // over the trials, i.e. per lease event.
    let cpu_of: Option<u32> = match opts.named.get("cpu-of") {
        Some(p) => Some(p.parse().with_context(|| format!("--cpu-of {p}"))?),
        None => None,
    };
    let cpu_before = cpu_of.map(cpu_ns).transpose()?;
    for (i, p) in &peers {
        let key = p.key(&prefix);
        let t0 = Instant::now();
        kv.put(
            key.as_str(),
            p.value(*i),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        let t_put = Instant::now();
        let mut mask = 0u8;
        let mut done = t0;
        while mask != ALL_ENTRIES {
            let seen = tokio::time::timeout(timeout, nl.recv())
                .await
                .with_context(|| {
                    format!("peer {key}: not programmed within {timeout:?} (have {mask:03b})")
                })?
                .context("netlink monitor stopped")?;
            if seen.change == Change::Overrun {
                bail!("netlink monitor overrun");
            }
            if seen.added {
                let e = entry_of(p, seen.change);
                if e != 0 {
                    mask |= e;
                    done = seen.at;
                }
            }
        }
        let t_watch = loop {
            let (at, k) = tokio::time::timeout(timeout, wrx.recv())
                .await
                .context("etcd watch event missing")?
                .context("etcd watch stopped")?;
            if k == key.as_bytes() {
                break at;
            }
        };
        total.push(ms(done - t0));
        put_lat.push(ms(t_put - t0));
        watch_lat.push(ms(t_watch - t0));
        tokio::time::sleep(gap).await;
    }
    if let (Some(pid), Some(before)) = (cpu_of, cpu_before) {
        let used = cpu_ns(pid)?.saturating_sub(before);
        println!(
            "converge_cpu_per_event_us: {:.1} us",
            used as f64 / 1e3 / f64::from(trials.max(1))
        );
    }
    client.lease_revoke(lease).await?;

    let (total, put_lat, watch_lat) = (sorted(total), sorted(put_lat), sorted(watch_lat));
    let p50 = percentile(&total, 0.5);
    let p99 = percentile(&total, 0.99);
    let w50 = percentile(&watch_lat, 0.5);
    let w99 = percentile(&watch_lat, 0.99);
    println!("converge_trials: {} n", total.len());
    println!("converge_p50_ms: {p50:.3} ms");
    println!("converge_p99_ms: {p99:.3} ms");
    println!("converge_max_ms: {:.3} ms", percentile(&total, 1.0));
    println!(
        "converge_put_ack_p50_ms: {:.3} ms",
        percentile(&put_lat, 0.5)
    );
    println!("converge_etcd_watch_p50_ms: {w50:.3} ms");
    println!("converge_etcd_watch_p99_ms: {w99:.3} ms");
    println!("converge_p50_ratio_vs_etcd_watch: {:.2} x", p50 / w50);
    println!("converge_p99_ratio_vs_etcd_watch: {:.2} x", p99 / w99);
    if let Some(path) = opts.named.get("samples") {
        let text: Vec<String> = total.iter().map(|v| format!("{v:.4}")).collect();
        std::fs::write(path, text.join("\n") + "\n")?;
    }
    Ok(())
}

/// CPU time used so far by every thread of `pid`, in nanoseconds: the sum
/// of the first field of `/proc/PID/task/*/schedstat` (time on a CPU).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut sum = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended meanwhile has no file any more.
        if let Ok(text) = std::fs::read_to_string(&path) {
            let ns = text.split_whitespace().next().unwrap_or("0");
            sum += ns
                .parse::<u64>()
                .with_context(|| format!("{}", path.display()))?;
        }
    }
    Ok(sum)
}

/// Waits until every peer in `pending` has all three entries; returns when
/// the last one appeared.
async fn wait_programmed(
    nl: &mut mpsc::UnboundedReceiver<Seen>,
    peers: &[(u32, Peer)],
    timeout: Duration,
) -> Result<Instant> {
    let mut by_gw: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut by_mac: HashMap<[u8; 6], usize> = HashMap::new();
    for (idx, (_, p)) in peers.iter().enumerate() {
        by_gw.insert(p.gw, idx);
        by_mac.insert(p.mac, idx);
    }
    let mut masks = vec![0u8; peers.len()];
    let mut complete = 0usize;
    let mut last = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    while complete < peers.len() {
        let seen = tokio::time::timeout_at(deadline, nl.recv())
            .await
            .with_context(|| {
                format!(
                    "only {complete} of {} peers programmed within {timeout:?}",
                    peers.len()
                )
            })?
            .context("netlink monitor stopped")?;
        if !seen.added {
            continue;
        }
        let (idx, bit) = match seen.change {
            Change::Overrun => bail!("netlink monitor overrun"),
            Change::Neigh(a) => (by_gw.get(&a), ENTRY_NEIGH),
            Change::Route(a, 24) => (by_gw.get(&a), ENTRY_ROUTE),
            Change::Route(..) => (None, 0),
            Change::Fdb(m) => (by_mac.get(&m), ENTRY_FDB),
        };
        if let Some(&idx) = idx {
            if masks[idx] != ALL_ENTRIES {
                masks[idx] |= bit;
                if masks[idx] == ALL_ENTRIES {
                    complete += 1;
                    last = seen.at;
                }
            }
        }
    }
    Ok(last)
}

/// Puts `peers` with one put request each, `concurrency` at a time.
async fn put_each(
    client: &Client,
    prefix: &str,
    lease: i64,
    peers: &[(u32, Peer)],
    concurrency: usize,
) -> Result<()> {
    let peers = Arc::new(peers.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (peers, next, prefix) = (peers.clone(), next.clone(), prefix.to_string());
        let mut kv = client.kv_client();
        tasks.spawn(async move {
            loop {
                let idx = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((i, p)) = peers.get(idx) else {
                    return Ok::<(), etcd_client::Error>(());
                };
                kv.put(
                    p.key(&prefix),
                    p.value(*i),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Puts `peers` in transactions of 128 puts (etcd's default limit).
async fn put_txns(
    client: &mut Client,
    prefix: &str,
    lease: i64,
    peers: &[(u32, Peer)],
) -> Result<()> {
    for chunk in peers.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(i, p)| {
                TxnOp::put(
                    p.key(prefix),
                    p.value(*i),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

/// `storm --n N [--concurrency C]`: N leases put at once.
async fn storm(opts: &Opts) -> Result<()> {
    let n: u32 = opts.num("n", 1000)?;
    let concurrency: usize = opts.num("concurrency", 1000)?;
    let timeout = Duration::from_secs(opts.num("timeout-s", 60)?);
    let prefix = opts.prefix();
    let mut client = connect(opts).await?;
    let lease = client.lease_grant(3600, None).await?.id();
    let peers = free_peers(&mut client, &prefix, opts.num("from", 20_000)?, n).await?;
    let mut nl = monitor()?;
    let t0 = Instant::now();
    let (put, programmed) = tokio::join!(
        async {
            put_each(&client, &prefix, lease, &peers, concurrency).await?;
            Ok::<Instant, anyhow::Error>(Instant::now())
        },
        wait_programmed(&mut nl, &peers, timeout)
    );
    let (put, programmed) = (put?, programmed?);
    client.lease_revoke(lease).await?;
    let put_ms = ms(put - t0);
    let all_ms = ms(programmed - t0);
    println!("storm_{n}_puts_acked_ms: {put_ms:.1} ms");
    println!("storm_{n}_programmed_ms: {all_ms:.1} ms");
    println!("storm_{n}_ratio_vs_puts_acked: {:.2} x", all_ms / put_ms);
    Ok(())
}

/// `populate --n N`: N leases (reservations if `--ttl 0`), in transactions.
async fn populate(opts: &Opts) -> Result<()> {
    let n: u32 = opts.num("n", 10_000)?;
    let ttl: i64 = opts.num("ttl", 86_400)?;
    let prefix = opts.prefix();
    let mut client = connect(opts).await?;
    let lease = if ttl > 0 {
        client.lease_grant(ttl, None).await?.id()
    } else {
        0
    };
    let peers = free_peers(&mut client, &prefix, opts.num("from", 0)?, n).await?;
    let t0 = Instant::now();
    put_txns(&mut client, &prefix, lease, &peers).await?;
    eprintln!(
        "populate: {n} leases written in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // The anchor for start-up: one listing of everything, as twilld makes.
    let t0 = Instant::now();
    let listed = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?
        .kvs()
        .len();
    let list_ms = ms(t0.elapsed());
    println!("populate_leases: {listed} n");
    println!("populate_list_ms: {list_ms:.1} ms");
    Ok(())
}

/// A plain HTTP/1.1 GET on a `http://host:port/path` URL: (status, body).
fn http_get(url: &str) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP response from {url}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// gRPC requests started per method, from etcd's Prometheus metrics.
fn grpc_started(metrics_url: &str) -> Result<HashMap<String, f64>> {
    let (_, body) = http_get(metrics_url)?;
    let mut out = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_started_total{") else {
            continue;
        };
        let Some(m) = rest.split("grpc_method=\"").nth(1) else {
            continue;
        };
        let method = m.split('"').next().unwrap_or_default().to_string();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(method).or_insert(0.0) += value;
    }
    Ok(out)
}

fn stop_child(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `startup --trials N --readyz URL --metrics URL [--reset-dev DEV] -- twilld ARGS`.
async fn startup(opts: &Opts) -> Result<()> {
    let trials: u32 = opts.num("trials", 3)?;
    let readyz = opts.str("readyz", "http://127.0.0.1:8471/readyz");
    let metrics = opts.str("metrics", "http://127.0.0.1:2379/metrics");
    let dev = opts.named.get("reset-dev");
    let log = opts.named.get("log");
    let label = opts.str("label", "startup");
    let timeout = Duration::from_secs(opts.num("timeout-s", 120)?);
    let Some((prog, args)) = opts.command.split_first() else {
        bail!("startup: give the twilld command line after --");
    };
    let mut times = Vec::new();
    let mut first: Option<HashMap<String, f64>> = None;
    for trial in 0..trials {
        if let Some(dev) = dev {
            // A cold kernel: the device and with it every neighbour, FDB entry and route.
            let _ = Command::new("ip").args(["link", "del", dev]).status();
        }
        let before = grpc_started(&metrics)?;
        let t0 = Instant::now();
        let mut child = Command::new(prog)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(
                log.and_then(|l| std::fs::File::create(format!("{l}.{trial}")).ok())
                    .map_or_else(std::process::Stdio::null, Into::into),
            )
            .spawn()
            .with_context(|| format!("cannot start {prog}"))?;
        let ready = loop {
            if matches!(http_get(&readyz), Ok((200, _))) {
                break Some(t0.elapsed());
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{prog} exited before ready: {status}");
            }
            if t0.elapsed() > timeout {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // Requests still in flight at readiness (keepalive stream, watch) count too.
        std::thread::sleep(Duration::from_millis(200));
        let after = grpc_started(&metrics)?;
        stop_child(&mut child);
        let Some(ready) = ready else {
            bail!("not ready within {timeout:?}");
        };
        times.push(ms(ready));
        if first.is_none() {
            let delta = after
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            first = Some(delta);
        }
        eprintln!("{label} trial {trial}: ready in {:.1} ms", ms(ready));
    }
    let first = first.unwrap_or_default();
    let get = |m: &str| first.get(m).copied().unwrap_or(0.0);
    let times_sorted = sorted(times.clone());
    println!("{label}_ready_first_ms: {:.1} ms", times[0]);
    println!(
        "{label}_ready_median_ms: {:.1} ms",
        percentile(&times_sorted, 0.5)
    );
    let mut methods: Vec<_> = first.iter().collect();
    methods.sort_by(|a, b| a.0.cmp(b.0));
    let listing: Vec<String> = methods.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!(
        "{label}: etcd requests at first start: {}",
        listing.join(" ")
    );
    println!(
        "{label}_etcd_requests_total: {} n",
        first.values().sum::<f64>()
    );
    println!("{label}_etcd_range_requests: {} n", get("Range"));
    println!(
        "{label}_etcd_lease_ttl_requests: {} n",
        get("LeaseTimeToLive")
    );
    Ok(())
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// VmRSS: what the goal is about (binary pages included).
fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// One sample on stderr: VmRSS split into RssAnon (heap, stacks) and
/// RssFile (the binary's and libraries' pages), so a rise can be told apart
/// as heap or as code touched for the first time. With `--smaps DIR`, also
/// a copy of `/proc/<pid>/smaps` named after the sample, to see which
/// mapping grew.
fn sample(pid: u32, what: &str, smaps: Option<&String>) -> Result<Sample> {
    let rss = rss_kib(pid)?;
    let anon = status_kib(pid, "RssAnon:")?;
    let file = status_kib(pid, "RssFile:")?;
    eprintln!("memory: {what}: rss {rss} anon {anon} file {file} KiB");
    if let Some(dir) = smaps {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        std::fs::write(format!("{dir}/{what}.smaps"), text)?;
    }
    // Investigation only: a command run at each sample (e.g. gdb calling
    // malloc_stats in twilld), given the sample's name and the pid.
    if let Ok(hook) = std::env::var("TWBENCH_SAMPLE_HOOK") {
        Command::new("sh")
            .args(["-c", &hook, "hook", what, &pid.to_string()])
            .status()?;
    }
    Ok(Sample { rss, anon })
}

/// What [`sample`] read, in KiB.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: u64,
    /// RssAnon: the heap and stacks alone, without the binary's pages.
    anon: u64,
}

/// Waits until the kernel holds routes for exactly `want` of `peers`.
async fn wait_routes(
    nl: &mut mpsc::UnboundedReceiver<Seen>,
    present: &mut HashSet<Ipv4Addr>,
    ours: &HashSet<Ipv4Addr>,
    want: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while present.len() != want {
        let seen = tokio::time::timeout_at(deadline, nl.recv())
            .await
            .with_context(|| format!("{} routes, want {want}", present.len()))?
            .context("netlink monitor stopped")?;
        match seen.change {
            Change::Overrun => bail!("netlink monitor overrun"),
            Change::Route(a, 24) if ours.contains(&a) => {
                if seen.added {
                    present.insert(a);
                } else {
                    present.remove(&a);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `memory --pid PID --n N --cycles C [--mid M] [--smaps DIR]`.
async fn memory(opts: &Opts) -> Result<()> {
    let pid: u32 = opts.num("pid", 0)?;
    let n: u32 = opts.num("n", 10_000)?;
    let mid: u32 = opts.num("mid", 1000)?.min(n);
    let cycles: u32 = opts.num("cycles", 10)?;
    let settle = Duration::from_millis(opts.num("settle-ms", 1000)?);
    let timeout = Duration::from_secs(opts.num("timeout-s", 120)?);
    let prefix = opts.prefix();
    let mut client = connect(opts).await?;
    let peers = free_peers(&mut client, &prefix, 0, n).await?;
    let ours: HashSet<Ipv4Addr> = peers.iter().map(|(_, p)| p.gw).collect();
    let mut present = HashSet::new();
    let mut nl = monitor()?;

    let smaps = opts.named.get("smaps");
    tokio::time::sleep(settle).await;
    let Sample {
        rss: rss0,
        anon: anon0,
    } = sample(pid, "start", smaps)?;
    let mut lease = client.lease_grant(3600, None).await?.id();
    put_txns(&mut client, &prefix, lease, &peers[..mid as usize]).await?;
    wait_routes(&mut nl, &mut present, &ours, mid as usize, timeout).await?;
    tokio::time::sleep(settle).await;
    let rss_mid = rss_kib(pid)?;
    put_txns(&mut client, &prefix, lease, &peers[mid as usize..]).await?;
    wait_routes(&mut nl, &mut present, &ours, n as usize, timeout).await?;
    tokio::time::sleep(settle).await;
    let Sample {
        rss: rss_n,
        anon: anon_n,
    } = sample(pid, "full", smaps)?;
    let mut per_cycle = Vec::new();
    for c in 0..cycles {
        client.lease_revoke(lease).await?;
        wait_routes(&mut nl, &mut present, &ours, 0, timeout).await?;
        tokio::time::sleep(settle).await;
        sample(pid, &format!("cycle{}-empty", c + 1), smaps)?;
        lease = client.lease_grant(3600, None).await?.id();
        put_txns(&mut client, &prefix, lease, &peers).await?;
        wait_routes(&mut nl, &mut present, &ours, n as usize, timeout).await?;
        tokio::time::sleep(settle).await;
        per_cycle.push(sample(pid, &format!("cycle{}-full", c + 1), smaps)?.rss);
    }
    client.lease_revoke(lease).await?;
    wait_routes(&mut nl, &mut present, &ours, 0, timeout).await?;
    tokio::time::sleep(settle).await;
    let rss_end = rss_kib(pid)?;
    let mib = |k: u64| k as f64 / 1024.0;
    let after = per_cycle.last().copied().unwrap_or(rss_n);
    println!("rss_0_peers_mib: {:.1} MiB", mib(rss0));
    println!("rss_anon_0_peers_mib: {:.1} MiB", mib(anon0));
    println!("rss_{mid}_peers_mib: {:.1} MiB", mib(rss_mid));
    println!("rss_{n}_peers_mib: {:.1} MiB", mib(rss_n));
    println!("rss_anon_{n}_peers_mib: {:.1} MiB", mib(anon_n));
    println!(
        "rss_{n}_peers_after_{cycles}_cycles_mib: {:.1} MiB",
        mib(after)
    );
    println!("rss_0_peers_after_cycles_mib: {:.1} MiB", mib(rss_end));
    println!(
        "rss_{n}_peers_ratio_vs_0_peers: {:.2} x",
        mib(rss_n) / mib(rss0)
    );
    println!(
        "rss_growth_after_{cycles}_cycles_ratio: {:.3} x",
        mib(after) / mib(rss_n)
    );
    if let Some(path) = opts.named.get("samples") {
        let mut text = format!("0 {rss0}\n{mid} {rss_mid}\n{n} {rss_n}\n");
        for (c, r) in per_cycle.iter().enumerate() {
            text.push_str(&format!("cycle{} {r}\n", c + 1));
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Which of a known set of peers have all three entries in the kernel, from
/// the monitor's changes (additions only: a run starts from an empty kernel
/// or from a deleted device, and a deleted device takes every entry with it).
struct Programmed {
    by_gw: HashMap<Ipv4Addr, usize>,
    by_mac: HashMap<[u8; 6], usize>,
    masks: Vec<u8>,
    complete: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Programmed {
    fn new(peers: &[Peer]) -> Self {
        let mut by_gw = HashMap::new();
        let mut by_mac = HashMap::new();
        for (idx, p) in peers.iter().enumerate() {
            by_gw.insert(p.gw, idx);
            by_mac.insert(p.mac, idx);
        }
        Self {
            by_gw,
            by_mac,
            masks: vec![0; peers.len()],
            complete: 0,
            first: None,
            last: None,
        }
    }

    fn reset(&mut self) {
        self.masks.iter_mut().for_each(|m| *m = 0);
        self.complete = 0;
        self.first = None;
        self.last = None;
    }

    fn done(&self) -> bool {
        self.complete == self.masks.len()
    }

    fn apply(&mut self, seen: &Seen) -> Result<()> {
        let (idx, bit) = match seen.change {
            Change::Overrun => bail!("netlink monitor overrun"),
            Change::Neigh(a) => (self.by_gw.get(&a), ENTRY_NEIGH),
            Change::Route(a, 24) => (self.by_gw.get(&a), ENTRY_ROUTE),
            Change::Route(..) => (None, 0),
            Change::Fdb(m) => (self.by_mac.get(&m), ENTRY_FDB),
        };
        let Some(&idx) = idx else {
            return Ok(());
        };
        if !seen.added || self.masks[idx] == ALL_ENTRIES {
            return Ok(());
        }
        self.first.get_or_insert(seen.at);
        self.masks[idx] |= bit;
        if self.masks[idx] == ALL_ENTRIES {
            self.complete += 1;
            self.last = Some(seen.at);
        }
        Ok(())
    }
}

/// One `/healthz` request: when it was started (before connect) and when
/// the whole answer had arrived; `None` if the connection was refused (the
/// daemon not listening yet).
#[derive(Debug, Clone, Copy)]
struct Probe {
    start: Instant,
    end: Option<Instant>,
}

/// Polls `url` back to back (a new connection each, `pause` between) from a
/// thread of its own, so the measuring side never waits on this process's
/// runtime, until `stop` is set.
fn poll_healthz(
    url: String,
    pause: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Probe>>> {
    std::thread::spawn(move || {
        let mut probes = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let start = Instant::now();
            match http_get(&url) {
                Ok((200, _)) => probes.push(Probe {
                    start,
                    end: Some(Instant::now()),
                }),
                Ok((status, _)) => bail!("{url} answered {status}"),
                Err(e)
                    if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
                        == Some(std::io::ErrorKind::ConnectionRefused) =>
                {
                    probes.push(Probe { start, end: None });
                }
                Err(e) => return Err(e.context(format!("GET {url}"))),
            }
            std::thread::sleep(pause);
        }
        Ok(probes)
    })
}

/// Latency figures of the answered probes whose interval overlaps
/// `[from, to]`: a request stalled across a window's edge belongs to it.
fn report_window(label: &str, probes: &[Probe], from: Instant, to: Instant) -> Vec<f64> {
    let lat = sorted(
        probes
            .iter()
            .filter_map(|p| Some((p.start, p.end?)))
            .filter(|(s, e)| *e >= from && *s <= to)
            .map(|(s, e)| ms(e - s))
            .collect(),
    );
    let slow = lat.iter().filter(|&&v| v >= 100.0).count();
    println!("{label}_window_ms: {:.1} ms", ms(to - from));
    println!("{label}_healthz_requests: {} n", lat.len());
    println!("{label}_healthz_worst_ms: {:.2} ms", percentile(&lat, 1.0));
    println!("{label}_healthz_p99_ms: {:.2} ms", percentile(&lat, 0.99));
    println!("{label}_healthz_p50_ms: {:.2} ms", percentile(&lat, 0.5));
    println!("{label}_healthz_over_100ms: {slow} n");
    lat
}

/// Feeds monitor changes to `tracker` (those seen before `since` are ignored)
/// until `until(tracker)` holds; returns the changes it did not need to look at.
async fn track_until(
    nl: &mut mpsc::UnboundedReceiver<Seen>,
    tracker: &mut Programmed,
    extra: &mut Programmed,
    since: Instant,
    deadline: tokio::time::Instant,
    mut until: impl FnMut(&Programmed, &Programmed) -> bool,
) -> Result<()> {
    while !until(tracker, extra) {
        let seen = tokio::time::timeout_at(deadline, nl.recv())
            .await
            .with_context(|| {
                format!(
                    "{} of {} peers programmed, then the deadline passed",
                    tracker.complete,
                    tracker.masks.len()
                )
            })?
            .context("netlink monitor stopped")?;
        if seen.at < since {
            continue;
        }
        tracker.apply(&seen)?;
        extra.apply(&seen)?;
    }
    Ok(())
}

/// `responsiveness [--healthz URL] [--pause-ms 5] [--idle-s 12] [--settle-ms 1000]
/// [--dev flannel.1] [--samples FILE] -- twilld ARGS`: with the leases
/// already in etcd (as `populate` writes them, into a fresh etcd), starts
/// twilld and polls `/healthz` throughout three windows: the cold start
/// (until every listed peer has its ARP, FDB and route entries), the idle
/// daemon with every peer programmed (the anchor; long enough to hold one
/// periodic reconcile at twilld's default 10 s), and the re-creation of the
/// VXLAN device after `ip link del` (until every peer is back). One extra
/// lease is put when the cold start's first entry appears (the listing is
/// done) and one on the idle daemon: put → programmed, the timing a joining
/// peer sees.
async fn responsiveness(opts: &Opts) -> Result<()> {
    let healthz = opts.str("healthz", "http://127.0.0.1:8471/healthz");
    let pause = Duration::from_millis(opts.num("pause-ms", 5)?);
    let idle = Duration::from_secs(opts.num("idle-s", 12)?);
    let settle = Duration::from_millis(opts.num("settle-ms", 1000)?);
    let dev = opts.str("dev", "flannel.1");
    let timeout = Duration::from_secs(opts.num("timeout-s", 120)?);
    let log = opts.named.get("log");
    let Some((prog, args)) = opts.command.split_first() else {
        bail!("responsiveness: give the twilld command line after --");
    };
    let prefix = opts.prefix();
    let mut client = connect(opts).await?;
    // The peers to wait for: every generated lease already in etcd.
    let peers: Vec<Peer> = client
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?
        .kvs()
        .iter()
        .filter_map(|kv| {
            let subnet = kv.key_str().ok()?.strip_prefix(prefix.as_str())?;
            let gw: Ipv4Addr = subnet.strip_suffix("-24")?.parse().ok()?;
            let i = u32::from(gw).checked_sub(0x0a80_0000)? >> 8;
            (Peer::new(i).gw == gw).then(|| Peer::new(i))
        })
        .collect();
    let n = peers.len();
    if n == 0 {
        bail!("responsiveness: no generated leases under {prefix} (run populate first)");
    }
    let extra_lease = client.lease_grant(3600, None).await?.id();
    let extras = free_peers(&mut client, &prefix, opts.num("from", 20_000)?, 2).await?;
    let (cold_extra, idle_extra) = (extras[0], extras[1]);
    let mut kv = client.kv_client();
    let mut tracker = Programmed::new(&peers);
    let mut nl = monitor()?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(
            log.and_then(|l| std::fs::File::create(l).ok())
                .map_or_else(std::process::Stdio::null, Into::into),
        )
        .spawn()
        .with_context(|| format!("cannot start {prog}"))?;
    let poller = poll_healthz(healthz, pause, stop.clone());
    let run = async {
        let deadline = tokio::time::Instant::now() + timeout;
        // Phase 1: the cold start. The first entry in the kernel means the
        // listing is done; a lease put now reaches twilld through its watch.
        let mut extra = Programmed::new(&[cold_extra.1]);
        track_until(&mut nl, &mut tracker, &mut extra, t0, deadline, |t, _| {
            t.first.is_some()
        })
        .await?;
        let put_cold = Instant::now();
        kv.put(
            cold_extra.1.key(&prefix),
            cold_extra.1.value(cold_extra.0),
            Some(PutOptions::new().with_lease(extra_lease)),
        )
        .await?;
        track_until(&mut nl, &mut tracker, &mut extra, t0, deadline, |t, e| {
            t.done() && e.done()
        })
        .await?;
        let cold_end = tracker.last.unwrap_or(t0);
        let cold_extra_at = extra.last.unwrap_or(put_cold);

        // The anchor: the same daemon, every peer programmed, nothing to do.
        tokio::time::sleep(settle).await;
        let idle_from = Instant::now();
        tokio::time::sleep(idle).await;
        let idle_to = Instant::now();
        let mut extra = Programmed::new(&[idle_extra.1]);
        let put_idle = Instant::now();
        kv.put(
            idle_extra.1.key(&prefix),
            idle_extra.1.value(idle_extra.0),
            Some(PutOptions::new().with_lease(extra_lease)),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut none = Programmed::new(&[]);
        track_until(
            &mut nl,
            &mut extra,
            &mut none,
            put_idle,
            deadline,
            |e, _| e.done(),
        )
        .await?;
        let idle_extra_at = extra.last.unwrap_or(put_idle);
        tokio::time::sleep(settle).await;

        // Phase 2: the device deleted, with every entry on it; twilld's
        // periodic reconcile finds it missing and programs everything again.
        tracker.reset();
        let del_at = Instant::now();
        let status = Command::new("ip").args(["link", "del", &dev]).status()?;
        if !status.success() {
            bail!("ip link del {dev}: {status}");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        track_until(
            &mut nl,
            &mut tracker,
            &mut none,
            del_at,
            deadline,
            |t, _| t.done(),
        )
        .await?;
        let back_first = tracker.first.unwrap_or(del_at);
        let back_end = tracker.last.unwrap_or(del_at);
        // A last stretch after the re-creation, so a stall just after the
        // last entry (the reconcile's own end) is still seen.
        tokio::time::sleep(settle).await;
        Ok::<_, anyhow::Error>((
            (cold_end, put_cold, cold_extra_at),
            (idle_from, idle_to, put_idle, idle_extra_at),
            (del_at, back_first, back_end),
        ))
    };
    let outcome = run.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = poller.join();
    let exited = child.try_wait()?;
    stop_child(&mut child);
    client.lease_revoke(extra_lease).await?;
    if let Some(status) = exited {
        bail!("{prog} exited during the run: {status}");
    }
    let (
        (cold_end, put_cold, cold_extra_at),
        (idle_from, idle_to, put_idle, idle_extra_at),
        (del_at, back_first, back_end),
    ) = outcome?;
    let probes = probes.map_err(|_| anyhow::anyhow!("the /healthz poller panicked"))??;

    let refused = probes.iter().filter(|p| p.end.is_none()).count();
    println!("responsiveness_{n}_peers: {n} n");
    println!(
        "responsiveness_{n}_cold_programmed_ms: {:.1} ms",
        ms(cold_end - t0)
    );
    println!("responsiveness_{n}_cold_healthz_refused: {refused} n");
    let cold = report_window(&format!("responsiveness_{n}_cold"), &probes, t0, cold_end);
    let idle_lat = report_window(
        &format!("responsiveness_{n}_idle"),
        &probes,
        idle_from,
        idle_to,
    );
    let recreate = report_window(
        &format!("responsiveness_{n}_recreate"),
        &probes,
        del_at,
        back_end,
    );
    println!(
        "responsiveness_{n}_recreate_detect_ms: {:.1} ms",
        ms(back_first - del_at)
    );
    println!(
        "responsiveness_{n}_recreate_program_ms: {:.1} ms",
        ms(back_end - back_first)
    );
    let idle_p50 = percentile(&idle_lat, 0.5);
    for (label, lat) in [("cold", &cold), ("recreate", &recreate)] {
        println!(
            "responsiveness_{n}_{label}_worst_ratio_vs_idle_p50: {:.1} x",
            percentile(lat, 1.0) / idle_p50
        );
    }
    let cold_join = ms(cold_extra_at - put_cold);
    let idle_join = ms(idle_extra_at - put_idle);
    println!("responsiveness_{n}_cold_join_put_to_programmed_ms: {cold_join:.1} ms");
    println!(
        "responsiveness_{n}_cold_join_after_last_peer_ms: {:.1} ms",
        ms(cold_extra_at.saturating_duration_since(cold_end))
    );
    println!("responsiveness_{n}_idle_join_put_to_programmed_ms: {idle_join:.1} ms");
    println!(
        "responsiveness_{n}_cold_join_ratio_vs_idle: {:.1} x",
        cold_join / idle_join
    );
    if let Some(path) = opts.named.get("samples") {
        // phase, start (ms since twilld's start), latency (ms; -1: refused).
        let mut text = String::new();
        for p in &probes {
            let phase = if p.start <= cold_end {
                "cold"
            } else if p.start >= idle_from && p.start <= idle_to {
                "idle"
            } else if p.start >= del_at && p.start <= back_end {
                "recreate"
            } else {
                "between"
            };
            let lat = p.end.map_or(-1.0, |e| ms(e - p.start));
            text.push_str(&format!("{phase} {:.3} {lat:.3}\n", ms(p.start - t0)));
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
