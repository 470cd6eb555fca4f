//! MNIST's IDX files: the four files as published, read whole into memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;

use super::DataError;
use crate::ImageItem;

/// Grayscale images and their labels from an IDX pair (`*-images-idx3-ubyte`,
/// `*-labels-idx1-ubyte`), held as bytes and scaled to `0..=1` when an item is taken.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    shape: [usize; 3],
    classes: usize,
}

/// MNIST (or any set in its format) from a folder holding `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each
/// either as is or gzipped as published (`.gz`). The `t10k` pair is the held-out set.
///
/// ```no_run
/// use burn::data::dataset::Dataset;
/// use dp_dataset::Mnist;
///
/// let mnist = Mnist::open("data/mnist")?;
/// assert_eq!((mnist.train.shape(), mnist.train.classes()), ([1, 28, 28], 10));
/// println!("{} training images, {} held out", mnist.train.len(), mnist.test.len());
/// # Ok::<(), dp_dataset::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The training images.
    pub train: IdxImages,
    /// The held-out images (`t10k`).
    pub test: IdxImages,
}

impl Mnist {
    /// Reads and checks the four files: magic numbers, sizes, as many labels as images, the
    /// held-out set's image size and labels those of the training set.
    pub fn open(folder: impl AsRef<Path>) -> Result<Self, DataError> {
        let folder = folder.as_ref();
        let train = IdxImages::open(
            &find(folder, "train-images-idx3-ubyte")?,
            &find(folder, "train-labels-idx1-ubyte")?,
            None,
        )?;
        let test = IdxImages::open(
            &find(folder, "t10k-images-idx3-ubyte")?,
            &find(folder, "t10k-labels-idx1-ubyte")?,
            Some(&train),
        )?;
        Ok(Self { train, test })
    }
}

impl IdxImages {
    /// Reads an images file and its labels file; with `like`, the images must have its size
    /// and the labels its classes.
    pub fn open(images: &Path, labels: &Path, like: Option<&IdxImages>) -> Result<Self, DataError> {
        let (image_dims, pixels) = read_idx(images, 3)?;
        let labels_path = labels;
        let (label_dims, labels) = read_idx(labels_path, 1)?;
        let [count, height, width] = [image_dims[0], image_dims[1], image_dims[2]];
        if label_dims[0] != count {
            return Err(DataError::invalid(
                labels_path,
                format!(
                    "{} labels for the {count} images of {}",
                    label_dims[0],
                    images.display()
                ),
            ));
        }
        if count == 0 {
            return Err(DataError::invalid(images, "it holds no image"));
        }
        let shape = [1, height, width];
        let classes = match like {
            Some(train) => {
                if train.shape != shape {
                    return Err(DataError::invalid(
                        images,
                        format!(
                            "its images are {height}x{width}, the training images {}x{}",
                            train.shape[1], train.shape[2]
                        ),
                    ));
                }
                train.classes
            }
            None => (usize::from(labels.iter().copied().max().unwrap_or(0)) + 1).max(2),
        };
        if let Some((i, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(DataError::LabelOutOfRange {
                path: labels_path.to_path_buf(),
                place: format!("item {i}"),
                label: i64::from(label),
                classes,
            });
        }
        Ok(Self {
            pixels,
            labels,
            shape,
            classes,
        })
    }

    /// Channels (1), height and width.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The number of classes: the training set's largest label plus one.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

impl Dataset<ImageItem> for IdxImages {
    fn get(&self, index: usize) -> Option<ImageItem> {
        let size = self.shape[1] * self.shape[2];
        let label = *self.labels.get(index)?;
        let pixels = self.pixels[index * size..(index + 1) * size]
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect();
        Some(ImageItem {
            pixels,
            label: usize::from(label),
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// `folder/name`, or `folder/name.gz`.
fn find(folder: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = folder.join(name);
    let gzipped = folder.join(format!("{name}.gz"));
    if plain.is_file() {
        return Ok(plain);
    }
    if gzipped.is_file() {
        return Ok(gzipped);
    }
    Err(DataError::Missing {
        path: plain,
        what: format!("an MNIST folder holds {name} (or {name}.gz)"),
    })
}

/// An IDX file of unsigned bytes with `dims` dimensions: its dimensions and its values.
fn read_idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut bytes = Vec::new();
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    let read = if gzipped {
        flate2::read::GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)
    };
    read.map_err(|e| DataError::io(path, e))?;
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(DataError::invalid(
            path,
            format!(
                "truncated: {} bytes, shorter than the {header}-byte header of an IDX file",
                bytes.len()
            ),
        ));
    }
    if bytes[..3] != [0, 0, 8] || usize::from(bytes[3]) != dims {
        return Err(DataError::invalid(
            path,
            format!(
                "not an IDX file of unsigned bytes with {dims} dimension{}: its magic number is \
                 {:02x?}, expected [00, 00, 08, {dims:02x}]",
                if dims == 1 { "" } else { "s" },
                &bytes[..4]
            ),
        ));
    }
    let shape: Vec<usize> = bytes[4..header]
        .chunks(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let Some(expected) = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
        return Err(DataError::invalid(
            path,
            format!("its header says {shape:?}, more values than memory can address"),
        ));
    };
    let found = bytes.len() - header;
    if found != expected {
        return Err(DataError::invalid(
            path,
            format!(
                "{}: its header says {shape:?}, {expected} values, but it holds {found}",
                if found < expected {
                    "truncated"
                } else {
                    "too long"
                }
            ),
        ));
    }
    bytes.drain(..header);
    Ok((shape, bytes))
}
