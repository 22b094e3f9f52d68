//! Choosing the underlay interface and public IP, as flanneld does:
//! `-iface` (name or IP, first match wins), then `-iface-regex`, else the
//! interface of the default route.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use twill_backend::UnderlayInterface;
use twill_netlink::{Address6, Link, NetlinkHandle};

fn first_v4(addrs: &[twill_netlink::Address], index: u32) -> Option<Ipv4Addr> {
    addrs.iter().find(|a| a.index == index).map(|a| a.addr.ip())
}

fn underlay(link: &Link, addr: Ipv4Addr, addrs6: &[Address6]) -> UnderlayInterface {
    UnderlayInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        addr,
        addr6: twill_backend::first_global_ipv6(addrs6, link.index),
    }
}

/// Finds the interface to use for inter-host traffic.
///
/// # Errors
/// When `-iface`/`-iface-regex` match nothing, or there is no default route.
pub fn choose(ifaces: &[String], regexes: &[String]) -> anyhow::Result<UnderlayInterface> {
    let mut nl = NetlinkHandle::new().context("cannot open a netlink socket")?;
    let links = nl.link().list().context("cannot list interfaces")?;
    let addrs = nl.address().list(None).context("cannot list addresses")?;
    let addrs6 = nl.address().list6(None).context("cannot list addresses")?;

    // The overlay device check is the agent's (AgentOptions::validate).
    for wanted in ifaces {
        if let Some(found) = UnderlayInterface::find(&mut nl, wanted)
            .with_context(|| format!("-iface {wanted}: cannot read interfaces"))?
        {
            return Ok(found);
        }
        if wanted.parse::<Ipv4Addr>().is_err() && links.iter().any(|l| &l.name == wanted) {
            bail!("-iface {wanted} has no IPv4 address");
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
            if link.name == "lo" || twill_agent::host::is_overlay_device(&link.name) {
                continue;
            }
            if re.is_match(&a.addr.ip().to_string()) || re.is_match(&link.name) {
                return Ok(underlay(link, a.addr.ip(), &addrs6));
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
    Ok(underlay(link, ip, &addrs6))
}
