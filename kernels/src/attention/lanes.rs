//! Attention's eight-lane vector layer: the [`Lanes`] trait, its portable and AVX2+FMA
//! implementations, and the lane-wise `exp` built on it.

/// Vector width in f32 lanes.
pub(crate) const W: usize = 8;

/// Eight f32 lanes. Implementations are zero-sized tokens; all methods are `#[inline(always)]`
/// so generic kernels inline into a `#[target_feature]` entry point and get real SIMD code.
pub(crate) trait Lanes: Copy {
    type V: Copy;
    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p..p+8` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p..p+8` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c` (fused where the hardware has FMA).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Round to nearest, ties to even.
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for integer-valued `n` in `[-126, 127]`.
    fn pow2i(self, n: Self::V) -> Self::V;
    /// `v` where `x >= thr`, else 0.
    fn keep_ge(self, v: Self::V, x: Self::V, thr: Self::V) -> Self::V;
    fn reduce_max(self, v: Self::V) -> f32;
    fn reduce_sum(self, v: Self::V) -> f32;
}

/// Portable fallback: plain arrays (LLVM turns most of it into SSE).
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Lanes for Portable {
    type V = [f32; W];
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; W]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees p..p+8 is readable; read_unaligned has no alignment need.
        unsafe { (p as *const [f32; W]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees p..p+8 is writable.
        unsafe { (p as *mut [f32; W]).write_unaligned(v) }
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // Unfused: a libm fmaf call per lane would be far slower than the rounding is worth.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn min(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn round(self, a: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].round_ties_even())
    }
    #[inline(always)]
    fn pow2i(self, n: Self::V) -> Self::V {
        std::array::from_fn(|i| f32::from_bits(((n[i] as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    fn keep_ge(self, v: Self::V, x: Self::V, thr: Self::V) -> Self::V {
        std::array::from_fn(|i| if x[i] >= thr[i] { v[i] } else { 0.0 })
    }
    #[inline(always)]
    fn reduce_max(self, v: Self::V) -> f32 {
        // Same pairing as the AVX version: halves, then quarters, then pairs.
        let h: [f32; 4] = std::array::from_fn(|i| v[i].max(v[i + 4]));
        h[0].max(h[2]).max(h[1].max(h[3]))
    }
    #[inline(always)]
    fn reduce_sum(self, v: Self::V) -> f32 {
        let h: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
        (h[0] + h[2]) + (h[1] + h[3])
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Proof that the CPU has AVX2 and FMA: only [`Avx2Fma::detect`] constructs it.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2Fma {
        _private: (),
    }

    impl Avx2Fma {
        /// The token when the one ISA decision allows AVX2 + FMA (and the CPU has them).
        pub(crate) fn detect() -> Option<Self> {
            if crate::microkernel::avx2_allowed()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                Some(Avx2Fma { _private: () })
            } else {
                None
            }
        }
    }

    // SAFETY (every block below): an `Avx2Fma` value exists only after `detect` confirmed AVX2 and
    // FMA at run time, so the intrinsics are supported; pointer validity is the caller's contract.
    impl Lanes for Avx2Fma {
        type V = __m256;
        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            // SAFETY: AVX present (see above).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            // SAFETY: AVX present; caller guarantees p..p+8 readable; loadu needs no alignment.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            // SAFETY: AVX present; caller guarantees p..p+8 writable.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: FMA present.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn round(self, a: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn pow2i(self, n: __m256) -> __m256 {
            // SAFETY: AVX2 present (256-bit integer add and shift).
            unsafe {
                let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased))
            }
        }
        #[inline(always)]
        fn keep_ge(self, v: __m256, x: __m256, thr: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_GE_OQ>(x, thr)) }
        }
        #[inline(always)]
        fn reduce_max(self, v: __m256) -> f32 {
            // SAFETY: AVX present.
            unsafe {
                let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let q = _mm_max_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_max_ss(q, _mm_shuffle_ps::<0b01>(q, q)))
            }
        }
        #[inline(always)]
        fn reduce_sum(self, v: __m256) -> f32 {
            // SAFETY: AVX present.
            unsafe {
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<0b01>(q, q)))
            }
        }
    }
}

/// `exp(x)` lane-wise (Cephes-style: 2^n · p(r), |r| ≤ ln2/2, ~1 ulp). Inputs below −87 give
/// exactly 0 (masked scores are −∞), inputs above 88 are clamped.
#[inline(always)]
pub(crate) fn exp_lanes<L: Lanes>(l: L, x: L::V) -> L::V {
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
