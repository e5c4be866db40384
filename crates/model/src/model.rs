//! The transformer: byte embedding → blocks → final RMSNorm → untied LM head.
//!
//! Each block is x + attn(attn_norm x) followed by the FFN part of its kind (dense, kloop, moe,
//! versatile; see [`crate::blocks`] and [`crate::versatile`]).
//!
//! Public API (the CLI codes against it):
//! - [`Model::new`], [`Model::from_checkpoint`], [`Model::init_from`], [`Model::tensor_refs`];
//! - [`Model::train_forward`] (graph on a [`Tape`]; loss = mean CE + coef·Σ balance);
//! - [`Model::infer`] (no tape, argmax depth, per-token early exit), [`Model::eval_loss`];
//! - `Model::decoder` (KV-cache generation, in [`crate::decode`]).
//!
//! How a training step's batch is run (sequence groups in parallel, [`Model::train_step_grads`])
//! is in `model/train_groups.rs`.

use rayon::prelude::*;
use thiserror::Error;
use vffn_autograd::{ParamId, ParamStore, Rng, Tape, Tensor};

use crate::balance::{self, balance_term, whole_batch_shares, BalanceTerm};
use crate::blocks::{attention, lm_head, looped_part, moe_part};
use crate::checkpoint::{CheckpointError, LoadPlan, ModelCheckpoint, TensorRef};
use crate::config::{BlockKind, Config, ConfigError};
use crate::data::Batch;
use crate::flops::{realized_inference_flops, FlopsBreakdown, FlopsError};
use crate::fused::ComposedReason;
use crate::layer::{FfnPath, LayerIds, LayerWeights};
use crate::versatile::{versatile_infer, versatile_train, DepthAgreement, GumbelPick};
use crate::weights::HalfStore;
use crate::WeightDtype;

mod build;
mod train_groups;

pub use train_groups::{StepGrads, TRAIN_GROUPS};

/// Errors of building or running a model. Bad inputs (token ids, shapes) are errors, not panics.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("tensor engine: {0}")]
    Autograd(#[from] vffn_autograd::Error),
    #[error("token id {token} at position {position} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, position: usize, vocab_size: usize },
    #[error("empty input: batch {batch} × seq {seq}")]
    EmptyInput { batch: usize, seq: usize },
    #[error("{what}: expected {expected} tokens (batch × seq), got {got}")]
    InputLength { what: &'static str, expected: usize, got: usize },
    #[error("decoder cache is full ({max_len} tokens)")]
    DecoderFull { max_len: usize },
    #[error("flops: {0}")]
    Flops(#[from] FlopsError),
    #[error("{0} weights are not supported for inference (f32 or bf16)")]
    UnsupportedWeights(WeightDtype),
    #[error("bf16 kernels: {0}")]
    Bf16(#[from] vffn_kernels::bf16::Bf16Error),
}

/// Routing decisions per layer for every token of a forward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    /// Per layer: chosen loop count 1..D per token [B·T]; empty for layers without a depth
    /// router (dense, kloop, moe, width-only versatile).
    pub depth: Vec<Vec<u8>>,
    /// Per layer: chosen experts per token [B·T·k] (slots by descending router logit); empty for
    /// layers without a router.
    pub experts: Vec<Vec<u32>>,
}

impl Routing {
    /// Per-layer histograms of the chosen loop counts, `counts[layer][ℓ − 1]` (ℓ = 1..=D), for
    /// accumulating over batches into
    /// [`crate::flops::realized_inference_flops_from_counts`]. Layers without a depth router
    /// give all-zero rows.
    pub fn depth_counts(&self, max_depth: usize) -> Vec<Vec<u64>> {
        self.depth
            .iter()
            .map(|layer| {
                let mut counts = vec![0u64; max_depth];
                for &c in layer {
                    if let Some(slot) = (c as usize).checked_sub(1).and_then(|i| counts.get_mut(i))
                    {
                        *slot += 1;
                    }
                }
                counts
            })
            .collect()
    }
}

/// What a training forward returns.
pub struct TrainOutput {
    /// mean CE + balance_loss_coef · Σ_layers balance (scalar, on the tape).
    pub loss: Tensor,
    /// Mean cross-entropy (nats).
    pub ce: f32,
    /// Σ over routed layers of the balance loss (before the coefficient).
    pub balance: f32,
    /// [B·T, V] on the tape.
    pub logits: Tensor,
    pub routing: Routing,
    /// Per layer: the depth router's training picks against its argmax (zero for layers
    /// without a depth router).
    pub depth_agreement: Vec<DepthAgreement>,
}

/// Embedding and blocks of one forward (see `Model::trunk`).
struct TrunkOut {
    /// Residual stream after the last block. [B·T, d]
    x: Tensor,
    /// Balance term per routed layer (training).
    balance: Vec<BalanceTerm>,
    routing: Routing,
    /// Per layer (training): the depth router's picks against its argmax.
    agreement: Vec<DepthAgreement>,
}

/// The FFN part of one block (see `Model::ffn_part`).
struct FfnPartOut {
    out: Tensor,
    balance: Option<BalanceTerm>,
    /// Chosen loop count per token, or empty. [N]
    depth: Vec<u8>,
    /// Chosen experts per token, or empty. [N·k]
    experts: Vec<u32>,
    agreement: Option<DepthAgreement>,
}

/// What an inference forward returns.
#[derive(Clone, Debug)]
pub struct InferOutput {
    /// [B·T, V] row-major.
    pub logits: Vec<f32>,
    pub routing: Routing,
}

impl InferOutput {
    /// Realized inference FLOPs per token of this batch from its depth routing (the paper's
    /// `Base·N_mean + (MoE−Base)·P`); `mean_context` is the mean attended context length.
    pub fn realized_flops(
        &self,
        config: &Config,
        mean_context: f64,
    ) -> Result<FlopsBreakdown, ModelError> {
        let depths: Vec<Vec<usize>> = self
            .routing
            .depth
            .iter()
            .map(|layer| layer.iter().map(|&c| c as usize).collect())
            .collect();
        Ok(realized_inference_flops(config, mean_context, &depths)?)
    }
}

/// The model: config, parameters (named as [`Config::param_specs`]) and per-layer handles.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    pub params: ParamStore,
    pub(crate) wte: ParamId,
    pub(crate) layers: Vec<LayerIds>,
    pub(crate) ln_f: ParamId,
    pub(crate) head: ParamId,
    /// Forces the composed autograd FFN path (no fused kernels); for tests comparing the two.
    pub(crate) composed_ffn: bool,
    /// The matrices of a bf16 model (see [`crate::weights`]); empty for an f32 model.
    pub(crate) half: HalfStore,
}

impl Model {
    /// Fresh init: matrices N(0, init_std) truncated at ±3σ, norm weights 1. Deterministic per
    /// seed (parameters drawn in param_specs order).
    pub fn new(config: Config, seed: u64) -> Result<Model, ModelError> {
        Model::new_as(config, seed, WeightDtype::F32)
    }

    /// Exact load (resume): every tensor present with the right shape, nothing extra.
    pub fn from_checkpoint(ckpt: &ModelCheckpoint) -> Result<Model, ModelError> {
        Model::from_checkpoint_as(ckpt, WeightDtype::F32)
    }

    /// Continued pre-training: a fresh `config` model from `seed`, then every tensor the
    /// checkpoint has with the right shape copied in (e.g. dense → versatile).
    pub fn init_from(
        config: Config,
        seed: u64,
        ckpt: &ModelCheckpoint,
    ) -> Result<(Model, LoadPlan), ModelError> {
        let mut model = Model::new(config, seed)?;
        let plan = ckpt.plan_load(&model.config.param_specs())?;
        for name in &plan.copied {
            let id = model.params.id(name).expect("plan names come from param_specs");
            let src = &ckpt.tensors[name].data;
            model.params.get_mut(id).data_mut().copy_from_slice(src);
        }
        Ok((model, plan))
    }

    /// Builds the handles from a store filled in param_specs order.
    pub(crate) fn from_store(config: Config, params: ParamStore) -> Result<Model, ModelError> {
        let id = |name: String| {
            params
                .id(&name)
                .ok_or(CheckpointError::MissingTensor { name })
                .map_err(ModelError::from)
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for layer in 0..config.n_layers {
            let p = format!("transformer.blocks.{layer}");
            let routed = matches!(config.block, BlockKind::Moe | BlockKind::Versatile);
            let mut experts = Vec::new();
            if config.block == BlockKind::Moe {
                for e in 0..config.n_experts {
                    experts.push((
                        id(format!("{p}.experts.{e}.ff_proj.weight"))?,
                        id(format!("{p}.experts.{e}.ff_out.weight"))?,
                    ));
                }
            }
            layers.push(LayerIds {
                attn_norm: id(format!("{p}.attn_norm.weight"))?,
                att_proj: id(format!("{p}.att_proj.weight"))?,
                attn_out: id(format!("{p}.attn_out.weight"))?,
                ff_norm: id(format!("{p}.ff_norm.weight"))?,
                ff_proj: id(format!("{p}.ff_proj.weight"))?,
                ff_out: id(format!("{p}.ff_out.weight"))?,
                expert_gate: if routed {
                    Some(id(format!("{p}.expert_gate.weight"))?)
                } else {
                    None
                },
                depth_predictor: if config.block == BlockKind::Versatile {
                    Some(id(format!("{p}.depth_predictor.weight"))?)
                } else {
                    None
                },
                experts,
                ffn: (),
            });
        }
        Ok(Model {
            wte: id("transformer.wte.weight".into())?,
            ln_f: id("transformer.ln_f.weight".into())?,
            head: id("transformer.ff_out.weight".into())?,
            layers,
            config,
            params,
            composed_ffn: false,
            half: HalfStore::default(),
        })
    }

    /// Named tensors in param_specs order, for [`crate::checkpoint::save_model`] (of an f32
    /// model: a bf16 model's matrices are not in `params`).
    pub fn tensor_refs(&self) -> Vec<TensorRef<'_>> {
        debug_assert!(self.half.is_empty(), "tensor_refs of a bf16 model");
        self.params
            .iter()
            .map(|(_, p)| TensorRef { name: p.name(), shape: p.shape(), data: p.data() })
            .collect()
    }

    /// Checks token ids and sizes of a [B, T] input.
    fn check_tokens(
        &self,
        what: &'static str,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(), ModelError> {
        if batch == 0 || seq == 0 {
            return Err(ModelError::EmptyInput { batch, seq });
        }
        let expected = batch.checked_mul(seq).ok_or(ModelError::EmptyInput { batch, seq })?;
        if tokens.len() != expected {
            return Err(ModelError::InputLength { what, expected, got: tokens.len() });
        }
        let vocab_size = self.config.vocab_size;
        if let Some(position) = tokens.iter().position(|&t| t as usize >= vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                token: tokens[position],
                position,
                vocab_size,
            });
        }
        Ok(())
    }

    /// Embedding and every block; `mode` selects the training or the inference FFN parts.
    // inputs [B·T] -> residual [B·T, d], balance terms, routing, depth agreement
    fn trunk(
        &self,
        tape: &mut Tape,
        inputs: &[u32],
        batch: usize,
        seq: usize,
        mode: Mode<'_>,
        prepacked: Option<&[LayerWeights]>,
    ) -> TrunkOut {
        let cfg = &self.config;
        let positions: Vec<usize> = (0..batch * seq).map(|i| i % seq).collect();
        let mut x = self.embed(tape, inputs);
        let mut balance = Vec::new();
        let mut routing = Routing::default();
        let mut agreement = Vec::with_capacity(self.layers.len());
        let (temperature, mut noise) = match mode {
            Mode::Train { temperature, noise } => (Some(temperature), noise),
            Mode::Infer => (None, None),
        };
        for (li, ids) in self.layers.iter().enumerate() {
            let loaded;
            let w = match prepacked {
                Some(layers) => &layers[li],
                None => {
                    loaded = self.load_layer(tape, ids);
                    &loaded
                }
            };
            let a = attention(tape, cfg, w, &x, batch, seq, &positions);
            let x_attn = tape.add(&x, &a);
            let part = self.ffn_part(tape, w, &x_attn, temperature, noise.as_deref_mut());
            balance.extend(part.balance);
            routing.depth.push(part.depth);
            routing.experts.push(part.experts);
            agreement.push(part.agreement.unwrap_or_default());
            x = part.out;
        }
        TrunkOut { x, balance, routing, agreement }
    }

    /// One layer's parameters on `tape`, its FFN path chosen (see `LayerIds::load_for_forward`).
    fn load_layer(&self, tape: &mut Tape, ids: &LayerIds) -> LayerWeights {
        ids.load_for_forward(tape, &self.config, &self.params, &self.half, self.composed_ffn)
    }

    /// How a batched inference forward runs the FFN of every layer (the same choice for all:
    /// it depends on the config and the weights' dtype), e.g. `composed: expert width 20 is
    /// not a multiple of 16`.
    pub fn ffn_path(&self) -> FfnPath {
        let mut tape = Tape::no_grad();
        match self.layers.first() {
            Some(ids) => self.load_layer(&mut tape, ids).ffn_path(),
            None => FfnPath::Packed,
        }
    }

    /// The FFN part of one block. `temperature: None` = inference mode.
    // x [N, d] -> out [N, d], balance term, depth [N] or empty, experts [N·k] or empty
    fn ffn_part(
        &self,
        tape: &mut Tape,
        w: &LayerWeights,
        x: &Tensor,
        temperature: Option<f32>,
        noise: Option<&mut Rng>,
    ) -> FfnPartOut {
        let cfg = &self.config;
        let unrouted = |out| FfnPartOut {
            out,
            balance: None,
            depth: Vec::new(),
            experts: Vec::new(),
            agreement: None,
        };
        match cfg.block {
            BlockKind::Dense | BlockKind::Kloop => unrouted(looped_part(tape, cfg, w, x)),
            BlockKind::Moe => {
                let (out, logits, experts) = moe_part(tape, cfg, w, x);
                let balance = temperature.map(|_| balance_term(tape, &logits, &experts));
                FfnPartOut { balance, experts, ..unrouted(out) }
            }
            BlockKind::Versatile => {
                let (out, balance, r) = match temperature {
                    Some(temperature) => {
                        versatile_train(tape, cfg, w, x, GumbelPick { temperature, noise })
                    }
                    None => {
                        let (out, r) = versatile_infer(tape, cfg, w, x);
                        (out, None, r)
                    }
                };
                FfnPartOut {
                    out,
                    balance,
                    depth: r.depth,
                    experts: r.experts,
                    agreement: r.agreement,
                }
            }
        }
    }

    /// Final RMSNorm and the untied LM head.
    // x [B·T, d] -> logits [B·T, V]
    pub(crate) fn head(&self, tape: &mut Tape, x: &Tensor) -> Tensor {
        let ln_f = tape.param(&self.params, self.ln_f);
        let head = self.weight(tape, self.head);
        lm_head(tape, &self.config, &ln_f, &head, x)
    }

    /// The byte embedding of `tokens`.
    // tokens [N] -> [N, d]
    pub(crate) fn embed(&self, tape: &mut Tape, tokens: &[u32]) -> Tensor {
        self.weight(tape, self.wte).embedding(tape, tokens)
    }

    /// Layer `layer`'s parameters on `tape` with its FFN composed for `reason` (the decoder).
    pub(crate) fn load_layer_composed(
        &self,
        tape: &mut Tape,
        layer: usize,
        reason: ComposedReason,
    ) -> LayerWeights {
        self.layers[layer].load_with(tape, &self.params, &self.half, reason)
    }

    /// Training forward: builds the graph on `tape`; loss = mean CE + balance_loss_coef·Σ
    /// balance. `noise`: Some(rng) = Gumbel noise drawn from rng (layer by layer, row-major);
    /// None = zero noise. inputs/targets [B·T] from the batch.
    pub fn train_forward(
        &self,
        tape: &mut Tape,
        batch: &Batch,
        temperature: f32,
        noise: Option<&mut Rng>,
    ) -> Result<TrainOutput, ModelError> {
        self.check_train_inputs(batch, temperature)?;
        let (ce, logits, trunk) = self.train_part(tape, batch, temperature, noise);
        let terms = trunk.balance;
        let shares = whole_batch_shares(&[&terms]);
        let coef = self.config.balance_loss_coef;
        let (loss, balance) = balance::objective(tape, &ce, &terms, &shares, coef);
        Ok(TrainOutput {
            loss,
            ce: ce.item(),
            balance,
            logits,
            routing: trunk.routing,
            depth_agreement: trunk.agreement,
        })
    }

    fn check_train_inputs(&self, batch: &Batch, temperature: f32) -> Result<(), ModelError> {
        let (b, t) = (batch.batch_size, batch.seq_len);
        self.check_tokens("inputs", &batch.inputs, b, t)?;
        self.check_tokens("targets", &batch.targets, b, t)?;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(ModelError::Config(ConfigError::Constraint {
                key: "temperature".into(),
                value: temperature.to_string(),
                reason: "must be finite and positive".into(),
            }));
        }
        Ok(())
    }

    /// The training graph up to the mean CE and the routers' balance terms (whose shares f_e
    /// may need the whole batch, see [`Model::train_step_grads`]).
    // batch [B, T] -> (mean CE scalar, logits [B·T, V], the trunk's balance terms and routing)
    fn train_part(
        &self,
        tape: &mut Tape,
        batch: &Batch,
        temperature: f32,
        noise: Option<&mut Rng>,
    ) -> (Tensor, Tensor, TrunkOut) {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let mode = Mode::Train { temperature, noise };
        let trunk = self.trunk(tape, &batch.inputs, b, t, mode, None);
        let logits = self.head(tape, &trunk.x);
        let ce = tape.cross_entropy(&logits, &batch.targets);
        (ce, logits, trunk)
    }

    /// Inference forward (no tape): argmax depth, per-token early exit, width path only where
    /// λ > 0. `inputs` is [batch · seq] row-major.
    pub fn infer(
        &self,
        inputs: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<InferOutput, ModelError> {
        let (logits, routing) = self.infer_tensor(inputs, batch, seq)?;
        Ok(InferOutput { logits: logits.to_vec(), routing })
    }

    fn infer_tensor(
        &self,
        inputs: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor, Routing), ModelError> {
        self.check_tokens("inputs", inputs, batch, seq)?;
        let threads = rayon::current_num_threads();
        let groups = if threads > 1 { batch.min(INFER_GROUPS_PER_THREAD * threads) } else { 1 };
        if groups <= 1 {
            let mut tape = Tape::no_grad();
            let trunk = self.trunk(&mut tape, inputs, batch, seq, Mode::Infer, None);
            return Ok((self.head(&mut tape, &trunk.x), trunk.routing));
        }
        // Groups of whole sequences run the model independently, one group per task: the
        // layers' many small parallel regions become one per forward, and a thread that
        // finishes its groups early steals the nested work of the others. Every output row
        // depends only on its own sequence (row-wise kernels, per-sequence attention, GEMM rows
        // summed in the same order for any row count), so the result is bitwise the single
        // pass's for any grouping or thread count. Weights are loaded and packed once (bf16
        // models: per group and layer, so that only one layer is ever widened per group).
        let layers: Option<Vec<LayerWeights>> = self.half.is_empty().then(|| {
            let mut tape = Tape::no_grad();
            self.layers.iter().map(|ids| self.load_layer(&mut tape, ids)).collect()
        });
        let per = batch.div_ceil(groups);
        let parts: Vec<(Tensor, Routing)> = (0..batch.div_ceil(per))
            .into_par_iter()
            .with_max_len(1)
            .map(|g| {
                let (b0, nb) = (g * per, per.min(batch - g * per));
                let mut tape = Tape::no_grad();
                let part = &inputs[b0 * seq..(b0 + nb) * seq];
                let trunk = self.trunk(&mut tape, part, nb, seq, Mode::Infer, layers.as_deref());
                (self.head(&mut tape, &trunk.x), trunk.routing)
            })
            .collect();
        let vocab = parts[0].0.cols();
        let mut logits = Vec::with_capacity(batch * seq * vocab);
        let mut routing = Routing {
            depth: vec![Vec::new(); self.layers.len()],
            experts: vec![Vec::new(); self.layers.len()],
        };
        for (part, r) in &parts {
            logits.extend_from_slice(part.data());
            for (all, mine) in routing.depth.iter_mut().zip(&r.depth) {
                all.extend_from_slice(mine);
            }
            for (all, mine) in routing.experts.iter_mut().zip(&r.experts) {
                all.extend_from_slice(mine);
            }
        }
        let logits = Tensor::from_vec(&[batch * seq, vocab], logits).expect("[B·T, vocab]");
        Ok((logits, routing))
    }

    /// Mean CE (nats) of next-byte prediction in inference mode for one batch.
    pub fn eval_loss(&self, batch: &Batch) -> Result<f32, ModelError> {
        let (b, t) = (batch.batch_size, batch.seq_len);
        self.check_tokens("targets", &batch.targets, b, t)?;
        let (logits, _) = self.infer_tensor(&batch.inputs, b, t)?;
        let mut tape = Tape::no_grad();
        Ok(tape.cross_entropy(&logits, &batch.targets).item())
    }

    /// Inference FFN part of layer `layer` on rows `x` (used by the decoder), with the chosen
    /// loop count of each row (empty without a depth router).
    // x [N, d] -> ([N, d], depth [N] or empty)
    pub(crate) fn infer_ffn_part(
        &self,
        tape: &mut Tape,
        w: &LayerWeights,
        x: &Tensor,
    ) -> (Tensor, Vec<u8>) {
        let part = self.ffn_part(tape, w, x, None, None);
        (part.out, part.depth)
    }
}

/// Sequence groups per worker thread in a batched inference forward (see `infer_tensor`;
/// measured at 2 threads, tiny versatile: 2 per thread beat 1, 4 and 8 by 2–9 %).
const INFER_GROUPS_PER_THREAD: usize = 2;

/// Training (with temperature and optional noise) or inference.
enum Mode<'a> {
    Train { temperature: f32, noise: Option<&'a mut Rng> },
    Infer,
}
