//! matmul in all transpose forms, linear (y = x·Wᵀ), transpose.

use vffn_kernels::{gemm, MatMut, MatRef};

use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Whether a matmul operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// The operand as a matrix view, transposed if asked (no copy).
fn view(data: &[f32], rows: usize, cols: usize, t: Trans) -> MatRef<'_> {
    let m = MatRef::new(data, rows, cols);
    match t {
        Trans::N => m,
        Trans::T => m.t(),
    }
}

impl Tape {
    /// op(a)·op(b), op = identity or transpose. `a` is read as 2-D `[rows, cols]` (leading dims
    /// flattened; with `Trans::N` they are kept in the output shape), `b` must be 2-D.
    // op(a) [m, k] · op(b) [k, n] -> [m, n]
    pub fn matmul(&mut self, a: &Tensor, b: &Tensor, ta: Trans, tb: Trans) -> Tensor {
        assert_eq!(b.rank(), 2, "matmul: b must be 2-D, got {:?}", b.shape());
        let (ar, ac) = (a.rows(), a.cols());
        let (br, bc) = (b.rows(), b.cols());
        let (m, k) = if ta == Trans::N { (ar, ac) } else { (ac, ar) };
        let (kb, n) = if tb == Trans::N { (br, bc) } else { (bc, br) };
        assert_eq!(k, kb, "matmul: inner dims {:?} {ta:?} · {:?} {tb:?}", a.shape(), b.shape());
        let mut out = Buffer::uninit(m * n);
        gemm(
            1.0,
            view(a.data(), ar, ac, ta),
            view(b.data(), br, bc, tb),
            0.0,
            MatMut::new(&mut out, m, n),
        );
        let shape: Vec<usize> = if ta == Trans::N && a.rank() > 2 {
            let s = a.shape();
            s[..s.len() - 1].iter().copied().chain([n]).collect()
        } else {
            vec![m, n]
        };
        let out = Tensor::from_parts(&shape, out);
        self.record_binary(a, b, out, move |sa, sb, g, da, db| {
            let dc = MatRef::new(g, m, n);
            let op_a = view(sa, ar, ac, ta);
            let op_b = view(sb, br, bc, tb);
            if let Some(da) = da {
                let beta = da.beta();
                match ta {
                    // dA [m,k] = dC·op(B)ᵀ
                    Trans::N => gemm(1.0, dc, op_b.t(), beta, MatMut::new(da.data(), m, k)),
                    // dA [k,m] = op(B)·dCᵀ
                    Trans::T => gemm(1.0, op_b, dc.t(), beta, MatMut::new(da.data(), k, m)),
                }
            }
            if let Some(db) = db {
                let beta = db.beta();
                match tb {
                    // dB [k,n] = op(A)ᵀ·dC
                    Trans::N => gemm(1.0, op_a.t(), dc, beta, MatMut::new(db.data(), k, n)),
                    // dB [n,k] = dCᵀ·op(A)
                    Trans::T => gemm(1.0, dc.t(), op_a, beta, MatMut::new(db.data(), n, k)),
                }
            }
        })
    }

    /// A linear layer without bias: y = x·Wᵀ.
    // x [.., k], w [n, k] -> y [.., n]
    pub fn linear(&mut self, x: &Tensor, w: &Tensor) -> Tensor {
        self.matmul(x, w, Trans::N, Trans::T)
    }

    /// The transpose of a 2-D tensor, materialized (matmul takes transposes for free instead).
    // x [R, C] -> [C, R]
    pub fn transpose(&mut self, x: &Tensor) -> Tensor {
        assert_eq!(x.rank(), 2, "transpose: needs 2-D, got {:?}", x.shape());
        let (r, c) = (x.rows(), x.cols());
        let mut out = Buffer::uninit(r * c);
        transpose_into(x.data(), r, c, &mut out, false);
        let out = Tensor::from_parts(&[c, r], out);
        self.custom(&[x], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                transpose_into(g, c, r, dx.data(), acc);
            }
        })
    }
}

/// out [C, R] (+)= src [R, C]ᵀ, in 32×32 tiles for cache locality.
fn transpose_into(src: &[f32], r: usize, c: usize, out: &mut [f32], accumulate: bool) {
    const TILE: usize = 32;
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                for j in j0..(j0 + TILE).min(c) {
                    let v = src[i * c + j];
                    let o = &mut out[j * r + i];
                    if accumulate {
                        *o += v;
                    } else {
                        *o = v;
                    }
                }
            }
        }
    }
}
