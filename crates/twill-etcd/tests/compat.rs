//! flannel compatibility, config errors, reservations, malformed values, TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use twill_etcd::{EtcdConfig, EtcdError, EtcdRegistry, EtcdTls};
use twill_model::{LeaseKind, SubnetKey};
use twill_subnet::{Registry, RegistryError};
use twill_testbed::etcd::{EtcdServer, TlsFiles};

#[tokio::test]
async fn flannel_written_config_and_lease_are_read() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    // flanneld's writes: the operator's config (v3 etcdctl) and a lease with an etcd lease.
    etcd.etcdctl(&["put", "/coreos.com/network/config", SEED_CONFIG])
        .unwrap();
    let mut raw = raw(&etcd).await;
    let grant = raw.lease_grant(86400, None).await.unwrap();
    raw.put(
        format!("{SUBNETS}192.168.4.0-24"),
        SEED_LEASE,
        Some(PutOptions::new().with_lease(grant.id())),
    )
    .await
    .unwrap();

    let reg = connect(&etcd).await;
    let cfg = reg.get_config().await.unwrap();
    assert_eq!(cfg.network.to_string(), "192.168.0.0/16");
    assert_eq!(cfg.subnet_count(), 6);
    assert_eq!(cfg.backend.backend_type, "vxlan");

    let listing = reg.list_leases().await.unwrap();
    assert!(listing.malformed.is_empty());
    assert_eq!(listing.leases.len(), 1);
    let lease = &listing.leases[0];
    assert_eq!(lease.key.to_string(), "192.168.4.0-24");
    assert_eq!(lease.attrs.public_ip.to_string(), "10.0.0.3");
    assert_eq!(lease.kind, LeaseKind::Expiring);
    assert!(lease.revision > 0 && lease.revision <= listing.revision);
    assert_eq!(lease.attrs.to_json().unwrap(), SEED_LEASE);
}

#[tokio::test]
async fn our_lease_is_byte_identical_to_flannels() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    let key: SubnetKey = "192.168.4.0-24".parse().unwrap();
    let held = reg
        .create_lease(&key, &attrs("10.0.0.3"), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(held.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(held.lease.kind, LeaseKind::Expiring);

    let mut raw = raw(&etcd).await;
    let resp = raw
        .get(format!("{SUBNETS}192.168.4.0-24"), None)
        .await
        .unwrap();
    let kv = &resp.kvs()[0];
    assert_eq!(kv.value_str().unwrap(), SEED_LEASE);
    assert_ne!(kv.lease(), 0, "an expiring lease carries an etcd lease");
    assert_eq!(kv.mod_revision(), held.lease.revision);
    let ttl = raw.lease_time_to_live(kv.lease(), None).await.unwrap();
    assert!(ttl.ttl() > 3500 && ttl.ttl() <= 3600, "ttl {}", ttl.ttl());
    // And etcdctl, as an operator would, shows the same bytes.
    let shown = etcd
        .etcdctl(&[
            "get",
            "/coreos.com/network/subnets/192.168.4.0-24",
            "--print-value-only",
        ])
        .unwrap();
    assert_eq!(shown.trim_end(), SEED_LEASE);
}

#[tokio::test]
async fn create_is_create_if_absent_and_update_delete_check_ownership() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    let key: SubnetKey = "10.5.7.0-24".parse().unwrap();
    let held = reg
        .create_lease(&key, &attrs("10.0.0.1"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let lost = reg
        .create_lease(&key, &attrs("10.0.0.2"), Some(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(lost, RegistryError::Conflict { key: k } if k == key),
        "{lost:?}"
    );

    let mut raw = raw(&etcd).await;
    let path = format!("{SUBNETS}10.5.7.0-24");
    let lease_before = lease_id_of(&mut raw, &path).await.unwrap();
    let updated = reg.update_lease(&held, &attrs("10.0.0.9")).await.unwrap();
    assert_eq!(updated.lease.attrs.public_ip.to_string(), "10.0.0.9");
    assert_eq!(
        lease_id_of(&mut raw, &path).await,
        Some(lease_before),
        "update keeps the TTL's lease"
    );
    // Updating from stale attributes is refused.
    let stale = reg
        .update_lease(&held, &attrs("10.0.0.8"))
        .await
        .unwrap_err();
    assert!(matches!(stale, RegistryError::Conflict { .. }), "{stale:?}");

    reg.delete_lease(&key).await.unwrap();
    assert_eq!(lease_id_of(&mut raw, &path).await, None);
    let ttl = raw.lease_time_to_live(lease_before, None).await.unwrap();
    assert!(ttl.ttl() <= 0, "the etcd lease is revoked with the key");
    let again = reg.delete_lease(&key).await.unwrap_err();
    assert!(
        matches!(again, RegistryError::LeaseNotFound { .. }),
        "{again:?}"
    );
    let gone = reg
        .update_lease(&updated, &attrs("10.0.0.7"))
        .await
        .unwrap_err();
    assert!(
        matches!(gone, RegistryError::LeaseNotFound { .. }),
        "{gone:?}"
    );
}

#[tokio::test]
async fn config_errors_are_typed() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    match reg.get_config().await.unwrap_err() {
        RegistryError::ConfigNotFound { key } => assert_eq!(key, "/coreos.com/network/config"),
        other => panic!("expected ConfigNotFound, got {other:?}"),
    }
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#,
    ])
    .unwrap();
    match reg.get_config().await.unwrap_err() {
        RegistryError::InvalidConfig { key, source } => {
            assert_eq!(key, "/coreos.com/network/config");
            assert!(source.to_string().contains("SubnetLen 31"), "{source}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // put_config validates before writing.
    let err = reg.put_config(r#"{"Network":"nope"}"#).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidConfig { .. }),
        "{err:?}"
    );
    reg.put_config(SEED_CONFIG).await.unwrap();
    assert_eq!(reg.get_config().await.unwrap().subnet_len, 24);
}

#[tokio::test]
async fn reservations_are_keys_without_an_etcd_lease() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    // An operator reserves a subnet with a plain put (flannel issue #1329).
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/192.168.3.0-24",
        SEED_LEASE,
    ])
    .unwrap();
    let reg = connect(&etcd).await;
    let ours: SubnetKey = "192.168.2.0-24".parse().unwrap();
    let held = reg
        .create_lease(&ours, &attrs("10.0.0.2"), None)
        .await
        .unwrap();
    assert_eq!(held.lease.kind, LeaseKind::Reservation);
    assert_eq!(held.ttl, None);
    // Renewing a reservation is a no-op that checks it exists.
    assert_eq!(reg.renew_lease(&held).await.unwrap(), held);

    let listing = reg.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 2);
    assert!(listing
        .leases
        .iter()
        .all(|l| l.kind == LeaseKind::Reservation));
    let mut raw = raw(&etcd).await;
    assert_eq!(
        lease_id_of(&mut raw, &format!("{SUBNETS}192.168.2.0-24")).await,
        Some(0)
    );
}

#[tokio::test]
async fn malformed_values_are_listed_with_key_and_reason() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let mut raw = raw(&etcd).await;
    raw.put(format!("{SUBNETS}10.1.1.0-24"), "{not json", None)
        .await
        .unwrap();
    raw.put(format!("{SUBNETS}garbage"), SEED_LEASE, None)
        .await
        .unwrap();
    raw.put(format!("{SUBNETS}10.1.2.0-24"), "x".repeat(20_000), None)
        .await
        .unwrap();
    raw.put(format!("{SUBNETS}10.1.3.0-24"), SEED_LEASE, None)
        .await
        .unwrap();
    let reg = connect(&etcd).await;
    let listing = reg.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.leases[0].key.to_string(), "10.1.3.0-24");
    let mut bad: Vec<(String, String)> = listing
        .malformed
        .iter()
        .map(|m| (m.key.clone(), m.reason.clone()))
        .collect();
    bad.sort();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert_eq!(bad[0].0, format!("{SUBNETS}10.1.1.0-24"));
    assert!(bad[0].1.contains("not valid JSON"), "{}", bad[0].1);
    assert_eq!(bad[1].0, format!("{SUBNETS}10.1.2.0-24"));
    assert!(bad[1].1.contains("20000 bytes"), "{}", bad[1].1);
    assert_eq!(bad[2].0, format!("{SUBNETS}garbage"));
    assert!(bad[2].1.contains("invalid subnet key"), "{}", bad[2].1);
}

fn tls_config(etcd: &EtcdServer, ca: &std::path::Path) -> EtcdConfig {
    let t = etcd.tls_files().unwrap();
    common::config_for(etcd).with_tls(EtcdTls {
        ca_file: Some(ca.to_path_buf()),
        cert_file: Some(t.client_cert.clone()),
        key_file: Some(t.client_key.clone()),
    })
}

#[tokio::test]
async fn tls_with_client_certificates() {
    twill_testbed::require_etcd!();
    let etcd = EtcdServer::start_tls().unwrap();
    let t = etcd.tls_files().unwrap().clone();

    let reg = EtcdRegistry::connect(tls_config(&etcd, &t.ca))
        .await
        .unwrap();
    reg.put_config(SEED_CONFIG).await.unwrap();
    let key: SubnetKey = "192.168.1.0-24".parse().unwrap();
    reg.create_lease(&key, &attrs("10.0.0.1"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(reg.list_leases().await.unwrap().leases.len(), 1);

    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().unwrap();
    let wrong = TlsFiles::generate(other.path(), &[]).unwrap();
    let err = EtcdRegistry::connect(tls_config(&etcd, &wrong.ca))
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong CA: {msg}");
    assert!(matches!(err, EtcdError::Connect { .. }), "{err:?}");
    assert!(msg.contains(&etcd.endpoint()), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    // A missing file is named.
    let mut cfg = tls_config(&etcd, &t.ca);
    if let Some(tls) = cfg.tls.as_mut() {
        tls.key_file = Some("/nonexistent/client.key".into());
    }
    let err = EtcdRegistry::connect(cfg).await.unwrap_err();
    assert!(matches!(err, EtcdError::TlsFile { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/client.key"), "{err}");
}
