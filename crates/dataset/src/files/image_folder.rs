//! An image folder: one subfolder per class, PNG or JPEG images, decoded when a batch is made.

use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use image::ImageDecoder;

use super::DataError;
use crate::{ImageBatcher, ImageItem};

/// Images in `root/<class>/<image>.png|jpg|jpeg`, classes in the order of their folders' names,
/// read from disk each time a batch is made (the folder's files are listed, and each image's
/// header read, once, when it is opened).
///
/// Every image must have the same height and width. Grayscale images have one channel; a
/// folder holding any colour image has three (grayscale images are converted, alpha dropped).
/// Files with other extensions are not images of the set and are left out.
///
/// ```no_run
/// use burn::backend::NdArray;
/// use dp_dataset::{ImageFileBatcher, ImageFolder, ShardedLoader};
///
/// let train = ImageFolder::open("data/train")?;
/// let test = ImageFolder::open_like("data/test", &train)?; // the same classes and size
/// println!("{} classes, images {:?}", train.classes().len(), train.shape());
/// let batcher = train.batcher();
/// let loader = ShardedLoader::<NdArray, _, _>::new(train, batcher, Default::default(), 64)
///     .with_prefetch(2)
///     .with_threads(2);
/// for batch in loader.epoch(0) {
///     let (images, labels) = batch??; // decoding errors name the file
///     assert_eq!(images.dims()[0], labels.dims()[0]);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, usize)>,
    shape: [usize; 3],
}

/// One image of an [`ImageFolder`], not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFile {
    /// The file.
    pub path: PathBuf,
    /// Its class.
    pub label: usize,
    /// The channels, height and width every image of its set has.
    pub shape: [usize; 3],
}

impl ImageFolder {
    /// Lists `root`'s class folders and images, reading each image's header.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref();
        let classes = class_folders(root)?;
        if classes.is_empty() {
            return Err(DataError::Missing {
                path: root.to_path_buf(),
                what: "class folders (one subfolder per class, holding its PNG or JPEG images)"
                    .into(),
            });
        }
        Self::read(root, classes, None)
    }

    /// A held-out folder for a model trained on `train`: the same class folders, images of the
    /// same size, converted to `train`'s channels.
    pub fn open_like(root: impl AsRef<Path>, train: &ImageFolder) -> Result<Self, DataError> {
        let root = root.as_ref();
        let found = class_folders(root)?;
        let missing: Vec<&String> = train
            .classes
            .iter()
            .filter(|c| !found.contains(c))
            .collect();
        let extra: Vec<&String> = found
            .iter()
            .filter(|c| !train.classes.contains(c))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(DataError::invalid(
                root,
                format!(
                    "its class folders differ from the training set's {}: missing {missing:?}, \
                     not in the training set {extra:?}",
                    train.root.display()
                ),
            ));
        }
        Self::read(root, train.classes.clone(), Some(train))
    }

    fn read(root: &Path, classes: Vec<String>, like: Option<&Self>) -> Result<Self, DataError> {
        let mut files = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let folder = root.join(class);
            let mut images: Vec<PathBuf> = std::fs::read_dir(&folder)
                .map_err(|e| DataError::io(&folder, e))?
                .map(|entry| {
                    entry
                        .map(|e| e.path())
                        .map_err(|e| DataError::io(&folder, e))
                })
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|path| path.is_file() && is_image(path))
                .collect();
            if images.is_empty() {
                return Err(DataError::Missing {
                    path: folder,
                    what: format!("the images of class {class:?} (PNG or JPEG files)"),
                });
            }
            images.sort();
            files.extend(images.into_iter().map(|path| (path, label)));
        }
        // Every header is read now, so that a bad file or size stops the run before it trains.
        let mut color = false;
        let mut first: Option<(PathBuf, [usize; 2])> =
            like.map(|train| (train.files[0].0.clone(), [train.shape[1], train.shape[2]]));
        for (path, _) in &files {
            let (size, has_color) = header(path)?;
            color |= has_color;
            match &first {
                None => first = Some((path.clone(), size)),
                Some((first, expected)) if *expected != size => {
                    return Err(DataError::ImageSize {
                        path: path.clone(),
                        found: size,
                        first: first.clone(),
                        expected: *expected,
                    });
                }
                Some(_) => {}
            }
        }
        let [height, width] = first.map(|(_, size)| size).unwrap_or_default();
        let channels = match like {
            Some(train) => train.shape[0],
            None if color => 3,
            None => 1,
        };
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            files,
            shape: [channels, height, width],
        })
    }

    /// The classes, in label order (the folders' names, sorted).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Channels, height and width of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The batcher that decodes this set's files, their pixels in `0..=1`
    /// ([`ImageFileBatcher::with_normalization`] to centre them).
    pub fn batcher(&self) -> ImageFileBatcher {
        ImageFileBatcher {
            images: ImageBatcher::new(self.shape),
        }
    }

    /// Decodes image `index`.
    pub fn decode(&self, index: usize) -> Option<Result<ImageItem, DataError>> {
        self.get(index).map(|file| file.decode())
    }

    /// Every image decoded, in order: the set held in memory.
    pub fn decode_all(&self) -> Result<Vec<ImageItem>, DataError> {
        (0..self.len())
            .map(|i| self.decode(i).expect("an index below the length"))
            .collect()
    }
}

impl Dataset<ImageFile> for ImageFolder {
    fn get(&self, index: usize) -> Option<ImageFile> {
        self.files.get(index).map(|(path, label)| ImageFile {
            path: path.clone(),
            label: *label,
            shape: self.shape,
        })
    }

    fn len(&self) -> usize {
        self.files.len()
    }
}

impl ImageFile {
    /// The image's pixels scaled to `0..=1`, channel, row, column order.
    pub fn decode(&self) -> Result<ImageItem, DataError> {
        // By content, as the header was read when the set was opened (`image::open` goes by
        // the extension: a JPEG named .png would pass the opening and fail here).
        let image = image::ImageReader::open(&self.path)
            .map_err(|e| DataError::io(&self.path, e))?
            .with_guessed_format()
            .map_err(|e| DataError::io(&self.path, e))?
            .decode()
            .map_err(|e| DataError::Image {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let [channels, height, width] = self.shape;
        if [image.height() as usize, image.width() as usize] != [height, width] {
            return Err(DataError::invalid(
                &self.path,
                format!(
                    "the image is now {}x{}, not the {height}x{width} it was when its set was \
                     opened",
                    image.height(),
                    image.width()
                ),
            ));
        }
        let interleaved = match channels {
            1 => image.into_luma8().into_raw(),
            _ => image.into_rgb8().into_raw(),
        };
        let plane = height * width;
        let mut pixels = vec![0.0; channels * plane];
        for (i, value) in interleaved.iter().enumerate() {
            pixels[(i % channels) * plane + i / channels] = f32::from(*value) / 255.0;
        }
        Ok(ImageItem {
            pixels,
            label: self.label,
        })
    }
}

/// Decodes an [`ImageFolder`]'s files into `[rows, channels, height, width]` images scaled to
/// `0..=1` and their classes `[rows]`, or says which file could not be decoded
/// ([`ImageFolder::batcher`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageFileBatcher {
    images: ImageBatcher,
}

impl ImageFileBatcher {
    /// Maps every pixel `p` (in `0..=1`) to `(p - mean) / std`.
    pub fn with_normalization(self, mean: f32, std: f32) -> Self {
        Self {
            images: self.images.with_normalization(mean, std),
        }
    }
}

type Labelled<B> = (Tensor<B, 4>, Tensor<B, 1, Int>);

impl<B: Backend> Batcher<B, ImageFile, Result<Labelled<B>, DataError>> for ImageFileBatcher {
    fn batch(&self, files: Vec<ImageFile>, device: &B::Device) -> Result<Labelled<B>, DataError> {
        let items = files
            .iter()
            .map(ImageFile::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.images.batch(items, device))
    }
}

fn class_folders(root: &Path) -> Result<Vec<String>, DataError> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let path = entry.map_err(|e| DataError::io(root, e))?.path();
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                DataError::invalid(&path, "a class folder's name must be valid UTF-8")
            })?;
            classes.push(name.to_string());
        }
    }
    classes.sort();
    Ok(classes)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The image's height and width, and whether it has colour, from its header.
fn header(path: &Path) -> Result<([usize; 2], bool), DataError> {
    let bad = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let decoder = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .into_decoder()
        .map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    Ok((
        [height as usize, width as usize],
        decoder.color_type().has_color(),
    ))
}

/// Writes `items` (images of `shape`: channels 1 or 3, height, width) as an image folder
/// [`ImageFolder::open`] reads: `root/class-<label>/<index>.png`, values mapped from `low..=high`
/// to `0..=255` (clamped). For tests and benchmarks of reading images from disk.
pub fn write_image_folder(
    root: &Path,
    items: &[ImageItem],
    shape: [usize; 3],
    [low, high]: [f32; 2],
) -> Result<(), DataError> {
    let [channels, height, width] = shape;
    let color = match channels {
        1 => image::ColorType::L8,
        3 => image::ColorType::Rgb8,
        _ => {
            return Err(DataError::invalid(
                root,
                format!("PNG images have 1 or 3 channels, not {channels}"),
            ));
        }
    };
    let plane = height * width;
    for (index, item) in items.iter().enumerate() {
        let folder = root.join(format!("class-{}", item.label));
        std::fs::create_dir_all(&folder).map_err(|e| DataError::io(&folder, e))?;
        let bytes: Vec<u8> = (0..channels * plane)
            .map(|i| {
                let value = item.pixels[(i % channels) * plane + i / channels];
                ((value - low) / (high - low) * 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8
            })
            .collect();
        let path = folder.join(format!("{index}.png"));
        image::save_buffer(&path, &bytes, width as u32, height as u32, color).map_err(|e| {
            DataError::Image {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}
