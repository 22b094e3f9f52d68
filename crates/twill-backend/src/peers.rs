//! Peer validation shared by the backends.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use twill_model::{NetworkConfig, SubnetKey, SubnetLease};

/// Checks a peer lease common to all backends. `Ok(None)`: it is our own lease
/// (ignored silently); `Err(reason)`: skip with reason.
pub(crate) fn check_common(
    peer: &SubnetLease,
    own: Option<&SubnetKey>,
    our_ip: Ipv4Addr,
    config: &NetworkConfig,
    backend_type: &str,
) -> Result<Option<()>, String> {
    if own.is_some_and(|k| k.ipv4 == peer.key.ipv4) {
        return Ok(None);
    }
    if peer.attrs.public_ip == our_ip {
        return Err(format!("PublicIP {} is our own", peer.attrs.public_ip));
    }
    if peer.attrs.public_ip.is_unspecified()
        || peer.attrs.public_ip.is_loopback()
        || peer.attrs.public_ip.is_multicast()
        || peer.attrs.public_ip.is_broadcast()
    {
        return Err(format!(
            "PublicIP {} is not a unicast address",
            peer.attrs.public_ip
        ));
    }
    config.check_subnet(&peer.key).map_err(|e| e.to_string())?;
    if let Some(k) = own {
        if overlaps(k.ipv4, peer.key.ipv4) {
            return Err(format!("subnet overlaps our own {}", k.ipv4));
        }
    }
    if peer.attrs.backend_type != backend_type {
        return Err(format!(
            "BackendType {:?} is not {backend_type:?}",
            peer.attrs.backend_type
        ));
    }
    Ok(Some(()))
}

pub(crate) fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Whether `ip` is on one of the `connected` prefixes (our L2 segment).
pub(crate) fn on_segment(connected: &[Ipv4Network], ip: Ipv4Addr) -> bool {
    connected.iter().any(|n| n.prefix() < 32 && n.contains(ip))
}

/// Drops overlapping peer subnets after the first (sorted by key) so two
/// leases never fight over one route; the loser is reported.
pub(crate) fn dedupe(
    accepted: &mut Vec<(SubnetKey, Ipv4Network)>,
    key: SubnetKey,
) -> Result<(), String> {
    if let Some((k, _)) = accepted.iter().find(|(_, n)| overlaps(*n, key.ipv4)) {
        return Err(format!("subnet overlaps peer {k}"));
    }
    accepted.push((key, key.ipv4));
    Ok(())
}
