//! Small data sets written to disk in each format `train --data` reads.

use burn::data::dataset::Dataset;
use dp_dataset::{
    ImageConfig, ImageItem, SyntheticClassification, SyntheticConfig, SyntheticImages,
    write_image_folder,
};
use std::path::{Path, PathBuf};

/// The synthetic images' values mostly lie in -3..3.
const RANGE: [f32; 2] = [-3.0, 3.0];

fn images(channels: usize, train: usize, test: usize) -> SyntheticImages {
    sized_images(channels, 8, train, test)
}

fn sized_images(channels: usize, size: usize, train: usize, test: usize) -> SyntheticImages {
    SyntheticImages::new(
        &ImageConfig::new()
            .with_size(size)
            .with_channels(channels)
            .with_train_size(train)
            .with_test_size(test)
            .with_noise(0.5),
    )
}

fn items(set: &impl Dataset<ImageItem>) -> Vec<ImageItem> {
    set.iter().collect()
}

/// `dir/train` and `dir/test` image folders of 8x8 images in 4 classes (noise 0.5).
pub fn image_folders(dir: &Path, channels: usize, train: usize, test: usize) -> [PathBuf; 2] {
    sized_image_folders(dir, channels, 8, train, test)
}

/// As [`image_folders`], of `size`x`size` images.
pub fn sized_image_folders(
    dir: &Path,
    channels: usize,
    size: usize,
    train: usize,
    test: usize,
) -> [PathBuf; 2] {
    let data = sized_images(channels, size, train, test);
    let [train_dir, test_dir] = [dir.join("train"), dir.join("test")];
    let shape = [channels, size, size];
    write_image_folder(&train_dir, &items(&data.train), shape, RANGE).unwrap();
    write_image_folder(&test_dir, &items(&data.test), shape, RANGE).unwrap();
    [train_dir, test_dir]
}

fn idx(path: &Path, dims: &[u32], values: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(values);
    std::fs::write(path, bytes).unwrap();
}

/// A folder holding MNIST's four IDX files, of 8x8 images in 4 classes.
pub fn mnist(dir: &Path, train: usize, test: usize) -> PathBuf {
    let data = images(1, train, test);
    let folder = dir.join("mnist");
    std::fs::create_dir_all(&folder).unwrap();
    for (name, set) in [("train", &data.train), ("t10k", &data.test)] {
        let items = items(set);
        let pixels: Vec<u8> = items
            .iter()
            .flat_map(|i| i.pixels.iter())
            .map(|v| ((v - RANGE[0]) / (RANGE[1] - RANGE[0]) * 255.0).clamp(0.0, 255.0) as u8)
            .collect();
        let labels: Vec<u8> = items.iter().map(|i| i.label as u8).collect();
        let n = items.len() as u32;
        idx(
            &folder.join(format!("{name}-images-idx3-ubyte")),
            &[n, 8, 8],
            &pixels,
        );
        idx(
            &folder.join(format!("{name}-labels-idx1-ubyte")),
            &[n],
            &labels,
        );
    }
    folder
}

/// `dir/train.csv` and `dir/test.csv`: 8 features, then a label among 3 classes, with a
/// header.
pub fn csv(dir: &Path, train: usize, test: usize) -> [PathBuf; 2] {
    let data = SyntheticClassification::new(
        &SyntheticConfig::new()
            .with_features(8)
            .with_classes(3)
            .with_train_size(train)
            .with_test_size(test)
            .with_noise(0.5),
    );
    let write = |name: &str, set: &dyn Dataset<dp_dataset::ClassificationItem>| {
        let mut text = String::from("f0,f1,f2,f3,f4,f5,f6,f7,label\n");
        for item in (0..set.len()).filter_map(|i| set.get(i)) {
            for value in &item.features {
                text.push_str(&format!("{value},"));
            }
            text.push_str(&format!("{}\n", item.label));
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    [
        write("train.csv", &data.train),
        write("test.csv", &data.test),
    ]
}

/// Cuts the end off the first image of `folder/class-0`, past its header: the folder still
/// opens, and the image fails when its batch is decoded. Returns its path.
pub fn damage_an_image(folder: &Path) -> PathBuf {
    let path = std::fs::read_dir(folder.join("class-0"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let png = std::fs::read(&path).unwrap();
    std::fs::write(&path, &png[..png.len() - 30]).unwrap();
    path
}
