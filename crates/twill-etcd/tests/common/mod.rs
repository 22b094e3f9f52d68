//! Helpers shared by the integration tests: a real etcd, a registry on it,
//! a raw client to play flanneld, and event collection with timeouts.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::time::Duration;

use twill_etcd::{EtcdConfig, EtcdRegistry};
use twill_model::LeaseAttrs;
use twill_subnet::{LeaseWatch, RegistryEvent};
use twill_testbed::etcd::EtcdServer;

/// The seed's lease, as flanneld writes it.
pub const SEED_LEASE: &str = r#"{"PublicIP":"10.0.0.3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"}}"#;
/// The seed's config.
pub const SEED_CONFIG: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
pub const SUBNETS: &str = "/coreos.com/network/subnets/";

pub fn start_etcd() -> EtcdServer {
    EtcdServer::start().unwrap()
}

pub fn config_for(etcd: &EtcdServer) -> EtcdConfig {
    EtcdConfig::new(etcd.endpoints()).with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
}

pub async fn connect(etcd: &EtcdServer) -> EtcdRegistry {
    EtcdRegistry::connect(config_for(etcd)).await.unwrap()
}

/// A plain etcd client, playing flanneld or an operator.
pub async fn raw(etcd: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap()
}

pub fn attrs(ip: &str) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    a.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"}));
    a
}

/// The next event, failing the test after `secs` seconds.
pub async fn next_event(watch: &mut LeaseWatch, secs: u64) -> RegistryEvent {
    tokio::time::timeout(Duration::from_secs(secs), watch.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {secs} s"))
        .expect("watch closed")
}

/// Every event arriving until `quiet` passes without one.
pub async fn drain(watch: &mut LeaseWatch, quiet: Duration) -> Vec<RegistryEvent> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(quiet, watch.next()).await {
        out.push(ev);
    }
    out
}

/// The raw `lease` field of a key (None when absent).
pub async fn lease_id_of(client: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs().first().map(etcd_client::KeyValue::lease)
}
