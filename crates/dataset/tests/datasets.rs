//! The datasets are reproducible and shaped as the tutorial and the trainer expect.

use burn::backend::NdArray;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use dp_dataset::{RandomDataset, RowBatcher, SyntheticClassification, SyntheticConfig, batch_of};

#[test]
fn random_dataset_is_seeded_and_standard_normal() {
    let a = RandomDataset::new(5, 100, 1);
    assert_eq!((a.len(), a.size()), (100, 5));
    assert_eq!(a.get(99).unwrap().len(), 5);
    assert!(a.get(100).is_none());
    assert_eq!(a.get(3), RandomDataset::new(5, 100, 1).get(3));
    assert_ne!(a.get(3), RandomDataset::new(5, 100, 2).get(3));
    let values: Vec<f32> = a.iter().flatten().collect();
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
    assert!(
        mean.abs() < 0.2 && (var - 1.0).abs() < 0.3,
        "mean {mean} var {var}"
    );
}

#[test]
fn the_tutorials_loader_gives_30_30_30_10_with_every_row_once() {
    let dataset = RandomDataset::new(5, 100, 42);
    let loader = DataLoaderBuilder::<NdArray, _, _>::new(RowBatcher)
        .batch_size(30)
        .shuffle(42)
        .build(dataset.clone());
    let batches: Vec<_> = loader.iter().collect();
    let rows: Vec<usize> = batches.iter().map(|b| b.dims()[0]).collect();
    assert_eq!(rows, [30, 30, 30, 10]);
    let mut seen: Vec<f32> = batches
        .into_iter()
        .flat_map(|b| b.into_data().to_vec::<f32>().unwrap())
        .collect();
    let mut all: Vec<f32> = dataset.iter().flatten().collect();
    assert_ne!(seen, all, "shuffled");
    seen.sort_by(f32::total_cmp);
    all.sort_by(f32::total_cmp);
    assert_eq!(seen, all, "every row exactly once");
}

#[test]
fn synthetic_classification_is_reproducible_and_labelled() {
    let config = SyntheticConfig::new()
        .with_train_size(200)
        .with_test_size(50)
        .with_classes(3);
    let a = SyntheticClassification::new(&config);
    let b = SyntheticClassification::new(&config);
    assert_eq!(a.train.get(17), b.train.get(17));
    assert_eq!(a.test.get(3), b.test.get(3));
    let other = SyntheticClassification::new(&config.clone().with_seed(config.seed + 1));
    assert_ne!(a.train.get(17), other.train.get(17), "the seed matters");
    assert_ne!(a.train.get(0), a.test.get(0));
    assert!(
        a.train
            .iter()
            .all(|item| item.label < 3 && item.features.len() == 32)
    );
    let batch = batch_of::<NdArray>(&a.train, &[0, 5, 9], &Default::default());
    assert_eq!(batch.inputs.dims(), [3, 32]);
    assert_eq!(
        batch.targets.into_data().to_vec::<i64>().unwrap(),
        [0, 5, 9].map(|i| a.train.get(i).unwrap().label as i64)
    );
}

#[test]
fn synthetic_config_round_trips_through_json() {
    use burn::config::Config;
    let config = SyntheticConfig::new().with_noise(0.5).with_seed(3);
    let back = SyntheticConfig::load_binary(config.to_string().as_bytes()).unwrap();
    assert_eq!(back, config);
}
