//! add, sub, mul (with suffix broadcast), scale, scale_rows, sum, mean, mean_rows.

use rayon::prelude::*;

use super::{map1_into, map2, map2_into, reduce_rows_into, row_dots_into, sum_f64, TASK};
use crate::pool::Buffer;
use crate::tape::{GradSlot, Tape};
use crate::tensor::Tensor;

/// Checks that `b`'s shape equals `a`'s or is a suffix of it; returns b's element count.
fn broadcast_len(op: &str, a: &Tensor, b: &Tensor) -> usize {
    let (sa, sb) = (a.shape(), b.shape());
    assert!(
        sb.len() <= sa.len() && sa[sa.len() - sb.len()..] == *sb,
        "{op}: shape {sb:?} does not broadcast to {sa:?}"
    );
    b.numel()
}

/// `out[r, c] = f(a[r, c], b[c])` over rows of width `bn` (bn = a.len() when shapes are equal).
fn map_bcast(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    if a.len() == b.len() {
        return map2(a, b, out, f);
    }
    let bn = b.len();
    let rpt = (TASK / bn.max(1)).max(1) * bn;
    out.par_chunks_mut(rpt).zip(a.par_chunks(rpt)).for_each(|(o, a)| {
        for (or, ar) in o.chunks_exact_mut(bn).zip(a.chunks_exact(bn)) {
            or.iter_mut().zip(ar.iter().zip(b)).for_each(|(o, (&x, &y))| *o = f(x, y));
        }
    });
}

enum Binary {
    Add,
    Sub,
    Mul,
}

impl Tape {
    fn binary(&mut self, kind: Binary, a: &Tensor, b: &Tensor) -> Tensor {
        let name = match kind {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
        };
        let bn = broadcast_len(name, a, b);
        let mut out = Buffer::uninit(a.numel());
        match kind {
            Binary::Add => map_bcast(a.data(), b.data(), &mut out, |x, y| x + y),
            Binary::Sub => map_bcast(a.data(), b.data(), &mut out, |x, y| x - y),
            Binary::Mul => map_bcast(a.data(), b.data(), &mut out, |x, y| x * y),
        }
        let out = Tensor::from_parts(a.shape(), out);
        if !self.wants_grad(&[a, b]) {
            return out;
        }
        let saved = matches!(kind, Binary::Mul).then(|| (a.detach(), b.detach()));
        let a_len = a.numel();
        self.custom(&[a, b], out, move |g: &[f32], grads: &mut [Option<GradSlot>]| {
            let [da, db] = grads else { unreachable!() };
            match (&kind, saved) {
                (Binary::Mul, Some((a, b))) => {
                    // da = g·b (broadcast), db = Σ_rows g·a
                    if let Some(da) = da {
                        let acc = da.accumulate();
                        if bn == a_len {
                            map2_into(g, b.data(), da.data(), acc, |x, y| x * y);
                        } else {
                            let mut tmp = Buffer::uninit(a_len);
                            map_bcast(g, b.data(), &mut tmp, |x, y| x * y);
                            da.add(&tmp);
                        }
                    }
                    if let Some(db) = db {
                        let acc = db.accumulate();
                        if bn == a_len {
                            map2_into(g, a.data(), db.data(), acc, |x, y| x * y);
                        } else {
                            reduce_rows_into(g, a.data(), bn, db.data(), acc, |x, y| x * y);
                        }
                    }
                }
                _ => {
                    let sign = if matches!(kind, Binary::Sub) { -1.0 } else { 1.0 };
                    if let Some(da) = da {
                        da.add(g);
                    }
                    if let Some(db) = db {
                        let acc = db.accumulate();
                        if bn == a_len {
                            map1_into(g, db.data(), acc, |x| sign * x);
                        } else {
                            reduce_rows_into(g, g, bn, db.data(), acc, |x, _| sign * x);
                        }
                    }
                }
            }
        })
    }

    /// a + b; `b` has a's shape or a suffix of it (broadcast over leading dims, e.g. a bias).
    // a [.., C], b [C] or [.., C] -> [.., C]
    pub fn add(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        self.binary(Binary::Add, a, b)
    }

    /// a − b, broadcasting like [`Tape::add`].
    pub fn sub(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        self.binary(Binary::Sub, a, b)
    }

    /// a ⊙ b, broadcasting like [`Tape::add`].
    pub fn mul(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        self.binary(Binary::Mul, a, b)
    }

    /// c·a for a constant c.
    pub fn scale(&mut self, a: &Tensor, c: f32) -> Tensor {
        let mut out = Buffer::uninit(a.numel());
        map1_into(a.data(), &mut out, false, |x| c * x);
        let out = Tensor::from_parts(a.shape(), out);
        self.custom(&[a], out, move |g, grads| {
            if let Some(da) = &mut grads[0] {
                let acc = da.accumulate();
                map1_into(g, da.data(), acc, |x| c * x);
            }
        })
    }

    /// Each row of x scaled by its weight: out[r, :] = w[r]·x[r, :].
    // x [R, C], w [R] -> [R, C]
    pub fn scale_rows(&mut self, x: &Tensor, w: &Tensor) -> Tensor {
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(w.numel(), rows, "scale_rows: {} weights for {rows} rows", w.numel());
        let mut out = Buffer::uninit(x.numel());
        scale_rows_into(x.data(), w.data(), cols, &mut out, false);
        let out = Tensor::from_parts(x.shape(), out);
        self.record_binary(x, w, out, move |xs, ws, g, dx, dw| {
            if let Some(dx) = dx {
                let acc = dx.accumulate();
                scale_rows_into(g, ws, cols, dx.data(), acc);
            }
            if let Some(dw) = dw {
                let acc = dw.accumulate();
                row_dots_into(g, xs, cols, dw.data(), acc);
            }
        })
    }

    /// Sum of all elements (accumulated in f64), as a scalar.
    pub fn sum(&mut self, a: &Tensor) -> Tensor {
        let out = Tensor::scalar(sum_f64(a.data()) as f32);
        self.custom(&[a], out, move |g, grads| {
            if let Some(da) = &mut grads[0] {
                let acc = da.accumulate();
                let g = g[0];
                da.data().iter_mut().for_each(|d| if acc { *d += g } else { *d = g });
            }
        })
    }

    /// Mean of all elements, as a scalar.
    pub fn mean(&mut self, a: &Tensor) -> Tensor {
        let n = a.numel().max(1) as f64;
        let out = Tensor::scalar((sum_f64(a.data()) / n) as f32);
        self.custom(&[a], out, move |g, grads| {
            if let Some(da) = &mut grads[0] {
                let acc = da.accumulate();
                let g = (g[0] as f64 / n) as f32;
                da.data().iter_mut().for_each(|d| if acc { *d += g } else { *d = g });
            }
        })
    }

    /// Mean over rows: out[c] = (1/R)·Σ_r x[r, c].
    // x [R, C] -> [C]
    pub fn mean_rows(&mut self, x: &Tensor) -> Tensor {
        let (rows, cols) = (x.rows(), x.cols());
        let mut out = Buffer::uninit(cols);
        let inv = 1.0 / rows.max(1) as f32;
        reduce_rows_into(x.data(), x.data(), cols, &mut out, false, |v, _| v);
        out.iter_mut().for_each(|v| *v *= inv);
        let out = Tensor::from_parts(&[cols], out);
        self.custom(&[x], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                for row in dx.data().chunks_exact_mut(cols) {
                    let it = row.iter_mut().zip(g);
                    if acc {
                        it.for_each(|(d, &v)| *d += inv * v);
                    } else {
                        it.for_each(|(d, &v)| *d = inv * v);
                    }
                }
            }
        })
    }
}

/// out[r, :] (+)= w[r]·x[r, :].
fn scale_rows_into(x: &[f32], w: &[f32], cols: usize, out: &mut [f32], accumulate: bool) {
    if cols == 0 {
        return;
    }
    let rpt = (TASK / cols).max(1);
    out.par_chunks_mut(rpt * cols).zip(x.par_chunks(rpt * cols).zip(w.par_chunks(rpt))).for_each(
        |(o, (x, w))| {
            for ((or, xr), &wr) in o.chunks_exact_mut(cols).zip(x.chunks_exact(cols)).zip(w) {
                let it = or.iter_mut().zip(xr);
                if accumulate {
                    it.for_each(|(o, &v)| *o += wr * v);
                } else {
                    it.for_each(|(o, &v)| *o = wr * v);
                }
            }
        },
    );
}
