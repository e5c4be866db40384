//! `vffn inspect`: what the routers of a checkpoint do on validation data — per layer the
//! histogram of chosen depths, the expert load and the mean fusion weight λ; the realized
//! inference FLOPs per token against a dense model; on the built-in corpus, the mean depth for
//! easy and hard bytes. `--svg DIR` also draws the loss curves and the depth histograms.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use vffn_model::{
    causal_mean_context, inference_flops, realized_inference_flops_from_counts, training_flops,
    validation_batches, BlockKind, Config, DepthRouting, Difficulty, FlopsBreakdown, Fusion, Model,
    Routing,
};

use crate::ckpt_io;
use crate::common::{in_pool, load_dataset};
use crate::metrics::{read_metrics, METRICS_FILE};
use crate::svg::{histograms_svg, loss_curves_svg, Series};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Run or checkpoint directory, or a model file (e.g. from `vffn export`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data file whose validation split (last 10%) is routed (default: the built-in corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write loss-curves.svg, depth-histograms.svg and expert-load.svg into this directory.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Validation batches to route (0 = all).
    #[arg(long, default_value_t = 16)]
    pub batches: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON line (routing statistics, parameters, FLOPs/token) instead of the text.
    #[arg(long)]
    pub json: bool,
}

/// Routing counts accumulated over batches.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingStats {
    /// Per layer: tokens that chose ℓ loops, at index ℓ − 1 (empty for layers without a depth
    /// router).
    pub depth_counts: Vec<Vec<u64>>,
    /// Per layer: how often each expert was chosen (empty without an expert router).
    pub expert_counts: Vec<Vec<u64>>,
    /// Per difficulty ([`Difficulty::ALL`] order): (Σ depth over layers with a depth router,
    /// number of (token, layer) pairs).
    pub depth_by_difficulty: [(u64, u64); 3],
    /// Tokens routed.
    pub tokens: u64,
}

impl RoutingStats {
    pub fn new(config: &Config) -> Self {
        RoutingStats {
            depth_counts: vec![Vec::new(); config.n_layers],
            expert_counts: vec![Vec::new(); config.n_layers],
            depth_by_difficulty: [(0, 0); 3],
            tokens: 0,
        }
    }

    /// Adds one forward's routing; `difficulty` labels each token's target byte when known.
    pub fn add(&mut self, config: &Config, routing: &Routing, difficulty: Option<&[Difficulty]>) {
        for (layer, depths) in routing.depth.iter().enumerate().take(config.n_layers) {
            if depths.is_empty() {
                continue;
            }
            let counts = &mut self.depth_counts[layer];
            counts.resize(config.max_depth, 0);
            for (token, &depth) in depths.iter().enumerate() {
                let bin = (depth as usize).clamp(1, config.max_depth) - 1;
                counts[bin] += 1;
                if let Some(label) = difficulty.and_then(|labels| labels.get(token)) {
                    let slot = &mut self.depth_by_difficulty[*label as usize];
                    slot.0 += u64::from(depth);
                    slot.1 += 1;
                }
            }
        }
        for (layer, experts) in routing.experts.iter().enumerate().take(config.n_layers) {
            if experts.is_empty() {
                continue;
            }
            let counts = &mut self.expert_counts[layer];
            counts.resize(config.n_experts, 0);
            for &expert in experts {
                if let Some(slot) = counts.get_mut(expert as usize) {
                    *slot += 1;
                }
            }
        }
    }

    /// Mean loop count of a layer (None without a depth router).
    pub fn mean_depth(&self, layer: usize) -> Option<f64> {
        let counts = &self.depth_counts[layer];
        let total: u64 = counts.iter().sum();
        (total > 0).then(|| {
            counts.iter().enumerate().map(|(i, &c)| (i + 1) as f64 * c as f64).sum::<f64>()
                / total as f64
        })
    }

    /// Mean fusion weight λ of a layer at inference: 1 − ℓ/D with the chosen ℓ (gated), or 1/2.
    pub fn mean_lambda(&self, config: &Config, layer: usize) -> Option<f64> {
        let mean_depth = self.mean_depth(layer)?;
        Some(match config.fusion {
            Fusion::Gated => 1.0 - mean_depth / config.max_depth as f64,
            Fusion::Average => 0.5,
        })
    }

    /// Mean depth over routed layers of tokens whose target has `difficulty`.
    pub fn mean_depth_of(&self, difficulty: Difficulty) -> Option<f64> {
        let (sum, count) = self.depth_by_difficulty[difficulty as usize];
        (count > 0).then(|| sum as f64 / count as f64)
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    in_pool(args.threads, || run_in_pool(args))
}

fn run_in_pool(args: InspectArgs) -> Result<()> {
    let (dir, checkpoint) = ckpt_io::read_model(&args.checkpoint)?;
    let model = Model::from_checkpoint(&checkpoint)
        .with_context(|| format!("checkpoint `{}`", dir.display()))?;
    let config = model.config.clone();
    let (dataset, source) = load_dataset(args.data.as_deref(), config.seq_len)?;
    let mut stats = RoutingStats::new(&config);
    let batches = validation_batches(&dataset.val, config.seq_len, config.batch_size)
        .context("validation split")?;
    let limit = if args.batches == 0 { usize::MAX } else { args.batches };
    for batch in batches.take(limit) {
        let out = model
            .infer(&batch.inputs, batch.batch_size, batch.seq_len)
            .context("inference forward")?;
        stats.add(&config, &out.routing, batch.target_difficulty.as_deref());
        stats.tokens += (batch.batch_size * batch.seq_len) as u64;
    }
    if args.json {
        let line = json_report(&model, &stats)?;
        println!("{}", serde_json::to_string(&line).context("inspect result")?);
    } else {
        print!("{}", report(&config, &stats, &dir, &source)?);
    }
    if let Some(svg_dir) = &args.svg {
        write_svgs(svg_dir, &config, &stats, &run_dir_of(&args.checkpoint, &dir))?;
    }
    Ok(())
}

/// The run directory (holding metrics.jsonl) of a checkpoint given as run or ckpt directory.
fn run_dir_of(given: &Path, ckpt_dir: &Path) -> PathBuf {
    if given.join(METRICS_FILE).is_file() {
        return given.to_path_buf();
    }
    ckpt_dir.parent().map_or_else(|| given.to_path_buf(), Path::to_path_buf)
}

/// Realized and dense inference FLOPs per token of the routed statistics.
fn realized_and_dense(
    config: &Config,
    stats: &RoutingStats,
) -> Result<(f64, FlopsBreakdown, FlopsBreakdown)> {
    let context = causal_mean_context(config.seq_len);
    let counts: Vec<Vec<u64>> = if config.block == BlockKind::Versatile
        && stats.depth_counts.iter().all(|c| c.len() == config.max_depth)
    {
        stats.depth_counts.clone()
    } else {
        Vec::new()
    };
    let realized = if counts.is_empty() && config.block == BlockKind::Versatile {
        // No depth router (width-only ablation): every token takes the width path.
        inference_flops(config, context, DepthRouting { mean_loops: 1.0, width_fraction: 1.0 })
    } else {
        realized_inference_flops_from_counts(config, context, &counts).context("realized FLOPs")?
    };
    let dense = Config { block: BlockKind::Dense, ..config.clone() };
    let dense_flops = inference_flops(&dense, context, DepthRouting::uniform(config.max_depth));
    Ok((context, realized, dense_flops))
}

/// The `--json` line: everything of the text report, as numbers.
fn json_report(model: &Model, stats: &RoutingStats) -> Result<serde_json::Value> {
    let config = &model.config;
    let (context, realized, dense) = realized_and_dense(config, stats)?;
    let train = training_flops(config, context);
    let layers: Vec<serde_json::Value> = (0..config.n_layers)
        .map(|layer| {
            serde_json::json!({
                "layer": layer,
                "depth_counts": stats.depth_counts[layer],
                "mean_depth": stats.mean_depth(layer),
                "mean_lambda": stats.mean_lambda(config, layer),
                "expert_counts": stats.expert_counts[layer],
            })
        })
        .collect();
    Ok(serde_json::json!({
        "block": config.block,
        "params": model.params.num_elements(),
        "tokens": stats.tokens,
        "mean_context": context,
        "train_flops_per_token": train.total,
        "inference_flops_per_token": realized.total,
        "inference_ffn_flops_per_token": realized.ffn_figure(),
        "dense_inference_flops_per_token": dense.total,
        "dense_inference_ffn_flops_per_token": dense.ffn_figure(),
        "mean_depth_easy": stats.mean_depth_of(Difficulty::Easy),
        "mean_depth_hard": stats.mean_depth_of(Difficulty::Hard),
        "mean_depth_other": stats.mean_depth_of(Difficulty::Other),
        "layers": layers,
    }))
}

/// The text report.
fn report(config: &Config, stats: &RoutingStats, dir: &Path, source: &str) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {:?} block, {} layers, d {}, h {}, E {} (top {}), D {}; {} tokens of {source} \
         validation",
        dir.display(),
        config.block,
        config.n_layers,
        config.d_model,
        config.hidden,
        config.n_experts,
        config.top_k,
        config.max_depth,
        stats.tokens
    );
    for layer in 0..config.n_layers {
        let _ = write!(out, "layer {layer}:");
        match stats.mean_depth(layer) {
            Some(mean) => {
                let counts = &stats.depth_counts[layer];
                let total: u64 = counts.iter().sum();
                let histogram: Vec<String> = counts
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| format!("{}:{:.1}%", i + 1, 100.0 * c as f64 / total as f64))
                    .collect();
                let lambda = stats.mean_lambda(config, layer).unwrap_or(f64::NAN);
                let _ = write!(
                    out,
                    " depth [{}] mean {mean:.2}, mean λ {lambda:.3};",
                    histogram.join(" ")
                );
            }
            None => out.push_str(" no depth router;"),
        }
        let experts = &stats.expert_counts[layer];
        let total: u64 = experts.iter().sum();
        if total > 0 {
            let load: Vec<String> = experts
                .iter()
                .map(|&c| format!("{:.1}", 100.0 * c as f64 / total as f64))
                .collect();
            let _ = write!(out, " expert load % [{}]", load.join(" "));
        } else {
            out.push_str(" no expert router");
        }
        out.push('\n');
    }
    let (context, realized, dense_flops) = realized_and_dense(config, stats)?;
    let _ = writeln!(
        out,
        "inference FLOPs/token (mean context {context:.1}): {:.3} M realized, dense {:.3} M \
         ({:.2}×); feed-forward part {:.3} M vs dense {:.3} M ({:.2}×)",
        realized.total / 1e6,
        dense_flops.total / 1e6,
        realized.total / dense_flops.total,
        realized.ffn_figure() / 1e6,
        dense_flops.ffn_figure() / 1e6,
        realized.ffn_figure() / dense_flops.ffn_figure()
    );
    let easy = stats.mean_depth_of(Difficulty::Easy);
    let hard = stats.mean_depth_of(Difficulty::Hard);
    if let (Some(easy), Some(hard)) = (easy, hard) {
        let other = stats.mean_depth_of(Difficulty::Other).unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "mean depth by target difficulty: easy {easy:.3}, hard {hard:.3}, other {other:.3}"
        );
    }
    Ok(out)
}

fn write_svgs(dir: &Path, config: &Config, stats: &RoutingStats, run_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the SVG directory `{}`", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))
    };
    let metrics_path = run_dir.join(METRICS_FILE);
    if metrics_path.is_file() {
        let rows = read_metrics(&metrics_path)?;
        let series = Series {
            label: run_dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()),
            train: rows.iter().map(|r| (r.step as f64, r.loss as f64)).collect(),
            val: rows
                .iter()
                .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)))
                .collect(),
        };
        write("loss-curves.svg", loss_curves_svg(&[series]))?;
    } else {
        eprintln!("no {} next to the checkpoint: loss curves skipped", METRICS_FILE);
    }
    let depth_panels: Vec<(String, Vec<(String, f64)>)> = (0..config.n_layers)
        .filter(|&layer| !stats.depth_counts[layer].is_empty())
        .map(|layer| {
            let bars = stats.depth_counts[layer]
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("{}", i + 1), c as f64))
                .collect();
            (format!("layer {layer}"), bars)
        })
        .collect();
    if !depth_panels.is_empty() {
        write("depth-histograms.svg", histograms_svg("chosen loop count", &depth_panels))?;
    }
    let expert_panels: Vec<(String, Vec<(String, f64)>)> = (0..config.n_layers)
        .filter(|&layer| !stats.expert_counts[layer].is_empty())
        .map(|layer| {
            let bars = stats.expert_counts[layer]
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("{i}"), c as f64))
                .collect();
            (format!("layer {layer}"), bars)
        })
        .collect();
    if !expert_panels.is_empty() {
        write("expert-load.svg", histograms_svg("expert load", &expert_panels))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_depths_experts_lambda_and_difficulty() {
        let config = Config { n_layers: 2, max_depth: 4, n_experts: 4, top_k: 1, ..Config::tiny() };
        let mut stats = RoutingStats::new(&config);
        let routing = Routing {
            depth: vec![vec![1, 4, 4, 2], vec![]],
            experts: vec![vec![0, 0, 3, 1], vec![2, 2, 2, 2]],
        };
        let labels = [Difficulty::Easy, Difficulty::Hard, Difficulty::Hard, Difficulty::Other];
        stats.add(&config, &routing, Some(&labels));
        assert_eq!(stats.depth_counts, vec![vec![1, 1, 0, 2], vec![]]);
        assert_eq!(stats.expert_counts, vec![vec![2, 1, 0, 1], vec![0, 0, 4, 0]]);
        assert_eq!(stats.mean_depth(0), Some(11.0 / 4.0));
        assert_eq!(stats.mean_depth(1), None);
        assert_eq!(stats.mean_lambda(&config, 0), Some(1.0 - 11.0 / 16.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Easy), Some(1.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Hard), Some(4.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Other), Some(2.0));
        let average = Config { fusion: Fusion::Average, ..config.clone() };
        assert_eq!(stats.mean_lambda(&average, 0), Some(0.5));
    }
}
