//! `vffn bench train [--preset P | --config F] [--block B] [--threads N] [--steps S] [--json]`
//!
//! Tokens/s of full training steps (forward, backward, gradient clip, AdamW step) of a freshly
//! initialized model on the preset's batch (B×T tokens per step) of the built-in corpus, after
//! warm-up steps; the median step is reported.

use anyhow::{ensure, Result};
use clap::Args;
use vffn_model::workloads::TrainStep;
use vffn_model::{Dataset, RunConfig};

use super::forward::{ModelTiming, Timed};
use super::{median, sample, ModelChoice, Sampling};

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first (allocator, caches, thread pool).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

/// Times full training steps of a fresh `run.model` model (seed `seed`) on random windows of
/// `dataset`'s training split, in the current thread pool. A sample includes drawing its batch
/// (copying B×T tokens: microseconds against a step of at least tens of milliseconds).
pub(crate) fn measure_train(
    run: &RunConfig,
    dataset: &Dataset,
    seed: u64,
    sampling: &Sampling,
) -> Result<ModelTiming> {
    let mut step = TrainStep::new(run.clone(), dataset, seed)?;
    let times = sample(sampling, || Ok(step.run()?))?;
    Ok(ModelTiming {
        ms: median(&times) * 1e3,
        samples: times.len(),
        tokens: step.tokens(),
        flops_per_token: step.flops_per_token(),
    })
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    ensure!(args.steps >= 1, "--steps must be at least 1");
    let run = args.model.run_config()?;
    let config = run.model.clone();
    let sampling = Sampling::fixed(args.warmup, args.steps);
    let (timing, threads) = args
        .model
        .time(config.seq_len, |dataset| measure_train(&run, dataset, args.model.seed, &sampling))?;
    timing.print(&args.model, &config, threads, Timed::Train);
    Ok(())
}
