//! Checkpoints that a crash never leaves half-written and that a corrupted file cannot pass for.
//!
//! Each epoch is written to a hidden temporary folder, every file and the folder flushed to the
//! disk (`fsync`), renamed to `epoch-NNNN`, and only then named by the `latest` file (itself
//! written to a temporary file, flushed and renamed). A crash at any point leaves `latest`
//! naming a complete checkpoint. `checksums.json` holds each file's SHA-256, checked before
//! anything is loaded. A write that fails (a full disk) removes what it wrote that `latest`
//! does not name, and says which checkpoint is still the latest.

use crate::config::TrainConfig;
use crate::report::EpochReport;
use anyhow::Context;
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::lr_scheduler::composed::ComposedLrScheduler;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const LATEST: &str = "latest";
const CHECKSUMS: &str = "checksums.json";
const MODEL: &str = "model.mpk";
const OPTIMIZER: &str = "optimizer.mpk";
const STATE: &str = "state.json";
/// The learning-rate scheduler's state (absent from checkpoints written before schedules).
const SCHEDULER: &str = "scheduler.mpk";

/// What a checkpoint records besides the weights and the optimizer state.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub config: TrainConfig,
    /// Optimizer steps taken.
    pub steps: usize,
    pub history: Vec<EpochReport>,
    /// Ranks that trained up to here. A run resumes at any number: the global batches do not
    /// depend on it, and the optimizer state is whole (gathered on rank 0 when sharded).
    #[serde(default = "one")]
    pub world_size: usize,
    /// The optimizer steps the learning-rate schedule lasts, as the run's first start counted
    /// them: a resumed run follows the same schedule whatever its epochs.
    #[serde(default)]
    pub schedule_steps: Option<usize>,
}

fn one() -> usize {
    1
}

impl State {
    /// Epochs completed: one report each.
    pub fn epoch(&self) -> usize {
        self.history.len()
    }
}

/// A checkpoint read back.
pub struct Loaded<M, O> {
    pub model: M,
    pub optimizer: O,
    pub state: State,
    pub dir: PathBuf,
    /// The scheduler's state, checked against its checksum but not yet read (`None` in a
    /// checkpoint written before schedules).
    pub scheduler: Option<Vec<u8>>,
}

/// `scheduler` with the state a checkpoint saved (`bytes`).
pub fn load_scheduler<B: AutodiffBackend>(
    scheduler: ComposedLrScheduler,
    bytes: Vec<u8>,
    device: &B::Device,
) -> anyhow::Result<ComposedLrScheduler> {
    let record = Recorder::<B>::load(&recorder(), bytes, device)
        .context("cannot load the learning-rate scheduler's state")?;
    Ok(scheduler.load_record::<B>(record))
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` and flushes them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes a folder's entries (a file created or renamed in it) to the disk.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// The folder the latest complete checkpoint in `out` lives in, if there is one.
pub fn latest(out: &Path) -> anyhow::Result<Option<PathBuf>> {
    match fs::read_to_string(out.join(LATEST)) {
        Ok(name) => Ok(Some(out.join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", out.join(LATEST).display())),
    }
}

/// Writes a checkpoint for `state.epoch()` and makes it the latest; returns its folder. On a
/// failure what it wrote is removed (unless `latest` already names it) and the error says
/// which checkpoint is intact.
pub fn save<B, M, O>(
    out: &Path,
    model: &M,
    optimizer: O::Record,
    scheduler: &ComposedLrScheduler,
    state: &State,
) -> anyhow::Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let name = format!("epoch-{:04}", state.epoch());
    let tmp = out.join(format!(".{name}.tmp"));
    // Serialized in memory first: a full disk then fails in a plain write, whose error says so.
    let files = [
        (
            MODEL,
            Recorder::<B>::record(&recorder(), model.clone().into_record(), ())
                .context("cannot serialize the model")?,
        ),
        (
            OPTIMIZER,
            Recorder::<B>::record(&recorder(), optimizer, ())
                .context("cannot serialize the optimizer state")?,
        ),
        (
            SCHEDULER,
            Recorder::<B>::record(&recorder(), scheduler.to_record::<B>(), ())
                .context("cannot serialize the learning-rate scheduler's state")?,
        ),
        (STATE, serde_json::to_vec_pretty(state)?),
    ];
    let written = write_checkpoint(out, &tmp, &name, &files);
    if let Err(err) = written {
        // Whatever this save left that `latest` does not name goes: the temporary folder, the
        // pointer's temporary file, and the new folder if it was renamed but never named.
        let current = latest(out).ok().flatten();
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_file(out.join(format!(".{LATEST}.tmp")));
        if current.as_deref() != Some(out.join(&name).as_path()) {
            let _ = fs::remove_dir_all(out.join(&name));
        }
        let intact = match current {
            Some(dir) => format!("the last complete checkpoint, {}, is intact", dir.display()),
            None => "there is no earlier checkpoint".to_owned(),
        };
        let full = err.kind() == std::io::ErrorKind::StorageFull
            || err.kind() == std::io::ErrorKind::QuotaExceeded;
        let cause = if full {
            format!("the disk is full ({err})")
        } else {
            err.to_string()
        };
        anyhow::bail!(
            "cannot write the checkpoint of epoch {} in {}: {cause}; its unfinished files were \
             removed and {intact}",
            state.epoch(),
            out.display()
        );
    }
    let dir = out.join(&name);

    // Older checkpoints are removed only once the new one is in place, and so are the
    // temporary folders a crash may have left.
    for entry in fs::read_dir(out)? {
        let path = entry?.path();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stale_checkpoint = file_name.starts_with("epoch-") && file_name != name;
        let crash_leftover = file_name.starts_with(".epoch-")
            && (file_name.ends_with(".tmp") || file_name.ends_with(".old"));
        if stale_checkpoint || crash_leftover {
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(dir)
}

/// Writes `files` and their checksums into `tmp`, flushed, renames it to `out/name` and makes
/// it the latest.
fn write_checkpoint(
    out: &Path,
    tmp: &Path,
    name: &str,
    files: &[(&str, Vec<u8>)],
) -> std::io::Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp)?;
    }
    fs::create_dir_all(tmp)?;
    let mut sums = BTreeMap::new();
    for (file, bytes) in files {
        write_synced(&tmp.join(file), bytes)?;
        sums.insert(*file, sha256(bytes));
    }
    let sums = serde_json::to_vec_pretty(&sums).map_err(std::io::Error::other)?;
    write_synced(&tmp.join(CHECKSUMS), &sums)?;
    sync_dir(tmp)?;
    let dir = out.join(name);
    // A folder of that name (one `latest` may still name) is moved aside, not deleted, until
    // the new one is named: a crash in between leaves a complete checkpoint either way.
    let aside = out.join(format!(".{name}.old"));
    if dir.exists() {
        if aside.exists() {
            fs::remove_dir_all(&aside)?;
        }
        fs::rename(&dir, &aside)?;
    }
    fs::rename(tmp, &dir)?;
    sync_dir(out)?;

    let pointer = out.join(format!(".{LATEST}.tmp"));
    write_synced(&pointer, name.as_bytes())?;
    fs::rename(&pointer, out.join(LATEST))?;
    sync_dir(out)?;
    if aside.exists() {
        fs::remove_dir_all(&aside)?;
    }
    Ok(())
}

/// The bytes of every file of the checkpoint in `dir`, each checked against its checksum.
fn read_checked(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let sums_path = dir.join(CHECKSUMS);
    let sums: BTreeMap<String, String> = serde_json::from_slice(
        &fs::read(&sums_path).with_context(|| format!("cannot read {}", sums_path.display()))?,
    )
    .with_context(|| format!("{} is not a list of checksums", sums_path.display()))?;
    let mut files = BTreeMap::new();
    let scheduler = sums.contains_key(SCHEDULER).then_some(SCHEDULER);
    for file in [MODEL, OPTIMIZER, STATE].into_iter().chain(scheduler) {
        let path = dir.join(file);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let expected = sums
            .get(file)
            .with_context(|| format!("{} has no checksum of {file}", sums_path.display()))?;
        anyhow::ensure!(
            &sha256(&bytes) == expected,
            "{} does not match its checksum in {}: the file is corrupted or was changed after \
             it was written; nothing was loaded (resume from another copy, or start a new run)",
            path.display(),
            CHECKSUMS
        );
        files.insert(file.to_owned(), bytes);
    }
    Ok(files)
}

/// Reads the latest checkpoint in `out` into `model` (a model of `config`), every file checked
/// against its checksum, refusing one made for another model or with other settings than
/// `config`'s, except the epoch count and the keys in `allowed`.
pub fn load<B, M, O>(
    out: &Path,
    config: &TrainConfig,
    allowed: &[String],
    model: M,
    optimizer: O,
    device: &B::Device,
) -> anyhow::Result<Loaded<M, O>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let dir = latest(out)?.with_context(|| {
        format!(
            "--resume: there is no checkpoint in {} to resume from",
            out.display()
        )
    })?;
    let mut files = read_checked(&dir)?;
    let state: State = serde_json::from_slice(&files[STATE])
        .with_context(|| format!("{} is not a checkpoint state", dir.join(STATE).display()))?;
    let (saved, asked) = (state.config.model_description(), config.model_description());
    anyhow::ensure!(
        saved == asked,
        "the checkpoint in {} was made for the model {saved}, but this run asks for {asked}; \
         nothing was changed (use the same --config and --model, or another --out)",
        dir.display(),
    );
    // The epoch count only says where the run stops: every epoch computes the same with any.
    let free: Vec<String> = allowed
        .iter()
        .cloned()
        .chain(std::iter::once("epochs".to_owned()))
        .collect();
    let changed = state.config.differences(config, &free);
    anyhow::ensure!(
        changed.is_empty(),
        "--resume: this run's settings differ from those the checkpoint in {} was trained \
         with:\n  {}\nnothing was changed; resume with the same settings, or name those that \
         may change with --allow-change {}",
        dir.display(),
        changed.join("\n  "),
        changed
            .iter()
            .filter_map(|line| line.split(':').next())
            .collect::<Vec<_>>()
            .join(",")
    );
    let record = Recorder::<B>::load(&recorder(), files.remove(MODEL).unwrap_or_default(), device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let model = model.load_record(record);
    let record = Recorder::<B>::load(
        &recorder(),
        files.remove(OPTIMIZER).unwrap_or_default(),
        device,
    )
    .with_context(|| format!("cannot load the optimizer state from {}", dir.display()))?;
    Ok(Loaded {
        model,
        optimizer: optimizer.load_record(record),
        state,
        dir,
        scheduler: files.remove(SCHEDULER),
    })
}
