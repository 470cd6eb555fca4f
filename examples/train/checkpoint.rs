//! Checkpoints that a crash never leaves half-written.
//!
//! Each epoch is written to a hidden temporary folder, renamed to `epoch-NNNN`, and only then
//! named by the `latest` file (itself written to a temporary file and renamed). A crash at any
//! point leaves `latest` naming a complete checkpoint.

use crate::config::TrainConfig;
use crate::report::EpochReport;
use anyhow::Context;
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

const LATEST: &str = "latest";

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
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// The folder the latest complete checkpoint in `out` lives in, if there is one.
pub fn latest(out: &Path) -> anyhow::Result<Option<PathBuf>> {
    match fs::read_to_string(out.join(LATEST)) {
        Ok(name) => Ok(Some(out.join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", out.join(LATEST).display())),
    }
}

/// Writes a checkpoint for `state.epoch()` and makes it the latest; returns its folder.
pub fn save<B, M, O>(
    out: &Path,
    model: &M,
    optimizer: O::Record,
    state: &State,
) -> anyhow::Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let name = format!("epoch-{:04}", state.epoch());
    let tmp = out.join(format!(".{name}.tmp"));
    let dir = out.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    model
        .clone()
        .save_file(tmp.join("model"), &recorder())
        .context("cannot write the model")?;
    Recorder::<B>::record(&recorder(), optimizer, tmp.join("optimizer"))
        .context("cannot write the optimizer state")?;
    fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir)?;

    let pointer = out.join(format!(".{LATEST}.tmp"));
    fs::write(&pointer, &name)?;
    fs::rename(&pointer, out.join(LATEST))?;

    // Older checkpoints are removed only once the new one is in place, and so are the
    // temporary folders a crash may have left.
    for entry in fs::read_dir(out)? {
        let path = entry?.path();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stale_checkpoint = file_name.starts_with("epoch-") && file_name != name;
        let crash_leftover = file_name.starts_with(".epoch-") && file_name.ends_with(".tmp");
        if stale_checkpoint || crash_leftover {
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(dir)
}

/// Reads the latest checkpoint in `out` into `model` (a model of `config`), refusing one made
/// for another model.
pub fn load<B, M, O>(
    out: &Path,
    config: &TrainConfig,
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
    let state: State = serde_json::from_slice(
        &fs::read(dir.join("state.json"))
            .with_context(|| format!("cannot read {}", dir.join("state.json").display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not a checkpoint state",
            dir.join("state.json").display()
        )
    })?;
    let (saved, asked) = (state.config.model_description(), config.model_description());
    anyhow::ensure!(
        saved == asked,
        "the checkpoint in {} was made for the model {saved}, but this run asks for {asked}; \
         nothing was changed (use the same --config and --model, or another --out)",
        dir.display(),
    );
    let model = model
        .load_file(dir.join("model"), &recorder(), device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let record = Recorder::<B>::load(&recorder(), dir.join("optimizer"), device)
        .with_context(|| format!("cannot load the optimizer state from {}", dir.display()))?;
    Ok(Loaded {
        model,
        optimizer: optimizer.load_record(record),
        state,
        dir,
    })
}
