//! This host's own networks, which the overlay must never cover, and the
//! overlay devices, which are never an underlay. Blocking netlink reads:
//! the agent calls them off the runtime.

use std::net::{Ipv4Addr, Ipv6Addr};

use twill_backend::UnderlayInterface;
use twill_model::{Ipv4Network, Ipv6Network};
use twill_netlink::{NetlinkError, NetlinkHandle, Route, Route6, MAIN_TABLE, TWILL_RTPROT};

/// The devices twill (and flannel) make for the overlay: `flannel.<VNI>`,
/// `flannel-v6.<VNI>`. Taking one as the underlay would re-create it
/// (cutting every peer off) and tunnel the overlay through itself.
#[must_use]
pub fn is_overlay_device(name: &str) -> bool {
    ["flannel.", "flannel-v6."].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// This host's own IPv4 networks, which no subnet (ours or a peer's) may
/// overlap: the underlay interface's networks, every next hop of the main
/// table's routes that twill did not make and that do not leave through the
/// overlay (the default gateway among them), and the public IP. Routing any
/// of them into the overlay would cut the host off its LAN or its gateway.
/// The caller adds what only it knows (the etcd endpoints' addresses).
///
/// # Errors
/// When netlink cannot be read.
pub fn host_networks(
    underlay: &UnderlayInterface,
    public_ip: Option<Ipv4Addr>,
) -> Result<Vec<Ipv4Network>, NetlinkError> {
    let host = |ip: Ipv4Addr| Ipv4Network::new(ip, 32).ok();
    let mut nl = NetlinkHandle::new()?;
    let mut nets: Vec<Ipv4Network> = nl
        .address()
        .list(Some(underlay.index))?
        .iter()
        .filter_map(|a| Ipv4Network::new(a.addr.network(), a.addr.prefix()).ok())
        .collect();
    let routes = nl.route().list(Some(MAIN_TABLE))?;
    // Next hops through the overlay (ours, or flanneld's before a migration:
    // `10.244.2.0/24 via 10.244.2.0 dev flannel.1`) are peers, not the host's.
    let overlay = overlay_indexes(&mut nl)?;
    nets.extend(
        routes
            .iter()
            .filter(|r| r.protocol != TWILL_RTPROT)
            .filter(|r| !r.oif.is_some_and(|i| overlay.contains(&i)))
            .filter_map(|r| r.gateway)
            .filter_map(host),
    );
    nets.extend(public_ip.and_then(host));
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

/// The overlay devices' indexes: next hops through them are peers, not
/// the host's own.
fn overlay_indexes(nl: &mut NetlinkHandle) -> Result<Vec<u32>, NetlinkError> {
    Ok(nl
        .link()
        .list()?
        .iter()
        .filter(|l| is_overlay_device(&l.name))
        .map(|l| l.index)
        .collect())
}

/// The IPv6 side of [`host_networks`]: the underlay's global IPv6 networks,
/// the global next hops of the main table's IPv6 routes that twill did not
/// make and that do not leave through the overlay, and the public IPv6
/// address. Link-local ones (`fe80::/10`, the usual IPv6 gateway) need no
/// protection: no `IPv6Network` may overlap them.
///
/// # Errors
/// When netlink cannot be read.
pub fn host_networks6(
    underlay: &UnderlayInterface,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Vec<Ipv6Network>, NetlinkError> {
    let global = |ip: &Ipv6Addr| twill_model::is_usable_public_ipv6(*ip);
    let host = |ip: Ipv6Addr| Ipv6Network::new(ip, 128).ok();
    let mut nl = NetlinkHandle::new()?;
    let mut nets: Vec<Ipv6Network> = nl
        .address()
        .list6(Some(underlay.index))?
        .iter()
        .filter(|a| global(&a.addr.ip()))
        .filter_map(|a| Ipv6Network::new(a.addr.network(), a.addr.prefix()).ok())
        .collect();
    let overlay = overlay_indexes(&mut nl)?;
    nets.extend(
        nl.route()
            .list6(Some(MAIN_TABLE))?
            .iter()
            .filter(|r| r.protocol != TWILL_RTPROT)
            .filter(|r| !r.oif.is_some_and(|i| overlay.contains(&i)))
            .filter_map(|r| r.gateway)
            .filter(global)
            .filter_map(host),
    );
    nets.extend(public_ipv6.and_then(host));
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

/// The IPv6 side of [`remove_our_routes_over`].
///
/// # Errors
/// When netlink cannot be read or a deletion is refused.
pub fn remove_our_routes_over6(protected: &[Ipv6Network]) -> Result<Vec<Route6>, NetlinkError> {
    let mut nl = NetlinkHandle::new()?;
    let overlapping: Vec<Route6> = nl
        .route()
        .list6(Some(MAIN_TABLE))?
        .into_iter()
        .filter(|r| r.protocol == TWILL_RTPROT)
        .filter(|r| {
            protected
                .iter()
                .any(|p| p.contains(r.dst.network()) || r.dst.contains(p.network()))
        })
        .collect();
    for r in &overlapping {
        nl.route().delete6(*r)?;
    }
    Ok(overlapping)
}

/// Deletes the routes of ours (protocol [`TWILL_RTPROT`], main table) whose
/// destination overlaps one of `protected` and returns them. No lease may
/// put such a route in place any more; this removes one an older version
/// (or someone using our protocol number) left behind, which can keep the
/// host from reaching etcd and so from ever reconciling it away.
///
/// # Errors
/// When netlink cannot be read or a deletion is refused.
pub fn remove_our_routes_over(protected: &[Ipv4Network]) -> Result<Vec<Route>, NetlinkError> {
    let mut nl = NetlinkHandle::new()?;
    let overlapping: Vec<Route> = nl
        .route()
        .list(Some(MAIN_TABLE))?
        .into_iter()
        .filter(|r| r.protocol == TWILL_RTPROT)
        .filter(|r| {
            protected
                .iter()
                .any(|p| p.contains(r.dst.network()) || r.dst.contains(p.network()))
        })
        .collect();
    for r in &overlapping {
        nl.route().delete(*r)?;
    }
    Ok(overlapping)
}

#[cfg(test)]
mod tests {
    use super::is_overlay_device;

    #[test]
    fn overlay_devices_are_recognised() {
        for name in ["flannel.1", "flannel.100", "flannel-v6.4096"] {
            assert!(is_overlay_device(name), "{name}");
        }
        for name in [
            "eth0",
            "flannel",
            "flannel.",
            "flannel.x",
            "flannel0",
            "cni0",
        ] {
            assert!(!is_overlay_device(name), "{name}");
        }
    }
}
