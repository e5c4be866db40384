//! Vector math for the element-wise kernels, over the SIMD layer ([`crate::simd`]): e^x, σ and
//! the SwiGLU row loops, forward and backward. Instantiated with the AVX2 + FMA token; the
//! SwiGLU backward also with portable lanes (the portable forward paths of [`crate::fused`] keep
//! their scalar loops, whose results these do not match bit for bit).
//!
//! Same Cephes polynomial and range reduction as the scalar [`crate::fused::exp_f32`], with fused
//! multiply-adds and the polynomial in Estrin form (shorter dependency chains), and two vectors
//! per step in the forward so the FP scheduler has independent work (four spilled registers).
//! Results differ from the scalar path by rounding only (tests bound both against f64).

#[cfg(target_arch = "x86_64")]
use crate::simd::avx::Avx2Fma;
use crate::simd::{Lanes, W};

/// e^x lane-wise (~2 ulp; NaN stays NaN, x < −87.3 gives ~1e−38, x > 88.7 saturates).
#[inline(always)]
pub(crate) fn exp<L: Lanes>(l: L, x: L::V) -> L::V {
    // max/min return their second operand when either is NaN: x comes second so NaN survives.
    let x = l.max(l.splat(-87.3), x);
    let x = l.min(l.splat(88.7), x);
    let round = l.splat(12_582_912.0); // 1.5·2^23
    let t = l.mul_add(x, l.splat(std::f32::consts::LOG2_E), round);
    let n = l.sub(t, round);
    let r = l.neg_mul_add(n, l.splat(0.693_359_4), x);
    let r = l.neg_mul_add(n, l.splat(-2.121_944_4e-4), r);
    // p(r) = c0 r^5 + c1 r^4 + c2 r^3 + c3 r^2 + c4 r + c5, Estrin: (c4 r + c5) + r²(c2 r + c3)
    // + r⁴(c0 r + c1).
    let c = |v: f32| l.splat(v);
    let r2 = l.mul(r, r);
    let r4 = l.mul(r2, r2);
    let p01 = l.mul_add(c(1.987_569_1e-4), r, c(1.398_199_9e-3));
    let p23 = l.mul_add(c(8.333_452e-3), r, c(4.166_579_6e-2));
    let p45 = l.mul_add(c(1.666_666_5e-1), r, c(0.5));
    let p = l.mul_add(p01, r4, l.mul_add(p23, r2, p45));
    // e^r ≈ p·r² + r + 1
    let er = l.add(l.mul_add(p, r2, r), c(1.0));
    l.mul_pow2_rounded(er, t, round)
}

/// σ(g) = 1/(1+e^−g) lane-wise, with the layer's fast reciprocal instead of a division, whose
/// throughput would bound the loops.
#[inline(always)]
fn sigmoid<L: Lanes>(l: L, g: L::V) -> L::V {
    l.recip(l.add(l.splat(1.0), exp(l, l.neg(g))))
}

/// value·silu(gate) lane-wise.
#[inline(always)]
fn swiglu<L: Lanes>(l: L, v: L::V, g: L::V) -> L::V {
    l.mul(v, l.mul(g, sigmoid(l, g)))
}

/// Gradients of value·silu(gate) lane-wise given dy: (d value, d gate).
#[inline(always)]
fn swiglu_grad<L: Lanes>(l: L, v: L::V, g: L::V, dy: L::V) -> (L::V, L::V) {
    let s = sigmoid(l, g);
    let one = l.splat(1.0);
    let dv = l.mul(l.mul(dy, g), s);
    // dg = dy·v·s·(1 + g·(1 − s))
    let inner = l.mul_add(g, l.sub(one, s), one);
    let dg = l.mul(l.mul(l.mul(dy, v), s), inner);
    (dv, dg)
}

/// The first `rest` < 8 floats of `src` in a zero-padded array of eight.
#[inline(always)]
fn padded(src: &[f32], rest: usize) -> [f32; W] {
    let mut b = [0.0f32; W];
    b[..rest].copy_from_slice(&src[..rest]);
    b
}

/// x [R, 2h] = [value | gate] rows -> y [R, h] = value·silu(gate). Needs `x.len() == 2·y.len()`
/// and `y.len()` a multiple of `h`.
#[inline(always)]
pub(crate) fn swiglu_rows<L: Lanes>(l: L, x: &[f32], y: &mut [f32], h: usize) {
    for (xr, yr) in x.chunks_exact(2 * h).zip(y.chunks_exact_mut(h)) {
        let (value, gate) = xr.split_at(h);
        let mut j = 0;
        while j + 2 * W <= h {
            let r0 = swiglu(l, l.read(&value[j..]), l.read(&gate[j..]));
            let r1 = swiglu(l, l.read(&value[j + W..]), l.read(&gate[j + W..]));
            l.write(&mut yr[j..], r0);
            l.write(&mut yr[j + W..], r1);
            j += 2 * W;
        }
        while j + W <= h {
            let r = swiglu(l, l.read(&value[j..]), l.read(&gate[j..]));
            l.write(&mut yr[j..], r);
            j += W;
        }
        if j < h {
            // The last h % 8 lanes through a zero-padded vector: same arithmetic as the others.
            let rest = h - j;
            let (vb, gb) = (padded(&value[j..], rest), padded(&gate[j..], rest));
            let mut out = [0.0f32; W];
            l.write(&mut out, swiglu(l, l.read(&vb), l.read(&gb)));
            yr[j..].copy_from_slice(&out[..rest]);
        }
    }
}

/// dx [R, 2h] (+= when `accumulate`) the gradient of value·silu(gate) given dy [R, h]. Needs
/// `x.len() == dx.len() == 2·dy.len()`, `dy.len()` a multiple of `h`.
#[inline(always)]
pub(crate) fn swiglu_backward_rows<L: Lanes>(
    l: L,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    h: usize,
    accumulate: bool,
) {
    let rows = x.chunks_exact(2 * h).zip(dx.chunks_exact_mut(2 * h)).zip(dy.chunks_exact(h));
    for ((xr, dxr), dyr) in rows {
        let (value, gate) = xr.split_at(h);
        let (dvalue, dgate) = dxr.split_at_mut(h);
        let mut j = 0;
        while j + W <= h {
            let (v, g, d) = (l.read(&value[j..]), l.read(&gate[j..]), l.read(&dyr[j..]));
            let (dv, dg) = swiglu_grad(l, v, g, d);
            if accumulate {
                let (dv, dg) = (l.add(l.read(&dvalue[j..]), dv), l.add(l.read(&dgate[j..]), dg));
                l.write(&mut dvalue[j..], dv);
                l.write(&mut dgate[j..], dg);
            } else {
                l.write(&mut dvalue[j..], dv);
                l.write(&mut dgate[j..], dg);
            }
            j += W;
        }
        if j < h {
            // The last h % 8 lanes through zero-padded vectors: same arithmetic as the others.
            let rest = h - j;
            let (vb, gb, db) =
                (padded(&value[j..], rest), padded(&gate[j..], rest), padded(&dyr[j..], rest));
            let (mut dvb, mut dgb) = ([0.0f32; W], [0.0f32; W]);
            let (dv, dg) = swiglu_grad(l, l.read(&vb), l.read(&gb), l.read(&db));
            l.write(&mut dvb, dv);
            l.write(&mut dgb, dg);
            for (k, (o, p)) in dvalue[j..].iter_mut().zip(dgate[j..].iter_mut()).enumerate() {
                if accumulate {
                    *o += dvb[k];
                    *p += dgb[k];
                } else {
                    *o = dvb[k];
                    *p = dgb[k];
                }
            }
        }
    }
}

/// [`swiglu_rows`] compiled with AVX2 + FMA.
///
/// # Safety
/// None beyond the token: it proves AVX2 and FMA (the attribute only lets the body inline).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_rows_avx2(l: Avx2Fma, x: &[f32], y: &mut [f32], h: usize) {
    swiglu_rows(l, x, y, h)
}

/// [`swiglu_backward_rows`] compiled with AVX2 + FMA.
///
/// # Safety
/// None beyond the token: it proves AVX2 and FMA (the attribute only lets the body inline).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_backward_rows_avx2(
    l: Avx2Fma,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    h: usize,
    accumulate: bool,
) {
    swiglu_backward_rows(l, x, dy, dx, h, accumulate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::microkernel::KernelKind;

    /// The AVX2 token whatever `VFFN_KERNEL` selects (these tests check the vector math itself).
    fn avx2() -> Option<Avx2Fma> {
        let l = Avx2Fma::for_kind(KernelKind::Avx2);
        if l.is_none() {
            eprintln!("skipped: no AVX2+FMA on this CPU");
        }
        l
    }

    /// Values (i·step mod modulus)/scale − shift, i < len: spread over [−shift, modulus/scale − shift).
    fn spread(len: usize, step: usize, modulus: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..len).map(|i| ((i * step) % modulus) as f32 / scale - shift).collect()
    }

    fn exp_of(l: Avx2Fma, xs: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        l.write(&mut out, exp(l, l.read(&xs)));
        out
    }

    #[test]
    fn exp_is_accurate_and_keeps_nan() {
        let Some(l) = avx2() else { return };
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 0.0017);
            for (&xi, &o) in xs.iter().zip(&exp_of(l, xs)) {
                let want = (xi as f64).exp();
                worst = worst.max(((o as f64 - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        let out = exp_of(l, [f32::NAN, f32::NEG_INFINITY, 88.7, 1000.0, -1000.0, 0.0, 1.0, -1.0]);
        assert!(out[0].is_nan());
        assert!(out[1] < 1e-37 && out[4] < 1e-37);
        assert!(out[2].is_finite() && out[3].is_finite() && out[3] > 1e38);
        assert_eq!(out[5], 1.0);
    }

    #[test]
    fn swiglu_rows_matches_f64_at_every_width_and_extremes() {
        let Some(l) = avx2() else { return };
        for h in 1..=41 {
            let rows = 3;
            let x = spread(rows * 2 * h, 7919, 2003, 100.0, 10.0);
            let mut y = vec![0.0f32; rows * h];
            // SAFETY: the token proves AVX2 and FMA.
            unsafe { swiglu_rows_avx2(l, &x, &mut y, h) };
            for r in 0..rows {
                for j in 0..h {
                    let v = x[r * 2 * h + j] as f64;
                    let g = x[r * 2 * h + h + j] as f64;
                    let want = v * g / (1.0 + (-g).exp());
                    let got = y[r * h + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "h {h}: {got} vs {want}"
                    );
                }
            }
        }
        // Saturated gates, and NaN propagates (the training loop's NaN check relies on it).
        let x = [1.0, 2.0, 3.0, 4.0, 100.0, -100.0, f32::NAN, 0.0];
        let mut y = [0.0f32; 4];
        // SAFETY: as above (h = 4).
        unsafe { swiglu_rows_avx2(l, &x, &mut y, 4) };
        assert!((y[0] - 100.0).abs() < 1e-4 && y[1].abs() < 1e-30, "{y:?}");
        assert!(y[2].is_nan() && y[3] == 0.0, "{y:?}");
    }

    #[test]
    fn swiglu_backward_rows_matches_f64_and_accumulates() {
        let Some(l) = avx2() else { return };
        for h in 1..=41 {
            let rows = 3;
            let (x, dy) = (
                spread(rows * 2 * h, 7919, 2003, 200.0, 5.0),
                spread(rows * h, 104_729, 997, 500.0, 1.0),
            );
            let mut dx = vec![0.0f32; rows * 2 * h];
            // SAFETY: the token proves AVX2 and FMA.
            unsafe { swiglu_backward_rows_avx2(l, &x, &dy, &mut dx, h, false) };
            let mut acc = vec![0.5f32; rows * 2 * h];
            // SAFETY: as above.
            unsafe { swiglu_backward_rows_avx2(l, &x, &dy, &mut acc, h, true) };
            for r in 0..rows {
                for j in 0..h {
                    let v = x[r * 2 * h + j] as f64;
                    let g = x[r * 2 * h + h + j] as f64;
                    let d = dy[r * h + j] as f64;
                    let s = 1.0 / (1.0 + (-g).exp());
                    let want = [d * g * s, d * v * s * (1.0 + g * (1.0 - s))];
                    for (c, w) in want.iter().enumerate() {
                        let i = r * 2 * h + c * h + j;
                        let tol = 1e-6 * (1.0 + w.abs());
                        assert!((dx[i] as f64 - w).abs() <= tol, "h {h}: {} vs {w}", dx[i]);
                        assert!((acc[i] as f64 - 0.5 - w).abs() <= 2.0 * tol, "h {h} (accumulate)");
                    }
                }
            }
        }
    }
}
