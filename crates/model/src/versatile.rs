//! The VersatileFFN block (Nie et al. 2025), one function per equation of the paper:
//!
//! - [`width_path`]: virtual experts that are slices of the one shared FFN, top-k routed from
//!   the un-normalized post-attention residual x: out_w = x + Σ_k g_k·FFN_k(ff_norm x); with
//!   `shared_expert` (width-only runs) the whole FFN stays active beside them,
//!   out_w = x + FFN(ff_norm x) + Σ_k g_k·FFN_k(ff_norm x), as the MoE baseline keeps its FFN.
//! - [`depth_path`]: the shared FFN looped, x_ℓ = x_{ℓ−1} + FFN(ff_norm x_{ℓ−1}), with a hard
//!   Gumbel-softmax over the loop count ℓ ∈ 1..D: out_d = Σ_ℓ p_ℓ·x_ℓ.
//! - [`fuse`]: λ = (D − Σ_ℓ ℓ·p_ℓ)/D, out = (1−λ)·out_d + λ·out_w.
//! - [`crate::balance`]: the width router's load-balancing loss.
//!
//! Training computes every loop for every token ([`versatile_train`]); inference
//! ([`versatile_infer`]) runs each token exactly its argmax loop count and the width path only
//! for tokens with λ > 0. When the layer's weights are packed (`LayerWeights::ffn`, see
//! [`crate::fused`]) the width routed sum and the depth loops each run as one fused custom op
//! over the FFN kernels (the shared expert as a one-loop depth op over the same packing);
//! otherwise (expert widths the kernels refuse) the composed ops below.
//!
//! Training also measures the depth router ([`DepthAgreement`]): how often the Gumbel pick
//! equals the noise-free argmax that inference uses, and the top-1/top-2 logit margin.

use vffn_autograd::{Rng, Tape, Tensor};
use vffn_kernels::gemm::{MatMut, MatRef};

use crate::balance::{balance_term, BalanceTerm};
use crate::blocks::{ffn_loops, ffn_step, matmul_nn, route_top_k, routed_sum};
use crate::config::{Config, DepthNoise, Fusion, Paths};
use crate::fused;
use crate::layer::LayerWeights;
use crate::weights::Weight;

/// What a versatile layer decided, per token.
pub(crate) struct VersatileRouting {
    /// Chosen loop count 1..D per token (empty when the depth path is off). [N]
    pub depth: Vec<u8>,
    /// Chosen virtual experts per token (empty when the width path is off). [N·k]
    pub experts: Vec<u32>,
    /// Training only, with a depth path: the depth router's picks against its argmax.
    pub agreement: Option<DepthAgreement>,
}

/// One layer's depth router in a training forward: the Gumbel pick against the noise-free
/// argmax (what inference runs), and how decided the logits are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DepthAgreement {
    /// Tokens routed.
    pub tokens: u64,
    /// Tokens whose training pick equals the argmax of the logits (ties: lower index).
    pub agree: u64,
    /// Σ over tokens of (largest − second largest logit); 0 per token when D = 1.
    pub margin_sum: f64,
}

impl DepthAgreement {
    /// Counts of `logits` [N, D] against the chosen loop counts `depth` [N] (1..D).
    fn measure(logits: &Tensor, depth: &[u8]) -> Self {
        let cols = logits.cols().max(1);
        let mut stats = DepthAgreement::default();
        for (row, &picked) in logits.data().chunks_exact(cols).zip(depth) {
            let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                if v > first {
                    (best, first, second) = (i, v, first);
                } else if v > second {
                    second = v;
                }
            }
            stats.tokens += 1;
            stats.agree += u64::from(best + 1 == picked as usize);
            if row.len() > 1 {
                stats.margin_sum += f64::from(first) - f64::from(second);
            }
        }
        stats
    }

    /// Adds another group's counts of the same layer.
    pub fn merge(&mut self, other: &DepthAgreement) {
        self.tokens += other.tokens;
        self.agree += other.agree;
        self.margin_sum += other.margin_sum;
    }

    /// Share of tokens whose pick equals the argmax (None without tokens).
    pub fn agree_fraction(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.agree as f64 / self.tokens as f64)
    }

    /// Mean top-1 − top-2 logit margin (None without tokens).
    pub fn mean_margin(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.margin_sum / self.tokens as f64)
    }
}

/// Width path: virtual expert e is the SwiGLU slice with value rows e·s.., gate rows h+e·s.. of
/// ff_proj and columns e·s.. of ff_out (s = h/E). The gate reads the raw residual x.
// x [N, d], z = ff_norm(x) [N, d] -> (out_w [N, d], router logits [N, E], experts [N·k])
pub(crate) fn width_path(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    z: &Tensor,
) -> (Tensor, Tensor, Vec<u32>) {
    let (h, s) = (cfg.hidden, cfg.expert_width());
    let gate = w.expert_gate.as_ref().expect("versatile layer has expert_gate");
    let logits = gate.linear(tape, x); // [N, E]
    let route = route_top_k(tape, &logits, cfg.top_k);
    if let Some(f) = w.packed() {
        let routed = fused::width_routed(
            tape,
            &f.shared,
            z,
            &route.gates,
            &route.experts,
            &w.ff_proj,
            &w.ff_out,
        );
        let base = residual_base(tape, cfg, w, x);
        return (tape.add(&base, &routed), logits, route.experts);
    }
    if !(tape.wants_grad(&[z]) || w.ff_proj.wants_grad(tape) || w.ff_out.wants_grad(tape)) {
        // Inference (e.g. decoding one token): each expert reads its slices of the weights in
        // place, so a step reads only the chosen experts' weights, once.
        let routed = routed_sum(tape, z, &route, |tape, e, z_e| {
            expert_in_place(tape, z_e, &w.ff_proj, &w.ff_out, h, s, e)
        });
        let base = residual_base(tape, cfg, w, x);
        return (tape.add(&base, &routed), logits, route.experts);
    }
    // Columns e·s.. of ff_out are rows e·s.. of its transpose: transpose once per layer.
    let out_t = tape.transpose(&w.ff_out); // [h, d]
    let routed = routed_sum(tape, z, &route, |tape, e, z_e| {
        let value = w.ff_proj.narrow_rows(e * s, s).expect("value rows in range");
        let gate = w.ff_proj.narrow_rows(h + e * s, s).expect("gate rows in range");
        let proj_e = tape.concat(&[&value, &gate], 0); // [2s, d]
        let u = tape.linear(z_e, &proj_e); // [M_e, 2s]
        let a = tape.swiglu(&u); // [M_e, s]
        let out_rows = out_t.narrow_rows(e * s, s).expect("ff_out columns in range"); // [s, d]
        matmul_nn(tape, &a, &out_rows) // [M_e, d]
    });
    let base = residual_base(tape, cfg, w, x);
    (tape.add(&base, &routed), logits, route.experts)
}

/// What the width path's routed sum is added to: x, or x + FFN(ff_norm x) with the shared
/// expert (the same sum as the moe baseline's x + FFN(z) + routed).
// x [N, d] -> [N, d]
fn residual_base(tape: &mut Tape, cfg: &Config, w: &LayerWeights, x: &Tensor) -> Tensor {
    if cfg.has_shared_expert() {
        ffn_loops(tape, cfg, w, x, 1)
    } else {
        x.clone()
    }
}

/// Virtual expert e on its rows, no gradient: `SwiGLU(z·[value_e; gate_e]ᵀ)·ff_out[:, e·s..]ᵀ`,
/// the weight slices read in place through strided views (no transpose, no concatenation).
// z [M, d], proj [2h, d], out [d, h] -> [M, d]
fn expert_in_place(
    tape: &mut Tape,
    z: &Tensor,
    proj: &Weight,
    out: &Weight,
    h: usize,
    s: usize,
    e: usize,
) -> Tensor {
    let (m, d) = (z.rows(), z.cols());
    let zv = MatRef::new(z.data(), m, d);
    let mut u = vec![0.0f32; m * 2 * s];
    for (half, first_row) in [(0, e * s), (1, h + e * s)] {
        let dst = MatMut::strided(&mut u[half * s..], m, s, 2 * s, 1);
        proj.block(first_row, s, 0, d).linear_into(zv, dst);
    }
    let u = Tensor::from_vec(&[m, 2 * s], u).expect("[M, 2s]");
    let a = tape.swiglu(&u); // [M, s]
    let mut y = vec![0.0f32; m * d];
    let cols = out.block(0, d, e * s, s); // ff_out[:, e·s..e·s+s]
    cols.linear_into(MatRef::new(a.data(), m, s), MatMut::new(&mut y, m, d));
    Tensor::from_vec(&[m, d], y).expect("[M, d]")
}

/// How the depth router picks in a training forward: the hard Gumbel-softmax at temperature τ
/// (straight-through gradient), with Gumbel noise drawn from `noise` (None: no noise).
pub(crate) struct GumbelPick<'a> {
    pub temperature: f32,
    pub noise: Option<&'a mut Rng>,
}

impl GumbelPick<'_> {
    /// The one-hot pick over each row of `logits`: argmax(logits + g), or argmax(logits + τ·g)
    /// with `depth_noise = "scaled"`.
    // logits [N, D] -> one-hot [N, D]
    fn one_hot(self, tape: &mut Tape, depth_noise: DepthNoise, logits: &Tensor) -> Tensor {
        let tau = self.temperature;
        match (depth_noise, self.noise) {
            (DepthNoise::Scaled, Some(rng)) => {
                // Drawn in the same order as the unit-noise op draws, then scaled by τ.
                let g: Vec<f32> = (0..logits.numel()).map(|_| tau * rng.gumbel()).collect();
                tape.gumbel_softmax_hard_with_noise(logits, tau, &g)
            }
            (_, noise) => tape.gumbel_softmax_hard(logits, tau, noise),
        }
    }
}

/// Depth path (training): all D loops for every token, mixed by the one-hot p over loop counts
/// that `pick` draws.
// x [N, d] -> (out_d [N, d], p [N, D], chosen loop count per token [N], agreement)
pub(crate) fn depth_path(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    pick: GumbelPick<'_>,
) -> (Tensor, Tensor, Vec<u8>, DepthAgreement) {
    let predictor = w.depth_predictor.as_ref().expect("versatile layer has depth_predictor");
    let logits = tape.linear(x, predictor); // [N, D]
    let probs = pick.one_hot(tape, cfg.depth_noise, &logits); // one-hot [N, D]
    let depth = one_hot_choices(&probs);
    let agreement = DepthAgreement::measure(&logits, &depth);
    if let Some(f) = w.packed() {
        let (loops, eps) = (cfg.max_depth, cfg.norm_eps);
        let states =
            fused::depth_states(tape, &f.shared, x, &w.ff_norm, &w.ff_proj, &w.ff_out, eps, loops);
        return (tape.weighted_sum(&states, &probs), probs, depth, agreement);
    }
    let mut loops = Vec::with_capacity(cfg.max_depth);
    let mut x_l = x.clone();
    for _ in 0..cfg.max_depth {
        x_l = ffn_step(tape, cfg, w, &x_l);
        loops.push(x_l.clone());
    }
    let refs: Vec<&Tensor> = loops.iter().collect();
    let stacked = tape.stack(&refs); // [D, N, d]
    (tape.weighted_sum(&stacked, &probs), probs, depth, agreement)
}

/// Loop count 1..D of each row of a one-hot [N, D].
fn one_hot_choices(probs: &Tensor) -> Vec<u8> {
    let d = probs.cols();
    probs
        .data()
        .chunks_exact(d.max(1))
        .map(|row| row.iter().position(|&p| p == 1.0).map_or(d, |i| i + 1) as u8)
        .collect()
}

/// Difficulty-aware fusion ([`Fusion::lambda`] on the tape): λ = (D − Σ_ℓ ℓ·p_ℓ)/D,
/// out = out_d + λ·(out_w − out_d), i.e. (1−λ)·out_d + λ·out_w; `fusion = average` uses λ = 1/2.
// out_d [N, d], out_w [N, d], p [N, D] -> [N, d]
pub(crate) fn fuse(
    tape: &mut Tape,
    cfg: &Config,
    out_d: &Tensor,
    out_w: &Tensor,
    probs: &Tensor,
) -> Tensor {
    let n = out_d.rows();
    let diff = tape.sub(out_w, out_d);
    let lambda = match cfg.fusion {
        Fusion::Average => Tensor::full(&[n], 0.5),
        Fusion::Gated => {
            let depth = cfg.max_depth;
            // λ = 1 − Σ_ℓ (ℓ/D)·p_ℓ, differentiable in p: `Fusion::lambda` of the one-hot pick.
            let steps: Vec<f32> = (1..=depth).map(|l| l as f32 / depth as f32).collect();
            let steps = Tensor::from_vec(&[1, depth], steps).expect("D elements");
            let mean_frac = tape.linear(probs, &steps); // [N, 1]
            let ones = Tensor::full(&[n, 1], 1.0);
            let lambda = tape.sub(&ones, &mean_frac);
            lambda.reshape(&[n]).expect("one λ per row")
        }
    };
    let moved = tape.scale_rows(&diff, &lambda);
    tape.add(out_d, &moved)
}

/// A versatile layer in training mode: both paths over all tokens, fused; plus the balance
/// term of the width router (None when the width path is off).
// x [N, d] -> (out [N, d], balance term, routing)
pub(crate) fn versatile_train(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    pick: GumbelPick<'_>,
) -> (Tensor, Option<BalanceTerm>, VersatileRouting) {
    let width = |tape: &mut Tape| {
        let z = tape.rms_norm(x, &w.ff_norm, cfg.norm_eps);
        let (out_w, logits, experts) = width_path(tape, cfg, w, x, &z);
        let balance = balance_term(tape, &logits, &experts);
        (out_w, balance, experts)
    };
    match cfg.paths {
        Paths::Width => {
            let (out_w, balance, experts) = width(tape);
            let routing = VersatileRouting { depth: Vec::new(), experts, agreement: None };
            (out_w, Some(balance), routing)
        }
        Paths::Depth => {
            let (out_d, _, depth, agreement) = depth_path(tape, cfg, w, x, pick);
            let routing =
                VersatileRouting { depth, experts: Vec::new(), agreement: Some(agreement) };
            (out_d, None, routing)
        }
        Paths::Both => {
            let (out_w, balance, experts) = width(tape);
            let (out_d, probs, depth, agreement) = depth_path(tape, cfg, w, x, pick);
            let out = fuse(tape, cfg, &out_d, &out_w, &probs);
            (out, Some(balance), VersatileRouting { depth, experts, agreement: Some(agreement) })
        }
    }
}

/// A versatile layer at inference: argmax loop count per token; each token runs exactly its
/// loops (the running set is compacted after every loop); the width path runs only for tokens
/// with λ > 0. `tape` must be a no-grad tape.
// x [N, d] -> (out [N, d], routing)
pub(crate) fn versatile_infer(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
) -> (Tensor, VersatileRouting) {
    let (n, d_model, depth_max) = (x.rows(), x.cols(), cfg.max_depth);
    let k = cfg.top_k;
    if cfg.paths == Paths::Width {
        let z = tape.rms_norm(x, &w.ff_norm, cfg.norm_eps);
        let (out_w, _, experts) = width_path(tape, cfg, w, x, &z);
        return (out_w, VersatileRouting { depth: Vec::new(), experts, agreement: None });
    }
    let depth = argmax_depth(tape, w, x);
    let out_d = depth_path_early_exit(tape, cfg, w, x, &depth);
    if cfg.paths == Paths::Depth {
        return (out_d, VersatileRouting { depth, experts: Vec::new(), agreement: None });
    }
    // Router decisions for every token (cheap, and recorded); experts only where λ > 0.
    let gate = w.expert_gate.as_ref().expect("versatile layer has expert_gate");
    let logits = gate.linear(tape, x);
    let (_, experts) = tape.top_k(&logits, k);
    let lambda: Vec<f32> =
        depth.iter().map(|&c| cfg.fusion.lambda(c as f32, depth_max as f32)).collect();
    let width_rows: Vec<u32> = (0..n as u32).filter(|&t| lambda[t as usize] != 0.0).collect();
    let mut out = out_d.to_vec();
    if !width_rows.is_empty() {
        let x_w = tape.gather_rows(x, &width_rows); // [W, d]
        let z_w = tape.rms_norm(&x_w, &w.ff_norm, cfg.norm_eps);
        let (out_w, _, _) = width_path(tape, cfg, w, &x_w, &z_w);
        for (r, &t) in width_rows.iter().enumerate() {
            let t = t as usize;
            let lam = lambda[t];
            let dst = &mut out[t * d_model..(t + 1) * d_model];
            let src = &out_w.data()[r * d_model..(r + 1) * d_model];
            // Same arithmetic as `fuse`: out_d + λ·(out_w − out_d).
            dst.iter_mut().zip(src).for_each(|(o, &wv)| *o += lam * (wv - *o));
        }
    }
    let out = Tensor::from_vec(&[n, d_model], out).expect("[N, d]");
    (out, VersatileRouting { depth, experts, agreement: None })
}

/// Argmax of the depth predictor per token (ties: lower index) as a loop count 1..D.
// x [N, d] -> [N]
fn argmax_depth(tape: &mut Tape, w: &LayerWeights, x: &Tensor) -> Vec<u8> {
    let predictor = w.depth_predictor.as_ref().expect("versatile layer has depth_predictor");
    let logits = predictor.linear(tape, x); // [N, D]
    let (_, best) = tape.top_k(&logits, 1);
    best.iter().map(|&i| i as u8 + 1).collect()
}

/// Depth path at inference: token t runs exactly `depth[t]` loops; after each loop the tokens
/// that are done are written out and the rest are gathered into a smaller running set.
// x [N, d], depth [N] (1..D) -> x_{depth[t]} per token [N, d]
pub(crate) fn depth_path_early_exit(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    depth: &[u8],
) -> Tensor {
    if let Some(f) = w.packed() {
        return fused::depth_infer(&f.shared, x, &w.ff_norm, cfg.norm_eps, depth, cfg.max_depth);
    }
    let (n, d) = (x.rows(), x.cols());
    let mut out = vec![0.0f32; n * d];
    let mut running: Vec<u32> = (0..n as u32).collect(); // token of each running row
    let mut x_run = x.clone(); // [running, d]
    for loop_count in 1..=cfg.max_depth {
        if running.is_empty() {
            break;
        }
        let next = ffn_step(tape, cfg, w, &x_run);
        let mut keep = Vec::with_capacity(running.len());
        for (row, &t) in running.iter().enumerate() {
            if depth[t as usize] as usize <= loop_count {
                let t = t as usize;
                out[t * d..(t + 1) * d].copy_from_slice(&next.data()[row * d..(row + 1) * d]);
            } else {
                keep.push(row as u32);
            }
        }
        if keep.len() == running.len() {
            x_run = next;
        } else {
            x_run = tape.gather_rows(&next, &keep);
            running = keep.iter().map(|&r| running[r as usize]).collect();
        }
    }
    Tensor::from_vec(&[n, d], out).expect("[N, d]")
}

#[cfg(test)]
mod tests;
