//! `vffn bench …`: throughput measurements printed as text or one JSON line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use vffn_model::{Config, Dataset, RunConfig};

use self::forward::ModelTiming;
use crate::common::{in_pool, load_dataset};

mod all;
mod ffn;
mod forward;
mod gemm;
mod generate;
pub(crate) mod peak;
mod train;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// GFLOP/s of one GEMM shape (median over repeated runs).
    Gemm(gemm::GemmArgs),
    /// Median ms of the FFN kernels (dense, width, depth, naive baselines, training fwd+bwd).
    Ffn(ffn::FfnArgs),
    /// Tokens/s of full training steps (forward, backward, clip, AdamW) on one preset batch.
    Train(train::TrainBenchArgs),
    /// Tokens/s of the inference forward over one preset batch.
    Forward(forward::ForwardBenchArgs),
    /// Tokens/s of greedy decoding with the KV cache, one token at a time.
    Generate(generate::GenerateBenchArgs),
    /// The machine's measured f32 FMA peak per ISA (the roofline of every GFLOP/s figure).
    Peak(peak::PeakArgs),
    /// Everything (GEMM shapes, FFN paths, attention, each preset × block forward and train
    /// step), a second or so per item, as one table or one JSON document.
    All(all::AllArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Gemm(a) => gemm::run(a),
        BenchCommand::Ffn(a) => ffn::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Forward(a) => forward::run(a),
        BenchCommand::Generate(a) => generate::run(a),
        BenchCommand::All(a) => all::run(a),
        BenchCommand::Peak(a) => peak::run(a),
    }
}

/// The model a model-level benchmark runs: preset or TOML config, block, threads, seed.
#[derive(Args, Debug)]
pub struct ModelChoice {
    /// Model preset: tiny or small (default tiny).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// TOML file: `preset = ..`, `[model]` and `[train]` overrides.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Feed-forward block of every layer (overrides the preset / config).
    #[arg(long, value_parser = ["dense", "kloop", "moe", "versatile"])]
    block: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the fresh initialization (and of the data / noise draws).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

impl ModelChoice {
    /// The run configuration these flags select (default: the tiny preset, versatile block).
    fn run_config(&self) -> Result<RunConfig> {
        let run = crate::train::flag_config(
            self.config.as_deref(),
            self.preset.as_deref(),
            self.block.as_deref(),
        )?;
        run.validate()?;
        Ok(run)
    }

    /// Runs `measure` on the built-in corpus (windows of `seq_len` bytes) in the pool of
    /// `--threads`; returns its timing and the pool's thread count.
    fn time(
        &self,
        seq_len: usize,
        measure: impl FnOnce(&Dataset) -> Result<ModelTiming> + Send,
    ) -> Result<(ModelTiming, usize)> {
        let (dataset, _) = load_dataset(None, seq_len)?;
        in_pool(self.threads, || Ok((measure(&dataset)?, rayon::current_num_threads())))
    }

    /// The model and its block as the text reports name them: `tiny/versatile`.
    fn describe(&self, config: &Config) -> String {
        format!("{}/{}", self.model_name(), block_name(config))
    }

    /// What the report calls the model: the preset name or the config file.
    fn model_name(&self) -> String {
        match (&self.config, &self.preset) {
            (Some(path), _) => path.display().to_string(),
            (None, preset) => preset.as_deref().unwrap_or("tiny").to_string(),
        }
    }
}

/// What every model-level bench (`train`, `forward`, `generate`) reports besides its own timing.
pub(crate) struct Rates {
    pub tokens_per_s: f64,
    /// Effective GFLOP/s: the FLOPs per token times the tokens per second.
    pub gflops: f64,
    /// Worker threads of the pool the model ran in.
    pub threads: usize,
}

impl Rates {
    /// One JSON line: the rates, the model (`preset`, `block`) and the bench's own `fields`
    /// (serde_json's default map sorts the keys).
    fn print_json(&self, model: &ModelChoice, config: &Config, fields: serde_json::Value) {
        let mut line = serde_json::json!({
            "tokens_per_s": self.tokens_per_s,
            "preset": model.model_name(),
            "block": block_name(config),
            "threads": self.threads,
            "gflops": self.gflops,
            "peak_fraction": peak::fraction_of_peak(self.gflops, self.threads),
        });
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        outln!("{line}");
    }

    /// The text report's rate lines: tokens/s, GFLOP/s with the MFLOPs per token (`note` after
    /// "MFLOP/token"), the fraction of the measured FMA peak when it is known.
    fn print_text(&self, flops_per_token: f64, note: &str) {
        outln!("  throughput  {:10.0} tokens/s", self.tokens_per_s);
        outln!(
            "  compute     {:10.2} GFLOP/s effective ({:.2} MFLOP/token{note})",
            self.gflops,
            flops_per_token / 1e6
        );
        if let Some(f) = peak::fraction_of_peak(self.gflops, self.threads) {
            outln!("  roofline    {:10.1} % of the measured FMA peak", 100.0 * f);
        }
    }
}

/// How [`sample`] times a call: untimed warm-up calls, then timed samples until at least
/// `min_samples` are taken and `budget` has passed (at most `max_samples`). When `min_sample`
/// is non-zero, the first warm-up call sizes a sample to that many calls that it lasts at least
/// `min_sample` (so timer resolution does not matter) and one untimed sample follows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampling {
    pub warmup: usize,
    pub min_samples: usize,
    pub max_samples: usize,
    pub budget: Duration,
    pub min_sample: Duration,
}

impl Sampling {
    /// Exactly `samples` one-call samples after `warmup` untimed calls.
    pub fn fixed(warmup: usize, samples: usize) -> Self {
        Sampling {
            warmup,
            min_samples: samples,
            max_samples: samples,
            budget: Duration::ZERO,
            min_sample: Duration::ZERO,
        }
    }
}

/// Seconds per call of each timed sample of `call` (see [`Sampling`]).
pub(crate) fn sample(s: &Sampling, mut call: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut reps = 1usize;
    let mut warmup = s.warmup;
    if !s.min_sample.is_zero() {
        let start = Instant::now();
        call()?;
        let once = start.elapsed().as_secs_f64().max(1e-9);
        reps = ((s.min_sample.as_secs_f64() / once).ceil() as usize).clamp(1, 100_000);
        warmup = if reps > 1 { reps } else { warmup.saturating_sub(1) };
    }
    for _ in 0..warmup {
        call()?;
    }
    let started = Instant::now();
    let mut per_call = Vec::with_capacity(s.min_samples);
    while per_call.len() < s.max_samples.max(1)
        && (per_call.len() < s.min_samples.max(1) || started.elapsed() < s.budget)
    {
        let t = Instant::now();
        for _ in 0..reps {
            call()?;
        }
        per_call.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(per_call)
}

/// The median of `samples` (upper median for an even count); `samples` must not be empty.
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Peak resident set size of this process so far in MB (`VmHWM` of /proc/self/status), when
/// the platform reports it: what `/usr/bin/time -v` would print as its maximum RSS.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// `VmHWM:   123456 kB` → 120.56 (MB of 2^20 bytes).
fn parse_vm_hwm(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let kb: f64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(kb / 1024.0)
}

/// A batch's shape as the text reports give it: `16×128` (sequences × tokens).
fn batch_shape(config: &Config) -> String {
    format!("{}×{}", config.batch_size, config.seq_len)
}

/// The block name as the config serializes it ("versatile", "dense", …).
fn block_name(config: &Config) -> String {
    serde_json::to_value(config.block)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", config.block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_parses_and_rejects() {
        let status = "Name:\tvffn\nVmPeak:\t 999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(200.0));
        assert_eq!(parse_vm_hwm("VmRSS:\t1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t12 pages\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\tlots kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
    }
}
