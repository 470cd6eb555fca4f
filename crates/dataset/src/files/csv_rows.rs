//! CSV rows: features, then an integer label.

use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;

use super::DataError;
use crate::ClassificationItem;

/// The largest label taken: a classifier has one output per class up to its largest label, so
/// a stray large number would build a model of that many outputs.
const MAX_LABEL: usize = 1_000_000;

/// Rows of a CSV file, each its features then its class (an integer from 0), read whole into
/// memory. A first line none of whose fields is a number is a header and is skipped.
///
/// ```
/// use burn::data::dataset::Dataset;
/// use dp_dataset::CsvRows;
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("train.csv"), "x,y,label\n0.5,1,0\n2,-1.5,2\n")?;
/// std::fs::write(dir.path().join("test.csv"), "1,1,1\n")?;
/// let train = CsvRows::open(dir.path().join("train.csv"))?;
/// let test = CsvRows::open_like(dir.path().join("test.csv"), &train)?;
/// assert_eq!((train.features(), train.classes(), train.len()), (2, 3, 2));
/// assert_eq!(test.get(0).unwrap().features, [1.0, 1.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CsvRows {
    path: PathBuf,
    rows: Vec<ClassificationItem>,
    features: usize,
    classes: usize,
}

impl CsvRows {
    /// Reads `path`; the classes are its largest label plus one.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        Self::read(path.as_ref(), None)
    }

    /// A held-out file for a model trained on `train`: as many features, labels among its
    /// classes.
    pub fn open_like(path: impl AsRef<Path>, train: &CsvRows) -> Result<Self, DataError> {
        Self::read(path.as_ref(), Some(train))
    }

    fn read(path: &Path, like: Option<&CsvRows>) -> Result<Self, DataError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| csv_error(path, e))?;
        let mut rows = Vec::new();
        let mut fields = like.map(|train| train.features + 1);
        let mut labels = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| csv_error(path, e))?;
            let line = record.position().map_or(i as u64 + 1, |p| p.line());
            // A spreadsheet's byte-order mark is not part of the first field.
            let field = |k: usize| {
                let text = &record[k];
                if i == 0 && k == 0 {
                    text.trim_start_matches('\u{feff}').trim()
                } else {
                    text
                }
            };
            let numbers: Vec<Result<f64, _>> =
                (0..record.len()).map(|k| field(k).parse::<f64>()).collect();
            // A header names its fields: no number among them. A first line with some numbers
            // is a row, and a bad field in it an error.
            if i == 0 && numbers.iter().all(Result::is_err) {
                // A header; it still says how many fields a row has.
                fields = fields.or(Some(record.len()));
                if fields != Some(record.len()) {
                    return Err(DataError::invalid(
                        path,
                        format!(
                            "line {line} has {} fields, the training rows {}",
                            record.len(),
                            fields.unwrap_or_default()
                        ),
                    ));
                }
                continue;
            }
            let expected = *fields.get_or_insert(record.len());
            if record.len() != expected {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "line {line} has {} fields, expected {expected} (features, then a label)",
                        record.len()
                    ),
                ));
            }
            if expected < 2 {
                return Err(DataError::invalid(
                    path,
                    format!("line {line} has no feature: a row is features, then a label"),
                ));
            }
            let mut values = Vec::with_capacity(expected);
            for (k, number) in numbers.into_iter().enumerate() {
                let value = number.ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    DataError::invalid(
                        path,
                        format!(
                            "line {line}, field {}: {:?} is not a finite number",
                            k + 1,
                            field(k)
                        ),
                    )
                })?;
                values.push(value);
            }
            let label = values.pop().unwrap_or_default();
            if label.fract() != 0.0 || label < 0.0 || label > MAX_LABEL as f64 {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "line {line}: the label (the last field) is {label}, not an integer \
                         from 0 to {MAX_LABEL}"
                    ),
                ));
            }
            labels.push((line, label as usize));
            rows.push(ClassificationItem {
                features: values.into_iter().map(|v| v as f32).collect(),
                label: label as usize,
            });
        }
        let Some(fields) = fields.filter(|_| !rows.is_empty()) else {
            return Err(DataError::invalid(path, "it holds no row"));
        };
        let classes = match like {
            Some(train) => train.classes,
            None => (labels.iter().map(|&(_, l)| l).max().unwrap_or(0) + 1).max(2),
        };
        if let Some(&(line, label)) = labels.iter().find(|&&(_, l)| l >= classes) {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                place: format!("line {line}"),
                label: label as i64,
                classes,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            rows,
            features: fields - 1,
            classes,
        })
    }

    /// Features per row.
    pub fn features(&self) -> usize {
        self.features
    }

    /// The number of classes: the training file's largest label plus one.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dataset<ClassificationItem> for CsvRows {
    fn get(&self, index: usize) -> Option<ClassificationItem> {
        self.rows.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.rows.len()
    }
}

fn csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map(|p| p.line());
    match error.into_kind() {
        csv::ErrorKind::Io(e) => DataError::io(path, e),
        kind => DataError::invalid(
            path,
            match line {
                Some(line) => format!("line {line}: {kind:?}"),
                None => format!("{kind:?}"),
            },
        ),
    }
}
