//! Choosing a free subnet in `[SubnetMin, SubnetMax]`.
//!
//! flannel scans linearly from `SubnetMin` for the first free subnet, which is
//! O(N) per allocation and makes every agent that starts at the same time
//! race for the same subnet. [`SubnetAllocator`] keeps a sparse segment tree
//! of taken-counts over the allocation indices (leaves are 64-slot bitmaps,
//! nodes are created only where something is taken) and picks the k-th free
//! slot for a uniformly random k: O(log N) per operation whatever the fill,
//! memory proportional to the number of taken subnets, and concurrent agents
//! spread out over the free space.

use rand::Rng;
use twill_model::Ipv4Network;
use twill_model::NetworkConfig;

use crate::free_index::FreeIndex;
use crate::SubnetError;

/// Free-subnet bookkeeping for one [`NetworkConfig`]: which of its
/// `subnet_count()` allocatable subnets are taken, and a uniformly random
/// choice among the free ones in O(log N).
///
/// ```
/// use rand::{rngs::SmallRng, SeedableRng};
/// use twill_model::NetworkConfig;
/// use twill_subnet::{SubnetAllocator, SubnetError};
///
/// let cfg = NetworkConfig::parse(r#"{"Network":"192.168.0.0/16","SubnetLen":24,
///     "SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0"}"#).unwrap();
/// let mut alloc = SubnetAllocator::new(&cfg);
/// alloc.mark_taken("192.168.3.0/24".parse().unwrap());
/// let mut rng = SmallRng::seed_from_u64(7);
/// let mut got = Vec::new();
/// while let Ok(net) = alloc.allocate(&mut rng) {
///     got.push(net.to_string());
/// }
/// got.sort();
/// assert_eq!(got, ["192.168.0.0/24", "192.168.1.0/24", "192.168.2.0/24",
///                  "192.168.4.0/24", "192.168.5.0/24"]);
/// assert!(matches!(alloc.allocate(&mut rng), Err(SubnetError::Exhausted { total: 6, taken: 6 })));
/// ```
#[derive(Debug, Clone)]
pub struct SubnetAllocator {
    config: NetworkConfig,
    /// Networks no subnet may overlap (see [`SubnetAllocator::exclude`]).
    excluded: Vec<Ipv4Network>,
    /// Allocation indices (`subnet_index`) taken.
    index: FreeIndex<u32>,
}

impl SubnetAllocator {
    /// An allocator with every subnet of `config` free.
    #[must_use]
    pub fn new(config: &NetworkConfig) -> Self {
        SubnetAllocator {
            config: config.clone(),
            excluded: Vec::new(),
            index: FreeIndex::new(config.subnet_count()),
        }
    }

    /// An allocator with the given subnets taken (those outside the range
    /// are ignored).
    #[must_use]
    pub fn with_taken(
        config: &NetworkConfig,
        taken: impl IntoIterator<Item = Ipv4Network>,
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

    /// How many subnets lie in `[SubnetMin, SubnetMax]`.
    #[must_use]
    pub fn total(&self) -> u32 {
        self.index.count()
    }

    /// How many of them are taken.
    #[must_use]
    pub fn taken(&self) -> u32 {
        self.index.taken()
    }

    /// How many of them are free.
    #[must_use]
    pub fn free(&self) -> u32 {
        self.index.free()
    }

    /// Whether `subnet` is allocatable (in range, right length, aligned) and
    /// not taken.
    #[must_use]
    pub fn is_free(&self, subnet: Ipv4Network) -> bool {
        match self.config.subnet_index(subnet) {
            Some(i) => !self.index.is_taken(i),
            None => false,
        }
    }

    /// Marks `subnet` as taken (by a lease or a reservation). Returns whether
    /// anything changed: `false` if it was already taken or is outside the
    /// allocatable range (such subnets are ignored).
    pub fn mark_taken(&mut self, subnet: Ipv4Network) -> bool {
        match self.config.subnet_index(subnet) {
            Some(i) => self.index.set(i, true),
            None => false,
        }
    }

    /// Marks `subnet` as free again. Returns whether anything changed. A
    /// subnet that overlaps an excluded network stays taken.
    pub fn release(&mut self, subnet: Ipv4Network) -> bool {
        if self.excluded_overlap(subnet).is_some() {
            return false;
        }
        match self.config.subnet_index(subnet) {
            Some(i) => self.index.set(i, false),
            None => false,
        }
    }

    /// Never hands out a subnet that overlaps `net` (a network of the host's
    /// own: its underlay, its gateway, its etcd endpoints): every such
    /// subnet is marked taken for good, [`SubnetAllocator::release`] included.
    /// Costs one mark per overlapping subnet.
    pub fn exclude(&mut self, net: Ipv4Network) {
        let len = u32::from(self.config.subnet_len);
        if len == 0 || len > 32 {
            return;
        }
        let step = 1u64 << (32 - len);
        let sub_mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        let first = u64::from(u32::from(net.network()) & sub_mask);
        let last = u64::from(u32::from(net.broadcast()) & sub_mask);
        let (min, max) = (
            u64::from(u32::from(self.config.subnet_min)),
            u64::from(u32::from(self.config.subnet_max)),
        );
        let mut addr = first.max(min);
        // Stay aligned when SubnetMin is above the first overlapping subnet.
        addr = first + (addr - first).div_ceil(step) * step;
        let end = last.min(max);
        while addr <= end {
            if let (Ok(a), Ok(l)) = (u32::try_from(addr), u8::try_from(len)) {
                if let Ok(sn) = Ipv4Network::new(a.into(), l) {
                    self.mark_taken(sn);
                }
            }
            addr += step;
        }
        self.excluded.push(net);
    }

    /// The first excluded network that `subnet` overlaps, if any.
    #[must_use]
    pub fn excluded_overlap(&self, subnet: Ipv4Network) -> Option<Ipv4Network> {
        self.excluded
            .iter()
            .copied()
            .find(|e| e.contains(subnet.network()) || subnet.contains(e.network()))
    }

    /// Picks a uniformly random free subnet without marking it taken.
    ///
    /// # Errors
    /// [`SubnetError::Exhausted`] when every subnet is taken.
    pub fn choose<G: Rng + ?Sized>(&self, rng: &mut G) -> Result<Ipv4Network, SubnetError> {
        let free = self.free();
        if free == 0 {
            return Err(SubnetError::Exhausted {
                total: self.total(),
                taken: self.taken(),
            });
        }
        let k = rng.random_range(0..free);
        self.nth_free(k).ok_or(SubnetError::Exhausted {
            total: self.total(),
            taken: self.taken(),
        })
    }

    /// Picks a uniformly random free subnet and marks it taken.
    ///
    /// # Errors
    /// [`SubnetError::Exhausted`] when every subnet is taken.
    pub fn allocate<G: Rng + ?Sized>(&mut self, rng: &mut G) -> Result<Ipv4Network, SubnetError> {
        let net = self.choose(rng)?;
        self.mark_taken(net);
        Ok(net)
    }

    /// The lowest free subnet (flannel's choice), in O(log N).
    #[must_use]
    pub fn first_free(&self) -> Option<Ipv4Network> {
        self.nth_free(0)
    }

    /// The `k`-th free subnet in address order (0-based), in O(log N).
    #[must_use]
    pub fn nth_free(&self, k: u32) -> Option<Ipv4Network> {
        self.index
            .nth_free(k)
            .and_then(|i| self.config.subnet_at(i))
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

    const SEED: &str = r#"{"Network":"192.168.0.0/16","SubnetLen":24,"SubnetMin":"192.168.0.0","SubnetMax":"192.168.5.0","Backend":{"Type":"vxlan","VNI":100,"Port":8472}}"#;

    #[test]
    fn seed_config_yields_exactly_its_six_subnets() {
        let c = cfg(SEED);
        let mut a = SubnetAllocator::new(&c);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut got = BTreeSet::new();
        for _ in 0..6 {
            got.insert(a.allocate(&mut rng).unwrap().to_string());
        }
        let want: BTreeSet<String> = (0..6).map(|i| format!("192.168.{i}.0/24")).collect();
        assert_eq!(got, want);
        match a.allocate(&mut rng) {
            Err(SubnetError::Exhausted { total, taken }) => assert_eq!((total, taken), (6, 6)),
            other => panic!("expected Exhausted, got {other:?}"),
        }
    }

    #[test]
    fn excluded_networks_are_never_handed_out_nor_released() {
        let c = cfg(
            r#"{"Network":"10.0.0.0/16","SubnetLen":25,"SubnetMin":"10.0.0.0","SubnetMax":"10.0.1.128"}"#,
        );
        let mut a = SubnetAllocator::new(&c);
        assert_eq!(a.total(), 4);
        // The host's LAN 10.0.0.0/24 covers two /25s; its gateway 10.0.1.200 one more.
        a.exclude("10.0.0.0/24".parse().unwrap());
        a.exclude("10.0.1.200/32".parse().unwrap());
        assert_eq!(a.free(), 1);
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(a.allocate(&mut rng).unwrap().to_string(), "10.0.1.0/25");
        assert!(!a.release("10.0.0.128/25".parse().unwrap()));
        assert!(!a.is_free("10.0.0.0/25".parse().unwrap()));
        assert_eq!(
            a.excluded_overlap("10.0.0.0/8".parse().unwrap()),
            Some("10.0.0.0/24".parse().unwrap())
        );
        assert_eq!(a.excluded_overlap("10.0.1.0/25".parse().unwrap()), None);
        // A SubnetMin past the excluded range's start stays aligned.
        let c = cfg(
            r#"{"Network":"10.0.0.0/16","SubnetLen":24,"SubnetMin":"10.0.5.0","SubnetMax":"10.0.9.0"}"#,
        );
        let mut a = SubnetAllocator::new(&c);
        a.exclude("10.0.0.0/21".parse().unwrap());
        assert_eq!(a.free(), 2);
        assert_eq!(a.first_free().unwrap().to_string(), "10.0.8.0/24");
    }

    /// Issue 12: a config the parser would refuse (subnet_len 0, as an
    /// IPv6-only config left its IPv4 side; lengths over 32; min above max)
    /// must not make the allocator panic.
    #[test]
    fn degenerate_configs_never_panic() {
        let mut rng = SmallRng::seed_from_u64(3);
        for (len, min, max) in [
            (0u8, 0u32, 0u32),
            (0, 0, u32::MAX),
            (33, 0, 0),
            (24, 0x0A00_0500, 0x0A00_0100),
            (32, 0, u32::MAX),
        ] {
            let mut c = cfg(SEED);
            c.subnet_len = len;
            c.subnet_min = std::net::Ipv4Addr::from(min);
            c.subnet_max = std::net::Ipv4Addr::from(max);
            let mut a = SubnetAllocator::new(&c);
            for _ in 0..3 {
                if let Ok(net) = a.allocate(&mut rng) {
                    assert_eq!(net.prefix(), len);
                    assert!(!a.is_free(net));
                    assert!(a.release(net));
                }
            }
            let _ = a.first_free();
            let _ = a.mark_taken("0.0.0.0/0".parse().unwrap());
        }
    }

    #[test]
    fn out_of_range_and_wrong_length_are_ignored() {
        let c = cfg(SEED);
        let mut a = SubnetAllocator::new(&c);
        assert!(!a.mark_taken("192.168.6.0/24".parse().unwrap()));
        assert!(!a.mark_taken("10.0.0.0/24".parse().unwrap()));
        assert!(!a.mark_taken("192.168.0.0/23".parse().unwrap()));
        assert_eq!(a.taken(), 0);
        assert!(a.mark_taken("192.168.5.0/24".parse().unwrap()));
        assert!(!a.mark_taken("192.168.5.0/24".parse().unwrap()));
        assert!(!a.is_free("192.168.5.0/24".parse().unwrap()));
        assert!(a.release("192.168.5.0/24".parse().unwrap()));
        assert!(a.is_free("192.168.5.0/24".parse().unwrap()));
        assert!(!a.is_free("192.168.6.0/24".parse().unwrap()));
    }

    #[test]
    fn large_space_nearly_full_still_allocates_the_remaining() {
        let c = cfg(
            r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.0.0.0","SubnetMax":"10.255.255.0"}"#,
        );
        assert_eq!(c.subnet_count(), 65_536);
        let mut a = SubnetAllocator::new(&c);
        let free: BTreeSet<u32> = [5, 64, 999, 40_000, 65_535].into();
        for i in 0..65_536 {
            if !free.contains(&i) {
                a.mark_taken(c.subnet_at(i).unwrap());
            }
        }
        assert_eq!(a.free(), 5);
        assert_eq!(a.first_free(), c.subnet_at(5));
        let mut rng = SmallRng::seed_from_u64(3);
        let mut got = BTreeSet::new();
        while let Ok(n) = a.allocate(&mut rng) {
            got.insert(c.subnet_index(n).unwrap());
        }
        assert_eq!(got, free);
    }

    fn arb_config() -> impl Strategy<Value = NetworkConfig> {
        // Network 10.0.0.0/16, subnets /24../28, random [min, max].
        (24u8..=28, 0u32..300, 0u32..300).prop_map(|(len, a, b)| {
            let n = 1u32 << (len - 16);
            let (lo, hi) = (a.min(b) % n, a.max(b) % n);
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let addr = |i: u32| std::net::Ipv4Addr::from(0x0A00_0000u32 + (i << (32 - u32::from(len))));
            cfg(&format!(
                r#"{{"Network":"10.0.0.0/16","SubnetLen":{len},"SubnetMin":"{}","SubnetMax":"{}"}}"#,
                addr(lo),
                addr(hi)
            ))
        })
    }

    proptest! {
        #[test]
        fn allocates_every_free_slot_once_then_exhausted(
            c in arb_config(),
            taken in proptest::collection::vec(0u32..5000, 0..200),
            seed in any::<u64>(),
        ) {
            let mut a = SubnetAllocator::new(&c);
            let mut taken_set = BTreeSet::new();
            for t in taken {
                // Some in range, some beyond SubnetMax (ignored), some of another length.
                let addr = std::net::Ipv4Addr::from(0x0A00_0000u32 + (t << (32 - u32::from(c.subnet_len))));
                if let Ok(net) = Ipv4Network::new(addr, c.subnet_len) {
                    if a.mark_taken(net) {
                        taken_set.insert(net);
                    }
                }
                if let Ok(other) = Ipv4Network::new(addr, c.subnet_len - 1) {
                    prop_assert!(!a.mark_taken(other));
                }
            }
            let free_before = a.free();
            prop_assert_eq!(free_before, c.subnet_count() - u32::try_from(taken_set.len()).unwrap());
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut got = BTreeSet::new();
            loop {
                match a.allocate(&mut rng) {
                    Ok(net) => {
                        prop_assert!(c.subnet_index(net).is_some(), "{} out of range", net);
                        prop_assert!(!taken_set.contains(&net), "{} was taken", net);
                        prop_assert!(got.insert(net), "{} returned twice", net);
                    }
                    Err(SubnetError::Exhausted { total, taken }) => {
                        prop_assert_eq!(total, c.subnet_count());
                        prop_assert_eq!(taken, total);
                        break;
                    }
                    Err(e) => prop_assert!(false, "unexpected {}", e),
                }
            }
            prop_assert_eq!(u32::try_from(got.len()).unwrap(), free_before);
        }

        #[test]
        fn nth_free_matches_a_linear_scan(
            c in arb_config(),
            ops in proptest::collection::vec((any::<bool>(), 0u32..300), 0..300),
        ) {
            let mut a = SubnetAllocator::new(&c);
            let mut model = vec![false; c.subnet_count() as usize];
            for (take, i) in ops {
                let i = i % c.subnet_count();
                let net = c.subnet_at(i).unwrap();
                let changed = if take { a.mark_taken(net) } else { a.release(net) };
                prop_assert_eq!(changed, model[i as usize] != take);
                model[i as usize] = take;
            }
            let free: Vec<u32> = (0..c.subnet_count()).filter(|&i| !model[i as usize]).collect();
            prop_assert_eq!(a.free() as usize, free.len());
            for (k, i) in free.iter().enumerate() {
                prop_assert_eq!(a.nth_free(u32::try_from(k).unwrap()), c.subnet_at(*i));
                prop_assert!(a.is_free(c.subnet_at(*i).unwrap()));
            }
            prop_assert_eq!(a.nth_free(u32::try_from(free.len()).unwrap()), None);
        }
    }
}
