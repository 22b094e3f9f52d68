//! The sans-IO lease core under a virtual clock: every input and action is
//! explicit, nothing reads the clock.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SkipReason, SubnetKey, SubnetLease};
use twill_subnet::{
    Action, CoreConfig, HeldLease, Input, LeaseCore, LeaseEvent, LeaseListing, MalformedLease,
    RegistryError, RegistryEvent, SubnetError,
};

const SEED: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;
const OUR_IP: &str = "10.0.0.1";
const TTL: Duration = Duration::from_secs(60);

fn key(i: u8) -> SubnetKey {
    format!("192.168.{i}.0-24").parse().unwrap()
}

fn attrs(ip: &str) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    a.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:26"}).into());
    a
}

fn lease(k: SubnetKey, ip: &str, rev: i64) -> SubnetLease {
    SubnetLease {
        key: k,
        attrs: attrs(ip),
        kind: LeaseKind::Expiring,
        revision: rev,
    }
}

fn listing(leases: Vec<SubnetLease>, revision: i64) -> LeaseListing {
    LeaseListing {
        leases,
        malformed: vec![],
        revision,
    }
}

fn config() -> CoreConfig {
    let mut c = CoreConfig::new(attrs(OUR_IP));
    c.ttl = TTL;
    c
}

fn core_with(c: CoreConfig) -> LeaseCore {
    LeaseCore::new(c, NetworkConfig::parse(SEED).unwrap(), 42)
}

fn action(core: &mut LeaseCore) -> Action {
    core.poll_action().expect("an action")
}

fn events(core: &mut LeaseCore) -> Vec<LeaseEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn held(k: SubnetKey, rev: i64) -> HeldLease {
    HeldLease {
        lease: lease(k, OUR_IP, rev),
        ttl: Some(TTL),
    }
}

/// Starts a core, answers its listing, and completes the create it asks for.
fn acquired(t0: Instant, others: Vec<SubnetLease>) -> (LeaseCore, SubnetKey) {
    let mut core = core_with(config());
    core.start(t0);
    assert_eq!(action(&mut core), Action::List);
    core.handle_input(t0, Input::Listed(Ok(listing(others, 10))));
    let Action::Create { key: k, .. } = action(&mut core) else {
        panic!("expected Create")
    };
    core.handle_input(
        t0,
        Input::Created {
            key: k,
            result: Ok(held(k, 11)),
        },
    );
    assert!(core.is_held());
    events(&mut core);
    (core, k)
}

#[test]
fn reuses_own_lease_by_public_ip_and_renews_it() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    assert_eq!(action(&mut core), Action::List);
    let own = lease(key(3), OUR_IP, 5);
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(
            vec![lease(key(1), "10.0.0.2", 4), own.clone()],
            6,
        ))),
    );
    // Same attributes: just renew to reset the TTL.
    match action(&mut core) {
        Action::Renew { held } => assert_eq!(held.lease.key, key(3)),
        other => panic!("expected Renew, got {other:?}"),
    }
    core.handle_input(t0, Input::Renewed(Ok(held(key(3), 5))));
    assert_eq!(core.held().unwrap().lease.key, key(3));
    assert!(events(&mut core).contains(&LeaseEvent::Acquired {
        lease: own,
        attempts: 0
    }));
    assert_eq!(
        core.peers().leases.keys().copied().collect::<Vec<_>>(),
        vec![key(1)]
    );
}

#[test]
fn own_lease_with_new_attributes_is_updated_then_renewed() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    let mut old = lease(key(3), OUR_IP, 5);
    old.attrs.backend_data = Some(serde_json::json!({"VtepMAC": "00:00:00:00:00:01"}).into());
    core.handle_input(t0, Input::Listed(Ok(listing(vec![old.clone()], 6))));
    match action(&mut core) {
        Action::Update { held, attrs: a } => {
            assert_eq!(held.lease, old);
            assert_eq!(a, attrs(OUR_IP));
        }
        other => panic!("expected Update, got {other:?}"),
    }
    core.handle_input(t0, Input::Updated(Ok(held(key(3), 7))));
    assert!(matches!(action(&mut core), Action::Renew { .. }));
    core.handle_input(t0, Input::Renewed(Ok(held(key(3), 7))));
    assert!(core.is_held());
}

#[test]
fn reuses_reservation_by_public_ip_and_never_renews_it() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    let mut res = lease(key(5), OUR_IP, 2);
    res.kind = LeaseKind::Reservation;
    // An expiring lease of ours too: the reservation wins.
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![lease(key(0), OUR_IP, 1), res.clone()], 6))),
    );
    assert_eq!(
        core.poll_action(),
        None,
        "same attributes: nothing to write"
    );
    let h = core.held().unwrap();
    assert_eq!(h.lease.key, key(5));
    assert_eq!(h.ttl, None);
    assert_eq!(core.poll_timeout(), None, "a reservation is never renewed");
    // The other lease with our IP is not a peer.
    assert!(core.peers().is_empty());
    assert!(events(&mut core)
        .iter()
        .any(|e| matches!(e, LeaseEvent::Skipped { key: k, .. } if k == "192.168.0.0-24")));
}

#[test]
fn previous_subnet_is_tried_first_if_free() {
    let t0 = Instant::now();
    let mut c = config();
    c.previous = Some(key(4));
    let mut core = core_with(c.clone());
    core.start(t0);
    action(&mut core);
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![lease(key(1), "10.0.0.2", 4)], 6))),
    );
    assert!(
        matches!(action(&mut core), Action::Create { key: k, ttl: Some(TTL), .. } if k == key(4))
    );

    // Taken by someone else: a random free one instead.
    for seed in 0..20 {
        let mut core = LeaseCore::new(c.clone(), NetworkConfig::parse(SEED).unwrap(), seed);
        core.start(t0);
        action(&mut core);
        core.handle_input(
            t0,
            Input::Listed(Ok(listing(vec![lease(key(4), "10.0.0.2", 4)], 6))),
        );
        assert!(matches!(action(&mut core), Action::Create { key: k, .. } if k != key(4)));
    }
}

#[test]
fn conflict_relists_after_backoff_and_tries_another_subnet() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    core.handle_input(t0, Input::Listed(Ok(listing(vec![], 1))));
    let Action::Create { key: first, .. } = action(&mut core) else {
        panic!()
    };
    core.handle_input(
        t0,
        Input::Created {
            key: first,
            result: Err(RegistryError::Conflict { key: first }),
        },
    );
    assert_eq!(core.poll_action(), None, "waits before retrying");
    assert_eq!(core.attempts(), 1);
    let at = core.poll_timeout().expect("a retry timer");
    assert!(at > t0);
    core.handle_timeout(at);
    assert_eq!(action(&mut core), Action::List);
    core.handle_input(
        at,
        Input::Listed(Ok(listing(vec![lease(first, "10.0.0.9", 2)], 2))),
    );
    let Action::Create { key: second, .. } = action(&mut core) else {
        panic!()
    };
    assert_ne!(first, second);
    core.handle_input(
        at,
        Input::Created {
            key: second,
            result: Ok(held(second, 3)),
        },
    );
    assert!(events(&mut core).contains(&LeaseEvent::Acquired {
        lease: held(second, 3).lease,
        attempts: 1
    }));
}

#[test]
fn exhausted_is_reported_on_first_acquisition() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    let all = (0..6)
        .map(|i| lease(key(i), &format!("10.0.1.{i}"), 1))
        .collect();
    core.handle_input(t0, Input::Listed(Ok(listing(all, 1))));
    assert!(matches!(
        core.take_error(),
        Some(SubnetError::Exhausted { total: 6, taken: 6 })
    ));
    assert_eq!(core.poll_action(), None);
    assert_eq!(core.peers().len(), 6);
}

#[test]
fn renew_schedule_and_retries() {
    let c = CoreConfig::new(attrs(OUR_IP));
    assert_eq!(
        c.renew_after(Duration::from_secs(24 * 3600)),
        Duration::from_secs(23 * 3600)
    );
    assert_eq!(
        c.renew_after(Duration::from_secs(30)),
        Duration::from_secs(20)
    );

    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    let t1 = t0 + Duration::from_secs(40);
    assert_eq!(core.poll_timeout(), Some(t1));
    core.handle_timeout(t1 - Duration::from_secs(1));
    assert_eq!(core.poll_action(), None, "not due yet");
    core.handle_timeout(t1);
    assert!(matches!(action(&mut core), Action::Renew { held } if held.lease.key == k));
    assert_eq!(
        core.poll_timeout(),
        None,
        "no timer while a request is outstanding"
    );
    core.handle_input(t1, Input::Renewed(Err(RegistryError::unavailable("down"))));
    let retry = core.poll_timeout().unwrap();
    assert!(retry > t1 && retry < t0 + TTL, "retried before expiry");
    assert!(events(&mut core)
        .iter()
        .any(|e| matches!(e, LeaseEvent::RenewFailed { .. })));
    core.handle_timeout(retry);
    assert!(matches!(action(&mut core), Action::Renew { .. }));
    core.handle_input(retry, Input::Renewed(Ok(held(k, 11))));
    assert_eq!(core.poll_timeout(), Some(retry + Duration::from_secs(40)));
    assert_eq!(
        events(&mut core),
        vec![LeaseEvent::Renewed { key: k, ttl: TTL }]
    );
}

#[test]
fn removed_lease_is_recreated_on_the_same_subnet() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    // A stale deletion (from before our create) is ignored.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Removed {
            key: k,
            revision: 9,
        }),
    );
    assert!(core.is_held());
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Removed {
            key: k,
            revision: 12,
        }),
    );
    assert!(!core.is_held());
    assert!(matches!(action(&mut core), Action::Create { key: c, .. } if c == k));
    core.handle_input(
        t0,
        Input::Created {
            key: k,
            result: Ok(held(k, 13)),
        },
    );
    let evs = events(&mut core);
    assert!(evs
        .iter()
        .any(|e| matches!(e, LeaseEvent::Lost { key: l, .. } if *l == k)));
    assert!(evs.contains(&LeaseEvent::Reacquired {
        lease: held(k, 13).lease,
        previous: k
    }));
}

#[test]
fn renew_not_found_recreates_same_subnet_and_conflict_picks_another() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    let t1 = core.poll_timeout().unwrap();
    core.handle_timeout(t1);
    action(&mut core);
    core.handle_input(
        t1,
        Input::Renewed(Err(RegistryError::LeaseNotFound { key: k })),
    );
    assert!(matches!(action(&mut core), Action::Create { key: c, .. } if c == k));
    // Someone took it meanwhile.
    core.handle_input(
        t1,
        Input::Created {
            key: k,
            result: Err(RegistryError::Conflict { key: k }),
        },
    );
    let t2 = core.poll_timeout().unwrap();
    core.handle_timeout(t2);
    assert_eq!(action(&mut core), Action::List);
    core.handle_input(
        t2,
        Input::Listed(Ok(listing(vec![lease(k, "10.0.0.7", 20)], 20))),
    );
    assert!(matches!(action(&mut core), Action::Create { key: c, .. } if c != k));
}

#[test]
fn resync_replaces_the_peer_set() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    let others: Vec<SubnetKey> = (0..6).map(key).filter(|x| *x != k).collect();
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(others[0], "10.0.0.2", 12))),
    );
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(others[1], "10.0.0.3", 13))),
    );
    let g = core.peers().generation;
    assert_eq!(core.peers().len(), 2);
    let evs = events(&mut core);
    assert!(evs.contains(&LeaseEvent::PeerAdded(others[0])));
    assert!(evs.contains(&LeaseEvent::PeerAdded(others[1])));

    // Changed attributes are an update (a new VtepMAC; a PublicIP changed
    // in place is not followed, see a_peers_public_ip_changed_in_place_...).
    let mut changed = lease(others[1], "10.0.0.3", 14);
    changed.attrs.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:27"}).into());
    core.handle_input(t0, Input::Event(RegistryEvent::Upserted(changed)));
    assert_eq!(events(&mut core), vec![LeaseEvent::PeerUpdated(others[1])]);

    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Resync(listing(
            vec![held(k, 11).lease, lease(others[2], "10.0.0.5", 15)],
            30,
        ))),
    );
    let peers: Vec<SubnetKey> = core.peers().leases.keys().copied().collect();
    assert_eq!(peers, vec![others[2]]);
    assert!(core.peers().generation > g);
    assert!(core.is_held(), "our lease is in the listing");
    assert_eq!(core.revision(), 30);
    let evs = events(&mut core);
    assert!(evs.contains(&LeaseEvent::PeerRemoved(others[0])));
    assert!(evs.contains(&LeaseEvent::PeerRemoved(others[1])));
    assert!(evs.contains(&LeaseEvent::PeerAdded(others[2])));

    // A resync without our lease means we lost it.
    core.handle_input(t0, Input::Event(RegistryEvent::Resync(listing(vec![], 31))));
    assert!(matches!(action(&mut core), Action::Create { key: c, .. } if c == k));
}

#[test]
fn malformed_foreign_and_impostor_leases_are_skipped_once() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    let other = (0..6).map(key).find(|x| *x != k).unwrap();
    let outside: SubnetKey = "10.9.0.0-24".parse().unwrap();
    let impostor = (0..6).map(key).find(|x| *x != k && *x != other).unwrap();
    let snapshot = LeaseListing {
        leases: vec![
            held(k, 11).lease,
            lease(other, "10.0.0.2", 12),
            lease(outside, "10.0.0.3", 13),
            lease(impostor, OUR_IP, 14),
        ],
        malformed: vec![MalformedLease {
            key: "/coreos.com/network/subnets/garbage".into(),
            reason: "not a key".into(),
        }],
        revision: 20,
    };
    for _ in 0..2 {
        core.handle_input(t0, Input::Event(RegistryEvent::Resync(snapshot.clone())));
    }
    assert_eq!(
        core.peers().leases.keys().copied().collect::<Vec<_>>(),
        vec![other]
    );
    let skipped: Vec<String> = events(&mut core)
        .into_iter()
        .filter_map(|e| match e {
            LeaseEvent::Skipped { key, reason, .. } => Some(format!("{key}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped
        .iter()
        .any(|s| s.starts_with("10.9.0.0-24") && s.contains("192.168.0.0/16")));
    assert!(skipped
        .iter()
        .any(|s| s.starts_with(&impostor.to_string()) && s.contains("our PublicIP")));
    assert!(skipped
        .iter()
        .any(|s| s.starts_with("/coreos.com/network/subnets/garbage")));

    // Two peers sharing a PublicIP that is not ours are both kept.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(impostor, "10.0.0.2", 21))),
    );
    assert_eq!(core.peers().len(), 2);
}

#[test]
fn someone_overwriting_our_lease_makes_us_lose_it() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    // Put without our etcd lease (a plain `etcdctl put`): not ours any more.
    let mut taken = lease(k, "10.0.0.66", 12);
    taken.kind = LeaseKind::Reservation;
    core.handle_input(t0, Input::Event(RegistryEvent::Upserted(taken)));
    assert!(!core.is_held());
    assert_eq!(action(&mut core), Action::List);
}

#[test]
fn watch_is_restarted_from_a_fresh_listing() {
    let t0 = Instant::now();
    let (mut core, _) = acquired(t0, vec![]);
    core.start_watch(t0);
    assert_eq!(action(&mut core), Action::Watch { from_revision: 11 });
    core.handle_input(t0, Input::WatchEnded);
    assert_eq!(action(&mut core), Action::List);
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![core.held().unwrap().lease.clone()], 40))),
    );
    assert_eq!(action(&mut core), Action::Watch { from_revision: 41 });
}

#[test]
fn release_deletes_an_expiring_lease() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    core.release(t0);
    assert_eq!(action(&mut core), Action::Delete { key: k });
    core.handle_input(t0, Input::Deleted(Ok(())));
    assert_eq!(
        events(&mut core),
        vec![LeaseEvent::Released { key: Some(k) }]
    );
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn renewal_retries_stay_within_a_quarter_of_the_ttl() {
    // A short TTL and an outage long enough for the backoff to reach its
    // 10 s maximum: retries must still come every TTL/4 at most, so the
    // first one after the store returns lands before the lease expires.
    let ttl = Duration::from_secs(4);
    let t0 = Instant::now();
    let mut c = config();
    c.ttl = ttl;
    let mut core = core_with(c);
    core.start(t0);
    assert_eq!(action(&mut core), Action::List);
    core.handle_input(t0, Input::Listed(Ok(listing(vec![], 10))));
    let Action::Create { key: k, .. } = action(&mut core) else {
        panic!("expected Create")
    };
    let h = HeldLease {
        lease: lease(k, OUR_IP, 11),
        ttl: Some(ttl),
    };
    core.handle_input(
        t0,
        Input::Created {
            key: k,
            result: Ok(h),
        },
    );
    let mut now = core.poll_timeout().unwrap();
    for _ in 0..30 {
        core.handle_timeout(now);
        assert!(matches!(action(&mut core), Action::Renew { .. }));
        core.handle_input(now, Input::Renewed(Err(RegistryError::unavailable("down"))));
        let next = core.poll_timeout().unwrap();
        assert!(
            next > now && next - now <= ttl / 4,
            "retry after {:?}",
            next - now
        );
        now = next;
    }
}

/// Issue 13: a lease carrying our IP is reused only if the allocator could
/// have handed it out (SubnetLen, inside [SubnetMin, SubnetMax]), as flannel
/// does: a planted /17 with our IP is neither adopted nor programmed.
#[test]
fn only_an_allocatable_lease_with_our_ip_is_reused() {
    let t0 = Instant::now();
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    let planted: SubnetKey = "192.168.0.0-17".parse().unwrap();
    let past_max = key(9); // 192.168.9.0/24: inside Network, past SubnetMax
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(
            vec![lease(planted, OUR_IP, 4), lease(past_max, OUR_IP, 5)],
            6,
        ))),
    );
    let Action::Create { key: k, .. } = action(&mut core) else {
        panic!("expected a Create of a fresh subnet")
    };
    assert_eq!(k.ipv4.prefix(), 24);
    assert!(k.ipv4.network() <= "192.168.5.0".parse::<std::net::Ipv4Addr>().unwrap());
    assert_ne!(k, past_max);

    // The right length and in range: reused.
    let mut core = core_with(config());
    core.start(t0);
    action(&mut core);
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(
            vec![lease(planted, OUR_IP, 4), lease(key(5), OUR_IP, 5)],
            6,
        ))),
    );
    match action(&mut core) {
        Action::Renew { held } => assert_eq!(held.lease.key, key(5)),
        other => panic!("expected the Renew of 192.168.5.0-24, got {other:?}"),
    }
}

/// Issue 13: no subnet overlapping the host's own networks (underlay,
/// gateway, etcd) is allocated, reused or accepted as a peer's.
#[test]
fn subnets_overlapping_the_hosts_networks_are_never_used() {
    let t0 = Instant::now();
    let mut c = config();
    // Five of the six subnets overlap "host networks"; only 192.168.2.0/24 is left.
    c.protected = ["192.168.0.0/23", "192.168.3.7/32", "192.168.4.0/23"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    c.previous = Some(key(4));
    let mut core = core_with(c.clone());
    core.start(t0);
    action(&mut core);
    // A peer on a protected subnet, and our own old lease on one.
    core.handle_input(
        t0,
        Input::Listed(Ok(listing(
            vec![lease(key(1), "10.0.0.7", 4), lease(key(3), OUR_IP, 5)],
            6,
        ))),
    );
    let Action::Create { key: k, .. } = action(&mut core) else {
        panic!("expected a Create")
    };
    assert_eq!(k, key(2), "the only subnet clear of the host's networks");
    core.handle_input(
        t0,
        Input::Created {
            key: k,
            result: Ok(held(k, 7)),
        },
    );
    assert!(core.is_held());
    assert!(core.peers().leases.is_empty(), "{:?}", core.peers().leases);
    let skipped: Vec<_> = events(&mut core)
        .into_iter()
        .filter_map(|e| match e {
            LeaseEvent::Skipped { key, reason, .. } => Some((key, reason)),
            _ => None,
        })
        .collect();
    assert!(
        skipped.iter().any(|(k, r)| k == "192.168.1.0-24"
            && matches!(r, SkipReason::OverlapsHostNetwork { network, .. }
                    if network.to_string() == "192.168.0.0/23")),
        "{skipped:?}"
    );
    // A peer arriving later on a protected subnet is skipped too; one clear of them is not.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(key(5), "10.0.0.8", 8))),
    );
    assert!(core.peers().leases.is_empty());

    // Everything protected: nothing to allocate.
    let mut c = config();
    c.protected = vec!["192.168.0.0/16".parse().unwrap()];
    let mut core = core_with(c);
    core.start(t0);
    action(&mut core);
    core.handle_input(t0, Input::Listed(Ok(listing(vec![], 6))));
    let err = core.take_error();
    assert!(
        matches!(err, Some(SubnetError::Exhausted { .. })),
        "{err:?}"
    );
}

fn skips_of(evs: &[LeaseEvent], k: &str) -> usize {
    evs.iter()
        .filter(|e| matches!(e, LeaseEvent::Skipped { key, .. } if key.ends_with(k)))
        .count()
}

fn malformed(name: &str) -> MalformedLease {
    MalformedLease {
        key: format!("/coreos.com/network/subnets/{name}"),
        reason: "expected value at line 1 column 1".into(),
    }
}

/// valid → bad → valid → bad reports the key twice: every transition into
/// bad is reported once, whether the value became unparseable (reported with
/// the full key) or unusable (our PublicIP), and also after a deletion.
#[test]
fn a_key_that_goes_bad_again_is_reported_again() {
    let t0 = Instant::now();
    let (mut core, _) = acquired(t0, vec![]);
    let up = |l: SubnetLease| Input::Event(RegistryEvent::Upserted(l));
    let bad = || Input::Event(RegistryEvent::Malformed(malformed("192.168.2.0-24")));
    let mut evs = Vec::new();
    for (rev, input) in [
        (20, up(lease(key(2), "10.0.0.2", 20))),
        (21, bad()),
        (22, up(lease(key(2), "10.0.0.2", 22))),
        (23, bad()),
        (24, up(lease(key(2), "10.0.0.2", 24))),
        (25, up(lease(key(2), OUR_IP, 25))),
        (26, up(lease(key(2), "10.0.0.2", 26))),
        (27, up(lease(key(2), OUR_IP, 27))),
        (
            28,
            Input::Event(RegistryEvent::Removed {
                key: key(2),
                revision: 28,
            }),
        ),
        (29, up(lease(key(2), OUR_IP, 29))),
    ] {
        let _ = rev;
        core.handle_input(t0, input);
        evs.extend(events(&mut core));
    }
    // Two malformed transitions, three "claims our PublicIP" ones.
    assert_eq!(skips_of(&evs, "192.168.2.0-24"), 5, "{evs:?}");
    // The same bad value seen again (a re-listing) is not reported again.
    core.handle_input(t0, bad());
    assert_eq!(skips_of(&events(&mut core), "192.168.2.0-24"), 1);
    core.handle_input(t0, bad());
    assert_eq!(skips_of(&events(&mut core), "192.168.2.0-24"), 0);
}

/// 1,000 junk keys in one listing: every one is a Skipped event (counted by
/// twilld's metric) but only SKIP_LOG_LIMIT are logged one by one; the rest
/// are summarised with their count, at the end of the listing, and for a
/// burst of watch events at the end of the window.
#[test]
fn skip_warnings_are_rate_limited_with_a_count() {
    use twill_subnet::SKIP_LOG_LIMIT;
    let t0 = Instant::now();
    let (mut core, own) = acquired(t0, vec![]);
    let limit = u64::from(SKIP_LOG_LIMIT);
    let junk: Vec<MalformedLease> = (0..1000).map(|i| malformed(&format!("junk-{i}"))).collect();
    let summaries = |evs: &[LeaseEvent]| -> Vec<u64> {
        evs.iter()
            .filter_map(|e| match e {
                LeaseEvent::SkipsSuppressed { count } => Some(*count),
                _ => None,
            })
            .collect()
    };
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Resync(LeaseListing {
            leases: vec![lease(own, OUR_IP, 11)],
            malformed: junk,
            revision: 30,
        })),
    );
    let evs = events(&mut core);
    assert_eq!(skips_of(&evs, ""), 1000);
    assert_eq!(summaries(&evs), vec![1000 - limit]);
    // The core logs nothing: each event says whether it is one to warn about.
    let to_warn = |evs: &[LeaseEvent]| {
        evs.iter()
            .filter(|e| {
                matches!(
                    e,
                    LeaseEvent::Skipped {
                        within_log_budget: true,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(to_warn(&evs), usize::try_from(limit).unwrap());

    // More junk by watch in the same window: nothing logged one by one, one
    // summary when the window ends (the core asks to be woken for it).
    let t1 = t0 + Duration::from_secs(1);
    for i in 0..30 {
        core.handle_input(
            t1,
            Input::Event(RegistryEvent::Malformed(malformed(&format!("more-{i}")))),
        );
    }
    let evs = events(&mut core);
    assert_eq!(skips_of(&evs, ""), 30);
    assert_eq!(to_warn(&evs), 0);
    assert!(summaries(&evs).is_empty());
    // (The renewal may be due earlier; the summary is due at the window's end.)
    let due = t0 + twill_subnet::SKIP_LOG_WINDOW;
    assert!(core.poll_timeout().is_some_and(|t| t <= due));
    core.handle_timeout(due);
    assert_eq!(summaries(&events(&mut core)), vec![30]);

    // A new window logs again, and needs no summary.
    let t2 = due + Duration::from_secs(1);
    core.handle_input(
        t2,
        Input::Event(RegistryEvent::Malformed(malformed("late"))),
    );
    let evs = events(&mut core);
    assert_eq!(skips_of(&evs, "late"), 1);
    assert_eq!(to_warn(&evs), 1);
    assert!(summaries(&evs).is_empty());
}

/// Issue 13 #5: `etcdctl put --ignore-lease` over a live peer's key with
/// another PublicIP is not followed: the peer keeps the original until the
/// key is deleted (or expires) or the value returns. A change that keeps
/// the PublicIP (a VtepMAC after a device re-creation) is followed.
#[test]
fn a_peers_public_ip_changed_in_place_is_not_followed() {
    let t0 = Instant::now();
    let (mut core, _) = acquired(t0, vec![lease(key(2), "10.0.0.2", 5)]);
    let ip_of = |core: &LeaseCore| core.peers().leases[&key(2)].attrs.public_ip.to_string();
    let up = |l: SubnetLease| Input::Event(RegistryEvent::Upserted(l));

    core.handle_input(t0, up(lease(key(2), "10.0.0.200", 20)));
    assert_eq!(ip_of(&core), "10.0.0.2");
    let evs = events(&mut core);
    assert!(
        evs.iter()
            .any(|e| matches!(e, LeaseEvent::Skipped { reason: SkipReason::PublicIpChanged { from, to }, .. }
            if from.to_string() == "10.0.0.2" && to.to_string() == "10.0.0.200")),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, LeaseEvent::PeerUpdated(_))));

    // The owner restores its value, with a new VtepMAC: followed.
    let mut back = lease(key(2), "10.0.0.2", 21);
    back.attrs.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:99"}).into());
    core.handle_input(t0, up(back.clone()));
    assert_eq!(*core.peers().leases[&key(2)], back);
    assert!(events(&mut core).contains(&LeaseEvent::PeerUpdated(key(2))));

    // After a deletion, a new lease with another PublicIP is a new host.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Removed {
            key: key(2),
            revision: 22,
        }),
    );
    assert!(!core.peers().leases.contains_key(&key(2)));
    core.handle_input(t0, up(lease(key(2), "10.0.0.200", 23)));
    assert_eq!(ip_of(&core), "10.0.0.200");
}

/// Issue 13 #5: our key overwritten in place while still on an etcd lease
/// (`etcdctl put --ignore-lease`): we restore our value (the registry does it
/// only if the key is unchanged since and still on our etcd lease), report
/// it, and keep our subnet. When the registry refuses (the key was
/// re-created under another etcd lease or none), we move, as before.
#[test]
fn our_key_overwritten_in_place_is_restored_and_kept() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(k, "10.0.0.200", 12))),
    );
    assert!(core.is_held(), "we keep our subnet");
    match action(&mut core) {
        Action::Restore { held, revision } => {
            assert_eq!(held.lease.key, k);
            assert_eq!(held.lease.attrs, attrs(OUR_IP));
            assert_eq!(revision, 12);
        }
        other => panic!("expected Restore, got {other:?}"),
    }
    assert!(events(&mut core).contains(&LeaseEvent::Overwritten {
        key: k,
        by: "10.0.0.200".parse().unwrap()
    }));
    assert!(core.peers().is_empty(), "the writer's value is no peer");
    core.handle_input(t0, Input::Restored(Ok(held(k, 13))));
    assert_eq!(core.held().unwrap().lease.key, k);
    assert_eq!(core.held().unwrap().lease.revision, 13);
    // Our own restoring write, seen by the watch, changes nothing.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(k, OUR_IP, 13))),
    );
    assert!(core.is_held());
    assert!(core.poll_action().is_none());

    // Refused: the key is not ours any more; we move.
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(k, "10.0.0.201", 14))),
    );
    assert!(matches!(action(&mut core), Action::Restore { .. }));
    core.handle_input(t0, Input::Restored(Err(RegistryError::Conflict { key: k })));
    assert!(!core.is_held());
    assert!(events(&mut core)
        .iter()
        .any(|e| matches!(e, LeaseEvent::Lost { reason, .. } if reason.contains("overwritten by 10.0.0.201"))));
    assert_eq!(action(&mut core), Action::List);
}

/// The lease core holds peers to the same host-level rules as the backends
/// (`NetworkConfig::check_peer`, one home): a non-unicast `PublicIP` and a
/// subnet overlapping ours are skipped here, with a typed reason, and never
/// reach the peer set.
#[test]
fn peers_with_a_non_unicast_ip_or_overlapping_our_subnet_are_skipped_with_a_typed_reason() {
    let t0 = Instant::now();
    let (mut core, own) = acquired(t0, vec![]);
    let around = std::net::Ipv4Addr::from(u32::from(own.ipv4.network()) & !0x1ff);
    let covering: SubnetKey = format!("{around}-23").parse().unwrap();
    let up = |l: SubnetLease| Input::Event(RegistryEvent::Upserted(l));
    let free = if own == key(5) { key(6) } else { key(5) };
    core.handle_input(t0, up(lease(free, "224.0.0.1", 20)));
    core.handle_input(t0, up(lease(covering, "10.0.0.9", 21)));
    assert!(core.peers().leases.is_empty(), "{:?}", core.peers().leases);
    let skipped: Vec<(String, SkipReason)> = events(&mut core)
        .into_iter()
        .filter_map(|e| match e {
            LeaseEvent::Skipped { key, reason, .. } => Some((key, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped,
        vec![
            (
                free.to_string(),
                SkipReason::PublicIpNotUnicast("224.0.0.1".parse().unwrap())
            ),
            (
                covering.to_string(),
                SkipReason::OverlapsOwnSubnet(own.ipv4)
            ),
        ]
    );
}

/// The peer set names what changed since a generation a reader saw: each
/// added, updated or removed key once, and nothing for the ones untouched;
/// past the journal's reach it says it no longer knows.
#[test]
fn peer_set_names_the_keys_changed_since_a_generation() {
    let t0 = Instant::now();
    let (mut core, k) = acquired(t0, vec![]);
    let others: Vec<SubnetKey> = (0..6).map(key).filter(|x| *x != k).collect();
    let upsert = |core: &mut LeaseCore, i: usize, ip: &str, rev: i64| {
        core.handle_input(
            t0,
            Input::Event(RegistryEvent::Upserted(lease(others[i], ip, rev))),
        );
    };
    upsert(&mut core, 0, "10.0.0.2", 12);
    upsert(&mut core, 1, "10.0.0.3", 13);
    let seen = core.peers().generation;
    assert_eq!(core.peers().changed_since(seen), Some(Default::default()));

    upsert(&mut core, 2, "10.0.0.4", 14);
    let mut changed = lease(others[1], "10.0.0.3", 15);
    changed.attrs.backend_data = Some(serde_json::json!({"VtepMAC": "6e:af:8f:41:72:27"}).into());
    core.handle_input(t0, Input::Event(RegistryEvent::Upserted(changed.clone())));
    core.handle_input(
        t0,
        Input::Event(RegistryEvent::Removed {
            key: others[1],
            revision: 16,
        }),
    );
    // The same value again changes nothing.
    upsert(&mut core, 0, "10.0.0.2", 12);
    let set = core.peers().clone();
    assert_eq!(
        set.changed_since(seen),
        Some([others[1], others[2]].into_iter().collect())
    );
    assert_eq!(set.generation, seen + 3, "one generation per change");
    assert_eq!(
        set.changed_since(set.generation + 1),
        None,
        "a generation it never had"
    );

    // More changes than the journal holds: a reader that saw `seen` must
    // take every peer as changed, one that saw the latest need not.
    for n in 0..=twill_subnet::PEER_JOURNAL as i64 {
        let mut l = lease(others[3], "10.0.0.6", 20 + n);
        l.attrs.backend_data = Some(
            serde_json::json!({"VtepMAC": format!("6e:af:8f:41:{:02x}:{:02x}", n / 256, n % 256)})
                .into(),
        );
        core.handle_input(t0, Input::Event(RegistryEvent::Upserted(l)));
    }
    let latest = core.peers();
    assert_eq!(latest.changed_since(seen), None);
    assert_eq!(
        latest.changed_since(latest.generation - 1),
        Some([others[3]].into_iter().collect())
    );
}
