//! `vffn bench generate [--preset P | --config F] [--block B] [--threads N] [--tokens N] [--json]`
//!
//! Tokens/s of greedy decoding with the KV cache (`Decoder::push`, one token at a time) of a
//! freshly initialized model. The realized FLOPs come from the loop counts the decoder chose
//! (as the full forward routes every token), so the process holds one model and its KV cache.
//! `--weights bf16` holds the matrices as bf16 bits.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use vffn_autograd::Rng;
use vffn_model::{causal_mean_context, realized_inference_flops, Model};

use super::{ModelChoice, Rates};
use crate::common::{check_buffers, checked_size, in_pool, sample_token, WeightsArg};

/// The first token fed to the decoder (a newline byte).
const START_TOKEN: u32 = b'\n' as u32;

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Tokens decoded (timed); default: the model's seq_len.
    #[arg(long)]
    tokens: Option<usize>,
    #[command(flatten)]
    weights: WeightsArg,
}

pub fn run(args: GenerateBenchArgs) -> Result<()> {
    let weights = args.weights.dtype()?;
    let config = args.model.run_config()?.model;
    let tokens = args.tokens.unwrap_or(config.seq_len);
    ensure!(tokens >= 1, "--tokens must be at least 1");
    // The KV cache: keys and values of every layer.
    let (d, layers) = (config.d_model, config.n_layers);
    let floats = checked_size(&[&[2, layers, tokens, d]]);
    check_buffers("--tokens", floats)?;
    let seed = args.model.seed;
    let (seconds, flops, threads) = in_pool(args.model.threads, || {
        let model = Model::new_as(config.clone(), seed, weights)?;
        // Untimed warm-up push on a separate decoder (allocator, caches, thread pool).
        model.decoder(1).push(START_TOKEN).context("decoding")?;
        let mut decoder = model.decoder(tokens);
        // Greedy: the RNG is never consulted at temperature 0.
        let mut rng = Rng::new(seed);
        let mut next = START_TOKEN;
        let mut depths: Vec<Vec<usize>> = vec![Vec::new(); config.n_layers];
        let start = Instant::now();
        for _ in 0..tokens {
            let logits = decoder.push(next).context("decoding")?;
            for (layer, depth) in depths.iter_mut().zip(decoder.depths()) {
                layer.extend(depth.map(usize::from));
            }
            next = sample_token(&logits, 0.0, 0, &mut rng);
        }
        let seconds = start.elapsed().as_secs_f64();
        let flops = realized_inference_flops(&config, causal_mean_context(tokens), &depths)?;
        Ok((seconds, flops, rayon::current_num_threads()))
    })?;
    let tokens_per_s = tokens as f64 / seconds;
    let rates = Rates { tokens_per_s, gflops: flops.total * tokens_per_s / 1e9, threads };
    if args.model.json {
        let fields = serde_json::json!({
            "ms_per_token": seconds * 1e3 / tokens as f64,
            "tokens": tokens,
            "weights": weights.name(),
            "realized_flops_per_token": flops.total,
        });
        rates.print_json(&args.model, &config, fields);
    } else {
        outln!(
            "generate {}, {weights} weights, {threads} threads, {tokens} tokens greedy with KV \
             cache",
            args.model.describe(&config),
        );
        outln!("  per token   {:10.3} ms", seconds * 1e3 / tokens as f64);
        rates.print_text(flops.total, " realized");
    }
    Ok(())
}
