//! Choosing the underlay interface and public IP, as flanneld does:
//! `-iface` (name or IP, first match wins), then `-iface-regex`, else the
//! interface of the default route.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use twill_backend::UnderlayInterface;
use twill_netlink::{Link, NetlinkHandle};

fn first_v4(addrs: &[twill_netlink::Address], index: u32) -> Option<Ipv4Addr> {
    addrs.iter().find(|a| a.index == index).map(|a| a.addr.ip())
}

/// The devices twill (and flannel) make for the overlay: `flannel.<VNI>`,
/// `flannel-v6.<VNI>`. Taking one as the underlay would re-create it (cutting
/// every peer off) and tunnel the overlay through itself.
fn is_overlay_device(name: &str) -> bool {
    ["flannel.", "flannel-v6."].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn underlay(link: &Link, addr: Ipv4Addr) -> anyhow::Result<UnderlayInterface> {
    if is_overlay_device(&link.name) {
        bail!(
            "-iface: {} ({addr}) is an overlay device, not an underlay: give the interface that reaches the other hosts (e.g. eth0)",
            link.name
        );
    }
    Ok(UnderlayInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        addr,
    })
}

/// Finds the interface to use for inter-host traffic.
///
/// # Errors
/// When `-iface`/`-iface-regex` match nothing, or there is no default route.
pub fn choose(ifaces: &[String], regexes: &[String]) -> anyhow::Result<UnderlayInterface> {
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let links = nl.link().list().context("cannot list interfaces")?;
    let addrs = nl.address().list(None).context("cannot list addresses")?;

    for wanted in ifaces {
        if let Ok(ip) = wanted.parse::<Ipv4Addr>() {
            if let Some(a) = addrs.iter().find(|a| a.addr.ip() == ip) {
                if let Some(link) = links.iter().find(|l| l.index == a.index) {
                    return underlay(link, ip);
                }
            }
        } else if let Some(link) = links.iter().find(|l| &l.name == wanted) {
            let ip = first_v4(&addrs, link.index)
                .with_context(|| format!("-iface {wanted} has no IPv4 address"))?;
            return underlay(link, ip);
        }
    }
    if !ifaces.is_empty() {
        bail!("-iface {} matches no interface", ifaces.join(","));
    }

    for pattern in regexes {
        let re = regex_lite::Regex::new(pattern)
            .with_context(|| format!("-iface-regex {pattern:?} is not a valid regex"))?;
        for a in &addrs {
            let Some(link) = links.iter().find(|l| l.index == a.index) else {
                continue;
            };
            if link.name == "lo" || is_overlay_device(&link.name) {
                continue;
            }
            if re.is_match(&a.addr.ip().to_string()) || re.is_match(&link.name) {
                return underlay(link, a.addr.ip());
            }
        }
    }
    if !regexes.is_empty() {
        bail!("-iface-regex {} matches no interface", regexes.join(","));
    }

    let routes = nl.route().list(None).context("cannot list routes")?;
    let default = routes
        .iter()
        .find(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .context("no default route to pick an interface from: pass -iface")?;
    let index = default.oif.unwrap_or_default();
    let link = links
        .iter()
        .find(|l| l.index == index)
        .context("the default route's interface vanished")?;
    let ip = first_v4(&addrs, index).with_context(|| {
        format!(
            "default interface {} has no IPv4 address: pass -iface",
            link.name
        )
    })?;
    underlay(link, ip)
}

/// This host's own IPv4 networks, which no subnet (ours or a peer's) may
/// overlap: the underlay interface's networks, every next hop of the main
/// table's routes that twill did not make and that do not leave through the
/// overlay (the default gateway among them), the
/// public IP, and the etcd endpoints given as addresses. Routing any of them
/// into the overlay would cut the host off its LAN, its gateway or etcd.
/// (etcd endpoints given as DNS names are not resolved here.)
///
/// # Errors
/// When netlink cannot be read.
pub fn host_networks(
    underlay: &UnderlayInterface,
    public_ip: Ipv4Addr,
    etcd_ips: &[Ipv4Addr],
) -> anyhow::Result<Vec<twill_model::Ipv4Network>> {
    use twill_model::Ipv4Network;
    let host = |ip: Ipv4Addr| Ipv4Network::new(ip, 32).ok();
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let mut nets: Vec<Ipv4Network> = nl
        .address()
        .list(Some(underlay.index))
        .context("cannot list the underlay's addresses")?
        .iter()
        .filter_map(|a| Ipv4Network::new(a.addr.network(), a.addr.prefix()).ok())
        .collect();
    let routes = nl
        .route()
        .list(Some(twill_netlink::MAIN_TABLE))
        .context("cannot list routes")?;
    // Next hops through the overlay (ours, or flanneld's before a migration:
    // `10.244.2.0/24 via 10.244.2.0 dev flannel.1`) are peers, not the host's.
    let overlay: Vec<u32> = nl
        .link()
        .list()
        .context("cannot list interfaces")?
        .iter()
        .filter(|l| is_overlay_device(&l.name))
        .map(|l| l.index)
        .collect();
    nets.extend(
        routes
            .iter()
            .filter(|r| r.protocol != twill_netlink::TWILL_RTPROT)
            .filter(|r| !r.oif.is_some_and(|i| overlay.contains(&i)))
            .filter_map(|r| r.gateway)
            .filter_map(host),
    );
    nets.extend(host(public_ip));
    nets.extend(etcd_ips.iter().copied().filter_map(host));
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

/// Deletes the routes of ours (protocol [`twill_netlink::TWILL_RTPROT`],
/// main table) whose destination overlaps one of the host's own networks
/// (see [`host_networks`]) and returns them. No lease may put such a route
/// in place any more; this removes one an older version (or someone using
/// our protocol number) left behind, which can keep the host from reaching
/// etcd and so from ever reconciling it away.
///
/// # Errors
/// When netlink cannot be read or a deletion is refused.
pub fn remove_our_routes_over(
    protected: &[twill_model::Ipv4Network],
) -> anyhow::Result<Vec<twill_netlink::Route>> {
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let overlapping: Vec<twill_netlink::Route> = nl
        .route()
        .list(Some(twill_netlink::MAIN_TABLE))
        .context("cannot list routes")?
        .into_iter()
        .filter(|r| r.protocol == twill_netlink::TWILL_RTPROT)
        .filter(|r| {
            protected
                .iter()
                .any(|p| p.contains(r.dst.network()) || r.dst.contains(p.network()))
        })
        .collect();
    for r in &overlapping {
        nl.route()
            .delete(*r)
            .with_context(|| format!("cannot delete the route to {}", r.dst))?;
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
