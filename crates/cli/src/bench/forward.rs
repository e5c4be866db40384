//! `vffn bench forward [--preset P | --config F] [--block B] [--threads N] [--repeats R] [--json]`
//!
//! Tokens/s of the inference forward (`Model::infer`: argmax depth, early exit) of a freshly
//! initialized model over one preset batch (B×T tokens) of the built-in corpus; the median of
//! the timed repeats after one warm-up run.

use anyhow::{ensure, Result};
use clap::Args;
use vffn_model::workloads::ForwardCase;
use vffn_model::{Config, Dataset, WeightDtype};

use super::{block_name, median, peak_rss_mb, sample, ModelChoice, Sampling};
use crate::common::{in_pool, load_dataset, WeightsArg};

#[derive(Args, Debug)]
pub struct ForwardBenchArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Timed forwards (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    weights: WeightsArg,
}

/// A model-level measurement: median milliseconds per batch (forward) or step (training).
pub(crate) struct ModelTiming {
    pub ms: f64,
    pub samples: usize,
    /// Tokens per batch / step.
    pub tokens: usize,
    /// Realized inference FLOPs per token (forward) or training FLOPs per token (step).
    pub flops_per_token: f64,
}

impl ModelTiming {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / (self.ms / 1e3)
    }

    pub fn gflops(&self) -> f64 {
        self.flops_per_token * self.tokens_per_s() / 1e9
    }
}

/// Times the inference forward of a fresh `config` model (seed `seed`, matrices held as
/// `weights`) over one validation batch of `dataset`, in the current thread pool.
pub(crate) fn measure_forward(
    config: &Config,
    dataset: &Dataset,
    seed: u64,
    weights: WeightDtype,
    sampling: &Sampling,
) -> Result<ModelTiming> {
    let case = ForwardCase::new_as(config.clone(), dataset, seed, weights)?;
    let mut output = None;
    let times = sample(sampling, || {
        output = Some(case.run()?);
        Ok(())
    })?;
    let output = output.expect("sample runs the forward at least once");
    Ok(ModelTiming {
        ms: median(&times) * 1e3,
        samples: times.len(),
        tokens: case.tokens(),
        flops_per_token: case.flops_per_token(&output)?,
    })
}

pub fn run(args: ForwardBenchArgs) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let weights = args.weights.dtype()?;
    let config = args.model.run_config()?.model;
    let (dataset, _) = load_dataset(None, config.seq_len)?;
    let sampling = Sampling::fixed(1, args.repeats);
    let (timing, threads) = in_pool(args.model.threads, || {
        let timing = measure_forward(&config, &dataset, args.model.seed, weights, &sampling)?;
        Ok((timing, rayon::current_num_threads()))
    })?;
    let (ms, tokens_per_s, gflops) = (timing.ms, timing.tokens_per_s(), timing.gflops());
    let flops_per_token = timing.flops_per_token;
    let (name, block) = (args.model.model_name(), block_name(&config));
    if args.model.json {
        let line = serde_json::json!({
            "tokens_per_s": tokens_per_s,
            "ms": ms,
            "preset": name,
            "block": block,
            "weights": weights.name(),
            "threads": threads,
            "batch_tokens": timing.tokens as u64,
            "realized_flops_per_token": flops_per_token,
            "gflops": gflops,
            "peak_fraction": super::peak::fraction_of_peak(gflops, threads),
            "peak_rss_mb": peak_rss_mb(),
        });
        outln!("{line}");
    } else {
        outln!(
            "forward {name}/{block}, {weights} weights, {threads} threads, {}×{} tokens, median \
             of {} runs",
            config.batch_size,
            config.seq_len,
            args.repeats
        );
        outln!("  forward     {ms:10.1} ms");
        outln!("  throughput  {tokens_per_s:10.0} tokens/s");
        outln!(
            "  compute     {gflops:10.2} GFLOP/s effective ({:.2} MFLOP/token realized)",
            flops_per_token / 1e6
        );
        if let Some(f) = super::peak::fraction_of_peak(gflops, threads) {
            outln!("  roofline    {:10.1} % of the measured FMA peak", 100.0 * f);
        }
        if let Some(mb) = peak_rss_mb() {
            outln!("  peak RSS    {mb:10.0} MB (whole process)");
        }
    }
    Ok(())
}
