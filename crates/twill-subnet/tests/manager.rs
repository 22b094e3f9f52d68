//! LeaseManager against MemoryRegistry on tokio's paused (virtual) clock.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use twill_model::{LeaseAttrs, SubnetKey};
use twill_subnet::{
    LeaseEvent, LeaseHandle, LeaseManager, LeaseManagerConfig, MemoryRegistry, Registry,
    SubnetError,
};

const HUNDRED: &str = r#"{"Network":"10.0.0.0/16","SubnetLen":24,"SubnetMin":"10.0.0.0","SubnetMax":"10.0.99.0","Backend":{"Type":"vxlan"}}"#;

fn host(i: u32) -> LeaseAttrs {
    LeaseAttrs::new(std::net::Ipv4Addr::from(0xC000_0200 + i), "vxlan")
}

fn config(i: u32, ttl: Duration) -> LeaseManagerConfig {
    let mut c = LeaseManagerConfig::new(host(i));
    c.ttl = ttl;
    c.rng_seed = Some(u64::from(i));
    c
}

async fn start(reg: &Arc<MemoryRegistry>, i: u32, ttl: Duration) -> (SubnetKey, LeaseHandle) {
    let mut m = LeaseManager::new(Arc::clone(reg), config(i, ttl));
    let held = m.acquire().await.unwrap();
    (held.lease.key, m.spawn())
}

#[tokio::test(start_paused = true)]
async fn hundred_agents_race_for_hundred_subnets_without_duplicates() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(HUNDRED);
    assert_eq!(reg.get_config().await.unwrap().subnet_count(), 100);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let reg = Arc::clone(&reg);
        tasks.spawn(async move {
            let mut m = LeaseManager::new(reg, config(i, Duration::from_secs(3600)));
            let held = m.acquire().await.unwrap();
            (held.lease.key, m.attempts())
        });
    }
    let mut keys = BTreeSet::new();
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        let (k, _attempts) = r.unwrap();
        assert!(keys.insert(k), "{k} handed out twice");
        total += 1;
    }
    assert_eq!(total, 100);
    assert_eq!(keys.len(), 100);
    let listing = reg.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 100);
    let ips: BTreeSet<_> = listing.leases.iter().map(|l| l.attrs.public_ip).collect();
    assert_eq!(ips.len(), 100, "one lease per host");

    let mut late = LeaseManager::new(Arc::clone(&reg), config(100, Duration::from_secs(3600)));
    match late.acquire().await {
        Err(SubnetError::Exhausted { total, taken }) => assert_eq!((total, taken), (100, 100)),
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_stops_renewing_expires_and_peers_see_it() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(HUNDRED);
    let ttl = Duration::from_secs(30);
    let (ka, a) = start(&reg, 1, ttl).await;
    let (kb, b) = start(&reg, 2, ttl).await;
    let mut b_events = b.events();
    let mut peers = b.peers();
    peers
        .wait_for(|p| p.leases.contains_key(&ka))
        .await
        .unwrap();
    // a sees b too.
    a.peers()
        .wait_for(|p| p.leases.contains_key(&kb))
        .await
        .unwrap();

    a.shutdown().await;
    // Several TTLs pass on the virtual clock: b keeps renewing, a expires.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let p = peers.borrow_and_update().clone();
    assert!(!p.leases.contains_key(&ka), "a's lease expired");
    assert_eq!(b.current_lease().unwrap().lease.key, kb);
    let listing = reg.list_leases().await.unwrap();
    assert_eq!(
        listing.leases.iter().map(|l| l.key).collect::<Vec<_>>(),
        vec![kb]
    );
    let mut saw_removed = false;
    let mut renewals = 0;
    while let Ok(ev) = b_events.try_recv() {
        match ev {
            LeaseEvent::PeerRemoved(k) if k == ka => saw_removed = true,
            LeaseEvent::Renewed { key, .. } if key == kb => renewals += 1,
            _ => {}
        }
    }
    assert!(saw_removed);
    assert!(
        renewals >= 3,
        "renewed every 20 s over 120 s, got {renewals}"
    );
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_lease_is_recreated_on_the_same_subnet() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(HUNDRED);
    let (k, h) = start(&reg, 1, Duration::from_secs(60)).await;
    let mut events = h.events();
    reg.delete_lease(&k).await.unwrap();
    // It is lost, then comes back with the same key.
    let mut lost = false;
    loop {
        match events.recv().await.unwrap() {
            LeaseEvent::Lost { key, .. } if key == k => lost = true,
            LeaseEvent::Reacquired { lease, previous } => {
                assert!(lost);
                assert_eq!((lease.key, previous), (k, k));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(h.current_lease().unwrap().lease.key, k);
    let listing = reg.list_leases().await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.leases[0].attrs, host(1));
    h.release().await.unwrap();
    assert!(reg.is_empty(), "release deletes our lease");
}

#[tokio::test(start_paused = true)]
async fn compaction_forces_a_resync_with_the_right_peer_set() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(HUNDRED);
    let ttl = Duration::from_secs(3600);
    let (k1, h1) = start(&reg, 1, ttl).await;
    // Host 2 acquires, but its watch starts only after history moved on
    // and was compacted.
    let mut m2 = LeaseManager::new(Arc::clone(&reg), config(2, ttl));
    let k2 = m2.acquire().await.unwrap().lease.key;
    let (k3, h3) = start(&reg, 3, ttl).await;
    h1.release().await.unwrap();
    reg.put_raw(
        "10.0.50.0-24",
        br#"{"PublicIP":"192.0.2.50","BackendType":"vxlan"}"#,
    );
    reg.put_raw("not-a-key", b"{}");
    reg.compact(reg.revision());
    let mut events = m2.events();
    let h2 = m2.spawn();
    let expected: BTreeSet<SubnetKey> = [k3, "10.0.50.0-24".parse().unwrap()].into();
    let peers = h2
        .peers()
        .wait_for(|p| p.leases.keys().copied().collect::<BTreeSet<_>>() == expected)
        .await
        .unwrap()
        .clone();
    assert!(!peers.leases.contains_key(&k1));
    assert!(
        !peers.leases.contains_key(&k2),
        "our own lease is not a peer"
    );
    let mut resynced = false;
    let mut skipped = false;
    while let Ok(ev) = events.try_recv() {
        match ev {
            LeaseEvent::Resynced { .. } => resynced = true,
            LeaseEvent::Skipped { key, .. } if key.ends_with("not-a-key") => skipped = true,
            _ => {}
        }
    }
    assert!(resynced && skipped);
    h2.shutdown().await;
    h3.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reservation_and_previous_subnet_are_honoured() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(HUNDRED);
    let reserved: SubnetKey = "10.0.42.0-24".parse().unwrap();
    reg.reserve(&reserved, &host(1)).unwrap();
    let mut m = LeaseManager::new(Arc::clone(&reg), config(1, Duration::from_secs(60)));
    let held = m.acquire().await.unwrap();
    assert_eq!(held.lease.key, reserved);
    assert_eq!(held.ttl, None);
    let h = m.spawn();
    // Releasing keeps the operator's reservation.
    h.release().await.unwrap();
    assert_eq!(reg.len(), 1);

    let mut c = config(2, Duration::from_secs(60));
    c.previous = Some("10.0.77.0-24".parse().unwrap());
    let mut m = LeaseManager::new(Arc::clone(&reg), c);
    assert_eq!(
        m.acquire().await.unwrap().lease.key.to_string(),
        "10.0.77.0-24"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_config_is_returned_to_the_caller() {
    let reg = Arc::new(MemoryRegistry::new());
    let mut m = LeaseManager::new(
        Arc::clone(&reg) as Arc<dyn Registry>,
        config(1, Duration::from_secs(60)),
    );
    assert!(matches!(
        m.acquire().await,
        Err(SubnetError::Registry(
            twill_subnet::RegistryError::ConfigNotFound { .. }
        ))
    ));
    reg.set_config(HUNDRED);
    assert!(m.acquire().await.is_ok());
}

/// Issue 12: an IPv6-only config used to reach the allocator with an
/// all-zero IPv4 side (a shift overflow panic in debug builds, a `0.0.0.0-0`
/// lease in release). Issue 15 leases it: a v6-only key, never an IPv4
/// subnet; and attributes without the `PublicIPv6` it needs are an error
/// that leases nothing.
#[tokio::test(start_paused = true)]
async fn ipv6_only_config_leases_an_ipv6_subnet_and_needs_public_ipv6() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.set_config(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
    );
    let mut m = LeaseManager::new(Arc::clone(&reg), config(1, Duration::from_secs(60)));
    match m.acquire().await {
        Err(
            e @ SubnetError::MissingAttribute {
                field: "PublicIPv6",
                ..
            },
        ) => assert_eq!(
            e.to_string(),
            "PublicIPv6 is required in the lease attributes: the network config has EnableIPv6 true"
        ),
        other => panic!("expected MissingAttribute PublicIPv6, got {other:?}"),
    }
    assert!(reg.list_leases().await.unwrap().leases.is_empty());

    let mut cfg = config(1, Duration::from_secs(60));
    cfg.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
    cfg.attrs.public_ipv6 = "fd00:ffff::1".parse().ok();
    let mut m = LeaseManager::new(Arc::clone(&reg), cfg);
    let held = m.acquire().await.unwrap();
    assert!(held.lease.key.is_ipv6_only(), "{}", held.lease.key);
    assert_eq!(held.lease.key.ipv6.unwrap().prefix(), 64);
    assert_eq!(reg.list_leases().await.unwrap().leases.len(), 1);
}
