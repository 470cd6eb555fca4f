//! What can be wrong with data on disk.

use std::path::PathBuf;

/// Why data on disk cannot be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file a format needs is not there.
    #[error("{path} is missing: {what}")]
    Missing {
        /// The file or folder expected.
        path: PathBuf,
        /// What it should hold.
        what: String,
    },
    /// The file holds something else than the format says.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where in the file.
        problem: String,
    },
    /// An image cannot be decoded.
    #[error("cannot decode the image {path}: {message}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// Two images of one set differ in size.
    #[error(
        "{path} is {}x{} (height x width) but {first} is {}x{}: every image of a set must \
         have the same size",
        found[0], found[1], expected[0], expected[1]
    )]
    ImageSize {
        /// The image that differs.
        path: PathBuf,
        /// Its height and width.
        found: [usize; 2],
        /// The set's first image, whose size the others must have.
        first: PathBuf,
        /// The first image's height and width.
        expected: [usize; 2],
    },
    /// A label is not one of the classes.
    #[error("{path}: {place} has label {label}, outside the {classes} classes 0..{classes}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Where in the file ("line 12", "item 3").
        place: String,
        /// The label found.
        label: i64,
        /// The classes of the training data.
        classes: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
