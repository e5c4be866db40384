//! Naive references (the official code's approach): per-expert gathers into copies, full
//! unpacked GEMMs per call, masks, every token run to the batch's deepest loop. Used by the
//! property tests and as the `*_naive` baselines of `vffn bench ffn`.

use crate::fused::{rms_norm_forward, swiglu_forward};
use crate::gemm::{gemm, MatMut, MatRef};

/// out [n,d] += FFN(z) with W1 [2h,d] (value rows 0..h, gate h..2h), W2 [d,h] (model layout).
pub fn dense_naive(w1: &[f32], w2: &[f32], d: usize, h: usize, z: &[f32], out: &mut [f32]) {
    let n = z.len() / d;
    let mut u = vec![0.0f32; n * 2 * h];
    gemm(
        1.0,
        MatRef::new(z, n, d),
        MatRef::new(w1, 2 * h, d).t(),
        0.0,
        MatMut::new(&mut u, n, 2 * h),
    );
    let mut a = vec![0.0f32; n * h];
    swiglu_forward(&u, &mut a, h);
    gemm(1.0, MatRef::new(&a, n, h), MatRef::new(w2, d, h).t(), 1.0, MatMut::new(out, n, d));
}

/// One expert's weights as views: value rows [s,d], gate rows [s,d], W2 columns [d,s].
type ExpertViews<'a> = (MatRef<'a>, MatRef<'a>, MatRef<'a>);

/// A routed call's token inputs: z [T,d], expert ids and gates [T,k].
struct Routed<'a> {
    z: &'a [f32],
    experts: &'a [u32],
    gates: &'a [f32],
    k: usize,
}

// (z [T,d], ids, gates) -> out [T,d] += Σ_j gates·FFN_e(z)
fn routed_naive<'a>(
    views: impl Fn(usize) -> ExpertViews<'a>,
    (count, d, s): (usize, usize, usize),
    routed: Routed<'_>,
    out: &mut [f32],
) {
    let Routed { z, experts, gates, k } = routed;
    for e in 0..count {
        let slots: Vec<usize> = (0..experts.len()).filter(|&i| experts[i] as usize == e).collect();
        let m = slots.len();
        if m == 0 {
            continue;
        }
        let mut z_e = vec![0.0f32; m * d];
        for (r, &slot) in slots.iter().enumerate() {
            let t = slot / k;
            z_e[r * d..(r + 1) * d].copy_from_slice(&z[t * d..(t + 1) * d]);
        }
        let (value, gate, w2_e) = views(e);
        let zv = MatRef::new(&z_e, m, d);
        let (mut v, mut g) = (vec![0.0f32; m * s], vec![0.0f32; m * s]);
        gemm(1.0, zv, value.t(), 0.0, MatMut::new(&mut v, m, s));
        gemm(1.0, zv, gate.t(), 0.0, MatMut::new(&mut g, m, s));
        let a: Vec<f32> =
            v.iter().zip(&g).map(|(&v, &g)| v * g * crate::fused::sigmoid_f32(g)).collect();
        let mut y = vec![0.0f32; m * d];
        gemm(1.0, MatRef::new(&a, m, s), w2_e.t(), 0.0, MatMut::new(&mut y, m, d));
        // index_add with the routing weight
        for (r, &slot) in slots.iter().enumerate() {
            let t = slot / k;
            for (o, &yv) in out[t * d..(t + 1) * d].iter_mut().zip(&y[r * d..(r + 1) * d]) {
                *o += gates[slot] * yv;
            }
        }
    }
}

/// Width path: for each virtual expert, gather its tokens, three GEMMs on weight slices, and an
/// index_add of g·y into out [T,d].
#[allow(clippy::too_many_arguments)]
pub fn width_naive(
    w1: &[f32],
    w2: &[f32],
    d: usize,
    h: usize,
    n_experts: usize,
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let s = h / n_experts;
    let views = |e: usize| {
        let value = MatRef::new(&w1[e * s * d..(e + 1) * s * d], s, d);
        let gate = MatRef::new(&w1[(h + e * s) * d..(h + (e + 1) * s) * d], s, d);
        let w2_e = MatRef::strided(&w2[e * s..], d, s, h, 1);
        (value, gate, w2_e)
    };
    routed_naive(views, (n_experts, d, s), Routed { z, experts, gates, k }, out);
}

/// MoE with real experts: `w1s[e]` [2s,d], `w2s[e]` [d,s].
#[allow(clippy::too_many_arguments)]
pub fn moe_naive(
    w1s: &[&[f32]],
    w2s: &[&[f32]],
    d: usize,
    s: usize,
    z: &[f32],
    experts: &[u32],
    gates: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let views = |e: usize| {
        let value = MatRef::new(&w1s[e][..s * d], s, d);
        let gate = MatRef::new(&w1s[e][s * d..], s, d);
        (value, gate, MatRef::new(w2s[e], d, s))
    };
    routed_naive(views, (w1s.len(), d, s), Routed { z, experts, gates, k }, out);
}

/// Depth path: every token runs the batch's deepest loop count; a mask keeps each token's
/// state after its own depth. out [T,d] = x_{depth[t]}.
#[allow(clippy::too_many_arguments)]
pub fn depth_naive(
    w1: &[f32],
    w2: &[f32],
    d: usize,
    h: usize,
    w_norm: &[f32],
    eps: f32,
    x: &[f32],
    depth: &[u8],
    out: &mut [f32],
) {
    let t = depth.len();
    let deepest = depth.iter().copied().max().unwrap_or(0) as usize;
    out.copy_from_slice(x);
    let (mut z, mut rstd, mut f) = (vec![0.0f32; t * d], vec![0.0f32; t], vec![0.0f32; t * d]);
    for i in 1..=deepest {
        rms_norm_forward(out, w_norm, &mut z, &mut rstd, eps);
        f.fill(0.0);
        dense_naive(w1, w2, d, h, &z, &mut f);
        for (tok, &c) in depth.iter().enumerate() {
            let mask = if c as usize >= i { 1.0 } else { 0.0 };
            for (o, &v) in out[tok * d..(tok + 1) * d].iter_mut().zip(&f[tok * d..(tok + 1) * d]) {
                *o += mask * v;
            }
        }
    }
}
