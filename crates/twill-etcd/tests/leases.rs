//! Lease races, keepalive and expiry against a real etcd.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use twill_model::SubnetKey;
use twill_subnet::{
    LeaseManager, LeaseManagerConfig, Registry, RegistryError, RegistryEvent, SubnetError,
};

/// 10.10.1.0/24 ..= 10.10.100.0/24: exactly 100 subnets.
const HUNDRED: &str = r#"{"Network":"10.10.0.0/16","SubnetLen":24,"SubnetMin":"10.10.1.0","SubnetMax":"10.10.100.0","Backend":{"Type":"vxlan"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_racing_lease_managers_get_distinct_subnets_and_the_101st_is_exhausted() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let admin = connect(&etcd).await;
    admin.put_config(HUNDRED).await.unwrap();

    // 100 hosts, each with its own connection, start at once.
    let race = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let cfg = config_for(&etcd);
        tasks.push(tokio::spawn(async move {
            let reg = Arc::new(twill_etcd::EtcdRegistry::connect(cfg).await.unwrap());
            let ip = format!("10.0.{}.{}", i / 200, i % 200 + 1);
            let mut mc = LeaseManagerConfig::new(attrs(&ip));
            mc.rng_seed = Some(u64::from(i));
            let mut m = LeaseManager::new(reg, mc);
            let held = m.acquire().await.unwrap();
            (ip, held.lease.key)
        }));
    }
    let mut keys = HashSet::new();
    for t in tasks {
        let (_, key) = t.await.unwrap();
        assert!(keys.insert(key), "{key} handed out twice");
    }
    assert_eq!(keys.len(), 100);
    eprintln!(
        "100 managers acquired 100 distinct subnets in {:?}",
        race.elapsed()
    );

    let listing = admin.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 100);
    let stored: HashSet<SubnetKey> = listing.leases.iter().map(|l| l.key).collect();
    assert_eq!(stored, keys);
    let ips: HashSet<String> = listing
        .leases
        .iter()
        .map(|l| l.attrs.public_ip.to_string())
        .collect();
    assert_eq!(ips.len(), 100, "each lease is its host's");

    let reg = Arc::new(connect(&etcd).await);
    let mut m = LeaseManager::new(reg, LeaseManagerConfig::new(attrs("10.0.9.9")));
    let err = tokio::time::timeout(DEADLINE, m.acquire())
        .await
        .expect("the 101st must fail, not retry forever")
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubnetError::Exhausted {
                total: 100,
                taken: 100
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn short_ttl_lease_stays_alive_under_keepalive_with_one_etcd_lease() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    let mut raw = raw(&etcd).await;
    let key: SubnetKey = "10.20.1.0-24".parse().unwrap();
    let path = format!("{SUBNETS}10.20.1.0-24");
    // Short (seconds, not flannel's 24 h), with room for a loaded machine:
    // the test renews ten times per TTL.
    let ttl = Duration::from_secs(5);
    let mut held = reg
        .create_lease(&key, &attrs("10.0.0.1"), Some(ttl))
        .await
        .unwrap();
    let lease_id = lease_id_of(&mut raw, &path).await.unwrap();
    assert_ne!(lease_id, 0);

    // Playing the lease manager: a renewal every 500 ms (the pace of the
    // keepalives under test), for at least two TTLs and ten renewals.
    let start = Instant::now();
    let mut renewals = 0;
    while start.elapsed() < 2 * ttl || renewals < 10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        held = reg.renew_lease(&held).await.unwrap();
        renewals += 1;
        assert_eq!(held.ttl, Some(ttl));
        assert_eq!(
            lease_id_of(&mut raw, &path).await,
            Some(lease_id),
            "the same etcd lease throughout"
        );
    }
    let leases = raw.leases().await.unwrap();
    assert_eq!(
        leases.leases().len(),
        1,
        "no etcd lease granted per renewal"
    );
}

#[tokio::test]
async fn killed_holder_lease_expires_and_a_watcher_sees_it_removed() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let watcher = connect(&etcd).await;
    let start_rev = watcher.list_leases().await.unwrap().revision;
    let mut watch = watcher.watch_leases(start_rev + 1).await.unwrap();

    let holder = connect(&etcd).await;
    let key: SubnetKey = "10.20.2.0-24".parse().unwrap();
    let held = holder
        .create_lease(&key, &attrs("10.0.0.2"), Some(Duration::from_secs(2)))
        .await
        .unwrap();
    let held = holder.renew_lease(&held).await.unwrap(); // opens the keepalive stream
    match next_event(&mut watch).await {
        RegistryEvent::Upserted(l) => assert_eq!(l.key, key),
        other => panic!("expected Upserted, got {other:?}"),
    }
    // The holder dies without deleting anything.
    let killed_at = Instant::now();
    drop(held);
    drop(holder);
    match next_event(&mut watch).await {
        RegistryEvent::Removed { key: k, revision } => {
            assert_eq!(k, key);
            assert!(revision > start_rev);
        }
        other => panic!("expected Removed, got {other:?}"),
    }
    eprintln!(
        "lease expired {:?} after the holder died",
        killed_at.elapsed()
    );
    assert!(watcher.list_leases().await.unwrap().leases.is_empty());
}

#[tokio::test]
async fn renew_recreates_a_lost_etcd_lease_only_if_the_key_is_still_ours() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    let mut raw = raw(&etcd).await;
    let key: SubnetKey = "10.20.3.0-24".parse().unwrap();
    let path = format!("{SUBNETS}10.20.3.0-24");
    let held = reg
        .create_lease(&key, &attrs("10.0.0.3"), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let held = reg.renew_lease(&held).await.unwrap();
    let first = lease_id_of(&mut raw, &path).await.unwrap();

    // etcd loses the lease (as after a long outage): the key goes with it.
    raw.lease_revoke(first).await.unwrap();
    assert_eq!(lease_id_of(&mut raw, &path).await, None);
    let held = reg.renew_lease(&held).await.unwrap();
    let second = lease_id_of(&mut raw, &path).await.unwrap();
    assert_ne!(second, first, "a new etcd lease");
    assert_ne!(second, 0);
    let value = raw.get(path.as_str(), None).await.unwrap();
    assert_eq!(
        value.kvs()[0].value(),
        attrs("10.0.0.3").to_json().unwrap().as_bytes()
    );
    assert_eq!(held.lease.revision, value.kvs()[0].mod_revision());

    // Lost again, and meanwhile someone else took the subnet: no stealing.
    raw.lease_revoke(second).await.unwrap();
    raw.put(path.as_str(), attrs("10.0.0.99").to_json().unwrap(), None)
        .await
        .unwrap();
    let err = reg.renew_lease(&held).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }), "{err:?}");
    let value = raw.get(path.as_str(), None).await.unwrap();
    assert_eq!(
        value.kvs()[0].value(),
        attrs("10.0.0.99").to_json().unwrap().as_bytes()
    );
    assert_eq!(
        raw.leases().await.unwrap().leases().len(),
        0,
        "the unused grant was revoked"
    );
}

#[tokio::test]
async fn a_restarted_holder_adopts_its_existing_etcd_lease() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let key: SubnetKey = "10.20.4.0-24".parse().unwrap();
    let path = format!("{SUBNETS}10.20.4.0-24");
    let mut raw = raw(&etcd).await;
    let held = {
        let reg = connect(&etcd).await;
        reg.create_lease(&key, &attrs("10.0.0.4"), Some(Duration::from_secs(30)))
            .await
            .unwrap()
    };
    let lease_id = lease_id_of(&mut raw, &path).await.unwrap();
    // A new process (new registry) renews the lease it finds in the listing.
    let reg = connect(&etcd).await;
    let listed = reg.list_leases().await.unwrap().leases.remove(0);
    let renewed = reg
        .renew_lease(&twill_subnet::HeldLease {
            lease: listed,
            ttl: held.ttl,
        })
        .await
        .unwrap();
    assert_eq!(renewed.ttl, Some(Duration::from_secs(30)));
    assert_eq!(lease_id_of(&mut raw, &path).await, Some(lease_id));
    assert_eq!(raw.leases().await.unwrap().leases().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_survives_an_etcd_restart_on_the_same_etcd_lease() {
    twill_testbed::require_etcd!();
    let mut etcd = start_etcd();
    let reg = connect(&etcd).await;
    let key: SubnetKey = "10.20.5.0-24".parse().unwrap();
    let path = format!("{SUBNETS}10.20.5.0-24");
    let held = reg
        .create_lease(&key, &attrs("10.0.0.5"), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let held = reg.renew_lease(&held).await.unwrap(); // keepalive stream open
    let mut raw1 = raw(&etcd).await;
    let lease_id = lease_id_of(&mut raw1, &path).await.unwrap();

    tokio::task::block_in_place(|| etcd.restart()).unwrap();
    // The old stream is broken; renew reopens it (retrying while the
    // connection comes back, as the lease manager does), until a deadline.
    let deadline = Instant::now() + DEADLINE;
    let renewed = loop {
        match reg.renew_lease(&held).await {
            Ok(h) => break h,
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "no renewal within {DEADLINE:?} of the restart: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(renewed.ttl, Some(Duration::from_secs(30)));
    let mut raw2 = raw(&etcd).await;
    assert_eq!(
        lease_id_of(&mut raw2, &path).await,
        Some(lease_id),
        "etcd kept the lease"
    );
    assert_eq!(raw2.leases().await.unwrap().leases().len(), 1);
}

/// Issue 13 #5: our key overwritten in place (`put --ignore-lease`, the key
/// keeps our etcd lease) is restored; overwritten again since, or re-put
/// without our etcd lease, it is not ours: Conflict, the value left alone.
#[tokio::test]
async fn restore_puts_our_value_back_only_while_the_key_is_on_our_etcd_lease() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let reg = connect(&etcd).await;
    let mut raw = raw(&etcd).await;
    let key: SubnetKey = "10.20.5.0-24".parse().unwrap();
    let path = format!("{SUBNETS}10.20.5.0-24");
    let held = reg
        .create_lease(&key, &attrs("10.0.0.5"), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let ours = lease_id_of(&mut raw, &path).await.unwrap();
    let hijack = attrs("10.0.0.200").to_json().unwrap();
    let put = raw
        .put(
            path.as_str(),
            hijack.clone(),
            Some(etcd_client::PutOptions::new().with_ignore_lease()),
        )
        .await
        .unwrap();
    let rev = put.header().unwrap().revision();
    assert_eq!(
        lease_id_of(&mut raw, &path).await,
        Some(ours),
        "still on our lease"
    );

    // Stale revision (overwritten again since): refused.
    let err = reg.restore_lease(&held, rev - 1).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }), "{err:?}");

    let restored = reg.restore_lease(&held, rev).await.unwrap();
    let value = raw.get(path.as_str(), None).await.unwrap();
    assert_eq!(
        value.kvs()[0].value(),
        attrs("10.0.0.5").to_json().unwrap().as_bytes()
    );
    assert_eq!(value.kvs()[0].lease(), ours, "restored on our etcd lease");
    assert_eq!(restored.lease.revision, value.kvs()[0].mod_revision());

    // A plain put detaches the key from our etcd lease: not ours any more.
    let put = raw.put(path.as_str(), hijack.clone(), None).await.unwrap();
    let rev = put.header().unwrap().revision();
    let err = reg.restore_lease(&held, rev).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }), "{err:?}");
    let value = raw.get(path.as_str(), None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), hijack.as_bytes(), "left alone");
}
