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
