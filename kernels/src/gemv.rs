//! Matrix-vector products (`M = 1`, e.g. decoding one token; `N = 1` is transposed into it).
//!
//! Memory-bound: each weight is read once, so the kernels stream W with enough independent
//! accumulators to hide FMA latency, and split only over output columns (independent) on the pool.

use rayon::prelude::*;

use crate::mat::Gemm;
#[cfg(target_arch = "x86_64")]
use crate::simd::avx::Avx2Fma;
use crate::simd::{Lanes, Portable};

/// Most columns per work item (the row-streaming kernel keeps that many sums in L1).
const COLS_PER_ITEM: usize = 2048;
/// Fewest columns per parallel work item.
const MIN_COLS_PER_ITEM: usize = 128;
/// `k·n` below which threads are not used.
const PAR_MIN: usize = 1 << 16;
/// Weight rows streamed together by the row kernel.
const ROWS: usize = 4;

/// `y = alpha·x·W + beta·y` when `a` or `b` is a vector; false (nothing done) if the matrix has
/// neither contiguous rows nor contiguous columns.
// a [1,k] · b [k,n] -> c [1,n]   (or a [m,k] · b [k,1] -> c [m,1], run transposed)
pub(crate) fn gemv(g: Gemm<'_>) -> bool {
    let g = if g.a.rows == 1 {
        g
    } else if g.b.cols == 1 {
        g.t()
    } else {
        return false;
    };
    let Gemm { kind, alpha, a: x, b: w, beta, c: y } = g;
    let (k, n) = (w.rows, w.cols);
    let rows_contiguous = w.col_stride == 1;
    if !rows_contiguous && w.row_stride != 1 {
        return false;
    }
    // x contiguous (one small copy when strided).
    let x_owned: Vec<f32>;
    let xs: &[f32] = if x.col_stride == 1 {
        &x.data[..k]
    } else {
        x_owned = (0..k).map(|p| x.data[p * x.col_stride]).collect();
        &x_owned
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 = Avx2Fma::for_kind(kind);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kind;
    // Wide items stream long runs of each weight row; with threads, about two items per thread.
    // (Column splits never change a result: every column is computed independently.)
    let threads = if k * n >= PAR_MIN { rayon::current_num_threads() } else { 1 };
    let item = n.div_ceil(threads).next_multiple_of(64).clamp(MIN_COLS_PER_ITEM, COLS_PER_ITEM);
    let run = |j0: usize| {
        let cols = item.min(n - j0);
        let mut out_buf = [0.0f32; COLS_PER_ITEM + 1024];
        // SAFETY: W is a checked view (k × n, here columns j0..j0+cols) and xs has k values; the
        // AVX2 bodies run only with the token that proves AVX2 and FMA.
        unsafe {
            let base = w.data.as_ptr().add(j0 * w.col_stride);
            // Place the sums 2 KiB away from the weights modulo 4 KiB: loads of W rows must not
            // look like they alias the stores of the sums (4K aliasing stalls).
            let gap = (base as usize + 2048).wrapping_sub(out_buf.as_ptr() as usize) % 4096 / 4;
            let out = &mut out_buf[gap..gap + COLS_PER_ITEM];
            let stride = if rows_contiguous { w.row_stride } else { w.col_stride };
            let blk = Block { base, stride, cols, rows_contiguous };
            #[cfg(target_arch = "x86_64")]
            match avx2 {
                Some(l) => column_sums_avx2(l, xs, blk, out),
                None => column_sums(Portable, xs, blk, out),
            }
            #[cfg(not(target_arch = "x86_64"))]
            column_sums(Portable, xs, blk, out);
            for (jj, v) in out.iter().enumerate().take(cols) {
                // SAFETY: column j0 + jj < n of the checked C view, written by this item only.
                let p = y.elem(0, j0 + jj);
                *p = if beta == 0.0 { alpha * v } else { alpha * v + beta * *p };
            }
        }
    };
    let starts: Vec<usize> = (0..n).step_by(item).collect();
    if starts.len() > 1 && threads > 1 {
        starts.into_par_iter().for_each(run);
    } else {
        starts.into_iter().for_each(run);
    }
    true
}

/// `cols` columns of W from `base`: W[p, j] at `base + p·stride + j` when `rows_contiguous`, else
/// at `base + j·stride + p`.
#[derive(Clone, Copy)]
struct Block {
    base: *const f32,
    stride: usize,
    cols: usize,
    rows_contiguous: bool,
}

/// `out[j] = Σ_p x[p]·W[p, j]`, j < cols, by the body that streams W along its contiguous lines.
///
/// # Safety
/// W must be readable for p < x.len(), j < cols; `out.len() ≥ cols`.
#[inline(always)]
unsafe fn column_sums<L: Lanes>(l: L, x: &[f32], blk: Block, out: &mut [f32]) {
    // SAFETY: forwarded caller contract.
    unsafe {
        if blk.rows_contiguous {
            rows_body(l, x, blk, out)
        } else {
            dots_body(l, x, blk, out)
        }
    }
}

/// [`column_sums`] compiled with AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn column_sums_avx2(l: Avx2Fma, x: &[f32], blk: Block, out: &mut [f32]) {
    // SAFETY: forwarded caller contract; AVX2+FMA enabled here.
    unsafe { column_sums(l, x, blk, out) }
}

/// [`column_sums`] for W rows contiguous (`W[p, j]` at `w + p·rs + j`, rs = `blk.stride`):
/// eight rows of W at a time are streamed contiguously into the output (kept in L1), so each weight
/// page is read in long runs. Every column sums its terms in p order with fused multiply-adds
/// (vector or scalar lanes alike), so the result does not depend on how columns are split.
///
/// # Safety
/// W must be readable for p < x.len(), j < cols; `out.len() ≥ cols`.
#[inline(always)]
unsafe fn rows_body<L: Lanes>(l: L, x: &[f32], blk: Block, out: &mut [f32]) {
    let Block { base: w, stride: rs, cols, .. } = blk;
    let k = x.len();
    let cols8 = cols / 8 * 8;
    let o = out.as_mut_ptr();
    out[..cols].fill(0.0);
    // SAFETY (whole body): reads stay inside the k × cols block of W, writes inside out[..cols].
    unsafe {
        let mut p = 0;
        while p + ROWS <= k {
            let xs: [L::V; ROWS] = core::array::from_fn(|q| l.splat(x[p + q]));
            let rows: [*const f32; ROWS] = core::array::from_fn(|q| w.add((p + q) * rs));
            let mut j = 0;
            while j < cols8 {
                let mut acc = l.load(o.add(j));
                for q in 0..ROWS {
                    acc = l.mul_add(xs[q], l.load(rows[q].add(j)), acc);
                }
                l.store(o.add(j), acc);
                j += 8;
            }
            for jj in cols8..cols {
                let mut acc = *o.add(jj);
                for (q, r) in rows.iter().enumerate() {
                    acc = x[p + q].mul_add(*r.add(jj), acc);
                }
                *o.add(jj) = acc;
            }
            p += ROWS;
        }
        while p < k {
            let xv = l.splat(x[p]);
            let r0 = w.add(p * rs);
            let mut j = 0;
            while j < cols8 {
                l.store(o.add(j), l.mul_add(xv, l.load(r0.add(j)), l.load(o.add(j))));
                j += 8;
            }
            for jj in cols8..cols {
                *o.add(jj) = x[p].mul_add(*r0.add(jj), *o.add(jj));
            }
            p += 1;
        }
    }
}

/// [`column_sums`] for W columns contiguous (`W[p, j]` at `w + j·cs + p`, cs = `blk.stride`): four
/// columns at a time, two 8-lane accumulators each, horizontal sums at the end.
///
/// # Safety
/// W must be readable for p < x.len(), j < cols; `out.len() ≥ cols`.
#[inline(always)]
unsafe fn dots_body<L: Lanes>(l: L, x: &[f32], blk: Block, out: &mut [f32]) {
    let Block { base: w, stride: cs, cols, .. } = blk;
    let k = x.len();
    let xp = x.as_ptr();
    let k16 = k / 16 * 16;
    let k8 = k / 8 * 8;
    // Same summation order for every column (4-column group or single), so results do not depend
    // on the column's position.
    macro_rules! columns {
        ($c:literal, $j:expr) => {{
            let mut acc = [[l.splat(0.0); 2]; $c];
            let col = |q: usize| w.add(($j + q) * cs);
            let mut p = 0;
            while p < k16 {
                let x0 = l.load(xp.add(p));
                let x1 = l.load(xp.add(p + 8));
                for q in 0..$c {
                    acc[q][0] = l.mul_add(x0, l.load(col(q).add(p)), acc[q][0]);
                    acc[q][1] = l.mul_add(x1, l.load(col(q).add(p + 8)), acc[q][1]);
                }
                p += 16;
            }
            if p < k8 {
                let x0 = l.load(xp.add(p));
                for q in 0..$c {
                    acc[q][0] = l.mul_add(x0, l.load(col(q).add(p)), acc[q][0]);
                }
            }
            for q in 0..$c {
                let mut s = l.reduce_sum(l.add(acc[q][0], acc[q][1]));
                for pp in k8..k {
                    s = (*xp.add(pp)).mul_add(*col(q).add(pp), s);
                }
                out[$j + q] = s;
            }
        }};
    }
    // SAFETY (whole body): reads stay inside x and the k × cols block of W.
    unsafe {
        let mut j = 0;
        while j + 4 <= cols {
            columns!(4, j);
            j += 4;
        }
        while j < cols {
            columns!(1, j);
            j += 1;
        }
    }
}
