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

    /// Prints the timing of `bench forward` or `bench train` of `config` on `threads` threads:
    /// one JSON line (`report.fields`, the batch, the peak RSS and what [`Rates`] adds) or the
    /// text report.
    pub fn print(
        &self,
        model: &ModelChoice,
        config: &Config,
        threads: usize,
        report: TimingReport,
    ) {
        let rates = Rates { tokens_per_s: self.tokens_per_s(), gflops: self.gflops(), threads };
        if model.json {
            let mut fields = report.fields;
            fields["batch_tokens"] = (self.tokens as u64).into();
            fields["peak_rss_mb"] = peak_rss_mb().into();
            rates.print_json(model, config, fields);
        } else {
            outln!("{}", report.header);
            outln!("  {:<12}{:10.1} ms", report.median, self.ms);
            rates.print_text(self.flops_per_token, report.flops);
            if let Some(mb) = peak_rss_mb() {
                outln!("  peak RSS    {mb:10.0} MB (whole process)");
            }
        }
    }
}

/// What `bench forward` and `bench train` report of their own.
pub(crate) struct TimingReport {
    /// The text report's first line.
    pub header: String,
    /// What the median time is of, as the text report names it ("forward", "step").
    pub median: &'static str,
    /// Said of the FLOPs per token in the text report (" realized" for inference).
    pub flops: &'static str,
    /// JSON fields beyond the common ones.
    pub fields: serde_json::Value,
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
    let header = format!(
        "forward {}, {weights} weights, {threads} threads, {} tokens, median of {} runs",
        args.model.describe(&config),
        batch_shape(&config),
        args.repeats
    );
    let fields = serde_json::json!({
        "ms": timing.ms,
        "weights": weights.name(),
        "realized_flops_per_token": timing.flops_per_token,
    });
    let report = TimingReport { header, median: "forward", flops: " realized", fields };
    timing.print(&args.model, &config, threads, report);
    Ok(())
}
