//! The sans-IO lease core in dual-stack and IPv6-only networks, under a
//! virtual clock: allocation, races, reservations, previous-subnet reuse,
//! protected IPv6 networks, and the IPv6 peer rules.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use twill_model::{
    Ipv6Network, LeaseAttrs, LeaseKind, NetworkConfig, SkipReason, SubnetKey, SubnetLease,
};
use twill_subnet::{
    Action, CoreConfig, HeldLease, Input, LeaseCore, LeaseEvent, LeaseListing, RegistryError,
    RegistryEvent, SubnetError,
};

const DUAL: &str = r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.20.0","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:6::/56","Backend":{"Type":"vxlan"}}"#;
const OUR_IP: &str = "10.0.0.1";
const OUR_IP6: &str = "fd00::1";
const TTL: Duration = Duration::from_secs(60);

fn k(s: &str) -> SubnetKey {
    s.parse().unwrap()
}

fn net6(s: &str) -> Ipv6Network {
    s.parse().unwrap()
}

fn attrs(ip: &str, ip6: Option<&str>) -> LeaseAttrs {
    let mut a = LeaseAttrs::new(ip.parse().unwrap(), "vxlan");
    a.public_ipv6 = ip6.map(|s| s.parse().unwrap());
    a
}

fn lease(key: &str, ip: &str, ip6: Option<&str>, rev: i64) -> SubnetLease {
    SubnetLease {
        key: k(key),
        attrs: attrs(ip, ip6),
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

/// Our attributes: both addresses in a dual-stack network, flannel's
/// `0.0.0.0` and an IPv6 address in an IPv6-only one.
fn ours(network: &str) -> LeaseAttrs {
    if network == V6_ONLY {
        attrs("0.0.0.0", Some(OUR_IP6))
    } else {
        attrs(OUR_IP, Some(OUR_IP6))
    }
}

fn config(network: &str) -> CoreConfig {
    let mut c = CoreConfig::new(ours(network));
    c.ttl = TTL;
    c
}

fn core(network: &str, c: CoreConfig, seed: u64) -> LeaseCore {
    LeaseCore::new(c, NetworkConfig::parse(network).unwrap(), seed)
}

fn action(core: &mut LeaseCore) -> Action {
    core.poll_action().expect("an action")
}

fn events(core: &mut LeaseCore) -> Vec<LeaseEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

/// Starts `core`, answers its listing with `others`, returns the key it
/// asks to create.
fn create_after_listing(t0: Instant, core: &mut LeaseCore, others: Vec<SubnetLease>) -> SubnetKey {
    core.start(t0);
    assert_eq!(action(core), Action::List);
    core.handle_input(t0, Input::Listed(Ok(listing(others, 10))));
    match action(core) {
        Action::Create { key, attrs, .. } => {
            assert_eq!(attrs.public_ipv6, Some(OUR_IP6.parse().unwrap()));
            key
        }
        other => panic!("expected Create, got {other:?}"),
    }
}

fn grant(t0: Instant, core: &mut LeaseCore, key: SubnetKey, network: &str) {
    let held = HeldLease {
        lease: SubnetLease {
            key,
            attrs: ours(network),
            kind: LeaseKind::Expiring,
            revision: 11,
        },
        ttl: Some(TTL),
    };
    core.handle_input(
        t0,
        Input::Created {
            key,
            result: Ok(held),
        },
    );
    assert!(core.is_held());
}

fn skipped(evs: &[LeaseEvent]) -> Vec<(String, SkipReason)> {
    evs.iter()
        .filter_map(|e| match e {
            LeaseEvent::Skipped { key, reason, .. } => Some((key.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn dual_stack_allocates_both_halves_beside_the_taken_ones() {
    let t0 = Instant::now();
    let cfg = NetworkConfig::parse(DUAL).unwrap();
    // Every IPv4 subnet but 10.5.7.0/24 is taken, and the IPv6 subnets of
    // the first 200 indices.
    let mut others = Vec::new();
    for i in 1..=20u8 {
        if i != 7 {
            let v6 = cfg.ipv6_subnet_at(u128::from(i)).unwrap();
            others.push(lease(
                &format!("10.5.{i}.0-24&{}-64", v6.network()),
                &format!("10.0.1.{i}"),
                Some(&format!("fd00::1:{i}")),
                u64::from(i).try_into().unwrap(),
            ));
        }
    }
    for seed in 0..20 {
        let mut c = core(DUAL, config(DUAL), seed);
        let key = create_after_listing(t0, &mut c, others.clone());
        assert_eq!(key.ipv4.to_string(), "10.5.7.0/24");
        let v6 = key.ipv6.expect("a dual-stack key");
        assert!(cfg.ipv6_subnet_index(v6).is_some(), "{v6}");
        assert!(
            others.iter().all(|l| l.key.ipv6 != Some(v6)),
            "{v6} is taken"
        );
        // Written exactly as flannel writes it.
        assert_eq!(key.to_string().parse::<SubnetKey>().unwrap(), key);
        assert!(key.to_string().starts_with("10.5.7.0-24&fd00:5:0:"));
        grant(t0, &mut c, key, DUAL);
        assert_eq!(c.peers().len(), 19);
    }
}

#[test]
fn ipv6_only_allocates_flannels_key_form() {
    let t0 = Instant::now();
    let mut c = core(V6_ONLY, config(V6_ONLY), 3);
    let peer = lease("0.0.0.0-0&fd00:6:0:1::-64", "0.0.0.0", Some("fd00::2"), 5);
    let key = create_after_listing(t0, &mut c, vec![peer.clone()]);
    assert!(key.is_ipv6_only());
    assert!(key.to_string().starts_with("0.0.0.0-0&fd00:6:0:"), "{key}");
    assert_ne!(key, peer.key);
    grant(t0, &mut c, key, V6_ONLY);
    // An IPv6-only peer's PublicIP 0.0.0.0 and IPv4 part 0.0.0.0/0 are
    // neither ours nor a reason to skip it.
    assert_eq!(
        c.peers().leases.keys().copied().collect::<Vec<_>>(),
        vec![peer.key]
    );
    assert!(skipped(&events(&mut c)).is_empty());
}

/// Two hosts drawing the same IPv4 subnet from the same listing ask for the
/// same combined key, so create-if-absent lets exactly one through.
#[test]
fn racing_hosts_on_one_ipv4_subnet_ask_for_one_key() {
    let t0 = Instant::now();
    let one = r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.3.0","SubnetMax":"10.5.3.0","EnableIPv6":true,"IPv6Network":"fd00:5::/48"}"#;
    let mut a = core(one, config(one), 1);
    let mut b = core(one, config(one), 2);
    let ka = create_after_listing(t0, &mut a, vec![]);
    let kb = create_after_listing(t0, &mut b, vec![]);
    assert_eq!(ka, kb);
    grant(t0, &mut a, ka, one);
    b.handle_input(
        t0,
        Input::Created {
            key: kb,
            result: Err(RegistryError::Conflict { key: kb }),
        },
    );
    assert!(!b.is_held());
    assert!(events(&mut b)
        .iter()
        .any(|e| matches!(e, LeaseEvent::AcquireRetry { .. })));
    // After its backoff, b re-lists, sees a's lease: nothing left.
    let later = t0 + Duration::from_secs(600);
    b.handle_timeout(later);
    assert_eq!(action(&mut b), Action::List);
    let mut theirs = lease(&ka.to_string(), "10.0.0.9", Some("fd00::9"), 11);
    theirs.attrs.backend_type = "vxlan".into();
    b.handle_input(later, Input::Listed(Ok(listing(vec![theirs], 11))));
    assert!(matches!(
        b.take_error(),
        Some(SubnetError::Exhausted { total: 1, taken: 1 })
    ));
}

/// The race create-if-absent cannot settle: two hosts created different
/// keys sharing their IPv4 half (their listings missed each other, one
/// reused a previous IPv6 half). The one later in claim order (higher
/// revision) gives its lease up and takes another subnet; the first keeps
/// its own, whichever order the two learn of each other in.
#[test]
fn dual_stack_keys_sharing_a_half_leave_one_holder() {
    let t0 = Instant::now();
    let mut c = core(DUAL, config(DUAL), 7);
    let ours = create_after_listing(t0, &mut c, vec![]);
    grant(t0, &mut c, ours, DUAL); // revision 11
    let _ = events(&mut c);
    let twin = |rev: i64| {
        let other6 = if ours.ipv6.unwrap().to_string() == "fd00:5:0:77::/64" {
            "fd00:5:0:78::"
        } else {
            "fd00:5:0:77::"
        };
        let mut l = lease(
            &format!("{}-24&{other6}-64", ours.ipv4.network()),
            "10.0.0.9",
            Some("fd00::9"),
            rev,
        );
        l.attrs.backend_type = "vxlan".into();
        l
    };
    // Created after ours: it is the one to move, we keep ours.
    c.handle_input(t0, Input::Event(RegistryEvent::Upserted(twin(12))));
    assert!(c.is_held());
    assert_eq!(c.poll_action(), None);
    // Created before ours: ours is deleted, and a new
    // subnet acquired from a fresh listing.
    let mut d = core(DUAL, config(DUAL), 7);
    assert_eq!(create_after_listing(t0, &mut d, vec![]), ours);
    grant(t0, &mut d, ours, DUAL);
    let _ = events(&mut d);
    d.handle_input(t0, Input::Event(RegistryEvent::Upserted(twin(9))));
    assert!(!d.is_held());
    assert!(events(&mut d).iter().any(|e| matches!(
        e,
        LeaseEvent::Lost { key, reason } if *key == ours && reason.contains("shares a subnet")
    )));
    assert_eq!(action(&mut d), Action::Delete { key: ours });
    assert_eq!(d.poll_action(), None, "nothing before the deletion answers");
    d.handle_input(t0, Input::Deleted(Ok(())));
    assert_eq!(action(&mut d), Action::List);
    d.handle_input(t0, Input::Listed(Ok(listing(vec![twin(9)], 13))));
    let Action::Create { key: next, .. } = action(&mut d) else {
        panic!("expected Create")
    };
    assert_ne!(next.ipv4, ours.ipv4, "the IPv4 half is the other host's");
    // A reservation sharing a half is the operator's: it never makes us
    // yield (and is never created by a race).
    let mut e = core(DUAL, config(DUAL), 7);
    create_after_listing(t0, &mut e, vec![]);
    grant(t0, &mut e, ours, DUAL);
    let mut reserved = twin(1);
    reserved.kind = LeaseKind::Reservation;
    e.handle_input(t0, Input::Event(RegistryEvent::Upserted(reserved)));
    assert!(e.is_held());
}

#[test]
fn ipv6_only_lost_race_moves_to_another_subnet() {
    let t0 = Instant::now();
    let mut c = core(V6_ONLY, config(V6_ONLY), 5);
    let first = create_after_listing(t0, &mut c, vec![]);
    c.handle_input(
        t0,
        Input::Created {
            key: first,
            result: Err(RegistryError::Conflict { key: first }),
        },
    );
    let later = t0 + Duration::from_secs(600);
    c.handle_timeout(later);
    assert_eq!(action(&mut c), Action::List);
    // The listing does not show the winner yet: the conflict alone marks it.
    c.handle_input(later, Input::Listed(Ok(listing(vec![], 10))));
    let Action::Create { key: second, .. } = action(&mut c) else {
        panic!("expected Create")
    };
    assert!(second.is_ipv6_only());
    assert_ne!(second, first);
}

#[test]
fn reservations_are_found_by_the_networks_addresses() {
    let t0 = Instant::now();
    // Dual stack: a reservation is ours when both addresses match.
    let mut c = core(DUAL, config(DUAL), 1);
    c.start(t0);
    action(&mut c);
    let mut res = lease("10.5.9.0-24&fd00:5:0:9::-64", OUR_IP, Some(OUR_IP6), 3);
    res.kind = LeaseKind::Reservation;
    let mut half = lease("10.5.8.0-24&fd00:5:0:8::-64", OUR_IP, Some("fd00::77"), 4);
    half.kind = LeaseKind::Reservation;
    c.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![half.clone(), res.clone()], 5))),
    );
    assert_eq!(c.held().unwrap().lease.key, res.key);
    assert!(c.poll_action().is_none(), "a reservation is not renewed");
    // The one with our PublicIP but another PublicIPv6 is not ours, and
    // not a peer either.
    assert!(c.peers().is_empty());
    assert!(skipped(&events(&mut c)).contains(&(
        half.key.to_string(),
        SkipReason::ClaimsOurPublicIp(OUR_IP.parse().unwrap())
    )));

    // IPv6-only: by PublicIPv6 alone (PublicIP is 0.0.0.0 for everyone).
    let mut c = core(V6_ONLY, config(V6_ONLY), 1);
    c.start(t0);
    action(&mut c);
    let mut res = lease("0.0.0.0-0&fd00:6:0:9::-64", "0.0.0.0", Some(OUR_IP6), 3);
    res.kind = LeaseKind::Reservation;
    let other = lease("0.0.0.0-0&fd00:6:0:a::-64", "0.0.0.0", Some("fd00::a"), 4);
    c.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![other.clone(), res.clone()], 5))),
    );
    assert_eq!(c.held().unwrap().lease.key, res.key);
    assert_eq!(
        c.peers().leases.keys().copied().collect::<Vec<_>>(),
        vec![other.key]
    );
}

#[test]
fn own_lease_is_reused_only_when_both_halves_are_allocatable() {
    let t0 = Instant::now();
    let mut c = core(DUAL, config(DUAL), 1);
    c.start(t0);
    action(&mut c);
    // Ours, but its IPv6 half is a /60, not IPv6SubnetLen; and an
    // IPv4-only lease of ours from before IPv6 was turned on.
    let planted = lease("10.5.4.0-24&fd00:5:0:40::-60", OUR_IP, Some(OUR_IP6), 3);
    let old = lease("10.5.5.0-24", OUR_IP, Some(OUR_IP6), 4);
    let good = lease("10.5.6.0-24&fd00:5:0:6::-64", OUR_IP, Some(OUR_IP6), 5);
    c.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![planted.clone(), old.clone()], 6))),
    );
    let Action::Create { key, .. } = action(&mut c) else {
        panic!("expected Create")
    };
    assert!(key != planted.key && key != old.key && key.ipv6.is_some());

    let mut c = core(DUAL, config(DUAL), 1);
    c.start(t0);
    action(&mut c);
    c.handle_input(
        t0,
        Input::Listed(Ok(listing(vec![planted, old, good.clone()], 6))),
    );
    match action(&mut c) {
        Action::Renew { held } => assert_eq!(held.lease.key, good.key),
        other => panic!("expected Renew, got {other:?}"),
    }
}

#[test]
fn previous_subnet_is_reused_half_by_half() {
    let t0 = Instant::now();
    let previous = k("10.5.9.0-24&fd00:5:0:99::-64");
    let mut cfg = config(DUAL);
    cfg.previous = Some(previous);
    let mut c = core(DUAL, cfg.clone(), 1);
    assert_eq!(create_after_listing(t0, &mut c, vec![]), previous);

    // Its IPv6 half was taken meanwhile: keep the IPv4 half.
    let mut c = core(DUAL, cfg.clone(), 1);
    let thief = lease(
        "10.5.2.0-24&fd00:5:0:99::-64",
        "10.0.0.7",
        Some("fd00::7"),
        3,
    );
    let key = create_after_listing(t0, &mut c, vec![thief]);
    assert_eq!(key.ipv4, previous.ipv4);
    assert!(key.ipv6.is_some() && key.ipv6 != previous.ipv6);

    // Its IPv4 half was taken: keep the IPv6 half.
    let mut c = core(DUAL, cfg, 1);
    let thief = lease(
        "10.5.9.0-24&fd00:5:0:3::-64",
        "10.0.0.7",
        Some("fd00::7"),
        3,
    );
    let key = create_after_listing(t0, &mut c, vec![thief]);
    assert_eq!(key.ipv6, previous.ipv6);
    assert_ne!(key.ipv4, previous.ipv4);

    // IPv6-only, from an IPv6-only subnet.env.
    let previous = k("0.0.0.0-0&fd00:6:0:42::-64");
    let mut cfg = config(V6_ONLY);
    cfg.previous = Some(previous);
    let mut c = core(V6_ONLY, cfg, 1);
    assert_eq!(create_after_listing(t0, &mut c, vec![]), previous);
}

#[test]
fn protected_ipv6_networks_are_never_allocated_reused_or_peers() {
    let t0 = Instant::now();
    let mut cfg = config(V6_ONLY);
    // The host's own /57 covers the upper half of IPv6Network (128 of its
    // 255 subnets); a /64 in the lower half too.
    cfg.protected_v6 = vec![net6("fd00:6:0:80::/57"), net6("fd00:6:0:5::/64")];
    let ours_inside = lease("0.0.0.0-0&fd00:6:0:90::-64", "0.0.0.0", Some(OUR_IP6), 2);
    let peer_inside = lease("0.0.0.0-0&fd00:6:0:5::-64", "0.0.0.0", Some("fd00::5"), 3);
    for seed in 0..30 {
        let mut c = core(V6_ONLY, cfg.clone(), seed);
        let key = create_after_listing(t0, &mut c, vec![ours_inside.clone(), peer_inside.clone()]);
        let v6 = key.ipv6.unwrap();
        assert!(
            cfg.protected_v6
                .iter()
                .all(|p| !p.contains(v6.network()) && !v6.contains(p.network())),
            "{v6}"
        );
        grant(t0, &mut c, key, V6_ONLY);
        assert!(c.peers().is_empty());
        let skips = skipped(&events(&mut c));
        assert!(skips.contains(&(
            peer_inside.key.to_string(),
            SkipReason::OverlapsHostIpv6Network {
                subnet: peer_inside.key.ipv6.unwrap(),
                network: net6("fd00:6:0:5::/64"),
            }
        )));
    }
}

#[test]
fn ipv6_peers_outside_the_network_or_over_ours_are_skipped() {
    let t0 = Instant::now();
    let mut c = core(DUAL, config(DUAL), 1);
    let key = create_after_listing(t0, &mut c, vec![]);
    grant(t0, &mut c, key, DUAL);
    events(&mut c);
    let own6 = key.ipv6.unwrap();
    let cases = [
        (
            lease("10.5.30.0-24&fd00:7::-64", "10.0.0.3", Some("fd00::3"), 20),
            SkipReason::OutsideIpv6Network {
                subnet: net6("fd00:7::/64"),
                network: net6("fd00:5::/48"),
            },
        ),
        (
            lease(
                &format!("10.5.31.0-24&{}-65", own6.network()),
                "10.0.0.4",
                Some("fd00::4"),
                21,
            ),
            SkipReason::OverlapsOwnIpv6Subnet(own6),
        ),
        (
            lease("10.5.32.0-24&fd00:5:0:e0::-64", "10.0.0.5", None, 22),
            SkipReason::NoPublicIpv6,
        ),
        (
            lease(
                "10.5.33.0-24&fd00:5:0:e1::-64",
                "10.0.0.6",
                Some(OUR_IP6),
                23,
            ),
            SkipReason::ClaimsOurPublicIpv6(OUR_IP6.parse().unwrap()),
        ),
    ];
    for (l, want) in cases {
        let name = l.key.to_string();
        c.handle_input(t0, Input::Event(RegistryEvent::Upserted(l)));
        assert_eq!(
            skipped(&events(&mut c)),
            vec![(name.clone(), want)],
            "{name}"
        );
    }
    assert!(c.peers().is_empty());
    // An IPv4-only lease in a dual-stack network is a peer (its IPv4 side).
    c.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(
            "10.5.40.0-24",
            "10.0.0.8",
            None,
            30,
        ))),
    );
    assert_eq!(c.peers().len(), 1);

    // In an IPv6-only network it has nothing to program.
    let mut c = core(V6_ONLY, config(V6_ONLY), 1);
    let key = create_after_listing(t0, &mut c, vec![]);
    grant(t0, &mut c, key, V6_ONLY);
    events(&mut c);
    c.handle_input(
        t0,
        Input::Event(RegistryEvent::Upserted(lease(
            "10.5.40.0-24",
            "10.0.0.8",
            None,
            30,
        ))),
    );
    assert_eq!(
        skipped(&events(&mut c)),
        vec![("10.5.40.0-24".to_string(), SkipReason::NoIpv6Subnet)]
    );
    assert!(c.peers().is_empty());
}

/// A peer's `PublicIPv6` changed in place is pinned as its `PublicIP` is:
/// the original stays programmed until the key is given up.
#[test]
fn public_ipv6_changed_in_place_is_pinned() {
    let t0 = Instant::now();
    let mut c = core(V6_ONLY, config(V6_ONLY), 1);
    let key = create_after_listing(t0, &mut c, vec![]);
    grant(t0, &mut c, key, V6_ONLY);
    let peer = lease(
        "0.0.0.0-0&fd00:6:0:f0::-64",
        "0.0.0.0",
        Some("fd00::f0"),
        20,
    );
    c.handle_input(t0, Input::Event(RegistryEvent::Upserted(peer.clone())));
    events(&mut c);
    let moved = lease(
        "0.0.0.0-0&fd00:6:0:f0::-64",
        "0.0.0.0",
        Some("fd00::666"),
        21,
    );
    c.handle_input(t0, Input::Event(RegistryEvent::Upserted(moved)));
    assert_eq!(
        skipped(&events(&mut c)),
        vec![(
            peer.key.to_string(),
            SkipReason::PublicIpv6Changed {
                from: Some("fd00::f0".parse().unwrap()),
                to: Some("fd00::666".parse().unwrap()),
            }
        )]
    );
    assert_eq!(c.peers().leases[&peer.key].attrs, peer.attrs);
    // Removed: gone, and its subnet is free again.
    c.handle_input(
        t0,
        Input::Event(RegistryEvent::Removed {
            key: peer.key,
            revision: 22,
        }),
    );
    assert!(c.peers().is_empty());
}

/// Our IPv6-only key overwritten in place with another PublicIPv6 is
/// restored, as for IPv4.
#[test]
fn our_ipv6_only_key_overwritten_in_place_is_restored() {
    let t0 = Instant::now();
    let mut c = core(V6_ONLY, config(V6_ONLY), 1);
    let key = create_after_listing(t0, &mut c, vec![]);
    grant(t0, &mut c, key, V6_ONLY);
    events(&mut c);
    let mut over = lease(&key.to_string(), "0.0.0.0", Some("fd00::bad"), 30);
    over.kind = LeaseKind::Expiring;
    c.handle_input(t0, Input::Event(RegistryEvent::Upserted(over)));
    assert!(matches!(
        action(&mut c),
        Action::Restore { revision: 30, .. }
    ));
    // Our own value coming back is ours (same PublicIPv6), not an overwrite.
    let mut back = lease(&key.to_string(), "0.0.0.0", Some(OUR_IP6), 31);
    back.kind = LeaseKind::Expiring;
    c.handle_input(
        t0,
        Input::Restored(Ok(HeldLease {
            lease: back.clone(),
            ttl: Some(TTL),
        })),
    );
    c.handle_input(t0, Input::Event(RegistryEvent::Upserted(back)));
    assert!(c.is_held());
    assert!(c.poll_action().is_none());
}

proptest::proptest! {
    /// Whatever the store holds (dual-stack, IPv4-only and IPv6-only leases
    /// of others, some over the protected networks), the key asked for is
    /// a dual-stack one whose halves are both allocatable, free, and clear
    /// of the host's networks.
    #[test]
    fn dual_stack_choice_is_free_and_clear(
        taken in proptest::collection::vec((1u8..=20, 0u16..256, 0u8..3), 0..30),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let t0 = Instant::now();
        let net = NetworkConfig::parse(DUAL).unwrap();
        let mut cfg = config(DUAL);
        cfg.protected = vec!["10.5.4.0/23".parse().unwrap()];
        cfg.protected_v6 = vec![net6("fd00:5:0:80::/57"), net6("fd00:5:0:3::/64")];
        let others: Vec<SubnetLease> = taken
            .iter()
            .enumerate()
            .map(|(n, &(v4, v6, form))| {
                // Built, not parsed: `fd00:5:0:0::` is written `fd00:5::`.
                let v6 = net6(&format!("fd00:5:0:{v6:x}::/64"));
                let v4 = format!("10.5.{v4}.0/24").parse().unwrap();
                let key = match form {
                    0 => SubnetKey::dual(v4, v6),
                    1 => SubnetKey::v4(v4),
                    _ => SubnetKey::v6_only(v6),
                };
                let mut l = lease("10.5.1.0-24", &format!("10.0.2.{n}"), Some(&format!("fd00::2:{n}")), 1);
                l.key = key;
                l
            })
            .collect();
        let mut c = core(DUAL, cfg.clone(), seed);
        c.start(t0);
        proptest::prop_assert_eq!(action(&mut c), Action::List);
        c.handle_input(t0, Input::Listed(Ok(listing(others.clone(), 10))));
        let Some(Action::Create { key, .. }) = c.poll_action() else {
            // Only when a family is exhausted.
            proptest::prop_assert!(c.take_error().is_some());
            return Ok(());
        };
        let v6 = key.ipv6.unwrap();
        proptest::prop_assert!(net.subnet_index(key.ipv4).is_some());
        proptest::prop_assert!(net.ipv6_subnet_index(v6).is_some());
        for l in &others {
            proptest::prop_assert!(l.key.ipv4 != key.ipv4, "{} taken by {}", key, l.key);
            proptest::prop_assert!(l.key.ipv6 != Some(v6), "{} taken by {}", key, l.key);
        }
        proptest::prop_assert!(!cfg.protected[0].contains(key.ipv4.network()));
        for p in &cfg.protected_v6 {
            proptest::prop_assert!(!p.contains(v6.network()), "{v6} in {p}");
        }
    }
}
