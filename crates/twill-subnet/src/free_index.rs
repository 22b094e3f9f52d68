//! The free-slot index both subnet allocators share: which of `count`
//! allocation indices are taken, and the k-th free one, in O(log N).
//!
//! A sparse segment tree of taken-counts over the indices: 64-slot bitmap
//! leaves, nodes only where something is taken, and whole subtrees marked
//! `full` by [`FreeIndex::fill`] so that taking a huge range costs O(depth)
//! nodes. Generic over the index width ([`Slot`]: `u32` for IPv4, whose
//! configs hold at most 2^31 subnets, `u128` for IPv6, up to 2^127): the
//! IPv4 tree keeps its 4-byte counts. Every step is checked arithmetic:
//! nothing here panics or wraps, whatever the indices.

use std::fmt::Debug;
use std::ops::{Add, Div, Sub};

/// An allocation index type: `u32` or `u128`.
pub(crate) trait Slot:
    Copy + Ord + Default + Debug + Add<Output = Self> + Sub<Output = Self> + Div<Output = Self>
{
    /// No slots.
    const ZERO: Self;
    /// Slots per leaf bitmap.
    const LEAF: Self;
    /// The most slots the tree covers (its span is a power of two of this
    /// type); indices past it are never handed out.
    const MAX_SLOTS: Self;
    /// The slot count `n` (a leaf offset, a bit count).
    fn from_u32(n: u32) -> Self;
    /// `self` as a leaf offset or bit count, when it fits.
    fn to_u32(self) -> Option<u32>;
    /// `self + rhs`, `None` on overflow.
    fn checked_add(self, rhs: Self) -> Option<Self>;
    /// `self + rhs`, at most the type's maximum.
    fn saturating_add(self, rhs: Self) -> Self;
    /// `self - rhs`, at least zero.
    fn saturating_sub(self, rhs: Self) -> Self;
    /// The smallest power of two at least `self`, `None` past the type.
    fn checked_next_power_of_two(self) -> Option<Self>;
    /// Trailing zero bits (the log2 of a power of two).
    fn trailing_zeros(self) -> u32;
}

macro_rules! slot {
    ($t:ty, $max:expr) => {
        impl Slot for $t {
            const ZERO: Self = 0;
            const LEAF: Self = 64;
            const MAX_SLOTS: Self = $max;
            fn from_u32(n: u32) -> Self {
                Self::from(n)
            }
            fn to_u32(self) -> Option<u32> {
                u32::try_from(self).ok()
            }
            fn checked_add(self, rhs: Self) -> Option<Self> {
                <$t>::checked_add(self, rhs)
            }
            fn saturating_add(self, rhs: Self) -> Self {
                <$t>::saturating_add(self, rhs)
            }
            fn saturating_sub(self, rhs: Self) -> Self {
                <$t>::saturating_sub(self, rhs)
            }
            fn checked_next_power_of_two(self) -> Option<Self> {
                <$t>::checked_next_power_of_two(self)
            }
            fn trailing_zeros(self) -> u32 {
                <$t>::trailing_zeros(self)
            }
        }
    };
}

// A parsed IPv4 config has at most 2^30 subnets (SubnetLen is at most 30);
// only a hand-built one (SubnetLen 32 over the whole space) has more.
slot!(u32, 1 << 31);
// A parsed IPv6 config has at most 2^119 subnets twill accepts.
slot!(u128, 1 << 127);

/// Marks an absent child (index 0 is always the root, never a child).
const NONE: u32 = 0;

#[derive(Debug, Clone, Copy, Default)]
struct Node<S> {
    /// Taken slots in this node's range: the marks made below it, or the
    /// whole range for a `full` node.
    taken: S,
    /// Every slot of the range is taken ([`FreeIndex::fill`]), with no
    /// children: one node stands for any number of slots.
    full: bool,
    /// Children in the arena (internal nodes only); [`NONE`] when absent,
    /// which means "nothing taken there".
    children: [u32; 2],
    /// Taken bitmap (leaves only).
    bits: u64,
}

/// Which of `count` slots are taken; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct FreeIndex<S> {
    count: S,
    /// Size of the root's range: a power of two, at least [`Slot::LEAF`].
    span: S,
    nodes: Vec<Node<S>>,
}

impl<S: Slot> FreeIndex<S> {
    /// An index of `count` free slots (at most [`Slot::MAX_SLOTS`]).
    pub(crate) fn new(count: S) -> Self {
        let count = count.min(S::MAX_SLOTS);
        let span = count
            .max(S::LEAF)
            .checked_next_power_of_two()
            .unwrap_or(S::MAX_SLOTS);
        FreeIndex {
            count,
            span,
            nodes: vec![Node::default()],
        }
    }

    /// How many slots there are.
    pub(crate) fn count(&self) -> S {
        self.count
    }

    /// How many of them are taken.
    pub(crate) fn taken(&self) -> S {
        self.nodes.first().map_or(S::ZERO, |n| n.taken)
    }

    /// How many of them are free.
    pub(crate) fn free(&self) -> S {
        self.count.saturating_sub(self.taken())
    }

    /// How many tree nodes hold the marks (memory is proportional to it).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of slots in `[lo, lo + size)`.
    fn cap(&self, lo: S, size: S) -> S {
        self.count.saturating_sub(lo).min(size)
    }

    fn taken_of(&self, node: u32) -> S {
        if node == NONE {
            S::ZERO
        } else {
            self.nodes.get(node as usize).map_or(S::ZERO, |n| n.taken)
        }
    }

    /// The `k`-th free slot in index order (0-based).
    pub(crate) fn nth_free(&self, mut k: S) -> Option<S> {
        if k >= self.free() {
            return None;
        }
        let (mut node, mut lo, mut size) = (0u32, S::ZERO, self.span);
        loop {
            let n = self.nodes.get(node as usize)?;
            if size <= S::LEAF {
                let cap = self.cap(lo, size);
                let free_bits = !n.bits & mask(cap);
                let bit = select_bit(free_bits, k.to_u32()?)?;
                return lo.checked_add(S::from_u32(bit));
            }
            let half = size / S::from_u32(2);
            let left = n.children[0];
            let left_free = self.cap(lo, half).saturating_sub(self.taken_of(left));
            let child = if k < left_free {
                left
            } else {
                k = k - left_free;
                lo = lo.checked_add(half)?;
                n.children[1]
            };
            size = half;
            if child == NONE {
                // Nothing taken below: the slots are contiguous and free.
                return lo.checked_add(k);
            }
            node = child;
        }
    }

    /// Whether slot `index` is taken (`false` past the last slot).
    pub(crate) fn is_taken(&self, index: S) -> bool {
        if index >= self.count {
            return false;
        }
        let (mut node, mut lo, mut size) = (0u32, S::ZERO, self.span);
        loop {
            let Some(n) = self.nodes.get(node as usize) else {
                return false;
            };
            if n.full {
                return true;
            }
            if size <= S::LEAF {
                return (index - lo)
                    .to_u32()
                    .and_then(|off| n.bits.checked_shr(off))
                    .is_some_and(|b| b & 1 == 1);
            }
            let half = size / S::from_u32(2);
            let right = index - lo >= half;
            if right {
                lo = lo + half;
            }
            node = n.children[usize::from(right)];
            if node == NONE {
                return false;
            }
            size = half;
        }
    }

    /// Marks slot `index` taken or free. Returns whether anything changed.
    pub(crate) fn set(&mut self, index: S, taken: bool) -> bool {
        if index >= self.count || self.is_taken(index) == taken {
            return false;
        }
        // Nodes are addressed by u32: past 2^32 nodes (far more memory than
        // any host has) a mark is refused rather than corrupting the tree.
        let depth = self
            .span
            .trailing_zeros()
            .saturating_sub(S::LEAF.trailing_zeros()) as usize;
        if taken && self.nodes.len().saturating_add(depth) >= u32::MAX as usize {
            return false;
        }
        let one = S::from_u32(1);
        let (mut node, mut lo, mut size) = (0usize, S::ZERO, self.span);
        loop {
            let Some(n) = self.nodes.get_mut(node) else {
                return false;
            };
            n.taken = if taken {
                n.taken.saturating_add(one)
            } else {
                n.taken.saturating_sub(one)
            };
            if size <= S::LEAF {
                let Some(off) = (index - lo).to_u32() else {
                    return false;
                };
                n.bits ^= 1u64.checked_shl(off).unwrap_or(0);
                return true;
            }
            let half = size / S::from_u32(2);
            let side = usize::from(index - lo >= half);
            if side == 1 {
                lo = lo + half;
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

    /// Marks the slots `[a, b]` taken, each subtree wholly inside as one
    /// `full` node: O(depth) nodes whatever the range's size. Returns how
    /// many slots became taken.
    pub(crate) fn fill(&mut self, a: S, b: S) -> S {
        self.fill_node(0, S::ZERO, self.span, a, b)
    }

    /// [`FreeIndex::fill`] within node `node` (range `[lo, lo + size)`).
    /// Recursion depth is the tree's (at most 122).
    fn fill_node(&mut self, node: usize, lo: S, size: S, a: S, b: S) -> S {
        let cap = self.cap(lo, size);
        let Some(end) = lo.checked_add(cap.saturating_sub(S::from_u32(1))) else {
            return S::ZERO;
        };
        if cap == S::ZERO || b < lo || a > end {
            return S::ZERO;
        }
        let Some(n) = self.nodes.get(node).copied() else {
            return S::ZERO;
        };
        if n.full {
            return S::ZERO;
        }
        if a <= lo && end <= b {
            let added = cap.saturating_sub(n.taken);
            if let Some(m) = self.nodes.get_mut(node) {
                *m = Node {
                    taken: cap,
                    full: true,
                    children: [NONE; 2],
                    bits: if size <= S::LEAF { mask(cap) } else { 0 },
                };
            }
            return added;
        }
        if size <= S::LEAF {
            let from = (a.max(lo) - lo).to_u32().unwrap_or(0);
            let to = (b.min(end) - lo).to_u32().unwrap_or(0);
            let range = mask(S::from_u32(to + 1)) & !mask(S::from_u32(from));
            let bits = n.bits | range;
            let added = S::from_u32((bits & !n.bits).count_ones());
            if let Some(m) = self.nodes.get_mut(node) {
                m.bits = bits;
                m.taken = m.taken.saturating_add(added);
            }
            return added;
        }
        let half = size / S::from_u32(2);
        let mut added = S::ZERO;
        for side in 0..2 {
            let child_lo = if side == 1 { lo + half } else { lo };
            if self.cap(child_lo, half) == S::ZERO {
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
            added = added.saturating_add(self.fill_node(child as usize, child_lo, half, a, b));
        }
        if let Some(m) = self.nodes.get_mut(node) {
            m.taken = m.taken.saturating_add(added);
        }
        added
    }
}

/// The low `cap` bits set (all 64 from 64 on).
fn mask<S: Slot>(cap: S) -> u64 {
    match cap.to_u32() {
        Some(c) if c < 64 => (1u64 << c) - 1,
        _ => u64::MAX,
    }
}

/// The position of the `k`-th set bit of `bits`.
fn select_bit(mut bits: u64, k: u32) -> Option<u32> {
    if k >= bits.count_ones() {
        return None;
    }
    // Narrow by halves, then by bytes, then bit by bit.
    let mut base = 0u32;
    let mut k = k;
    for width in [32u32, 16, 8] {
        let low = bits & ((1u64 << width) - 1);
        let ones = low.count_ones();
        if k >= ones {
            k -= ones;
            bits >>= width;
            base += width;
        } else {
            bits = low;
        }
    }
    for i in 0..8 {
        if bits >> i & 1 == 1 {
            if k == 0 {
                return Some(base + i);
            }
            k -= 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn select_bit_finds_each_set_bit() {
        let bits =
            0b1011_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_1001_0110u64;
        let positions: Vec<u32> = (0..64).filter(|i| bits >> i & 1 == 1).collect();
        for (k, p) in positions.iter().enumerate() {
            assert_eq!(select_bit(bits, u32::try_from(k).unwrap()), Some(*p));
        }
        assert_eq!(
            select_bit(bits, u32::try_from(positions.len()).unwrap()),
            None
        );
    }
}
