//! Labelled token sequences a transformer can learn: each class has keywords, hidden among
//! neutral tokens in sequences of varying length, padded with token 0.

use burn::config::Config;
use burn::data::dataset::InMemDataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How to draw a [`SyntheticSequences`] set.
#[derive(Config, Debug, PartialEq)]
pub struct SequenceConfig {
    /// Distinct tokens: 0 pads, `1..=2 * classes` are keywords (two per class), the rest are
    /// neutral.
    #[config(default = 32)]
    pub vocab: usize,
    /// Longest sequence; every sequence is padded to it.
    #[config(default = 16)]
    pub max_len: usize,
    /// Shortest sequence, before padding.
    #[config(default = 4)]
    pub min_len: usize,
    /// Classes.
    #[config(default = 4)]
    pub classes: usize,
    /// Sequences in the training split.
    #[config(default = 2048)]
    pub train_size: usize,
    /// Sequences in the held-out split.
    #[config(default = 512)]
    pub test_size: usize,
    /// Seed: the same seed gives the same sequences.
    #[config(default = 7)]
    pub seed: u64,
}

/// One sequence of `max_len` token ids (padded with 0) and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceItem {
    /// The token ids.
    pub tokens: Vec<i64>,
    /// Its class, in `0..classes`.
    pub label: usize,
}

/// A train split and a held-out split. A sequence of class `c` holds one to three keywords of
/// `c` and, with some chance, one keyword of another class, among neutral tokens.
///
/// ```
/// use burn::data::dataset::Dataset;
/// use dp_dataset::{SequenceConfig, SyntheticSequences};
///
/// let data = SyntheticSequences::new(&SequenceConfig::new().with_train_size(10).with_test_size(3));
/// let item = data.train.get(0).unwrap();
/// assert_eq!(item.tokens.len(), 16);
/// assert!(item.tokens[0] != 0, "sequences start with a token, not padding");
/// ```
pub struct SyntheticSequences {
    /// Sequences to train on.
    pub train: InMemDataset<SequenceItem>,
    /// Sequences never trained on, to measure accuracy.
    pub test: InMemDataset<SequenceItem>,
}

impl SyntheticSequences {
    /// Draws both splits.
    ///
    /// # Panics
    /// If the vocabulary leaves no neutral token (`vocab <= 2 * classes + 1`) or the lengths are
    /// inconsistent (`min_len` 0 or above `max_len`).
    pub fn new(config: &SequenceConfig) -> Self {
        let keywords = 2 * config.classes;
        assert!(
            config.vocab > keywords + 1,
            "a vocabulary of {} leaves no neutral token for {} classes",
            config.vocab,
            config.classes
        );
        assert!(
            config.min_len >= 1 && config.min_len <= config.max_len,
            "sequence lengths must satisfy 1 <= min_len <= max_len"
        );
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut draw = |count: usize| -> Vec<SequenceItem> {
            (0..count)
                .map(|_| {
                    let label = rng.random_range(0..config.classes);
                    let len = rng.random_range(config.min_len..=config.max_len);
                    let mut tokens: Vec<i64> = (0..len)
                        .map(|_| rng.random_range(keywords + 1..config.vocab) as i64)
                        .collect();
                    let keyword = |class: usize, rng: &mut StdRng| {
                        (1 + 2 * class + rng.random_range(0..2)) as i64
                    };
                    for _ in 0..rng.random_range(1..=3usize.min(len)) {
                        let at = rng.random_range(0..len);
                        tokens[at] = keyword(label, &mut rng);
                    }
                    if config.classes > 1 && len > 3 && rng.random_bool(0.3) {
                        let other = (label + rng.random_range(1..config.classes)) % config.classes;
                        let at = rng.random_range(0..len);
                        tokens[at] = keyword(other, &mut rng);
                    }
                    tokens.resize(config.max_len, 0);
                    SequenceItem { tokens, label }
                })
                .collect()
        };
        let train = draw(config.train_size);
        let test = draw(config.test_size);
        Self {
            train: InMemDataset::new(train),
            test: InMemDataset::new(test),
        }
    }
}

/// Sequences stacked as `[rows, max_len]` token ids, and their classes `[rows]`.
pub fn sequence_batch<B: Backend>(
    items: &[SequenceItem],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let rows = items.len();
    let length = items.first().map_or(0, |i| i.tokens.len());
    let tokens: Vec<i64> = items
        .iter()
        .flat_map(|i| i.tokens.iter().copied())
        .collect();
    let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
    (
        Tensor::from_data(TensorData::new(tokens, [rows, length]), device),
        Tensor::from_data(TensorData::new(labels, [rows]), device),
    )
}
