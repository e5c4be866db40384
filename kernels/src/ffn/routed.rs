//! Width (virtual experts) and moe (real experts) paths: the grouped gather-GEMM forward and,
//! beside it, its backward.

use rayon::prelude::*;

use super::group::{check_routing, scatter_weighted, Grouping};
use super::packed::{unpermute_add, Experts, PackedFfn};
use super::{shape_err, sized, FfnError, FfnGrads};
use crate::fused::{swiglu_backward, swiglu_rows};
use crate::gemm::{compute, gemm_packed_with, ASource, BSource, MatMut, MatRef, OutView};
use crate::pack::RowSource;
use crate::pool::Buffer;

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
            let (mut u, mut a, mut y) =
                (Buffer::uninit(n * 2 * s), Buffer::uninit(n * s), Buffer::uninit(n * d));
            grouped_forward(ex, z, t, &g, &mut u[..n * 2 * s], &mut a[..n * s], &mut y[..n * d]);
            scatter_weighted(&y[..n * d], &g, Some(gates), k, d, out);
        }
    }
    Ok(())
}

/// One public routed forward: its experts (`Virtual` slices of one packed FFN or `Real` packed
/// experts) and, with a `saved` argument, the training variant. All four share one signature.
macro_rules! routed_entry {
    ($(#[$doc:meta])* $name:ident($w:ident: $wt:ty) => $variant:ident $(, $saved:ident)?) => {
        $(#[$doc])*
        pub fn $name(
            $w: $wt,
            z: &[f32],
            experts: &[u32],
            gates: &[f32],
            k: usize,
            out: &mut [f32],
            $($saved: &mut WidthSaved)?
        ) -> Result<(), FfnError> {
            let saved = routed_entry!(@saved $($saved)?);
            routed_forward(Experts::$variant($w), z, experts, gates, k, out, saved)
        }
    };
    (@saved) => { None };
    (@saved $s:ident) => { Some($s) };
}

routed_entry! {
    /// Width path (inference): out[t] += Σ_j gates[t,j]·FFN_{experts[t,j]}(z[t]).
    // z [T,d], experts [T,k], gates [T,k] -> out [T,d] (accumulated; holds x)
    width_forward(w: &PackedFfn) => Virtual
}
routed_entry! {
    /// Width path (training): as [`width_forward`], keeping what the backward needs in `saved`.
    width_forward_train(w: &PackedFfn) => Virtual, saved
}
routed_entry! {
    /// MoE (real experts, `ws[e]` packed with `experts = 1`, hidden = s): same as [`width_forward`].
    moe_forward(ws: &[PackedFfn]) => Real
}
routed_entry! {
    /// MoE training forward (see [`width_forward_train`]).
    moe_forward_train(ws: &[PackedFfn]) => Real, saved
}

/// Gradient targets of a routed backward (accumulated into).
enum RoutedGrads<'a> {
    /// Shared W1 [2h,d] (model layout) and W2 [d,h].
    Shared(FfnGrads<'a>),
    /// Per expert (dW1_e [2s,d], dW2_e [d,s]).
    PerExpert(&'a mut [FfnGrads<'a>]),
}

/// The inputs and outputs every routed backward shares (see [`width_backward`]).
struct BackwardArgs<'a> {
    saved: &'a WidthSaved,
    z: &'a [f32],
    gates: &'a [f32],
    k: usize,
    d_out: &'a [f32],
    dz: &'a mut [f32],
    dgates: &'a mut [f32],
}

fn routed_backward(
    ex: Experts<'_>,
    args: BackwardArgs<'_>,
    grads: RoutedGrads<'_>,
) -> Result<(), FfnError> {
    let BackwardArgs { saved, z, gates, k, d_out, dz, dgates } = args;
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
    let mut dz_rows = Buffer::uninit(n * d);
    let mut dw1p = match grads {
        RoutedGrads::Shared(_) => {
            let mut v = Buffer::uninit(2 * h_shared * d);
            v[..2 * h_shared * d].fill(0.0);
            Some(v)
        }
        RoutedGrads::PerExpert(_) => None,
    };
    let mut grads = grads;
    let (mut dy_e, mut z_e, mut da_e, mut du_e) = (
        Buffer::uninit(n * d),
        Buffer::uninit(n * d),
        Buffer::uninit(n * s),
        Buffer::uninit(n * 2 * s),
    );
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
        let w2_cols = w2_packed.part(p.k0..p.k0 + s, 0..d);
        gemm_packed_with(kind, 1.0, dy_view, None, w2_cols, 0.0, MatMut::new(da, m, s), true)?;
        let a_e = MatRef::new(&saved.a[rows.start * s..rows.end * s], m, s);
        let u_e = &saved.u[rows.start * 2 * s..rows.end * 2 * s];
        let du = &mut du_e[..m * 2 * s];
        swiglu_backward(u_e, da, du, s, false);
        let du_view = MatRef::new(du, m, 2 * s);
        // This expert's block of dW2 [d,s] and dW1 [2s,d] (permuted), wherever they live.
        let (dw2_e, dw1_e) = match &mut grads {
            RoutedGrads::Shared(shared) => {
                let dw1p = dw1p.as_mut().expect("shared perm gradient");
                (
                    MatMut::strided(&mut shared.dw2[p.k0..], d, s, h_shared, 1),
                    MatMut::new(&mut dw1p[p.col * d..(p.col + 2 * s) * d], 2 * s, d),
                )
            }
            RoutedGrads::PerExpert(list) => {
                let FfnGrads { dw1, dw2 } = &mut list[e];
                (MatMut::new(dw2, d, s), MatMut::new(dw1, 2 * s, d))
            }
        };
        // dW2_e += dyᵀ · a, dW1_e += duᵀ · z
        let gemm = |a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>| {
            crate::gemm::gemm_with(kind, crate::GemmPath::Auto, 1.0, a, b, 1.0, c)
        };
        gemm(dy_view.t(), a_e, dw2_e)?;
        gemm(du_view.t(), MatRef::new(ze, m, d), dw1_e)?;
        // dz rows [m,d] = du · W1(perm)[col..col+2s, :]
        let dst = MatMut::new(&mut dz_rows[rows.start * d..rows.end * d], m, d);
        let w1_rows = w1p_packed.part(0..d, p.col..p.col + 2 * s);
        gemm_packed_with(kind, 1.0, du_view, None, w1_rows, 0.0, dst, true)?;
    }
    scatter_weighted(&dz_rows[..n * d], g, None, k, d, dz);
    if let (Some(v), RoutedGrads::Shared(shared)) = (dw1p.take(), &mut grads) {
        unpermute_add(&v[..2 * h_shared * d], shared.dw1, h_shared, s, d);
    }
    Ok(())
}

/// One public routed backward: the arguments all share, then its own gradient targets, which
/// `$check` validates and turns into the experts and [`RoutedGrads`].
macro_rules! routed_backward_entry {
    ($(#[$doc:meta])* $name:ident$(<$lt:lifetime>)?($w:ident: $wt:ty, $($g:ident: $gt:ty),+)
        $check:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name$(<$lt>)?(
            $w: $wt,
            saved: &WidthSaved,
            z: &[f32],
            gates: &[f32],
            k: usize,
            d_out: &[f32],
            dz: &mut [f32],
            dgates: &mut [f32],
            $($g: $gt),+
        ) -> Result<(), FfnError> {
            let (ex, grads) = $check;
            routed_backward(ex, BackwardArgs { saved, z, gates, k, d_out, dz, dgates }, grads)
        }
    };
}

routed_backward_entry! {
    /// Width path backward. Given d_out [T,d] (gradient of the width output), accumulates dz
    /// [T,d] (width input z), dW1 [2h,d], dW2 [d,h]; overwrites dgates [T,k]. `w` packed with
    /// backward.
    width_backward(w: &PackedFfn, grads: FfnGrads<'_>) {
        grads.check(w)?;
        (Experts::Virtual(w), RoutedGrads::Shared(grads))
    }
}

routed_backward_entry! {
    /// MoE backward: as [`width_backward`], with per-expert gradients `grads[e]` (dW1_e [2s,d],
    /// dW2_e [d,s], accumulated).
    moe_backward<'a>(ws: &[PackedFfn], grads: &'a mut [FfnGrads<'a>]) {
        if grads.len() != ws.len() {
            return shape_err(format!("{} gradient pairs for {} experts", grads.len(), ws.len()));
        }
        for (w, g) in ws.iter().zip(grads.iter()) {
            g.check(w)?;
        }
        (Experts::Real(ws), RoutedGrads::PerExpert(grads))
    }
}
