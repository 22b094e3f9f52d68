//! What an agent is told: the host side of the picture (the network config
//! comes from the registry).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use twill_backend::UnderlayInterface;
use twill_model::{Ipv4Network, Ipv6Network};

use crate::health::HealthOptions;
use crate::{host, subnet_file, AgentError, AgentOption};

/// Shortest reconcile and retry interval: a zero interval would spin on
/// etcd or the kernel, and anything under this is a typo.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest lease TTL: etcd grants whole seconds.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// Shortest health-probe timeout: a round trip on a LAN is well under it,
/// and less would call busy peers unreachable.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);

/// The agent's options. Start from [`AgentOptions::new`] (flannel's
/// defaults) and set what differs; [`AgentOptions::validate`] says what is
/// wrong before anything is leased or programmed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The interface inter-host traffic uses (flannel's `-iface`).
    pub underlay: UnderlayInterface,
    /// The `PublicIP` to publish (default: the underlay's IPv4 address).
    /// Required when the network config has `EnableIPv4`; `None` on an
    /// IPv6-only host, whose lease has flannel's `PublicIP` `0.0.0.0`.
    pub public_ip: Option<Ipv4Addr>,
    /// The `PublicIPv6` to publish (flannel's `-public-ipv6`; default: the
    /// underlay's IPv6 address, [`UnderlayInterface::addr6`]). Required
    /// when the network config has `EnableIPv6`, where it identifies our
    /// lease and carries the IPv6 side's traffic; unused otherwise.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write `FLANNEL_NETWORK`, `FLANNEL_SUBNET`, `FLANNEL_MTU`,
    /// `FLANNEL_IPMASQ` (`None`: no file). Its subnet is asked for again at
    /// the next start.
    pub subnet_file: Option<PathBuf>,
    /// TTL of our lease (flannel: 24 h). The one TTL knob: the registry
    /// is told it with every lease it creates.
    pub lease_ttl: Duration,
    /// Renew this long before expiry (flannel: 1 h), at most a third of the
    /// TTL.
    pub renew_margin: Duration,
    /// Reconcile the whole peer set with the kernel at least this often
    /// (drift repair), besides every peer change.
    pub reconcile_interval: Duration,
    /// Wait between attempts while etcd, the config or a lease is not
    /// there yet.
    pub retry_interval: Duration,
    /// Install flannel's masquerade rules (nftables tables `ip twill` and
    /// `ip6 twill`, for the families the network enables).
    pub ip_masq: bool,
    /// Delete our lease (and the masquerade rules) at shutdown, as
    /// flannel's `--release-on-exit`; by default both are kept for the
    /// next start.
    pub release_on_exit: bool,
    /// Keep the host's own networks out of the overlay (the underlay's
    /// networks, gateways, the public IP, and [`Self::protected`]): no
    /// subnet overlapping one is ever leased or programmed. On by default.
    pub protect_host: bool,
    /// More networks of this host to protect (the etcd endpoints'
    /// addresses, which only the caller knows).
    pub protected: Vec<Ipv4Network>,
    /// More IPv6 networks of this host to protect (the IPv6 etcd
    /// endpoints' addresses), beside those found in the kernel with
    /// [`Self::protect_host`]: no IPv6 subnet overlapping one is ever leased
    /// or accepted as a peer's.
    pub protected_v6: Vec<Ipv6Network>,
    /// Seed of the random subnet choice (tests); random when `None`.
    pub rng_seed: Option<u64>,
    /// Probing the peers' health ([`crate::health`]): on by default.
    pub health: HealthOptions,
}

impl AgentOptions {
    /// flannel's defaults on `underlay`: its address as `PublicIP`, 24 h
    /// leases renewed 1 h before expiry, a full reconcile every 10 s,
    /// retries every second, `/run/flannel/subnet.env`, no masquerading,
    /// the lease kept at exit.
    #[must_use]
    pub fn new(underlay: UnderlayInterface) -> Self {
        AgentOptions {
            public_ip: underlay.addr,
            public_ipv6: underlay.addr6,
            underlay,
            subnet_file: Some(PathBuf::from(twill_model::DEFAULT_SUBNET_FILE)),
            lease_ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(3600),
            reconcile_interval: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
            ip_masq: false,
            release_on_exit: false,
            protect_host: true,
            protected: Vec::new(),
            protected_v6: Vec::new(),
            rng_seed: None,
            health: HealthOptions::default(),
        }
    }

    /// Checks everything that can be checked before touching the registry
    /// or the kernel.
    ///
    /// # Errors
    /// The first [`AgentError::InvalidOption`], naming the option, its value
    /// and what is wrong.
    pub fn validate(&self) -> Result<(), AgentError> {
        for (option, value, min) in [
            (
                AgentOption::ReconcileInterval,
                self.reconcile_interval,
                MIN_INTERVAL,
            ),
            (
                AgentOption::RetryInterval,
                self.retry_interval,
                MIN_INTERVAL,
            ),
            (AgentOption::LeaseTtl, self.lease_ttl, MIN_LEASE_TTL),
            (
                AgentOption::HealthInterval,
                self.health.interval,
                MIN_INTERVAL,
            ),
            (
                AgentOption::HealthTimeout,
                self.health.timeout,
                MIN_PROBE_TIMEOUT,
            ),
        ] {
            if value < min {
                return Err(AgentError::option(
                    option,
                    format!("{value:?}"),
                    format!("is too short: it must be at least {min:?}"),
                ));
            }
        }
        if self.health.max_probes_per_second == 0 {
            return Err(AgentError::option(
                AgentOption::HealthBudget,
                0,
                "is too small: it must be at least 1 probe per second (turn probes off instead)",
            ));
        }
        if self.health.misses == 0 {
            return Err(AgentError::option(
                AgentOption::HealthMisses,
                0,
                "is too small: a peer is unreachable after at least 1 unanswered probe",
            ));
        }
        if let Some(ip) = self.public_ip {
            check_public_ip(ip).map_err(|reason| {
                AgentError::option(
                    AgentOption::PublicIp,
                    ip,
                    format!("{reason}: give a unicast address other hosts reach this one at"),
                )
            })?;
        }
        if let Some(ip) = self.public_ipv6 {
            check_public_ipv6(ip).map_err(|reason| {
                AgentError::option(
                    AgentOption::PublicIpv6,
                    ip,
                    format!("{reason}: give a unicast address other hosts reach this one at"),
                )
            })?;
        }
        if host::is_overlay_device(&self.underlay.name) {
            return Err(AgentError::option(
                AgentOption::Underlay,
                &self.underlay.name,
                "is an overlay device, not an underlay: give the interface that reaches the other hosts (e.g. eth0)",
            ));
        }
        if let Some(path) = &self.subnet_file {
            subnet_file::check_path(path)?;
        }
        Ok(())
    }
}

/// Why `ip` cannot be a `PublicIPv6`, if it cannot: as for
/// [`check_public_ip`], the unspecified, loopback and multicast addresses,
/// and link-local ones (a peer would need our interface's scope) and
/// IPv4-mapped ones (an IPv4 address, which is `PublicIP`'s job). The same
/// rule peers' `PublicIPv6` pass ([`twill_model::is_usable_public_ipv6`]).
///
/// # Errors
/// The reason, reading after the address.
pub fn check_public_ipv6(ip: Ipv6Addr) -> Result<(), &'static str> {
    if twill_model::is_usable_public_ipv6(ip) {
        return Ok(());
    }
    Err(if ip.is_unspecified() {
        "is the unspecified address"
    } else if ip.is_loopback() {
        "is a loopback address"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_unicast_link_local() {
        "is a link-local address"
    } else {
        "is an IPv4-mapped address"
    })
}

/// Why `ip` cannot be a `PublicIP`, if it cannot: peers send to it, so
/// the unspecified, a multicast, broadcast or loopback address would make
/// every peer program a tunnel to nowhere (or to itself).
///
/// # Errors
/// The reason, reading after the address (`is a loopback address, ...`).
pub fn check_public_ip(ip: Ipv4Addr) -> Result<(), &'static str> {
    let reason = if ip.is_unspecified() {
        "is the unspecified address"
    } else if ip.is_loopback() {
        "is a loopback address, which other hosts cannot reach"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_broadcast() || ip.octets()[0] >= 240 {
        "is a broadcast or reserved (240.0.0.0/4) address"
    } else {
        return Ok(());
    };
    Err(reason)
}

/// Parses a duration as Go's flags do for flannel's options: `90` (seconds),
/// `90s`, `500ms`, `10m`, `24h`, `1h30m`.
///
/// # Errors
/// A message naming the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 5m, 24h");
    if s.is_empty() {
        return Err(err());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Duration::from_secs).map_err(|_| err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(d).ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> UnderlayInterface {
        UnderlayInterface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            addr: "10.0.0.2".parse().ok(),
            addr6: None,
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_option() {
        let mut o = AgentOptions::new(underlay());
        o.subnet_file = None;
        o.validate().unwrap();
        o.public_ipv6 = "fd00::2".parse().ok();
        o.validate().unwrap();
        type Case = (fn(&mut AgentOptions), AgentOption, &'static str);
        let cases: Vec<Case> = vec![
            (
                |o| o.reconcile_interval = Duration::ZERO,
                AgentOption::ReconcileInterval,
                "reconcile_interval 0ns is too short: it must be at least 100ms",
            ),
            (
                |o| o.retry_interval = Duration::from_millis(5),
                AgentOption::RetryInterval,
                "at least 100ms",
            ),
            (
                |o| o.lease_ttl = Duration::from_millis(500),
                AgentOption::LeaseTtl,
                "at least 1s",
            ),
            (
                |o| o.public_ip = Some(Ipv4Addr::LOCALHOST),
                AgentOption::PublicIp,
                "public_ip 127.0.0.1 is a loopback address",
            ),
            (
                |o| o.public_ip = Some(Ipv4Addr::new(224, 0, 0, 1)),
                AgentOption::PublicIp,
                "multicast",
            ),
            (
                |o| o.public_ipv6 = Some(Ipv6Addr::LOCALHOST),
                AgentOption::PublicIpv6,
                "public_ipv6 ::1 is a loopback address",
            ),
            (
                |o| o.public_ipv6 = "fe80::1".parse().ok(),
                AgentOption::PublicIpv6,
                "public_ipv6 fe80::1 is a link-local address",
            ),
            (
                |o| o.public_ipv6 = "ff02::1".parse().ok(),
                AgentOption::PublicIpv6,
                "is a multicast address",
            ),
            (
                |o| o.public_ipv6 = Some(Ipv6Addr::UNSPECIFIED),
                AgentOption::PublicIpv6,
                "public_ipv6 :: is the unspecified address",
            ),
            (
                |o| o.public_ipv6 = "::ffff:10.0.0.2".parse().ok(),
                AgentOption::PublicIpv6,
                "is an IPv4-mapped address",
            ),
            (
                |o| o.underlay.name = "flannel.1".into(),
                AgentOption::Underlay,
                "is an overlay device",
            ),
        ];
        for (change, option, needle) in cases {
            let mut o = AgentOptions::new(underlay());
            o.subnet_file = None;
            change(&mut o);
            let err = o.validate().unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidOption { option: got, .. } if *got == option),
                "{err:?}"
            );
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn durations_parse_as_flannels_flags() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "s", "10x", "-5s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
