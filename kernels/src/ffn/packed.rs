//! The FFN's weights packed once for every product ([`PackedFfn`]) and where expert e's panels
//! lie in them ([`Experts`]).

use std::fmt;

use rayon::prelude::*;

use super::{shape_err, FfnError};
use crate::gemm::MatRef;
use crate::microkernel::{selected_kernel, KernelKind, NR};
use crate::pack::PackedB;
use crate::pool::Buffer;

/// One FFN's weights packed for every product of the forward (and optionally the backward).
pub struct PackedFfn {
    pub(super) d: usize,
    pub(super) h: usize,
    pub(super) experts: usize,
    pub(super) kind: KernelKind,
    /// W1(perm)ᵀ [d, 2h]: expert e = columns e·2s..(e+1)·2s = [value_e | gate_e].
    pub(super) w1t: PackedB,
    /// W2ᵀ [h, d]: expert e = depths e·s..(e+1)·s.
    pub(super) w2t: PackedB,
    /// Backward: W1(perm) [2h, d] and W2 [d, h].
    pub(super) bwd: Option<(PackedB, PackedB)>,
}

impl fmt::Debug for PackedFfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PackedFfn {{ d: {}, h: {}, experts: {}, backward: {} }}",
            self.d,
            self.h,
            self.experts,
            self.bwd.is_some()
        )
    }
}

/// Model row of W1 for perm row `r` (perm = [v_0; g_0; v_1; g_1; …]).
#[inline]
pub(super) fn perm_to_model_row(r: usize, h: usize, s: usize) -> usize {
    let (e, j) = (r / (2 * s), r % (2 * s));
    if j < s {
        e * s + j
    } else {
        h + e * s + (j - s)
    }
}

impl PackedFfn {
    /// Packs W1 = ff_proj [2h, d] and W2 = ff_out [d, h] for `experts` virtual experts (1 for a
    /// plain FFN or one real moe expert); `backward` also packs the operands of the backward.
    pub fn pack(
        w1: &[f32],
        w2: &[f32],
        d: usize,
        h: usize,
        experts: usize,
        backward: bool,
    ) -> Result<PackedFfn, FfnError> {
        let kind = selected_kernel()?;
        if experts == 0 || h == 0 || !h.is_multiple_of(experts) || !(h / experts).is_multiple_of(NR)
        {
            return Err(FfnError::ExpertWidth { hidden: h, experts });
        }
        if d == 0 || w1.len() != 2 * h * d || w2.len() != d * h {
            return shape_err(format!(
                "W1 has {} floats (want 2h·d = {}), W2 {} (want d·h = {})",
                w1.len(),
                2 * h * d,
                w2.len(),
                d * h
            ));
        }
        let s = h / experts;
        // Rows of W1 in perm order (one copy of the weights, so every expert is one range).
        let mut w1p = Buffer::uninit(2 * h * d);
        w1p[..2 * h * d].par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            let src = perm_to_model_row(r, h, s);
            row.copy_from_slice(&w1[src * d..(src + 1) * d]);
        });
        let w1p_view = MatRef::new(&w1p[..2 * h * d], 2 * h, d);
        let w1t = PackedB::pack(w1p_view.t());
        let w2_view = MatRef::new(w2, d, h);
        let w2t = PackedB::pack(w2_view.t());
        let bwd = backward.then(|| (PackedB::pack(w1p_view), PackedB::pack(w2_view)));
        Ok(PackedFfn { d, h, experts, kind, w1t, w2t, bwd })
    }

    /// Model width d.
    pub fn d(&self) -> usize {
        self.d
    }
    /// Hidden width h.
    pub fn hidden(&self) -> usize {
        self.h
    }
    /// Number of virtual experts E.
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// Expert width s = h/E.
    pub fn expert_width(&self) -> usize {
        self.h / self.experts
    }
    /// Whether the backward operands are packed.
    pub fn has_backward(&self) -> bool {
        self.bwd.is_some()
    }

    pub(super) fn bwd(&self) -> Result<&(PackedB, PackedB), FfnError> {
        self.bwd.as_ref().ok_or_else(|| {
            FfnError::Shape("PackedFfn was packed without backward operands".to_string())
        })
    }
}

/// Where expert e's weights live: sub-panels of one shared packing (virtual experts) or one
/// packing per expert (moe real experts).
#[derive(Clone, Copy)]
pub(super) enum Experts<'a> {
    Virtual(&'a PackedFfn),
    Real(&'a [PackedFfn]),
}

/// Expert e's panels: (packing, first W1ᵀ column = first perm row, first W2ᵀ depth).
pub(super) struct Panels<'a> {
    pub(super) w: &'a PackedFfn,
    pub(super) col: usize,
    pub(super) k0: usize,
}

impl<'a> Experts<'a> {
    pub(super) fn count(&self) -> usize {
        match self {
            Experts::Virtual(w) => w.experts,
            Experts::Real(ws) => ws.len(),
        }
    }
    pub(super) fn first(&self) -> &'a PackedFfn {
        match self {
            Experts::Virtual(w) => w,
            Experts::Real(ws) => &ws[0],
        }
    }
    pub(super) fn width(&self) -> usize {
        match self {
            Experts::Virtual(w) => w.expert_width(),
            Experts::Real(ws) => ws[0].h,
        }
    }
    pub(super) fn panels(&self, e: usize) -> Panels<'a> {
        match self {
            Experts::Virtual(w) => {
                let s = w.expert_width();
                Panels { w, col: e * 2 * s, k0: e * s }
            }
            Experts::Real(ws) => Panels { w: &ws[e], col: 0, k0: 0 },
        }
    }
    pub(super) fn check(&self, backward: bool) -> Result<(usize, usize, KernelKind), FfnError> {
        if let Experts::Real(ws) = self {
            let Some(w0) = ws.first() else {
                return shape_err("moe needs at least one expert".to_string());
            };
            if ws.iter().any(|w| w.d != w0.d || w.h != w0.h || w.experts != 1) {
                return shape_err("moe experts must share d and h, one expert each".to_string());
            }
        }
        let w = self.first();
        if backward {
            match self {
                Experts::Virtual(w) => {
                    w.bwd()?;
                }
                Experts::Real(ws) => {
                    for w in ws.iter() {
                        w.bwd()?;
                    }
                }
            }
        }
        Ok((w.d, self.width(), w.kind))
    }
}

/// Adds a perm-layout W1 gradient [2h,d] into a model-layout one.
pub(super) fn unpermute_add(dw1p: &[f32], dw1: &mut [f32], h: usize, s: usize, d: usize) {
    dw1.par_chunks_mut(d).enumerate().for_each(|(row, dst)| {
        // model row -> perm row
        let (part, j) = (row / h, row % h);
        let (e, jj) = (j / s, j % s);
        let pr = e * 2 * s + part * s + jj;
        for (o, &v) in dst.iter_mut().zip(&dw1p[pr * d..(pr + 1) * d]) {
            *o += v;
        }
    });
}
