//! `ShardedLoader`: every rank's parts make up the global batches, every row once per epoch,
//! at any number of ranks and micro-batches; prefetch on worker threads hands out exactly the
//! batches of a loader without it, in the same order; errors are typed.

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use dp_dataset::{LoaderError, ShardedLoader};
use proptest::prelude::*;

type B = NdArray;

/// Row `i` is the item `i`: a batch says exactly which rows it holds, in which order.
struct Indices(usize);

impl Dataset<usize> for Indices {
    fn get(&self, index: usize) -> Option<usize> {
        (index < self.0).then_some(index)
    }

    fn len(&self) -> usize {
        self.0
    }
}

#[derive(Clone)]
struct Collect;

impl Batcher<B, usize, Vec<usize>> for Collect {
    fn batch(&self, items: Vec<usize>, _: &burn::tensor::Device<B>) -> Vec<usize> {
        // Slow enough that workers finish out of order when there are several.
        let wait = items.first().map_or(0, |i| (i % 7) as u64 * 50);
        std::thread::sleep(std::time::Duration::from_micros(wait));
        items
    }
}

fn loader(
    rows: usize,
    batch: usize,
    world: usize,
    rank: usize,
) -> ShardedLoader<B, usize, Vec<usize>> {
    ShardedLoader::new(Indices(rows), Collect, Default::default(), batch)
        .with_ranks(world, rank)
        .unwrap()
        .with_seed(11)
}

/// Every step's micro-batches of a rank, as loaded through `load` (the trainer's way).
fn steps(
    loader: &ShardedLoader<B, usize, Vec<usize>>,
    epoch: usize,
    world: usize,
    rank: usize,
) -> Vec<Vec<Vec<usize>>> {
    let mut epoch = loader.epoch(epoch);
    let mut out = Vec::new();
    while let Some(step) = epoch.next_step() {
        let parts = step
            .iter()
            .map(|piece| {
                let n = piece.len();
                let part = &piece[rank * n / world..(rank + 1) * n / world];
                if part.is_empty() {
                    Vec::new()
                } else {
                    epoch.load(part).unwrap()
                }
            })
            .collect();
        out.push(parts);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn ranks_parts_cover_every_row_once_and_prefetch_changes_nothing(
        rows in 1usize..60,
        batch in 1usize..20,
        world in 1usize..5,
        micro in 1usize..4,
        prefetch in 0usize..4,
        threads in 1usize..4,
        epoch in 0usize..3,
    ) {
        let one = loader(rows, batch, 1, 0).with_micro_batches(micro);
        let global: Vec<Vec<Vec<usize>>> = steps(&one, epoch, 1, 0);
        let mut seen: Vec<usize> = global.iter().flatten().flatten().copied().collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..rows).collect::<Vec<_>>());
        prop_assert_eq!(global.len(), rows.div_ceil(batch));
        for rank in 0..world {
            let plain = loader(rows, batch, world, rank).with_micro_batches(micro);
            let ahead = loader(rows, batch, world, rank)
                .with_micro_batches(micro)
                .with_prefetch(prefetch)
                .with_threads(threads);
            let parts = steps(&plain, epoch, world, rank);
            prop_assert_eq!(&parts, &steps(&ahead, epoch, world, rank));
            // The iterator hands out the same parts, a rank with no row of a micro-batch an
            // empty one, so that every rank gets as many.
            let iterated: Vec<Vec<usize>> = ahead.epoch(epoch).map(Result::unwrap).collect();
            let expected: Vec<Vec<usize>> = parts.iter().flatten().cloned().collect();
            prop_assert_eq!(iterated, expected);
            // Rank `rank`'s part of every micro-batch is its share of the one-rank global one.
            for (step, global_step) in parts.iter().zip(&global) {
                for (part, piece) in step.iter().zip(global_step) {
                    let n = piece.len();
                    prop_assert_eq!(part, &piece[rank * n / world..(rank + 1) * n / world].to_vec());
                }
            }
        }
    }
}

#[test]
fn epochs_shuffle_apart_and_a_seed_repeats() {
    let a = steps(&loader(40, 8, 1, 0), 0, 1, 0);
    let b = steps(&loader(40, 8, 1, 0), 1, 1, 0);
    assert_ne!(a, b);
    assert_eq!(a, steps(&loader(40, 8, 1, 0).with_prefetch(2), 0, 1, 0));
    let other_seed = steps(&loader(40, 8, 1, 0).with_seed(12), 0, 1, 0);
    assert_ne!(a, other_seed);
    let in_order = steps(&loader(10, 4, 1, 0).with_shuffle(false), 3, 1, 0);
    assert_eq!(
        in_order,
        [
            vec![vec![0, 1, 2, 3]],
            vec![vec![4, 5, 6, 7]],
            vec![vec![8, 9]]
        ]
    );
}

#[test]
fn a_resumed_epoch_reads_what_the_uninterrupted_one_read() {
    let loader = loader(50, 6, 2, 1).with_prefetch(3).with_micro_batches(2);
    let whole: Vec<Vec<usize>> = loader.epoch(2).map(Result::unwrap).collect();
    let mut resumed = loader.epoch_from(2, 3);
    assert_eq!(resumed.steps_left(), 9 - 3);
    let rest: Vec<Vec<usize>> = resumed.by_ref().map(Result::unwrap).collect();
    // 3 steps of 2 micro-batches, each of which rank 1 has rows of.
    assert_eq!(rest, whole[6..]);
}

#[test]
fn parts_other_than_the_equal_split_are_loaded_when_asked() {
    // A rank split that gives rank 0 most rows: every part is still exactly what was asked.
    let loader = loader(30, 10, 2, 0).with_prefetch(2).with_threads(2);
    let mut epoch = loader.epoch(0);
    let mut asked = Vec::new();
    while let Some(step) = epoch.next_step() {
        for piece in step {
            let part = &piece[..7];
            assert_eq!(epoch.load(part).unwrap(), part);
            asked.extend_from_slice(part);
        }
    }
    assert_eq!(asked.len(), 21);
    // Afterwards the equal split is prefetched again in the next epoch.
    let next: Vec<Vec<usize>> = loader.epoch(1).map(Result::unwrap).collect();
    assert_eq!(next.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 5]);
}

struct Lying;

impl Dataset<usize> for Lying {
    fn get(&self, index: usize) -> Option<usize> {
        (index != 3).then_some(index)
    }

    fn len(&self) -> usize {
        8
    }
}

struct Panics;

impl Batcher<B, usize, Vec<usize>> for Panics {
    fn batch(&self, items: Vec<usize>, _: &burn::tensor::Device<B>) -> Vec<usize> {
        assert!(!items.contains(&5), "row 5 is corrupt");
        items
    }
}

#[test]
fn a_missing_item_or_a_panicking_batcher_is_an_error_not_a_crash() {
    for prefetch in [0, 2] {
        let missing = ShardedLoader::<B, _, _>::new(Lying, Collect, Default::default(), 4)
            .with_shuffle(false)
            .with_prefetch(prefetch);
        let results: Vec<_> = missing.epoch(0).collect();
        assert_eq!(
            results[0],
            Err(LoaderError::MissingItem { index: 3, len: 8 })
        );
        assert_eq!(results[1], Ok(vec![4, 5, 6, 7]));

        let panics = ShardedLoader::<B, _, _>::new(Indices(8), Panics, Default::default(), 4)
            .with_shuffle(false)
            .with_prefetch(prefetch);
        let results: Vec<_> = panics.epoch(0).collect();
        assert_eq!(results[0], Ok(vec![0, 1, 2, 3]));
        match &results[1] {
            Err(LoaderError::Panicked {
                first: Some(4),
                message,
            }) => {
                assert!(message.contains("row 5 is corrupt"), "{message}")
            }
            other => panic!("expected a panic reported, got {other:?}"),
        }
    }
    // No rows: the batcher's empty batch, and the parts prepared ahead are still used.
    let loader = loader(6, 2, 1, 0).with_prefetch(2);
    let mut epoch = loader.epoch(0);
    let step = epoch.next_step().unwrap();
    assert_eq!(epoch.load(&[]), Ok(vec![]));
    assert_eq!(epoch.prepared(), 2);
    assert_eq!(epoch.load(&step[0]), Ok(step[0].clone()));
}

struct Where;

impl Batcher<B, usize, String> for Where {
    fn batch(&self, _: Vec<usize>, _: &burn::tensor::Device<B>) -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }
}

#[test]
fn with_prefetch_parts_are_made_on_the_workers_ahead_of_the_asking() {
    let threads = |prefetch| -> Vec<String> {
        ShardedLoader::<B, _, _>::new(Indices(12), Where, Default::default(), 3)
            .with_prefetch(prefetch)
            .with_threads(2)
            .epoch(0)
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        threads(2).iter().all(|t| t.starts_with("dp-loader-")),
        "{:?}",
        threads(2)
    );
    assert!(threads(0).iter().all(|t| !t.starts_with("dp-loader-")));
    // Queued ahead: by the time the first part is taken, the second is already being made.
    let loader =
        ShardedLoader::<B, _, _>::new(Indices(12), Collect, Default::default(), 3).with_prefetch(3);
    let epoch = loader.epoch(0);
    assert_eq!(epoch.prepared(), 3);
}
