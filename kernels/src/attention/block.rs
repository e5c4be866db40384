//! The one product kernel of attention: C[r, 0..8·nv] (+)= Σ_k A[r, k] · B[k, 0..8·nv], causally
//! limited, register-tiled over [`Lanes`].

use crate::simd::{Lanes, W};

/// How causality limits a block product. `diag = i0 − j0 ≥ 0` (query block start minus key block
/// start); query row r (local) may see key columns c (local) with `c < diag + r + 1`.
#[derive(Clone, Copy)]
pub(super) enum Causal {
    /// C rows are query rows, C columns key columns (S = Q·Kᵀ): limit the columns computed.
    Cols,
    /// C rows are query rows, k runs over key columns (O += P·V): limit k.
    KeysBelow,
    /// C rows are key rows, k runs over query rows (dV += Pᵀ·dO): start k at `c − diag`.
    QueriesFrom,
}

/// Register tile: R rows × NV vectors of C, k in `k0..k1`.
///
/// # Safety
/// For r < R, k in k0..k1, v < NV: `a[r*ars + k*acs]`, `b[k*bs + 8v .. +8]` readable and
/// `c[r*cs + 8v .. +8]` writable (and readable if `accumulate`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<L: Lanes, const R: usize, const NV: usize>(
    l: L,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    bs: usize,
    k0: usize,
    k1: usize,
    c: *mut f32,
    cs: usize,
    accumulate: bool,
) {
    let zero = l.splat(0.0);
    let mut acc = [[zero; NV]; R];
    for k in k0..k1 {
        let mut bv = [zero; NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: in bounds by the function contract.
            *bv = unsafe { l.load(b.add(k * bs + v * W)) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the function contract.
            let av = l.splat(unsafe { *a.add(r * ars + k * acs) });
            for v in 0..NV {
                acc_r[v] = l.mul_add(av, bv[v], acc_r[v]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &acc_rv) in acc_r.iter().enumerate() {
            // SAFETY: in bounds by the function contract.
            unsafe {
                let p = c.add(r * cs + v * W);
                let out = if accumulate { l.add(l.load(p), acc_rv) } else { acc_rv };
                l.store(p, out);
            }
        }
    }
}

/// Operand views of one block product (see [`block_product`]).
pub(super) struct Operands<'a> {
    pub(super) a: &'a [f32],
    pub(super) a_row_stride: usize,
    pub(super) a_col_stride: usize,
    pub(super) b: &'a [f32],
    pub(super) b_row_stride: usize,
}

impl<'a> Operands<'a> {
    /// A with strides `(a_row_stride, a_col_stride)` times B with rows `b_row_stride` apart.
    pub(super) fn new(
        a: &'a [f32],
        a_strides: (usize, usize),
        b: &'a [f32],
        b_row_stride: usize,
    ) -> Self {
        let (a_row_stride, a_col_stride) = a_strides;
        Operands { a, a_row_stride, a_col_stride, b, b_row_stride }
    }
}

/// C (m rows, `n_cols` columns, padded to whole vectors) (+)= A (m × k_len) · B (k_len × n_cols),
/// restricted by `causal` with offset `diag`. Entries outside the causal region are not written
/// (Cols) or the excluded terms are skipped (KeysBelow, QueriesFrom; their A entries must be 0).
// A [m, k_len] (strided), B [k_len, 8·nv] (row stride), C [m, 8·nv] (row stride cs)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_product<L: Lanes>(
    l: L,
    causal: Causal,
    diag: usize,
    m: usize,
    k_len: usize,
    n_cols: usize,
    ops: &Operands<'_>,
    c: &mut [f32],
    cs: usize,
    accumulate: bool,
) {
    let n_vecs = n_cols.div_ceil(W);
    if m == 0 || n_vecs == 0 {
        return;
    }
    if k_len > 0 {
        assert!((m - 1) * ops.a_row_stride + (k_len - 1) * ops.a_col_stride < ops.a.len());
        assert!((k_len - 1) * ops.b_row_stride + n_vecs * W <= ops.b.len());
    }
    assert!(cs >= n_vecs * W && (m - 1) * cs + n_vecs * W <= c.len());
    let (a, b, cp) = (ops.a.as_ptr(), ops.b.as_ptr(), c.as_mut_ptr());
    let (ars, acs, bs) = (ops.a_row_stride, ops.a_col_stride, ops.b_row_stride);
    let mut r0 = 0;
    while r0 < m {
        let rows = match m - r0 {
            6.. => 6,
            4 | 5 => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let r1 = r0 + rows;
        let (k0, k1, nv) = match causal {
            Causal::Cols => (0, k_len, (diag + r1).min(n_cols).div_ceil(W)),
            Causal::KeysBelow => (0, k_len.min(diag + r1), n_vecs),
            Causal::QueriesFrom => (r0.saturating_sub(diag).min(k_len), k_len, n_vecs),
        };
        let mut v0 = 0;
        while v0 < nv {
            let chunk = if nv - v0 >= 2 { 2 } else { 1 };
            // SAFETY: rows r0..r1 < m, k in k0..k1 ⊆ 0..k_len, vectors v0..v0+chunk ≤ n_vecs:
            // all inside the extents asserted above.
            unsafe {
                let (ap, bp, cq) = (a.add(r0 * ars), b.add(v0 * W), cp.add(r0 * cs + v0 * W));
                macro_rules! run {
                    ($r:literal, $nv:literal) => {
                        tile::<L, $r, $nv>(l, ap, ars, acs, bp, bs, k0, k1, cq, cs, accumulate)
                    };
                }
                match (rows, chunk) {
                    (6, 2) => run!(6, 2),
                    (6, _) => run!(6, 1),
                    (4, 2) => run!(4, 2),
                    (4, _) => run!(4, 1),
                    (2, 2) => run!(2, 2),
                    (2, _) => run!(2, 1),
                    (_, 2) => run!(1, 2),
                    _ => run!(1, 1),
                }
            }
            v0 += chunk;
        }
        r0 = r1;
    }
}

/// Number of key columns query row `r` (local) may see in a block of `jw` keys at offset `diag`.
#[inline(always)]
pub(super) fn visible(diag: usize, r: usize, jw: usize) -> usize {
    (diag + r + 1).min(jw)
}
