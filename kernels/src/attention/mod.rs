//! Causal multi-head attention, flash-style: forward saves only the output and the per-row
//! log-sum-exp; backward recomputes the probabilities block by block (FlashAttention-2).
//!
//! Work is split over (batch, head) with rayon; each head is computed by one task in a fixed
//! order, so results do not depend on the thread count. Inside a head, keys and queries are
//! processed in `BLOCK`-sized blocks; every product is a small register-tiled "broadcast A ×
//! vector B" kernel written once over the SIMD layer's [`Lanes`] ([`crate::simd`]) and
//! instantiated twice: with AVX2+FMA intrinsics (chosen at run time) and with a portable
//! `[f32; 8]` fallback.

mod block;
mod decode;

use rayon::prelude::*;

use crate::pool::Buffer;

#[cfg(target_arch = "x86_64")]
use crate::simd::avx;
use crate::simd::{Lanes, Portable, W};
use block::{block_product, visible, Causal, Operands};

pub use decode::attention_decode;

/// Shapes of one attention call. `d = heads * head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Model width `heads * head_dim`.
    pub fn d(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Query/key block size (rows of a score tile). Multiple of 8 (the vector width).
const BLOCK: usize = 64;

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// `exp(x)` lane-wise (Cephes-style: 2^n · p(r), |r| ≤ ln2/2, ~1 ulp). Inputs below −87 give
/// exactly 0 (masked scores are −∞), inputs above 88 are clamped.
#[inline(always)]
pub(super) fn exp_lanes<L: Lanes>(l: L, x: L::V) -> L::V {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let lo = l.splat(-87.0);
    let xc = l.min(l.max(x, lo), l.splat(88.0));
    let n = l.round(l.mul(xc, l.splat(LOG2E)));
    let r = l.mul_add(n, l.splat(-LN2_HI), xc);
    let r = l.mul_add(n, l.splat(-LN2_LO), r);
    let mut y = l.splat(1.987_569_1e-4);
    y = l.mul_add(y, r, l.splat(1.398_2e-3));
    y = l.mul_add(y, r, l.splat(8.333_452e-3));
    y = l.mul_add(y, r, l.splat(4.166_579_6e-2));
    y = l.mul_add(y, r, l.splat(1.666_666_5e-1));
    y = l.mul_add(y, r, l.splat(0.5));
    y = l.mul_add(y, l.mul(r, r), l.add(r, l.splat(1.0)));
    l.keep_ge(l.mul(y, l.pow2i(n)), x, lo)
}

// ---------------------------------------------------------------------------------------------
// One head.
// ---------------------------------------------------------------------------------------------

/// One head's operands, copied into the layouts the block products want
/// (`hdp` = head_dim padded to 8, `seq_pad` = seq padded to 8; padding is zero).
struct HeadData {
    seq: usize,
    head_dim: usize,
    hdp: usize,
    seq_pad: usize,
    /// q · scale [seq, hdp]
    q_scaled: Buffer,
    /// kᵀ [head_dim, seq_pad]
    k_t: Buffer,
    /// v [seq, hdp] (forward only)
    v: Buffer,
    /// k [seq, hdp] (backward only)
    k: Buffer,
    /// vᵀ [head_dim, seq_pad] (backward only)
    v_t: Buffer,
    /// dO [seq, hdp] (backward only)
    d_out: Buffer,
    /// D_i = Σ_p dO_ip·O_ip [seq] (backward only)
    delta: Buffer,
}

impl HeadData {
    /// S = (q·scale)·Kᵀ for query rows i0..i0+br and key columns j0..j0+jw (the causally visible
    /// ones), rows of `BLOCK` in `s`.
    #[inline(always)]
    fn scores<L: Lanes>(&self, l: L, i0: usize, j0: usize, br: usize, jw: usize, s: &mut [f32]) {
        let (q, k_t) = (&self.q_scaled[i0 * self.hdp..], &self.k_t[j0..]);
        let qk = Operands::new(q, (self.hdp, 1), k_t, self.seq_pad);
        block_product(l, Causal::Cols, i0 - j0, br, self.head_dim, jw, &qk, s, BLOCK, false);
    }
}

/// Splits batch `b` into per-head operands in one pass over its contiguous rows (reading each
/// head's strided columns separately stalls on memory). `grads = Some((out, d_out))` also
/// gathers what the backward needs.
// qkv [batch*seq, 3d], out/d_out [batch*seq, d] -> heads × HeadData
fn gather_batch(
    shape: AttnShape,
    qkv: &[f32],
    b: usize,
    grads: Option<(&[f32], &[f32])>,
) -> Vec<HeadData> {
    let AttnShape { seq, heads, head_dim: hd, .. } = shape;
    let d = shape.d();
    let (hdp, seq_pad) = (round_up(hd, W), round_up(seq, W));
    let scale = 1.0 / (hd as f32).sqrt();
    let backward = grads.is_some();
    let sized = |yes: bool, n: usize| Buffer::zeros(if yes { n } else { 0 });
    let mut data: Vec<HeadData> = (0..heads)
        .map(|_| HeadData {
            seq,
            head_dim: hd,
            hdp,
            seq_pad,
            q_scaled: Buffer::zeros(seq * hdp),
            k_t: Buffer::zeros(hd * seq_pad),
            v: sized(!backward, seq * hdp),
            k: sized(backward, seq * hdp),
            v_t: sized(backward, hd * seq_pad),
            d_out: sized(backward, seq * hdp),
            delta: sized(backward, seq),
        })
        .collect();
    for t0 in (0..seq).step_by(W) {
        let rows = t0..(t0 + W).min(seq);
        for t in rows.clone() {
            let row = &qkv[(b * seq + t) * 3 * d..(b * seq + t + 1) * 3 * d];
            for (h, hdata) in data.iter_mut().enumerate() {
                let q = &row[h * hd..(h + 1) * hd];
                for (dst, &x) in hdata.q_scaled[t * hdp..t * hdp + hd].iter_mut().zip(q) {
                    *dst = x * scale;
                }
                let (k, v) = (
                    &row[d + h * hd..d + (h + 1) * hd],
                    &row[2 * d + h * hd..2 * d + (h + 1) * hd],
                );
                if backward {
                    hdata.k[t * hdp..t * hdp + hd].copy_from_slice(k);
                } else {
                    hdata.v[t * hdp..t * hdp + hd].copy_from_slice(v);
                }
            }
            if let Some((out, d_out)) = grads {
                let o_row = &out[(b * seq + t) * d..(b * seq + t + 1) * d];
                let do_row = &d_out[(b * seq + t) * d..(b * seq + t + 1) * d];
                for (h, hdata) in data.iter_mut().enumerate() {
                    let cols = h * hd..(h + 1) * hd;
                    hdata.d_out[t * hdp..t * hdp + hd].copy_from_slice(&do_row[cols.clone()]);
                    hdata.delta[t] =
                        o_row[cols.clone()].iter().zip(&do_row[cols]).map(|(o, g)| o * g).sum();
                }
            }
        }
        // Transposes eight rows at a time: contiguous 8-float runs instead of single floats
        // scattered a row of kᵀ apart (which thrash a few L1 sets).
        for (h, hdata) in data.iter_mut().enumerate() {
            for p in 0..hd {
                for t in rows.clone() {
                    let base = (b * seq + t) * 3 * d + h * hd + p;
                    hdata.k_t[p * seq_pad + t] = qkv[base + d];
                    if backward {
                        hdata.v_t[p * seq_pad + t] = qkv[base + 2 * d];
                    }
                }
            }
        }
    }
    data
}

/// Sets `s[w..round_up(w, 8)]` to −∞ so vector max/exp over whole vectors ignore them.
#[inline(always)]
fn mask_tail(s: &mut [f32], w: usize) {
    for x in &mut s[w..round_up(w, W)] {
        *x = f32::NEG_INFINITY;
    }
}

/// Where a head writes its outputs: row t of output part i (forward: 0 = O; backward: 0 = dQ,
/// 1 = dK, 2 = dV) is `buf[offs[i] + t·rs ..][..hd]` — the head's own buffers, or its columns
/// of the batch's output rows written in place.
struct HeadOut<'a> {
    buf: &'a mut [f32],
    rs: usize,
    offs: [usize; 3],
}

impl HeadOut<'_> {
    #[inline(always)]
    fn row(&mut self, part: usize, t: usize, hd: usize) -> &mut [f32] {
        let start = self.offs[part] + t * self.rs;
        &mut self.buf[start..start + hd]
    }
}

/// Forward of one head: writes O [seq, hd] (part 0 of `o`) and `lse` [seq].
// q_scaled [T, hdp], k_t [hd, Tpad], v [T, hdp] -> o [T, hd], lse [T]
#[inline(always)]
fn forward_head<L: Lanes>(l: L, inp: &HeadData, o: &mut HeadOut<'_>, lse: &mut [f32]) {
    let (seq, hd, hdp) = (inp.seq, inp.head_dim, inp.hdp);
    let mut s = Buffer::zeros(BLOCK * BLOCK);
    let mut o_blk = Buffer::zeros(BLOCK * hdp);
    let mut row_max = [0.0f32; BLOCK];
    let mut row_sum = [0.0f32; BLOCK];
    for i0 in (0..seq).step_by(BLOCK) {
        let br = BLOCK.min(seq - i0);
        row_max[..br].fill(f32::NEG_INFINITY);
        row_sum[..br].fill(0.0);
        o_blk.fill(0.0);
        for j0 in (0..i0 + br).step_by(BLOCK) {
            let jw = BLOCK.min(seq - j0);
            let diag = i0 - j0;
            // S = (q·scale) Kᵀ over the visible columns.
            inp.scores(l, i0, j0, br, jw, &mut s);
            // Online softmax: rescale the running sum and output by exp(m_old − m_new).
            for r in 0..br {
                let w = visible(diag, r, jw);
                let s_row = &mut s[r * BLOCK..(r + 1) * BLOCK];
                mask_tail(s_row, w);
                let nv = w.div_ceil(W);
                let mut vmax = l.splat(f32::NEG_INFINITY);
                for vi in 0..nv {
                    // SAFETY: vi*8+8 ≤ round_up(w, 8) ≤ BLOCK = s_row.len().
                    vmax = l.max(vmax, unsafe { l.load(s_row.as_ptr().add(vi * W)) });
                }
                let new_max = row_max[r].max(l.reduce_max(vmax));
                let correction = (row_max[r] - new_max).exp();
                let m = l.splat(new_max);
                let mut vsum = l.splat(0.0);
                for vi in 0..nv {
                    // SAFETY: as above.
                    unsafe {
                        let p = s_row.as_mut_ptr().add(vi * W);
                        let e = exp_lanes(l, l.sub(l.load(p), m));
                        vsum = l.add(vsum, e);
                        l.store(p, e);
                    }
                }
                s_row[nv * W..jw.max(nv * W)].fill(0.0);
                row_sum[r] = row_sum[r] * correction + l.reduce_sum(vsum);
                row_max[r] = new_max;
                if correction != 1.0 {
                    for x in &mut o_blk[r * hdp..(r + 1) * hdp] {
                        *x *= correction;
                    }
                }
            }
            // O += P V.
            let pv = Operands::new(&s, (BLOCK, 1), &inp.v[j0 * hdp..], hdp);
            block_product(l, Causal::KeysBelow, diag, br, jw, hd, &pv, &mut o_blk, hdp, true);
        }
        for r in 0..br {
            let inv = 1.0 / row_sum[r];
            let src = &o_blk[r * hdp..r * hdp + hd];
            for (dst, &x) in o.row(0, i0 + r, hd).iter_mut().zip(src) {
                *dst = x * inv;
            }
            lse[i0 + r] = row_max[r] + row_sum[r].ln();
        }
    }
}

/// Backward of one head (FlashAttention-2 order: key blocks outer, query blocks inner).
/// Writes dQ, dK, dV [T, hd] (parts 0, 1, 2 of `out`).
#[inline(always)]
fn backward_head<L: Lanes>(l: L, inp: &HeadData, lse: &[f32], out: &mut HeadOut<'_>) {
    let (seq, hd, hdp, seq_pad) = (inp.seq, inp.head_dim, inp.hdp, inp.seq_pad);
    let g = inp;
    let mut p = Buffer::zeros(BLOCK * BLOCK);
    let mut ds = Buffer::zeros(BLOCK * BLOCK);
    let mut dq_acc = Buffer::zeros(seq * hdp);
    let mut dk_blk = Buffer::zeros(BLOCK * hdp);
    let mut dv_blk = Buffer::zeros(BLOCK * hdp);
    for j0 in (0..seq).step_by(BLOCK) {
        let jw = BLOCK.min(seq - j0);
        dk_blk.fill(0.0);
        dv_blk.fill(0.0);
        for i0 in (j0..seq).step_by(BLOCK) {
            let br = BLOCK.min(seq - i0);
            let diag = i0 - j0;
            // P = exp(S − lse), recomputed.
            inp.scores(l, i0, j0, br, jw, &mut p);
            // dP = dO Vᵀ.
            let dov = Operands::new(&g.d_out[i0 * hdp..], (hdp, 1), &g.v_t[j0..], seq_pad);
            block_product(l, Causal::Cols, diag, br, hd, jw, &dov, &mut ds, BLOCK, false);
            // dS = P ∘ (dP − D_i); both zero outside the causal region.
            for r in 0..br {
                let w = visible(diag, r, jw);
                let nv = w.div_ceil(W);
                let p_row = &mut p[r * BLOCK..(r + 1) * BLOCK];
                let ds_row = &mut ds[r * BLOCK..(r + 1) * BLOCK];
                mask_tail(p_row, w);
                let lse_i = l.splat(lse[i0 + r]);
                let delta_i = l.splat(g.delta[i0 + r]);
                for vi in 0..nv {
                    // SAFETY: vi*8+8 ≤ round_up(w, 8) ≤ BLOCK = row length.
                    unsafe {
                        let pp = p_row.as_mut_ptr().add(vi * W);
                        let dp = ds_row.as_mut_ptr().add(vi * W);
                        let prob = exp_lanes(l, l.sub(l.load(pp), lse_i));
                        l.store(pp, prob);
                        l.store(dp, l.mul(prob, l.sub(l.load(dp), delta_i)));
                    }
                }
                p_row[nv * W..jw.max(nv * W)].fill(0.0);
                ds_row[nv * W..jw.max(nv * W)].fill(0.0);
            }
            // dV_J += Pᵀ dO_I.
            let pt_do = Operands::new(&p, (1, BLOCK), &g.d_out[i0 * hdp..], hdp);
            block_product(l, Causal::QueriesFrom, diag, jw, br, hd, &pt_do, &mut dv_blk, hdp, true);
            // dK_J += dSᵀ (Q_I·scale).
            let dst_q = Operands::new(&ds, (1, BLOCK), &inp.q_scaled[i0 * hdp..], hdp);
            block_product(l, Causal::QueriesFrom, diag, jw, br, hd, &dst_q, &mut dk_blk, hdp, true);
            // dQ_I += dS K_J (scaled at the end).
            let ds_k = Operands::new(&ds, (BLOCK, 1), &g.k[j0 * hdp..], hdp);
            block_product(
                l,
                Causal::KeysBelow,
                diag,
                br,
                jw,
                hd,
                &ds_k,
                &mut dq_acc[i0 * hdp..],
                hdp,
                true,
            );
        }
        for c in 0..jw {
            out.row(1, j0 + c, hd).copy_from_slice(&dk_blk[c * hdp..c * hdp + hd]);
            out.row(2, j0 + c, hd).copy_from_slice(&dv_blk[c * hdp..c * hdp + hd]);
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    for t in 0..seq {
        for (dst, &x) in out.row(0, t, hd).iter_mut().zip(&dq_acc[t * hdp..t * hdp + hd]) {
            *dst = x * scale;
        }
    }
}

// AVX2 entry points: the generic bodies inline here and are compiled with AVX2+FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_head_avx2(l: avx::Avx2Fma, inp: &HeadData, o: &mut HeadOut<'_>, lse: &mut [f32]) {
    forward_head(l, inp, o, lse)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_head_avx2(l: avx::Avx2Fma, inp: &HeadData, lse: &[f32], out: &mut HeadOut<'_>) {
    backward_head(l, inp, lse, out)
}

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn forward_head_dispatch(portable: bool, inp: &HeadData, o: &mut HeadOut<'_>, lse: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = avx::Avx2Fma::detect().filter(|_| !portable) {
        // SAFETY: the token proves AVX2 and FMA are available.
        unsafe { forward_head_avx2(l, inp, o, lse) };
        return;
    }
    forward_head(Portable, inp, o, lse)
}

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn backward_head_dispatch(portable: bool, inp: &HeadData, lse: &[f32], out: &mut HeadOut<'_>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = avx::Avx2Fma::detect().filter(|_| !portable) {
        // SAFETY: the token proves AVX2 and FMA are available.
        unsafe { backward_head_avx2(l, inp, lse, out) };
        return;
    }
    backward_head(Portable, inp, lse, out)
}

fn check_shape(shape: AttnShape, qkv: &[f32], out_len: usize, lse_len: usize) {
    let rows = shape.batch * shape.seq;
    let d = shape.d();
    assert_eq!(qkv.len(), rows * 3 * d, "attention: qkv must be [batch*seq, 3d]");
    assert_eq!(out_len, rows * d, "attention: out must be [batch*seq, d]");
    assert_eq!(lse_len, shape.batch * shape.heads * shape.seq, "attention: lse must be [b, h, t]");
}

/// A public attention entry point and its twin forced onto the portable (non-SIMD) kernels, for
/// testing the fallback: both call `$imp` (first argument: portable) with the same arguments.
macro_rules! with_portable_twin {
    ($(#[$doc:meta])* $name:ident / $portable:ident => $imp:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            $imp(false, $($arg),*)
        }

        #[doc = concat!("[`", stringify!($name), "`] forced onto the portable (non-SIMD) kernels.")]
        #[doc(hidden)]
        pub fn $portable($($arg: $ty),*) {
            $imp(true, $($arg),*)
        }
    };
}

with_portable_twin! {
    /// Forward. `qkv` is `[batch*seq, 3d]` row-major: columns `0..d` are q, `d..2d` k, `2d..3d` v;
    /// head `h` uses columns `h*head_dim..(h+1)*head_dim` of each part (RoPE already applied to q, k).
    /// Writes `out` `[batch*seq, d]` and `lse` `[batch, heads, seq]` (natural log-sum-exp of the scaled
    /// scores of each query row, saved for backward). Scale is `1/sqrt(head_dim)`; position t attends to
    /// 0..=t of the same sequence.
    ///
    /// # Panics
    /// If a slice length does not match `shape`.
    attention_forward / attention_forward_portable
        => forward_impl(shape: AttnShape, qkv: &[f32], out: &mut [f32], lse: &mut [f32])
}

fn forward_impl(portable: bool, shape: AttnShape, qkv: &[f32], out: &mut [f32], lse: &mut [f32]) {
    check_shape(shape, qkv, out.len(), lse.len());
    let AttnShape { batch, seq, heads, head_dim: hd } = shape;
    let d = shape.d();
    if batch * seq * d == 0 {
        return;
    }
    let heads_in_place = batch >= rayon::current_num_threads();
    out.par_chunks_mut(seq * d).zip(lse.par_chunks_mut(heads * seq)).enumerate().for_each(
        |(b, (out_b, lse_b))| {
            let inputs = gather_batch(shape, qkv, b, None);
            if heads_in_place {
                // Enough sequences to keep every thread busy: heads one after another, each
                // writing its columns of the output rows directly.
                for (h, (lse_h, inp)) in lse_b.chunks_mut(seq).zip(&inputs).enumerate() {
                    let mut o = HeadOut { buf: &mut out_b[h * hd..], rs: d, offs: [0; 3] };
                    forward_head_dispatch(portable, inp, &mut o, lse_h);
                }
                return;
            }
            // Heads in parallel, each into a private [T, hd] buffer scattered afterwards.
            let per_head: Vec<Buffer> = lse_b
                .par_chunks_mut(seq)
                .zip(inputs.par_iter())
                .map(|(lse_h, inp)| {
                    let mut o = Buffer::zeros(seq * hd);
                    let mut view = HeadOut { buf: &mut o, rs: hd, offs: [0; 3] };
                    forward_head_dispatch(portable, inp, &mut view, lse_h);
                    o
                })
                .collect();
            for (h, o) in per_head.iter().enumerate() {
                for t in 0..seq {
                    out_b[t * d + h * hd..t * d + (h + 1) * hd]
                        .copy_from_slice(&o[t * hd..(t + 1) * hd]);
                }
            }
        },
    );
}

with_portable_twin! {
    /// Backward. Given the forward's inputs and saved `out`, `lse`, and `d_out` `[batch*seq, d]`,
    /// writes `d_qkv` `[batch*seq, 3d]` (overwritten, same layout as `qkv`).
    ///
    /// # Panics
    /// If a slice length does not match `shape`.
    attention_backward / attention_backward_portable => backward_impl(shape: AttnShape,
        qkv: &[f32], out: &[f32], lse: &[f32], d_out: &[f32], d_qkv: &mut [f32])
}

fn backward_impl(
    portable: bool,
    shape: AttnShape,
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    d_qkv: &mut [f32],
) {
    check_shape(shape, qkv, out.len(), lse.len());
    assert_eq!(d_out.len(), out.len(), "attention_backward: d_out must be [batch*seq, d]");
    assert_eq!(d_qkv.len(), qkv.len(), "attention_backward: d_qkv must be [batch*seq, 3d]");
    let AttnShape { batch, seq, heads, head_dim: hd } = shape;
    let d = shape.d();
    if batch * seq * d == 0 {
        return;
    }
    let heads_in_place = batch >= rayon::current_num_threads();
    d_qkv.par_chunks_mut(seq * 3 * d).enumerate().for_each(|(b, d_qkv_b)| {
        let inputs = gather_batch(shape, qkv, b, Some((out, d_out)));
        let lse_of = |h: usize| &lse[(b * heads + h) * seq..(b * heads + h + 1) * seq];
        if heads_in_place {
            // As in the forward: heads in turn, writing their columns of dQ, dK, dV in place.
            for (h, inp) in inputs.iter().enumerate() {
                let mut g = HeadOut { buf: &mut d_qkv_b[h * hd..], rs: 3 * d, offs: [0, d, 2 * d] };
                backward_head_dispatch(portable, inp, lse_of(h), &mut g);
            }
            return;
        }
        let per_head: Vec<Buffer> = inputs
            .par_iter()
            .enumerate()
            .map(|(h, inp)| {
                // Rows of [dQ | dK | dV], 3·hd wide.
                let mut g = Buffer::zeros(seq * 3 * hd);
                let mut view = HeadOut { buf: &mut g, rs: 3 * hd, offs: [0, hd, 2 * hd] };
                backward_head_dispatch(portable, inp, lse_of(h), &mut view);
                g
            })
            .collect();
        for (h, g) in per_head.iter().enumerate() {
            for t in 0..seq {
                for part in 0..3 {
                    let dst = t * 3 * d + part * d + h * hd;
                    let src = t * 3 * hd + part * hd;
                    d_qkv_b[dst..dst + hd].copy_from_slice(&g[src..src + hd]);
                }
            }
        }
    });
}
