//! vffn-autograd: tensors, a define-by-run tape, ops with their backward side by side, optimizers.
//!
//! # Public API (stable; the model crate builds on it)
//!
//! **Tensor** ([`Tensor`]): f32, row-major, contiguous, with a shape. Storage is an
//! `Arc<`[`Buffer`]`>` taken from a global size-keyed pool ([`pool`]) and returned to it on drop,
//! so a training step reuses last step's memory. Cloning a tensor is an `Arc` clone.
//! - `Tensor::from_vec(&[usize], Vec<f32>) -> Result<Tensor>`, `Tensor::zeros(&[usize])`,
//!   `Tensor::full(&[usize], f32)`, `Tensor::from_buffer(&[usize], Buffer) -> Result<Tensor>`,
//!   `Tensor::randn(&[usize], std, &mut Rng)`, `Tensor::scalar(f32)`.
//! - `t.shape() -> &[usize]`, `t.numel()`, `t.data() -> &[f32]`, `t.to_vec()`, `t.item() -> f32`,
//!   `t.rows() / t.cols()` (2-D view of any tensor: rows = product of leading dims).
//! - Views that keep the tape link (no copy, no node): `t.reshape(&[usize]) -> Result<Tensor>`,
//!   `t.narrow_rows(start, count) -> Result<Tensor>` (rows along dim 0). `t.detach()` drops the link.
//! - `Buffer::uninit(len)` (recycled contents: overwrite every element), `Buffer::zeros(len)`,
//!   `Buffer::from_vec(Vec<f32>)`; derefs to `[f32]`.
//!
//! **Tape** ([`Tape`]): records ops in execution order; every op is a method `tape.op(&inputs..)`
//! returning a new [`Tensor`]. An op's output is *tracked* (has a node) iff the tape has grad enabled
//! and some input is tracked; otherwise nothing is recorded.
//! - `Tape::new()`; `Tape::no_grad()` (inference: records nothing); `tape.num_nodes()`.
//! - `tape.watch(&t) -> Tensor`: a leaf that wants a gradient.
//! - `tape.param(&ParamStore, ParamId) -> Tensor`: leaf sharing the parameter's storage (no copy).
//! - `tape.backward(self, &loss) -> Result<Gradients>` (loss has one element; seed 1.0) and
//!   `tape.backward_with_grad(self, &out, &[f32]) -> Result<Gradients>` (any seed; or
//!   `backward_with_seed(self, &out, Buffer)` to hand over the seed without a copy).
//! - `tape.wants_grad(&[&Tensor]) -> bool`: whether an op over these inputs would be recorded
//!   (skip saving data for backward when false).
//! - [`Gradients`]: `get(&Tensor) -> Option<&[f32]>` for leaves, `param(ParamId)`;
//!   `store.accumulate_grads(grads)` adds (or moves, if empty) parameter gradients into the store.
//!
//! **Custom ops** (how the model crate writes fused ops with a hand-written backward):
//! ```ignore
//! // y [R,n] = f(x [R,k], w [n,k]); compute forward into a Buffer yourself (kernels, rayon...).
//! let y = Tensor::from_buffer(&[r, n], out_buf)?;
//! let (xs, ws) = (x.clone(), w.clone());                     // save what backward needs
//! let y = tape.custom(&[&x, &w], y, move |dy: &[f32], grads: &mut [Option<GradSlot>]| {
//!     let [dx, dw] = grads else { unreachable!() };         // one slot per input, same order
//!     if let Some(dx) = dx { /* write or add into dx.data(); see dx.accumulate()/dx.beta() */ }
//!     if let Some(dw) = dw { dw.add(&my_dw); }               // `add` handles both cases
//! });
//! ```
//! A slot is `None` when that input does not want a gradient. `slot.beta()` is 0.0 when the slot is
//! fresh (recycled garbage: overwrite every element) and 1.0 when it must be accumulated into —
//! exactly GEMM's `beta`, so `gemm(1.0, .., slot.beta(), MatMut::new(slot.data(), ..))` is right.
//! For several outputs, write them into one buffer, make one custom op, and take
//! `narrow_rows`/`reshape` views of the result: gradients of views flow into the right range.
//! The closure is `FnOnce + 'static`: move saved tensors in; they return to the pool after backward.
//!
//! **Ops** (all `&mut self` methods on [`Tape`]; shapes as `[rows, cols]` etc.; a shape mismatch is
//! a programming error and panics with a message naming the op):
//! - `matmul(a, b, Trans, Trans)` for all four transpose forms; `linear(x [.., k], w [n, k])`
//!   (y = x·Wᵀ; leading dims of x are flattened). [`Trans::N`] / [`Trans::T`].
//! - `add(a, b)`, `sub(a, b)`, `mul(a, b)` (b same shape as a, or a suffix of it: broadcast over
//!   leading dims, e.g. a bias), `scale(a, c)`, `scale_rows(x [R,C], w [R])`, `sum(a)`, `mean(a)`,
//!   `mean_rows(x [R,C]) -> [C]`.
//! - `rms_norm(x [R,d], w [d], eps)` (fused; use [`RMS_NORM_EPS`] = 1e-6), `silu(x)`,
//!   `swiglu(x [R,2h]) -> [R,h]` (x = [value | gate], out = value·silu(gate)), `softmax(x)` (last
//!   dim), `cross_entropy(logits [R,V], targets: &[u32]) -> scalar` (fused log-softmax, mean over
//!   rows).
//! - `embedding(table [V,d], ids: &[u32]) -> [n,d]`, `gather_rows(x [N,d], idx: &[u32]) -> [M,d]`,
//!   `scatter_add(src [M,d], idx: &[u32], weights: Option<&Tensor> [M], rows: N) -> [N,d]`
//!   (index-add: out[idx[m]] += w[m]·src[m]).
//! - `rope(x [R,W], col_offsets: &[usize], heads, head_dim, positions: &[usize], theta)` (rotates the
//!   `heads` head blocks starting at each column offset; [`ROPE_THETA`] = 10000),
//!   `attention(qkv [B·T,3d], AttnShape) -> [B·T,d]` (causal, flash-style kernel, saves only out+lse).
//! - `top_k(x [R,n], k) -> (values [R,k], indices Vec<u32>)` (values carry the gradient; ties pick the
//!   lower index), `gumbel_softmax_hard(logits [R,n], tau, Option<&mut Rng>) -> [R,n]` (one-hot
//!   forward, straight-through softmax backward; `None` = zero noise; or
//!   `gumbel_softmax_hard_with_noise(logits, tau, &[f32])` with the noise given).
//! - `stack(&[&Tensor]) -> [n, ..]`, `weighted_sum(stack [n,R,C], w [R,n]) -> [R,C]`,
//!   `concat(&[&Tensor], axis)`, `split(x, axis, &[sizes]) -> Vec<Tensor>`, `transpose(x [R,C])`.
//!
//! **Parameters** ([`ParamStore`], [`Param`], [`ParamId`]): named, insertion-ordered (stable for
//! checkpoints, e.g. `transformer.blocks.0.ff_proj.weight`).
//! - `store.add(name, &[usize], Vec<f32>, no_decay: bool) -> Result<ParamId>`, `store.id(name)`,
//!   `store.get(id)`, `store.get_mut(id)`, `store.iter()` (in order), `store.zero_grad()`.
//! - `Param`: `name()`, `shape()`, `numel()`, `data()`, `data_mut()` (copy-on-write if a tape still
//!   shares it), `grad()`, `grad_mut()`, `set_grad(Option<Buffer>)`, `no_decay()`, `tensor()`.
//! - `store.accumulate_grads(Gradients)`, `store.scale_grads(c)`, `store.num_elements()`.
//!
//! **Optimizer** ([`optim`]): `AdamW::new(AdamWConfig, &store)` (β = (0.9, 0.95), ε = 1e-8,
//! decoupled weight decay skipped for `no_decay` params), `adamw.step(&mut store, lr) -> Result<()>`,
//! `adamw.state() -> AdamWState { step, names, m, v }` and `AdamW::from_state(cfg, state, &store)`
//! (exact round trip), `clip_grad_norm(&mut store, max_norm) -> f32` (global L2 norm before
//! clipping, f64 sum in parameter order; `grad_norm(&store)` without clipping). The learning-rate
//! schedule is the model crate's (`vffn_model::schedule`): the step takes the rate as given.
//!
//! Kernels used by ops are in `vffn_kernels::fused` (slice-level forward/backward of RMSNorm,
//! SiLU, SwiGLU, softmax, log-softmax + CE), callable directly from custom ops.
//!
//! Determinism: every op is deterministic for a fixed thread count and independent of how rayon
//! splits work (parallel loops only write independent outputs; reductions run in a fixed order).

pub mod error;
pub mod ops;
pub mod optim;
pub mod param;
pub mod rng;
pub mod tape;
pub mod tensor;

pub use error::Error;
pub use ops::{Trans, RMS_NORM_EPS, ROPE_THETA};
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, AdamWState};
pub use param::{Param, ParamId, ParamStore};
pub use pool::Buffer;
pub use rng::Rng;
pub use tape::{GradSlot, Gradients, Tape};
pub use tensor::Tensor;
pub use vffn_kernels::attention::AttnShape;
/// The scratch pool is the kernels' one ([`vffn_kernels::pool`]): tensors and kernel scratch
/// share its buffers.
pub use vffn_kernels::pool;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
