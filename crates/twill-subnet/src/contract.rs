//! The [`Registry`] contract as executable checks, for implementers.
//!
//! Each check is an async function taking a [`ContractFixture`] around a
//! *fresh* registry (an empty key space), exercising one part of the
//! contract and returning a [`ContractViolation`] that says what differed.
//! [`MemoryRegistry`] runs them in twill-subnet's
//! tests and `EtcdRegistry` on a real etcd in twill-etcd's, so the two
//! implementations cannot drift apart; a third registry runs the same.
//! [`registry_contract_tests!`](crate::registry_contract_tests!) writes one
//! test per check:
//!
//! ```
//! use twill_subnet::contract::MemoryFixture;
//!
//! async fn fresh() -> Option<MemoryFixture> {
//!     Some(MemoryFixture::default())
//! }
//!
//! twill_subnet::registry_contract_tests!(fresh, tokio::test(start_paused = true));
//! # fn main() {}
//! ```
//!
//! Waits have deadlines ([`DEADLINE`]) and poll nothing: a check waits for
//! the watch event that proves what it expects. Checks read no clock beyond
//! tokio's, so under a paused clock TTL expiry takes no real time.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use twill_model::{Ipv4Network, LeaseAttrs, LeaseKind, SubnetKey};

use crate::{LeaseWatch, MemoryRegistry, Registry, RegistryError, RegistryEvent};

/// How long a check waits for an event before it reports a violation:
/// generous, it only catches "never".
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The TTL of the leases the expiry check creates (etcd raises grants below
/// its minimum, about 2 s on a single member, which the deadline allows).
pub const SHORT_TTL: Duration = Duration::from_secs(1);

/// A TTL long enough not to expire during a check.
const LONG_TTL: Option<Duration> = Some(Duration::from_secs(600));

/// The error of a fixture's own writes.
pub type FixtureError = Box<dyn std::error::Error + Send + Sync>;

/// A registry under test, and what the checks need to do to its store
/// besides the [`Registry`] methods: play an operator or a misbehaving host.
#[async_trait]
pub trait ContractFixture: Send + Sync {
    /// The registry under test.
    fn registry(&self) -> &dyn Registry;

    /// Writes `<prefix>/config` as given, without validating it.
    async fn put_config(&self, json: &str) -> Result<(), FixtureError>;

    /// Writes `value` at `<prefix>/subnets/<name>` without a TTL, without
    /// validating it (a reservation, or garbage).
    async fn put_raw(&self, name: &str, value: &[u8]) -> Result<(), FixtureError>;

    /// Replaces the value of the existing key `<prefix>/subnets/<name>`
    /// keeping its store-side TTL, as `etcdctl put --ignore-lease` does.
    async fn overwrite_in_place(&self, name: &str, value: &[u8]) -> Result<(), FixtureError>;

    /// Discards the store's history up to its current revision, as etcd's
    /// compaction.
    async fn compact(&self) -> Result<(), FixtureError>;
}

/// A [`MemoryRegistry`] as a [`ContractFixture`].
#[derive(Debug, Default)]
pub struct MemoryFixture {
    /// The registry under test.
    pub registry: MemoryRegistry,
}

#[async_trait]
impl ContractFixture for MemoryFixture {
    fn registry(&self) -> &dyn Registry {
        &self.registry
    }

    async fn put_config(&self, json: &str) -> Result<(), FixtureError> {
        self.registry.set_config(json);
        Ok(())
    }

    async fn put_raw(&self, name: &str, value: &[u8]) -> Result<(), FixtureError> {
        self.registry.put_raw(name, value);
        Ok(())
    }

    async fn overwrite_in_place(&self, name: &str, value: &[u8]) -> Result<(), FixtureError> {
        if self.registry.overwrite_in_place(name, value) {
            Ok(())
        } else {
            Err(format!("no key {name} to overwrite").into())
        }
    }

    async fn compact(&self) -> Result<(), FixtureError> {
        self.registry.compact(self.registry.revision() + 1);
        Ok(())
    }
}

/// What a check found that the contract does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractViolation {
    /// The check (its function's name).
    pub check: &'static str,
    /// What was expected and what happened.
    pub detail: String,
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registry contract, {}: {}", self.check, self.detail)
    }
}

impl std::error::Error for ContractViolation {}

/// The result of a check.
pub type CheckResult = Result<(), ContractViolation>;

/// Builds a violation of `$check` when `$cond` is false.
macro_rules! ensure {
    ($check:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(ContractViolation { check: $check, detail: format!($($fmt)+) });
        }
    };
}

/// Unwraps a result, or a violation naming what was being done.
fn ok<T, E: fmt::Display>(
    check: &'static str,
    what: &str,
    r: Result<T, E>,
) -> Result<T, ContractViolation> {
    r.map_err(|e| ContractViolation {
        check,
        detail: format!("{what}: {e}"),
    })
}

/// `10.5.<n>.0/24`.
fn key(n: u8) -> SubnetKey {
    let ip = Ipv4Addr::new(10, 5, n, 0);
    SubnetKey::v4(Ipv4Network::new(ip, 24).unwrap_or_else(|_| Ipv4Network::from(ip)))
}

/// A VXLAN lease's attributes, as flanneld writes them.
fn attrs(ip: [u8; 4]) -> LeaseAttrs {
    let ip = Ipv4Addr::from(ip);
    LeaseAttrs::from_json(&format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VtepMAC":"6e:af:8f:41:72:26"}}}}"#
    ))
    .unwrap_or_else(|_| LeaseAttrs::new(ip, "vxlan"))
}

/// `attrs` encoded otherwise than [`LeaseAttrs::to_json`] does (keys in
/// another order, spaces): the same attributes to a reader.
fn reencoded(a: &LeaseAttrs) -> Vec<u8> {
    format!(
        r#"{{ "BackendData": {{ "VtepMAC": "6e:af:8f:41:72:26" }}, "BackendType": "{}", "PublicIP": "{}" }}"#,
        a.backend_type, a.public_ip
    )
    .into_bytes()
}

/// The next watch event within [`DEADLINE`].
async fn next_event(
    check: &'static str,
    watch: &mut LeaseWatch,
    waiting_for: &str,
) -> Result<RegistryEvent, ContractViolation> {
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => Err(ContractViolation {
            check,
            detail: format!("the watch ended while waiting for {waiting_for}"),
        }),
        Err(_) => Err(ContractViolation {
            check,
            detail: format!("no watch event within {DEADLINE:?} while waiting for {waiting_for}"),
        }),
    }
}

/// `get_config`: [`RegistryError::ConfigNotFound`] naming `<prefix>/config`
/// while there is none, [`RegistryError::InvalidConfig`] for an invalid one
/// the parsed config for a valid one (dual stack included).
pub async fn config_get(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "config_get";
    let reg = fx.registry();
    match reg.get_config().await {
        Err(RegistryError::ConfigNotFound { key }) => {
            ensure!(C, key.ends_with("/config"), "ConfigNotFound names {key:?}");
        }
        other => ensure!(
            C,
            false,
            "no config: expected ConfigNotFound, got {other:?}"
        ),
    }
    ok(
        C,
        "writing the config",
        fx.put_config(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#)
            .await,
    )?;
    let got = reg.get_config().await;
    ensure!(
        C,
        matches!(got, Err(RegistryError::InvalidConfig { .. })),
        "SubnetLen 31: expected InvalidConfig, got {got:?}"
    );
    ok(C, "writing the config", fx.put_config("{not json").await)?;
    let got = reg.get_config().await;
    ensure!(
        C,
        matches!(got, Err(RegistryError::InvalidConfig { .. })),
        "not JSON: expected InvalidConfig, got {got:?}"
    );
    // Dual stack (issue 15): read with its IPv6 side.
    ok(
        C,
        "writing the config",
        fx.put_config(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#)
            .await,
    )?;
    let got = ok(C, "a dual-stack config", reg.get_config().await)?;
    ensure!(
        C,
        got.enable_ipv4
            && got.enable_ipv6
            && got.ipv6_network.map(|n| n.to_string()).as_deref() == Some("fd00::/48"),
        "dual stack: read back as {got:?}"
    );
    ok(
        C,
        "writing the config",
        fx.put_config(r#"{"Network":"10.5.0.0/16"}"#).await,
    )?;
    let config = ok(C, "a valid config", reg.get_config().await)?;
    ensure!(
        C,
        config.subnet_len == 24,
        "default SubnetLen: {}",
        config.subnet_len
    );
    Ok(())
}

/// `create_lease`: writes the lease only if the key is absent, as an
/// expiring lease with the granted TTL, or a reservation with `ttl: None`;
/// the listing shows it as written, at the create's revision.
pub async fn create_if_absent(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "create_if_absent";
    let reg = fx.registry();
    let (k, a) = (key(1), attrs([192, 0, 2, 1]));
    let held = ok(C, "create", reg.create_lease(&k, &a, LONG_TTL).await)?;
    ensure!(
        C,
        held.lease.key == k && held.lease.attrs == a,
        "held {held:?}"
    );
    ensure!(
        C,
        held.lease.kind == LeaseKind::Expiring,
        "kind {:?}",
        held.lease.kind
    );
    ensure!(
        C,
        held.ttl.is_some_and(|t| t > Duration::ZERO),
        "ttl {:?}",
        held.ttl
    );
    ensure!(
        C,
        held.lease.revision > 0,
        "revision {}",
        held.lease.revision
    );
    let (r, ra) = (key(2), attrs([192, 0, 2, 2]));
    let reserved = ok(
        C,
        "create a reservation",
        reg.create_lease(&r, &ra, None).await,
    )?;
    ensure!(
        C,
        reserved.lease.kind == LeaseKind::Reservation && reserved.ttl.is_none(),
        "reservation {reserved:?}"
    );
    ensure!(
        C,
        reserved.lease.revision > held.lease.revision,
        "revisions grow: {} then {}",
        held.lease.revision,
        reserved.lease.revision
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    ensure!(C, listing.leases.len() == 2, "listing {listing:?}");
    let listed = listing.leases.iter().find(|l| l.key == k);
    ensure!(
        C,
        listed == Some(&held.lease),
        "listed {listed:?}, created {:?}",
        held.lease
    );
    let listed = listing.leases.iter().find(|l| l.key == r);
    ensure!(
        C,
        listed == Some(&reserved.lease),
        "listed {listed:?}, reserved {:?}",
        reserved.lease
    );
    Ok(())
}

/// A second `create_lease` of an existing key is
/// [`RegistryError::Conflict`] and changes nothing, whoever asks, for a
/// lease as for a reservation.
pub async fn duplicate_create(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "duplicate_create";
    let reg = fx.registry();
    let k = key(1);
    let first = ok(
        C,
        "create",
        reg.create_lease(&k, &attrs([192, 0, 2, 1]), LONG_TTL).await,
    )?;
    for (who, ttl) in [
        ([192, 0, 2, 1], LONG_TTL),
        ([192, 0, 2, 9], LONG_TTL),
        ([192, 0, 2, 9], None),
    ] {
        let again = reg.create_lease(&k, &attrs(who), ttl).await;
        ensure!(
            C,
            matches!(again, Err(RegistryError::Conflict { key }) if key == k),
            "create again by {who:?}: {again:?}"
        );
    }
    ok(
        C,
        "writing a reservation",
        fx.put_raw("10.5.3.0-24", &reencoded(&attrs([192, 0, 2, 3])))
            .await,
    )?;
    let again = reg
        .create_lease(&key(3), &attrs([192, 0, 2, 3]), LONG_TTL)
        .await;
    ensure!(
        C,
        matches!(again, Err(RegistryError::Conflict { .. })),
        "create over a reservation: {again:?}"
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    let listed = listing.leases.iter().find(|l| l.key == k);
    ensure!(
        C,
        listed == Some(&first.lease),
        "after the conflicts: {listed:?}"
    );
    Ok(())
}

/// `renew_lease` keeps a live lease (same value, same revision); re-creates
/// one the store lost; refuses with [`RegistryError::Conflict`] when the key
/// holds other attributes, and [`RegistryError::LeaseNotFound`] for a
/// reservation that is gone.
pub async fn renew(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "renew";
    let reg = fx.registry();
    let (k, a) = (key(1), attrs([192, 0, 2, 1]));
    let held = ok(C, "create", reg.create_lease(&k, &a, LONG_TTL).await)?;
    let renewed = ok(C, "renew", reg.renew_lease(&held).await)?;
    ensure!(
        C,
        renewed.lease == held.lease,
        "renewing changed the lease: {:?} -> {:?}",
        held.lease,
        renewed.lease
    );
    ensure!(
        C,
        renewed.ttl.is_some_and(|t| t > Duration::ZERO),
        "ttl {:?}",
        renewed.ttl
    );
    // Lost by the store: re-created, a new write.
    ok(C, "delete", reg.delete_lease(&k).await)?;
    let recreated = ok(C, "renew a lost lease", reg.renew_lease(&renewed).await)?;
    ensure!(
        C,
        recreated.lease.revision > renewed.lease.revision && recreated.lease.attrs == a,
        "re-created {recreated:?}"
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    ensure!(
        C,
        listing
            .leases
            .iter()
            .any(|l| l.key == k && l.attrs == a && l.kind == LeaseKind::Expiring),
        "after re-creating: {listing:?}"
    );
    // Taken by someone else.
    ok(C, "delete", reg.delete_lease(&k).await)?;
    ok(
        C,
        "create by another host",
        reg.create_lease(&k, &attrs([192, 0, 2, 9]), LONG_TTL).await,
    )?;
    let taken = reg.renew_lease(&recreated).await;
    ensure!(
        C,
        matches!(taken, Err(RegistryError::Conflict { .. })),
        "renew a key another host holds: {taken:?}"
    );
    // A reservation that is gone.
    let (r, ra) = (key(2), attrs([192, 0, 2, 2]));
    let reserved = ok(C, "reserve", reg.create_lease(&r, &ra, None).await)?;
    let kept = ok(C, "renew a reservation", reg.renew_lease(&reserved).await)?;
    ensure!(
        C,
        kept.ttl.is_none() && kept.lease.kind == LeaseKind::Reservation,
        "renewed reservation {kept:?}"
    );
    ok(C, "delete", reg.delete_lease(&r).await)?;
    let gone = reg.renew_lease(&reserved).await;
    ensure!(
        C,
        matches!(gone, Err(RegistryError::LeaseNotFound { .. })),
        "renew a deleted reservation: {gone:?}"
    );
    Ok(())
}

/// `update_lease` replaces the attributes of a key that holds ours — by
/// the parsed-attributes rule, so a value re-encoded by someone else is still
/// ours — keeping kind and TTL; [`RegistryError::Conflict`] when the key holds
/// other attributes, [`RegistryError::LeaseNotFound`] when it is gone.
pub async fn update(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "update";
    let reg = fx.registry();
    let (k, a) = (key(1), attrs([192, 0, 2, 1]));
    let held = ok(C, "create", reg.create_lease(&k, &a, LONG_TTL).await)?;
    // Same attributes, other bytes: still ours.
    ok(
        C,
        "re-encoding in place",
        fx.overwrite_in_place(&k.to_string(), &reencoded(&a)).await,
    )?;
    let b = attrs([192, 0, 2, 2]);
    let updated = ok(
        C,
        "update a re-encoded value",
        reg.update_lease(&held, &b).await,
    )?;
    ensure!(
        C,
        updated.lease.attrs == b && updated.lease.key == k,
        "updated {updated:?}"
    );
    ensure!(
        C,
        updated.lease.kind == LeaseKind::Expiring && updated.ttl.is_some(),
        "kind and TTL kept: {updated:?}"
    );
    ensure!(
        C,
        updated.lease.revision > held.lease.revision,
        "a new revision: {} then {}",
        held.lease.revision,
        updated.lease.revision
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    let listed = listing.leases.iter().find(|l| l.key == k);
    ensure!(
        C,
        listed == Some(&updated.lease),
        "listed {listed:?}, updated {:?}",
        updated.lease
    );
    // The old attributes are not ours any more.
    let stale = reg.update_lease(&held, &attrs([192, 0, 2, 3])).await;
    ensure!(
        C,
        matches!(stale, Err(RegistryError::Conflict { .. })),
        "update from stale attributes: {stale:?}"
    );
    // Garbage is nobody's.
    ok(
        C,
        "garbage in place",
        fx.overwrite_in_place(&k.to_string(), b"{").await,
    )?;
    let garbage = reg.update_lease(&updated, &a).await;
    ensure!(
        C,
        matches!(garbage, Err(RegistryError::Conflict { .. })),
        "update over garbage: {garbage:?}"
    );
    ok(C, "delete", reg.delete_lease(&k).await)?;
    let gone = reg.update_lease(&updated, &a).await;
    ensure!(
        C,
        matches!(gone, Err(RegistryError::LeaseNotFound { .. })),
        "update a deleted lease: {gone:?}"
    );
    Ok(())
}

/// `restore_lease` puts our value back on a key overwritten in place (still
/// on the store-side TTL we hold) if it is unchanged since the given
/// revision; [`RegistryError::Conflict`] for a stale revision or a key
/// re-created under another TTL.
pub async fn restore(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "restore";
    let reg = fx.registry();
    let (k, a) = (key(1), attrs([192, 0, 2, 1]));
    let held = ok(C, "create", reg.create_lease(&k, &a, LONG_TTL).await)?;
    let other = attrs([192, 0, 2, 9]);
    let mut w = ok(C, "watch", reg.watch_leases(held.lease.revision + 1).await)?;
    ok(
        C,
        "overwrite in place",
        fx.overwrite_in_place(&k.to_string(), &reencoded(&other))
            .await,
    )?;
    let revision = match next_event(C, &mut w, "the overwrite").await? {
        RegistryEvent::Upserted(l) if l.key == k && l.attrs == other => l.revision,
        ev => {
            return Err(ContractViolation {
                check: C,
                detail: format!("expected the overwrite, got {ev:?}"),
            })
        }
    };
    let stale = reg.restore_lease(&held, revision - 1).await;
    ensure!(
        C,
        matches!(stale, Err(RegistryError::Conflict { .. })),
        "restore from a stale revision: {stale:?}"
    );
    let restored = ok(C, "restore", reg.restore_lease(&held, revision).await)?;
    ensure!(
        C,
        restored.lease.attrs == a && restored.lease.revision > revision,
        "restored {restored:?}"
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    let listed = listing.leases.iter().find(|l| l.key == k);
    ensure!(
        C,
        listed.is_some_and(|l| l.attrs == a && l.kind == LeaseKind::Expiring),
        "after restoring: {listed:?}"
    );
    ok(
        C,
        "renew the restored lease",
        reg.renew_lease(&restored).await,
    )?;
    // Deleted and written again without our TTL: someone else's claim.
    ok(C, "delete", reg.delete_lease(&k).await)?;
    ok(
        C,
        "write without a TTL",
        fx.put_raw(&k.to_string(), &reencoded(&other)).await,
    )?;
    let listing = ok(C, "list", reg.list_leases().await)?;
    let rev = listing
        .leases
        .iter()
        .find(|l| l.key == k)
        .map_or(0, |l| l.revision);
    let theirs = reg.restore_lease(&restored, rev).await;
    ensure!(
        C,
        matches!(theirs, Err(RegistryError::Conflict { .. })),
        "restore a key re-created without our TTL: {theirs:?}"
    );
    Ok(())
}

/// `delete_lease` removes the key (a watch sees it go);
/// [`RegistryError::LeaseNotFound`] when there is nothing to delete.
pub async fn delete(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "delete";
    let reg = fx.registry();
    let k = key(1);
    let held = ok(
        C,
        "create",
        reg.create_lease(&k, &attrs([192, 0, 2, 1]), LONG_TTL).await,
    )?;
    ok(C, "delete", reg.delete_lease(&k).await)?;
    let again = reg.delete_lease(&k).await;
    ensure!(
        C,
        matches!(again, Err(RegistryError::LeaseNotFound { key }) if key == k),
        "delete again: {again:?}"
    );
    let never = reg.delete_lease(&key(9)).await;
    ensure!(
        C,
        matches!(never, Err(RegistryError::LeaseNotFound { .. })),
        "delete a key never written: {never:?}"
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    ensure!(C, listing.leases.is_empty(), "after deleting: {listing:?}");
    let mut w = ok(C, "watch", reg.watch_leases(held.lease.revision + 1).await)?;
    let ev = next_event(C, &mut w, "the deletion").await?;
    ensure!(
        C,
        matches!(ev, RegistryEvent::Removed { key, revision } if key == k && revision > held.lease.revision),
        "expected Removed, got {ev:?}"
    );
    Ok(())
}

/// `list_leases` returns leases, reservations and unparsable values
/// (as [`crate::MalformedLease`]) with the store revision of the snapshot:
/// at least every listed lease's, and a watch from `revision + 1` sees only
/// later writes.
pub async fn list_with_revision(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "list_with_revision";
    let reg = fx.registry();
    let empty = ok(C, "list an empty store", reg.list_leases().await)?;
    ensure!(
        C,
        empty.leases.is_empty() && empty.malformed.is_empty(),
        "fresh store: {empty:?}"
    );
    let mut last = 0;
    for i in 1..=3u8 {
        let held = ok(
            C,
            "create",
            reg.create_lease(&key(i), &attrs([192, 0, 2, i]), LONG_TTL)
                .await,
        )?;
        last = held.lease.revision;
    }
    ok(
        C,
        "reserve",
        fx.put_raw("10.5.4.0-24", &reencoded(&attrs([192, 0, 2, 4])))
            .await,
    )?;
    ok(C, "garbage", fx.put_raw("10.5.5.0-24", b"{").await)?;
    ok(
        C,
        "garbage key",
        fx.put_raw("not-a-key", &reencoded(&attrs([192, 0, 2, 6])))
            .await,
    )?;
    let listing = ok(C, "list", reg.list_leases().await)?;
    ensure!(C, listing.leases.len() == 4, "4 leases: {listing:?}");
    ensure!(
        C,
        listing.leases.iter().filter(|l| l.is_reservation()).count() == 1,
        "1 reservation: {listing:?}"
    );
    ensure!(C, listing.malformed.len() == 2, "2 malformed: {listing:?}");
    ensure!(
        C,
        listing
            .malformed
            .iter()
            .all(|m| m.key.contains("/subnets/")),
        "malformed keys are full keys: {:?}",
        listing.malformed
    );
    ensure!(
        C,
        listing.revision > last,
        "revision {} after the last write at {last}",
        listing.revision
    );
    ensure!(
        C,
        listing
            .leases
            .iter()
            .all(|l| l.revision <= listing.revision),
        "{listing:?}"
    );
    let mut w = ok(C, "watch", reg.watch_leases(listing.revision + 1).await)?;
    let k = key(7);
    ok(
        C,
        "create after listing",
        reg.create_lease(&k, &attrs([192, 0, 2, 7]), LONG_TTL).await,
    )?;
    let ev = next_event(C, &mut w, "the write after the listing").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if l.key == k),
        "the first event after the listing is the next write, got {ev:?}"
    );
    Ok(())
}

/// `watch_leases` from a revision delivers every change from that revision
/// on, in order, each once: created, changed, deleted, and resumes from any
/// revision without repeating what came before it.
pub async fn watch_from_revision(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "watch_from_revision";
    let reg = fx.registry();
    let start = ok(C, "list", reg.list_leases().await)?.revision;
    let (k, a, b) = (key(1), attrs([192, 0, 2, 1]), attrs([192, 0, 2, 2]));
    let created = ok(C, "create", reg.create_lease(&k, &a, LONG_TTL).await)?;
    let updated = ok(C, "update", reg.update_lease(&created, &b).await)?;
    ok(C, "delete", reg.delete_lease(&k).await)?;
    let mut w = ok(C, "watch", reg.watch_leases(start + 1).await)?;
    let ev = next_event(C, &mut w, "the create").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if *l == created.lease),
        "1st: expected {:?}, got {ev:?}",
        created.lease
    );
    let ev = next_event(C, &mut w, "the update").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if *l == updated.lease),
        "2nd: expected {:?}, got {ev:?}",
        updated.lease
    );
    let ev = next_event(C, &mut w, "the delete").await?;
    let deleted_at = match ev {
        RegistryEvent::Removed { key, revision }
            if key == k && revision > updated.lease.revision =>
        {
            revision
        }
        ev => {
            return Err(ContractViolation {
                check: C,
                detail: format!("3rd: expected Removed of {k}, got {ev:?}"),
            })
        }
    };
    // Live events after the replay.
    let live = ok(C, "create again", reg.create_lease(&k, &a, LONG_TTL).await)?;
    let ev = next_event(C, &mut w, "the live create").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if *l == live.lease),
        "live: expected {:?}, got {ev:?}",
        live.lease
    );
    // Resuming after the update: the delete and the create, nothing before.
    let mut resumed = ok(
        C,
        "watch",
        reg.watch_leases(updated.lease.revision + 1).await,
    )?;
    let ev = next_event(C, &mut resumed, "the delete").await?;
    ensure!(
        C,
        matches!(ev, RegistryEvent::Removed { revision, .. } if revision == deleted_at),
        "resumed 1st: {ev:?}"
    );
    let ev = next_event(C, &mut resumed, "the second create").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if *l == live.lease),
        "resumed 2nd: {ev:?}"
    );
    Ok(())
}

/// A watch from a compacted revision starts with one
/// [`RegistryEvent::Resync`] holding the full current listing, then goes on
/// with the changes after it.
pub async fn compaction_resync(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "compaction_resync";
    let reg = fx.registry();
    let (a, b) = (key(1), key(2));
    let first = ok(
        C,
        "create",
        reg.create_lease(&a, &attrs([192, 0, 2, 1]), LONG_TTL).await,
    )?;
    let kept = ok(
        C,
        "create",
        reg.create_lease(&b, &attrs([192, 0, 2, 2]), LONG_TTL).await,
    )?;
    ok(C, "delete", reg.delete_lease(&a).await)?;
    ok(C, "compact", fx.compact().await)?;
    let mut w = ok(C, "watch", reg.watch_leases(first.lease.revision).await)?;
    let listing = match next_event(C, &mut w, "the resync").await? {
        RegistryEvent::Resync(l) => l,
        ev => {
            return Err(ContractViolation {
                check: C,
                detail: format!("expected Resync, got {ev:?}"),
            })
        }
    };
    ensure!(
        C,
        listing.leases.len() == 1 && listing.leases[0] == kept.lease,
        "the resync lists what is there: {listing:?}"
    );
    ensure!(
        C,
        listing.revision > kept.lease.revision,
        "resync revision {}",
        listing.revision
    );
    let c = key(3);
    ok(
        C,
        "create after the resync",
        reg.create_lease(&c, &attrs([192, 0, 2, 3]), LONG_TTL).await,
    )?;
    let ev = next_event(C, &mut w, "the write after the resync").await?;
    ensure!(
        C,
        matches!(&ev, RegistryEvent::Upserted(l) if l.key == c),
        "after the resync: {ev:?}"
    );
    Ok(())
}

/// A lease nobody renews expires after its TTL: a watch sees it removed
/// and the listing no longer has it; a reservation stays.
pub async fn ttl_expiry(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "ttl_expiry";
    let reg = fx.registry();
    let (k, r) = (key(1), key(2));
    let reserved = ok(
        C,
        "reserve",
        reg.create_lease(&r, &attrs([192, 0, 2, 2]), None).await,
    )?;
    let held = ok(
        C,
        "create",
        reg.create_lease(&k, &attrs([192, 0, 2, 1]), Some(SHORT_TTL))
            .await,
    )?;
    let mut w = ok(C, "watch", reg.watch_leases(held.lease.revision + 1).await)?;
    let ev = next_event(C, &mut w, "the expiry").await?;
    ensure!(
        C,
        matches!(ev, RegistryEvent::Removed { key, .. } if key == k),
        "expected the expiry of {k}, got {ev:?}"
    );
    let listing = ok(C, "list", reg.list_leases().await)?;
    ensure!(
        C,
        listing.leases.len() == 1 && listing.leases[0] == reserved.lease,
        "after the expiry: {listing:?}"
    );
    Ok(())
}

/// Dual-stack and IPv6-only keys (`10.5.3.0-24&fd00:5:0:3::-64`,
/// `0.0.0.0-0&fd00:5:0:4::-64`) are stored, listed and watched under
/// exactly the key flannel writes, with `PublicIPv6` and `BackendV6Data`
/// read back as written; create-if-absent holds for the combined key (a
/// second create of it conflicts), and it is the whole key: another key
/// sharing one half is another lease, which the lease core, not the
/// registry, keeps from being handed out.
pub async fn ipv6_keys(fx: &dyn ContractFixture) -> CheckResult {
    const C: &str = "ipv6_keys";
    let reg = fx.registry();
    let parse = |s: &str| {
        s.parse::<SubnetKey>().map_err(|e| ContractViolation {
            check: C,
            detail: format!("{s}: {e}"),
        })
    };
    let dual = parse("10.5.3.0-24&fd00:5:0:3::-64")?;
    let v6_only = parse("0.0.0.0-0&fd00:5:0:4::-64")?;
    let same_v4 = parse("10.5.3.0-24&fd00:5:0:5::-64")?;
    let attrs6 = |json: &str| {
        LeaseAttrs::from_json(json).map_err(|e| ContractViolation {
            check: C,
            detail: format!("{json}: {e}"),
        })
    };
    let da = attrs6(
        r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VtepMAC":"6e:af:8f:41:72:26"},"BackendV6Data":{"VtepMAC":"6e:af:8f:41:72:27"}}"#,
    )?;
    let va = attrs6(
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::4","BackendType":"vxlan","BackendV6Data":{"VtepMAC":"6e:af:8f:41:72:28"}}"#,
    )?;
    let start = ok(C, "list", reg.list_leases().await)?.revision;
    let mut watch = ok(C, "watch", reg.watch_leases(start + 1).await)?;
    let held = ok(
        C,
        "create dual",
        reg.create_lease(&dual, &da, LONG_TTL).await,
    )?;
    ensure!(
        C,
        held.lease.key == dual && held.lease.attrs == da,
        "held {held:?}"
    );
    ok(
        C,
        "create IPv6-only",
        reg.create_lease(&v6_only, &va, LONG_TTL).await,
    )?;
    let again = reg.create_lease(&dual, &va, LONG_TTL).await;
    ensure!(
        C,
        matches!(again, Err(RegistryError::Conflict { key }) if key == dual),
        "second create of {dual}: {again:?}"
    );
    ok(
        C,
        "create one sharing the IPv4 half",
        reg.create_lease(&same_v4, &va, LONG_TTL).await,
    )?;
    let listing = ok(C, "list", reg.list_leases().await)?;
    for (k, a) in [(dual, &da), (v6_only, &va), (same_v4, &va)] {
        let listed = listing.leases.iter().find(|l| l.key == k);
        ensure!(
            C,
            listed.is_some_and(|l| l.attrs == *a && l.key.to_string() == k.to_string()),
            "{k}: listed {listed:?}"
        );
    }
    ensure!(
        C,
        listing.malformed.is_empty() && listing.leases.len() == 3,
        "listing {listing:?}"
    );
    for want in [dual, v6_only, same_v4] {
        match next_event(C, &mut watch, &format!("the creation of {want}")).await? {
            RegistryEvent::Upserted(l) if l.key == want => {}
            other => {
                return Err(ContractViolation {
                    check: C,
                    detail: format!("expected {want} upserted, got {other:?}"),
                })
            }
        }
    }
    Ok(())
}

/// Every check, by name, for [`crate::registry_contract_tests!`] and for a
/// harness of one's own.
pub const CHECKS: &[&str] = &[
    "config_get",
    "create_if_absent",
    "duplicate_create",
    "renew",
    "update",
    "restore",
    "delete",
    "list_with_revision",
    "watch_from_revision",
    "compaction_resync",
    "ttl_expiry",
    "ipv6_keys",
];

/// Writes one test per contract check. The first argument is an async
/// function returning a fresh fixture (one implementing
/// [`ContractFixture`]), or `None` to skip the test (its store is not
/// available; the function says why), the second the test attribute without `#[...]`
/// (`tokio::test`, `tokio::test(start_paused = true)`). See the
/// [module docs](crate::contract).
#[macro_export]
macro_rules! registry_contract_tests {
    ($fresh:path, $($test:tt)+) => {
        $crate::registry_contract_tests!(@each $fresh, [$($test)+],
            config_get create_if_absent duplicate_create renew update restore delete
            list_with_revision watch_from_revision compaction_resync ttl_expiry ipv6_keys);
    };
    (@each $fresh:path, $test:tt, $($check:ident)+) => {
        $( $crate::registry_contract_tests!(@one $fresh, $test, $check); )+
    };
    (@one $fresh:path, [$($test:tt)+], $check:ident) => {
        #[$($test)+]
        async fn $check() {
            let Some(fixture) = $fresh().await else {
                return;
            };
            if let Err(violation) = $crate::contract::$check(&fixture).await {
                panic!("{violation}");
            }
        }
    };
}
