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
    a.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"}).into());
    a
}

/// The deadline of every wait: generous, so that a loaded machine passes;
/// it only catches "never", nothing asserts a duration.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The next event, failing the test after [`DEADLINE`].
pub async fn next_event(watch: &mut LeaseWatch) -> RegistryEvent {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {DEADLINE:?}"))
        .expect("watch closed")
}

/// The next `n` events (each within [`DEADLINE`]).
pub async fn next_events(watch: &mut LeaseWatch, n: usize) -> Vec<RegistryEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(watch).await);
    }
    out
}

/// Writes a marker lease at `<SUBNETS><marker>` (e.g. `10.99.0.0-24`) and
/// returns every event the watch delivers before the marker's own. A watch
/// delivers in revision order, so whatever was due before the marker (a
/// repeat, a leftover) is in the result: the evidence for "nothing more
/// came", instead of waiting for a quiet spell.
pub async fn events_before_marker(
    watch: &mut LeaseWatch,
    raw: &mut etcd_client::Client,
    marker: &str,
) -> Vec<RegistryEvent> {
    let path = format!("{SUBNETS}{marker}");
    raw.put(path, SEED_LEASE, None).await.unwrap();
    let mut before = Vec::new();
    loop {
        match next_event(watch).await {
            RegistryEvent::Upserted(l) if l.key.to_string() == marker => return before,
            other => before.push(other),
        }
    }
}

/// Polls `check` every 20 ms until it is true, panicking with `what` after
/// [`DEADLINE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The raw `lease` field of a key (None when absent).
pub async fn lease_id_of(client: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs().first().map(etcd_client::KeyValue::lease)
}
