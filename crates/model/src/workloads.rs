//! The benchmark workloads, shared by the criterion benches in `benches/` and by `vffn bench`
//! (so both measure the same things), each with its FLOPs from this crate's accounting
//! ([`crate::flops`]: a multiply-add is 2 FLOPs, only matrix products count, training = 3 ×
//! forward).
//!
//! - [`GemmCase`]: one `vffn_kernels::gemm` call, `2·m·n·k` FLOPs.
//! - [`AttentionCase`]: the causal attention kernels at one shape.
//! - [`FfnCase`]: the dense / width / depth FFN kernels at one shape (issue 5: T 2048, d 256,
//!   h 1024, E 8, top-2, D 4).
//! - [`ForwardCase`], [`TrainStep`]: a model's inference forward over one batch and one full
//!   training step: [`Training::step`], the one `vffn train` runs.

use thiserror::Error;
use vffn_kernels::attention::{attention_backward, attention_forward, AttnShape};
use vffn_kernels::ffn::{self, FfnError, PackedFfn};
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

/// The FFN kernels at one shape with fixed pseudo-random routing: top-k of E virtual experts
/// per token (width path) and a loop count in 1..=D per token (depth path).
pub struct FfnCase {
    pub tokens: usize,
    pub d: usize,
    pub h: usize,
    pub experts: usize,
    pub top_k: usize,
    pub max_depth: usize,
    packed: PackedFfn,
    w_norm: Vec<f32>,
    x: Vec<f32>,
    ids: Vec<u32>,
    gates: Vec<f32>,
    depth: Vec<u8>,
    out: Vec<f32>,
}

impl FfnCase {
    /// The issue-5 shape: T 2048, d 256, h 1024, E 8, top-2, D 4.
    pub fn issue5() -> Result<Self> {
        FfnCase::new(2048, 256, 1024, 8, 2, 4)
    }

    pub fn new(
        tokens: usize,
        d: usize,
        h: usize,
        experts: usize,
        top_k: usize,
        max_depth: usize,
    ) -> Result<Self> {
        if !(1..=experts).contains(&top_k) {
            return Err(WorkloadError::Shape("top_k must be in 1..=experts"));
        }
        if !(1..=255).contains(&max_depth) {
            return Err(WorkloadError::Shape("max_depth must be in 1..=255"));
        }
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
            tokens,
            d,
            h,
            experts,
            top_k,
            max_depth,
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
        format!("T{}_d{}_h{}", self.tokens, self.d, self.h)
    }

    /// F = 6·h·d, one SwiGLU FFN pass per token (vffn-model's `dense_ffn_flops`).
    fn one_pass(&self) -> f64 {
        let config = Config { d_model: self.d, hidden: self.h, ..Config::tiny() };
        dense_ffn_flops(&config)
    }

    pub fn dense_flops(&self) -> f64 {
        self.tokens as f64 * self.one_pass()
    }

    /// Top-k of E experts of width h/E: `(k/E)·F` per token.
    pub fn width_flops(&self) -> f64 {
        self.dense_flops() * self.top_k as f64 / self.experts as f64
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
        ffn::width_forward(p, x, ids, g, self.top_k, &mut self.out)?;
        Ok(())
    }

    pub fn depth(&mut self) -> Result<()> {
        let (p, wn, x, depth) = (&self.packed, &self.w_norm, &self.x, &self.depth);
        ffn::depth_forward(p, wn, 1e-6, x, depth, self.max_depth, &mut self.out)?;
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
