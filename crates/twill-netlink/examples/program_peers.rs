//! Programs N VXLAN peers (permanent ARP + FDB + onlink route each) on an
//! existing `flannel.1` with one batched `execute`, and prints the time.
//!
//! Used by `benches/scripts/program_peers.sh`, which runs it inside a fresh
//! network namespace next to the same work done with `ip -batch` and
//! `bridge -batch`. Peer `i` (0-based) is subnet `10.(128 + i/256).(i%256).0/24`,
//! public IP `10.1.0.0 + i + 1`, VTEP MAC `0e:00:00:ii:ii:ii`.
//!
//! Usage: `program_peers N [DEVICE [KINDS]]` (KINDS: any of `n`, `f`, `r`; default `nfr`) (run as root inside the namespace).

use std::net::Ipv4Addr;
use std::time::Instant;

use twill_netlink::{FdbEntry, MacAddr, Neighbour, NetlinkHandle, Request, Route};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args
        .next()
        .ok_or("usage: program_peers N [DEVICE]")?
        .parse()?;
    if n > 32_768 {
        return Err("at most 32768 peers (10.128.0.0/9 in /24s)".into());
    }
    let dev_name = args.next().unwrap_or_else(|| "flannel.1".to_string());
    // Which entries to program: n(eighbour), f(db), r(oute); default all.
    let kinds = args.next().unwrap_or_else(|| "nfr".to_string());
    // Timed from socket creation (iproute2's time includes its start-up too).
    let start = Instant::now();
    let mut nl = NetlinkHandle::new()?;
    let dev = nl.link().get_by_name(&dev_name)?.index;
    let mut reqs = Vec::with_capacity(3 * n as usize);
    for i in 0..n {
        let gw = Ipv4Addr::from(0x0a80_0000 + (i << 8));
        let public = Ipv4Addr::from(0x0a01_0000 + i + 1);
        let [_, a, b, c] = i.to_be_bytes();
        let mac = MacAddr([0x0e, 0, 0, a, b, c]);
        if kinds.contains('n') {
            reqs.push(Request::NeighbourReplace(Neighbour::permanent(
                dev, gw, mac,
            )));
        }
        if kinds.contains('f') {
            reqs.push(Request::FdbAppend(FdbEntry::permanent(dev, mac, public)));
        }
        if kinds.contains('r') {
            reqs.push(Request::RouteReplace(
                Route::new(ipnetwork::Ipv4Network::new(gw, 24)?)
                    .via(gw)
                    .dev(dev)
                    .onlink(),
            ));
        }
    }
    let outcome = nl.execute(&reqs)?;
    let secs = start.elapsed().as_secs_f64();
    let failed = outcome.errors().count();
    if let Some((i, e)) = outcome.errors().next() {
        eprintln!("first failure (request {i}): {e}");
    }
    println!("requests: {}", reqs.len());
    println!("batch_size: {}", nl.batch_size());
    println!("failed: {failed}");
    println!("seconds: {secs:.4}");
    if failed > 0 {
        return Err(format!("{failed} requests failed").into());
    }
    Ok(())
}
