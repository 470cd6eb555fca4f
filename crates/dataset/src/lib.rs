//! Datasets and samplers for the data-parallel examples, tests and benchmarks.
//!
//! - [`RandomDataset`]: the PyTorch tutorial's `RandomDataset`, rows of standard-normal `f32`,
//!   seeded so that a run is reproducible, with [`RowBatcher`] to stack rows into a tensor.
//! - [`SyntheticClassification`]: Gaussian clusters a small MLP can learn, with a held-out split.
//! - [`SyntheticImages`]: one pattern per class, shifted and noisy, for a convolutional network.
//! - [`SyntheticSequences`]: token sequences classified by their keywords, for a transformer.
//! - [`ShardedSampler`]: the rows each rank reads, by PyTorch `DistributedSampler`'s rules.
//! - [`ShardedLoader`]: any Burn `Dataset` and `Batcher` as a trainer's source, each rank
//!   loading its part of every global batch, parts prepared ahead on worker threads in a fixed
//!   order.
//! - Data on disk: [`ImageFolder`] (one subfolder of PNG or JPEG images per class, decoded as
//!   batches are made), [`Mnist`] (MNIST's IDX files), [`CsvRows`] (features, then a label);
//!   every problem a [`DataError`] naming the file.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::data::dataloader::DataLoaderBuilder;
//! use dp_dataset::{RandomDataset, RowBatcher};
//!
//! let loader = DataLoaderBuilder::<NdArray, _, _>::new(RowBatcher)
//!     .batch_size(30)
//!     .shuffle(42)
//!     .build(RandomDataset::new(5, 100, 42));
//! let sizes: Vec<[usize; 2]> = loader.iter().map(|batch| batch.dims()).collect();
//! assert_eq!(sizes, [[30, 5], [30, 5], [30, 5], [10, 5]]);
//! ```

#![warn(missing_docs)]

mod files;
mod images;
mod loader;
mod random;
mod sampler;
mod sequences;
mod synthetic;

pub use files::{
    CsvRows, DataError, IdxImages, ImageFile, ImageFileBatcher, ImageFolder, Mnist,
    write_image_folder,
};
pub use images::{ImageBatcher, ImageConfig, ImageItem, SyntheticImages, image_batch};
pub use loader::{Epoch, LoaderError, ShardedLoader};
pub use random::{RandomDataset, RowBatcher};
pub use sampler::{SamplerError, ShardedSampler};
pub use sequences::{SequenceConfig, SequenceItem, SyntheticSequences, sequence_batch};
pub use synthetic::{
    ClassificationBatch, ClassificationBatcher, ClassificationItem, SyntheticClassification,
    SyntheticConfig, batch_of,
};

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
