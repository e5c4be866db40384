//! Inference with bf16 weights (`--weights bf16`): every matrix of the model (embedding,
//! attention, FFN, routers, MoE experts, LM head) held as bf16 bits, rounded to nearest even
//! once when the model is built; norm weights stay f32. Products read the bits directly and
//! widen them to f32 in registers (`vffn_kernels::bf16`); activations and sums stay f32, so a
//! bf16 model computes what the f32 model computes on the rounded weights, up to the order of
//! f32 sums.
//!
//! - [`HalfMatrix`]: one matrix's bits [rows, cols], shared by every forward (never copied).
//! - [`Weight`]: a matrix as one forward sees it, an f32 tensor (training, f32 inference) or a
//!   [`HalfMatrix`]; [`Weight::linear`] is x·Wᵀ for both, [`Weight::block`] a strided block
//!   of it (the width path's expert slices).
//! - [`HalfMatrix::from_chunks`] / [`HalfStore::push`]: what `Model::new_as` and
//!   `Model::from_checkpoint_as` (in `model/build.rs`) build a bf16 model from, one tensor at
//!   a time, so a bf16 model never holds an f32 copy of itself.
//!
//! Decoding reads the bits in every product. A batched forward widens one layer's FFN matrices
//! at a time into a transient f32 buffer to pack them for the fused FFN kernels (see
//! `Model::load_layer`); its other products read the bits.
//!
//! A bf16 model is for inference only: its entries in `Model::params` for the matrices are
//! empty placeholders (kept so that parameter ids follow [`Config::param_specs`]), and a
//! [`Weight::Bf16`] used where a training op needs an f32 tensor panics.

use std::ops::Deref;
use std::sync::Arc;

use half::bf16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use vffn_autograd::{Buffer, ParamId, ParamStore, Tape, Tensor};
use vffn_kernels::bf16::{linear_bf16_with, Bf16Path, Bf16Rows};
use vffn_kernels::gemm::{gemm, MatMut, MatRef};
use vffn_kernels::microkernel::isa;

/// One matrix [rows, cols] as bf16 bits, row-major (rounded to nearest even from f32 with
/// `half`'s slice conversion), and the kernel path its products with several rows take.
#[derive(Clone, Debug)]
pub(crate) struct HalfMatrix {
    bits: Arc<Vec<u16>>,
    rows: usize,
    cols: usize,
    path: Bf16Path,
}

/// The bf16 matrices of a model, by parameter id (`None`: the parameter is f32, e.g. a norm;
/// empty for an f32 model).
#[derive(Clone, Debug, Default)]
pub(crate) struct HalfStore {
    matrices: Vec<Option<HalfMatrix>>,
}

impl HalfStore {
    /// The bf16 matrix of parameter `id`, if it is held in bf16.
    pub fn get(&self, id: ParamId) -> Option<&HalfMatrix> {
        self.matrices.get(id.0).and_then(Option::as_ref)
    }

    /// Whether any matrix is held in bf16.
    pub fn is_empty(&self) -> bool {
        self.matrices.iter().all(Option::is_none)
    }

    /// Whether a batched forward packs the FFN for the fused f32 kernels: always for f32
    /// weights; for bf16 ones on the widening path (measured faster than the composed path on
    /// it), not when products run on bf16 arithmetic (the composed path on `vdpbf16ps` / AMX
    /// measured 2.95× the fused f32 kernels on big.toml, see docs/benchmarks.md §5).
    pub fn packs_ffn(&self) -> bool {
        self.matrices.iter().flatten().all(|m| m.path == Bf16Path::Widen)
    }

    /// Sets the kernel path of every bf16 product with several rows (tests compare paths).
    #[cfg(test)]
    pub fn set_path(&mut self, path: Bf16Path) {
        self.matrices.iter_mut().flatten().for_each(|m| m.path = path);
    }

    /// Parameter `id` as a [`Weight`]: its bf16 matrix, or its f32 tensor on `tape`.
    pub fn weight(&self, tape: &mut Tape, store: &ParamStore, id: ParamId) -> Weight {
        match self.get(id) {
            Some(m) => Weight::Bf16(m.clone()),
            None => Weight::F32(tape.param(store, id)),
        }
    }
}

/// A weight matrix [rows, cols] for one forward.
#[derive(Clone, Debug)]
pub(crate) enum Weight {
    /// A parameter on the tape (training and f32 inference), or a widened transient copy.
    F32(Tensor),
    /// bf16 bits read in place (inference only).
    Bf16(HalfMatrix),
}

/// Training code and the fused FFN ops take the f32 tensor of a weight directly.
impl Deref for Weight {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            Weight::F32(t) => t,
            Weight::Bf16(m) => panic!(
                "a bf16 weight [{}, {}] was used as an f32 tensor (bf16 weights are for \
                 inference, through Weight::linear and Weight::block)",
                m.rows, m.cols
            ),
        }
    }
}

impl Weight {
    /// x·Wᵀ: `out[i, j] = Σ_p x[i, p]·W[j, p]`; on the tape for an f32 weight.
    // x [N, cols] -> [N, rows]
    pub fn linear(&self, tape: &mut Tape, x: &Tensor) -> Tensor {
        match self {
            Weight::F32(w) => tape.linear(x, w),
            Weight::Bf16(m) => {
                debug_assert!(!tape.wants_grad(&[x]), "bf16 weights take no gradient path");
                let n = x.rows();
                let mut out = Buffer::uninit(n * m.rows);
                let rows = self.block(0, m.rows, 0, m.cols);
                rows.linear_into(
                    MatRef::new(x.data(), n, x.cols()),
                    MatMut::new(&mut out, n, m.rows),
                );
                Tensor::from_buffer(&[n, m.rows], out).expect("[N, rows]")
            }
        }
    }

    /// Rows `first_row..+rows`, columns `first_col..+cols` of the matrix, read in place.
    pub fn block(
        &self,
        first_row: usize,
        rows: usize,
        first_col: usize,
        cols: usize,
    ) -> WeightRows<'_> {
        let (all_rows, stride) = match self {
            Weight::F32(t) => (t.rows(), t.cols()),
            Weight::Bf16(m) => (m.rows, m.cols),
        };
        assert!(
            first_row + rows <= all_rows && first_col + cols <= stride,
            "block [{first_row}+{rows}, {first_col}+{cols}] outside [{all_rows}, {stride}]"
        );
        let start = first_row * stride + first_col;
        let end =
            if rows == 0 { start } else { (first_row + rows - 1) * stride + first_col + cols };
        match self {
            Weight::F32(t) => {
                WeightRows::F32(MatRef::strided(&t.data()[start..end], rows, cols, stride, 1))
            }
            Weight::Bf16(m) => WeightRows::Bf16(
                Bf16Rows { bits: &m.bits[start..end], rows, cols, row_stride: stride },
                m.path,
            ),
        }
    }

    /// Whether a tape op on this weight would record a gradient.
    pub fn wants_grad(&self, tape: &Tape) -> bool {
        matches!(self, Weight::F32(t) if tape.wants_grad(&[t]))
    }

    /// The f32 weight: itself, or a widened copy of a bf16 one (a transient buffer).
    pub fn widened(&self) -> Weight {
        match self {
            Weight::F32(_) => self.clone(),
            Weight::Bf16(m) => {
                // From the buffer pool: the next layer's widening reuses this one's buffer.
                let mut out = Buffer::uninit(m.bits.len());
                m.bits.reinterpret_cast::<bf16>().convert_to_f32_slice(&mut out);
                Weight::F32(Tensor::from_buffer(&[m.rows, m.cols], out).expect("[rows, cols]"))
            }
        }
    }

    /// Rows `ids` of the matrix (an embedding lookup), widened to f32.
    // ids [N] -> [N, cols]
    pub fn embedding(&self, tape: &mut Tape, ids: &[u32]) -> Tensor {
        match self {
            Weight::F32(table) => tape.embedding(table, ids),
            Weight::Bf16(m) => {
                let mut out = Buffer::uninit(ids.len() * m.cols);
                for (row, &id) in out.chunks_exact_mut(m.cols.max(1)).zip(ids) {
                    let id = id as usize;
                    assert!(id < m.rows, "embedding: id {id} outside {} rows", m.rows);
                    let bits = &m.bits[id * m.cols..(id + 1) * m.cols];
                    bits.reinterpret_cast::<bf16>().convert_to_f32_slice(row);
                }
                Tensor::from_buffer(&[ids.len(), m.cols], out).expect("[N, cols]")
            }
        }
    }
}

/// A block of a weight matrix's rows, read in place (see [`Weight::block`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum WeightRows<'a> {
    /// [rows, cols] with a row stride.
    F32(MatRef<'a>),
    /// The rows and the kernel path for several rows of x.
    Bf16(Bf16Rows<'a>, Bf16Path),
}

impl WeightRows<'_> {
    /// `out[i, j] = Σ_p x[i, p]·W[j, p]` (f32 sums).
    // x [M, cols] -> out [M, rows]
    pub fn linear_into(&self, x: MatRef<'_>, out: MatMut<'_>) {
        match *self {
            WeightRows::F32(w) => gemm(1.0, x, w.t(), 0.0, out),
            // One row of x (decoding) always runs the GEMV, x in f32.
            WeightRows::Bf16(w, path) => linear_bf16_with(path, isa(), x, w, out, false)
                .unwrap_or_else(|e| panic!("bf16 linear: {e}")),
        }
    }
}

impl HalfMatrix {
    /// A matrix [rows, cols] whose f32 values `fill(offset, chunk)` writes front to back in
    /// chunks (`offset`: the index of `chunk[0]`), each rounded to bf16 (nearest even) as it
    /// comes, so that building never holds more than one chunk of it in f32.
    pub fn from_chunks(
        rows: usize,
        cols: usize,
        path: Bf16Path,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> HalfMatrix {
        let numel = rows * cols;
        let mut bits = vec![0u16; numel];
        let mut chunk = vec![0.0f32; BUILD_CHUNK.min(numel)];
        for (i, out) in bits.chunks_mut(BUILD_CHUNK).enumerate() {
            let chunk = &mut chunk[..out.len()];
            fill(i * BUILD_CHUNK, chunk);
            out.reinterpret_cast_mut::<bf16>().convert_from_f32_slice(chunk);
        }
        HalfMatrix { bits: Arc::new(bits), rows, cols, path }
    }
}

/// Values of a bf16 matrix converted at a time while building (1 MiB of f32).
const BUILD_CHUNK: usize = 1 << 18;

impl HalfStore {
    /// Appends the next parameter's matrix (`None`: that parameter stays f32).
    pub fn push(&mut self, matrix: Option<HalfMatrix>) {
        self.matrices.push(matrix);
    }
}

#[cfg(test)]
mod tests {
    //! A bf16 model against the f32 model whose matrices were rounded to bf16 (what it must
    //! compute, up to the order of f32 sums), on the fused and the composed FFN paths, batched
    //! and decoding; and what it holds in memory.

    use half::bf16;
    use vffn_autograd::Rng;

    use super::*;
    use crate::checkpoint::{load_model, save_model, save_model_as};
    use crate::config::{BlockKind, Fusion, Paths};
    use crate::config::{Config, ParamKind, ParamSpec};
    use crate::dtype::WeightDtype;
    use crate::fused::assert_close;
    use crate::model::{Model, ModelError};

    /// d 32, E 4, D 3, 2 layers, 3 sequences of 12 tokens; `hidden` 64 gives expert width 16
    /// (the fused kernels run), 32 gives 8 (the composed path).
    fn cfg(block: BlockKind, paths: Paths, hidden: usize) -> Config {
        Config {
            vocab_size: 24,
            d_model: 32,
            n_heads: 2,
            n_layers: 2,
            hidden,
            block,
            n_experts: 4,
            top_k: 2,
            max_depth: 3,
            paths,
            fusion: Fusion::Gated,
            init_std: 0.5,
            seq_len: 12,
            batch_size: 3,
            ..Config::default()
        }
    }

    fn configs() -> Vec<Config> {
        let mut all = Vec::new();
        for hidden in [64, 32] {
            all.push(cfg(BlockKind::Dense, Paths::Both, hidden));
            all.push(cfg(BlockKind::Kloop, Paths::Both, hidden));
            all.push(cfg(BlockKind::Moe, Paths::Both, hidden));
            for paths in [Paths::Both, Paths::Width, Paths::Depth] {
                all.push(cfg(BlockKind::Versatile, paths, hidden));
            }
        }
        all
    }

    fn tokens(cfg: &Config, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..cfg.batch_size * cfg.seq_len).map(|_| rng.below(cfg.vocab_size) as u32).collect()
    }

    /// The f32 model of `seed` with every matrix rounded to bf16 by `half` (norms untouched).
    fn rounded_f32(cfg: &Config, seed: u64) -> Model {
        let mut model = Model::new(cfg.clone(), seed).unwrap();
        for spec in cfg.param_specs().iter().filter(|s| s.kind == ParamKind::Matrix) {
            let id = model.params.id(&spec.name).unwrap();
            for v in model.params.get_mut(id).data_mut() {
                *v = bf16::from_f32(*v).to_f32();
            }
        }
        model
    }

    fn name(cfg: &Config) -> String {
        format!("{:?} {:?} h{}", cfg.block, cfg.paths, cfg.hidden)
    }

    #[test]
    fn bf16_inference_equals_f32_inference_on_the_rounded_weights() {
        for cfg in configs() {
            let mut half = Model::new_as(cfg.clone(), 5, WeightDtype::Bf16).unwrap();
            half.half.set_path(Bf16Path::Widen);
            let reference = rounded_f32(&cfg, 5);
            let input = tokens(&cfg, 8);
            let (b, t) = (cfg.batch_size, cfg.seq_len);
            let got = half.infer(&input, b, t).unwrap();
            let want = reference.infer(&input, b, t).unwrap();
            assert_eq!(got.routing, want.routing, "{}: routing", name(&cfg));
            assert_close(&format!("{}: logits", name(&cfg)), &got.logits, &want.logits);
            if cfg.block == BlockKind::Versatile && cfg.paths != Paths::Width {
                let depths: std::collections::BTreeSet<u8> =
                    got.routing.depth.iter().flatten().copied().collect();
                assert!(depths.len() > 1, "{}: early exit not exercised", name(&cfg));
            }
            // The rounding matters: the unrounded f32 model computes something else.
            let exact = Model::new(cfg.clone(), 5).unwrap().infer(&input, b, t).unwrap();
            let moved = exact.logits.iter().zip(&got.logits).any(|(a, b)| (a - b).abs() > 1e-3);
            assert!(moved, "{}: bf16 rounding left the logits unchanged", name(&cfg));
        }
    }

    #[test]
    fn bf16_decoder_equals_the_bf16_full_forward() {
        for cfg in configs() {
            let mut model = Model::new_as(cfg.clone(), 6, WeightDtype::Bf16).unwrap();
            // The forward's products with x in f32, as the decoder's GEMVs.
            model.half.set_path(Bf16Path::Widen);
            let input = &tokens(&cfg, 9)[..cfg.seq_len];
            let full = model.infer(input, 1, cfg.seq_len).unwrap();
            let mut decoder = model.decoder(cfg.seq_len);
            let mut stepped = Vec::new();
            let mut depths = vec![Vec::new(); cfg.n_layers];
            for &token in input {
                stepped.extend(decoder.push(token).unwrap());
                depths.iter_mut().zip(decoder.depths()).for_each(|(l, d)| l.extend(*d));
            }
            assert_close(&format!("{}: decoded logits", name(&cfg)), &stepped, &full.logits);
            assert_eq!(
                depths,
                full.routing.depth,
                "{}: the decoder routes as the forward",
                name(&cfg)
            );
        }
    }

    /// Where the CPU has bf16 arithmetic (`vdpbf16ps`, AMX) a batched forward's products round
    /// x to bf16: close to the widening path, not equal (where it has not, the selected path is
    /// the widening one and the two are the same).
    #[test]
    fn products_on_bf16_arithmetic_stay_close_to_the_widening_path() {
        for cfg in
            [cfg(BlockKind::Versatile, Paths::Both, 64), cfg(BlockKind::Moe, Paths::Both, 64)]
        {
            let selected = Model::new_as(cfg.clone(), 2, WeightDtype::Bf16).unwrap();
            let mut widening = Model::new_as(cfg.clone(), 2, WeightDtype::Bf16).unwrap();
            widening.half.set_path(Bf16Path::Widen);
            let input = tokens(&cfg, 3);
            let (b, t) = (cfg.batch_size, cfg.seq_len);
            let got = selected.infer(&input, b, t).unwrap();
            let want = widening.infer(&input, b, t).unwrap();
            let rms = |values: &mut dyn Iterator<Item = f32>| {
                let (sum, n) =
                    values.fold((0.0f64, 0usize), |(s, n), x| (s + f64::from(x).powi(2), n + 1));
                (sum / n.max(1) as f64).sqrt()
            };
            let scale = rms(&mut want.logits.iter().copied());
            let err = rms(&mut got.logits.iter().zip(&want.logits).map(|(a, b)| a - b));
            // Share of (token, layer) routing decisions (depths, then expert slots) alike.
            let decisions = |r: &crate::model::Routing| -> Vec<u32> {
                let depths = r.depth.iter().flatten().map(|&c| u32::from(c));
                depths.chain(r.experts.iter().flatten().copied()).collect()
            };
            let (mine, theirs) = (decisions(&got.routing), decisions(&want.routing));
            let alike = mine.iter().zip(&theirs).filter(|(a, b)| a == b).count();
            let agree = alike as f64 / theirs.len() as f64;
            // Measured 1.5% (AMX; init_std 0.5 makes these random models sensitive); a wrong
            // slice or weight moves the logits by O(100%).
            assert!(err <= 3e-2 * scale, "{}: rms error {err:e} vs rms {scale:e}", name(&cfg));
            assert!(agree >= 0.95, "{}: routing agreement {agree}", name(&cfg));
        }
    }

    #[test]
    fn a_bf16_model_holds_its_matrices_only_as_bf16_bits() {
        let cfg = cfg(BlockKind::Moe, Paths::Both, 64);
        let model = Model::new_as(cfg.clone(), 1, WeightDtype::Bf16).unwrap();
        assert_eq!(model.weights(), WeightDtype::Bf16);
        assert_eq!(Model::new(cfg.clone(), 1).unwrap().weights(), WeightDtype::F32);
        let specs = cfg.param_specs();
        let count = |kind: ParamKind| -> usize {
            specs.iter().filter(|s| s.kind == kind).map(ParamSpec::numel).sum()
        };
        // f32: the norm weights alone; bf16: every matrix value once.
        assert_eq!(model.params.num_elements(), count(ParamKind::Norm));
        let bits: usize = model.half.matrices.iter().flatten().map(|m| m.bits.len()).sum();
        assert_eq!(bits, count(ParamKind::Matrix));
    }

    #[test]
    fn checkpoints_in_f32_or_bf16_load_as_the_same_bf16_model() {
        let cfg = cfg(BlockKind::Versatile, Paths::Both, 64);
        let f32_model = Model::new(cfg.clone(), 3).unwrap();
        let refs = f32_model.tensor_refs();
        let extra = Default::default();
        let f32_file = save_model(&cfg, 1.0, &extra, &refs).unwrap();
        let bf16_file = save_model_as(&cfg, 1.0, &extra, &refs, WeightDtype::Bf16).unwrap();
        let fresh = Model::new_as(cfg.clone(), 3, WeightDtype::Bf16).unwrap();
        let input = tokens(&cfg, 4);
        let want = fresh.infer(&input, cfg.batch_size, cfg.seq_len).unwrap();
        for file in [f32_file, bf16_file] {
            let ckpt = load_model(&file).unwrap();
            let model = Model::from_checkpoint_as(&ckpt, WeightDtype::Bf16).unwrap();
            let got = model.infer(&input, cfg.batch_size, cfg.seq_len).unwrap();
            assert_eq!(got.logits, want.logits, "same bits, same logits");
            assert_eq!(got.routing, want.routing);
        }
    }

    #[test]
    fn f16_weights_are_refused_naming_the_dtype() {
        let cfg = cfg(BlockKind::Dense, Paths::Both, 64);
        let err = Model::new_as(cfg, 0, WeightDtype::F16).unwrap_err();
        assert!(matches!(err, ModelError::UnsupportedWeights(WeightDtype::F16)), "{err}");
        assert!(err.to_string().contains("f16 weights are not supported"), "{err}");
    }
}
