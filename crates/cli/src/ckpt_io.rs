//! Checkpoint directories on disk: atomic writes and reads that turn every problem into one
//! clear error.
//!
//! A run directory `DIR` holds its latest checkpoint in `DIR/ckpt/`. A new checkpoint is written
//! to `DIR/ckpt.tmp-<pid>`, every file and the directory are fsynced, then the old `DIR/ckpt` is
//! renamed to `DIR/ckpt.old`, the new one renamed to `DIR/ckpt`, `DIR` fsynced and the old one
//! removed. (Linux cannot rename a directory over a non-empty one, hence the two renames.) A crash
//! at any point leaves either a complete `DIR/ckpt` or, between the two renames, a complete
//! `DIR/ckpt.old`, which the readers fall back to.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::common::WeightsArg;
use vffn_model::{
    load_model, load_optimizer, Model, ModelCheckpoint, OptimizerState, TrainState, MODEL_FILE,
    OPTIMIZER_FILE, STATE_FILE,
};

/// The checkpoint sub-directory of a run directory.
pub const CKPT_DIR: &str = "ckpt";
/// Where the previous checkpoint sits while the new one is renamed into place.
const OLD_DIR: &str = "ckpt.old";
/// Prefix of the staging directories of a checkpoint being written.
const TMP_PREFIX: &str = "ckpt.tmp-";

/// Writes `files` (name, bytes) as the checkpoint of run directory `run_dir`, atomically.
pub fn write_checkpoint(run_dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create the run directory `{}`", run_dir.display()))?;
    remove_stale_staging(run_dir)?;
    let staging = run_dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
    fs::create_dir(&staging).with_context(|| format!("cannot create `{}`", staging.display()))?;
    for (name, bytes) in files {
        let path = staging.join(name);
        let mut file =
            File::create(&path).with_context(|| format!("cannot create `{}`", path.display()))?;
        file.write_all(bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
        file.sync_all().with_context(|| format!("cannot fsync `{}`", path.display()))?;
    }
    sync_dir(&staging)?;
    let final_dir = run_dir.join(CKPT_DIR);
    let old_dir = run_dir.join(OLD_DIR);
    if exists(&final_dir)? {
        if exists(&old_dir)? {
            // `ckpt` is complete, so a leftover `ckpt.old` is not needed.
            fs::remove_dir_all(&old_dir)
                .with_context(|| format!("cannot remove `{}`", old_dir.display()))?;
        }
        fs::rename(&final_dir, &old_dir)
            .with_context(|| format!("cannot move `{}` aside", final_dir.display()))?;
    }
    fs::rename(&staging, &final_dir)
        .with_context(|| format!("cannot rename `{}` into place", staging.display()))?;
    sync_dir(run_dir)?;
    if exists(&old_dir)? {
        fs::remove_dir_all(&old_dir)
            .with_context(|| format!("cannot remove `{}`", old_dir.display()))?;
    }
    Ok(final_dir)
}

/// Removes `ckpt.tmp-*` directories left by a crashed writer (they are never read).
fn remove_stale_staging(run_dir: &Path) -> Result<()> {
    let entries = fs::read_dir(run_dir)
        .with_context(|| format!("cannot list the run directory `{}`", run_dir.display()))?;
    for entry in entries {
        let entry = entry
            .with_context(|| format!("cannot list the run directory `{}`", run_dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove `{}`", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (creations, renames) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the directory `{}`", dir.display()))
}

/// Writes one file atomically: a temporary file next to it is written and fsynced, renamed over
/// `path`, and the directory fsynced. A crash leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("cannot write `{}`", path.display()));
    }
    sync_dir(&dir)
}

/// Whether `path` exists; an unreadable parent is an error, not "absent".
pub fn exists(path: &Path) -> Result<bool> {
    path.try_exists().with_context(|| format!("cannot access `{}`", path.display()))
}

/// True if `run_dir` holds a checkpoint (or the remains of an interrupted swap).
pub fn has_checkpoint(run_dir: &Path) -> Result<bool> {
    Ok(exists(&run_dir.join(CKPT_DIR).join(MODEL_FILE))?
        || exists(&run_dir.join(OLD_DIR).join(MODEL_FILE))?)
}

/// Refuses an `--out` that cannot be a run directory: a regular file, or a checkpoint
/// directory itself (`RUN/ckpt`, which would nest a checkpoint inside it).
pub fn check_run_dir(out: &Path) -> Result<()> {
    if exists(out)? && !out.is_dir() {
        bail!("--out `{}` is a file, not a run directory", out.display());
    }
    let inside_run = |name: &str| out.file_name().is_some_and(|n| n == name);
    if exists(&out.join(MODEL_FILE))? || inside_run(CKPT_DIR) || inside_run(OLD_DIR) {
        let run = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        bail!(
            "--out `{}` is a checkpoint directory; give its run directory `{}` instead",
            out.display(),
            run.display()
        );
    }
    Ok(())
}

/// The directory holding the checkpoint files for `path`, which may be the checkpoint directory
/// itself or a run directory (then `ckpt/`, or `ckpt.old/` after a crash between two renames).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !exists(path)? {
        bail!("checkpoint `{}` does not exist", path.display());
    }
    if !path.is_dir() {
        bail!(
            "checkpoint `{}` is not a directory (give the run or ckpt directory)",
            path.display()
        );
    }
    for candidate in [path.to_path_buf(), path.join(CKPT_DIR), path.join(OLD_DIR)] {
        if exists(&candidate.join(MODEL_FILE))? {
            return Ok(candidate);
        }
    }
    bail!("`{}` holds no checkpoint (no {MODEL_FILE} in it or in its {CKPT_DIR}/)", path.display())
}

/// Reads one file of a checkpoint directory; a missing file names itself.
fn read_part(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).with_context(|| format!("cannot read checkpoint file `{}`", path.display()))
}

/// The model part of the checkpoint at `path`: a run or checkpoint directory, or a model file
/// (e.g. written by `vffn export`; then the path returned is the file's).
pub fn read_model(path: &Path) -> Result<(PathBuf, ModelCheckpoint)> {
    read_model_with(path, true)
}

/// The model of the checkpoint at `path` (as [`read_model`]) for inference, its matrices held
/// as `weights`; the f32 tensors read from the file are dropped once converted.
pub fn read_inference_model(path: &Path, weights: &WeightsArg) -> Result<(PathBuf, Model)> {
    let weights = weights.dtype()?;
    let (dir, checkpoint) = read_model(path)?;
    let model = Model::from_checkpoint_as(&checkpoint, weights)
        .with_context(|| format!("checkpoint `{}`", dir.display()))?;
    Ok((dir, model))
}

/// [`read_model`]; with `verified` false a file without content checksums is accepted too
/// (`vffn export --unverified`).
pub fn read_model_with(path: &Path, verified: bool) -> Result<(PathBuf, ModelCheckpoint)> {
    let (dir, file) = if path.is_file() {
        (path.to_path_buf(), path.to_path_buf())
    } else {
        let dir = resolve(path)?;
        let file = dir.join(MODEL_FILE);
        (dir, file)
    };
    let bytes = fs::read(&file)
        .with_context(|| format!("cannot read checkpoint file `{}`", file.display()))?;
    let load = if verified { load_model } else { vffn_model::load_model_unverified };
    let model = load(&bytes).with_context(|| format!("checkpoint `{}`", file.display()))?;
    Ok((dir, model))
}

/// Everything needed to resume training from the checkpoint at `path`.
pub struct TrainingCheckpoint {
    pub dir: PathBuf,
    pub model: ModelCheckpoint,
    pub optimizer: OptimizerState,
    pub state: TrainState,
}

/// Reads model, optimizer and train state of the checkpoint at `path`, checking they agree.
pub fn read_training(path: &Path) -> Result<TrainingCheckpoint> {
    let (dir, model) = read_model(path)?;
    let optimizer_bytes = read_part(&dir, OPTIMIZER_FILE)?;
    let optimizer = load_optimizer(&optimizer_bytes)
        .with_context(|| format!("checkpoint `{}`", dir.join(OPTIMIZER_FILE).display()))?;
    let state_bytes = read_part(&dir, STATE_FILE)?;
    let state_text = String::from_utf8(state_bytes)
        .with_context(|| format!("checkpoint `{}`: not UTF-8", dir.join(STATE_FILE).display()))?;
    let state = TrainState::from_json(&state_text)
        .with_context(|| format!("checkpoint `{}`", dir.join(STATE_FILE).display()))?;
    if optimizer.step != state.step {
        bail!(
            "checkpoint `{}` is inconsistent: optimizer at step {}, {STATE_FILE} at step {}",
            dir.display(),
            optimizer.step,
            state.step
        );
    }
    Ok(TrainingCheckpoint { dir, model, optimizer, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vffn-ckpt-io-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let run = scratch("replace");
        write_checkpoint(&run, &[(MODEL_FILE, b"one"), ("x", b"1")]).unwrap();
        write_checkpoint(&run, &[(MODEL_FILE, b"two")]).unwrap();
        assert_eq!(fs::read(run.join(CKPT_DIR).join(MODEL_FILE)).unwrap(), b"two");
        assert!(!run.join(CKPT_DIR).join("x").exists(), "old files do not leak into the new one");
        let names: Vec<String> = fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![CKPT_DIR.to_string()]);
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn crash_between_renames_falls_back_to_old() {
        let run = scratch("crash");
        write_checkpoint(&run, &[(MODEL_FILE, b"good")]).unwrap();
        // Simulate a crash after `ckpt` was moved aside, with a half-written staging dir.
        fs::rename(run.join(CKPT_DIR), run.join(OLD_DIR)).unwrap();
        fs::create_dir(run.join(format!("{TMP_PREFIX}999"))).unwrap();
        assert!(has_checkpoint(&run).unwrap());
        assert_eq!(resolve(&run).unwrap(), run.join(OLD_DIR));
        write_checkpoint(&run, &[(MODEL_FILE, b"new")]).unwrap();
        assert_eq!(resolve(&run).unwrap(), run.join(CKPT_DIR));
        assert!(!run.join(OLD_DIR).exists() && !run.join(format!("{TMP_PREFIX}999")).exists());
        fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn missing_checkpoints_are_clear_errors() {
        let run = scratch("missing");
        let err = resolve(&run).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        fs::create_dir_all(&run).unwrap();
        let err = resolve(&run).unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        fs::remove_dir_all(&run).unwrap();
    }
}
