//! Fused row-wise element-wise kernels, forward and backward side by side: SiLU, SwiGLU, RMSNorm,
//! softmax, log-softmax + cross-entropy. Slices and row widths only (no tensors).
//!
//! Each kernel body is plain Rust written so LLVM vectorizes it (fixed 8-lane accumulators, a
//! branch-free `exp`); it is compiled twice, generic and with AVX2+FMA enabled, and the AVX2 copy
//! is chosen at run time. Both copies do the same arithmetic in the same order (no FMA
//! contraction in Rust), so results do not depend on which one runs. Rows are split over rayon
//! in independent blocks; reductions across rows use fixed-size blocks summed in order, so results
//! never depend on the thread count.
//!
//! Backward kernels take `accumulate`: `false` overwrites the gradient, `true` adds into it.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::simd::avx::Avx2Fma;
use crate::simd::Portable;
use crate::vmath;

/// Elements per parallel task (rows are grouped until a task has about this many).
const TASK_ELEMS: usize = 16 * 1024;
/// Rows per partial sum in cross-row reductions (fixed, for thread-count independence).
const REDUCE_ROWS: usize = 32;

/// AVX2 + FMA code allowed by the one ISA decision.
fn avx2_fma() -> bool {
    crate::microkernel::avx2_allowed()
}

/// Defines `fn name(args)` whose body runs in an AVX2+FMA-compiled copy when the CPU has them.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn body_avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                // SAFETY: `avx2_fma()` confirmed at run time that the CPU supports AVX2 and FMA,
                // the only requirement of `body_avx2`; the body itself is safe code.
                return unsafe { body_avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

fn rows_per_task(cols: usize) -> usize {
    (TASK_ELEMS / cols.max(1)).max(1)
}

/// e^x with ~2 ulp error, branch-free so loops over it vectorize (Cephes polynomial, 2^n by
/// exponent bits). NaN stays NaN; x < -87.3 gives ~1e-38 rather than 0; x > 88.7 saturates.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.7 { 88.7 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n split in two factors so n = 128 (x near 88.7) does not overflow the exponent field.
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - half + 127) as u32) << 23);
    er * s1 * s2
}

/// Logistic sigmoid via [`exp_f32`].
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(tail) {
        m = if v > m { v } else { m };
    }
    m
}

/// Sum with 8 fixed lanes (order fixed by the row length only).
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for &v in tail {
        s += v;
    }
    s
}

/// Dot product with 8 fixed lanes summed ((0+4)+(2+6))+((1+5)+(3+7)), then the tail in order:
/// the order depends only on the length (vectorizes).
#[inline(always)]
pub fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// SiLU: y = x·σ(x); dy/dx = σ(x)·(1 + x·(1 − σ(x))).

simd_fn! {
    fn silu_block(x: &[f32], y: &mut [f32]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = xi * sigmoid_f32(xi);
        }
    }
}

simd_fn! {
    fn silu_backward_block(x: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
        if accumulate {
            for ((d, &xi), &g) in dx.iter_mut().zip(x).zip(dy) {
                let s = sigmoid_f32(xi);
                *d += g * s * (1.0 + xi * (1.0 - s));
            }
        } else {
            for ((d, &xi), &g) in dx.iter_mut().zip(x).zip(dy) {
                let s = sigmoid_f32(xi);
                *d = g * s * (1.0 + xi * (1.0 - s));
            }
        }
    }
}

/// y = silu(x), element-wise.
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "silu_forward: lengths");
    y.par_chunks_mut(TASK_ELEMS).zip(x.par_chunks(TASK_ELEMS)).for_each(|(y, x)| silu_block(x, y));
}

/// dx (+)= dy·silu'(x).
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
    assert!(x.len() == dy.len() && x.len() == dx.len(), "silu_backward: lengths");
    dx.par_chunks_mut(TASK_ELEMS)
        .zip(x.par_chunks(TASK_ELEMS).zip(dy.par_chunks(TASK_ELEMS)))
        .for_each(|(dx, (x, dy))| silu_backward_block(x, dy, dx, accumulate));
}

// ---------------------------------------------------------------------------------------------
// SwiGLU over [value | gate]: x [R, 2h] -> y [R, h], y = value·silu(gate).

/// x [R, 2h] -> y [R, h] on the calling thread (AVX2 + FMA vector math when available).
pub(crate) fn swiglu_rows(x: &[f32], y: &mut [f32], h: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = Avx2Fma::detect() {
        // SAFETY: the token proves AVX2 and FMA, all `swiglu_rows_avx2` needs.
        return unsafe { vmath::swiglu_rows_avx2(l, x, y, h) };
    }
    swiglu_rows_scalar(x, y, h);
}

simd_fn! {
    fn swiglu_rows_scalar(x: &[f32], y: &mut [f32], h: usize) {
        for (xr, yr) in x.chunks_exact(2 * h).zip(y.chunks_exact_mut(h)) {
            let (value, gate) = xr.split_at(h);
            for ((yi, &v), &g) in yr.iter_mut().zip(value).zip(gate) {
                *yi = v * (g * sigmoid_f32(g));
            }
        }
    }
}

/// dx [R, 2h] (+)= SwiGLU gradient given dy [R, h] on the calling thread: one vector kernel
/// ([`vmath::swiglu_backward_rows`]) on AVX2 + FMA lanes when available, else portable lanes.
fn swiglu_backward_rows(x: &[f32], dy: &[f32], dx: &mut [f32], h: usize, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = Avx2Fma::detect() {
        // SAFETY: the token proves AVX2 and FMA, all `swiglu_backward_rows_avx2` needs.
        return unsafe { vmath::swiglu_backward_rows_avx2(l, x, dy, dx, h, accumulate) };
    }
    vmath::swiglu_backward_rows(Portable, x, dy, dx, h, accumulate);
}

/// x [R, 2h] = [value | gate] -> y [R, h] = value·silu(gate).
pub fn swiglu_forward(x: &[f32], y: &mut [f32], h: usize) {
    assert!(h > 0 && x.len() == 2 * y.len() && y.len().is_multiple_of(h), "swiglu_forward: shapes");
    let rpt = rows_per_task(2 * h);
    y.par_chunks_mut(rpt * h)
        .zip(x.par_chunks(rpt * 2 * h))
        .for_each(|(y, x)| swiglu_rows(x, y, h));
}

/// dx [R, 2h] (+)= gradient of value·silu(gate) given dy [R, h].
pub fn swiglu_backward(x: &[f32], dy: &[f32], dx: &mut [f32], h: usize, accumulate: bool) {
    assert!(h > 0 && x.len() == 2 * dy.len() && dx.len() == x.len(), "swiglu_backward: shapes");
    let rpt = rows_per_task(2 * h);
    dx.par_chunks_mut(rpt * 2 * h)
        .zip(x.par_chunks(rpt * 2 * h).zip(dy.par_chunks(rpt * h)))
        .for_each(|(dx, (x, dy))| swiglu_backward_rows(x, dy, dx, h, accumulate));
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps), per row of width d.
// Backward: with x̂ = x·rstd and g = dy·w: dx = rstd·(g − x̂·mean(g·x̂)); dw = Σ_rows dy·x̂.

simd_fn! {
    pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], y: &mut [f32], rstd: &mut [f32], d: usize, eps: f32) {
        let rows = x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(rstd.iter_mut());
        for ((xr, yr), rs) in rows {
            let r = 1.0 / (lanes_dot(xr, xr) / d as f32 + eps).sqrt();
            *rs = r;
            for ((yi, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                *yi = xi * r * wi;
            }
        }
    }
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_dx_rows(
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        d: usize,
        accumulate: bool,
        scratch: &mut [f32],
    ) {
        let rows = x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d));
        for (((xr, dyr), dxr), &r) in rows.zip(rstd) {
            // scratch = dy·w; mean(g·x̂) = rstd·dot(g, x)/d
            for ((s, &g), &wi) in scratch.iter_mut().zip(dyr).zip(w) {
                *s = g * wi;
            }
            let c = r * r * lanes_dot(scratch, xr) / d as f32;
            let it = dxr.iter_mut().zip(scratch.iter()).zip(xr);
            if accumulate {
                it.for_each(|((o, &s), &xi)| *o += r * (s - xi * c));
            } else {
                it.for_each(|((o, &s), &xi)| *o = r * (s - xi * c));
            }
        }
    }
}

simd_fn! {
    fn rms_norm_dw_rows(x: &[f32], rstd: &[f32], dy: &[f32], dw: &mut [f32], d: usize) {
        dw.fill(0.0);
        for ((xr, dyr), &r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(rstd) {
            for ((o, &xi), &g) in dw.iter_mut().zip(xr).zip(dyr) {
                *o += g * (xi * r);
            }
        }
    }
}

simd_fn! {
    fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// x [R, d], w [d] -> y [R, d], rstd [R].
pub fn rms_norm_forward(x: &[f32], w: &[f32], y: &mut [f32], rstd: &mut [f32], eps: f32) {
    let d = w.len();
    assert!(d > 0 && x.len() == y.len() && x.len() == rstd.len() * d, "rms_norm_forward: shapes");
    let rpt = rows_per_task(d);
    y.par_chunks_mut(rpt * d)
        .zip(x.par_chunks(rpt * d))
        .zip(rstd.par_chunks_mut(rpt))
        .for_each(|((y, x), rstd)| rms_norm_rows(x, w, y, rstd, d, eps));
}

/// Gradients of RMSNorm given the forward's `x`, `w`, saved `rstd` and `dy`. `dx` and `dw` are
/// each `(gradient, accumulate)` or `None` when not wanted.
pub fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: Option<(&mut [f32], bool)>,
    dw: Option<(&mut [f32], bool)>,
) {
    let d = w.len();
    assert!(d > 0 && x.len() == dy.len() && x.len() == rstd.len() * d, "rms_norm_backward");
    if let Some((dx, accumulate)) = dx {
        assert_eq!(dx.len(), x.len(), "rms_norm_backward: dx");
        let rpt = rows_per_task(d);
        dx.par_chunks_mut(rpt * d)
            .zip(x.par_chunks(rpt * d).zip(dy.par_chunks(rpt * d)))
            .zip(rstd.par_chunks(rpt))
            .for_each(|((dx, (x, dy)), rstd)| {
                let mut scratch = vec![0.0f32; d];
                rms_norm_dx_rows(x, w, rstd, dy, dx, d, accumulate, &mut scratch);
            });
    }
    if let Some((dw, accumulate)) = dw {
        assert_eq!(dw.len(), d, "rms_norm_backward: dw");
        // Fixed row blocks -> partial sums -> summed in block order.
        let partials: Vec<Vec<f32>> = x
            .par_chunks(REDUCE_ROWS * d)
            .zip(dy.par_chunks(REDUCE_ROWS * d))
            .zip(rstd.par_chunks(REDUCE_ROWS))
            .map(|((x, dy), rstd)| {
                let mut p = vec![0.0f32; d];
                rms_norm_dw_rows(x, rstd, dy, &mut p, d);
                p
            })
            .collect();
        if !accumulate {
            dw.fill(0.0);
        }
        for p in &partials {
            add_into(dw, p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over rows of width n: y = exp(x − max)/Σ. Backward: dx = scale·y·(dy − Σ dy·y).

simd_fn! {
    fn softmax_rows(x: &[f32], y: &mut [f32], n: usize, scale: f32) {
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let m = row_max(xr) * scale;
            for (yi, &xi) in yr.iter_mut().zip(xr) {
                *yi = exp_f32(xi * scale - m);
            }
            let inv = 1.0 / lanes_sum(yr);
            for yi in yr.iter_mut() {
                *yi *= inv;
            }
        }
    }
}

/// How a backward writes its gradient: `scale` times the value, added to the target
/// (`accumulate`) or written over it.
#[derive(Clone, Copy)]
struct GradOut {
    scale: f32,
    accumulate: bool,
}

simd_fn! {
    fn softmax_backward_rows(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize, out: GradOut) {
        let GradOut { scale, accumulate } = out;
        let rows = y.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n));
        for ((yr, dyr), dxr) in rows {
            let s = lanes_dot(yr, dyr);
            let it = dxr.iter_mut().zip(yr).zip(dyr);
            if accumulate {
                it.for_each(|((o, &yi), &g)| *o += scale * yi * (g - s));
            } else {
                it.for_each(|((o, &yi), &g)| *o = scale * yi * (g - s));
            }
        }
    }
}

/// y = softmax(scale·x) over rows of width `n` (`scale` > 0; 1 for a plain softmax).
pub fn softmax_forward(x: &[f32], y: &mut [f32], n: usize, scale: f32) {
    assert!(n > 0 && x.len() == y.len() && x.len().is_multiple_of(n), "softmax_forward: shapes");
    let rpt = rows_per_task(n);
    y.par_chunks_mut(rpt * n)
        .zip(x.par_chunks(rpt * n))
        .for_each(|(y, x)| softmax_rows(x, y, n, scale));
}

/// dx (+)= scale·y·(dy − Σ dy·y), the gradient through y = softmax(scale·x).
pub fn softmax_backward(
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    n: usize,
    scale: f32,
    accumulate: bool,
) {
    assert!(n > 0 && y.len() == dy.len() && y.len() == dx.len(), "softmax_backward: shapes");
    let rpt = rows_per_task(n);
    dx.par_chunks_mut(rpt * n).zip(y.par_chunks(rpt * n).zip(dy.par_chunks(rpt * n))).for_each(
        |(dx, (y, dy))| softmax_backward_rows(y, dy, dx, n, GradOut { scale, accumulate }),
    );
}

// ---------------------------------------------------------------------------------------------
// Log-softmax + cross-entropy over rows of width V: loss_r = lse_r − x[r, t_r].
// Backward: dx[r, j] = g·(exp(x[r, j] − lse_r) − [j = t_r]).

simd_fn! {
    fn cross_entropy_rows(x: &[f32], targets: &[u32], lse: &mut [f32], loss: &mut [f32], v: usize) {
        for (((xr, &t), l), out) in x.chunks_exact(v).zip(targets).zip(lse.iter_mut()).zip(loss) {
            let m = row_max(xr);
            let mut acc = [0.0f32; 8];
            let chunks = xr.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for k in 0..8 {
                    acc[k] += exp_f32(c[k] - m);
                }
            }
            let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6]))
                + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            for &xi in tail {
                s += exp_f32(xi - m);
            }
            *l = m + s.ln();
            *out = *l - xr[t as usize];
        }
    }
}

simd_fn! {
    /// One row: dx (+)= g·(exp(x − lse) − onehot(t)).
    fn cross_entropy_backward_row(x: &[f32], t: u32, lse: f32, dx: &mut [f32], g: f32, accumulate: bool) {
        if accumulate {
            dx.iter_mut().zip(x).for_each(|(o, &xi)| *o += g * exp_f32(xi - lse));
        } else {
            dx.iter_mut().zip(x).for_each(|(o, &xi)| *o = g * exp_f32(xi - lse));
        }
        dx[t as usize] -= g;
    }
}

/// Per-row cross-entropy of logits x [R, V] against `targets` [R] (each < V). Writes `lse` [R]
/// and per-row `loss` [R]; returns the mean loss, summed in f64 in row order.
pub fn cross_entropy_forward(
    x: &[f32],
    targets: &[u32],
    lse: &mut [f32],
    loss: &mut [f32],
    v: usize,
) -> f64 {
    let rows = targets.len();
    assert!(v > 0 && x.len() == rows * v && lse.len() == rows && loss.len() == rows, "ce shapes");
    assert!(targets.iter().all(|&t| (t as usize) < v), "cross_entropy: target id >= vocab {v}");
    let rpt = rows_per_task(v);
    x.par_chunks(rpt * v)
        .zip(targets.par_chunks(rpt))
        .zip(lse.par_chunks_mut(rpt).zip(loss.par_chunks_mut(rpt)))
        .for_each(|((x, t), (lse, loss))| cross_entropy_rows(x, t, lse, loss, v));
    if rows == 0 {
        return 0.0;
    }
    loss.iter().map(|&l| l as f64).sum::<f64>() / rows as f64
}

/// dx [R, V] (+)= g·(softmax(x) − onehot(targets)), using the saved `lse`.
pub fn cross_entropy_backward(
    x: &[f32],
    targets: &[u32],
    lse: &[f32],
    dx: &mut [f32],
    v: usize,
    g: f32,
    accumulate: bool,
) {
    let rows = targets.len();
    assert!(v > 0 && x.len() == rows * v && dx.len() == x.len() && lse.len() == rows, "ce bwd");
    let rpt = rows_per_task(v);
    dx.par_chunks_mut(rpt * v)
        .zip(x.par_chunks(rpt * v).zip(targets.par_chunks(rpt)))
        .zip(lse.par_chunks(rpt))
        .for_each(|((dx, (x, t)), lse)| {
            let rows = x.chunks_exact(v).zip(dx.chunks_exact_mut(v)).zip(t).zip(lse);
            for (((xr, dxr), &t), &l) in rows {
                cross_entropy_backward_row(xr, t, l, dxr, g, accumulate);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp_f32(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_f32(88.7).is_finite());
    }

    /// Deterministic values in [-3, 3).
    fn data(n: usize, seed: u64) -> Vec<f32> {
        crate::testvals::values(n, seed, 3.0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn kernels_match_naive(rows in 1usize..70, n in 1usize..40, seed in 0u64..1000) {
            let x = data(rows * 2 * n, seed);
            let x1 = &x[..rows * n];
            // softmax
            let mut y = vec![0.0; rows * n];
            softmax_forward(x1, &mut y, n, 1.0);
            for r in 0..rows {
                let row = &x1[r * n..(r + 1) * n];
                let m = row.iter().cloned().fold(f64::MIN, |a, b| a.max(b as f64));
                let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                for j in 0..n {
                    let want = (row[j] as f64 - m).exp() / s;
                    prop_assert!((y[r * n + j] as f64 - want).abs() < 1e-6);
                }
            }
            // rms norm
            let w = data(n, seed + 1);
            let (mut yn, mut rstd) = (vec![0.0; rows * n], vec![0.0; rows]);
            rms_norm_forward(x1, &w, &mut yn, &mut rstd, 1e-6);
            for r in 0..rows {
                let row = &x1[r * n..(r + 1) * n];
                let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
                let rs = 1.0 / (ms + 1e-6).sqrt();
                for j in 0..n {
                    let want = row[j] as f64 * rs * w[j] as f64;
                    prop_assert!((yn[r * n + j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
                }
            }
            // swiglu
            let mut ys = vec![0.0; rows * n];
            swiglu_forward(&x, &mut ys, n);
            for r in 0..rows {
                for j in 0..n {
                    let v = x[r * 2 * n + j] as f64;
                    let g = x[r * 2 * n + n + j] as f64;
                    let want = v * g / (1.0 + (-g).exp());
                    prop_assert!((ys[r * n + j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
                }
            }
            // cross entropy
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7 + seed as usize) % n) as u32).collect();
            let (mut lse, mut loss) = (vec![0.0; rows], vec![0.0; rows]);
            let mean = cross_entropy_forward(x1, &targets, &mut lse, &mut loss, n);
            let mut want_mean = 0.0f64;
            for r in 0..rows {
                let row = &x1[r * n..(r + 1) * n];
                let m = row.iter().cloned().fold(f64::MIN, |a, b| a.max(b as f64));
                let l = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                want_mean += (l - row[targets[r] as usize] as f64) / rows as f64;
            }
            prop_assert!((mean - want_mean).abs() < 1e-5);
        }
    }
}
