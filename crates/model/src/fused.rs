//! Fused FFN custom ops: the depth path, the width path, the dense / kloop FFN and the moe FFN
//! part as single autograd nodes over the packed-weight kernels of `vffn_kernels::ffn`, instead
//! of many small ops (per-expert gathers, concats, linears, SwiGLUs, scatters).
//!
//! A layer's weights are packed once per forward ([`pack_layer`]) and shared (via `Arc`) by every
//! op of the layer and by their backward closures. Packing is refused when an expert width is
//! not a multiple of the kernels' panel width (16); the layer then keeps the composed autograd
//! path of `blocks` / `versatile` (same maths, many small ops), so every config stays supported.
//!
//! The maths is identical to the composed path; only the float summation order differs (the
//! kernels accumulate the k experts of a token in slot order, the composed path per expert), so
//! results agree to f32 rounding, not bitwise. Both are deterministic for a fixed thread count.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use vffn_autograd::{Buffer, GradSlot, Tape, Tensor};
use vffn_kernels::ffn::{
    dense_backward, dense_forward_train, depth_backward, depth_forward, depth_forward_train,
    moe_backward, moe_forward, moe_forward_train, width_backward, width_forward,
    width_forward_train, DepthSaved, FfnError, FfnGrads, PackedFfn, WidthSaved,
};

use crate::config::{BlockKind, Config, Paths};
use crate::weights::Weight;

// ---------------------------------------------------------------------------------------------
// Recycled saved state: what a training forward keeps for its backward is large (D·T·(d+1+2h)
// floats per depth op); fresh allocations would be page-faulted in on every step, so the
// buffers go back to a small global free list when the backward closure is done (or dropped).
// Their contents are always overwritten before use, so recycling cannot change results.

/// At most this many free entries are kept per kind (more only live during one step).
const KEEP: usize = 64;

static DEPTH_SAVED: Mutex<Vec<DepthSaved>> = Mutex::new(Vec::new());
static WIDTH_SAVED: Mutex<Vec<WidthSaved>> = Mutex::new(Vec::new());
static VECTORS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A value taken from a free list and returned to it on drop.
struct Pooled<T: 'static> {
    value: Option<T>,
    pool: &'static Mutex<Vec<T>>,
}

impl<T: Default> Pooled<T> {
    fn take(pool: &'static Mutex<Vec<T>>) -> Pooled<T> {
        let value = pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        Pooled { value: Some(value), pool }
    }
}

impl<T> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect("present until drop")
    }
}

impl<T> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().expect("present until drop")
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(v) = self.value.take() {
            let mut free = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < KEEP {
                free.push(v);
            }
        }
    }
}

/// One layer's FFN weights packed for the fused kernels.
pub(crate) struct FusedFfn {
    /// ff_proj / ff_out: `n_experts` virtual experts for a versatile layer with a width path,
    /// one expert otherwise (dense, kloop, depth-only versatile, moe shared FFN).
    pub shared: Arc<PackedFfn>,
    /// moe only: every real expert, packed with one expert of width s.
    pub experts: Option<Arc<Vec<PackedFfn>>>,
}

/// Why a forward runs a layer's FFN composed (many small autograd ops) instead of packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComposedReason {
    /// Forced (tests comparing the two paths).
    Forced,
    /// A bf16 model whose products run on bf16 arithmetic (faster composed, see
    /// docs/benchmarks.md §5).
    Bf16Arithmetic,
    /// One token's products read each weight once, in place.
    Decoding,
    /// The kernels need expert widths that are multiples of 16.
    ExpertWidth { width: usize },
    /// The kernels refused the weights otherwise (their message).
    Refused(String),
}

impl fmt::Display for ComposedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComposedReason::Forced => f.write_str("forced"),
            ComposedReason::Bf16Arithmetic => {
                f.write_str("bf16 products run on bf16 arithmetic (faster composed)")
            }
            ComposedReason::Decoding => f.write_str("decoding reads each weight in place"),
            ComposedReason::ExpertWidth { width } => {
                write!(f, "expert width {width} is not a multiple of 16")
            }
            ComposedReason::Refused(message) => f.write_str(message),
        }
    }
}

/// The FFN matrices of one layer that the fused kernels pack (f32).
#[derive(Clone, Copy)]
pub(crate) struct FfnTensors<'a> {
    /// [2h, d] value | gate rows.
    pub ff_proj: &'a Weight,
    /// [d, h].
    pub ff_out: &'a Weight,
    /// moe only: (ff_proj [2s, d], ff_out [d, s]) of each expert.
    pub experts: &'a [(Weight, Weight)],
}

/// Packs the layer's FFN weights (with the backward operands iff `tape` will record them), or
/// why not: the kernels refuse the widths (the caller keeps the composed path).
pub(crate) fn pack_layer(
    tape: &Tape,
    cfg: &Config,
    w: FfnTensors<'_>,
) -> Result<FusedFfn, ComposedReason> {
    let (d, h) = (cfg.d_model, cfg.hidden);
    let mut weights: Vec<&Tensor> = vec![w.ff_proj, w.ff_out];
    weights.extend(w.experts.iter().flat_map(|(p, o)| [&**p, &**o]));
    let backward = tape.wants_grad(&weights);
    let virtual_experts = match (cfg.block, cfg.paths) {
        (BlockKind::Versatile, Paths::Both | Paths::Width) => cfg.n_experts,
        _ => 1,
    };
    let pack = |w1: &Tensor, w2: &Tensor, hidden: usize, experts: usize| {
        PackedFfn::pack(w1.data(), w2.data(), d, hidden, experts, backward).map_err(|e| match e {
            FfnError::ExpertWidth { hidden, experts } if experts > 0 => {
                ComposedReason::ExpertWidth { width: hidden / experts }
            }
            other => ComposedReason::Refused(other.to_string()),
        })
    };
    let shared = Arc::new(pack(w.ff_proj, w.ff_out, h, virtual_experts)?);
    let experts = if cfg.block == BlockKind::Moe {
        let s = cfg.expert_width();
        let packed: Result<Vec<PackedFfn>, ComposedReason> =
            w.experts.iter().map(|(p, o)| pack(p, o, s, 1)).collect();
        Some(Arc::new(packed?))
    } else {
        None
    };
    Ok(FusedFfn { shared, experts })
}

/// The gradient range of a slot made an accumulator (zeroed if fresh), or a zeroed scratch
/// vector when the input wants no gradient (the kernels always accumulate somewhere).
fn target<'a>(
    slot: &'a mut Option<GradSlot>,
    scratch: &'a mut Vec<f32>,
    len: usize,
) -> &'a mut [f32] {
    match slot {
        Some(s) => {
            s.zero_if_fresh();
            s.data()
        }
        None => {
            scratch.clear();
            scratch.resize(len, 0.0);
            scratch
        }
    }
}

/// Depth path states (training): x_ℓ = x_{ℓ−1} + FFN(rms_norm(x_{ℓ−1}, norm)) for ℓ = 1..loops,
/// every token running every loop. One node with inputs (x, norm, ff_proj, ff_out).
// x [N, d] -> states [loops, N, d]
#[allow(clippy::too_many_arguments)]
pub(crate) fn depth_states(
    tape: &mut Tape,
    packed: &Arc<PackedFfn>,
    x: &Tensor,
    norm: &Tensor,
    proj: &Tensor,
    out: &Tensor,
    eps: f32,
    loops: usize,
) -> Tensor {
    let (n, d) = (x.rows(), x.cols());
    let mut buf = Buffer::uninit(loops * n * d);
    let mut saved = Pooled::take(&DEPTH_SAVED);
    depth_forward_train(packed, norm.data(), eps, x.data(), loops, &mut buf, &mut saved)
        .unwrap_or_else(|e| panic!("fused depth forward: {e}"));
    let states = Tensor::from_buffer(&[loops, n, d], buf).expect("[loops, N, d]");
    if !tape.wants_grad(&[x, norm, proj, out]) {
        return states;
    }
    let (packed, x_saved, norm_saved, states_saved) =
        (Arc::clone(packed), x.detach(), norm.detach(), states.clone());
    tape.custom(&[x, norm, proj, out], states, move |dy, grads| {
        let [dx, dn, dw1, dw2] = grads else { unreachable!("four inputs") };
        let (h, d) = (packed.hidden(), packed.d());
        let mut scratch: [Vec<f32>; 4] = Default::default();
        let [s0, s1, s2, s3] = &mut scratch;
        depth_backward(
            &packed,
            norm_saved.data(),
            &saved,
            x_saved.data(),
            states_saved.data(),
            dy,
            target(dx, s0, x_saved.numel()),
            target(dn, s1, d),
            FfnGrads::new(target(dw1, s2, 2 * h * d), target(dw2, s3, d * h)),
        )
        .unwrap_or_else(|e| panic!("fused depth backward: {e}"));
    })
}

/// Depth path at inference: token t runs exactly `depth[t]` ∈ 1..=max_depth loops (the kernel
/// compacts the running set); returns x_{depth[t]} per token.
// x [N, d], depth [N] -> [N, d]
pub(crate) fn depth_infer(
    packed: &PackedFfn,
    x: &Tensor,
    norm: &Tensor,
    eps: f32,
    depth: &[u8],
    max_depth: usize,
) -> Tensor {
    let (n, d) = (x.rows(), x.cols());
    let mut buf = Buffer::uninit(n * d);
    depth_forward(packed, norm.data(), eps, x.data(), depth, max_depth, &mut buf)
        .unwrap_or_else(|e| panic!("fused depth inference: {e}"));
    Tensor::from_buffer(&[n, d], buf).expect("[N, d]")
}

/// Width path routed sum Σ_j g_j·FFN_{e_j}(z) over virtual experts (slices of the shared FFN).
/// One node with inputs (z, gates, ff_proj, ff_out); the expert ids are plain data.
// z [N, d], gates [N, k], experts [N·k] -> [N, d]
pub(crate) fn width_routed(
    tape: &mut Tape,
    packed: &Arc<PackedFfn>,
    z: &Tensor,
    gates: &Tensor,
    experts: &[u32],
    proj: &Tensor,
    out: &Tensor,
) -> Tensor {
    let (n, d, k) = (z.rows(), z.cols(), gates.cols());
    let mut buf = Buffer::zeros(n * d);
    if !tape.wants_grad(&[z, gates, proj, out]) {
        width_forward(packed, z.data(), experts, gates.data(), k, &mut buf)
            .unwrap_or_else(|e| panic!("fused width forward: {e}"));
        return Tensor::from_buffer(&[n, d], buf).expect("[N, d]");
    }
    let mut saved = Pooled::take(&WIDTH_SAVED);
    width_forward_train(packed, z.data(), experts, gates.data(), k, &mut buf, &mut saved)
        .unwrap_or_else(|e| panic!("fused width forward: {e}"));
    let routed = Tensor::from_buffer(&[n, d], buf).expect("[N, d]");
    let (packed, z_saved, g_saved) = (Arc::clone(packed), z.detach(), gates.detach());
    tape.custom(&[z, gates, proj, out], routed, move |dy, grads| {
        let [dz, dg, dw1, dw2] = grads else { unreachable!("four inputs") };
        let (h, d) = (packed.hidden(), packed.d());
        let mut scratch: [Vec<f32>; 3] = Default::default();
        let [s0, s1, s2] = &mut scratch;
        // dgates is overwritten by the kernel: compute into scratch, then add/overwrite.
        let mut dgates = vec![0.0f32; g_saved.numel()];
        width_backward(
            &packed,
            &saved,
            z_saved.data(),
            g_saved.data(),
            k,
            dy,
            target(dz, s0, z_saved.numel()),
            &mut dgates,
            FfnGrads::new(target(dw1, s1, 2 * h * d), target(dw2, s2, d * h)),
        )
        .unwrap_or_else(|e| panic!("fused width backward: {e}"));
        if let Some(dg) = dg {
            dg.add(&dgates);
        }
    })
}

/// The moe FFN part on the normed input: FFN(z) + Σ_j g_j·FFN_{e_j}(z) (shared FFN plus real
/// experts). One node with inputs (z, gates, ff_proj, ff_out, then each expert's proj and out).
// z [N, d], gates [N, k], experts [N·k] -> [N, d]
pub(crate) fn moe_ffn(
    tape: &mut Tape,
    fused: &FusedFfn,
    w: FfnTensors<'_>,
    z: &Tensor,
    gates: &Tensor,
    experts: &[u32],
) -> Tensor {
    let (n, d, k) = (z.rows(), z.cols(), gates.cols());
    let packed_experts = fused.experts.as_ref().expect("moe layer packs its experts");
    let mut inputs: Vec<&Tensor> = vec![z, gates, w.ff_proj, w.ff_out];
    inputs.extend(w.experts.iter().flat_map(|(p, o)| [&**p, &**o]));
    let mut buf = Buffer::zeros(n * d);
    if !tape.wants_grad(&inputs) {
        vffn_kernels::ffn::dense_forward(&fused.shared, z.data(), &mut buf)
            .unwrap_or_else(|e| panic!("fused moe shared forward: {e}"));
        moe_forward(packed_experts, z.data(), experts, gates.data(), k, &mut buf)
            .unwrap_or_else(|e| panic!("fused moe forward: {e}"));
        return Tensor::from_buffer(&[n, d], buf).expect("[N, d]");
    }
    let mut u_saved = Pooled::take(&VECTORS);
    dense_forward_train(&fused.shared, z.data(), &mut buf, &mut u_saved)
        .unwrap_or_else(|e| panic!("fused moe shared forward: {e}"));
    let mut saved = Pooled::take(&WIDTH_SAVED);
    moe_forward_train(packed_experts, z.data(), experts, gates.data(), k, &mut buf, &mut saved)
        .unwrap_or_else(|e| panic!("fused moe forward: {e}"));
    let out = Tensor::from_buffer(&[n, d], buf).expect("[N, d]");
    let (shared, packed_experts) = (Arc::clone(&fused.shared), Arc::clone(packed_experts));
    let (z_saved, g_saved) = (z.detach(), gates.detach());
    tape.custom(&inputs, out, move |dy, grads| {
        let (head, rest) = grads.split_at_mut(4);
        let [dz, dg, dw1, dw2] = head else { unreachable!("four leading inputs") };
        let (h, d) = (shared.hidden(), shared.d());
        let s = packed_experts.first().map_or(0, |p| p.hidden());
        let mut scratch: [Vec<f32>; 3] = Default::default();
        let [s0, s1, s2] = &mut scratch;
        let dz = target(dz, s0, z_saved.numel());
        let shared_grads = FfnGrads::new(target(dw1, s1, 2 * h * d), target(dw2, s2, d * h));
        dense_backward(&shared, z_saved.data(), &u_saved, dy, dz, shared_grads)
            .unwrap_or_else(|e| panic!("fused moe shared backward: {e}"));
        let mut expert_scratch: Vec<(Vec<f32>, Vec<f32>)> =
            rest.iter().step_by(2).map(|_| (Vec::new(), Vec::new())).collect();
        let mut pairs: Vec<FfnGrads<'_>> = rest
            .chunks_exact_mut(2)
            .zip(expert_scratch.iter_mut())
            .map(|(slots, (a, b))| {
                let (p, o) = slots.split_at_mut(1);
                FfnGrads::new(target(&mut p[0], a, 2 * s * d), target(&mut o[0], b, d * s))
            })
            .collect();
        let mut dgates = vec![0.0f32; g_saved.numel()];
        moe_backward(
            &packed_experts,
            &saved,
            z_saved.data(),
            g_saved.data(),
            k,
            dy,
            dz,
            &mut dgates,
            &mut pairs,
        )
        .unwrap_or_else(|e| panic!("fused moe backward: {e}"));
        if let Some(dg) = dg {
            dg.add(&dgates);
        }
    })
}

/// The tolerance the fused-vs-composed comparisons use (the bf16 tests share it).
#[cfg(test)]
pub(crate) use tests::assert_close;

#[cfg(test)]
mod tests {
    //! The fused ops against the composed autograd path on configs the kernels accept (expert
    //! widths multiple of 16): training loss, logits and every parameter gradient, and the
    //! inference logits, for every block kind, path set and fusion.

    use vffn_autograd::{Rng, Tape};

    use super::*;
    use crate::config::Fusion;
    use crate::data::Batch;
    use crate::model::Model;

    /// d 32, h 64, E 4 → s 16 (the kernels' panel width), D 3, 2 layers, 2 × 12 tokens.
    fn cfg(block: BlockKind, paths: Paths, fusion: Fusion) -> Config {
        Config {
            vocab_size: 24,
            d_model: 32,
            n_heads: 2,
            n_layers: 2,
            hidden: 64,
            block,
            n_experts: 4,
            top_k: 2,
            max_depth: 3,
            paths,
            fusion,
            init_std: 0.5,
            balance_loss_coef: 0.1,
            seq_len: 12,
            batch_size: 2,
            ..Config::default()
        }
    }

    fn batch(cfg: &Config) -> Batch {
        let mut rng = Rng::new(31);
        let n = cfg.seq_len * cfg.batch_size;
        let mut tok = || (rng.uniform() * cfg.vocab_size as f32) as u32 % cfg.vocab_size as u32;
        let inputs: Vec<u32> = (0..n).map(|_| tok()).collect();
        let targets: Vec<u32> = (0..n).map(|_| tok()).collect();
        Batch {
            batch_size: cfg.batch_size,
            seq_len: cfg.seq_len,
            inputs,
            targets,
            target_difficulty: None,
        }
    }

    /// (loss, logits, gradient of every parameter in store order, routing) of one training
    /// forward + backward with fixed Gumbel noise.
    type TrainResult = (f32, Vec<f32>, Vec<Option<Vec<f32>>>, crate::model::Routing);

    fn train(model: &Model, batch: &Batch) -> TrainResult {
        let mut tape = Tape::new();
        let mut noise = Rng::new(99);
        let out = model.train_forward(&mut tape, batch, 0.7, Some(&mut noise)).unwrap();
        let loss = out.loss.item();
        let logits = out.logits.to_vec();
        let grads = tape.backward(&out.loss).unwrap();
        // None for parameters a path set does not use (e.g. the depth predictor, width only).
        let per_param =
            model.params.iter().map(|(id, _)| grads.param(id).map(<[f32]>::to_vec)).collect();
        (loss, logits, per_param, out.routing)
    }

    /// max |a − b| ≤ 1e-4·max|b| + 1e-6. The two paths run the same maths and differ only in
    /// f32 summation order (per-expert scatter vs. per-token slot order, GEMM blockings), which
    /// moves results by a few ulps per reduction (~1e-6 relative after 2 layers and the
    /// backward); 1e-4 leaves margin for that while any wrong slice, gate, loop or missing
    /// accumulation shows up at O(1) relative error.
    pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what}: all zero (nothing checked)");
        let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale + 1e-6, "{what}: max error {err:e} vs scale {scale:e}");
    }

    fn check(cfg: Config) {
        let fused = Model::new(cfg.clone(), 17).unwrap();
        let mut composed = Model::new(cfg.clone(), 17).unwrap();
        composed.composed_ffn = true;
        // The fused path is really taken for this config.
        let mut tape = Tape::new();
        let w = fused.layers[0].load(&mut tape, &fused.params);
        let packed = pack_layer(&tape, &cfg, w.ffn_tensors()).expect("widths are multiples of 16");
        assert!(packed.shared.has_backward());
        assert_eq!(fused.ffn_path(), crate::layer::FfnPath::Packed);
        assert_eq!(composed.ffn_path().to_string(), "composed: forced");
        assert_eq!(packed.experts.is_some(), cfg.block == BlockKind::Moe);

        let b = batch(&cfg);
        let (loss_f, logits_f, grads_f, routing_f) = train(&fused, &b);
        let (loss_c, logits_c, grads_c, routing_c) = train(&composed, &b);
        assert_eq!(routing_f, routing_c, "routing decisions differ");
        assert!((loss_f - loss_c).abs() <= 1e-4 * loss_c.abs(), "loss {loss_f} vs {loss_c}");
        assert_close("train logits", &logits_f, &logits_c);
        let mut checked = 0;
        for ((_, p), (gf, gc)) in fused.params.iter().zip(grads_f.iter().zip(&grads_c)) {
            match (gf, gc) {
                (Some(gf), Some(gc)) => {
                    assert_close(p.name(), gf, gc);
                    checked += 1;
                }
                (None, None) => {}
                _ => panic!("{}: gradient present in only one path", p.name()),
            }
        }
        // Every FFN weight of every layer has a gradient.
        assert!(checked >= 6 * cfg.n_layers + 3, "only {checked} gradients compared");

        let inf_f = fused.infer(&b.inputs, b.batch_size, b.seq_len).unwrap();
        let inf_c = composed.infer(&b.inputs, b.batch_size, b.seq_len).unwrap();
        assert_eq!(inf_f.routing, inf_c.routing, "inference routing differs");
        assert_close("inference logits", &inf_f.logits, &inf_c.logits);
        if cfg.block == BlockKind::Versatile && cfg.paths != Paths::Width {
            let depths: std::collections::BTreeSet<u8> =
                inf_f.routing.depth.iter().flatten().copied().collect();
            assert!(depths.len() > 1, "early exit not exercised: depths {depths:?}");
        }
    }

    /// Each block kind and each versatile variant: the fused path matches the composed one.
    #[test]
    fn fused_matches_composed_for_every_block_and_variant() {
        let versatile = |paths, fusion| cfg(BlockKind::Versatile, paths, fusion);
        let width = versatile(Paths::Width, Fusion::Gated);
        assert!(width.has_shared_expert(), "on by default for width-only");
        let cases = [
            ("dense", cfg(BlockKind::Dense, Paths::Both, Fusion::Gated)),
            ("kloop", cfg(BlockKind::Kloop, Paths::Both, Fusion::Gated)),
            ("moe", cfg(BlockKind::Moe, Paths::Both, Fusion::Gated)),
            ("versatile, both paths, gated", versatile(Paths::Both, Fusion::Gated)),
            ("versatile, both paths, average", versatile(Paths::Both, Fusion::Average)),
            ("versatile, width", Config { shared_expert: Some(false), ..width.clone() }),
            ("versatile, width with the shared expert", width),
            ("versatile, depth", versatile(Paths::Depth, Fusion::Gated)),
        ];
        for (case, c) in cases {
            eprintln!("case: {case}"); // shown with the failure of the case it precedes
            check(c);
        }
    }

    /// Widths the kernels refuse (s = 8) keep the composed path instead of failing.
    #[test]
    fn unsupported_widths_fall_back_to_the_composed_path() {
        let c = Config { hidden: 32, ..cfg(BlockKind::Versatile, Paths::Both, Fusion::Gated) };
        let model = Model::new(c.clone(), 3).unwrap();
        let mut tape = Tape::new();
        let mut w = model.layers[0].load(&mut tape, &model.params);
        w.pack(&tape, &c);
        let reason = ComposedReason::ExpertWidth { width: 8 };
        assert_eq!(w.ffn_path(), crate::layer::FfnPath::Composed(reason));
        assert_eq!(w.ffn_path().to_string(), "composed: expert width 8 is not a multiple of 16");
        let b = batch(&c);
        let (loss, ..) = train(&model, &b);
        assert!(loss.is_finite());
    }

    /// Same seed, same thread count: bitwise the same loss and gradients twice.
    #[test]
    fn fused_training_is_bitwise_reproducible() {
        let c = cfg(BlockKind::Versatile, Paths::Both, Fusion::Gated);
        let model = Model::new(c.clone(), 5).unwrap();
        let b = batch(&c);
        let (l1, _, g1, _) = train(&model, &b);
        let (l2, _, g2, _) = train(&model, &b);
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert_eq!(g1, g2);
    }

    /// Loss and summed gradients of [`Model::train_step_grads`] with `groups` groups (no Gumbel
    /// noise, so every grouping routes every token alike).
    fn grouped(model: &Model, batch: &Batch, groups: usize) -> (f32, f32, f32, Vec<Vec<f32>>) {
        let out = model.train_step_grads(batch, 0.7, None, groups).unwrap();
        let grads = model
            .params
            .iter()
            .map(|(id, p)| {
                let mut sum = vec![0.0f32; p.numel()];
                for g in &out.grads {
                    if let Some(g) = g.param(id) {
                        sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
                    }
                }
                sum
            })
            .collect();
        (out.loss, out.ce, out.balance, grads)
    }

    /// A batch run as groups of sequences has the whole batch's objective: same loss, CE,
    /// balance (f_e and P_e of the whole batch, not per group) and gradients, up to summation
    /// order; 5 sequences make the groups uneven (3 + 2, 2 + 2 + 1).
    #[test]
    fn train_step_groups_equal_the_whole_batch() {
        let blocks = [
            (BlockKind::Dense, Paths::Both),
            (BlockKind::Kloop, Paths::Both),
            (BlockKind::Moe, Paths::Both),
            (BlockKind::Versatile, Paths::Both),
            (BlockKind::Versatile, Paths::Width),
        ];
        for (block, paths) in blocks {
            let cfg = Config { batch_size: 5, ..cfg(block, paths, Fusion::Gated) };
            let model = Model::new(cfg.clone(), 17).unwrap();
            let data = batch(&cfg);
            let (loss, ce, balance, grads) = grouped(&model, &data, 1);
            let routed = matches!(block, BlockKind::Moe | BlockKind::Versatile);
            assert_eq!(balance > 0.0, routed, "{block:?}: balance {balance}");
            for groups in [2, 3, 5, 9] {
                let what = format!("{block:?} {paths:?}, {groups} groups");
                let (l, c, b, g) = grouped(&model, &data, groups);
                assert_close(&format!("{what}: loss"), &[l], &[loss]);
                assert_close(&format!("{what}: ce"), &[c], &[ce]);
                if routed {
                    assert_close(&format!("{what}: balance"), &[b], &[balance]);
                }
                for (((id, _), got), want) in model.params.iter().zip(&g).zip(&grads) {
                    if want.iter().any(|v| *v != 0.0) {
                        assert_close(
                            &format!("{what}: grad of {}", model.params.get(id).name()),
                            got,
                            want,
                        );
                    }
                }
            }
        }
    }
}
