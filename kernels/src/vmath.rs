//! AVX2 + FMA vector math for the element-wise kernels: e^x and the SwiGLU row loop.
//!
//! Same Cephes polynomial and range reduction as the scalar [`crate::fused::exp_f32`], with fused
//! multiply-adds and the polynomial in Estrin form (shorter dependency chains), and two vectors
//! per step in the forward so the FP scheduler has independent work (four spilled registers). Results differ from the scalar path
//! by rounding only (tests bound both against f64).

use std::arch::x86_64::*;

/// e^x for 8 lanes (~2 ulp; NaN stays NaN, x < −87.3 gives ~1e−38, x > 88.7 saturates).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    // max/min return their second operand when either is NaN: x comes second so NaN survives.
    let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x);
    let x = _mm256_min_ps(_mm256_set1_ps(88.7), x);
    let round = _mm256_set1_ps(12_582_912.0); // 1.5·2^23
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm256_sub_ps(t, round);
    let ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(round));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    // p(r) = c0 r^5 + c1 r^4 + c2 r^3 + c3 r^2 + c4 r + c5, Estrin: (c4 r + c5) + r²(c2 r + c3)
    // + r⁴(c0 r + c1).
    let c = |v: f32| _mm256_set1_ps(v);
    let r2 = _mm256_mul_ps(r, r);
    let r4 = _mm256_mul_ps(r2, r2);
    let p01 = _mm256_fmadd_ps(c(1.987_569_1e-4), r, c(1.398_199_9e-3));
    let p23 = _mm256_fmadd_ps(c(8.333_452e-3), r, c(4.166_579_6e-2));
    let p45 = _mm256_fmadd_ps(c(1.666_666_5e-1), r, c(0.5));
    let p = _mm256_fmadd_ps(p01, r4, _mm256_fmadd_ps(p23, r2, p45));
    // e^r ≈ p·r² + r + 1
    let er = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), c(1.0));
    // 2^n as two factors so n = 128 does not overflow the exponent field.
    let half = _mm256_srai_epi32::<1>(ni);
    let bias = _mm256_set1_epi32(127);
    let s1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias));
    let s2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias));
    _mm256_mul_ps(_mm256_mul_ps(er, _mm256_castsi256_ps(s1)), _mm256_castsi256_ps(s2))
}

/// σ(g) = 1/(1+e^−g) for 8 lanes: the approximate reciprocal (12 bits) and one Newton step
/// (≈ 23 bits) instead of a division, whose throughput would bound the loops.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sigmoid8(g: __m256) -> __m256 {
    let den = _mm256_add_ps(_mm256_set1_ps(1.0), exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0))));
    let r0 = _mm256_rcp_ps(den);
    _mm256_mul_ps(r0, _mm256_fnmadd_ps(den, r0, _mm256_set1_ps(2.0)))
}

/// value·silu(gate) for 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn swiglu8(v: __m256, g: __m256) -> __m256 {
    _mm256_mul_ps(v, _mm256_mul_ps(g, sigmoid8(g)))
}

/// Gradients of value·silu(gate) for 8 lanes given dy: (d value, d gate).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn swiglu_grad8(v: __m256, g: __m256, dy: __m256) -> (__m256, __m256) {
    let s = sigmoid8(g);
    let one = _mm256_set1_ps(1.0);
    let dv = _mm256_mul_ps(_mm256_mul_ps(dy, g), s);
    // dg = dy·v·s·(1 + g·(1 − s))
    let inner = _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one);
    let dg = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dy, v), s), inner);
    (dv, dg)
}

/// x [R, 2h] = [value | gate] rows -> y [R, h] = value·silu(gate).
///
/// # Safety
/// The CPU must support AVX2 and FMA. `x.len() == 2·y.len()` and `y.len()` a multiple of `h`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_rows(x: &[f32], y: &mut [f32], h: usize) {
    for (xr, yr) in x.chunks_exact(2 * h).zip(y.chunks_exact_mut(h)) {
        let (value, gate) = xr.split_at(h);
        let mut j = 0;
        // SAFETY (all loads and stores below): every access is at lanes j..j+8 (or j..j+16)
        // with that end ≤ h, inside `value`, `gate` and `yr`, each h long.
        unsafe {
            while j + 16 <= h {
                let (vp, gp, yp) =
                    (value.as_ptr().add(j), gate.as_ptr().add(j), yr.as_mut_ptr().add(j));
                let r0 = swiglu8(_mm256_loadu_ps(vp), _mm256_loadu_ps(gp));
                let r1 = swiglu8(_mm256_loadu_ps(vp.add(8)), _mm256_loadu_ps(gp.add(8)));
                _mm256_storeu_ps(yp, r0);
                _mm256_storeu_ps(yp.add(8), r1);
                j += 16;
            }
            while j + 8 <= h {
                let r = swiglu8(
                    _mm256_loadu_ps(value.as_ptr().add(j)),
                    _mm256_loadu_ps(gate.as_ptr().add(j)),
                );
                _mm256_storeu_ps(yr.as_mut_ptr().add(j), r);
                j += 8;
            }
        }
        if j < h {
            // The last h % 8 lanes through a zero-padded vector: same arithmetic as the others.
            let (mut vb, mut gb, mut out) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
            let rest = h - j;
            vb[..rest].copy_from_slice(&value[j..]);
            gb[..rest].copy_from_slice(&gate[j..]);
            // SAFETY: 8-lane loads and store on local arrays of 8.
            unsafe {
                let r = swiglu8(_mm256_loadu_ps(vb.as_ptr()), _mm256_loadu_ps(gb.as_ptr()));
                _mm256_storeu_ps(out.as_mut_ptr(), r);
            }
            yr[j..].copy_from_slice(&out[..rest]);
        }
    }
}

/// dx [R, 2h] (+= when `accumulate`) the gradient of value·silu(gate) given dy [R, h].
///
/// # Safety
/// The CPU must support AVX2 and FMA. `x.len() == dx.len() == 2·dy.len()`, `dy.len()` a multiple
/// of `h`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_backward_rows(
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
        // SAFETY (loads and stores below): lanes j..j+8 with j + 8 ≤ h, inside each h-long row part.
        unsafe {
            while j + 8 <= h {
                let (dvp, dgp) = (dvalue.as_mut_ptr().add(j), dgate.as_mut_ptr().add(j));
                let (dv, dg) = swiglu_grad8(
                    _mm256_loadu_ps(value.as_ptr().add(j)),
                    _mm256_loadu_ps(gate.as_ptr().add(j)),
                    _mm256_loadu_ps(dyr.as_ptr().add(j)),
                );
                if accumulate {
                    _mm256_storeu_ps(dvp, _mm256_add_ps(_mm256_loadu_ps(dvp), dv));
                    _mm256_storeu_ps(dgp, _mm256_add_ps(_mm256_loadu_ps(dgp), dg));
                } else {
                    _mm256_storeu_ps(dvp, dv);
                    _mm256_storeu_ps(dgp, dg);
                }
                j += 8;
            }
        }
        if j < h {
            // The last h % 8 lanes through zero-padded vectors: same arithmetic as the others.
            let rest = h - j;
            let pad = |src: &[f32]| {
                let mut b = [0.0f32; 8];
                b[..rest].copy_from_slice(&src[j..]);
                b
            };
            let (vb, gb, db) = (pad(value), pad(gate), pad(dyr));
            let (mut dvb, mut dgb) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: 8-lane loads and stores on local arrays of 8.
            unsafe {
                let (dv, dg) = swiglu_grad8(
                    _mm256_loadu_ps(vb.as_ptr()),
                    _mm256_loadu_ps(gb.as_ptr()),
                    _mm256_loadu_ps(db.as_ptr()),
                );
                _mm256_storeu_ps(dvb.as_mut_ptr(), dv);
                _mm256_storeu_ps(dgb.as_mut_ptr(), dg);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn has_avx2_fma() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[test]
    fn exp8_is_accurate_and_keeps_nan() {
        if !has_avx2_fma() {
            eprintln!("skipped: no AVX2+FMA on this CPU");
            return;
        }
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|l| x + l as f32 * 0.0017);
            let mut out = [0.0f32; 8];
            // SAFETY: AVX2 and FMA checked above; 8-lane load and store on local arrays.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (&xi, &o) in xs.iter().zip(&out) {
                let want = (xi as f64).exp();
                worst = worst.max(((o as f64 - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        let xs = [f32::NAN, f32::NEG_INFINITY, 88.7, 1000.0, -1000.0, 0.0, 1.0, -1.0];
        let mut out = [0.0f32; 8];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
        assert!(out[0].is_nan());
        assert!(out[1] < 1e-37 && out[4] < 1e-37);
        assert!(out[2].is_finite() && out[3].is_finite() && out[3] > 1e38);
        assert_eq!(out[5], 1.0);
    }

    #[test]
    fn swiglu_rows_matches_f64_at_every_width_and_extremes() {
        if !has_avx2_fma() {
            eprintln!("skipped: no AVX2+FMA on this CPU");
            return;
        }
        for h in 1..=41 {
            let rows = 3;
            let x: Vec<f32> =
                (0..rows * 2 * h).map(|i| ((i * 7919) % 2003) as f32 / 100.0 - 10.0).collect();
            let mut y = vec![0.0f32; rows * h];
            // SAFETY: AVX2 and FMA checked above; x is 2·y long, y a multiple of h.
            unsafe { swiglu_rows(&x, &mut y, h) };
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
        unsafe { swiglu_rows(&x, &mut y, 4) };
        assert!((y[0] - 100.0).abs() < 1e-4 && y[1].abs() < 1e-30, "{y:?}");
        assert!(y[2].is_nan() && y[3] == 0.0, "{y:?}");
    }

    #[test]
    fn swiglu_backward_rows_matches_f64_and_accumulates() {
        if !has_avx2_fma() {
            eprintln!("skipped: no AVX2+FMA on this CPU");
            return;
        }
        for h in 1..=41 {
            let rows = 3;
            let x: Vec<f32> =
                (0..rows * 2 * h).map(|i| ((i * 7919) % 2003) as f32 / 200.0 - 5.0).collect();
            let dy: Vec<f32> =
                (0..rows * h).map(|i| ((i * 104_729) % 997) as f32 / 500.0 - 1.0).collect();
            let mut dx = vec![0.0f32; rows * 2 * h];
            // SAFETY: AVX2 and FMA checked above; shapes as required.
            unsafe { swiglu_backward_rows(&x, &dy, &mut dx, h, false) };
            let mut acc = vec![0.5f32; rows * 2 * h];
            // SAFETY: as above.
            unsafe { swiglu_backward_rows(&x, &dy, &mut acc, h, true) };
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
