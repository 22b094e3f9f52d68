//! Shared helpers: hosts from the testbed, hand-made leases.
#![allow(dead_code, unreachable_pub)]

use std::net::Ipv4Addr;

use twill_backend::{Backend, HostContext, LocalSetup, UnderlayInterface};
use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetKey, SubnetLease};
use twill_testbed::netns::Host;

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
