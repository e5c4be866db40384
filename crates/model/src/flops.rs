//! FLOPs accounting: analytic FLOPs per token of a configuration (training and inference) and
//! realized inference FLOPs per token of an actual batch from its routing decisions.
//!
//! # Conventions
//! - A multiply-add is 2 FLOPs; only matrix products are counted (norms, RoPE, softmax, SwiGLU
//!   gating, residual adds and the embedding lookup are left out: O(d) per token, not O(d²)).
//! - A `[k] → [n]` projection costs `2·k·n` per token. One SwiGLU FFN of value width h is
//!   `F = 2·d·2h + 2·h·d = 6·h·d`.
//! - Attention per layer and token: q|k|v projection `6d²`, output projection `2d²`, scores
//!   `2·c·d` and weighted values `2·c·d`, where c is the number of positions attended. For a
//!   causal training sequence of length T the mean is `c = (T+1)/2` ([`causal_mean_context`]).
//! - Training = 3 × forward (forward + backward, which costs about twice the forward).
//!
//! # Components
//! - `ffn`: fixed (unrouted) passes through the layer's own FFN: dense 1·F, MoE's shared FFN 1·F,
//!   width-only VersatileFFN's shared expert 1·F (`shared_expert`).
//! - `width`: routed sub-expert work, top-k of E experts of width h/E: `(k/E)·F` per token that
//!   runs it (MoE experts; VersatileFFN's width path, which runs only where λ > 0: ℓ < D with the
//!   gated fusion, every token with `fusion = "average"` (λ = ½) and width-only).
//! - `depth`: looped passes through the shared FFN: k-loop D·F; VersatileFFN training D·F (all
//!   loops are computed for the Gumbel-softmax mixture), inference ℓ·F for a token that chose ℓ.
//! - `routers`: the expert gate `2·d·E` and the depth predictor `2·d·D`.
//! - `head`: the output projection `2·d·V`.
//!
//! So VersatileFFN's inference FFN figure `width + depth` is the paper's
//! `Base·N_mean + (MoE − Base)·P`: Base = F, N_mean = mean loops, MoE − Base = (k/E)·F (the
//! width path, what an MoE layer adds to a dense one), P = fraction of tokens taking the width
//! path.

use thiserror::Error;

use crate::config::{BlockKind, Config, Fusion, Paths};

/// FLOPs per token, by component (see the module doc for what each one counts).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlopsBreakdown {
    pub attention: f64,
    pub ffn: f64,
    pub width: f64,
    pub depth: f64,
    pub head: f64,
    pub routers: f64,
    pub total: f64,
}

impl FlopsBreakdown {
    /// Everything the feed-forward blocks do: `ffn + width + depth`.
    pub fn ffn_figure(&self) -> f64 {
        self.ffn + self.width + self.depth
    }

    fn with_total(mut self) -> Self {
        self.total = self.attention + self.ffn + self.width + self.depth + self.head + self.routers;
        self
    }

    fn add(self, other: FlopsBreakdown) -> Self {
        FlopsBreakdown {
            attention: self.attention + other.attention,
            ffn: self.ffn + other.ffn,
            width: self.width + other.width,
            depth: self.depth + other.depth,
            head: self.head + other.head,
            routers: self.routers + other.routers,
            total: 0.0,
        }
        .with_total()
    }

    fn scale(self, factor: f64) -> Self {
        FlopsBreakdown {
            attention: self.attention * factor,
            ffn: self.ffn * factor,
            width: self.width * factor,
            depth: self.depth * factor,
            head: self.head * factor,
            routers: self.routers * factor,
            total: 0.0,
        }
        .with_total()
    }
}

/// Errors from realized FLOPs: routing data that does not fit the configuration.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FlopsError {
    #[error("routing has {found} layers, the model has {expected}")]
    LayerCount { expected: usize, found: usize },
    #[error("layer {layer}: depth histogram has {found} bins, expected max_depth = {expected}")]
    BinCount { layer: usize, expected: usize, found: usize },
    #[error("layer {layer}: chosen loop count {depth} outside 1..={max_depth}")]
    DepthOutOfRange { layer: usize, depth: usize, max_depth: usize },
    #[error("layer {layer}: no tokens")]
    NoTokens { layer: usize },
}

/// The depth-path routing of one layer, as the FLOPs formula sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthRouting {
    /// N_mean: mean number of FFN loops per token (1..=D).
    pub mean_loops: f64,
    /// P: fraction of tokens whose width path runs under the gated fusion (chosen loops ℓ < D,
    /// so λ > 0); `fusion = "average"` runs it for every token whatever this says.
    pub width_fraction: f64,
}

impl DepthRouting {
    /// Loop counts spread evenly over 1..=D: N_mean = (D+1)/2, P = (D−1)/D.
    pub fn uniform(max_depth: usize) -> Self {
        let depth = max_depth as f64;
        DepthRouting { mean_loops: (depth + 1.0) / 2.0, width_fraction: (depth - 1.0) / depth }
    }

    /// From a histogram: `counts[ℓ − 1]` tokens chose ℓ loops, ℓ = 1..=D.
    pub fn from_counts(layer: usize, counts: &[u64]) -> Result<Self, FlopsError> {
        let tokens: u64 = counts.iter().sum();
        if tokens == 0 {
            return Err(FlopsError::NoTokens { layer });
        }
        let loops: f64 = counts.iter().enumerate().map(|(i, &c)| (i + 1) as f64 * c as f64).sum();
        let below_max: u64 = counts[..counts.len() - 1].iter().sum();
        Ok(DepthRouting {
            mean_loops: loops / tokens as f64,
            width_fraction: below_max as f64 / tokens as f64,
        })
    }
}

/// Mean number of attended positions per token of a causal sequence of length T: (T+1)/2.
pub fn causal_mean_context(seq_len: usize) -> f64 {
    (seq_len as f64 + 1.0) / 2.0
}

/// F: one pass through a SwiGLU FFN of value width h, `6·h·d`.
pub fn dense_ffn_flops(config: &Config) -> f64 {
    6.0 * config.hidden as f64 * config.d_model as f64
}

/// Training FLOPs per token (3 × forward) with `mean_context` attended positions.
pub fn training_flops(config: &Config, mean_context: f64) -> FlopsBreakdown {
    let layer = layer_forward(config, mean_context, None);
    forward_total(config, layer).scale(3.0)
}

/// Inference FLOPs per token with the same depth routing assumed in every layer (ignored by
/// blocks other than versatile), e.g. [`DepthRouting::uniform`].
pub fn inference_flops(
    config: &Config,
    mean_context: f64,
    routing: DepthRouting,
) -> FlopsBreakdown {
    let layer = layer_forward(config, mean_context, Some(routing));
    forward_total(config, layer)
}

/// Realized inference FLOPs per token of a batch from per-layer depth histograms
/// (`counts[layer][ℓ − 1]`). Blocks other than versatile do the same work for every token, so
/// for them the routing is not consulted and this is the analytic figure.
pub fn realized_inference_flops_from_counts(
    config: &Config,
    mean_context: f64,
    depth_counts: &[Vec<u64>],
) -> Result<FlopsBreakdown, FlopsError> {
    if config.block != BlockKind::Versatile {
        return Ok(inference_flops(config, mean_context, DepthRouting::uniform(config.max_depth)));
    }
    if depth_counts.len() != config.n_layers {
        return Err(FlopsError::LayerCount {
            expected: config.n_layers,
            found: depth_counts.len(),
        });
    }
    let mut sum = FlopsBreakdown::default();
    for (layer, counts) in depth_counts.iter().enumerate() {
        if counts.len() != config.max_depth {
            return Err(FlopsError::BinCount {
                layer,
                expected: config.max_depth,
                found: counts.len(),
            });
        }
        let routing = DepthRouting::from_counts(layer, counts)?;
        sum = sum.add(layer_forward(config, mean_context, Some(routing)));
    }
    Ok(sum.add(head(config)))
}

/// Realized inference FLOPs per token from each layer's chosen loop counts per token
/// (`chosen_depths[layer][token]` in 1..=D).
pub fn realized_inference_flops(
    config: &Config,
    mean_context: f64,
    chosen_depths: &[Vec<usize>],
) -> Result<FlopsBreakdown, FlopsError> {
    let mut histograms = Vec::with_capacity(chosen_depths.len());
    for (layer, depths) in chosen_depths.iter().enumerate() {
        let mut counts = vec![0u64; config.max_depth];
        for &depth in depths {
            if !(1..=config.max_depth).contains(&depth) {
                return Err(FlopsError::DepthOutOfRange {
                    layer,
                    depth,
                    max_depth: config.max_depth,
                });
            }
            counts[depth - 1] += 1;
        }
        histograms.push(counts);
    }
    realized_inference_flops_from_counts(config, mean_context, &histograms)
}

/// All layers (identical) plus the head.
fn forward_total(config: &Config, layer: FlopsBreakdown) -> FlopsBreakdown {
    layer.scale(config.n_layers as f64).add(head(config))
}

fn head(config: &Config) -> FlopsBreakdown {
    FlopsBreakdown {
        head: 2.0 * config.d_model as f64 * config.vocab_size as f64,
        ..Default::default()
    }
    .with_total()
}

/// One layer's forward FLOPs per token. `routing` = None is training (all D loops, width path
/// for every token); Some is inference with that depth routing.
fn layer_forward(config: &Config, context: f64, routing: Option<DepthRouting>) -> FlopsBreakdown {
    let d = config.d_model as f64;
    let full_ffn = dense_ffn_flops(config);
    let width_path = config.top_k as f64 / config.n_experts as f64 * full_ffn;
    let expert_gate = 2.0 * d * config.n_experts as f64;
    let depth_predictor = 2.0 * d * config.max_depth as f64;
    let max_depth = config.max_depth as f64;
    let mut layer =
        FlopsBreakdown { attention: 8.0 * d * d + 4.0 * context * d, ..Default::default() };
    match config.block {
        BlockKind::Dense => layer.ffn = full_ffn,
        BlockKind::Kloop => layer.depth = max_depth * full_ffn,
        BlockKind::Moe => {
            layer.ffn = full_ffn;
            layer.width = width_path;
            layer.routers = expert_gate;
        }
        BlockKind::Versatile => {
            let (loops, width_fraction) = match routing {
                None => (max_depth, 1.0),
                Some(r) if config.fusion == Fusion::Average => (r.mean_loops, 1.0),
                Some(r) => (r.mean_loops, r.width_fraction),
            };
            match config.paths {
                Paths::Both => {
                    layer.depth = loops * full_ffn;
                    layer.width = width_fraction * width_path;
                    layer.routers = expert_gate + depth_predictor;
                }
                Paths::Width => {
                    if config.has_shared_expert() {
                        layer.ffn = full_ffn;
                    }
                    layer.width = width_path;
                    layer.routers = expert_gate;
                }
                Paths::Depth => {
                    layer.depth = loops * full_ffn;
                    layer.routers = depth_predictor;
                }
            }
        }
    }
    layer.with_total()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(block: BlockKind) -> Config {
        Config { block, ..Config::tiny() }
    }

    #[test]
    fn one_loop_does_a_quarter_of_the_depth_work_of_four() {
        let versatile = Config::tiny();
        let tokens = 1000;
        let shallow = vec![vec![1usize; tokens]; 4];
        let deep = vec![vec![4usize; tokens]; 4];
        let ctx = causal_mean_context(128);
        let shallow = realized_inference_flops(&versatile, ctx, &shallow).unwrap();
        let deep = realized_inference_flops(&versatile, ctx, &deep).unwrap();
        assert_eq!(shallow.depth * 4.0, deep.depth);
        // ℓ = D leaves λ = 0: no width path at all; ℓ = 1 runs it for every token.
        assert_eq!(deep.width, 0.0);
        assert_eq!(shallow.width, 4.0 * 0.25 * dense_ffn_flops(&versatile));
        assert_eq!(shallow.attention, deep.attention);
    }

    #[test]
    fn tiny_versatile_numbers_by_hand() {
        // d 128, h 512, L 4, V 256, E 8, k 2, D 4, T 128 → c = 64.5.
        // F = 6·512·128 = 393 216; attention/layer = 8·128² + 4·64.5·128 = 164 096.
        // Inference, loops evenly over 1..4 (N_mean 2.5, P 3/4), per layer:
        //   164 096 + 2.5 F (983 040) + 0.75·F/4 (73 728) + 2·128·12 (3 072) = 1 223 936;
        //   ×4 layers + head 2·128·256 (65 536) = 4 961 280 ≈ 5.0 MFLOP.
        // Training forward per layer: 164 096 + 4 F (1 572 864) + F/4 (98 304) + 3 072
        //   = 1 838 336; ×4 + 65 536 = 7 418 880; ×3 = 22 256 640 ≈ 22.3 MFLOP.
        let versatile = Config::tiny();
        let ctx = causal_mean_context(versatile.seq_len);
        let inference = inference_flops(&versatile, ctx, DepthRouting::uniform(4));
        assert_eq!(inference.total, 4_961_280.0);
        let training = training_flops(&versatile, ctx);
        assert_eq!(training.total, 22_256_640.0);
        assert_eq!(training.head, 3.0 * 65_536.0);
        // Per-token depths spread evenly give the same figure as the analytic uniform routing.
        let spread: Vec<Vec<usize>> =
            (0..4).map(|_| (0..400).map(|t| t % 4 + 1).collect()).collect();
        assert_eq!(realized_inference_flops(&versatile, ctx, &spread).unwrap(), inference);
    }

    #[test]
    fn inference_ffn_figure_is_base_nmean_plus_moe_minus_base_p() {
        let ctx = 10.0;
        let dense = inference_flops(&config(BlockKind::Dense), ctx, DepthRouting::uniform(4));
        let moe = inference_flops(&config(BlockKind::Moe), ctx, DepthRouting::uniform(4));
        let (base, moe_minus_base) = (dense.ffn_figure(), moe.ffn_figure() - dense.ffn_figure());
        let counts = vec![vec![5, 0, 3, 2], vec![0, 0, 0, 10], vec![10, 0, 0, 0], vec![1, 2, 3, 4]];
        let realized = realized_inference_flops_from_counts(&Config::tiny(), ctx, &counts).unwrap();
        let mut expected = 0.0;
        for layer in &counts {
            let tokens: u64 = layer.iter().sum();
            let n_mean =
                layer.iter().enumerate().map(|(i, &c)| (i + 1) as f64 * c as f64).sum::<f64>()
                    / tokens as f64;
            let p = (tokens - layer[3]) as f64 / tokens as f64;
            expected += (base * n_mean + moe_minus_base * p) / 4.0;
        }
        assert!((realized.ffn_figure() - expected).abs() < 1e-6 * expected);
        assert_eq!(realized.ffn, 0.0);
    }

    #[test]
    fn baselines_and_ablations() {
        let ctx = causal_mean_context(128);
        let f = dense_ffn_flops(&Config::tiny());
        let dense = training_flops(&config(BlockKind::Dense), ctx);
        let kloop = training_flops(&config(BlockKind::Kloop), ctx);
        let moe = training_flops(&config(BlockKind::Moe), ctx);
        assert_eq!(dense.ffn, 3.0 * 4.0 * f);
        assert_eq!(kloop.depth, 4.0 * dense.ffn, "k-loop runs the FFN D = 4 times");
        assert_eq!(moe.ffn, dense.ffn);
        assert_eq!(moe.width, dense.ffn * 2.0 / 8.0);
        assert_eq!(moe.routers, 3.0 * 4.0 * 2.0 * 128.0 * 8.0);
        assert_eq!(dense.attention, kloop.attention);
        let width_only =
            Config { paths: Paths::Width, shared_expert: Some(false), ..Config::tiny() };
        let depth_only = Config { paths: Paths::Depth, ..Config::tiny() };
        let w = inference_flops(&width_only, ctx, DepthRouting::uniform(4));
        let d = inference_flops(&depth_only, ctx, DepthRouting::uniform(4));
        assert_eq!((w.depth, w.width), (0.0, 4.0 * f / 4.0));
        assert_eq!((d.depth, d.width), (4.0 * 2.5 * f, 0.0));
        // Totals are the sum of the components.
        for b in [dense, kloop, moe, w, d] {
            let sum = b.attention + b.ffn + b.width + b.depth + b.head + b.routers;
            assert_eq!(b.total, sum);
        }
        // Routing does not change the non-adaptive blocks.
        let routed = realized_inference_flops(&config(BlockKind::Moe), ctx, &[]).unwrap();
        assert_eq!(routed, inference_flops(&config(BlockKind::Moe), ctx, DepthRouting::uniform(4)));
    }

    /// One layer (d 128, h 512, E 8, k 2, D 4: F = 393 216, width path F/4 = 98 304, routers
    /// 2·128·8 = 2 048 and 2·128·4 = 1 024, head 65 536, context 1 → attention 131 584) and
    /// a fixed routing of 4 tokens choosing 1, 1, 2 and 4 loops, counted by hand.
    #[test]
    fn realized_flops_of_each_fusion_mode_and_width_setup_by_hand() {
        let one_layer = Config { n_layers: 1, ..Config::tiny() };
        let routing = [vec![1usize, 1, 2, 4]];
        let realized = |cfg: &Config| realized_inference_flops(cfg, 1.0, &routing).unwrap();
        let fixed = 131_584.0 + 65_536.0;
        // Gated: loops 1+1+2+4 = 8 → 2 F per token; the width path for the 3 tokens with ℓ < 4.
        let gated = realized(&one_layer);
        assert_eq!(gated.depth, 786_432.0);
        assert_eq!(gated.width, 73_728.0);
        assert_eq!(gated.routers, 3_072.0);
        assert_eq!(gated.total, fixed + 786_432.0 + 73_728.0 + 3_072.0);
        // Average (λ = ½ for every token): the same loops, the width path for all 4 tokens.
        let average = realized(&Config { fusion: Fusion::Average, ..one_layer.clone() });
        assert_eq!(average.depth, 786_432.0);
        assert_eq!(average.width, 98_304.0);
        assert_eq!(average.total, fixed + 786_432.0 + 98_304.0 + 3_072.0);
        // Width-only: no loops; every token runs its 2 of 8 experts, plus the whole FFN with
        // the shared expert (the default for width-only).
        let width = Config { paths: Paths::Width, ..one_layer.clone() };
        let shared = inference_flops(&width, 1.0, DepthRouting::uniform(4));
        assert_eq!((shared.ffn, shared.width, shared.depth), (393_216.0, 98_304.0, 0.0));
        assert_eq!(shared.total, fixed + 393_216.0 + 98_304.0 + 2_048.0);
        let alone = Config { shared_expert: Some(false), ..width };
        let alone = inference_flops(&alone, 1.0, DepthRouting::uniform(4));
        assert_eq!((alone.ffn, alone.width), (0.0, 98_304.0));
        // Training counts every loop and the width path for every token in both fusions.
        let train_gated = training_flops(&one_layer, 1.0);
        let train_average =
            training_flops(&Config { fusion: Fusion::Average, ..one_layer.clone() }, 1.0);
        assert_eq!(train_gated, train_average);
        assert_eq!(train_gated.width, 3.0 * 98_304.0);
    }

    #[test]
    fn bad_routing_is_an_error() {
        let versatile = Config::tiny();
        assert_eq!(
            realized_inference_flops(&versatile, 1.0, &[vec![1]]),
            Err(FlopsError::LayerCount { expected: 4, found: 1 })
        );
        let bad_depth = vec![vec![1], vec![5], vec![1], vec![1]];
        assert!(matches!(
            realized_inference_flops(&versatile, 1.0, &bad_depth),
            Err(FlopsError::DepthOutOfRange { layer: 1, depth: 5, .. })
        ));
        let empty = vec![vec![1], vec![], vec![1], vec![1]];
        assert_eq!(
            realized_inference_flops(&versatile, 1.0, &empty),
            Err(FlopsError::NoTokens { layer: 1 })
        );
        let bins = vec![vec![1, 2, 3]; 4];
        assert!(matches!(
            realized_inference_flops_from_counts(&versatile, 1.0, &bins),
            Err(FlopsError::BinCount { layer: 0, .. })
        ));
    }
}
