//! The one SIMD layer of the kernels beyond the GEMM micro-kernels: eight f32 lanes behind the
//! [`Lanes`] trait, with one implementation per ISA.
//!
//! - [`Portable`]: plain `[f32; 8]` arrays (LLVM turns most of it into SSE); `mul_add` unfused.
//! - [`avx::Avx2Fma`]: AVX2 + FMA intrinsics. The value is a *token*: only
//!   [`Avx2Fma::detect`](avx::Avx2Fma::detect) (the one ISA decision, [`crate::microkernel::isa`])
//!   and [`Avx2Fma::for_kind`](avx::Avx2Fma::for_kind) (a caller's explicit kernel choice, as
//!   the GEMV's) construct it, and only after the CPU confirmed AVX2 and FMA, so its arithmetic
//!   is safe to call.
//!
//! Kernels are written once, generic over `L: Lanes`, and instantiated per token: the AVX2 copy
//! through a `#[target_feature(enable = "avx2,fma")]` entry point into which every method
//! (`#[inline(always)]`) inlines. Loads and stores come in two forms: `read`/`write` on slices
//! (bounds-checked, safe) and `load`/`store` on raw pointers for kernels whose pointer
//! arithmetic is checked once per block.

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
    /// The first eight floats of `s` (panics when `s` is shorter).
    #[inline(always)]
    fn read(self, s: &[f32]) -> Self::V {
        let s = &s[..W];
        // SAFETY: `s` holds exactly eight readable floats.
        unsafe { self.load(s.as_ptr()) }
    }
    /// Writes `v` to the first eight floats of `s` (panics when `s` is shorter).
    #[inline(always)]
    fn write(self, s: &mut [f32], v: Self::V) {
        let s = &mut s[..W];
        // SAFETY: `s` holds exactly eight writable floats.
        unsafe { self.store(s.as_mut_ptr(), v) }
    }
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c` (fused where the hardware has FMA).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c − a·b` (fused where the hardware has FMA).
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `−a` (the sign bit flipped).
    fn neg(self, a: Self::V) -> Self::V;
    /// `1/a` to about 23 bits (AVX: the 12-bit estimate and one Newton step; portable: exact).
    fn recip(self, a: Self::V) -> Self::V;
    /// `x·2^n` where `t = y + magic` (magic = 1.5·2^23) holds the integer n = round(y) in its low
    /// mantissa bits; 2^n as two factors so n = 128 does not overflow the exponent field.
    fn mul_pow2_rounded(self, x: Self::V, t: Self::V, magic: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Round to nearest, ties to even.
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for integer-valued `n` in `[-126, 127]`.
    fn pow2i(self, n: Self::V) -> Self::V;
    /// `v` where `x >= thr`, else 0.
    fn keep_ge(self, v: Self::V, x: Self::V, thr: Self::V) -> Self::V;
    /// Largest lane: halves, then quarters, then pairs.
    fn reduce_max(self, v: Self::V) -> f32;
    /// Sum of the lanes in one fixed order: `((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7))`.
    fn reduce_sum(self, v: Self::V) -> f32;
}

/// Portable lanes: plain arrays.
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
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| c[i] - a[i] * b[i])
    }
    #[inline(always)]
    fn neg(self, a: Self::V) -> Self::V {
        std::array::from_fn(|i| -a[i])
    }
    #[inline(always)]
    fn recip(self, a: Self::V) -> Self::V {
        std::array::from_fn(|i| 1.0 / a[i])
    }
    #[inline(always)]
    fn mul_pow2_rounded(self, x: Self::V, t: Self::V, magic: Self::V) -> Self::V {
        std::array::from_fn(|i| {
            let n = t[i].to_bits().wrapping_sub(magic[i].to_bits()) as i32;
            let half = n >> 1;
            let s1 = f32::from_bits(((half + 127) as u32) << 23);
            let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
            x[i] * s1 * s2
        })
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
    use crate::microkernel::KernelKind;
    use std::arch::x86_64::*;

    /// Proof that the CPU has AVX2 and FMA: only [`Avx2Fma::detect`] and [`Avx2Fma::for_kind`]
    /// construct it.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2Fma {
        _private: (),
    }

    impl Avx2Fma {
        /// The token when the one ISA decision allows AVX2 + FMA (and the CPU has them).
        pub(crate) fn detect() -> Option<Self> {
            Self::when(crate::microkernel::avx2_allowed())
        }

        /// The token when `kind` (a caller's explicit kernel choice) is an AVX family this CPU
        /// runs.
        pub(crate) fn for_kind(kind: KernelKind) -> Option<Self> {
            Self::when(kind != KernelKind::Portable && kind.is_available())
        }

        fn when(allowed: bool) -> Option<Self> {
            (allowed && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
                .then_some(Avx2Fma { _private: () })
        }
    }

    // SAFETY (every block below): an `Avx2Fma` value exists only after `when` confirmed AVX2 and
    // FMA at run time, so the intrinsics are supported; pointer validity is the caller's contract.
    /// The eight lanes folded with `op`: halves, then quarters, then pairs (lane 0 of the last
    /// step is what the scalar `_ss` form of `op` would give).
    #[inline(always)]
    fn fold(v: __m256, op: impl Fn(__m128, __m128) -> __m128) -> f32 {
        // SAFETY: called only from `Avx2Fma` methods (AVX present).
        unsafe {
            let h = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let q = op(h, _mm_movehl_ps(h, h));
            _mm_cvtss_f32(op(q, _mm_shuffle_ps::<0b01>(q, q)))
        }
    }

    /// Lane-wise binary operations, one AVX instruction each.
    macro_rules! binary_ops {
        ($($name:ident => $op:ident),* $(,)?) => {$(
            #[inline(always)]
            fn $name(self, a: __m256, b: __m256) -> __m256 {
                // SAFETY: AVX present (see above).
                unsafe { $op(a, b) }
            }
        )*};
    }

    impl Lanes for Avx2Fma {
        type V = __m256;
        binary_ops!(
            add => _mm256_add_ps,
            sub => _mm256_sub_ps,
            mul => _mm256_mul_ps,
            max => _mm256_max_ps,
            min => _mm256_min_ps,
        );
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
        fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: FMA present.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn neg_mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: FMA present.
            unsafe { _mm256_fnmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn neg(self, a: __m256) -> __m256 {
            // SAFETY: AVX present.
            unsafe { _mm256_xor_ps(a, _mm256_set1_ps(-0.0)) }
        }
        #[inline(always)]
        fn recip(self, a: __m256) -> __m256 {
            // SAFETY: AVX and FMA present.
            unsafe {
                let r0 = _mm256_rcp_ps(a);
                _mm256_mul_ps(r0, _mm256_fnmadd_ps(a, r0, _mm256_set1_ps(2.0)))
            }
        }
        #[inline(always)]
        fn mul_pow2_rounded(self, x: __m256, t: __m256, magic: __m256) -> __m256 {
            // SAFETY: AVX2 present (256-bit integer arithmetic and shifts).
            unsafe {
                let n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
                let half = _mm256_srai_epi32::<1>(n);
                let bias = _mm256_set1_epi32(127);
                let s1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias));
                let s2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(n, half), bias));
                _mm256_mul_ps(_mm256_mul_ps(x, _mm256_castsi256_ps(s1)), _mm256_castsi256_ps(s2))
            }
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
            fold(v, |a, b| unsafe { _mm_max_ps(a, b) })
        }
        #[inline(always)]
        fn reduce_sum(self, v: __m256) -> f32 {
            // SAFETY: AVX present.
            fold(v, |a, b| unsafe { _mm_add_ps(a, b) })
        }
    }
}
