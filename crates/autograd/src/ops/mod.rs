//! Ops: each is a `Tape` method computing the forward and recording the backward right beside it.
//! Hot loops run in vffn-kernels (GEMM, fused row kernels, attention, RoPE); the simple
//! element-wise loops here are plain slices that auto-vectorize.

mod attn;
mod elementwise;
mod index;
mod linalg;
mod nn;
mod routing;
mod shape;

use rayon::prelude::*;

use crate::tape::{GradSlot, Tape};
use crate::tensor::Tensor;

pub use linalg::Trans;

/// RMSNorm epsilon used by the model.
pub const RMS_NORM_EPS: f32 = 1e-6;
/// RoPE base θ.
pub const ROPE_THETA: f32 = 10_000.0;

/// Elements per parallel task for element-wise loops (fixed: results never depend on threads).
const TASK: usize = 32 * 1024;
/// Rows per partial sum in reductions over rows (fixed block size, summed in block order).
const REDUCE_ROWS: usize = 32;

/// `out[i] = f(a[i], b[i])`, in parallel over fixed chunks.
fn map2(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_chunks_mut(TASK).zip(a.par_chunks(TASK).zip(b.par_chunks(TASK))).for_each(
        |(o, (a, b))| {
            o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = f(x, y));
        },
    );
}

/// `out[i] = f(a[i])` or `out[i] += f(a[i])`, in parallel over fixed chunks.
fn map1_into(a: &[f32], out: &mut [f32], accumulate: bool, f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(TASK).zip(a.par_chunks(TASK)).for_each(|(o, a)| {
        if accumulate {
            o.iter_mut().zip(a).for_each(|(o, &x)| *o += f(x));
        } else {
            o.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x));
        }
    });
}

/// `out[i] (+)= f(a[i], b[i])`, in parallel over fixed chunks.
fn map2_into(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    accumulate: bool,
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    out.par_chunks_mut(TASK).zip(a.par_chunks(TASK).zip(b.par_chunks(TASK))).for_each(
        |(o, (a, b))| {
            let it = o.iter_mut().zip(a.iter().zip(b));
            if accumulate {
                it.for_each(|(o, (&x, &y))| *o += f(x, y));
            } else {
                it.for_each(|(o, (&x, &y))| *o = f(x, y));
            }
        },
    );
}

/// `dst[c] (+)= Σ_r f(x[r, c], y[r, c])` over rows of width `cols`: fixed row blocks reduced in
/// block order, so the result is independent of the thread count.
fn reduce_rows_into(
    x: &[f32],
    y: &[f32],
    cols: usize,
    dst: &mut [f32],
    accumulate: bool,
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    debug_assert_eq!(dst.len(), cols);
    if cols == 0 {
        return;
    }
    let block = REDUCE_ROWS * cols;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(block)
        .zip(y.par_chunks(block))
        .map(|(x, y)| {
            let mut p = vec![0.0f32; cols];
            for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact(cols)) {
                p.iter_mut().zip(xr.iter().zip(yr)).for_each(|(p, (&a, &b))| *p += f(a, b));
            }
            p
        })
        .collect();
    if !accumulate {
        dst.fill(0.0);
    }
    for p in &partials {
        dst.iter_mut().zip(p).for_each(|(d, &v)| *d += v);
    }
}

/// Row-wise dot products `out[r] (+)= Σ_c x[r,c]·y[r,c]`.
fn row_dots_into(x: &[f32], y: &[f32], cols: usize, out: &mut [f32], accumulate: bool) {
    let rpt = (TASK / cols.max(1)).max(1);
    out.par_chunks_mut(rpt).zip(x.par_chunks(rpt * cols).zip(y.par_chunks(rpt * cols))).for_each(
        |(o, (x, y))| {
            for (o, (xr, yr)) in o.iter_mut().zip(x.chunks_exact(cols).zip(y.chunks_exact(cols))) {
                let d = dot8(xr, yr);
                if accumulate {
                    *o += d;
                } else {
                    *o = d;
                }
            }
        },
    );
}

/// Dot product with 8 fixed lanes (the kernels' one: order depends only on the length).
use vffn_kernels::fused::lanes_dot as dot8;

/// Sum in f64 over fixed chunks, combined in order.
fn sum_f64(x: &[f32]) -> f64 {
    let partials: Vec<f64> =
        x.par_chunks(TASK).map(|c| c.iter().map(|&v| v as f64).sum::<f64>()).collect();
    partials.iter().sum()
}

/// Recording helpers for ops of the same shape: each skips saving anything when nothing is
/// recorded, and hands the backward the saved data and the input gradient slots.
impl Tape {
    /// Records a one-input op whose output `y` was computed from `x`: its backward computes dx
    /// (written, or added when the slot accumulates) from the saved tensor (x or y) and dy.
    fn record_unary<B>(&mut self, x: &Tensor, y: Tensor, saved: Saved, backward: B) -> Tensor
    where
        B: FnOnce(&[f32], &[f32], &mut [f32], bool) + Send + 'static,
    {
        if !self.wants_grad(&[x]) {
            return y;
        }
        let kept = match saved {
            Saved::Input => x.detach(),
            Saved::Output => y.clone(),
        };
        self.custom(&[x], y, move |dy, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                backward(kept.data(), dy, dx.data(), acc);
            }
        })
    }

    /// Records a two-input op whose output `y` was computed from `a` and `b`: its backward gets
    /// both inputs, dy and each input's gradient slot (None when that input wants none).
    fn record_binary<B>(&mut self, a: &Tensor, b: &Tensor, y: Tensor, backward: B) -> Tensor
    where
        B: FnOnce(&[f32], &[f32], &[f32], Option<&mut GradSlot>, Option<&mut GradSlot>)
            + Send
            + 'static,
    {
        if !self.wants_grad(&[a, b]) {
            return y;
        }
        let (sa, sb) = (a.detach(), b.detach());
        self.custom(&[a, b], y, move |dy, grads| {
            let [da, db] = grads else { unreachable!("two inputs") };
            backward(sa.data(), sb.data(), dy, da.as_mut(), db.as_mut());
        })
    }
}

/// What a one-input op's backward reads: its input or its output.
enum Saved {
    Input,
    Output,
}

#[cfg(test)]
mod tests;
