//! Labelled data read from files: an image folder (one subfolder per class), MNIST's IDX files,
//! and CSV rows. Every problem is a [`DataError`] naming the file and what is wrong.

mod csv_rows;
mod error;
mod idx;
mod image_folder;

pub use csv_rows::CsvRows;
pub use error::DataError;
pub use idx::{IdxImages, Mnist};
pub use image_folder::{ImageFile, ImageFileBatcher, ImageFolder, write_image_folder};
