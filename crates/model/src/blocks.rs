//! The pieces every block kind shares (on a layer's [`LayerWeights`]): attention, the SwiGLU FFN,
//! top-k routing (its load-balancing loss is in [`crate::balance`]), and the dense / kloop / moe
//! FFN parts.
//!
//! Every function takes a [`Tape`]; with `Tape::no_grad()` the same code is the inference path.

use vffn_autograd::{AttnShape, Tape, Tensor, Trans};

use crate::config::{BlockKind, Config};
use crate::fused;
use crate::layer::LayerWeights;
use crate::weights::Weight;

/// Causal self-attention of the pre-normed residual (RoPE on q and k), before the residual add.
// x [B·T, d], positions [B·T] (t of each row) -> attn_out(attention(rope(qkv))) [B·T, d]
pub(crate) fn attention(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    batch: usize,
    seq: usize,
    positions: &[usize],
) -> Tensor {
    let shape = AttnShape { batch, seq, heads: cfg.n_heads, head_dim: cfg.head_dim() };
    attention_with(tape, cfg, w, x, positions, |tape, qkv| tape.attention(qkv, shape))
}

/// The attention sublayer around `attend`, which maps the rotated q | k | v rows to the
/// attended values: the whole sequence at once ([`attention`]) or one token against a KV
/// cache (the decoder).
// x [N, d], positions [N] -> attn_out(attend(rope(att_proj(attn_norm x)))) [N, d]
pub(crate) fn attention_with(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    positions: &[usize],
    attend: impl FnOnce(&mut Tape, &Tensor) -> Tensor,
) -> Tensor {
    let d = cfg.d_model;
    let h = tape.rms_norm(x, &w.attn_norm, cfg.norm_eps);
    let qkv = w.att_proj.linear(tape, &h); // [N, 3d] = q | k | v
    let qkv = tape.rope(&qkv, &[0, d], cfg.n_heads, cfg.head_dim(), positions, cfg.rope_theta);
    let a = attend(tape, &qkv); // [N, d]
    w.attn_out.linear(tape, &a)
}

/// Final RMSNorm and the untied LM head.
// x [N, d], ln_f [d], head [V, d] -> logits [N, V]
pub(crate) fn lm_head(
    tape: &mut Tape,
    cfg: &Config,
    ln_f: &Tensor,
    head: &Weight,
    x: &Tensor,
) -> Tensor {
    let h = tape.rms_norm(x, ln_f, cfg.norm_eps);
    head.linear(tape, &h)
}

/// SwiGLU on an already-normalized input: out · (value(z) · silu(gate(z))).
// z [N, d], proj [2w, d] (value rows 0..w | gate rows w..2w), out [d, w] -> [N, d]
pub(crate) fn swiglu_ffn(tape: &mut Tape, z: &Tensor, proj: &Weight, out: &Weight) -> Tensor {
    let u = proj.linear(tape, z);
    let a = tape.swiglu(&u);
    out.linear(tape, &a)
}

/// The layer's shared FFN of the normed input: FFN(ff_norm x).
// x [N, d] -> [N, d]
pub(crate) fn ffn(tape: &mut Tape, cfg: &Config, w: &LayerWeights, x: &Tensor) -> Tensor {
    let z = tape.rms_norm(x, &w.ff_norm, cfg.norm_eps);
    swiglu_ffn(tape, &z, &w.ff_proj, &w.ff_out)
}

/// One residual FFN step: x + FFN(ff_norm x) (one loop of the depth path, one dense block).
// x [N, d] -> [N, d]
pub(crate) fn ffn_step(tape: &mut Tape, cfg: &Config, w: &LayerWeights, x: &Tensor) -> Tensor {
    let f = ffn(tape, cfg, w, x);
    tape.add(x, &f)
}

/// Top-k routing decisions of one layer.
pub(crate) struct TopK {
    /// Softmax over the k selected logits of each token. [N, k]
    pub gates: Tensor,
    /// Chosen expert per (token, slot), slots by descending logit. [N·k]
    pub experts: Vec<u32>,
    /// E.
    pub n_experts: usize,
}

/// Top-k of the router logits with a softmax over the k chosen (ties pick the lower index).
// logits [N, E] -> gates [N, k], experts [N·k]
pub(crate) fn route_top_k(tape: &mut Tape, logits: &Tensor, k: usize) -> TopK {
    let (values, experts) = tape.top_k(logits, k);
    let gates = tape.softmax(&values);
    TopK { gates, experts, n_experts: logits.cols() }
}

/// The (token, slot) pairs routed to each expert, tokens in increasing order.
pub(crate) struct ExpertGroup {
    /// Token rows routed to this expert. [M_e]
    pub tokens: Vec<u32>,
    /// Flat slot index token·k + j of each of those rows (where its gate sits). [M_e]
    pub slots: Vec<u32>,
}

/// Groups the top-k choices by expert.
// experts [N·k] -> E groups
pub(crate) fn group_by_expert(experts: &[u32], k: usize, n_experts: usize) -> Vec<ExpertGroup> {
    let mut groups: Vec<ExpertGroup> =
        (0..n_experts).map(|_| ExpertGroup { tokens: Vec::new(), slots: Vec::new() }).collect();
    for (slot, &e) in experts.iter().enumerate() {
        let g = &mut groups[e as usize];
        g.tokens.push((slot / k) as u32);
        g.slots.push(slot as u32);
    }
    groups
}

/// Σ_k g_k · FFN_{e_k}(z) over every token's chosen experts: gather each expert's tokens, run
/// it, scatter-add the gated rows back. `expert` computes one expert on its gathered rows.
// z [N, d], gates [N, k] -> [N, d]
pub(crate) fn routed_sum<F>(tape: &mut Tape, z: &Tensor, route: &TopK, mut expert: F) -> Tensor
where
    F: FnMut(&mut Tape, usize, &Tensor) -> Tensor,
{
    let (n, d) = (z.rows(), z.cols());
    let k = route.gates.cols();
    let gates_flat = route.gates.reshape(&[n * k, 1]).expect("gates [N,k]");
    let mut total: Option<Tensor> = None;
    for (e, group) in group_by_expert(&route.experts, k.max(1), route.n_experts).iter().enumerate()
    {
        if group.tokens.is_empty() {
            continue;
        }
        let z_e = tape.gather_rows(z, &group.tokens); // [M_e, d]
        let y_e = expert(tape, e, &z_e); // [M_e, d]
        let g_e = tape.gather_rows(&gates_flat, &group.slots);
        let g_e = g_e.reshape(&[group.tokens.len()]).expect("one gate per row");
        let placed = tape.scatter_add(&y_e, &group.tokens, Some(&g_e), n); // [N, d]
        total = Some(match total {
            Some(t) => tape.add(&t, &placed),
            None => placed,
        });
    }
    total.unwrap_or_else(|| Tensor::zeros(&[n, d]))
}

/// The paper's MoE baseline: x + FFN(z) + Σ_k g_k·FFN_k(z), z = ff_norm(x); the router reads z.
// x [N, d] -> (out [N, d], router logits [N, E], experts [N·k])
pub(crate) fn moe_part(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
) -> (Tensor, Tensor, Vec<u32>) {
    let z = tape.rms_norm(x, &w.ff_norm, cfg.norm_eps);
    if let Some(f) = w.packed() {
        let gate = w.expert_gate.as_ref().expect("moe layer has expert_gate");
        let logits = gate.linear(tape, &z); // [N, E]
        let route = route_top_k(tape, &logits, cfg.top_k);
        let ffn = fused::moe_ffn(tape, f, w.ffn_tensors(), &z, &route.gates, &route.experts);
        return (tape.add(x, &ffn), logits, route.experts);
    }
    let shared = swiglu_ffn(tape, &z, &w.ff_proj, &w.ff_out);
    let gate = w.expert_gate.as_ref().expect("moe layer has expert_gate");
    let logits = gate.linear(tape, &z); // [N, E]
    let route = route_top_k(tape, &logits, cfg.top_k);
    let routed = routed_sum(tape, &z, &route, |tape, e, z_e| {
        let (proj, out) = &w.experts[e];
        swiglu_ffn(tape, z_e, proj, out)
    });
    let with_shared = tape.add(x, &shared);
    (tape.add(&with_shared, &routed), logits, route.experts)
}

/// dense: x + FFN(ff_norm x); kloop: that step `max_depth` times with the same weights.
// x [N, d] -> [N, d]
pub(crate) fn looped_part(tape: &mut Tape, cfg: &Config, w: &LayerWeights, x: &Tensor) -> Tensor {
    let loops = if cfg.block == BlockKind::Kloop { cfg.max_depth } else { 1 };
    ffn_loops(tape, cfg, w, x, loops)
}

/// The residual FFN step x ← x + FFN(ff_norm x) `loops` times with the layer's FFN, fused when
/// the layer is packed (any virtual-expert packing computes the whole FFN).
// x [N, d] -> [N, d]
pub(crate) fn ffn_loops(
    tape: &mut Tape,
    cfg: &Config,
    w: &LayerWeights,
    x: &Tensor,
    loops: usize,
) -> Tensor {
    if let Some(f) = w.packed() {
        let (n, eps) = (x.rows(), cfg.norm_eps);
        if !tape.wants_grad(&[x, &w.ff_norm, &w.ff_proj, &w.ff_out]) {
            let depth = vec![loops as u8; n];
            return fused::depth_infer(&f.shared, x, &w.ff_norm, eps, &depth, loops);
        }
        let states =
            fused::depth_states(tape, &f.shared, x, &w.ff_norm, &w.ff_proj, &w.ff_out, eps, loops);
        let states = states.reshape(&[loops * n, x.cols()]).expect("[loops·N, d]");
        return states.narrow_rows((loops - 1) * n, n).expect("last state in range");
    }
    let mut x = x.clone();
    for _ in 0..loops {
        x = ffn_step(tape, cfg, w, &x);
    }
    x
}

/// `a · b` with b given transposed-free: a [M, s] times rows of `b_rows` [s, d].
// a [M, s], b [s, d] -> [M, d]
pub(crate) fn matmul_nn(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Tensor {
    tape.matmul(a, b, Trans::N, Trans::N)
}
