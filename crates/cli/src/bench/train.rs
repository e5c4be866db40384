//! `vffn bench train [--preset P | --config F] [--block B] [--threads N] [--steps S] [--json]`
//!
//! Tokens/s of full training steps (forward, backward, gradient clip, AdamW step) of a freshly
//! initialized model on the preset's batch (B×T tokens per step) of the built-in corpus, after
//! warm-up steps; the median step is reported.

use anyhow::{ensure, Result};
use clap::Args;
use vffn_model::workloads::TrainStep;
use vffn_model::{Dataset, RunConfig};

use super::forward::ModelTiming;
use super::{block_name, median, peak_rss_mb, sample, ModelChoice, Sampling};
use crate::common::{in_pool, load_dataset};

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
    let (dataset, _) = load_dataset(None, config.seq_len)?;
    let sampling = Sampling::fixed(args.warmup, args.steps);
    let (timing, threads) = in_pool(args.model.threads, || {
        let timing = measure_train(&run, &dataset, args.model.seed, &sampling)?;
        Ok((timing, rayon::current_num_threads()))
    })?;
    let (step_ms, tokens_per_s, gflops) = (timing.ms, timing.tokens_per_s(), timing.gflops());
    let flops_per_token = timing.flops_per_token;
    let (name, block) = (args.model.model_name(), block_name(&config));
    if args.model.json {
        let line = serde_json::json!({
            "tokens_per_s": tokens_per_s,
            "step_ms": step_ms,
            "preset": name,
            "block": block,
            "threads": threads,
            "batch_tokens": timing.tokens as u64,
            "steps": args.steps,
            "flops_per_token": flops_per_token,
            "gflops": gflops,
            "peak_fraction": super::peak::fraction_of_peak(gflops, threads),
            "peak_rss_mb": peak_rss_mb(),
        });
        outln!("{line}");
    } else {
        outln!(
            "train {name}/{block}, {threads} threads, {}×{} tokens/step, median of {} steps",
            config.batch_size,
            config.seq_len,
            args.steps
        );
        outln!("  step        {step_ms:10.1} ms");
        outln!("  throughput  {tokens_per_s:10.0} tokens/s");
        outln!(
            "  compute     {gflops:10.2} GFLOP/s effective ({:.2} MFLOP/token)",
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
