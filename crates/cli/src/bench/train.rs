//! `vffn bench train [--preset P | --config F] [--block B] [--threads N] [--steps S] [--json]`
//!
//! Tokens/s of full training steps (forward, backward, gradient clip, AdamW step) of a freshly
//! initialized model on the preset's batch (B×T tokens per step) of the built-in corpus, after
//! warm-up steps; the median step is reported.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use vffn_autograd::{clip_grad_norm, AdamW, AdamWConfig, Rng, Tape};
use vffn_model::{causal_mean_context, training_flops, Batcher, Model};

use super::{block_name, median, ModelChoice};
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

pub fn run(args: TrainBenchArgs) -> Result<()> {
    ensure!(args.steps >= 1, "--steps must be at least 1");
    let run = args.model.run_config()?;
    let config = run.model.clone();
    let (dataset, _) = load_dataset(None, config.seq_len)?;
    let seed = args.model.seed;
    let (step_ms, threads) = in_pool(args.model.threads, || {
        let mut model = Model::new(config.clone(), seed)?;
        let adamw = AdamWConfig {
            beta1: run.train.beta1,
            beta2: run.train.beta2,
            eps: run.train.eps,
            weight_decay: run.train.weight_decay,
        };
        let mut optimizer = AdamW::new(adamw, &model.params);
        let mut batcher = Batcher::new(dataset.train, config.seq_len, config.batch_size, seed)?;
        let mut noise_rng = Rng::new(seed ^ 0x6E6F_6973_6521);
        let mut times = Vec::with_capacity(args.steps);
        for step in 0..(args.warmup + args.steps) as u64 {
            let batch = batcher.next_batch();
            let start = Instant::now();
            // The same sequence of work as one `vffn train` step.
            let mut tape = Tape::new();
            let out = model
                .train_forward(&mut tape, &batch, run.temperature_at(step), Some(&mut noise_rng))
                .context("training forward")?;
            let grads = tape.backward(&out.loss).context("backward")?;
            model.params.zero_grad();
            model.params.accumulate_grads(grads);
            let clip = if run.train.grad_clip > 0.0 { run.train.grad_clip } else { f32::INFINITY };
            let grad_norm = clip_grad_norm(&mut model.params, clip);
            optimizer.step(&mut model.params, run.train.lr_at(step)).context("optimizer step")?;
            model.params.zero_grad();
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            ensure!(grad_norm.is_finite(), "gradient norm is {grad_norm} at step {}", step + 1);
            if step >= args.warmup as u64 {
                times.push(elapsed);
            }
        }
        Ok((median(&times), rayon::current_num_threads()))
    })?;
    let tokens = (config.batch_size * config.seq_len) as f64;
    let tokens_per_s = tokens / (step_ms / 1e3);
    let flops_per_token = training_flops(&config, causal_mean_context(config.seq_len)).total;
    let gflops = flops_per_token * tokens_per_s / 1e9;
    let (name, block) = (args.model.model_name(), block_name(&config));
    if args.model.json {
        let line = serde_json::json!({
            "tokens_per_s": tokens_per_s,
            "step_ms": step_ms,
            "preset": name,
            "block": block,
            "threads": threads,
            "batch_tokens": tokens as u64,
            "steps": args.steps,
            "flops_per_token": flops_per_token,
            "gflops": gflops,
        });
        println!("{line}");
    } else {
        println!(
            "train {name}/{block}, {threads} threads, {}×{} tokens/step, median of {} steps",
            config.batch_size, config.seq_len, args.steps
        );
        println!("  step        {step_ms:10.1} ms");
        println!("  throughput  {tokens_per_s:10.0} tokens/s");
        println!(
            "  compute     {gflops:10.2} GFLOP/s effective ({:.2} MFLOP/token)",
            flops_per_token / 1e6
        );
    }
    Ok(())
}
