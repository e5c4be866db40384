//! `vffn forward`: one forward pass of a checkpoint over a text, written as safetensors, for
//! comparing against a reference implementation.
//!
//! Inference mode (default): `logits` [T, V] over all T bytes of the text, and per layer
//! `blocks.{i}.depth` [T] (chosen loop count 1..D) and `blocks.{i}.experts` [T, k] (as f32),
//! for the layers that route.
//!
//! `--train-mode`: the training forward at the checkpoint's temperature (Gumbel noise 0 with
//! `--zero-noise`, else drawn from `--seed`) over inputs = text[..T−1], targets = text[1..]:
//! `logits` [T−1, V], routing as above over T−1 tokens, `loss` [1] (next-byte CE) and
//! `<name>.grad` of CE + balance loss for every parameter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use vffn_autograd::{Rng, Tape};
use vffn_model::{
    write_tensors, Batch, Model, Routing, TensorRef, WeightDtype, MODEL_FILE, OPTIMIZER_FILE,
    STATE_FILE,
};

use crate::ckpt_io;
use crate::common::WeightsArg;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Run directory, its `ckpt/` directory, or a model file (e.g. from `vffn export`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to run (its UTF-8 bytes are the tokens).
    #[arg(long)]
    pub text: String,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Training-mode forward (all loops, soft gates) with loss and gradients.
    #[arg(long)]
    pub train_mode: bool,
    /// With --train-mode: Gumbel noise 0 (deterministic hard choice = argmax).
    #[arg(long, requires = "train_mode")]
    pub zero_noise: bool,
    /// With --train-mode and noise: seed of the Gumbel noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub weights: WeightsArg,
}

/// Named owned tensors to write.
type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Per-layer routing as f32 tensors: depth [T] and experts [T, k].
fn routing_tensors(routing: &Routing, tokens: usize, top_k: usize, out: &mut Named) {
    for (layer, depth) in routing.depth.iter().enumerate() {
        if !depth.is_empty() {
            let values = depth.iter().map(|&c| f32::from(c)).collect();
            out.push((format!("blocks.{layer}.depth"), vec![tokens], values));
        }
    }
    for (layer, experts) in routing.experts.iter().enumerate() {
        if !experts.is_empty() {
            let values = experts.iter().map(|&e| e as f32).collect();
            out.push((format!("blocks.{layer}.experts"), vec![tokens, top_k], values));
        }
    }
}

/// Refuses an output path that is part of a checkpoint (a file of a directory holding
/// `model.safetensors`) or a directory.
fn check_output(out: &Path) -> Result<()> {
    if out.is_dir() {
        bail!("--out `{}` is a directory; give a file name", out.display());
    }
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let is_part = out.file_name().is_some_and(|name| {
        [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE].iter().any(|part| name == *part)
    });
    if is_part && ckpt_io::exists(&dir.join(MODEL_FILE))? {
        bail!(
            "--out `{}` would overwrite a file of the checkpoint in `{}`; choose another file",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

pub fn run(args: ForwardArgs) -> Result<()> {
    check_output(&args.out)?;
    let weights = args.weights.dtype()?;
    if args.train_mode && weights != WeightDtype::F32 {
        bail!("--train-mode runs the f32 model: --weights {weights} is for inference only");
    }
    let (dir, ckpt) = ckpt_io::read_model(&args.checkpoint)?;
    let model = Model::from_checkpoint_as(&ckpt, weights)
        .with_context(|| format!("checkpoint `{}`", dir.display()))?;
    let tokens: Vec<u32> = args.text.bytes().map(u32::from).collect();
    let (vocab, top_k) = (model.config.vocab_size, model.config.top_k);
    let mut named: Named = Vec::new();
    if args.train_mode {
        if tokens.len() < 2 {
            bail!("--train-mode needs a text of at least 2 bytes (inputs and next-byte targets)");
        }
        let t = tokens.len() - 1;
        let batch = Batch {
            batch_size: 1,
            seq_len: t,
            inputs: tokens[..t].to_vec(),
            targets: tokens[1..].to_vec(),
            target_difficulty: None,
        };
        let mut rng = Rng::new(args.seed);
        let noise = if args.zero_noise { None } else { Some(&mut rng) };
        let mut tape = Tape::new();
        let out = model.train_forward(&mut tape, &batch, ckpt.temperature, noise)?;
        named.push(("logits".into(), vec![t, vocab], out.logits.to_vec()));
        named.push(("loss".into(), vec![1], vec![out.ce]));
        routing_tensors(&out.routing, t, top_k, &mut named);
        let grads = tape.backward(&out.loss)?;
        for (id, param) in model.params.iter() {
            let grad = match grads.param(id) {
                Some(g) => g.to_vec(),
                None => vec![0.0; param.numel()],
            };
            named.push((format!("{}.grad", param.name()), param.shape().to_vec(), grad));
        }
    } else {
        if tokens.is_empty() {
            bail!("--text is empty");
        }
        let t = tokens.len();
        let out = model.infer(&tokens, 1, t)?;
        named.push(("logits".into(), vec![t, vocab], out.logits));
        routing_tensors(&out.routing, t, top_k, &mut named);
    }
    let refs: Vec<TensorRef<'_>> =
        named.iter().map(|(name, shape, data)| TensorRef { name, shape, data }).collect();
    let bytes = write_tensors(&refs, &BTreeMap::new())?;
    ckpt_io::write_atomic(&args.out, &bytes)?;
    errln!("wrote {} tensors to {}", named.len(), args.out.display());
    Ok(())
}
