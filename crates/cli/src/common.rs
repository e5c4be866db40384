//! Helpers shared by the workbench subcommands: the thread pool, data loading, the memory
//! estimate and byte sampling.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use vffn_autograd::Rng;
use vffn_model::{Config, Dataset, WeightDtype, BUILTIN_TRAIN_BYTES, BUILTIN_VAL_BYTES};

/// Seed of the built-in corpus: fixed, so every run and every evaluation sees the same bytes.
pub const BUILTIN_CORPUS_SEED: u64 = 0x5646_464E; // "VFFN"
/// `data_source` of runs on the built-in corpus.
pub const BUILTIN_SOURCE: &str = "builtin";

/// Runs `work` inside a rayon pool of `threads` threads (default: all cores).
pub fn in_pool<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .context("cannot start the thread pool")?;
    pool.install(work)
}

/// `--weights`: how an inference command holds the model's matrices in memory.
#[derive(Args, Clone, Debug)]
pub struct WeightsArg {
    /// Weights in memory: f32, or bf16 (every matrix rounded to nearest even once, half the
    /// memory and traffic; products still accumulate in f32).
    #[arg(id = "weights", long = "weights", value_name = "f32|bf16", default_value = "f32")]
    pub text: String,
}

impl WeightsArg {
    /// The dtype asked for (f16 is a file format only, not an inference one).
    pub fn dtype(&self) -> Result<WeightDtype> {
        match self.text.parse::<WeightDtype>() {
            Ok(WeightDtype::F16) => bail!(
                "--weights f16: inference holds weights in f32 or bf16 (f16 is a file dtype: \
                 `vffn export --dtype f16`)"
            ),
            Ok(dtype) => Ok(dtype),
            Err(_) => bail!("--weights `{}`: expected f32 or bf16", self.text),
        }
    }
}

/// The data a run trains or evaluates on, with the name recorded in `state.json`.
pub fn load_dataset(data: Option<&Path>, seq_len: usize) -> Result<(Dataset, String)> {
    match data {
        None => {
            let dataset = Dataset::builtin(
                BUILTIN_CORPUS_SEED,
                BUILTIN_TRAIN_BYTES,
                BUILTIN_VAL_BYTES,
                seq_len,
            )
            .context("built-in corpus")?;
            Ok((dataset, BUILTIN_SOURCE.to_string()))
        }
        Some(path) => {
            let bytes = read_input_file(path, "data file")?;
            let dataset = Dataset::from_bytes(bytes, seq_len)
                .with_context(|| format!("data file `{}`", path.display()))?;
            // The absolute path, so a resume from another working directory still matches.
            let name = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            Ok((dataset, name.display().to_string()))
        }
    }
}

/// Reads a whole user-given file; missing, unreadable and empty files are clear errors.
pub fn read_input_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    if path.is_dir() {
        bail!("{what} `{}` is a directory", path.display());
    }
    let bytes =
        fs::read(path).with_context(|| format!("cannot read {what} `{}`", path.display()))?;
    if bytes.is_empty() {
        bail!("{what} `{}` is empty", path.display());
    }
    Ok(bytes)
}

/// Estimated peak training memory in bytes: parameters, gradients and the two AdamW moments
/// (4 floats per parameter) plus the activations the tape keeps for one batch (an upper-end
/// estimate: every loop of the depth path stores its FFN activations).
pub fn estimate_training_bytes(config: &Config) -> u128 {
    let params = config.num_params() as u128;
    let tokens = (config.batch_size * config.seq_len) as u128;
    let (d, h) = (config.d_model as u128, config.hidden as u128);
    let loops = config.max_depth as u128 + 1;
    // Per layer and token: norms, qkv, attention output, residuals (~8d); each FFN pass keeps
    // its gate|value (2h), activation (h) and output (d) plus their backward buffers.
    let per_token_layer = 8 * d + loops * (4 * h + 2 * d);
    // Attention probabilities [B, H, T, T] (and their gradient).
    let attention = 2
        * (config.batch_size * config.n_heads) as u128
        * config.seq_len as u128
        * config.seq_len as u128;
    let layers = config.n_layers as u128;
    let logits = 3 * tokens * config.vocab_size as u128;
    let activations = layers * (tokens * per_token_layer + attention) + logits;
    // ×3 on activations: forward values, their gradients and the buffers the pool keeps; this
    // matches the measured peak RSS of the tiny preset (1.49 GB) within 10%.
    4 * (4 * params + 3 * activations)
}

/// `MemAvailable` of /proc/meminfo in bytes, when readable.
pub fn available_memory_bytes() -> Option<u128> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a model whose estimated training memory exceeds `max_mb` (default: available RAM).
pub fn check_memory(config: &Config, max_mb: Option<u64>) -> Result<()> {
    let needed = estimate_training_bytes(config);
    let (limit, what) = match max_mb {
        Some(mb) => (mb as u128 * 1024 * 1024, "--max-memory-mb"),
        None => match available_memory_bytes() {
            Some(bytes) => (bytes, "the available memory"),
            None => return Ok(()),
        },
    };
    if needed > limit {
        bail!(
            "model too big: training needs about {} MiB ({} parameters, batch {}×{}) but {what} \
             is {} MiB",
            needed.div_ceil(1 << 20),
            config.num_params(),
            config.batch_size,
            config.seq_len,
            limit >> 20
        );
    }
    Ok(())
}

/// Sums products of sizes with overflow checks: `[[a, b], [c]]` is a·b + c; None on overflow.
pub fn checked_size(terms: &[&[usize]]) -> Option<usize> {
    terms.iter().try_fold(0usize, |total, term| {
        let product = term.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))?;
        total.checked_add(product)
    })
}

/// Refuses buffers of `floats` f32 values in all (None: the size overflowed) that do not fit
/// the available memory, before anything is allocated.
pub fn check_buffers(what: &str, floats: Option<usize>) -> Result<()> {
    let bytes = floats.and_then(|n| n.checked_mul(4)).filter(|&b| b <= isize::MAX as usize);
    let Some(bytes) = bytes else {
        bail!("{what}: the sizes are too large (their buffers would exceed the address space)");
    };
    if let Some(available) = available_memory_bytes() {
        if bytes as u128 > available {
            bail!(
                "{what}: the buffers need about {} MiB but the available memory is {} MiB",
                (bytes as u128).div_ceil(1 << 20),
                available >> 20
            );
        }
    }
    Ok(())
}

/// Draws the next byte from `logits` [V]: greedy when `temperature` ≤ 0, else softmax of
/// logits/temperature restricted to the `top_k` largest (0 = all).
pub fn sample_token(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
        .0;
    if temperature <= 0.0 || top_k == 1 {
        return argmax as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Stable order by descending logit, ties by index: deterministic.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let top = logits[order[0]];
    let weights: Vec<f64> =
        order.iter().map(|&i| (((logits[i] - top) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax as u32;
    }
    let mut target = rng.uniform_f64() * total;
    for (&i, &w) in order.iter().zip(&weights) {
        if target < w {
            return i as u32;
        }
        target -= w;
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_respects_greedy_and_top_k() {
        let logits = [0.0, 3.0, 1.0, 2.9, -5.0];
        let mut rng = Rng::new(7);
        assert_eq!(sample_token(&logits, 0.0, 0, &mut rng), 1);
        assert_eq!(sample_token(&logits, 1.0, 1, &mut rng), 1);
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[sample_token(&logits, 1.0, 2, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "only the top 2 are drawn: {seen:?}");
        // p(1)/p(3) = e^0.1 ≈ 1.105: both drawn often.
        assert!(seen[1] > 800 && seen[3] > 700, "{seen:?}");
        // All five with a high temperature.
        let mut seen = [0usize; 5];
        for _ in 0..4000 {
            seen[sample_token(&logits, 100.0, 0, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 500), "{seen:?}");
    }

    #[test]
    fn memory_estimate_grows_with_the_model_and_refuses() {
        let tiny = Config::tiny();
        let small = Config::small();
        let tiny_bytes = estimate_training_bytes(&tiny);
        assert!(tiny_bytes > 16 * tiny.num_params() as u128, "at least 4 f32 per parameter");
        assert!(estimate_training_bytes(&small) > 4 * tiny_bytes);
        let err = check_memory(&tiny, Some(1)).unwrap_err().to_string();
        assert!(err.contains("model too big") && err.contains("--max-memory-mb"), "{err}");
        check_memory(&tiny, Some(1 << 20)).unwrap();
    }
}
