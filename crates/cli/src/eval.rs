//! `vffn eval`: mean cross-entropy and bits per byte of a checkpoint on the validation split.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use vffn_model::{validation_batches, Model, Split};

use crate::ckpt_io;
use crate::common::{in_pool, load_dataset, WeightsArg};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run or checkpoint directory (e.g. runs/default or runs/default/ckpt), or a model file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data file whose last 10% is evaluated (default: the built-in corpus' validation stream).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON line `{"loss":..,"bits_per_byte":..,"tokens":..}`.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub weights: WeightsArg,
}

/// Token-weighted mean cross-entropy over some validation windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy in nats per predicted byte.
    pub loss: f64,
    /// Predicted bytes.
    pub tokens: u64,
}

impl EvalResult {
    /// Bits per byte: the loss in base 2.
    pub fn bits_per_byte(&self) -> f64 {
        self.loss / std::f64::consts::LN_2
    }
}

/// Inference-mode cross-entropy over the non-overlapping `seq_len` windows of `split`, in order,
/// `batch_size` per batch; `max_batches` limits how many (None = all).
pub fn evaluate(model: &Model, split: &Split, max_batches: Option<usize>) -> Result<EvalResult> {
    let result = evaluate_until(model, split, max_batches, &|| false)?;
    Ok(result.expect("never stopped"))
}

/// [`evaluate`], checking `stop` before each batch: None if it asked to stop.
pub fn evaluate_until(
    model: &Model,
    split: &Split,
    max_batches: Option<usize>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<EvalResult>> {
    let (seq_len, batch_size) = (model.config.seq_len, model.config.batch_size);
    let batches = validation_batches(split, seq_len, batch_size).context("validation split")?;
    let (mut weighted, mut tokens) = (0.0f64, 0u64);
    for batch in batches.take(max_batches.unwrap_or(usize::MAX)) {
        if stop() {
            return Ok(None);
        }
        let count = (batch.batch_size * batch.seq_len) as u64;
        let loss = model.eval_loss(&batch).context("evaluation forward")?;
        weighted += loss as f64 * count as f64;
        tokens += count;
    }
    let loss = if tokens == 0 { f64::NAN } else { weighted / tokens as f64 };
    Ok(Some(EvalResult { loss, tokens }))
}

/// The `--json` output line.
#[derive(serde::Serialize)]
struct EvalLine {
    loss: f64,
    bits_per_byte: f64,
    tokens: u64,
}

pub fn run(args: EvalArgs) -> Result<()> {
    in_pool(args.threads, || run_in_pool(args))
}

fn run_in_pool(args: EvalArgs) -> Result<()> {
    let (dir, model) = ckpt_io::read_inference_model(&args.checkpoint, &args.weights)?;
    let (dataset, source) = load_dataset(args.data.as_deref(), model.config.seq_len)?;
    let result = evaluate(&model, &dataset.val, None)?;
    if !result.loss.is_finite() {
        bail!(
            "checkpoint `{}`: the validation loss is {}: its weights are unusable",
            dir.display(),
            result.loss
        );
    }
    if args.json {
        // Fields in the documented order (a json! map would sort them).
        let line = EvalLine {
            loss: result.loss,
            bits_per_byte: result.bits_per_byte(),
            tokens: result.tokens,
        };
        outln!("{}", serde_json::to_string(&line).context("eval result")?);
    } else {
        outln!(
            "{}: validation of {source}: loss {:.4} nats, {:.4} bits per byte over {} bytes",
            dir.display(),
            result.loss,
            result.bits_per_byte(),
            result.tokens
        );
    }
    Ok(())
}
