//! Data on disk: image folders, MNIST's IDX files and CSV rows, read right when good, and a
//! `DataError` naming the file and the problem when not.

use std::io::Write;
use std::path::Path;

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use dp_dataset::{CsvRows, DataError, ImageFolder, Mnist};

fn gray(path: &Path, size: [u32; 2], seed: u8) {
    let pixels: Vec<u8> = (0..size[0] * size[1])
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    image::save_buffer(path, &pixels, size[1], size[0], image::ColorType::L8).unwrap();
}

fn rgb(path: &Path, size: [u32; 2]) {
    let pixels: Vec<u8> = (0..3 * size[0] * size[1]).map(|i| (i * 5) as u8).collect();
    image::save_buffer(path, &pixels, size[1], size[0], image::ColorType::Rgb8).unwrap();
}

fn folder(root: &Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            gray(
                &root.join(class).join(format!("{i}.png")),
                [4, 6],
                (c * 10 + i) as u8,
            );
        }
    }
}

fn message(error: DataError) -> String {
    error.to_string()
}

#[test]
fn an_image_folder_gives_its_classes_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["cat", "ant"], 3);
    std::fs::write(dir.path().join("ant").join("notes.txt"), "not an image").unwrap();
    let set = ImageFolder::open(dir.path()).unwrap();
    assert_eq!(set.classes(), ["ant", "cat"]);
    assert_eq!((set.len(), set.shape()), (6, [1, 4, 6]));
    let item = set.decode(4).unwrap().unwrap();
    assert_eq!(item.label, 1);
    // cat/1.png: seed 1, pixel i is 7 i + 1.
    assert_eq!(item.pixels[..3], [1.0 / 255.0, 8.0 / 255.0, 15.0 / 255.0]);
    let (images, labels) = set
        .batcher()
        .batch(
            vec![set.get(0).unwrap(), set.get(5).unwrap()],
            &Default::default(),
        )
        .map(|(x, y): (burn::tensor::Tensor<NdArray, 4>, _)| (x, y))
        .unwrap();
    assert_eq!(images.dims(), [2, 1, 4, 6]);
    assert_eq!(labels.into_data().to_vec::<i64>().unwrap(), [0, 1]);

    // A colour image makes every image of the set three channels, gray ones repeated.
    rgb(&dir.path().join("cat").join("colour.jpg"), [4, 6]);
    let set = ImageFolder::open(dir.path()).unwrap();
    assert_eq!(set.shape(), [3, 4, 6]);
    let gray_item = set.decode(0).unwrap().unwrap();
    assert_eq!(gray_item.pixels.len(), 3 * 24);
    assert_eq!(gray_item.pixels[..24], gray_item.pixels[24..48]);
    // The held-out folder takes the training set's channels.
    let held_out = tempfile::tempdir().unwrap();
    folder(held_out.path(), &["ant", "cat"], 1);
    let test = ImageFolder::open_like(held_out.path(), &set).unwrap();
    assert_eq!(test.shape(), [3, 4, 6]);
}

#[test]
fn bad_image_folders_are_errors_naming_the_file() {
    let empty = tempfile::tempdir().unwrap();
    assert!(message(ImageFolder::open(empty.path()).unwrap_err()).contains("class folders"));

    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), &["a", "b"], 2);
    let train = ImageFolder::open(dir.path()).unwrap();

    let missing = tempfile::tempdir().unwrap();
    folder(missing.path(), &["a"], 1);
    let error = message(ImageFolder::open_like(missing.path(), &train).unwrap_err());
    assert!(error.contains("missing [\"b\"]"), "{error}");

    std::fs::create_dir(dir.path().join("c")).unwrap();
    let error = message(ImageFolder::open(dir.path()).unwrap_err());
    assert!(
        error.contains("/c") && error.contains("images of class \"c\""),
        "{error}"
    );
    std::fs::remove_dir(dir.path().join("c")).unwrap();

    let bad = dir.path().join("b").join("broken.png");
    std::fs::write(&bad, b"\x89PNG not really").unwrap();
    let error = message(ImageFolder::open(dir.path()).unwrap_err());
    assert!(error.contains("broken.png"), "{error}");
    std::fs::remove_file(&bad).unwrap();

    // A JPEG named .png is read by its content, when opened and when decoded.
    let misnamed = dir.path().join("b").join("photo.png");
    image::save_buffer_with_format(
        &misnamed,
        &[128u8; 24],
        6,
        4,
        image::ColorType::L8,
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let set = ImageFolder::open(dir.path()).unwrap();
    let index = (0..set.len())
        .find(|&i| set.get(i).unwrap().path == misnamed)
        .unwrap();
    assert_eq!(set.decode(index).unwrap().unwrap().pixels.len(), 24);
    std::fs::remove_file(&misnamed).unwrap();

    gray(&dir.path().join("b").join("big.png"), [5, 6], 0);
    let error = message(ImageFolder::open(dir.path()).unwrap_err());
    assert!(
        error.contains("big.png is 5x6") && error.contains("4x6"),
        "{error}"
    );
    std::fs::remove_file(dir.path().join("b").join("big.png")).unwrap();

    // A file whose header is good but whose data is cut: found when its batch is made.
    let set = ImageFolder::open(dir.path()).unwrap();
    let path = dir.path().join("b").join("1.png");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    let error = set
        .batcher()
        .batch(
            vec![set.get(0).unwrap(), set.get(3).unwrap()],
            &Default::default(),
        )
        .map(|(x, _): (burn::tensor::Tensor<NdArray, 4>, _)| x.dims())
        .unwrap_err();
    assert!(message(error).contains("1.png"));
}

fn idx(path: &Path, dims: &[u32], values: &[u8], gzip: bool) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(values);
    if gzip {
        let file = std::fs::File::create(format!("{}.gz", path.display())).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(&bytes).unwrap();
        encoder.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

fn mnist(dir: &Path, gzip: bool, test_labels: &[u8]) {
    let train: Vec<u8> = (0..5 * 9).map(|i| i as u8).collect();
    idx(
        &dir.join("train-images-idx3-ubyte"),
        &[5, 3, 3],
        &train,
        gzip,
    );
    idx(
        &dir.join("train-labels-idx1-ubyte"),
        &[5],
        &[0, 1, 2, 1, 0],
        gzip,
    );
    idx(
        &dir.join("t10k-images-idx3-ubyte"),
        &[2, 3, 3],
        &train[..18],
        gzip,
    );
    idx(&dir.join("t10k-labels-idx1-ubyte"), &[2], test_labels, gzip);
}

#[test]
fn mnist_files_as_published_plain_or_gzipped() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        mnist(dir.path(), gzip, &[2, 0]);
        let set = Mnist::open(dir.path()).unwrap();
        assert_eq!((set.train.len(), set.test.len()), (5, 2));
        assert_eq!((set.train.shape(), set.train.classes()), ([1, 3, 3], 3));
        let item = set.train.get(1).unwrap();
        assert_eq!((item.label, item.pixels[0]), (1, 9.0 / 255.0));
    }
}

#[test]
fn bad_mnist_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    mnist(dir.path(), false, &[2, 3]);
    let error = message(Mnist::open(dir.path()).unwrap_err());
    assert!(
        error.contains("t10k-labels-idx1-ubyte") && error.contains("label 3"),
        "{error}"
    );

    mnist(dir.path(), false, &[2, 0]);
    let images = dir.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 4]).unwrap();
    let error = message(Mnist::open(dir.path()).unwrap_err());
    assert!(
        error.contains("train-images-idx3-ubyte: truncated") && error.contains("41"),
        "{error}"
    );
    std::fs::write(&images, &bytes[..10]).unwrap();
    assert!(message(Mnist::open(dir.path()).unwrap_err()).contains("16-byte header"));

    let labels = dir.path().join("train-labels-idx1-ubyte");
    idx(&labels, &[4], &[0, 1, 2, 1], false);
    std::fs::write(&images, &bytes).unwrap();
    let error = message(Mnist::open(dir.path()).unwrap_err());
    assert!(error.contains("4 labels for the 5 images"), "{error}");

    idx(&labels, &[1, 5], &[0, 1, 2, 1, 0], false);
    let error = message(Mnist::open(dir.path()).unwrap_err());
    assert!(error.contains("magic number"), "{error}");

    std::fs::remove_file(&labels).unwrap();
    let error = message(Mnist::open(dir.path()).unwrap_err());
    assert!(
        error.contains("train-labels-idx1-ubyte is missing"),
        "{error}"
    );
}

#[test]
fn csv_rows_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let train = CsvRows::open(write("train.csv", "a,b,label\n1,2,0\n3,4.5,3\n")).unwrap();
    assert_eq!((train.features(), train.classes(), train.len()), (2, 4, 2));
    assert_eq!(train.get(1).unwrap().features, [3.0, 4.5]);
    let no_header = CsvRows::open(write("plain.csv", "1,2,0\n3,4,1\n")).unwrap();
    assert_eq!(no_header.len(), 2);
    // A spreadsheet's byte-order mark does not turn the first row into a header.
    let bom = CsvRows::open(write("bom.csv", "\u{feff}1,2,0\n3,4,1\n")).unwrap();
    assert_eq!((bom.len(), bom.get(0).unwrap().features[0]), (2, 1.0));

    let cases = [
        (
            "fields.csv",
            "1,2,0\n3,4\n",
            "line 2 has 2 fields, expected 3",
        ),
        (
            "number.csv",
            "1,2,0\n3,x,1\n",
            "line 2, field 2: \"x\" is not a finite number",
        ),
        ("nan.csv", "1,NaN,0\n", "line 1, field 2"),
        (
            "label.csv",
            "1,2,0.5\n",
            "line 1: the label (the last field) is 0.5",
        ),
        ("negative.csv", "1,2,-1\n", "is -1, not an integer from 0"),
        ("empty.csv", "a,b,label\n", "holds no row"),
        ("one.csv", "1\n", "no feature"),
        // A first line with a number in it is a row, not a header to skip.
        (
            "typo.csv",
            "1,x,0\n3,4,1\n",
            "line 1, field 2: \"x\" is not a finite number",
        ),
        (
            "huge.csv",
            "1,2,4000000000\n",
            "not an integer from 0 to 1000000",
        ),
    ];
    for (name, text, expected) in cases {
        let error = message(CsvRows::open(write(name, text)).unwrap_err());
        assert!(
            error.contains(name) && error.contains(expected),
            "{name}: {error}"
        );
    }
    let error =
        message(CsvRows::open_like(write("test.csv", "1,2,0\n1,1,4\n"), &train).unwrap_err());
    assert!(
        error.contains("test.csv: line 2 has label 4, outside the 4 classes"),
        "{error}"
    );
    let error = message(CsvRows::open_like(write("wide.csv", "1,2,3,0\n"), &train).unwrap_err());
    assert!(error.contains("line 1 has 4 fields, expected 3"), "{error}");
    let error = message(CsvRows::open(dir.path().join("absent.csv")).unwrap_err());
    assert!(
        error.contains("cannot read") && error.contains("absent.csv"),
        "{error}"
    );
}
