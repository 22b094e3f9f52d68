//! Choosing a free IPv6 subnet in `[IPv6SubnetMin, IPv6SubnetMax]`.
//!
//! The same design as [`crate::SubnetAllocator`] (a sparse segment tree of
//! taken-counts over allocation indices, 64-slot bitmap leaves, nodes only
//! where something is taken, a uniformly random k-th free slot), over
//! `u128` indices: an IPv6 network holds up to 2^119 subnets twill accepts,
//! so the tree's depth is at most 122 and its memory stays proportional to
//! the number of taken subnets. Every step is checked arithmetic: nothing
//! here panics or wraps, whatever the config's public fields hold.

use rand::Rng;
use twill_model::{Ipv6Network, NetworkConfig};

use crate::SubnetError;

/// Slots per leaf bitmap.
const LEAF: u128 = 64;
/// Marks an absent child (index 0 is always the root, never a child).
const NONE: u32 = 0;
/// The most slots the tree covers (its span is a `u128` power of two). A
/// parsed config has at most 2^119 subnets; a hand-built one with more has
/// those past this many never handed out.
const MAX_SLOTS: u128 = 1 << 127;

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Taken slots in this node's range: the marks made below it, or the
    /// whole range for a node an exclusion covers.
    taken: u128,
    /// Every slot of the range is excluded ([`Ipv6SubnetAllocator::exclude`]):
    /// taken for good, with no children; one node stands for any number of
    /// slots, so excluding a huge range costs O(depth) nodes.
    full: bool,
    /// Children in the arena (internal nodes only); [`NONE`] when absent.
    children: [u32; 2],
    /// Taken bitmap (leaves only).
    bits: u64,
}

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
    count: u128,
    /// Size of the root's range: a power of two, at least [`LEAF`].
    span: u128,
    nodes: Vec<Node>,
    /// Networks given to [`Ipv6SubnetAllocator::exclude`].
    excluded: Vec<Ipv6Network>,
    /// Their allocation indices, inclusive ranges: never marked or released.
    excluded_ranges: Vec<(u128, u128)>,
}

impl Ipv6SubnetAllocator {
    /// An allocator with every IPv6 subnet of `config` free.
    #[must_use]
    pub fn new(config: &NetworkConfig) -> Self {
        let count = config.ipv6_subnet_count().min(MAX_SLOTS);
        let span = count
            .max(LEAF)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOTS);
        Ipv6SubnetAllocator {
            config: config.clone(),
            count,
            span,
            nodes: vec![Node::default()],
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
        self.count
    }

    /// How many of them are taken.
    #[must_use]
    pub fn taken(&self) -> u128 {
        self.nodes.first().map_or(0, |n| n.taken)
    }

    /// How many of them are free.
    #[must_use]
    pub fn free(&self) -> u128 {
        self.count.saturating_sub(self.taken())
    }

    /// Whether `subnet` is allocatable (in range, right length, aligned)
    /// and not taken.
    #[must_use]
    pub fn is_free(&self, subnet: Ipv6Network) -> bool {
        self.config
            .ipv6_subnet_index(subnet)
            .is_some_and(|i| i < self.count && !self.bit(i))
    }

    /// Marks `subnet` as taken. Returns whether anything changed: `false`
    /// if it was already taken or is not allocatable (ignored).
    pub fn mark_taken(&mut self, subnet: Ipv6Network) -> bool {
        match self.config.ipv6_subnet_index(subnet) {
            Some(i) if !self.is_excluded_index(i) => self.set(i, true),
            _ => false,
        }
    }

    /// Marks `subnet` as free again. Returns whether anything changed (an
    /// excluded subnet stays taken).
    pub fn release(&mut self, subnet: Ipv6Network) -> bool {
        match self.config.ipv6_subnet_index(subnet) {
            Some(i) if !self.is_excluded_index(i) => self.set(i, false),
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
        self.fill(0, 0, self.span, lo, hi);
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
        if self.count == 0 {
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
        let hi = at(last.min(max))?.min(self.count - 1);
        (lo <= hi).then_some((lo, hi))
    }

    /// Marks the slots `[a, b]` within node `node` (range `[lo, lo +
    /// size)`) taken, turning each node wholly inside into a `full` one.
    /// Returns how many slots became taken. Recursion depth is the tree's
    /// (at most 122).
    fn fill(&mut self, node: usize, lo: u128, size: u128, a: u128, b: u128) -> u128 {
        let cap = self.cap(lo, size);
        let Some(end) = lo.checked_add(cap.saturating_sub(1)) else {
            return 0;
        };
        if cap == 0 || b < lo || a > end {
            return 0;
        }
        let Some(n) = self.nodes.get(node).copied() else {
            return 0;
        };
        if n.full {
            return 0;
        }
        if a <= lo && end <= b {
            let added = cap.saturating_sub(n.taken);
            if let Some(m) = self.nodes.get_mut(node) {
                *m = Node {
                    taken: cap,
                    full: true,
                    children: [NONE; 2],
                    bits: if size <= LEAF { mask(cap) } else { 0 },
                };
            }
            return added;
        }
        if size <= LEAF {
            let from = u32::try_from(a.max(lo) - lo).unwrap_or(0);
            let to = u32::try_from(b.min(end) - lo).unwrap_or(0);
            let range = mask(u128::from(to) + 1) & !mask(u128::from(from));
            let bits = n.bits | range;
            let added = u128::from((bits & !n.bits).count_ones());
            if let Some(m) = self.nodes.get_mut(node) {
                m.bits = bits;
                m.taken = m.taken.saturating_add(added);
            }
            return added;
        }
        let half = size / 2;
        let mut added = 0u128;
        for side in 0..2 {
            let child_lo = if side == 1 { lo + half } else { lo };
            if self.cap(child_lo, half) == 0 {
                continue;
            }
            let mut child = self.nodes.get(node).map_or(NONE, |n| n.children[side]);
            if child == NONE {
                if self.nodes.len() >= u32::MAX as usize {
                    continue;
                }
                child = u32::try_from(self.nodes.len()).unwrap_or(NONE);
                self.nodes.push(Node::default());
                if let Some(parent) = self.nodes.get_mut(node) {
                    parent.children[side] = child;
                }
            }
            added = added.saturating_add(self.fill(child as usize, child_lo, half, a, b));
        }
        if let Some(m) = self.nodes.get_mut(node) {
            m.taken = m.taken.saturating_add(added);
        }
        added
    }

    /// Picks a uniformly random free subnet without marking it taken.
    ///
    /// # Errors
    /// [`SubnetError::Ipv6Exhausted`] when every subnet is taken.
    pub fn choose<G: Rng + ?Sized>(&self, rng: &mut G) -> Result<Ipv6Network, SubnetError> {
        let exhausted = SubnetError::Ipv6Exhausted {
            total: self.count,
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
    pub fn nth_free(&self, mut k: u128) -> Option<Ipv6Network> {
        if k >= self.free() {
            return None;
        }
        let (mut node, mut lo, mut size) = (0u32, 0u128, self.span);
        loop {
            let n = self.nodes.get(node as usize)?;
            if size <= LEAF {
                let cap = self.cap(lo, size);
                let free_bits = !n.bits & mask(cap);
                let bit = select_bit(free_bits, u32::try_from(k).ok()?)?;
                return self.config.ipv6_subnet_at(lo.checked_add(u128::from(bit))?);
            }
            let half = size / 2;
            let left = n.children[0];
            let left_free = self.cap(lo, half).saturating_sub(self.taken_of(left));
            let child = if k < left_free {
                left
            } else {
                k -= left_free;
                lo = lo.checked_add(half)?;
                n.children[1]
            };
            size = half;
            if child == NONE {
                // Nothing taken below: the slots are contiguous and free.
                return self.config.ipv6_subnet_at(lo.checked_add(k)?);
            }
            node = child;
        }
    }

    /// Number of allocatable slots in `[lo, lo + size)`.
    fn cap(&self, lo: u128, size: u128) -> u128 {
        self.count.saturating_sub(lo).min(size)
    }

    fn taken_of(&self, node: u32) -> u128 {
        if node == NONE {
            0
        } else {
            self.nodes.get(node as usize).map_or(0, |n| n.taken)
        }
    }

    fn bit(&self, index: u128) -> bool {
        if index >= self.count {
            return false;
        }
        let (mut node, mut lo, mut size) = (0u32, 0u128, self.span);
        loop {
            let Some(n) = self.nodes.get(node as usize) else {
                return false;
            };
            if n.full {
                return true;
            }
            if size <= LEAF {
                return index
                    .checked_sub(lo)
                    .and_then(|off| u32::try_from(off).ok())
                    .and_then(|off| n.bits.checked_shr(off))
                    .is_some_and(|b| b & 1 == 1);
            }
            let half = size / 2;
            let right = index - lo >= half;
            if right {
                lo += half;
            }
            node = n.children[usize::from(right)];
            if node == NONE {
                return false;
            }
            size = half;
        }
    }

    fn set(&mut self, index: u128, taken: bool) -> bool {
        if index >= self.count || self.bit(index) == taken {
            return false;
        }
        // Nodes are addressed by u32: past 2^32 nodes (far more memory than
        // any host has) a mark is refused rather than corrupting the tree.
        let depth = self
            .span
            .trailing_zeros()
            .saturating_sub(LEAF.trailing_zeros()) as usize;
        if taken && self.nodes.len().saturating_add(depth) >= u32::MAX as usize {
            return false;
        }
        let (mut node, mut lo, mut size) = (0usize, 0u128, self.span);
        loop {
            let Some(n) = self.nodes.get_mut(node) else {
                return false;
            };
            n.taken = if taken {
                n.taken.saturating_add(1)
            } else {
                n.taken.saturating_sub(1)
            };
            if size <= LEAF {
                let Ok(off) = u32::try_from(index - lo) else {
                    return false;
                };
                n.bits ^= 1u64.checked_shl(off).unwrap_or(0);
                return true;
            }
            let half = size / 2;
            let side = usize::from(index - lo >= half);
            if side == 1 {
                lo += half;
            }
            let mut child = n.children[side];
            if child == NONE {
                // Only reached when taking: a free slot under an absent node.
                child = u32::try_from(self.nodes.len()).unwrap_or(NONE);
                self.nodes.push(Node::default());
                if let Some(parent) = self.nodes.get_mut(node) {
                    parent.children[side] = child;
                }
            }
            node = child as usize;
            size = half;
        }
    }
}

fn mask(cap: u128) -> u64 {
    if cap >= 64 {
        u64::MAX
    } else {
        1u64.checked_shl(u32::try_from(cap).unwrap_or(0))
            .map_or(u64::MAX, |b| b - 1)
    }
}

/// The position of the `k`-th set bit of `bits`.
fn select_bit(bits: u64, k: u32) -> Option<u32> {
    if k >= bits.count_ones() {
        return None;
    }
    let mut rest = bits;
    for _ in 0..k {
        rest &= rest - 1; // clear the lowest set bit
    }
    Some(rest.trailing_zeros())
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
        assert!(a.nodes.len() < 200, "{} nodes", a.nodes.len());
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
