//! Choosing the underlay interface and its addresses, as flanneld does:
//! `-iface` (name or IP, first match wins), then `-iface-regex`, else the
//! interface of the default route (IPv4's, else IPv6's). The interface's
//! IPv6 address is flannel's first global one; which family is used is the
//! network config's choice (`EnableIPv4`, `EnableIPv6`), made by the agent.

use std::net::IpAddr;

use anyhow::{bail, Context};
use twill_backend::{first_global_ipv6, UnderlayInterface};
use twill_netlink::{Address, Address6, Link, NetlinkHandle};

fn underlay(link: &Link, addrs: &[Address], addrs6: &[Address6]) -> UnderlayInterface {
    UnderlayInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        addr: addrs
            .iter()
            .find(|a| a.index == link.index)
            .map(|a| a.addr.ip()),
        addr6: first_global_ipv6(addrs6, link.index),
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
        if wanted.parse::<IpAddr>().is_err() && links.iter().any(|l| &l.name == wanted) {
            bail!("-iface {wanted} has no IPv4 address and no global IPv6 address");
        }
    }
    if !ifaces.is_empty() {
        bail!("-iface {} matches no interface", ifaces.join(","));
    }

    for pattern in regexes {
        let re = regex_lite::Regex::new(pattern)
            .with_context(|| format!("-iface-regex {pattern:?} is not a valid regex"))?;
        let candidates = addrs
            .iter()
            .map(|a| (a.index, IpAddr::V4(a.addr.ip())))
            .chain(
                addrs6
                    .iter()
                    .filter(|a| twill_model::is_usable_public_ipv6(a.addr.ip()))
                    .map(|a| (a.index, IpAddr::V6(a.addr.ip()))),
            );
        for (index, ip) in candidates {
            let Some(link) = links.iter().find(|l| l.index == index) else {
                continue;
            };
            if link.name == "lo" || twill_agent::host::is_overlay_device(&link.name) {
                continue;
            }
            if re.is_match(&ip.to_string()) || re.is_match(&link.name) {
                // The matched address is the one used for its family.
                let mut found = underlay(link, &addrs, &addrs6);
                match ip {
                    IpAddr::V4(v4) => found.addr = Some(v4),
                    IpAddr::V6(v6) => found.addr6 = Some(v6),
                }
                return Ok(found);
            }
        }
    }
    if !regexes.is_empty() {
        bail!("-iface-regex {} matches no interface", regexes.join(","));
    }

    let routes = nl.route().list(None).context("cannot list routes")?;
    let routes6 = nl.route().list6(None).context("cannot list routes")?;
    let index = routes
        .iter()
        .find(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .and_then(|r| r.oif)
        .or_else(|| {
            routes6
                .iter()
                .find(|r| r.dst.prefix() == 0 && r.oif.is_some())
                .and_then(|r| r.oif)
        })
        .context("no default route to pick an interface from: pass -iface")?;
    let link = links
        .iter()
        .find(|l| l.index == index)
        .context("the default route's interface vanished")?;
    let found = underlay(link, &addrs, &addrs6);
    if found.addr.is_none() && found.addr6.is_none() {
        bail!(
            "default interface {} has no IPv4 address and no global IPv6 address: pass -iface",
            link.name
        );
    }
    Ok(found)
}
