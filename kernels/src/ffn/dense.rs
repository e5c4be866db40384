//! The plain FFN (one loop of the depth path) on packed weights: forward and backward.

use super::packed::{unpermute_add, PackedFfn};
use super::{shape_err, sized, FfnError, FfnGrads};
use crate::fused::{swiglu_backward, swiglu_forward, swiglu_rows};
use crate::gemm::{gemm_packed_with, MatMut, MatRef};
use crate::pool::Buffer;

/// u [n,2h] = z·W1(perm)ᵀ; a [n,h] = SwiGLU per expert segment; out = beta·out + a·W2ᵀ.
// z [n,d] -> u [n,2h], a [n,h], out [n,d]
fn dense_core(w: &PackedFfn, z: &[f32], u: &mut [f32], a: &mut [f32], beta: f32, out: &mut [f32]) {
    dense_core_par(w, z, u, a, beta, out, true);
}

/// [`dense_core`] on the calling thread alone when `parallel` is false (same result).
pub(super) fn dense_core_par(
    w: &PackedFfn,
    z: &[f32],
    u: &mut [f32],
    a: &mut [f32],
    beta: f32,
    out: &mut [f32],
    parallel: bool,
) {
    let (d, h, kind) = (w.d, w.h, w.kind);
    let n = z.len() / d;
    if n == 0 {
        return;
    }
    let s = w.expert_width();
    let zv = MatRef::new(z, n, d);
    let uv = MatMut::new(u, n, 2 * h);
    gemm_packed_with(kind, 1.0, zv, None, w.w1t.part(0..2 * h, 0..d), 0.0, uv, parallel)
        .expect("shapes checked by the caller");
    // Perm layout: each row is E segments [v_e | g_e], i.e. [n·E, 2s] SwiGLU rows.
    if parallel {
        swiglu_forward(u, a, s);
    } else {
        swiglu_rows(u, a, s);
    }
    let av = MatRef::new(a, n, h);
    let ov = MatMut::new(out, n, d);
    gemm_packed_with(kind, 1.0, av, None, w.w2t.part(0..d, 0..h), beta, ov, parallel)
        .expect("shapes checked by the caller");
}

/// One FFN backward: dz [n,d] = overwritten; dW1(perm) [2h,d] and dW2 [d,h] accumulated.
/// `a_saved` is the forward's SwiGLU output [n,h] when kept (else it is recomputed from u).
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_backward_core(
    w: &PackedFfn,
    z: &[f32],
    u: &[f32],
    a_saved: Option<&[f32]>,
    dy: &[f32],
    dz: &mut [f32],
    dw1p: &mut [f32],
    dw2: &mut [f32],
) -> Result<(), FfnError> {
    let (d, h, kind) = (w.d, w.h, w.kind);
    let s = w.expert_width();
    let n = z.len() / d;
    if n == 0 {
        return Ok(());
    }
    let (w1p, w2) = w.bwd()?;
    // The forward's SwiGLU output, or recomputed into a scratch buffer.
    let a_buf = a_saved.is_none().then(|| {
        let mut a = Buffer::uninit(n * h);
        swiglu_forward(u, &mut a, s);
        a
    });
    let a: &[f32] = a_saved.or(a_buf.as_deref()).expect("saved or recomputed");
    let (mut da_buf, mut du_buf) = (Buffer::uninit(n * h), Buffer::uninit(n * 2 * h));
    let (da, du) = (&mut da_buf[..n * h], &mut du_buf[..n * 2 * h]);
    let dyv = MatRef::new(dy, n, d);
    let da_view = MatMut::new(da, n, h);
    gemm_packed_with(kind, 1.0, dyv, None, w2.part(0..h, 0..d), 0.0, da_view, true)?;
    let gemm = |a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>| {
        crate::gemm::gemm_with(kind, crate::GemmPath::Auto, 1.0, a, b, 1.0, c)
    };
    gemm(dyv.t(), MatRef::new(a, n, h), MatMut::new(dw2, d, h))?;
    swiglu_backward(u, da, du, s, false);
    let duv = MatRef::new(du, n, 2 * h);
    gemm(duv.t(), MatRef::new(z, n, d), MatMut::new(dw1p, 2 * h, d))?;
    let dz_view = MatMut::new(dz, n, d);
    gemm_packed_with(kind, 1.0, duv, None, w1p.part(0..d, 0..2 * h), 0.0, dz_view, true)?;
    Ok(())
}

fn check_dense(w: &PackedFfn, z: &[f32], out: &[f32]) -> Result<usize, FfnError> {
    if !z.len().is_multiple_of(w.d) || out.len() != z.len() {
        return shape_err(format!(
            "z {} and out {} floats, rows of d = {}",
            z.len(),
            out.len(),
            w.d
        ));
    }
    Ok(z.len() / w.d)
}

/// Plain FFN (inference): out [n,d] += FFN(z).
pub fn dense_forward(w: &PackedFfn, z: &[f32], out: &mut [f32]) -> Result<(), FfnError> {
    let n = check_dense(w, z, out)?;
    let (mut u, mut a) = (Buffer::uninit(n * 2 * w.h), Buffer::uninit(n * w.h));
    dense_core(w, z, &mut u[..n * 2 * w.h], &mut a[..n * w.h], 1.0, out);
    Ok(())
}

/// Plain FFN (training): out += FFN(z); saves u [n,2h] (perm layout) for [`dense_backward`].
pub fn dense_forward_train(
    w: &PackedFfn,
    z: &[f32],
    out: &mut [f32],
    u_saved: &mut Vec<f32>,
) -> Result<(), FfnError> {
    let n = check_dense(w, z, out)?;
    let u = sized(u_saved, n * 2 * w.h);
    let mut a = Buffer::uninit(n * w.h);
    dense_core(w, z, u, &mut a[..n * w.h], 1.0, out);
    Ok(())
}

/// Plain FFN backward: dz [n,d] += ∂/∂z, dW1 [2h,d] += , dW2 [d,h] += (given dy = ∂L/∂out).
pub fn dense_backward(
    w: &PackedFfn,
    z: &[f32],
    u_saved: &[f32],
    dy: &[f32],
    dz: &mut [f32],
    grads: FfnGrads<'_>,
) -> Result<(), FfnError> {
    let n = check_dense(w, z, dy)?;
    let (d, h) = (w.d, w.h);
    if u_saved.len() != n * 2 * h || dz.len() != n * d {
        return shape_err("dense_backward: u [n,2h], dz [n,d]".to_string());
    }
    grads.check(w)?;
    let FfnGrads { dw1, dw2 } = grads;
    let (mut dzt, mut dw1p) = (Buffer::uninit(n * d), Buffer::uninit(2 * h * d));
    dw1p[..2 * h * d].fill(0.0);
    dense_backward_core(w, z, u_saved, None, dy, &mut dzt[..n * d], &mut dw1p[..2 * h * d], dw2)?;
    for (o, &v) in dz.iter_mut().zip(&dzt[..n * d]) {
        *o += v;
    }
    unpermute_add(&dw1p[..2 * h * d], dw1, h, w.expert_width(), d);
    Ok(())
}
