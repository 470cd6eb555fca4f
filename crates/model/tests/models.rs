//! The models report, learn and load as the examples rely on.

use burn::backend::NdArray;
use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};
use dp_model::{Classifier, MlpConfig, TutorialModelConfig};
use std::sync::Mutex;

type B = NdArray;

#[test]
fn the_tutorial_model_reports_every_call_of_any_rank() {
    let device = Default::default();
    let model = TutorialModelConfig::new()
        .with_input_size(4)
        .with_output_size(3)
        .init::<B>(&device);
    let seen = Mutex::new(Vec::new());
    let observer = |i: &[usize], o: &[usize]| seen.lock().unwrap().push((i.to_vec(), o.to_vec()));
    model.forward(Tensor::<B, 2>::zeros([7, 4], &device), &observer);
    model.forward(Tensor::<B, 3>::zeros([2, 5, 4], &device), &observer);
    model.forward(Tensor::<B, 2>::zeros([1, 4], &device), &());
    assert_eq!(
        seen.into_inner().unwrap(),
        [(vec![7, 4], vec![7, 3]), (vec![2, 5, 4], vec![2, 5, 3])]
    );
}

#[test]
fn mlp_sizes_come_from_its_config_which_round_trips_through_a_json_file() {
    let config = MlpConfig::new(6, vec![12, 8], 4);
    let path = std::env::temp_dir().join(format!("dp-model-mlp-{}.json", std::process::id()));
    config.save(&path).unwrap();
    let loaded = MlpConfig::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded, config);

    let device = Default::default();
    let model = loaded.init::<B>(&device);
    let x = Tensor::<B, 2>::ones([5, 6], &device);
    assert_eq!(model.forward(x.clone()).dims(), [5, 4]);
    let targets =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 0], [5]), &device);
    let loss: f32 = model.loss(x.clone(), targets.clone()).into_scalar();
    assert!(loss.is_finite() && loss > 0.0);
    assert!(model.correct(x.clone(), targets) <= 5);
    // `correct` counts the rows whose highest logit is the target: all of them for the
    // model's own predictions, none for a class that is never the highest.
    let predicted = model.forward(x.clone()).argmax(1).squeeze_dim::<1>(1);
    assert_eq!(model.correct(x.clone(), predicted.clone()), 5);
    assert_eq!(model.correct(x, (predicted + 1).remainder_scalar(4)), 0);
}
