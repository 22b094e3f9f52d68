//! Shared helpers: hosts from the testbed, hand-made leases.
#![allow(dead_code, unreachable_pub)]

use std::net::Ipv4Addr;

use twill_backend::{Backend, HostContext, LocalSetup, UnderlayInterface};
use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetKey, SubnetLease};
use twill_testbed::netns::{Host, Netns, NetnsError};

/// `ip route show ...` as it forwards: each route's `nhid N` left out, so
/// that a route through a nexthop object (twill, where the kernel has them)
/// reads as flannel's route with its own gateway. The objects themselves
/// are asserted where they are the subject.
pub trait IpRoutes {
    /// `ip ARGS` (a route listing) without the `nhid N` of each line.
    fn ip_routes(&self, args: &[&str]) -> Result<String, NetnsError>;
}

impl IpRoutes for Netns {
    fn ip_routes(&self, args: &[&str]) -> Result<String, NetnsError> {
        Ok(without_nhid(&self.ip(args)?))
    }
}

/// `text` without the `nhid N` of each line.
pub fn without_nhid(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            let mut out = Vec::new();
            let mut words = line.split(' ');
            while let Some(w) = words.next() {
                if w == "nhid" {
                    words.next();
                } else {
                    out.push(w);
                }
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ops that program one VXLAN peer on an empty kernel: its ARP and FDB
/// entries, its nexthop object and its route through it (the test kernels
/// have nexthop objects, so the default `Nexthops` uses them).
pub const PEER_OPS: usize = 4;

pub fn config(backend: &str) -> NetworkConfig {
    NetworkConfig::parse(&format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{backend}}}"#
    ))
    .expect("config")
}

pub fn underlay(host: &Host) -> UnderlayInterface {
    let mut nl = host.ns.netlink().expect("netlink");
    let eth0 = nl.link().get_by_name(&host.underlay).expect("eth0");
    UnderlayInterface {
        name: host.underlay.clone(),
        index: eth0.index,
        mtu: eth0.mtu,
        addr: Some(host.addr),
        addr6: None,
    }
}

pub fn lease(subnet: &str, attrs: LeaseAttrs) -> SubnetLease {
    SubnetLease {
        key: SubnetKey::v4(subnet.parse().expect("subnet")),
        attrs,
        kind: LeaseKind::Expiring,
        revision: 0,
    }
}

/// setup + activate a backend on `host` with subnet 10.244.<n>.0/24.
pub async fn bring_up(
    backend: &mut dyn Backend,
    host: &Host,
    cfg: &NetworkConfig,
    n: u8,
) -> (LocalSetup, SubnetLease) {
    let ul = underlay(host);
    let ctx = HostContext {
        config: cfg,
        public_ip: host.addr,
        underlay: &ul,
        ipv6: None,
    };
    let local = backend.setup(&ctx).await.expect("setup");
    let own = lease(&format!("10.244.{n}.0/24"), local.attrs.clone());
    backend.activate(&own).await.expect("activate");
    (local, own)
}

pub fn vxlan_attrs(public: Ipv4Addr, mac: &str) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(public, "vxlan");
    a.backend_data = Some(serde_json::json!({ "VNI": 1, "VtepMAC": mac }).into());
    a
}

pub fn count_lines(s: &str, needle: &str) -> usize {
    s.lines().filter(|l| l.contains(needle)).count()
}

/// The leases by reference, as [`Backend::reconcile`] takes them.
pub fn refs(leases: &[SubnetLease]) -> Vec<&SubnetLease> {
    leases.iter().collect()
}
