//! `vffn bench forward [--preset P | --config F] [--block B] [--threads N] [--repeats R] [--json]`
//!
//! Tokens/s of the inference forward (`Model::infer`: argmax depth, early exit) of a freshly
//! initialized model over one preset batch (B×T tokens) of the built-in corpus; the median of
//! the timed repeats after one warm-up run.

use anyhow::{ensure, Result};
use clap::Args;
use vffn_model::workloads::ForwardCase;
use vffn_model::{Config, Dataset, WeightDtype};

use super::{batch_shape, median, peak_rss_mb, sample, ModelChoice, Rates, Sampling};
use crate::common::WeightsArg;

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

    /// Prints the timing of `bench forward` or `bench train` (`timed`) of `config` on
    /// `threads` threads: one JSON line (with what [`Rates`] adds) or the text report.
    pub fn print(&self, model: &ModelChoice, config: &Config, threads: usize, timed: Timed) {
        let rates = Rates { tokens_per_s: self.tokens_per_s(), gflops: self.gflops(), threads };
        // What the median is of (text, JSON), and what the FLOPs per token are (text, JSON).
        let (median, median_key, flops, flops_key) = match timed {
            Timed::Forward(_) => ("forward", "ms", " realized", "realized_flops_per_token"),
            Timed::Train => ("step", "step_ms", "", "flops_per_token"),
        };
        if model.json {
            let mut fields = serde_json::json!({
                "batch_tokens": self.tokens as u64,
                "peak_rss_mb": peak_rss_mb(),
            });
            fields[median_key] = self.ms.into();
            fields[flops_key] = self.flops_per_token.into();
            match timed {
                Timed::Forward(weights) => fields["weights"] = weights.name().into(),
                Timed::Train => fields["steps"] = self.samples.into(),
            }
            rates.print_json(model, config, fields);
        } else {
            let what = match timed {
                Timed::Forward(weights) => {
                    format!("forward {}, {weights} weights", model.describe(config))
                }
                Timed::Train => format!("train {}", model.describe(config)),
            };
            let (per, unit) =
                if let Timed::Train = timed { ("/step", "steps") } else { ("", "runs") };
            let shape = batch_shape(config);
            outln!(
                "{what}, {threads} threads, {shape} tokens{per}, median of {} {unit}",
                self.samples
            );
            outln!("  {median:<12}{:10.1} ms", self.ms);
            rates.print_text(self.flops_per_token, flops);
            if let Some(mb) = peak_rss_mb() {
                outln!("  peak RSS    {mb:10.0} MB (whole process)");
            }
        }
    }
}

/// Which model-level timing [`ModelTiming::print`] reports.
#[derive(Clone, Copy)]
pub(crate) enum Timed {
    /// `bench forward`: the inference forward of one batch, the matrices held as this dtype.
    Forward(WeightDtype),
    /// `bench train`: one training step.
    Train,
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
    let sampling = Sampling::fixed(1, args.repeats);
    let (timing, threads) = args.model.time(config.seq_len, |dataset| {
        measure_forward(&config, dataset, args.model.seed, weights, &sampling)
    })?;
    timing.print(&args.model, &config, threads, Timed::Forward(weights));
    Ok(())
}
