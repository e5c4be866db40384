//! Matrix-vector products with bf16 weights (decoding with half the weight traffic).
//!
//! `out[j] = Σ_p x[p]·W[j, p]` for the rows of a linear layer's weight stored as bf16 bits
//! (`W[j, p]` at `w[j·row_stride + p]`), x and the accumulation in f32. A bf16 value is the top
//! half of an f32, so widening is exact and costs one shift in registers: AVX-512 widens 16
//! values per `vpmovzxwd` + `vpslld`, AVX2 8, the portable path builds `wide::f32x8` lanes from
//! the shifted bits. Like the f32 GEMV the kernels are memory-bound: four rows are streamed at a
//! time with two accumulators each, and threads split the rows only for large products.
//!
//! Every row sums its terms in the same order wherever it sits (in a group of four or alone),
//! so splitting the rows over threads never changes a result.
//!
//! Linear layers with bf16 weights ([`linear_bf16`]: `out = x·Wᵀ`, x with any number of rows)
//! run this GEMV for one row (decoding) and the packed GEMM for more, whose B panels are built
//! from the bf16 rows by one of two [`Bf16Path`]s: `Widen` (each weight widened to f32, then the
//! f32 micro-kernel: exact products, the result of the f32 GEMM on the widened weights) or `Dot`
//! (k-pairs of bf16 for `vdpbf16ps`, x rounded to bf16 at packing: twice the products per
//! instruction, on CPUs with avx512_bf16).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::gemm::{packed_loops, view_fits, MatMut, MatRef, OutView};
use crate::mat::Gemm;
use crate::microkernel::{isa, KernelKind};
use crate::pack::BOperand;

pub(crate) mod types;

use types::widen;
pub use types::{bf16_bits, Bf16Error, Bf16Path, Bf16Rows};

/// `rows·k` below which threads are not used (as in the f32 GEMV, counted in weights).
const PAR_MIN: usize = 1 << 16;
/// Fewest rows per parallel work item.
const MIN_ROWS_PER_ITEM: usize = 64;

impl Bf16Path {
    /// Whether the path can run here: `Dot` needs avx512_bf16, `Amx` AMX-BF16 (and the OS's
    /// permission for the tile state), both the avx512 family selected.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Path::Widen => true,
            Bf16Path::Dot => dot_available(),
            #[cfg(target_arch = "x86_64")]
            Bf16Path::Amx => isa() == KernelKind::Avx512 && crate::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Path::Amx => false,
        }
    }
}

/// Whether this CPU has `vdpbf16ps` and the selected family is AVX-512 (`VFFN_KERNEL=avx2` or
/// `portable` means the widen path).
fn dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa() == KernelKind::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 path of [`linear_bf16`], decided once per process: `VFFN_BF16=amx|dot|widen` if set
/// (a path that cannot run here is an error), else the first available of `Amx`, `Dot`, `Widen`.
pub fn selected_bf16_path() -> Result<Bf16Path, Bf16Error> {
    static SELECTED: OnceLock<Result<Bf16Path, Bf16Error>> = OnceLock::new();
    SELECTED
        .get_or_init(|| {
            let name = std::env::var("VFFN_BF16").unwrap_or_default();
            let path = match name.trim().to_ascii_lowercase().as_str() {
                "" => {
                    let best =
                        [Bf16Path::Amx, Bf16Path::Dot].into_iter().find(|p| p.is_available());
                    return Ok(best.unwrap_or(Bf16Path::Widen));
                }
                "widen" => Bf16Path::Widen,
                "dot" => Bf16Path::Dot,
                "amx" => Bf16Path::Amx,
                _ => return Err(Bf16Error::UnknownPath(name)),
            };
            if path.is_available() {
                Ok(path)
            } else {
                Err(Bf16Error::Unavailable(path))
            }
        })
        .clone()
}

/// `out[i, j] = Σ_p x[i, p]·W[j, p]` (`+ out[i, j]` when `accumulate`): x `[m, k]` f32, W bf16
/// rows `[n, k]`, out `[m, n]`. One row of x runs the bf16 GEMV, more the packed GEMM on the
/// [`selected_bf16_path`]. The result never depends on the thread count.
pub fn linear_bf16(
    x: MatRef<'_>,
    w: Bf16Rows<'_>,
    out: MatMut<'_>,
    accumulate: bool,
) -> Result<(), Bf16Error> {
    linear_bf16_with(selected_bf16_path()?, isa(), x, w, out, accumulate)
}

/// [`linear_bf16`] with an explicit path and f32 kernel family (for tests and benchmarks;
/// an unavailable family runs portable code, an unavailable `Dot` is an error).
pub fn linear_bf16_with(
    path: Bf16Path,
    kind: KernelKind,
    x: MatRef<'_>,
    w: Bf16Rows<'_>,
    out: MatMut<'_>,
    accumulate: bool,
) -> Result<(), Bf16Error> {
    w.check()?;
    let (m, k, n) = (x.rows, x.cols, w.rows);
    if w.cols != k || out.rows != m || out.cols != n {
        return Err(Bf16Error::Shape {
            x: [x.rows, x.cols],
            w: [w.rows, w.cols],
            out: [out.rows, out.cols],
        });
    }
    if !view_fits(x.data.len(), m, k, x.row_stride, x.col_stride) {
        return Err(Bf16Error::View("x reaches outside its slice"));
    }
    if !view_fits(out.data.len(), m, n, out.row_stride, out.col_stride) {
        return Err(Bf16Error::View("out reaches outside its slice"));
    }
    if !crate::gemm::distinct_elements(m, n, out.row_stride, out.col_stride) {
        return Err(Bf16Error::View("out has overlapping elements"));
    }
    if !path.is_available() {
        return Err(Bf16Error::Unavailable(path));
    }
    let kind = if kind.is_available() { kind } else { KernelKind::Portable };
    let c = OutView::from_mat(out);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.scale(0.0);
        }
        return Ok(());
    }
    if m == 1 {
        return linear_row(kind, x, w, c, accumulate);
    }
    let b = match path {
        Bf16Path::Widen => BOperand::Bf16Widen(w),
        Bf16Path::Dot => BOperand::Bf16Pairs(w),
        Bf16Path::Amx => {
            #[cfg(target_arch = "x86_64")]
            crate::amx::linear(x, w, c, accumulate);
            return Ok(());
        }
    };
    let kind = if path == Bf16Path::Widen { kind } else { KernelKind::Avx512 };
    let beta = if accumulate { 1.0 } else { 0.0 };
    packed_loops(Gemm { kind, alpha: 1.0, a: x, b, beta, c });
    Ok(())
}

/// One row of x through the GEMV (x and out copied when strided; the sum added to out after).
fn linear_row(
    kind: KernelKind,
    x: MatRef<'_>,
    w: Bf16Rows<'_>,
    c: OutView,
    accumulate: bool,
) -> Result<(), Bf16Error> {
    let (k, n) = (x.cols, w.rows);
    let gathered: Vec<f32>;
    let xs = if x.col_stride == 1 {
        &x.data[..k]
    } else {
        gathered = (0..k).map(|p| x.at(0, p)).collect();
        &gathered
    };
    if !accumulate && c.cs == 1 {
        // SAFETY: the n elements of out's row are contiguous and inside the checked view, and
        // exclusively borrowed by the caller's MatMut.
        let row = unsafe { std::slice::from_raw_parts_mut(c.ptr, n) };
        return gemv_bf16_with(kind, xs, w, row);
    }
    let mut sums = vec![0.0f32; n];
    gemv_bf16_with(kind, xs, w, &mut sums)?;
    for (j, s) in sums.into_iter().enumerate() {
        // SAFETY: (0, j) is inside the checked out view (j < n).
        unsafe {
            let o = c.elem(0, j);
            *o = if accumulate { *o + s } else { s };
        }
    }
    Ok(())
}

/// `out[j] = Σ_p x[p]·W[j, p]` for the rows of `w` (`w.rows == out.len()`, `w.cols ==
/// x.len()`), with the ISA of [`crate::microkernel::isa`] and the current rayon pool.
pub fn gemv_bf16(x: &[f32], w: Bf16Rows<'_>, out: &mut [f32]) -> Result<(), Bf16Error> {
    gemv_bf16_with(crate::microkernel::isa(), x, w, out)
}

/// [`gemv_bf16`] with an explicit kernel family (unavailable families run portable code).
pub fn gemv_bf16_with(
    kind: KernelKind,
    x: &[f32],
    w: Bf16Rows<'_>,
    out: &mut [f32],
) -> Result<(), Bf16Error> {
    w.check()?;
    let (k, rows) = (x.len(), out.len());
    if w.cols != k || w.rows != rows {
        return Err(Bf16Error::Shape { x: [1, k], w: [w.rows, w.cols], out: [1, rows] });
    }
    // A lone row may have any stride (`check` allows it); the bodies step by at least k.
    let row_stride = w.row_stride.max(k);
    let kind = if kind.is_available() { kind } else { KernelKind::Portable };
    let threads = if rows * k >= PAR_MIN { rayon::current_num_threads() } else { 1 };
    let item = rows.div_ceil(2 * threads).next_multiple_of(4).max(MIN_ROWS_PER_ITEM);
    let pairs = Pairs::new(x);
    let run = |(i, chunk): (usize, &mut [f32])| {
        let first = &w.bits[i * item * row_stride..];
        // SAFETY: rows i·item.. of W lie inside `w` (checked above: every row has k values),
        // and the x86 bodies run only when their family was detected (`is_available`).
        unsafe { rows_bf16(kind, x, &pairs, first.as_ptr(), row_stride, chunk) }
    };
    if threads > 1 && rows > item {
        out.par_chunks_mut(item).enumerate().for_each(run);
    } else {
        out.chunks_mut(item).enumerate().for_each(run);
    }
    Ok(())
}

/// x split into its even and odd entries, for the x86 bodies: a 32-bit load of two adjacent
/// bf16 weights holds the even one in its low half (widened by a shift) and the odd one in its
/// high half (widened by masking the low half off), so no lane shuffles are needed.
struct Pairs {
    even: Vec<f32>,
    odd: Vec<f32>,
}

impl Pairs {
    fn new(x: &[f32]) -> Pairs {
        let pairs = x.chunks_exact(2);
        Pairs { even: pairs.clone().map(|p| p[0]).collect(), odd: pairs.map(|p| p[1]).collect() }
    }
}

/// Dispatches one block of rows to the family's body.
///
/// # Safety
/// `out.len()` rows of k = x.len() values at stride `rs` must be readable from `w`; `kind` must
/// be available.
unsafe fn rows_bf16(
    kind: KernelKind,
    x: &[f32],
    pairs: &Pairs,
    w: *const u16,
    rs: usize,
    out: &mut [f32],
) {
    let _ = pairs;
    // SAFETY: forwarded caller contract.
    unsafe {
        match kind {
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => rows_avx512(x, pairs, w, rs, out),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => rows_avx2(x, pairs, w, rs, out),
            _ => rows_portable(x, w, rs, out),
        }
    }
}

/// Portable body: 8 lanes of `wide`, two accumulators per row, rows one at a time.
///
/// # Safety
/// As [`rows_bf16`].
unsafe fn rows_portable(x: &[f32], w: *const u16, rs: usize, out: &mut [f32]) {
    use wide::f32x8;
    let k = x.len();
    let k16 = k / 16 * 16;
    let lanes = |p: *const u16| -> f32x8 {
        // SAFETY: the caller guarantees 8 readable values at p.
        f32x8::from(core::array::from_fn::<f32, 8, _>(|i| widen(unsafe { *p.add(i) })))
    };
    let xv = |p: usize| f32x8::from(<[f32; 8]>::try_from(&x[p..p + 8]).expect("8 values"));
    for (j, o) in out.iter_mut().enumerate() {
        // SAFETY: row j has k readable values at w + j·rs.
        let row = unsafe { w.add(j * rs) };
        let (mut a0, mut a1) = (f32x8::ZERO, f32x8::ZERO);
        let mut p = 0;
        while p < k16 {
            // SAFETY: p + 16 ≤ k.
            a0 = xv(p).mul_add(lanes(unsafe { row.add(p) }), a0);
            a1 = xv(p + 8).mul_add(lanes(unsafe { row.add(p + 8) }), a1);
            p += 16;
        }
        let v = (a0 + a1).to_array();
        let mut s = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
        for (pp, &xp) in x.iter().enumerate().skip(k16) {
            // SAFETY: pp < k.
            s = xp.mul_add(widen(unsafe { *row.add(pp) }), s);
        }
        *o = s;
    }
}

/// The vector operations of the x86 bodies: `pair` loads 2·LANES adjacent bf16 weights as
/// 32-bit words and widens the even ones (low halves, by a shift) and the odd ones (high halves,
/// by masking) — no lane shuffles; `finish` adds the k tail and sums the two accumulators.
#[cfg(target_arch = "x86_64")]
trait PairLanes {
    type V: Copy;
    /// Weights per step (two per lane).
    const STEP: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load_x(p: *const f32) -> Self::V;
    unsafe fn pair(p: *const u16) -> (Self::V, Self::V);
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Σ of both accumulators plus `x[p]·W[p]` for `from ≤ p < k` (`row` = W).
    unsafe fn finish(acc: [Self::V; 2], x: &[f32], row: *const u16, from: usize) -> f32;
}

/// A [`PairLanes`] family from its register type, lanes of bf16 per step and intrinsics (the
/// two x86 families differ only in these names and in `finish`).
#[cfg(target_arch = "x86_64")]
macro_rules! pair_lanes {
    ($family:ident: $v:ident, $step:literal; $zero:ident, $load:ident, $load_words:ident,
     $splat:ident, $shl:ident, $and:ident, $as_ps:ident, $fma:ident;
     finish($acc:pat, $x:ident, $row:ident, $from:ident) $finish:block) => {
        struct $family;

        impl PairLanes for $family {
            type V = std::arch::x86_64::$v;
            const STEP: usize = $step;
            #[inline(always)]
            unsafe fn zero() -> Self::V {
                unsafe { std::arch::x86_64::$zero() }
            }
            #[inline(always)]
            unsafe fn load_x(p: *const f32) -> Self::V {
                unsafe { std::arch::x86_64::$load(p) }
            }
            #[inline(always)]
            unsafe fn pair(p: *const u16) -> (Self::V, Self::V) {
                use std::arch::x86_64::*;
                unsafe {
                    let v = $load_words(p as *const _);
                    let high = $splat(0xFFFF_0000u32 as i32);
                    ($as_ps($shl::<16>(v)), $as_ps($and(v, high)))
                }
            }
            #[inline(always)]
            unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                unsafe { std::arch::x86_64::$fma(a, b, c) }
            }
            #[inline(always)]
            unsafe fn finish(
                $acc: [Self::V; 2],
                $x: &[f32],
                $row: *const u16,
                $from: usize,
            ) -> f32 {
                $finish
            }
        }
    };
}

// SAFETY (all methods): only called from `rows_avx2` (AVX2 + FMA enabled, detected) with the
// caller's pointer guarantees.
#[cfg(target_arch = "x86_64")]
pair_lanes! {
    Avx2: __m256, 16; _mm256_setzero_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_set1_epi32,
    _mm256_slli_epi32, _mm256_and_si256, _mm256_castsi256_ps, _mm256_fmadd_ps;
    finish(acc, x, row, from) {
        use std::arch::x86_64::*;
        unsafe {
            let v = _mm256_add_ps(acc[0], acc[1]);
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut s = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)));
            for (p, &xp) in x.iter().enumerate().skip(from) {
                s = xp.mul_add(widen(*row.add(p)), s);
            }
            s
        }
    }
}

// SAFETY (all methods): only called from `rows_avx512` (AVX-512F + BW enabled, detected) with
// the caller's pointer guarantees; masked loads touch only the lanes below k.
#[cfg(target_arch = "x86_64")]
pair_lanes! {
    Avx512: __m512, 32; _mm512_setzero_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32,
    _mm512_slli_epi32, _mm512_and_si512, _mm512_castsi512_ps, _mm512_fmadd_ps;
    finish(mut acc, x, row, from) {
        use std::arch::x86_64::*;
        unsafe {
            // Up to two masked 16-lane steps cover the k − from < 32 remaining values.
            let mut at = from;
            for a in acc.iter_mut() {
                let rest = (x.len() - at).min(16);
                if rest == 0 {
                    break;
                }
                let m = ((1u32 << rest) - 1) as __mmask16;
                let h = _mm256_maskz_loadu_epi16(m, row.add(at) as *const i16);
                let wv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
                *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(at)), wv, *a);
                at += rest;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
        }
    }
}

/// The x86 body: four rows at a time, an even and an odd accumulator each, prefetching the next
/// group of rows (same columns) so their streams are under way before they are read.
///
/// # Safety
/// As [`rows_bf16`], and `S`'s instructions must be enabled and available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_pairs<S: PairLanes>(
    x: &[f32],
    pairs: &Pairs,
    w: *const u16,
    rs: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let k = x.len();
    let steps = k / S::STEP * S::STEP;
    let (xe, xo) = (pairs.even.as_ptr(), pairs.odd.as_ptr());
    macro_rules! rows {
        ($c:literal, $j:expr) => {{
            let row = |q: usize| w.add(($j + q) * rs);
            let mut acc = [[S::zero(); 2]; $c];
            let mut p = 0;
            while p < steps {
                let x0 = S::load_x(xe.add(p / 2));
                let x1 = S::load_x(xo.add(p / 2));
                for q in 0..$c {
                    // A prefetch never faults: the address may lie past the end.
                    _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(($j + q + $c) * rs + p) as *const i8);
                    let (even, odd) = S::pair(row(q).add(p));
                    acc[q][0] = S::fma(x0, even, acc[q][0]);
                    acc[q][1] = S::fma(x1, odd, acc[q][1]);
                }
                p += S::STEP;
            }
            for q in 0..$c {
                out[$j + q] = S::finish(acc[q], x, row(q), steps);
            }
        }};
    }
    // SAFETY (whole body): steps read row values p..p+STEP and pairs p/2..p/2+STEP/2 with
    // p + STEP ≤ k (so within k/2 pairs); `finish` reads the values steps..k.
    unsafe {
        let mut j = 0;
        while j + 4 <= out.len() {
            rows!(4, j);
            j += 4;
        }
        while j < out.len() {
            rows!(1, j);
            j += 1;
        }
    }
}

/// # Safety
/// As [`rows_bf16`], and AVX2 + FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(x: &[f32], pairs: &Pairs, w: *const u16, rs: usize, out: &mut [f32]) {
    // SAFETY: forwarded caller contract; AVX2 + FMA enabled here.
    unsafe { rows_pairs::<Avx2>(x, pairs, w, rs, out) }
}

/// # Safety
/// As [`rows_bf16`], and AVX-512F and BW must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512(x: &[f32], pairs: &Pairs, w: *const u16, rs: usize, out: &mut [f32]) {
    // SAFETY: forwarded caller contract; AVX-512F and BW enabled here.
    unsafe { rows_pairs::<Avx512>(x, pairs, w, rs, out) }
}
