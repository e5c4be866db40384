//! stack, weighted sum over a stack, concat and split.

use rayon::prelude::*;

use super::{dot8, TASK};
use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// (outer, axis size, inner) of `shape` around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

impl Tape {
    /// Stacks equal-shaped tensors along a new leading dim.
    // n × [..s] -> [n, ..s]
    pub fn stack(&mut self, xs: &[&Tensor]) -> Tensor {
        assert!(!xs.is_empty(), "stack: no tensors");
        let shape = xs[0].shape();
        assert!(xs.iter().all(|x| x.shape() == shape), "stack: shapes differ");
        let len = xs[0].numel();
        let mut out = Buffer::uninit(xs.len() * len);
        for (o, x) in out.chunks_exact_mut(len.max(1)).zip(xs) {
            o.copy_from_slice(x.data());
        }
        let dims: Vec<usize> = [xs.len()].into_iter().chain(shape.iter().copied()).collect();
        let out = Tensor::from_parts(&dims, out);
        self.custom(xs, out, move |g, grads| {
            for (i, slot) in grads.iter_mut().enumerate() {
                if let Some(dx) = slot {
                    dx.add(&g[i * len..(i + 1) * len]);
                }
            }
        })
    }

    /// Per-row weighted sum over a stack: out[r, :] = Σ_i w[r, i]·stack[i, r, :].
    // stack [n, R, C], w [R, n] -> [R, C]
    pub fn weighted_sum(&mut self, stack: &Tensor, w: &Tensor) -> Tensor {
        let s = stack.shape();
        assert!(s.len() >= 2, "weighted_sum: stack must be [n, R, ..], got {s:?}");
        let n = s[0];
        let rest = &s[1..];
        let rows = rest[0];
        let c = rest[1..].iter().product::<usize>();
        assert_eq!((w.rows(), w.cols()), (rows, n), "weighted_sum: w {:?} for {s:?}", w.shape());
        let plane = rows * c;
        let mut out = Buffer::uninit(plane);
        let (sd, wd) = (stack.data(), w.data());
        let rpt = (TASK / c.max(1)).max(1);
        out.par_chunks_mut((rpt * c).max(1)).enumerate().for_each(|(b, o)| {
            for (k, orow) in o.chunks_exact_mut(c.max(1)).enumerate() {
                let r = b * rpt + k;
                orow.fill(0.0);
                for i in 0..n {
                    let wi = wd[r * n + i];
                    let srow = &sd[i * plane + r * c..][..c];
                    orow.iter_mut().zip(srow).for_each(|(o, &v)| *o += wi * v);
                }
            }
        });
        let out = Tensor::from_parts(rest, out);
        self.record_binary(stack, w, out, move |sd, wd, g, ds, dw| {
            // ds[i, r, :] (+)= w[r, i]·g[r, :]
            if let Some(ds) = ds {
                let acc = ds.accumulate();
                ds.data().par_chunks_mut(c.max(1)).enumerate().with_min_len(16).for_each(
                    |(ir, drow)| {
                        let (i, r) = (ir / rows, ir % rows);
                        let wi = wd[r * n + i];
                        let it = drow.iter_mut().zip(&g[r * c..(r + 1) * c]);
                        if acc {
                            it.for_each(|(d, &v)| *d += wi * v);
                        } else {
                            it.for_each(|(d, &v)| *d = wi * v);
                        }
                    },
                );
            }
            // dw[r, i] (+)= g[r, :]·stack[i, r, :]
            if let Some(dw) = dw {
                let acc = dw.accumulate();
                dw.data().par_iter_mut().enumerate().with_min_len(16).for_each(|(ri, o)| {
                    let (r, i) = (ri / n, ri % n);
                    let v = dot8(&g[r * c..(r + 1) * c], &sd[i * plane + r * c..][..c]);
                    if acc {
                        *o += v;
                    } else {
                        *o = v;
                    }
                });
            }
        })
    }

    /// Concatenates along `axis`; all other dims must agree.
    pub fn concat(&mut self, xs: &[&Tensor], axis: usize) -> Tensor {
        assert!(!xs.is_empty(), "concat: no tensors");
        let s0 = xs[0].shape();
        assert!(axis < s0.len(), "concat: axis {axis} for rank {}", s0.len());
        for x in xs {
            let s = x.shape();
            let same = s.len() == s0.len()
                && s.iter().zip(s0).enumerate().all(|(i, (a, b))| i == axis || a == b);
            assert!(same, "concat: {s:?} vs {s0:?} along axis {axis}");
        }
        let (outer, _, inner) = around(s0, axis);
        let chunks: Vec<usize> = xs.iter().map(|x| x.shape()[axis] * inner).collect();
        let total: usize = chunks.iter().sum();
        let mut out = Buffer::uninit(outer * total);
        for o in 0..outer {
            let mut at = o * total;
            for (x, &len) in xs.iter().zip(&chunks) {
                out[at..at + len].copy_from_slice(&x.data()[o * len..(o + 1) * len]);
                at += len;
            }
        }
        let mut dims = s0.to_vec();
        dims[axis] = xs.iter().map(|x| x.shape()[axis]).sum();
        let out = Tensor::from_parts(&dims, out);
        self.custom(xs, out, move |g, grads| {
            let mut start = 0;
            for (slot, &len) in grads.iter_mut().zip(&chunks) {
                if let Some(dx) = slot {
                    let acc = dx.accumulate();
                    let d = dx.data();
                    for o in 0..outer {
                        let src = &g[o * total + start..][..len];
                        let dst = &mut d[o * len..(o + 1) * len];
                        if acc {
                            dst.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
                start += len;
            }
        })
    }

    /// Splits along `axis` into pieces of the given sizes (they must sum to the axis size). Along
    /// a leading axis the pieces are views (no copy); otherwise each piece is copied.
    pub fn split(&mut self, x: &Tensor, axis: usize, sizes: &[usize]) -> Vec<Tensor> {
        let s = x.shape();
        assert!(axis < s.len(), "split: axis {axis} for rank {}", s.len());
        let (outer, dim, inner) = around(s, axis);
        assert_eq!(sizes.iter().sum::<usize>(), dim, "split: sizes {sizes:?} for dim {dim}");
        let mut pieces = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &size in sizes {
            let mut dims = s.to_vec();
            dims[axis] = size;
            if outer == 1 {
                // Contiguous: a view of rows start..start+size of x seen as [dim, inner].
                let flat = x.reshape(&[dim, inner]).expect("same numel");
                let piece = flat.narrow_rows(start, size).expect("in range");
                pieces.push(piece.reshape(&dims).expect("same numel"));
            } else {
                let (off, len) = (start * inner, size * inner);
                let mut out = Buffer::uninit(outer * len);
                for o in 0..outer {
                    out[o * len..(o + 1) * len]
                        .copy_from_slice(&x.data()[o * dim * inner + off..][..len]);
                }
                let out = Tensor::from_parts(&dims, out);
                pieces.push(self.custom(&[x], out, move |g, grads| {
                    if let Some(dx) = &mut grads[0] {
                        dx.zero_if_fresh();
                        let d = dx.data();
                        for o in 0..outer {
                            let dst = &mut d[o * dim * inner + off..][..len];
                            dst.iter_mut().zip(&g[o * len..][..len]).for_each(|(a, &b)| *a += b);
                        }
                    }
                }));
            }
            start += size;
        }
        pieces
    }
}
