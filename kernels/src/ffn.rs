//! SwiGLU FFN kernels for VersatileFFN: shared packed weights, a grouped gather-GEMM for virtual
//! (width) experts and real (moe) experts, depth recursion with compaction, and the training
//! forward/backward of both paths. Slices in, slices out.
//!
//! Model layout: W1 = ff_proj [2h, d] (rows 0..h value, h..2h gate), W2 = ff_out [d, h];
//! FFN(z) = (z·W1[0..h]ᵀ · silu(z·W1[h..2h]ᵀ))·W2ᵀ. Virtual expert e (width s = h/E) is value rows
//! e·s.., gate rows h+e·s.. of W1 and columns e·s.. of W2.
//!
//! Packing ([`PackedFfn`]): W1's rows are packed once in *expert-interleaved* order
//! [v_0; g_0; v_1; g_1; …] (`perm` layout), so expert e is the one contiguous column range
//! e·2s..(e+1)·2s of the packed W1ᵀ and the depth-loop FFN is all of it; W2ᵀ [h, d] is packed so
//! expert e is the depth range e·s..(e+1)·s. The backward packs W1(perm) [2h, d] (expert e = depth
//! range) and W2 [d, h] (expert e = columns e·s..). No expert and no loop repacks anything.
//! Needs s % 16 == 0 (packed column ranges start on 16-wide panels).
//!
//! Determinism: tiles are cut from the routing alone (never the thread count), every tile or
//! GEMM block writes disjoint outputs, and cross-expert sums (out, dz) are done per token in slot
//! order from a slot-indexed buffer, so results are bitwise identical for any thread count.

use std::cell::RefCell;
use std::fmt;

use rayon::prelude::*;

use crate::fused::{
    rms_norm_backward, rms_norm_rows, swiglu_backward, swiglu_forward, swiglu_rows,
};
use crate::gemm::{
    compute, gemm_packed_par, gemm_packed_with, ASource, BSource, GemmError, MatMut, MatRef,
    OutView,
};
use crate::microkernel::{selected_kernel, KernelKind, NR};
use crate::pack::{PackedB, RowSource};

/// Largest row block of one (expert, row-block) tile: packed A (144 × d) stays in L2.
const TILE_ROWS: usize = 144;
/// Tokens per task in the per-token reductions.
const REDUCE_TOKENS: usize = 64;

/// Errors of the FFN kernels (bad shapes or routings from the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FfnError {
    /// Slice lengths or dimensions do not fit together.
    Shape(String),
    /// An expert id ≥ the expert count, or a depth outside 1..=D.
    Routing(String),
    /// Expert width s = h/E must be a positive multiple of 16.
    ExpertWidth { hidden: usize, experts: usize },
    /// The GEMM refused (kernel unavailable).
    Gemm(GemmError),
}

impl fmt::Display for FfnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FfnError::Shape(s) => write!(f, "ffn shape error: {s}"),
            FfnError::Routing(s) => write!(f, "ffn routing error: {s}"),
            FfnError::ExpertWidth { hidden, experts } => write!(
                f,
                "ffn: hidden {hidden} / experts {experts} must be a positive multiple of 16"
            ),
            FfnError::Gemm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FfnError {}

impl From<GemmError> for FfnError {
    fn from(e: GemmError) -> Self {
        FfnError::Gemm(e)
    }
}

impl From<crate::microkernel::KernelError> for FfnError {
    fn from(e: crate::microkernel::KernelError) -> Self {
        FfnError::Gemm(GemmError::Kernel(e))
    }
}

fn shape_err<T>(s: String) -> Result<T, FfnError> {
    Err(FfnError::Shape(s))
}

// ---------------------------------------------------------------------------------------------
// Reusable per-thread scratch (large buffers would otherwise be page-faulted in on every call).

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A scratch vector of at least `len` floats (contents unspecified); return it with `give`.
fn take(len: usize) -> Vec<f32> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

fn give(v: Vec<f32>) {
    POOL.with(|p| p.borrow_mut().push(v));
}

/// Resizes a saved buffer to exactly `len` (keeping its allocation).
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v.truncate(len);
    v
}

// ---------------------------------------------------------------------------------------------
// Packed weights.

/// One FFN's weights packed for every product of the forward (and optionally the backward).
pub struct PackedFfn {
    d: usize,
    h: usize,
    experts: usize,
    kind: KernelKind,
    /// W1(perm)ᵀ [d, 2h]: expert e = columns e·2s..(e+1)·2s = [value_e | gate_e].
    w1t: PackedB,
    /// W2ᵀ [h, d]: expert e = depths e·s..(e+1)·s.
    w2t: PackedB,
    /// Backward: W1(perm) [2h, d] and W2 [d, h].
    bwd: Option<(PackedB, PackedB)>,
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
fn perm_to_model_row(r: usize, h: usize, s: usize) -> usize {
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
        Self::pack_with(kind, w1, w2, d, h, experts, backward)
    }

    /// [`PackedFfn::pack`] with an explicit micro-kernel.
    pub fn pack_with(
        kind: KernelKind,
        w1: &[f32],
        w2: &[f32],
        d: usize,
        h: usize,
        experts: usize,
        backward: bool,
    ) -> Result<PackedFfn, FfnError> {
        kind.check()?;
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
        let mut w1p = take(2 * h * d);
        w1p[..2 * h * d].par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            let src = perm_to_model_row(r, h, s);
            row.copy_from_slice(&w1[src * d..(src + 1) * d]);
        });
        let w1p_view = MatRef::new(&w1p[..2 * h * d], 2 * h, d);
        let w1t = PackedB::pack(w1p_view.t());
        let w2_view = MatRef::new(w2, d, h);
        let w2t = PackedB::pack(w2_view.t());
        let bwd = backward.then(|| (PackedB::pack(w1p_view), PackedB::pack(w2_view)));
        give(w1p);
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

    fn bwd(&self) -> Result<&(PackedB, PackedB), FfnError> {
        self.bwd.as_ref().ok_or_else(|| {
            FfnError::Shape("PackedFfn was packed without backward operands".to_string())
        })
    }
}

/// Where expert e's weights live: sub-panels of one shared packing (virtual experts) or one
/// packing per expert (moe real experts).
#[derive(Clone, Copy)]
enum Experts<'a> {
    Virtual(&'a PackedFfn),
    Real(&'a [PackedFfn]),
}

/// Expert e's panels: (packing, first W1ᵀ column = first perm row, first W2ᵀ depth).
struct Panels<'a> {
    w: &'a PackedFfn,
    col: usize,
    k0: usize,
}

impl<'a> Experts<'a> {
    fn count(&self) -> usize {
        match self {
            Experts::Virtual(w) => w.experts,
            Experts::Real(ws) => ws.len(),
        }
    }
    fn first(&self) -> &'a PackedFfn {
        match self {
            Experts::Virtual(w) => w,
            Experts::Real(ws) => &ws[0],
        }
    }
    fn width(&self) -> usize {
        match self {
            Experts::Virtual(w) => w.expert_width(),
            Experts::Real(ws) => ws[0].h,
        }
    }
    fn panels(&self, e: usize) -> Panels<'a> {
        match self {
            Experts::Virtual(w) => {
                let s = w.expert_width();
                Panels { w, col: e * 2 * s, k0: e * s }
            }
            Experts::Real(ws) => Panels { w: &ws[e], col: 0, k0: 0 },
        }
    }
    fn check(&self, backward: bool) -> Result<(usize, usize, KernelKind), FfnError> {
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

// ---------------------------------------------------------------------------------------------
// Routing → grouped rows.

/// Token slots grouped by expert (stable: ascending token within an expert).
#[derive(Clone, Debug, Default)]
pub struct Grouping {
    /// Grouped rows of expert e: offsets[e]..offsets[e+1]. [E+1]
    offsets: Vec<usize>,
    /// Token of each grouped row. [T·k]
    tokens: Vec<usize>,
    /// Slot t·k+j of each grouped row. [T·k]
    slot_of: Vec<usize>,
    /// Grouped row of each slot. [T·k]
    row_of: Vec<usize>,
}

impl Grouping {
    // experts [T·k] ids < E -> grouping
    fn build(experts: &[u32], k: usize, count: usize) -> Result<Grouping, FfnError> {
        if let Some(&bad) = experts.iter().find(|&&e| e as usize >= count) {
            return Err(FfnError::Routing(format!("expert id {bad} ≥ {count} experts")));
        }
        let mut offsets = vec![0usize; count + 1];
        for &e in experts {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..count {
            offsets[e + 1] += offsets[e];
        }
        let n = experts.len();
        let mut next = offsets.clone();
        let (mut tokens, mut slot_of, mut row_of) = (vec![0; n], vec![0; n], vec![0; n]);
        for (slot, &e) in experts.iter().enumerate() {
            let r = next[e as usize];
            next[e as usize] += 1;
            tokens[r] = slot / k;
            slot_of[r] = slot;
            row_of[slot] = r;
        }
        Ok(Grouping { offsets, tokens, slot_of, row_of })
    }

    /// (expert, grouped rows) tiles of at most TILE_ROWS rows, cut from the routing alone.
    fn tiles(&self, mr: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut tiles = Vec::new();
        for e in 0..self.offsets.len() - 1 {
            let (r0, r1) = (self.offsets[e], self.offsets[e + 1]);
            let m = r1 - r0;
            if m == 0 {
                continue;
            }
            let blocks = m.div_ceil(TILE_ROWS);
            let step = m.div_ceil(blocks).div_ceil(mr) * mr;
            let mut r = r0;
            while r < r1 {
                tiles.push((e, r..r1.min(r + step)));
                r += step;
            }
        }
        tiles
    }
}

fn check_routing(
    t: usize,
    k: usize,
    experts: &[u32],
    gates: &[f32],
    count: usize,
) -> Result<(), FfnError> {
    if k == 0 || k > count {
        return Err(FfnError::Routing(format!("top-k {k} with {count} experts")));
    }
    if experts.len() != t * k || gates.len() != t * k {
        return shape_err(format!(
            "{} expert ids and {} gates for {t} tokens × k = {k}",
            experts.len(),
            gates.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Width / moe forward: grouped gather-GEMM.

/// What the width (or moe) training forward keeps for its backward (reuse it across steps:
/// buffers keep their allocation). Memory: T·k·(3s + d) floats.
#[derive(Clone, Debug, Default)]
pub struct WidthSaved {
    grouping: Grouping,
    /// Pre-activation [value | gate] per grouped row. [T·k, 2s]
    u: Vec<f32>,
    /// SwiGLU output per grouped row. [T·k, s]
    a: Vec<f32>,
    /// Expert output FFN_e(z_t) (unweighted) per grouped row. [T·k, d]
    y: Vec<f32>,
}

/// Runs every (expert, row-block) tile in one parallel region: gather z rows while packing, ×
/// the expert's [value|gate] panels, SwiGLU, × the expert's W2ᵀ depth range.
// z [T,d] -> u [T·k,2s], a [T·k,s], y [T·k,d] (grouped rows)
fn grouped_forward(
    ex: Experts<'_>,
    z: &[f32],
    t: usize,
    g: &Grouping,
    u: &mut [f32],
    a: &mut [f32],
    y: &mut [f32],
) {
    let (w0, s) = (ex.first(), ex.width());
    let (d, kind) = (w0.d, w0.kind);
    let z_view = MatRef::new(z, t, d);
    // Hand each tile its own disjoint rows of the three grouped buffers.
    let mut work = Vec::new();
    let (mut u_rest, mut a_rest, mut y_rest) = (u, a, y);
    for (e, rows) in g.tiles(kind.mr()) {
        let m = rows.len();
        let (ut, ur) = u_rest.split_at_mut(m * 2 * s);
        let (at, ar) = a_rest.split_at_mut(m * s);
        let (yt, yr) = y_rest.split_at_mut(m * d);
        (u_rest, a_rest, y_rest) = (ur, ar, yr);
        work.push((e, rows, ut, at, yt));
    }
    work.into_par_iter().for_each(|(e, rows, ut, at, yt)| {
        let p = ex.panels(e);
        let m = rows.len();
        let toks = &g.tokens[rows];
        let a_src = ASource { mat: z_view, pack: Some(RowSource::Index(toks)), p_origin: 0 };
        let b_src = BSource::from_packed(&p.w.w1t, p.col);
        let u_out = OutView::from_mat(MatMut::new(ut, m, 2 * s));
        compute(kind, 1.0, 0.0, a_src, b_src, 0..d, u_out, false);
        swiglu_rows(ut, at, s);
        let a_view = MatRef::new(at, m, s);
        let a_src =
            ASource { mat: a_view, pack: Some(RowSource::Range { start: 0 }), p_origin: p.k0 };
        let b_src = BSource::from_packed(&p.w.w2t, 0);
        let y_out = OutView::from_mat(MatMut::new(yt, m, d));
        compute(kind, 1.0, 0.0, a_src, b_src, p.k0..p.k0 + s, y_out, false);
    });
}

/// out[t] += Σ_j gates[t·k+j]·y[row_of[t·k+j]], in slot order (deterministic).
// y [T·k,d] grouped -> out [T,d]
fn scatter_weighted(
    y: &[f32],
    g: &Grouping,
    gates: Option<&[f32]>,
    k: usize,
    d: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(REDUCE_TOKENS * d).enumerate().for_each(|(c, chunk)| {
        for (i, orow) in chunk.chunks_exact_mut(d).enumerate() {
            let t = c * REDUCE_TOKENS + i;
            for j in 0..k {
                let slot = t * k + j;
                let r = g.row_of[slot];
                let yr = &y[r * d..(r + 1) * d];
                let w = gates.map_or(1.0, |gs| gs[slot]);
                for (o, &v) in orow.iter_mut().zip(yr) {
                    *o += w * v;
                }
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn routed_forward(
    ex: Experts<'_>,
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
    saved: Option<&mut WidthSaved>,
) -> Result<(), FfnError> {
    let (d, s, _) = ex.check(false)?;
    if !z.len().is_multiple_of(d) || out.len() != z.len() {
        return shape_err(format!("z has {} floats, out {} (rows of d = {d})", z.len(), out.len()));
    }
    let t = z.len() / d;
    check_routing(t, k, experts, gates, ex.count())?;
    let g = Grouping::build(experts, k, ex.count())?;
    let n = t * k;
    match saved {
        Some(sv) => {
            sv.grouping = g;
            let (u, a, y) =
                (sized(&mut sv.u, n * 2 * s), sized(&mut sv.a, n * s), sized(&mut sv.y, n * d));
            grouped_forward(ex, z, t, &sv.grouping, u, a, y);
            scatter_weighted(y, &sv.grouping, Some(gates), k, d, out);
        }
        None => {
            let (mut u, mut a, mut y) = (take(n * 2 * s), take(n * s), take(n * d));
            grouped_forward(ex, z, t, &g, &mut u[..n * 2 * s], &mut a[..n * s], &mut y[..n * d]);
            scatter_weighted(&y[..n * d], &g, Some(gates), k, d, out);
            give(u);
            give(a);
            give(y);
        }
    }
    Ok(())
}

/// Width path (inference): out[t] += Σ_j gates[t,j]·FFN_{experts[t,j]}(z[t]).
// z [T,d], experts [T,k], gates [T,k] -> out [T,d] (accumulated; holds x)
pub fn width_forward(
    w: &PackedFfn,
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
) -> Result<(), FfnError> {
    routed_forward(Experts::Virtual(w), z, experts, gates, k, out, None)
}

/// Width path (training): as [`width_forward`], keeping what the backward needs in `saved`.
pub fn width_forward_train(
    w: &PackedFfn,
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
    saved: &mut WidthSaved,
) -> Result<(), FfnError> {
    routed_forward(Experts::Virtual(w), z, experts, gates, k, out, Some(saved))
}

/// MoE (real experts, `ws[e]` packed with `experts = 1`, hidden = s): same as [`width_forward`].
pub fn moe_forward(
    ws: &[PackedFfn],
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
) -> Result<(), FfnError> {
    routed_forward(Experts::Real(ws), z, experts, gates, k, out, None)
}

/// MoE training forward (see [`width_forward_train`]).
pub fn moe_forward_train(
    ws: &[PackedFfn],
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
    saved: &mut WidthSaved,
) -> Result<(), FfnError> {
    routed_forward(Experts::Real(ws), z, experts, gates, k, out, Some(saved))
}

// ---------------------------------------------------------------------------------------------
// Width / moe backward.

/// Gradient targets of a routed backward (accumulated into).
enum RoutedGrads<'a> {
    /// Shared W1 [2h,d] (model layout) and W2 [d,h].
    Shared { dw1: &'a mut [f32], dw2: &'a mut [f32] },
    /// Per expert (dW1_e [2s,d], dW2_e [d,s]).
    PerExpert(&'a mut [(&'a mut [f32], &'a mut [f32])]),
}

/// Adds a perm-layout W1 gradient [2h,d] into a model-layout one.
fn unpermute_add(dw1p: &[f32], dw1: &mut [f32], h: usize, s: usize, d: usize) {
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

#[allow(clippy::too_many_arguments)]
fn routed_backward(
    ex: Experts<'_>,
    saved: &WidthSaved,
    z: &[f32],
    gates: &[f32],
    k: usize,
    d_out: &[f32],
    dz: &mut [f32],
    dgates: &mut [f32],
    grads: RoutedGrads<'_>,
) -> Result<(), FfnError> {
    let (d, s, kind) = ex.check(true)?;
    if k == 0 {
        return Err(FfnError::Routing("top-k must be at least 1".to_string()));
    }
    let t = z.len() / d.max(1);
    let n = t * k;
    let g = &saved.grouping;
    if z.len() != t * d || d_out.len() != z.len() || dz.len() != z.len() {
        return shape_err("z, d_out and dz must all be [T,d]".to_string());
    }
    if gates.len() != n || dgates.len() != n || g.tokens.len() != n || saved.y.len() != n * d {
        return shape_err("gates/dgates [T,k] must match the saved forward".to_string());
    }
    if g.offsets.len() != ex.count() + 1 {
        return shape_err("saved forward used another expert count".to_string());
    }
    let count = ex.count();
    let h_shared = ex.first().h;
    // dgates[slot] = d_out[t]·y_slot (the weight's gradient), per token in slot order.
    dgates.par_chunks_mut(k).enumerate().for_each(|(tok, dg)| {
        let dr = &d_out[tok * d..(tok + 1) * d];
        for (j, out) in dg.iter_mut().enumerate() {
            let r = g.row_of[tok * k + j];
            *out = dr.iter().zip(&saved.y[r * d..(r + 1) * d]).map(|(a, b)| a * b).sum();
        }
    });
    let mut dz_rows = take(n * d);
    let mut dw1p = match grads {
        RoutedGrads::Shared { .. } => {
            let mut v = take(2 * h_shared * d);
            v[..2 * h_shared * d].fill(0.0);
            Some(v)
        }
        RoutedGrads::PerExpert(_) => None,
    };
    let mut grads = grads;
    let (mut dy_e, mut z_e, mut da_e, mut du_e) =
        (take(n * d), take(n * d), take(n * s), take(n * 2 * s));
    for e in 0..count {
        let rows = g.offsets[e]..g.offsets[e + 1];
        let m = rows.len();
        if m == 0 {
            continue;
        }
        let p = ex.panels(e);
        let (w1p_packed, w2_packed) = p.w.bwd()?;
        let (dy, ze) = (&mut dy_e[..m * d], &mut z_e[..m * d]);
        // Gather: dy rows = g·d_out[t], z rows = z[t].
        dy.par_chunks_mut(d).zip(ze.par_chunks_mut(d)).enumerate().for_each(|(i, (dyr, zr))| {
            let r = rows.start + i;
            let tok = g.tokens[r];
            let gw = gates[g.slot_of[r]];
            for (o, &v) in dyr.iter_mut().zip(&d_out[tok * d..(tok + 1) * d]) {
                *o = gw * v;
            }
            zr.copy_from_slice(&z[tok * d..(tok + 1) * d]);
        });
        let dy_view = MatRef::new(dy, m, d);
        // da [m,s] = dy · W2[:, k0..k0+s]
        let da = &mut da_e[..m * s];
        let cols = p.k0..p.k0 + s;
        gemm_packed_with(
            kind,
            1.0,
            dy_view,
            None,
            w2_packed,
            cols,
            0..d,
            0.0,
            MatMut::new(da, m, s),
        )?;
        // dW2[:, expert cols] += dyᵀ · a
        let a_e = MatRef::new(&saved.a[rows.start * s..rows.end * s], m, s);
        let u_e = &saved.u[rows.start * 2 * s..rows.end * 2 * s];
        let du = &mut du_e[..m * 2 * s];
        swiglu_backward(u_e, da, du, s, false);
        let du_view = MatRef::new(du, m, 2 * s);
        let ze_view = MatRef::new(ze, m, d);
        match &mut grads {
            RoutedGrads::Shared { dw2, .. } => {
                let dst = MatMut::strided(&mut dw2[p.k0..], d, s, h_shared, 1);
                crate::gemm::gemm_with(
                    kind,
                    crate::GemmPath::Auto,
                    1.0,
                    dy_view.t(),
                    a_e,
                    1.0,
                    dst,
                )?;
                let dw1p = dw1p.as_mut().expect("shared perm gradient");
                let dst = MatMut::new(&mut dw1p[p.col * d..(p.col + 2 * s) * d], 2 * s, d);
                crate::gemm::gemm_with(
                    kind,
                    crate::GemmPath::Auto,
                    1.0,
                    du_view.t(),
                    ze_view,
                    1.0,
                    dst,
                )?;
            }
            RoutedGrads::PerExpert(list) => {
                let (dw1_e, dw2_e) = &mut list[e];
                let dst = MatMut::new(dw2_e, d, s);
                crate::gemm::gemm_with(
                    kind,
                    crate::GemmPath::Auto,
                    1.0,
                    dy_view.t(),
                    a_e,
                    1.0,
                    dst,
                )?;
                let dst = MatMut::new(dw1_e, 2 * s, d);
                crate::gemm::gemm_with(
                    kind,
                    crate::GemmPath::Auto,
                    1.0,
                    du_view.t(),
                    ze_view,
                    1.0,
                    dst,
                )?;
            }
        }
        // dz rows [m,d] = du · W1(perm)[col..col+2s, :]
        let dst = MatMut::new(&mut dz_rows[rows.start * d..rows.end * d], m, d);
        gemm_packed_with(
            kind,
            1.0,
            du_view,
            None,
            w1p_packed,
            0..d,
            p.col..p.col + 2 * s,
            0.0,
            dst,
        )?;
    }
    scatter_weighted(&dz_rows[..n * d], g, None, k, d, dz);
    if let (Some(v), RoutedGrads::Shared { dw1, .. }) = (dw1p.take(), &mut grads) {
        unpermute_add(&v[..2 * h_shared * d], dw1, h_shared, s, d);
        give(v);
    }
    for v in [dz_rows, dy_e, z_e, da_e, du_e] {
        give(v);
    }
    Ok(())
}

/// Width path backward. Given d_out [T,d] (gradient of the width output), accumulates dz [T,d]
/// (width input z), dW1 [2h,d], dW2 [d,h]; overwrites dgates [T,k]. `w` packed with backward.
#[allow(clippy::too_many_arguments)]
pub fn width_backward(
    w: &PackedFfn,
    saved: &WidthSaved,
    z: &[f32],
    gates: &[f32],
    k: usize,
    d_out: &[f32],
    dz: &mut [f32],
    dgates: &mut [f32],
    dw1: &mut [f32],
    dw2: &mut [f32],
) -> Result<(), FfnError> {
    if dw1.len() != 2 * w.h * w.d || dw2.len() != w.d * w.h {
        return shape_err("dW1 must be [2h,d] and dW2 [d,h]".to_string());
    }
    let grads = RoutedGrads::Shared { dw1, dw2 };
    routed_backward(Experts::Virtual(w), saved, z, gates, k, d_out, dz, dgates, grads)
}

/// MoE backward: as [`width_backward`], with per-expert gradients `grads[e] = (dW1_e [2s,d],
/// dW2_e [d,s])` (accumulated).
#[allow(clippy::too_many_arguments)]
pub fn moe_backward<'a>(
    ws: &[PackedFfn],
    saved: &WidthSaved,
    z: &[f32],
    gates: &[f32],
    k: usize,
    d_out: &[f32],
    dz: &mut [f32],
    dgates: &mut [f32],
    grads: &'a mut [(&'a mut [f32], &'a mut [f32])],
) -> Result<(), FfnError> {
    if grads.len() != ws.len() {
        return shape_err(format!("{} gradient pairs for {} experts", grads.len(), ws.len()));
    }
    for (w, (g1, g2)) in ws.iter().zip(grads.iter()) {
        if g1.len() != 2 * w.h * w.d || g2.len() != w.d * w.h {
            return shape_err("moe expert gradients must be [2s,d] and [d,s]".to_string());
        }
    }
    let grads = RoutedGrads::PerExpert(grads);
    routed_backward(Experts::Real(ws), saved, z, gates, k, d_out, dz, dgates, grads)
}

// ---------------------------------------------------------------------------------------------
// Dense FFN (one loop of the depth path) forward and backward on packed weights.

/// u [n,2h] = z·W1(perm)ᵀ; a [n,h] = SwiGLU per expert segment; out = beta·out + a·W2ᵀ.
// z [n,d] -> u [n,2h], a [n,h], out [n,d]
fn dense_core(w: &PackedFfn, z: &[f32], u: &mut [f32], a: &mut [f32], beta: f32, out: &mut [f32]) {
    dense_core_par(w, z, u, a, beta, out, true);
}

/// [`dense_core`] on the calling thread alone when `parallel` is false (same result).
fn dense_core_par(
    w: &PackedFfn,
    z: &[f32],
    u: &mut [f32],
    a: &mut [f32],
    beta: f32,
    out: &mut [f32],
    parallel: bool,
) {
    let (d, h, kind) = (w.d, w.h, w.kind);
    let n = z.len() / d;
    if n == 0 {
        return;
    }
    let s = w.expert_width();
    let zv = MatRef::new(z, n, d);
    let uv = MatMut::new(u, n, 2 * h);
    gemm_packed_par(kind, 1.0, zv, None, &w.w1t, 0..2 * h, 0..d, 0.0, uv, parallel)
        .expect("shapes checked by the caller");
    // Perm layout: each row is E segments [v_e | g_e], i.e. [n·E, 2s] SwiGLU rows.
    if parallel {
        swiglu_forward(u, a, s);
    } else {
        swiglu_rows(u, a, s);
    }
    let av = MatRef::new(a, n, h);
    let ov = MatMut::new(out, n, d);
    gemm_packed_par(kind, 1.0, av, None, &w.w2t, 0..d, 0..h, beta, ov, parallel)
        .expect("shapes checked by the caller");
}

/// Rows per tile of the tiled depth recursion (a multiple of the micro-kernel height): the
/// tile's pre-activations u [rows, 2h] take about 512 KiB. Every loop of a tile streams the
/// layer's packed weights (3·h·d floats, 768 KiB at the tiny preset: more than a core's L2)
/// through the cache once, so bigger tiles read them less often; measured on the tiny
/// versatile inference forward (2 threads, 5 alternating rounds), 128-row tiles ran 1.08× the
/// 60-row ones of before (u in L2) and 96–512 rows all within noise of each other; training
/// steps and the small preset moved less than 3 %.
fn depth_tile_rows(h: usize, mr: usize) -> usize {
    let rows = (1usize << 17) / (2 * h).max(1);
    (rows / mr * mr).clamp(mr, 32 * mr)
}

/// One FFN backward: dz [n,d] = overwritten; dW1(perm) [2h,d] and dW2 [d,h] accumulated.
/// `a_saved` is the forward's SwiGLU output [n,h] when kept (else it is recomputed from u).
#[allow(clippy::too_many_arguments)]
fn dense_backward_core(
    w: &PackedFfn,
    z: &[f32],
    u: &[f32],
    a_saved: Option<&[f32]>,
    dy: &[f32],
    dz: &mut [f32],
    dw1p: &mut [f32],
    dw2: &mut [f32],
) -> Result<(), FfnError> {
    let (d, h, kind) = (w.d, w.h, w.kind);
    let s = w.expert_width();
    let n = z.len() / d;
    if n == 0 {
        return Ok(());
    }
    let (w1p, w2) = w.bwd()?;
    let (mut a_buf, mut da_buf, mut du_buf) = (take(0), take(n * h), take(n * 2 * h));
    let a: &[f32] = match a_saved {
        Some(a) => a,
        None => {
            let a = sized(&mut a_buf, n * h);
            swiglu_forward(u, a, s);
            a
        }
    };
    let (da, du) = (&mut da_buf[..n * h], &mut du_buf[..n * 2 * h]);
    let dyv = MatRef::new(dy, n, d);
    gemm_packed_with(kind, 1.0, dyv, None, w2, 0..h, 0..d, 0.0, MatMut::new(da, n, h))?;
    let gemm = |a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>| {
        crate::gemm::gemm_with(kind, crate::GemmPath::Auto, 1.0, a, b, 1.0, c)
    };
    gemm(dyv.t(), MatRef::new(a, n, h), MatMut::new(dw2, d, h))?;
    swiglu_backward(u, da, du, s, false);
    let duv = MatRef::new(du, n, 2 * h);
    gemm(duv.t(), MatRef::new(z, n, d), MatMut::new(dw1p, 2 * h, d))?;
    gemm_packed_with(kind, 1.0, duv, None, w1p, 0..d, 0..2 * h, 0.0, MatMut::new(dz, n, d))?;
    for v in [a_buf, da_buf, du_buf] {
        give(v);
    }
    Ok(())
}

fn check_dense(w: &PackedFfn, z: &[f32], out: &[f32]) -> Result<usize, FfnError> {
    if !z.len().is_multiple_of(w.d) || out.len() != z.len() {
        return shape_err(format!(
            "z {} and out {} floats, rows of d = {}",
            z.len(),
            out.len(),
            w.d
        ));
    }
    Ok(z.len() / w.d)
}

/// Plain FFN (inference): out [n,d] += FFN(z).
pub fn dense_forward(w: &PackedFfn, z: &[f32], out: &mut [f32]) -> Result<(), FfnError> {
    let n = check_dense(w, z, out)?;
    let (mut u, mut a) = (take(n * 2 * w.h), take(n * w.h));
    dense_core(w, z, &mut u[..n * 2 * w.h], &mut a[..n * w.h], 1.0, out);
    give(u);
    give(a);
    Ok(())
}

/// Plain FFN (training): out += FFN(z); saves u [n,2h] (perm layout) for [`dense_backward`].
pub fn dense_forward_train(
    w: &PackedFfn,
    z: &[f32],
    out: &mut [f32],
    u_saved: &mut Vec<f32>,
) -> Result<(), FfnError> {
    let n = check_dense(w, z, out)?;
    let u = sized(u_saved, n * 2 * w.h);
    let mut a = take(n * w.h);
    dense_core(w, z, u, &mut a[..n * w.h], 1.0, out);
    give(a);
    Ok(())
}

/// Plain FFN backward: dz [n,d] += ∂/∂z, dW1 [2h,d] += , dW2 [d,h] += (given dy = ∂L/∂out).
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    w: &PackedFfn,
    z: &[f32],
    u_saved: &[f32],
    dy: &[f32],
    dz: &mut [f32],
    dw1: &mut [f32],
    dw2: &mut [f32],
) -> Result<(), FfnError> {
    let n = check_dense(w, z, dy)?;
    let (d, h) = (w.d, w.h);
    if u_saved.len() != n * 2 * h
        || dz.len() != n * d
        || dw1.len() != 2 * h * d
        || dw2.len() != d * h
    {
        return shape_err("dense_backward: u [n,2h], dz [n,d], dW1 [2h,d], dW2 [d,h]".to_string());
    }
    let (mut dzt, mut dw1p) = (take(n * d), take(2 * h * d));
    dw1p[..2 * h * d].fill(0.0);
    dense_backward_core(w, z, u_saved, None, dy, &mut dzt[..n * d], &mut dw1p[..2 * h * d], dw2)?;
    for (o, &v) in dz.iter_mut().zip(&dzt[..n * d]) {
        *o += v;
    }
    unpermute_add(&dw1p[..2 * h * d], dw1, h, w.expert_width(), d);
    give(dzt);
    give(dw1p);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Depth path: x_i = x_{i−1} + FFN(rmsnorm(x_{i−1}, w_norm)).

fn check_depth(
    w: &PackedFfn,
    w_norm: &[f32],
    x: &[f32],
    max_depth: usize,
) -> Result<usize, FfnError> {
    if w_norm.len() != w.d || !x.len().is_multiple_of(w.d) {
        return shape_err(format!(
            "w_norm {} (want d = {}), x {} floats",
            w_norm.len(),
            w.d,
            x.len()
        ));
    }
    if max_depth == 0 || max_depth > u8::MAX as usize {
        return Err(FfnError::Routing(format!("max depth {max_depth} outside 1..=255")));
    }
    Ok(x.len() / w.d)
}

/// Depth path (inference) with compaction: token t runs exactly `depth[t]` ∈ 1..=D loops. Tokens
/// are ordered by depth (deepest first) in one compact buffer, so loop i runs on the prefix of
/// tokens with depth ≥ i; a token's state is written to `out` after its last loop.
// x [T,d], depth [T] -> out [T,d] (overwritten with x_{depth[t]})
#[allow(clippy::too_many_arguments)]
pub fn depth_forward(
    w: &PackedFfn,
    w_norm: &[f32],
    eps: f32,
    x: &[f32],
    depth: &[u8],
    max_depth: usize,
    out: &mut [f32],
) -> Result<(), FfnError> {
    let t = check_depth(w, w_norm, x, max_depth)?;
    let (d, h) = (w.d, w.h);
    if depth.len() != t || out.len() != x.len() {
        return shape_err(format!(
            "depth has {} entries, out {} floats, for {t} tokens",
            depth.len(),
            out.len()
        ));
    }
    if let Some(&bad) = depth.iter().find(|&&c| c == 0 || c as usize > max_depth) {
        return Err(FfnError::Routing(format!("depth {bad} outside 1..={max_depth}")));
    }
    // Counting sort, deepest first (stable): active tokens of loop i are a prefix.
    let mut start = vec![0usize; max_depth + 2];
    for &c in depth {
        start[max_depth - c as usize + 1] += 1;
    }
    for i in 0..=max_depth {
        start[i + 1] += start[i];
    }
    let mut order = vec![0usize; t];
    let mut next = start.clone();
    for (tok, &c) in depth.iter().enumerate() {
        let b = max_depth - c as usize;
        order[next[b]] = tok;
        next[b] += 1;
    }
    // active[i] = tokens with depth ≥ i+1
    let active: Vec<usize> = (0..max_depth).map(|i| start[max_depth - i]).collect();
    // Tiles of consecutive rows of the compact order run all their loops on one thread each:
    // one parallel region instead of one per GEMM / norm / SwiGLU and loop, and a tile's
    // intermediates stay in cache. Every row's arithmetic is the same as untiled (rows are
    // independent; the GEMM's per-element order does not depend on the row count), so the
    // result does not depend on the tiling or the thread count.
    let tile = depth_tile_rows(h, w.kind.mr());
    let mut cur = take(t * d);
    cur[..t * d].par_chunks_mut(tile * d).with_max_len(1).enumerate().for_each(|(ti, cur_t)| {
        let (r0, rows) = (ti * tile, cur_t.len() / d);
        for (row, &tok) in cur_t.chunks_exact_mut(d).zip(&order[r0..r0 + rows]) {
            row.copy_from_slice(&x[tok * d..(tok + 1) * d]);
        }
        let (mut z, mut rstd, mut u, mut a) =
            (take(rows * d), take(rows), take(rows * 2 * h), take(rows * h));
        for &act in &active {
            // Rows of this tile still running (a prefix: the order is deepest first).
            let n = act.saturating_sub(r0).min(rows);
            if n == 0 {
                break;
            }
            let (xs, zs) = (&mut cur_t[..n * d], &mut z[..n * d]);
            rms_norm_rows(xs, w_norm, zs, &mut rstd[..n], d, eps);
            let (us, as_) = (&mut u[..n * 2 * h], &mut a[..n * h]);
            dense_core_par(w, zs, us, as_, 1.0, xs, false);
        }
        for v in [z, rstd, u, a] {
            give(v);
        }
    });
    // A row's state after its last loop stays in place: out[tok] = cur[position of tok].
    let mut pos = vec![0usize; t];
    for (r, &tok) in order.iter().enumerate() {
        pos[tok] = r;
    }
    out.par_chunks_mut(d).zip(pos.par_iter()).for_each(|(row, &r)| {
        row.copy_from_slice(&cur[r * d..(r + 1) * d]);
    });
    give(cur);
    Ok(())
}

/// What the depth training forward keeps: per loop ℓ the normalized input z_ℓ [T,d], its rstd
/// [T], the pre-activation u_ℓ [T,2h] and the SwiGLU output a_ℓ [T,h]: D·T·(d + 1 + 3h) floats
/// (x_ℓ themselves are the caller's `states`). Keeping a_ℓ costs what the composed autograd path
/// keeps anyway and saves recomputing SwiGLU (an exp per element) in the backward.
#[derive(Clone, Debug, Default)]
pub struct DepthSaved {
    loops: usize,
    tokens: usize,
    z: Vec<f32>,
    rstd: Vec<f32>,
    u: Vec<f32>,
    a: Vec<f32>,
}

/// Depth path (training): all D loops for every token; states [D,T,d] gets x_1..x_D.
// x [T,d] -> states [D,T,d]
pub fn depth_forward_train(
    w: &PackedFfn,
    w_norm: &[f32],
    eps: f32,
    x: &[f32],
    max_depth: usize,
    states: &mut [f32],
    saved: &mut DepthSaved,
) -> Result<(), FfnError> {
    let t = check_depth(w, w_norm, x, max_depth)?;
    let (d, h) = (w.d, w.h);
    if states.len() != max_depth * t * d {
        return shape_err(format!("states has {} floats, want D·T·d", states.len()));
    }
    saved.loops = max_depth;
    saved.tokens = t;
    let z_all = sized(&mut saved.z, max_depth * t * d);
    let rstd_all = sized(&mut saved.rstd, max_depth * t);
    let u_all = sized(&mut saved.u, max_depth * t * 2 * h);
    let a_all = sized(&mut saved.a, max_depth * t * h);
    // As in `depth_forward`: tiles of rows run every loop on one thread (same result as
    // untiled). Each tile gets its rows of every loop's slice of the five [D, T, ·] buffers.
    if t == 0 {
        return Ok(());
    }
    let tile = depth_tile_rows(h, w.kind.mr());
    let tiles = t.div_ceil(tile);
    let split = |buf, width| split_levels(buf, t * width, tile * width, tiles);
    let parts = split(states, d)
        .into_iter()
        .zip(split(z_all, d))
        .zip(split(rstd_all, 1))
        .zip(split(u_all, 2 * h))
        .zip(split(a_all, h))
        .enumerate()
        .collect::<Vec<_>>();
    parts.into_par_iter().with_max_len(1).for_each(|(ti, ((((st, z), rstd), u), a))| {
        let r0 = ti * tile;
        let rows = st[0].len() / d;
        let mut levels = st.into_iter().zip(z).zip(rstd).zip(u).zip(a);
        let mut prev: Option<&mut [f32]> = None;
        for _ in 0..max_depth {
            let ((((state, z), rstd), u), a) = levels.next().expect("one slice per loop");
            let input: &[f32] = match &prev {
                Some(p) => p,
                None => &x[r0 * d..(r0 + rows) * d],
            };
            rms_norm_rows(input, w_norm, z, rstd, d, eps);
            state.copy_from_slice(input);
            dense_core_par(w, z, u, a, 1.0, state, false);
            prev = Some(state);
        }
    });
    Ok(())
}

/// Cuts each `level_len` level of `buf` into parts of `part_len` and groups them by part index:
/// result[i] holds part i of every level, in level order.
fn split_levels(
    buf: &mut [f32],
    level_len: usize,
    part_len: usize,
    parts: usize,
) -> Vec<Vec<&mut [f32]>> {
    let mut per_part: Vec<Vec<&mut [f32]>> = (0..parts).map(|_| Vec::new()).collect();
    for level in buf.chunks_exact_mut(level_len) {
        for (i, part) in level.chunks_mut(part_len).enumerate() {
            per_part[i].push(part);
        }
    }
    per_part
}

/// Depth path backward. `d_states` [D,T,d] holds ∂L/∂x_ℓ from outside the recursion (e.g.
/// p_ℓ·∂L/∂out_d). Accumulates dx [T,d], d_w_norm [d], dW1 [2h,d], dW2 [d,h].
#[allow(clippy::too_many_arguments)]
pub fn depth_backward(
    w: &PackedFfn,
    w_norm: &[f32],
    saved: &DepthSaved,
    x: &[f32],
    states: &[f32],
    d_states: &[f32],
    dx: &mut [f32],
    d_w_norm: &mut [f32],
    dw1: &mut [f32],
    dw2: &mut [f32],
) -> Result<(), FfnError> {
    let (loops, t) = (saved.loops, saved.tokens);
    check_depth(w, w_norm, x, loops.max(1))?;
    let (d, h) = (w.d, w.h);
    if x.len() != t * d || dx.len() != t * d || states.len() != loops * t * d {
        return shape_err("depth_backward: x, dx [T,d] and states [D,T,d] must match".to_string());
    }
    if d_states.len() != states.len() || d_w_norm.len() != d {
        return shape_err("depth_backward: d_states [D,T,d], d_w_norm [d]".to_string());
    }
    if dw1.len() != 2 * h * d || dw2.len() != d * h {
        return shape_err("dW1 must be [2h,d] and dW2 [d,h]".to_string());
    }
    if loops == 0 || t == 0 {
        return Ok(());
    }
    let (mut dcur, mut dzt, mut dw1p) = (take(t * d), take(t * d), take(2 * h * d));
    let (dcur_s, dz, dw1p_s) = (&mut dcur[..t * d], &mut dzt[..t * d], &mut dw1p[..2 * h * d]);
    dw1p_s.fill(0.0);
    dcur_s.copy_from_slice(&d_states[(loops - 1) * t * d..]);
    for l in (0..loops).rev() {
        let input = if l == 0 { x } else { &states[(l - 1) * t * d..l * t * d] };
        let z = &saved.z[l * t * d..(l + 1) * t * d];
        let u = &saved.u[l * t * 2 * h..(l + 1) * t * 2 * h];
        let rstd = &saved.rstd[l * t..(l + 1) * t];
        let a = &saved.a[l * t * h..(l + 1) * t * h];
        dense_backward_core(w, z, u, Some(a), dcur_s, dz, dw1p_s, dw2)?;
        // Residual: ∂x_{ℓ−1} = ∂x_ℓ + norm backward of ∂z, plus the outside gradient of x_{ℓ−1}.
        rms_norm_backward(input, w_norm, rstd, dz, Some((dcur_s, true)), Some((d_w_norm, true)));
        if l > 0 {
            let outside = &d_states[(l - 1) * t * d..l * t * d];
            dcur_s.par_chunks_mut(4096).zip(outside.par_chunks(4096)).for_each(|(o, s)| {
                o.iter_mut().zip(s).for_each(|(o, &v)| *o += v);
            });
        }
    }
    for (o, &v) in dx.iter_mut().zip(dcur_s.iter()) {
        *o += v;
    }
    unpermute_add(dw1p_s, dw1, h, w.expert_width(), d);
    for v in [dcur, dzt, dw1p] {
        give(v);
    }
    Ok(())
}

pub mod naive;
