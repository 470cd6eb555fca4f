//! `ShardedSampler` follows `DistributedSampler`'s rules.

use dp_dataset::{SamplerError, ShardedSampler};
use std::collections::BTreeMap;

fn all_ranks(
    len: usize,
    replicas: usize,
    f: impl Fn(ShardedSampler) -> ShardedSampler,
) -> Vec<Vec<usize>> {
    (0..replicas)
        .map(|rank| f(ShardedSampler::new(len, replicas, rank).unwrap()).indices())
        .collect()
}

fn counts(ranks: &[Vec<usize>]) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for &i in ranks.iter().flatten() {
        *counts.entry(i).or_insert(0) += 1;
    }
    counts
}

#[test]
fn without_padding_every_index_appears_exactly_once() {
    for (len, replicas) in [(12, 4), (100, 5), (7, 7), (30, 1)] {
        for shuffle in [false, true] {
            let ranks = all_ranks(len, replicas, |s| s.with_shuffle(shuffle).with_seed(3));
            let counts = counts(&ranks);
            assert_eq!(counts.len(), len);
            assert!(counts.values().all(|&c| c == 1), "{len} on {replicas}");
            assert!(ranks.iter().all(|r| r.len() == len / replicas));
        }
    }
}

#[test]
fn padding_repeats_the_start_so_every_rank_gets_the_same_count() {
    let ranks = all_ranks(10, 4, |s| s.with_shuffle(false));
    assert_eq!(
        ranks,
        [vec![0, 4, 8], vec![1, 5, 9], vec![2, 6, 0], vec![3, 7, 1]]
    );
    let counts = counts(&ranks);
    assert_eq!(counts.len(), 10);
    assert_eq!(
        counts.values().filter(|&&c| c == 2).count(),
        2,
        "two indices padded"
    );
    // Fewer rows than replicas: the list is repeated as often as needed.
    let ranks = all_ranks(2, 5, |s| s.with_shuffle(false));
    assert_eq!(ranks, [vec![0], vec![1], vec![0], vec![1], vec![0]]);
}

#[test]
fn drop_last_drops_the_tail() {
    let ranks = all_ranks(10, 4, |s| s.with_shuffle(false).with_drop_last(true));
    assert_eq!(ranks, [vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    let sampler = ShardedSampler::new(10, 4, 0).unwrap().with_drop_last(true);
    assert_eq!(sampler.num_samples(), 2);
    let shuffled = all_ranks(10, 4, |s| s.with_drop_last(true).with_seed(1));
    let counts = counts(&shuffled);
    assert_eq!(counts.len(), 8);
    assert!(counts.values().all(|&c| c == 1));
}

#[test]
fn the_order_depends_on_seed_and_epoch_only() {
    let make = |seed, epoch| {
        let mut s = ShardedSampler::new(50, 2, 1).unwrap().with_seed(seed);
        s.set_epoch(epoch);
        s.indices()
    };
    assert_eq!(make(7, 0), make(7, 0));
    assert_eq!(make(7, 3), make(7, 3));
    assert_ne!(make(7, 0), make(7, 1));
    assert_ne!(make(7, 0), make(8, 0));
    // Ranks agree on the permutation: together they still cover every index once.
    let ranks: Vec<Vec<usize>> = (0..2)
        .map(|rank| {
            let mut s = ShardedSampler::new(50, 2, rank).unwrap().with_seed(7);
            s.set_epoch(4);
            s.indices()
        })
        .collect();
    assert_eq!(counts(&ranks).len(), 50);
}

#[test]
fn bad_ranks_are_errors() {
    assert_eq!(
        ShardedSampler::new(10, 0, 0).unwrap_err(),
        SamplerError::NoReplicas
    );
    assert_eq!(
        ShardedSampler::new(10, 2, 2).unwrap_err(),
        SamplerError::RankOutOfRange {
            rank: 2,
            num_replicas: 2
        }
    );
}

#[test]
fn global_batches_are_the_same_at_every_world_size_and_parts_cover_them_once() {
    for len in [0, 1, 7, 10, 53] {
        for batch in [1, 3, 4, 16, 60] {
            let reference = {
                let mut s = ShardedSampler::new(len, 1, 0).unwrap().with_seed(5);
                s.set_epoch(2);
                s.global_batches(batch)
            };
            // Every index once, in batches of `batch` but the last.
            let flat: Vec<usize> = reference.concat();
            let mut sorted = flat.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..len).collect::<Vec<_>>());
            assert!(reference.iter().rev().skip(1).all(|b| b.len() == batch));
            for ranks in 1..=4 {
                let samplers: Vec<ShardedSampler> = (0..ranks)
                    .map(|rank| {
                        let mut s = ShardedSampler::new(len, ranks, rank).unwrap().with_seed(5);
                        s.set_epoch(2);
                        s
                    })
                    .collect();
                for s in &samplers {
                    assert_eq!(s.global_batches(batch), reference, "{len} rows on {ranks}");
                }
                for global in &reference {
                    let parts: Vec<&[usize]> = samplers.iter().map(|s| s.part(global)).collect();
                    assert_eq!(parts.concat(), *global, "parts in rank order");
                    let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(max - min <= 1, "{sizes:?}");
                }
            }
        }
    }
}
