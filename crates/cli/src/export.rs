//! `vffn export`: a checkpoint's model as one safetensors file of f32, bf16 or f16 tensors
//! (names and metadata as in the checkpoint, optimizer state left out). The file is itself a
//! valid `--checkpoint` for eval, generate, forward and inspect.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vffn_model::{save_model_as, TensorRef, WeightDtype};

use crate::ckpt_io;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory, its `ckpt/` directory or a model file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Storage dtype of every tensor: f32, bf16 or f16 (round to nearest even).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: WeightDtype,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Accept a model file without content checksums (written before vffn had them, or by
    /// another tool); its weights are still checked finite, and the export carries checksums.
    #[arg(long)]
    pub unverified: bool,
}

/// Parses `--dtype` / `--weights` values (f32, bf16, f16).
pub fn parse_dtype(text: &str) -> Result<WeightDtype, String> {
    text.parse()
}

pub fn run(args: ExportArgs) -> Result<()> {
    let (dir, ckpt) = ckpt_io::read_model_with(&args.checkpoint, !args.unverified)?;
    let refs: Vec<TensorRef<'_>> = ckpt
        .tensors
        .iter()
        .map(|(name, t)| TensorRef { name, shape: &t.shape, data: &t.data })
        .collect();
    let bytes = save_model_as(&ckpt.config, ckpt.temperature, &ckpt.extra, &refs, args.dtype)
        .with_context(|| format!("exporting `{}` as {}", dir.display(), args.dtype))?;
    // Write beside the target, then rename: a failed export never leaves a partial file.
    let staging = args.out.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&staging, &bytes).with_context(|| format!("cannot write `{}`", staging.display()))?;
    fs::rename(&staging, &args.out)
        .with_context(|| format!("cannot rename into `{}`", args.out.display()))?;
    let values: usize = refs.iter().map(|t| t.data.len()).sum();
    outln!(
        "exported {} tensors ({values} values, {}) to {} ({} bytes)",
        refs.len(),
        args.dtype,
        args.out.display(),
        bytes.len()
    );
    Ok(())
}
