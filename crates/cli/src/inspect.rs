//! `vffn inspect`: what the routers of a checkpoint do on validation data — per layer the
//! histogram of chosen depths, the expert load and the mean fusion weight λ; the realized
//! inference FLOPs per token against a dense model; on the built-in corpus, the mean depth for
//! easy and hard bytes. `--svg DIR` also draws the loss curves, the depth histograms, the expert
//! load and, from the run's metrics, the depth router's training agreement (`routing.svg`).
//!
//! Expert load is reported twice: over the tokens whose width path runs (λ > 0: chosen loops
//! ℓ < D with the gated fusion, every token with `fusion = "average"` or width-only), which is
//! the load the experts carry at inference, and as the router's raw choice over all tokens.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use vffn_model::{
    causal_mean_context, inference_flops, realized_inference_flops_from_counts, training_flops,
    validation_batches, BlockKind, Config, DepthRouting, Difficulty, FfnPath, FlopsBreakdown,
    Model, Routing, WeightDtype,
};

use crate::ckpt_io;
use crate::common::{in_pool, load_dataset, WeightsArg};
use crate::metrics::{read_metrics, MetricsRow, METRICS_FILE};
use crate::svg::{histograms_svg, line_panels_svg, loss_curves_svg, LinePanel, Series};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Run or checkpoint directory, or a model file (e.g. from `vffn export`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data file whose validation split (last 10%) is routed (default: the built-in corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write loss-curves.svg, depth-histograms.svg, expert-load.svg and routing.svg into this
    /// directory.
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
    #[command(flatten)]
    pub weights: WeightsArg,
    /// Also route every batch with the model's weights held as this dtype (f32 or bf16) and
    /// report how often the two agree on each token's chosen depth and experts.
    #[arg(long, value_name = "f32|bf16")]
    pub against: Option<String>,
}

/// Routing of the same tokens by the model and by a reference (the same checkpoint with its
/// weights held in another dtype, `--against`).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingAgreement {
    /// Tokens compared.
    pub tokens: u64,
    /// Per layer: tokens whose chosen depth is the reference's (layers with a depth router).
    pub depth: Vec<u64>,
    /// Tokens whose chosen depth is the reference's in every layer with a depth router.
    pub depth_all_layers: u64,
    /// Per layer: tokens whose chosen experts (in slot order) are the reference's.
    pub experts: Vec<u64>,
}

impl RoutingAgreement {
    pub fn new(config: &Config) -> Self {
        let layers = config.n_layers;
        RoutingAgreement {
            tokens: 0,
            depth: vec![0; layers],
            depth_all_layers: 0,
            experts: vec![0; layers],
        }
    }

    /// Adds one batch of `tokens` tokens routed by the model (`got`) and the reference.
    pub fn add(&mut self, config: &Config, tokens: usize, got: &Routing, reference: &Routing) {
        let k = config.top_k.max(1);
        let mut all_layers = vec![true; tokens];
        for (layer, (mine, theirs)) in got.depth.iter().zip(&reference.depth).enumerate() {
            for (token, (a, b)) in mine.iter().zip(theirs).enumerate() {
                self.depth[layer] += u64::from(a == b);
                all_layers[token] &= a == b;
            }
        }
        for (layer, (mine, theirs)) in got.experts.iter().zip(&reference.experts).enumerate() {
            let same = mine.chunks_exact(k).zip(theirs.chunks_exact(k)).filter(|(a, b)| a == b);
            self.experts[layer] += same.count() as u64;
        }
        self.depth_all_layers += all_layers.iter().filter(|&&same| same).count() as u64;
        self.tokens += tokens as u64;
    }

    /// Per layer: the share of tokens that agree (None for layers without that router).
    fn shares(&self, counts: &[u64], routed: impl Fn(usize) -> bool) -> Vec<Option<f64>> {
        let total = self.tokens.max(1) as f64;
        (0..counts.len()).map(|l| routed(l).then(|| counts[l] as f64 / total)).collect()
    }
}

/// Routing counts accumulated over batches.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingStats {
    /// Per layer: tokens that chose ℓ loops, at index ℓ − 1 (empty for layers without a depth
    /// router).
    pub depth_counts: Vec<Vec<u64>>,
    /// Per layer: how often the router chose each expert, over all tokens (empty without an
    /// expert router).
    pub expert_counts: Vec<Vec<u64>>,
    /// Per layer: how often each expert was chosen by tokens whose width path runs (λ > 0).
    pub width_expert_counts: Vec<Vec<u64>>,
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
            width_expert_counts: vec![Vec::new(); config.n_layers],
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
        let k = config.top_k.max(1);
        for (layer, experts) in routing.experts.iter().enumerate().take(config.n_layers) {
            if experts.is_empty() {
                continue;
            }
            let depths = routing.depth.get(layer).map_or(&[][..], Vec::as_slice);
            // The width path runs where there is no depth router (width-only) or λ > 0.
            let depth_max = config.max_depth as f32;
            let runs_width = |token: usize| {
                depths.is_empty()
                    || depths
                        .get(token)
                        .is_some_and(|&c| config.fusion.lambda(c as f32, depth_max) > 0.0)
            };
            self.expert_counts[layer].resize(config.n_experts, 0);
            self.width_expert_counts[layer].resize(config.n_experts, 0);
            for (slot, &expert) in experts.iter().enumerate() {
                let e = expert as usize;
                if e >= config.n_experts {
                    continue;
                }
                self.expert_counts[layer][e] += 1;
                if runs_width(slot / k) {
                    self.width_expert_counts[layer][e] += 1;
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
        Some(config.fusion.lambda(mean_depth, config.max_depth as f64))
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
    let (dir, model) = ckpt_io::read_inference_model(&args.checkpoint, &args.weights)?;
    let config = model.config.clone();
    let (dataset, source) = load_dataset(args.data.as_deref(), config.seq_len)?;
    let mut stats = RoutingStats::new(&config);
    let batches = validation_batches(&dataset.val, config.seq_len, config.batch_size)
        .context("validation split")?;
    let limit = if args.batches == 0 { usize::MAX } else { args.batches };
    let mut reference = match &args.against {
        Some(text) => {
            let weights = WeightsArg { text: text.clone() };
            let (_, reference) =
                ckpt_io::read_inference_model(&args.checkpoint, &weights).context("--against")?;
            Some((reference, RoutingAgreement::new(&config)))
        }
        None => None,
    };
    for batch in batches.take(limit) {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let out = model.infer(&batch.inputs, b, t).context("inference forward")?;
        stats.add(&config, &out.routing, batch.target_difficulty.as_deref());
        stats.tokens += (b * t) as u64;
        if let Some((reference, agreement)) = &mut reference {
            let theirs = reference.infer(&batch.inputs, b, t).context("--against forward")?;
            agreement.add(&config, b * t, &out.routing, &theirs.routing);
        }
    }
    let agreement = reference.map(|(r, agreement)| (r.weights(), agreement));
    if args.json {
        let mut line = json_report(&model, &stats)?;
        if let Some((weights, agreement)) = &agreement {
            line["against"] = agreement_json(&stats, *weights, agreement);
        }
        outln!("{}", serde_json::to_string(&line).context("inspect result")?);
    } else {
        let weights = (model.weights(), model.ffn_path());
        out!("{}", report(&config, &stats, &dir, &source, weights)?);
        if let Some((weights, agreement)) = &agreement {
            out!("{}", agreement_report(&stats, *weights, agreement));
        }
    }
    if let Some(svg_dir) = &args.svg {
        write_svgs(svg_dir, &stats, &run_dir_of(&args.checkpoint, &dir))?;
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

/// The `against` object of the `--json` line: shares of tokens whose routing agrees.
fn agreement_json(
    stats: &RoutingStats,
    weights: WeightDtype,
    agreement: &RoutingAgreement,
) -> serde_json::Value {
    let depth_routed = |l: usize| !stats.depth_counts[l].is_empty();
    let expert_routed = |l: usize| !stats.expert_counts[l].is_empty();
    let any_depth = (0..stats.depth_counts.len()).any(depth_routed);
    serde_json::json!({
        "weights": weights.name(),
        "tokens": agreement.tokens,
        "depth_agreement": agreement.shares(&agreement.depth, depth_routed),
        "depth_agreement_all_layers": any_depth
            .then(|| agreement.depth_all_layers as f64 / agreement.tokens.max(1) as f64),
        "expert_agreement": agreement.shares(&agreement.experts, expert_routed),
    })
}

/// The text lines of `--against`.
fn agreement_report(
    stats: &RoutingStats,
    weights: WeightDtype,
    agreement: &RoutingAgreement,
) -> String {
    let percent = |shares: Vec<Option<f64>>| -> String {
        let cells: Vec<String> = shares
            .iter()
            .map(|s| s.map_or_else(|| "-".into(), |s| format!("{:.2}", 100.0 * s)))
            .collect();
        cells.join(" ")
    };
    let depth = agreement.shares(&agreement.depth, |l| !stats.depth_counts[l].is_empty());
    let experts = agreement.shares(&agreement.experts, |l| !stats.expert_counts[l].is_empty());
    format!(
        "routing against {weights} weights over {} tokens: chosen depth agrees on {:.2}% of \
         tokens in every layer, per layer % [{}]; chosen experts per layer % [{}]\n",
        agreement.tokens,
        100.0 * agreement.depth_all_layers as f64 / agreement.tokens.max(1) as f64,
        percent(depth),
        percent(experts)
    )
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
                "width_expert_counts": stats.width_expert_counts[layer],
            })
        })
        .collect();
    Ok(serde_json::json!({
        "block": config.block,
        "weights": model.weights().name(),
        "ffn_path": model.ffn_path().to_string(),
        "params": config.num_params(),
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
fn report(
    config: &Config,
    stats: &RoutingStats,
    dir: &Path,
    source: &str,
    (weights, ffn_path): (WeightDtype, FfnPath),
) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {:?} block, {} layers, d {}, h {}, E {} (top {}), D {}, {weights} weights; {} \
         tokens of {source} validation",
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
    let _ = writeln!(out, "ffn path: {ffn_path}");
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
        let shares = |counts: &[u64]| {
            let total: u64 = counts.iter().sum();
            let load: Vec<String> = counts
                .iter()
                .map(|&c| format!("{:.1}", 100.0 * c as f64 / total.max(1) as f64))
                .collect();
            (total, load.join(" "))
        };
        let (all_slots, router) = shares(&stats.expert_counts[layer]);
        let (width_slots, load) = shares(&stats.width_expert_counts[layer]);
        if all_slots > 0 {
            let _ = write!(
                out,
                " expert load % over width-path tokens ({:.1}% of tokens) [{load}], router \
                 choice % over all tokens [{router}]",
                100.0 * width_slots as f64 / all_slots as f64
            );
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

fn write_svgs(dir: &Path, stats: &RoutingStats, run_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the SVG directory `{}`", dir.display()))?;
    let write = |name: &str, text: String| ckpt_io::write_atomic(&dir.join(name), text.as_bytes());
    let metrics_path = run_dir.join(METRICS_FILE);
    if ckpt_io::exists(&metrics_path)? {
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
        errln!("no {} next to the checkpoint: loss curves skipped", METRICS_FILE);
    }
    // Depth bars are loop counts (from 1), expert bars expert indices (from 0).
    let histograms = [
        ("depth-histograms.svg", "chosen loop count", &stats.depth_counts, 1),
        ("expert-load.svg", "expert load", &stats.expert_counts, 0),
    ];
    for (file, title, counts, first) in histograms {
        let panels = layer_panels(counts, first);
        if !panels.is_empty() {
            write(file, histograms_svg(title, &panels))?;
        }
    }
    if let Some(panels) = routing_panels(&run_dir.join(METRICS_FILE))? {
        let title = "Depth router during training: Gumbel pick vs noise-free argmax";
        write("routing.svg", line_panels_svg(title, &panels))?;
    }
    Ok(())
}

/// One histogram panel per layer that has counts (`layer L`), its bars labelled `first`,
/// `first + 1`, ….
fn layer_panels(counts: &[Vec<u64>], first: usize) -> Vec<(String, Vec<(String, f64)>)> {
    let panel = |(layer, counts): (usize, &Vec<u64>)| {
        let bars = counts.iter().enumerate().map(|(i, &c)| ((first + i).to_string(), c as f64));
        (format!("layer {layer}"), bars.collect())
    };
    counts.iter().enumerate().filter(|(_, c)| !c.is_empty()).map(panel).collect()
}

/// The `depth_agree` and `depth_margin` curves of every layer from a metrics file (None when
/// the file is missing or has no such rows: no depth router, or an older run).
fn routing_panels(metrics_path: &Path) -> Result<Option<Vec<LinePanel>>> {
    if !metrics_path.is_file() {
        return Ok(None);
    }
    let rows = read_metrics(metrics_path)?;
    let curves = |field: fn(&MetricsRow) -> Option<&Vec<f64>>| {
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for row in &rows {
            for (layer, &value) in field(row).into_iter().flatten().enumerate() {
                if lines.len() <= layer {
                    lines.push((format!("layer {layer}"), Vec::new()));
                }
                lines[layer].1.push((row.step as f64, value));
            }
        }
        lines
    };
    let agree = curves(|r| r.depth_agree.as_ref());
    if agree.is_empty() {
        return Ok(None);
    }
    Ok(Some(vec![
        LinePanel {
            title: "agreement: training pick = argmax".into(),
            y_title: "share of tokens".into(),
            lines: agree,
        },
        LinePanel {
            title: "mean top-1 − top-2 depth-logit margin".into(),
            y_title: "logit margin".into(),
            lines: curves(|r| r.depth_margin.as_ref()),
        },
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vffn_model::Fusion;

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
        // Layer 0: the two tokens with ℓ = D = 4 skip the width path (their experts 0 and 3);
        // layer 1 has no depth router, so every token runs it.
        assert_eq!(stats.width_expert_counts, vec![vec![1, 1, 0, 0], vec![0, 0, 4, 0]]);
        assert_eq!(stats.mean_depth(0), Some(11.0 / 4.0));
        assert_eq!(stats.mean_depth(1), None);
        assert_eq!(stats.mean_lambda(&config, 0), Some(1.0 - 11.0 / 16.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Easy), Some(1.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Hard), Some(4.0));
        assert_eq!(stats.mean_depth_of(Difficulty::Other), Some(2.0));
        let average = Config { fusion: Fusion::Average, ..config.clone() };
        assert_eq!(stats.mean_lambda(&average, 0), Some(0.5));
        // λ = ½ for every token: the width-path load is the router's choice.
        let mut averaged = RoutingStats::new(&average);
        averaged.add(&average, &routing, None);
        assert_eq!(averaged.width_expert_counts, averaged.expert_counts);
    }
}
