//! `vffn bench forward [--preset P | --config F] [--block B] [--threads N] [--repeats R] [--json]`
//!
//! Tokens/s of the inference forward (`Model::infer`: argmax depth, early exit) of a freshly
//! initialized model over one preset batch (B×T tokens) of the built-in corpus; the median of
//! the timed repeats after one warm-up run.

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use vffn_model::{causal_mean_context, Batcher, Model};

use super::{block_name, median, ModelChoice};
use crate::common::{in_pool, load_dataset};

#[derive(Args, Debug)]
pub struct ForwardBenchArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Timed forwards (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

pub fn run(args: ForwardBenchArgs) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let config = args.model.run_config()?.model;
    let (dataset, _) = load_dataset(None, config.seq_len)?;
    let seed = args.model.seed;
    let (ms, output, threads) = in_pool(args.model.threads, || {
        let model = Model::new(config.clone(), seed)?;
        let batch =
            Batcher::new(dataset.val, config.seq_len, config.batch_size, seed)?.next_batch();
        let (b, t) = (batch.batch_size, batch.seq_len);
        let mut output = model.infer(&batch.inputs, b, t)?;
        let mut times = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            let start = Instant::now();
            output = model.infer(&batch.inputs, b, t)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok((median(&times), output, rayon::current_num_threads()))
    })?;
    ensure!(output.logits.iter().all(|v| v.is_finite()), "the forward produced non-finite logits");
    let tokens = (config.batch_size * config.seq_len) as f64;
    let tokens_per_s = tokens / (ms / 1e3);
    let flops = output.realized_flops(&config, causal_mean_context(config.seq_len))?;
    let gflops = flops.total * tokens_per_s / 1e9;
    let (name, block) = (args.model.model_name(), block_name(&config));
    if args.model.json {
        let line = serde_json::json!({
            "tokens_per_s": tokens_per_s,
            "ms": ms,
            "preset": name,
            "block": block,
            "threads": threads,
            "batch_tokens": tokens as u64,
            "realized_flops_per_token": flops.total,
            "gflops": gflops,
        });
        println!("{line}");
    } else {
        println!(
            "forward {name}/{block}, {threads} threads, {}×{} tokens, median of {} runs",
            config.batch_size, config.seq_len, args.repeats
        );
        println!("  forward     {ms:10.1} ms");
        println!("  throughput  {tokens_per_s:10.0} tokens/s");
        println!(
            "  compute     {gflops:10.2} GFLOP/s effective ({:.2} MFLOP/token realized)",
            flops.total / 1e6
        );
    }
    Ok(())
}
