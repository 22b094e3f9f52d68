//! Programs N VXLAN peers (permanent neighbour + FDB + onlink route each) on
//! an existing VXLAN device with one batched `execute`, and prints the time.
//!
//! Used by `benches/scripts/program_peers.sh`, which runs it inside a fresh
//! network namespace next to the same work done with `ip -batch` and
//! `bridge -batch`.
//!
//! IPv4 (default, on `flannel.1`): peer `i` (0-based) is subnet
//! `10.(128 + i/256).(i%256).0/24`, public IP `10.1.0.0 + i + 1`, VTEP MAC
//! `0e:00:00:ii:ii:ii`; ARP entry, `bridge fdb append`, route, as the IPv4
//! script has always measured.
//!
//! IPv6 (`-6`, on `flannel-v6.1`): peer `i` is subnet `fd80:0:I::/64` with
//! `I` = `i` as 32 bits (`fd80:0:<i/65536>:<i%65536>::/64`), `PublicIPv6`
//! `fd01::` + `i + 1`, VTEP MAC `0e:00:00:ii:ii:ii`, laid out exactly as the
//! vxlan backend lays out an IPv6 peer (`twill_backend::vxlan_peer` for IPv6,
//! which this crate cannot depend on): NDP entry for the subnet's first
//! address, `bridge fdb replace` with the IPv6 `dst` (the backend's op for a
//! unicast MAC), `<subnet> via <subnet>:: dev flannel-v6.1 onlink`.
//!
//! Usage: `program_peers [-6] N [DEVICE [KINDS]]` (KINDS: any of `n`, `f`,
//! `r`; default `nfr`) (run as root inside the namespace).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use twill_netlink::{
    FdbEntry, FdbEntry6, MacAddr, Neighbour, Neighbour6, NetlinkHandle, Request, Route, Route6,
};

const USAGE: &str = "usage: program_peers [-6] N [DEVICE [KINDS]]";

/// Which entries of each peer to program.
struct Kinds {
    neighbour: bool,
    fdb: bool,
    route: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let ipv6 = args.next_if(|a| a == "-6").is_some();
    let n: u32 = args.next().ok_or(USAGE)?.parse()?;
    // 10.128.0.0/9 holds 32,768 /24s; the IPv6 layout is kept to the same
    // bound so both modes accept the same sizes.
    if n > 32_768 {
        return Err("at most 32768 peers".into());
    }
    let dev_name = args
        .next()
        .unwrap_or_else(|| if ipv6 { "flannel-v6.1" } else { "flannel.1" }.to_string());
    let kinds = args.next().unwrap_or_else(|| "nfr".to_string());
    let kinds = Kinds {
        neighbour: kinds.contains('n'),
        fdb: kinds.contains('f'),
        route: kinds.contains('r'),
    };
    // Timed from socket creation (iproute2's time includes its start-up too).
    let start = Instant::now();
    let mut nl = NetlinkHandle::new()?;
    let dev = nl.link().get_by_name(&dev_name)?.index;
    let reqs = if ipv6 {
        requests6(n, dev, &kinds)?
    } else {
        requests4(n, dev, &kinds)?
    };
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

fn peer_mac(i: u32) -> MacAddr {
    let [_, a, b, c] = i.to_be_bytes();
    MacAddr([0x0e, 0, 0, a, b, c])
}

fn requests4(n: u32, dev: u32, kinds: &Kinds) -> Result<Vec<Request>, Box<dyn std::error::Error>> {
    let mut reqs = Vec::with_capacity(3 * n as usize);
    for i in 0..n {
        let gw = Ipv4Addr::from(0x0a80_0000 + (i << 8));
        let public = Ipv4Addr::from(0x0a01_0000 + i + 1);
        let mac = peer_mac(i);
        if kinds.neighbour {
            reqs.push(Request::NeighbourReplace(Neighbour::permanent(
                dev, gw, mac,
            )));
        }
        if kinds.fdb {
            reqs.push(Request::FdbAppend(FdbEntry::permanent(dev, mac, public)));
        }
        if kinds.route {
            reqs.push(Request::RouteReplace(
                Route::new(ipnetwork::Ipv4Network::new(gw, 24)?)
                    .via(gw)
                    .dev(dev)
                    .onlink(),
            ));
        }
    }
    Ok(reqs)
}

fn requests6(n: u32, dev: u32, kinds: &Kinds) -> Result<Vec<Request>, Box<dyn std::error::Error>> {
    let mut reqs = Vec::with_capacity(3 * n as usize);
    for i in 0..n {
        let subnet = ipnetwork::Ipv6Network::new(
            Ipv6Addr::from((0xfd80_u128 << 112) | (u128::from(i) << 64)),
            64,
        )?;
        let gw = subnet.network();
        let public = Ipv6Addr::from((0xfd01_u128 << 112) | u128::from(i + 1));
        let mac = peer_mac(i);
        if kinds.neighbour {
            reqs.push(Request::NeighbourReplace6(Neighbour6::permanent(
                dev, gw, mac,
            )));
        }
        if kinds.fdb {
            reqs.push(Request::FdbReplace6(FdbEntry6::permanent(dev, mac, public)));
        }
        if kinds.route {
            reqs.push(Request::RouteReplace6(
                Route6::new(subnet).via(gw).dev(dev).onlink(),
            ));
        }
    }
    Ok(reqs)
}
