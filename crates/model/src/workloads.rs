//! The benchmark workloads, shared by the criterion benches in `benches/` and by `vffn bench`
//! (so both measure the same things), each with its FLOPs from this crate's accounting
//! ([`crate::flops`]: a multiply-add is 2 FLOPs, only matrix products count, training = 3 ×
//! forward).
//!
//! - [`GemmCase`]: one `vffn_kernels::gemm` call, `2·m·n·k` FLOPs.
//! - [`AttentionCase`]: the causal attention kernels at one shape.
//! - [`FfnCase`]: the dense / width / depth FFN kernels at one shape (issue 5: T 2048, d 256,
//!   h 1024, E 8, top-2, D 4); [`FfnTrainStep`]: the whole versatile FFN in training mode on
//!   those kernels.
//! - [`ForwardCase`], [`TrainStep`]: a model's inference forward over one batch and one full
//!   training step: [`Training::step`], the one `vffn train` runs.

use thiserror::Error;
use vffn_kernels::attention::{attention_backward, attention_forward, AttnShape};
use vffn_kernels::ffn::{self, DepthSaved, FfnError, FfnGrads, PackedFfn, WidthSaved};
use vffn_kernels::fused::{rms_norm_backward, rms_norm_forward};
use vffn_kernels::{gemm, MatMut, MatRef};

use crate::config::{Config, ConfigError, RunConfig};
use crate::data::{Batch, Batcher, DataError, Dataset, BUILTIN_TRAIN_BYTES, BUILTIN_VAL_BYTES};
use crate::dtype::WeightDtype;
use crate::flops::{causal_mean_context, dense_ffn_flops, training_flops};
use crate::model::{InferOutput, Model, ModelError};
use crate::train_step::{TrainError, Training};

/// Why a workload could not be built or run.
#[derive(Debug, Error)]
pub enum WorkloadError {
    #[error("{0}")]
    Shape(&'static str),
    #[error(transparent)]
    Ffn(#[from] FfnError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("built-in corpus: {0}")]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("the forward produced non-finite logits")]
    NonFiniteLogits,
}

type Result<T> = std::result::Result<T, WorkloadError>;

/// GEMM shapes (m, k, n) of the GEMM issue: square, the FFN-like panels, small and skinny,
/// and the matrix-vector product of decoding.
pub const GEMM_SHAPES: [(usize, usize, usize); 5] =
    [(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512), (1, 1024, 1024)];

/// The model presets and block kinds the model-level benchmarks cover.
pub const PRESETS: [&str; 2] = ["tiny", "small"];
pub const BLOCKS: [&str; 4] = ["dense", "kloop", "moe", "versatile"];

/// Seed of the built-in corpus the model benchmarks draw their batch from.
pub const CORPUS_SEED: u64 = 0x5646_464E;

/// Deterministic values in [-0.5, 0.5).
pub fn values(len: usize, salt: usize) -> Vec<f32> {
    (0..len).map(|i| ((i.wrapping_mul(2654435761) ^ salt) % 1000) as f32 / 1000.0 - 0.5).collect()
}

/// One GEMM `C = A·op(B)`: A `[m, k]`; B `[k, n]`, or with `trans_b` a linear-layer weight
/// W `[n, k]` used as Wᵀ.
pub struct GemmCase {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_b: bool,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl GemmCase {
    pub fn new(m: usize, k: usize, n: usize, trans_b: bool) -> Self {
        GemmCase { m, k, n, trans_b, a: values(m * k, 1), b: values(k * n, 2), c: vec![0.0; m * n] }
    }

    /// `B_1024x1024x1024` or `Wt_…`: the layout and the shape.
    pub fn name(&self) -> String {
        let layout = if self.trans_b { "Wt" } else { "B" };
        format!("{layout}_{}x{}x{}", self.m, self.k, self.n)
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    pub fn run(&mut self) {
        let (m, k, n) = (self.m, self.k, self.n);
        let b =
            if self.trans_b { MatRef::new(&self.b, n, k).t() } else { MatRef::new(&self.b, k, n) };
        gemm(1.0, MatRef::new(&self.a, m, k), b, 0.0, MatMut::new(&mut self.c, m, n));
    }
}

/// Cheap deterministic values in [-1, 1) (a different stream from [`values`]).
fn signed_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let z = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13).wrapping_mul(0x85EB_CA6B);
            (z >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Causal multi-head attention over packed q|k|v rows, forward and backward.
pub struct AttentionCase {
    pub shape: AttnShape,
    qkv: Vec<f32>,
    d_out: Vec<f32>,
    out: Vec<f32>,
    lse: Vec<f32>,
    d_qkv: Vec<f32>,
}

impl AttentionCase {
    pub fn new(batch: usize, seq: usize, heads: usize, head_dim: usize) -> Self {
        let shape = AttnShape { batch, seq, heads, head_dim };
        let rows = batch * seq;
        let d = shape.d();
        AttentionCase {
            shape,
            qkv: signed_values(rows * 3 * d, 1),
            d_out: signed_values(rows * d, 2),
            out: vec![0.0; rows * d],
            lse: vec![0.0; batch * heads * seq],
            d_qkv: vec![0.0; rows * 3 * d],
        }
    }

    /// The attention shape of a model configuration's batch.
    pub fn for_config(config: &Config) -> Self {
        AttentionCase::new(config.batch_size, config.seq_len, config.n_heads, config.head_dim())
    }

    /// `B16_T128_H4_hd32`.
    pub fn label(&self) -> String {
        let s = self.shape;
        format!("B{}_T{}_H{}_hd{}", s.batch, s.seq, s.heads, s.head_dim)
    }

    /// Forward FLOPs as vffn-model counts them: scores and weighted values, `4·c·d` per token
    /// with c = (T+1)/2 attended positions (the projections are not part of this kernel).
    pub fn forward_flops(&self) -> f64 {
        let s = self.shape;
        let tokens = (s.batch * s.seq) as f64;
        tokens * 4.0 * causal_mean_context(s.seq) * s.d() as f64
    }

    /// Forward + backward: 3 × forward, the model's training convention.
    pub fn forward_backward_flops(&self) -> f64 {
        3.0 * self.forward_flops()
    }

    pub fn forward(&mut self) {
        attention_forward(self.shape, &self.qkv, &mut self.out, &mut self.lse);
    }

    pub fn forward_backward(&mut self) {
        self.forward();
        attention_backward(
            self.shape,
            &self.qkv,
            &self.out,
            &self.lse,
            &self.d_out,
            &mut self.d_qkv,
        );
    }
}

/// The shape of an FFN workload: `tokens` tokens of width `d`, hidden width `h`, top-`top_k` of
/// `experts` virtual experts, up to `max_depth` loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FfnShape {
    pub tokens: usize,
    pub d: usize,
    pub h: usize,
    pub experts: usize,
    pub top_k: usize,
    pub max_depth: usize,
}

impl FfnShape {
    /// The issue-5 shape: T 2048, d 256, h 1024, E 8, top-2, D 4.
    pub const ISSUE5: FfnShape =
        FfnShape { tokens: 2048, d: 256, h: 1024, experts: 8, top_k: 2, max_depth: 4 };

    fn check(&self) -> Result<()> {
        if !(1..=self.experts).contains(&self.top_k) {
            return Err(WorkloadError::Shape("top_k must be in 1..=experts"));
        }
        if !(1..=255).contains(&self.max_depth) {
            return Err(WorkloadError::Shape("max_depth must be in 1..=255"));
        }
        Ok(())
    }
}

/// The FFN kernels at one shape with fixed pseudo-random routing: top-k of E virtual experts
/// per token (width path) and a loop count in 1..=D per token (depth path).
pub struct FfnCase {
    pub shape: FfnShape,
    packed: PackedFfn,
    w_norm: Vec<f32>,
    x: Vec<f32>,
    ids: Vec<u32>,
    gates: Vec<f32>,
    depth: Vec<u8>,
    out: Vec<f32>,
}

impl FfnCase {
    /// The issue-5 shape ([`FfnShape::ISSUE5`]).
    pub fn issue5() -> Result<Self> {
        FfnCase::new(FfnShape::ISSUE5)
    }

    pub fn new(shape: FfnShape) -> Result<Self> {
        shape.check()?;
        let FfnShape { tokens, d, h, experts, top_k, max_depth } = shape;
        let w1: Vec<f32> = values(2 * h * d, 1).iter().map(|v| v / (d as f32).sqrt()).collect();
        let w2: Vec<f32> = values(d * h, 2).iter().map(|v| v / (h as f32).sqrt()).collect();
        let packed = PackedFfn::pack(&w1, &w2, d, h, experts, false)?;
        // Token t takes experts (3t + 5j) mod E, j = 0..k (distinct when E is coprime to 5
        // or k is small), and (7t + t/5) mod D + 1 loops.
        let mut ids = Vec::with_capacity(tokens * top_k);
        for t in 0..tokens {
            let mut chosen: Vec<u32> = Vec::with_capacity(top_k);
            let mut j = 0;
            while chosen.len() < top_k {
                let e = ((t * 3 + j * 5) % experts) as u32;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
                j += 1;
                if j > 5 * experts {
                    // 5 and E share a factor: fill with the lowest unused experts.
                    let e = (0..experts as u32).find(|e| !chosen.contains(e)).expect("k ≤ E");
                    chosen.push(e);
                }
            }
            ids.extend(chosen);
        }
        Ok(FfnCase {
            shape,
            packed,
            w_norm: values(d, 3).iter().map(|v| 1.0 + 0.2 * v).collect(),
            x: values(tokens * d, 4).iter().map(|v| 2.0 * v).collect(),
            ids,
            gates: (0..tokens * top_k).map(|i| 0.3 + 0.4 * ((i % 7) as f32 / 7.0)).collect(),
            depth: (0..tokens).map(|t| (1 + (t * 7 + t / 5) % max_depth) as u8).collect(),
            out: vec![0.0; tokens * d],
        })
    }

    /// `T2048_d256_h1024`.
    pub fn label(&self) -> String {
        let FfnShape { tokens, d, h, .. } = self.shape;
        format!("T{tokens}_d{d}_h{h}")
    }

    /// F = 6·h·d, one SwiGLU FFN pass per token (vffn-model's `dense_ffn_flops`).
    fn one_pass(&self) -> f64 {
        let config = Config { d_model: self.shape.d, hidden: self.shape.h, ..Config::tiny() };
        dense_ffn_flops(&config)
    }

    pub fn dense_flops(&self) -> f64 {
        self.shape.tokens as f64 * self.one_pass()
    }

    /// Top-k of E experts of width h/E: `(k/E)·F` per token.
    pub fn width_flops(&self) -> f64 {
        self.dense_flops() * self.shape.top_k as f64 / self.shape.experts as f64
    }

    /// Each token's own loop count × F.
    pub fn depth_flops(&self) -> f64 {
        let loops: f64 = self.depth.iter().map(|&l| l as f64).sum();
        loops * self.one_pass()
    }

    pub fn dense(&mut self) -> Result<()> {
        ffn::dense_forward(&self.packed, &self.x, &mut self.out)?;
        Ok(())
    }

    pub fn width(&mut self) -> Result<()> {
        let (p, x, ids, g) = (&self.packed, &self.x, &self.ids, &self.gates);
        ffn::width_forward(p, x, ids, g, self.shape.top_k, &mut self.out)?;
        Ok(())
    }

    pub fn depth(&mut self) -> Result<()> {
        let (p, wn, x, depth) = (&self.packed, &self.w_norm, &self.x, &self.depth);
        ffn::depth_forward(p, wn, 1e-6, x, depth, self.shape.max_depth, &mut self.out)?;
        Ok(())
    }
}

/// The inputs of one [`FfnTrainStep::run`]: the FFN's weights (`w1` [2h, d] value | gate,
/// `w2` [d, h]), the norm's weights, the tokens, their routing (top-k expert ids and gates)
/// and the incoming gradients of the width output and of every loop's state.
pub struct FfnTrainInputs<'a> {
    pub w1: &'a [f32],
    pub w2: &'a [f32],
    pub w_norm: &'a [f32],
    pub x: &'a [f32],
    pub ids: &'a [u32],
    pub gates: &'a [f32],
    pub d_out: &'a [f32],
    pub d_states: &'a [f32],
}

/// The versatile FFN in training mode on the FFN kernels, with its buffers: pack the weights,
/// norm, the width path (top-k) and all D loops forward, both backwards, the norm's backward —
/// the `train_fwd_bwd` item of `vffn bench ffn` and of the criterion bench `ffn`.
pub struct FfnTrainStep {
    shape: FfnShape,
    eps: f32,
    z: Vec<f32>,
    rstd: Vec<f32>,
    out: Vec<f32>,
    states: Vec<f32>,
    width_saved: WidthSaved,
    depth_saved: DepthSaved,
    dz: Vec<f32>,
    dx: Vec<f32>,
    d_gates: Vec<f32>,
    dw1: Vec<f32>,
    dw2: Vec<f32>,
    dw_norm: Vec<f32>,
}

impl FfnTrainStep {
    /// Buffers for `shape` (the width path routes top-k, the depth path runs all D loops).
    pub fn new(shape: FfnShape) -> Result<Self> {
        shape.check()?;
        let FfnShape { tokens: t, d, h, top_k: k, max_depth: loops, .. } = shape;
        Ok(FfnTrainStep {
            shape,
            eps: 1e-6,
            z: vec![0.0; t * d],
            rstd: vec![0.0; t],
            out: vec![0.0; t * d],
            states: vec![0.0; loops * t * d],
            width_saved: WidthSaved::default(),
            depth_saved: DepthSaved::default(),
            dz: vec![0.0; t * d],
            dx: vec![0.0; t * d],
            d_gates: vec![0.0; t * k],
            dw1: vec![0.0; 2 * h * d],
            dw2: vec![0.0; d * h],
            dw_norm: vec![0.0; d],
        })
    }

    /// One forward and backward (weight gradients accumulate across calls, as a bench wants).
    pub fn run(&mut self, i: &FfnTrainInputs<'_>) -> Result<()> {
        let FfnShape { d, h, experts: e, top_k: k, max_depth: loops, .. } = self.shape;
        let eps = self.eps;
        let p = PackedFfn::pack(i.w1, i.w2, d, h, e, true)?;
        rms_norm_forward(i.x, i.w_norm, &mut self.z, &mut self.rstd, eps);
        self.out.copy_from_slice(i.x);
        let ws = &mut self.width_saved;
        ffn::width_forward_train(&p, &self.z, i.ids, i.gates, k, &mut self.out, ws)?;
        let ds = &mut self.depth_saved;
        ffn::depth_forward_train(&p, i.w_norm, eps, i.x, loops, &mut self.states, ds)?;
        self.dz.fill(0.0);
        self.dx.fill(0.0);
        let (ws, z, dz) = (&self.width_saved, &self.z, &mut self.dz);
        let grads = FfnGrads::new(&mut self.dw1, &mut self.dw2);
        ffn::width_backward(&p, ws, z, i.gates, k, i.d_out, dz, &mut self.d_gates, grads)?;
        let (ds, states, dx, dwn) =
            (&self.depth_saved, &self.states, &mut self.dx, &mut self.dw_norm);
        let grads = FfnGrads::new(&mut self.dw1, &mut self.dw2);
        ffn::depth_backward(&p, i.w_norm, ds, i.x, states, i.d_states, dx, dwn, grads)?;
        let (dx, dwn) = (Some((&mut self.dx[..], true)), Some((&mut self.dw_norm[..], true)));
        rms_norm_backward(i.x, i.w_norm, &self.rstd, &self.dz, dx, dwn);
        Ok(())
    }
}

/// A preset's configuration with every layer's block set to `block`.
pub fn preset_config(preset: &str, block: &str) -> Result<RunConfig> {
    let mut run = RunConfig { model: Config::preset(preset)?, train: Default::default() };
    run.set("model.block", block)?;
    run.validate()?;
    Ok(run)
}

/// The built-in corpus (seed [`CORPUS_SEED`]) cut for `seq_len`.
pub fn builtin_dataset(seq_len: usize) -> Result<Dataset> {
    Ok(Dataset::builtin(CORPUS_SEED, BUILTIN_TRAIN_BYTES, BUILTIN_VAL_BYTES, seq_len)?)
}

/// The inference forward (`Model::infer`: argmax depth, early exit) of a freshly initialized
/// model over one batch (B×T tokens) of the validation split.
pub struct ForwardCase {
    pub config: Config,
    model: Model,
    batch: Batch,
}

impl ForwardCase {
    pub fn new(config: Config, dataset: &Dataset, seed: u64) -> Result<Self> {
        ForwardCase::new_as(config, dataset, seed, WeightDtype::F32)
    }

    /// [`ForwardCase::new`] with the model's matrices held as `weights` (f32 or bf16).
    pub fn new_as(
        config: Config,
        dataset: &Dataset,
        seed: u64,
        weights: WeightDtype,
    ) -> Result<Self> {
        let model = Model::new_as(config.clone(), seed, weights)?;
        let mut batcher =
            Batcher::new(dataset.val.clone(), config.seq_len, config.batch_size, seed)?;
        let batch = batcher.next_batch();
        Ok(ForwardCase { config, model, batch })
    }

    pub fn tokens(&self) -> usize {
        self.batch.batch_size * self.batch.seq_len
    }

    pub fn run(&self) -> Result<InferOutput> {
        let (b, t) = (self.batch.batch_size, self.batch.seq_len);
        let output = self.model.infer(&self.batch.inputs, b, t)?;
        if !output.logits.iter().all(|v| v.is_finite()) {
            return Err(WorkloadError::NonFiniteLogits);
        }
        Ok(output)
    }

    /// Realized inference FLOPs per token of `output` (a run of this case), from its routing.
    pub fn flops_per_token(&self, output: &InferOutput) -> Result<f64> {
        let context = causal_mean_context(self.batch.seq_len);
        Ok(output.realized_flops(&self.config, context)?.total)
    }
}

/// Full training steps ([`Training::step`], exactly as `vffn train` runs them) of a freshly
/// initialized model on random windows of the training split, the run seed set to `seed`.
pub struct TrainStep {
    pub training: Training,
}

impl TrainStep {
    pub fn new(mut run: RunConfig, dataset: &Dataset, seed: u64) -> Result<Self> {
        run.train.seed = seed;
        let model = Model::new(run.model.clone(), seed)?;
        Ok(TrainStep { training: Training::start(run, model, dataset.train.clone())? })
    }

    pub fn tokens(&self) -> usize {
        let config = &self.training.run.model;
        config.batch_size * config.seq_len
    }

    /// Training FLOPs per token (3 × the analytic forward; all loops and paths are computed
    /// in training, so this does not depend on the routing).
    pub fn flops_per_token(&self) -> f64 {
        let config = &self.training.run.model;
        training_flops(config, causal_mean_context(config.seq_len)).total
    }

    /// One step on the next batch.
    pub fn run(&mut self) -> Result<()> {
        self.training.step()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shape whose top-k exceeds its experts, or whose loop count does not fit a byte, is an
    /// error, not a panic deep in a kernel.
    #[test]
    fn ffn_shapes_out_of_range_are_refused() {
        let ok = FfnShape { tokens: 4, d: 16, h: 32, experts: 2, top_k: 2, max_depth: 2 };
        assert!(FfnTrainStep::new(ok).is_ok());
        assert!(FfnTrainStep::new(FfnShape { top_k: 3, ..ok }).is_err());
        assert!(FfnCase::new(FfnShape { max_depth: 256, ..ok }).is_err());
        assert!(FfnCase::new(FfnShape { max_depth: 0, ..ok }).is_err());
    }

    /// The training step's weight gradients are finite, not all zero, and accumulate across
    /// runs: two runs give twice one run's (up to the f32 rounding of the regrouped sums).
    #[test]
    fn the_ffn_train_step_accumulates_finite_gradients() {
        let shape = FfnShape { tokens: 8, d: 16, h: 64, experts: 4, top_k: 2, max_depth: 3 };
        let (t, d, h, k) = (shape.tokens, shape.d, shape.h, shape.top_k);
        let (w1, w2) = (values(2 * h * d, 1), values(d * h, 2));
        let w_norm: Vec<f32> = values(d, 3).iter().map(|v| 1.0 + v).collect();
        let x = values(t * d, 4);
        let ids: Vec<u32> = (0..t * k).map(|i| ((i / k + i % k) % shape.experts) as u32).collect();
        let gates = vec![0.5f32; t * k];
        let (d_out, d_states) = (values(t * d, 5), values(shape.max_depth * t * d, 6));
        let inputs = FfnTrainInputs {
            w1: &w1,
            w2: &w2,
            w_norm: &w_norm,
            x: &x,
            ids: &ids,
            gates: &gates,
            d_out: &d_out,
            d_states: &d_states,
        };
        let mut step = FfnTrainStep::new(shape).unwrap();
        step.run(&inputs).unwrap();
        let once = (step.dw1.clone(), step.dw2.clone(), step.dw_norm.clone());
        assert!(once.0.iter().chain(&once.1).chain(&once.2).all(|v| v.is_finite()));
        assert!(once.0.iter().any(|&v| v != 0.0) && once.2.iter().any(|&v| v != 0.0));
        step.run(&inputs).unwrap();
        for (twice, one) in [(&step.dw1, &once.0), (&step.dw2, &once.1), (&step.dw_norm, &once.2)] {
            for (a, b) in twice.iter().zip(one.iter()) {
                assert!((a - 2.0 * b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs 2 × {b}");
            }
        }
    }
}
