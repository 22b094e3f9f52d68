//! Choosing a free IPv6 subnet in `[IPv6SubnetMin, IPv6SubnetMax]`.
//!
//! The same index as [`crate::SubnetAllocator`]'s (a sparse segment tree of
//! taken-counts over allocation indices, a uniformly random k-th free slot),
//! over `u128` indices: an IPv6 network holds up to 2^119 subnets twill
//! accepts, so the tree's depth is at most 122 and its memory stays
//! proportional to the number of taken subnets. Every step is checked
//! arithmetic: nothing here panics or wraps, whatever the config's public
//! fields hold.

use rand::Rng;
use twill_model::{Ipv6Network, NetworkConfig};

use crate::free_index::FreeIndex;
use crate::SubnetError;

/// Free-IPv6-subnet bookkeeping for one [`NetworkConfig`]: which of its
/// `ipv6_subnet_count()` allocatable subnets are taken, and a uniformly
/// random choice among the free ones in O(log N). A config without
/// `EnableIPv6` has none.
///
/// ```
/// use rand::{rngs::SmallRng, SeedableRng};
/// use twill_model::NetworkConfig;
/// use twill_subnet::{Ipv6SubnetAllocator, SubnetError};
///
/// let cfg = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,
///     "IPv6Network":"fd00::/60"}"#).unwrap();
/// let mut alloc = Ipv6SubnetAllocator::new(&cfg);
/// assert_eq!(alloc.total(), 15); // fd00:0:0:1::/64 ..= fd00:0:0:f::/64
/// alloc.mark_taken("fd00:0:0:1::/64".parse().unwrap());
/// assert_eq!(alloc.first_free().unwrap().to_string(), "fd00:0:0:2::/64");
/// let mut rng = SmallRng::seed_from_u64(7);
/// while alloc.allocate(&mut rng).is_ok() {}
/// assert!(matches!(alloc.allocate(&mut rng), Err(SubnetError::Ipv6Exhausted { total: 15, taken: 15 })));
/// ```
#[derive(Debug, Clone)]
pub struct Ipv6SubnetAllocator {
    config: NetworkConfig,
    /// Allocation indices (`ipv6_subnet_index`) taken.
    index: FreeIndex<u128>,
    /// Networks given to [`Ipv6SubnetAllocator::exclude`].
    excluded: Vec<Ipv6Network>,
    /// Their allocation indices, inclusive ranges: never marked or released.
    excluded_ranges: Vec<(u128, u128)>,
}

impl Ipv6SubnetAllocator {
    /// An allocator with every IPv6 subnet of `config` free.
    #[must_use]
    pub fn new(config: &NetworkConfig) -> Self {
        Ipv6SubnetAllocator {
            config: config.clone(),
            index: FreeIndex::new(config.ipv6_subnet_count()),
            excluded: Vec::new(),
            excluded_ranges: Vec::new(),
        }
    }

    /// An allocator with the given subnets taken (those outside the range
    /// are ignored).
    #[must_use]
    pub fn with_taken(
        config: &NetworkConfig,
        taken: impl IntoIterator<Item = Ipv6Network>,
    ) -> Self {
        let mut a = Self::new(config);
        for net in taken {
            a.mark_taken(net);
        }
        a
    }

    /// The config this allocator splits.
    #[must_use]
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// How many subnets lie in `[IPv6SubnetMin, IPv6SubnetMax]`.
    #[must_use]
    pub fn total(&self) -> u128 {
        self.index.count()
    }

    /// How many of them are taken.
    #[must_use]
    pub fn taken(&self) -> u128 {
        self.index.taken()
    }

    /// How many of them are free.
    #[must_use]
    pub fn free(&self) -> u128 {
        self.index.free()
    }

    /// Whether `subnet` is allocatable (in range, right length, aligned)
    /// and not taken.
    #[must_use]
    pub fn is_free(&self, subnet: Ipv6Network) -> bool {
        self.config
            .ipv6_subnet_index(subnet)
            .is_some_and(|i| i < self.total() && !self.index.is_taken(i))
    }

    /// Marks `subnet` as taken. Returns whether anything changed: `false`
    /// if it was already taken or is not allocatable (ignored).
    pub fn mark_taken(&mut self, subnet: Ipv6Network) -> bool {
        match self.config.ipv6_subnet_index(subnet) {
            Some(i) if !self.is_excluded_index(i) => self.index.set(i, true),
            _ => false,
        }
    }

    /// Marks `subnet` as free again. Returns whether anything changed (an
    /// excluded subnet stays taken).
    pub fn release(&mut self, subnet: Ipv6Network) -> bool {
        match self.config.ipv6_subnet_index(subnet) {
            Some(i) if !self.is_excluded_index(i) => self.index.set(i, false),
            _ => false,
        }
    }

    /// Never hands out a subnet that overlaps `net` (a network of the
    /// host's own: its underlay, its gateway, its etcd endpoints): every
    /// such subnet is taken for good, [`Ipv6SubnetAllocator::release`]
    /// included. Unlike the IPv4 allocator's per-subnet marks, the range is
    /// marked as whole subtrees, in O(log N) nodes: a protected /48 over
    /// /64 subnets is 65,536 subnets, a /16 would be 2^48.
    pub fn exclude(&mut self, net: Ipv6Network) {
        self.excluded.push(net);
        let Some((lo, hi)) = self.overlapping_indices(net) else {
            return;
        };
        self.excluded_ranges.push((lo, hi));
        self.index.fill(lo, hi);
    }

    /// The first excluded network that `subnet` overlaps, if any.
    #[must_use]
    pub fn excluded_overlap(&self, subnet: Ipv6Network) -> Option<Ipv6Network> {
        self.excluded
            .iter()
            .copied()
            .find(|e| e.contains(subnet.network()) || subnet.contains(e.network()))
    }

    fn is_excluded_index(&self, i: u128) -> bool {
        self.excluded_ranges
            .iter()
            .any(|&(lo, hi)| lo <= i && i <= hi)
    }

    /// The allocation indices of the allocatable subnets overlapping `net`.
    fn overlapping_indices(&self, net: Ipv6Network) -> Option<(u128, u128)> {
        if self.total() == 0 {
            return None;
        }
        let len = self.config.ipv6_subnet_len;
        let shift = 128u32.checked_sub(u32::from(len))?;
        let sub_mask = u128::MAX.checked_shl(shift).unwrap_or(0);
        let first = u128::from(net.network()) & sub_mask;
        let last = u128::from(net.broadcast()) & sub_mask;
        let min = u128::from(self.config.ipv6_subnet_min?);
        let max = u128::from(self.config.ipv6_subnet_max?);
        if last < min || first > max {
            return None;
        }
        let at = |addr: u128| {
            Ipv6Network::new(addr.into(), len)
                .ok()
                .and_then(|n| self.config.ipv6_subnet_index(n))
        };
        let lo = at(first.max(min))?;
        let hi = at(last.min(max))?.min(self.total() - 1);
        (lo <= hi).then_some((lo, hi))
    }

    /// Picks a uniformly random free subnet without marking it taken.
    ///
    /// # Errors
    /// [`SubnetError::Ipv6Exhausted`] when every subnet is taken.
    pub fn choose<G: Rng + ?Sized>(&self, rng: &mut G) -> Result<Ipv6Network, SubnetError> {
        let exhausted = SubnetError::Ipv6Exhausted {
            total: self.total(),
            taken: self.taken(),
        };
        let free = self.free();
        if free == 0 {
            return Err(exhausted);
        }
        let k = rng.random_range(0..free);
        self.nth_free(k).ok_or(exhausted)
    }

    /// Picks a uniformly random free subnet and marks it taken.
    ///
    /// # Errors
    /// [`SubnetError::Ipv6Exhausted`] when every subnet is taken.
    pub fn allocate<G: Rng + ?Sized>(&mut self, rng: &mut G) -> Result<Ipv6Network, SubnetError> {
        let net = self.choose(rng)?;
        self.mark_taken(net);
        Ok(net)
    }

    /// The lowest free subnet (flannel's choice), in O(log N).
    #[must_use]
    pub fn first_free(&self) -> Option<Ipv6Network> {
        self.nth_free(0)
    }

    /// The `k`-th free subnet in address order (0-based), in O(log N).
    #[must_use]
    pub fn nth_free(&self, k: u128) -> Option<Ipv6Network> {
        self.index
            .nth_free(k)
            .and_then(|i| self.config.ipv6_subnet_at(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::SmallRng, SeedableRng};
    use std::collections::BTreeSet;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    #[test]
    fn hands_out_every_subnet_once_then_is_exhausted() {
        let c = cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:1::/56","IPv6SubnetMin":"fd00:1:0:10::","IPv6SubnetMax":"fd00:1:0:8f::"}"#,
        );
        let mut a = Ipv6SubnetAllocator::new(&c);
        assert_eq!(a.total(), 128);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut got = BTreeSet::new();
        while let Ok(net) = a.allocate(&mut rng) {
            assert!(c.ipv6_subnet_index(net).is_some(), "{net}");
            assert!(got.insert(net), "{net} twice");
        }
        assert_eq!(got.len(), 128);
        assert!(matches!(
            a.choose(&mut rng),
            Err(SubnetError::Ipv6Exhausted {
                total: 128,
                taken: 128
            })
        ));
        assert!(a.release("fd00:1:0:42::/64".parse().unwrap()));
        assert_eq!(a.first_free().unwrap().to_string(), "fd00:1:0:42::/64");
    }

    #[test]
    fn ignores_what_is_not_allocatable_and_a_config_without_ipv6() {
        let c = cfg(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#);
        let mut a = Ipv6SubnetAllocator::new(&c);
        assert_eq!(a.total(), 65_535);
        for bad in [
            "fd00::/64",
            "fd01:0:0:1::/64",
            "fd00:0:0:1::/80",
            "fd00:0:0:1::/63",
        ] {
            assert!(!a.mark_taken(bad.parse().unwrap()), "{bad}");
            assert!(!a.is_free(bad.parse().unwrap()), "{bad}");
        }
        assert_eq!(a.taken(), 0);
        let v4 = Ipv6SubnetAllocator::new(&cfg(r#"{"Network":"10.0.0.0/16"}"#));
        assert_eq!((v4.total(), v4.free()), (0, 0));
        assert!(matches!(
            v4.choose(&mut SmallRng::seed_from_u64(0)),
            Err(SubnetError::Ipv6Exhausted { total: 0, taken: 0 })
        ));
    }

    /// The largest network twill accepts, with /126 subnets: 2^118 - 1 of
    /// them, a deep tree, u128 all the way; the ends are reachable.
    #[test]
    fn huge_ranges_stay_exact() {
        let c = cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/7","IPv6SubnetLen":126}"#,
        );
        let mut a = Ipv6SubnetAllocator::new(&c);
        assert_eq!(a.total(), (1u128 << 119) - 1);
        let last = c.ipv6_subnet_at(a.total() - 1).unwrap();
        assert_eq!(
            last.to_string(),
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"
        );
        assert!(a.mark_taken(last));
        assert_eq!(
            a.nth_free(a.free() - 1).unwrap().to_string(),
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/126"
        );
        assert_eq!(a.first_free().unwrap().to_string(), "fc00::4/126");
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            let n = a.allocate(&mut rng).unwrap();
            assert!(c.ipv6_subnet_index(n).is_some());
        }
        assert_eq!(a.taken(), 101);
    }

    #[test]
    fn exclude_takes_huge_ranges_for_good_in_few_nodes() {
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/16"}"#);
        let mut a = Ipv6SubnetAllocator::new(&c);
        let total = a.total();
        assert_eq!(total, (1u128 << 48) - 1);
        // A /17 is half the network: 2^47 subnets, one of them unallocatable.
        a.exclude("fd00::/17".parse().unwrap());
        a.exclude("fd00:8000:0:5::/64".parse().unwrap());
        let nodes = a.index.node_count();
        assert!(nodes < 200, "{nodes} nodes");
        assert_eq!(a.free(), total - ((1u128 << 47) - 1) - 1);
        assert_eq!(a.first_free().unwrap().to_string(), "fd00:8000::/64");
        assert_eq!(a.nth_free(5).unwrap().to_string(), "fd00:8000:0:6::/64");
        for n in [
            "fd00:0:0:1::/64",
            "fd00:7fff:ffff:ffff::/64",
            "fd00:8000:0:5::/64",
        ] {
            let n: Ipv6Network = n.parse().unwrap();
            assert!(!a.is_free(n), "{n}");
            assert!(!a.release(n), "{n}");
            assert!(!a.mark_taken(n), "{n}");
            assert!(a.excluded_overlap(n).is_some(), "{n}");
        }
        assert!(a
            .excluded_overlap("fd00:8000:0:6::/64".parse().unwrap())
            .is_none());
        let mut rng = SmallRng::seed_from_u64(9);
        for _ in 0..1000 {
            let n = a.allocate(&mut rng).unwrap();
            assert!(a.excluded_overlap(n).is_none(), "{n}");
        }
        // Outside the network, or a config without IPv6: nothing to do.
        a.exclude("2001:db8::/32".parse().unwrap());
        let mut v4 = Ipv6SubnetAllocator::new(&cfg(r#"{"Network":"10.0.0.0/16"}"#));
        v4.exclude("fd00::/8".parse().unwrap());
        assert_eq!(v4.free(), 0);
    }

    proptest! {
        /// Excluded ranges and marks, in any order, agree with a set model.
        #[test]
        fn exclude_agrees_with_a_set(excl in proptest::collection::vec((any::<u16>(), 0u8..=8), 0..4), ops in proptest::collection::vec((any::<bool>(), any::<u16>()), 0..100), k in any::<u16>()) {
            let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/52","IPv6SubnetMin":"fd00:0:0:3::","IPv6SubnetMax":"fd00:0:0:ffd::"}"#);
            let mut a = Ipv6SubnetAllocator::new(&c);
            let total = a.total();
            let mut taken = BTreeSet::new();
            let mut excluded = BTreeSet::new();
            let (half, rest) = ops.split_at(ops.len() / 2);
            let apply = |a: &mut Ipv6SubnetAllocator, taken: &mut BTreeSet<u128>, excluded: &BTreeSet<u128>, ops: &[(bool, u16)]| {
                for &(take, i) in ops {
                    let i = u128::from(i) % total;
                    let net = c.ipv6_subnet_at(i).unwrap();
                    if excluded.contains(&i) {
                        assert!(!a.mark_taken(net) && !a.release(net));
                    } else if take {
                        assert_eq!(a.mark_taken(net), taken.insert(i));
                    } else {
                        assert_eq!(a.release(net), taken.remove(&i));
                    }
                }
            };
            apply(&mut a, &mut taken, &excluded, half);
            for (at, bits) in excl {
                // A network of 2^bits /64s starting near index `at`.
                let base = (u128::from(at) % 4096) << 64;
                let net = Ipv6Network::new((u128::from(0xfd00u16) << 112 | base).into(), 64 - bits).unwrap();
                a.exclude(net);
                for i in 0..total {
                    if net.contains(c.ipv6_subnet_at(i).unwrap().network()) {
                        excluded.insert(i);
                        taken.remove(&i);
                    }
                }
            }
            apply(&mut a, &mut taken, &excluded, rest);
            let used = (taken.len() + excluded.len()) as u128;
            prop_assert_eq!(a.taken(), used);
            let free = total - used;
            if free > 0 {
                let k = u128::from(k) % free;
                let want = (0..total).filter(|i| !taken.contains(i) && !excluded.contains(i)).nth(k as usize);
                let got = a.nth_free(k).unwrap();
                prop_assert_eq!(c.ipv6_subnet_index(got), want);
                prop_assert!(a.is_free(got));
            }
            prop_assert!(a.nth_free(free).is_none());
        }

        /// The tree agrees with a set model under any sequence of marks and
        /// releases: counts, membership, and the k-th free subnet.
        #[test]
        fn agrees_with_a_set(prefix in 48u8..=60, extra in 0u8..=4, ops in proptest::collection::vec((any::<bool>(), any::<u16>()), 0..200), k in any::<u16>()) {
            let len = 64 + extra;
            let c = cfg(&format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/{prefix}","IPv6SubnetLen":{len}}}"#));
            let mut a = Ipv6SubnetAllocator::new(&c);
            let total = a.total();
            let mut model = BTreeSet::new();
            for (take, i) in ops {
                let i = u128::from(i) % total;
                let net = c.ipv6_subnet_at(i).unwrap();
                if take {
                    prop_assert_eq!(a.mark_taken(net), model.insert(i));
                } else {
                    prop_assert_eq!(a.release(net), model.remove(&i));
                }
            }
            prop_assert_eq!(a.taken(), model.len() as u128);
            let free = total - model.len() as u128;
            prop_assert_eq!(a.free(), free);
            if free > 0 {
                let k = u128::from(k) % free;
                // The k-th index not in the model.
                let mut want = None;
                let mut seen = 0u128;
                let mut i = 0u128;
                while want.is_none() {
                    if !model.contains(&i) {
                        if seen == k { want = Some(i); }
                        seen += 1;
                    }
                    i += 1;
                }
                let got = a.nth_free(k).unwrap();
                prop_assert_eq!(c.ipv6_subnet_index(got), want);
                prop_assert!(a.is_free(got));
            }
            prop_assert!(a.nth_free(free).is_none());
        }
    }
}
