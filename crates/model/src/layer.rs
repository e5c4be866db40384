//! One transformer layer's parameters: their ids ([`LayerIds`], names as in
//! [`Config::param_specs`]), their tensors for one forward ([`LayerWeights`]) and how that
//! forward runs the layer's FFN ([`Ffn`]), chosen once when the layer is loaded: the packed
//! weights of the fused kernels ([`crate::fused`]), or the composed autograd path with the
//! reason why ([`ComposedReason`], shown by `vffn inspect` as `ffn_path`).

use std::fmt;

use vffn_autograd::{ParamId, ParamStore, Tape, Tensor};

use crate::config::Config;
use crate::fused::{pack_layer, ComposedReason, FfnTensors, FusedFfn};
use crate::weights::{HalfStore, Weight};

/// One transformer layer's parameters by role (names as in [`Config::param_specs`]), the norm
/// weights as `N` and the matrices as `M`, with `F` beside them: [`LayerIds`] holds the
/// handles, [`LayerWeights`] the tensors of one forward and its FFN path.
#[derive(Clone, Debug)]
pub(crate) struct LayerParams<N, M, F> {
    pub attn_norm: N,
    pub att_proj: M,
    pub attn_out: M,
    pub ff_norm: N,
    pub ff_proj: M,
    pub ff_out: M,
    /// moe and versatile.
    pub expert_gate: Option<M>,
    /// versatile only.
    pub depth_predictor: Option<M>,
    /// moe only: (ff_proj [2s,d], ff_out [d,s]) of each expert.
    pub experts: Vec<(M, M)>,
    /// How a forward runs the FFN (nothing for the handles).
    pub ffn: F,
}

/// Parameter handles of one transformer layer.
pub(crate) type LayerIds = LayerParams<ParamId, ParamId, ()>;

/// How one forward runs a layer's FFN.
pub(crate) enum Ffn {
    /// Many small autograd ops (same maths), for the reason given.
    Composed(ComposedReason),
    /// The FFN weights packed for the fused kernels.
    Packed(FusedFfn),
}

/// The FFN path of a batched forward, as `vffn inspect` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FfnPath {
    Packed,
    Composed(ComposedReason),
}

/// `packed` or `composed: <reason>`.
impl fmt::Display for FfnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FfnPath::Packed => f.write_str("packed"),
            FfnPath::Composed(reason) => write!(f, "composed: {reason}"),
        }
    }
}

/// The tensors of one layer for one forward (leaves of `tape`, sharing the parameters' storage;
/// a bf16 model's matrices as its bf16 bits, see [`crate::weights`]), and how that forward runs
/// the FFN.
pub(crate) type LayerWeights = LayerParams<Tensor, Weight, Ffn>;

impl LayerIds {
    /// Brings the layer's parameters onto `tape` (no copy), the FFN composed.
    #[cfg(test)]
    pub fn load(&self, tape: &mut Tape, store: &ParamStore) -> LayerWeights {
        self.load_with(tape, store, &HalfStore::default(), ComposedReason::Forced)
    }

    /// [`LayerIds::load`] with the matrices `half` holds in bf16 taken from there (no copy),
    /// the FFN composed for `reason`.
    pub fn load_with(
        &self,
        tape: &mut Tape,
        store: &ParamStore,
        half: &HalfStore,
        reason: ComposedReason,
    ) -> LayerWeights {
        let mut p = |id: ParamId| half.weight(tape, store, id);
        let norm = |w: Weight| Tensor::clone(&w); // norms are never held in bf16
        LayerWeights {
            attn_norm: norm(p(self.attn_norm)),
            att_proj: p(self.att_proj),
            attn_out: p(self.attn_out),
            ff_norm: norm(p(self.ff_norm)),
            ff_proj: p(self.ff_proj),
            ff_out: p(self.ff_out),
            expert_gate: self.expert_gate.map(&mut p),
            depth_predictor: self.depth_predictor.map(&mut p),
            experts: self.experts.iter().map(|&(a, b)| (p(a), p(b))).collect(),
            ffn: Ffn::Composed(reason),
        }
    }

    /// The layer for a batched forward, its FFN path chosen here once: composed when forced
    /// (tests) or when a bf16 model's products run on bf16 arithmetic (faster composed, see
    /// `HalfStore::packs_ffn`), else packed if the kernels accept the widths.
    pub fn load_for_forward(
        &self,
        tape: &mut Tape,
        cfg: &Config,
        store: &ParamStore,
        half: &HalfStore,
        force_composed: bool,
    ) -> LayerWeights {
        let reason = if force_composed {
            ComposedReason::Forced
        } else if !half.packs_ffn() {
            ComposedReason::Bf16Arithmetic
        } else {
            let mut w = self.load_with(tape, store, half, ComposedReason::Forced);
            w.pack(tape, cfg);
            return w;
        };
        self.load_with(tape, store, half, reason)
    }
}

impl LayerWeights {
    /// The FFN matrices the fused kernels pack.
    pub fn ffn_tensors(&self) -> FfnTensors<'_> {
        FfnTensors { ff_proj: &self.ff_proj, ff_out: &self.ff_out, experts: &self.experts }
    }

    /// The packed FFN, if this forward runs the fused kernels.
    pub fn packed(&self) -> Option<&FusedFfn> {
        match &self.ffn {
            Ffn::Packed(f) => Some(f),
            Ffn::Composed(_) => None,
        }
    }

    /// The path this forward takes.
    pub fn ffn_path(&self) -> FfnPath {
        match &self.ffn {
            Ffn::Packed(_) => FfnPath::Packed,
            Ffn::Composed(reason) => FfnPath::Composed(reason.clone()),
        }
    }

    /// Packs the FFN for the fused kernels (bf16 matrices widened into f32 copies that live
    /// with the layer), or keeps it composed naming the width the kernels refuse.
    pub fn pack(&mut self, tape: &Tape, cfg: &Config) {
        self.ff_proj = self.ff_proj.widened();
        self.ff_out = self.ff_out.widened();
        for (proj, out) in &mut self.experts {
            (*proj, *out) = (proj.widened(), out.widened());
        }
        self.ffn = match pack_layer(tape, cfg, self.ffn_tensors()) {
            Ok(packed) => Ffn::Packed(packed),
            Err(reason) => Ffn::Composed(reason),
        };
    }
}
