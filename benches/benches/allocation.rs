//! Subnet allocation in a 65,536-subnet space (10.0.0.0/8, SubnetLen 24):
//! twill's O(log N) random choice against flannel's linear scan from
//! SubnetMin, at 0 %, 50 % and 99.9 % full.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use twill_model::{Ipv4Network, NetworkConfig};
use twill_subnet::SubnetAllocator;

const CONFIG: &str =
    r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.0.0.0","SubnetMax":"10.255.255.0"}"#;

/// flannel's allocation: walk from SubnetMin and take the first subnet no
/// lease holds (flannel keeps the leases in a list; a hash set is kinder).
fn linear_scan(cfg: &NetworkConfig, taken: &HashSet<Ipv4Network>) -> Option<Ipv4Network> {
    (0..cfg.subnet_count())
        .filter_map(|i| cfg.subnet_at(i))
        .find(|n| !taken.contains(n))
}

/// `fill_per_mille` of the space taken, from SubnetMin up: the layout
/// flannel's own first-free allocation leaves (a random layout would let the
/// scan stop early; twill's cost does not depend on the layout).
fn taken(cfg: &NetworkConfig, fill_per_mille: u32) -> Vec<Ipv4Network> {
    let n = cfg.subnet_count() * fill_per_mille / 1000;
    (0..n).filter_map(|i| cfg.subnet_at(i)).collect()
}

fn allocation(c: &mut Criterion) {
    let cfg = NetworkConfig::parse(CONFIG).unwrap();
    assert_eq!(cfg.subnet_count(), 65_536);
    let mut group = c.benchmark_group("allocate_65536");
    for (label, per_mille) in [("0%", 0), ("50%", 500), ("99.9%", 999)] {
        let taken = taken(&cfg, per_mille);
        let set: HashSet<Ipv4Network> = taken.iter().copied().collect();
        let alloc = SubnetAllocator::with_taken(&cfg, taken.iter().copied());
        let mut rng = SmallRng::seed_from_u64(7);
        group.bench_with_input(BenchmarkId::new("twill_random", label), &alloc, |b, a| {
            b.iter(|| black_box(a.choose(&mut rng).unwrap()));
        });
        group.bench_with_input(BenchmarkId::new("flannel_linear", label), &set, |b, s| {
            b.iter(|| black_box(linear_scan(&cfg, s).unwrap()));
        });
        // Allocate-and-mark (what an agent does), on a fresh copy each batch.
        group.bench_with_input(
            BenchmarkId::new("twill_allocate_mut", label),
            &alloc,
            |b, a| {
                b.iter_batched_ref(
                    || a.clone(),
                    |a| black_box(a.allocate(&mut rng).unwrap()),
                    BatchSize::LargeInput,
                );
            },
        );
    }
    group.finish();

    // Building the allocator from a full listing (once per agent start).
    let taken = taken(&cfg, 999);
    c.bench_function("build_allocator_99.9%", |b| {
        b.iter(|| black_box(SubnetAllocator::with_taken(&cfg, taken.iter().copied())));
    });
}

criterion_group!(benches, allocation);
criterion_main!(benches);
