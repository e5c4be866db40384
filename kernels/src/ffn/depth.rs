//! Depth path: x_i = x_{i−1} + FFN(rmsnorm(x_{i−1}, w_norm)), with compaction for inference,
//! its training forward and, beside it, its backward.

use rayon::prelude::*;

use super::dense::{dense_backward_core, dense_core_par};
use super::packed::{unpermute_add, PackedFfn};
use super::{shape_err, sized, FfnError, FfnGrads};
use crate::fused::{rms_norm_backward, rms_norm_rows};
use crate::pool::Buffer;

/// Rows per tile of the tiled depth recursion (a multiple of the micro-kernel height): the
/// tile's pre-activations u [rows, 2h] take about 512 KiB. Every loop of a tile streams the
/// layer's packed weights (3·h·d floats, 768 KiB at the tiny preset: more than a core's L2)
/// through the cache once, so bigger tiles read them less often; measured on the tiny
/// versatile inference forward (2 threads, 5 alternating rounds), 128-row tiles ran 1.08× the
/// 60-row ones of before (u in L2) and 96–512 rows all within noise of each other; training
/// steps and the small preset moved less than 3 %.
fn depth_tile_rows(h: usize, mr: usize) -> usize {
    let rows = (1usize << 17) / (2 * h).max(1);
    (rows / mr * mr).clamp(mr, 32 * mr)
}
fn check_depth(
    w: &PackedFfn,
    w_norm: &[f32],
    x: &[f32],
    max_depth: usize,
) -> Result<usize, FfnError> {
    if w_norm.len() != w.d || !x.len().is_multiple_of(w.d) {
        return shape_err(format!(
            "w_norm {} (want d = {}), x {} floats",
            w_norm.len(),
            w.d,
            x.len()
        ));
    }
    if max_depth == 0 || max_depth > u8::MAX as usize {
        return Err(FfnError::Routing(format!("max depth {max_depth} outside 1..=255")));
    }
    Ok(x.len() / w.d)
}

/// Depth path (inference) with compaction: token t runs exactly `depth[t]` ∈ 1..=D loops. Tokens
/// are ordered by depth (deepest first) in one compact buffer, so loop i runs on the prefix of
/// tokens with depth ≥ i; a token's state is written to `out` after its last loop.
// x [T,d], depth [T] -> out [T,d] (overwritten with x_{depth[t]})
#[allow(clippy::too_many_arguments)]
pub fn depth_forward(
    w: &PackedFfn,
    w_norm: &[f32],
    eps: f32,
    x: &[f32],
    depth: &[u8],
    max_depth: usize,
    out: &mut [f32],
) -> Result<(), FfnError> {
    let t = check_depth(w, w_norm, x, max_depth)?;
    let (d, h) = (w.d, w.h);
    if depth.len() != t || out.len() != x.len() {
        return shape_err(format!(
            "depth has {} entries, out {} floats, for {t} tokens",
            depth.len(),
            out.len()
        ));
    }
    if let Some(&bad) = depth.iter().find(|&&c| c == 0 || c as usize > max_depth) {
        return Err(FfnError::Routing(format!("depth {bad} outside 1..={max_depth}")));
    }
    // Counting sort, deepest first (stable): active tokens of loop i are a prefix.
    let mut start = vec![0usize; max_depth + 2];
    for &c in depth {
        start[max_depth - c as usize + 1] += 1;
    }
    for i in 0..=max_depth {
        start[i + 1] += start[i];
    }
    let mut order = vec![0usize; t];
    let mut next = start.clone();
    for (tok, &c) in depth.iter().enumerate() {
        let b = max_depth - c as usize;
        order[next[b]] = tok;
        next[b] += 1;
    }
    // active[i] = tokens with depth ≥ i+1
    let active: Vec<usize> = (0..max_depth).map(|i| start[max_depth - i]).collect();
    // Tiles of consecutive rows of the compact order run all their loops on one thread each:
    // one parallel region instead of one per GEMM / norm / SwiGLU and loop, and a tile's
    // intermediates stay in cache. Every row's arithmetic is the same as untiled (rows are
    // independent; the GEMM's per-element order does not depend on the row count), so the
    // result does not depend on the tiling or the thread count.
    let tile = depth_tile_rows(h, w.kind.mr());
    let mut cur = Buffer::uninit(t * d);
    cur[..t * d].par_chunks_mut(tile * d).with_max_len(1).enumerate().for_each(|(ti, cur_t)| {
        let (r0, rows) = (ti * tile, cur_t.len() / d);
        for (row, &tok) in cur_t.chunks_exact_mut(d).zip(&order[r0..r0 + rows]) {
            row.copy_from_slice(&x[tok * d..(tok + 1) * d]);
        }
        let (mut z, mut rstd, mut u, mut a) = (
            Buffer::uninit(rows * d),
            Buffer::uninit(rows),
            Buffer::uninit(rows * 2 * h),
            Buffer::uninit(rows * h),
        );
        for &act in &active {
            // Rows of this tile still running (a prefix: the order is deepest first).
            let n = act.saturating_sub(r0).min(rows);
            if n == 0 {
                break;
            }
            let (xs, zs) = (&mut cur_t[..n * d], &mut z[..n * d]);
            rms_norm_rows(xs, w_norm, zs, &mut rstd[..n], d, eps);
            let (us, as_) = (&mut u[..n * 2 * h], &mut a[..n * h]);
            dense_core_par(w, zs, us, as_, 1.0, xs, false);
        }
    });
    // A row's state after its last loop stays in place: out[tok] = cur[position of tok].
    let mut pos = vec![0usize; t];
    for (r, &tok) in order.iter().enumerate() {
        pos[tok] = r;
    }
    out.par_chunks_mut(d).zip(pos.par_iter()).for_each(|(row, &r)| {
        row.copy_from_slice(&cur[r * d..(r + 1) * d]);
    });
    Ok(())
}

/// What the depth training forward keeps: per loop ℓ the normalized input z_ℓ [T,d], its rstd
/// [T], the pre-activation u_ℓ [T,2h] and the SwiGLU output a_ℓ [T,h]: D·T·(d + 1 + 3h) floats
/// (x_ℓ themselves are the caller's `states`). Keeping a_ℓ costs what the composed autograd path
/// keeps anyway and saves recomputing SwiGLU (an exp per element) in the backward.
#[derive(Clone, Debug, Default)]
pub struct DepthSaved {
    loops: usize,
    tokens: usize,
    z: Vec<f32>,
    rstd: Vec<f32>,
    u: Vec<f32>,
    a: Vec<f32>,
}

/// Depth path (training): all D loops for every token; states [D,T,d] gets x_1..x_D.
// x [T,d] -> states [D,T,d]
pub fn depth_forward_train(
    w: &PackedFfn,
    w_norm: &[f32],
    eps: f32,
    x: &[f32],
    max_depth: usize,
    states: &mut [f32],
    saved: &mut DepthSaved,
) -> Result<(), FfnError> {
    let t = check_depth(w, w_norm, x, max_depth)?;
    let (d, h) = (w.d, w.h);
    if states.len() != max_depth * t * d {
        return shape_err(format!("states has {} floats, want D·T·d", states.len()));
    }
    saved.loops = max_depth;
    saved.tokens = t;
    let z_all = sized(&mut saved.z, max_depth * t * d);
    let rstd_all = sized(&mut saved.rstd, max_depth * t);
    let u_all = sized(&mut saved.u, max_depth * t * 2 * h);
    let a_all = sized(&mut saved.a, max_depth * t * h);
    // As in `depth_forward`: tiles of rows run every loop on one thread (same result as
    // untiled). Each tile gets its rows of every loop's slice of the five [D, T, ·] buffers.
    if t == 0 {
        return Ok(());
    }
    let tile = depth_tile_rows(h, w.kind.mr());
    let tiles = t.div_ceil(tile);
    let split = |buf, width| split_levels(buf, t * width, tile * width, tiles);
    let parts = split(states, d)
        .into_iter()
        .zip(split(z_all, d))
        .zip(split(rstd_all, 1))
        .zip(split(u_all, 2 * h))
        .zip(split(a_all, h))
        .enumerate()
        .collect::<Vec<_>>();
    parts.into_par_iter().with_max_len(1).for_each(|(ti, ((((st, z), rstd), u), a))| {
        let r0 = ti * tile;
        let rows = st[0].len() / d;
        let mut levels = st.into_iter().zip(z).zip(rstd).zip(u).zip(a);
        let mut prev: Option<&mut [f32]> = None;
        for _ in 0..max_depth {
            let ((((state, z), rstd), u), a) = levels.next().expect("one slice per loop");
            let input: &[f32] = match &prev {
                Some(p) => p,
                None => &x[r0 * d..(r0 + rows) * d],
            };
            rms_norm_rows(input, w_norm, z, rstd, d, eps);
            state.copy_from_slice(input);
            dense_core_par(w, z, u, a, 1.0, state, false);
            prev = Some(state);
        }
    });
    Ok(())
}

/// Cuts each `level_len` level of `buf` into parts of `part_len` and groups them by part index:
/// result[i] holds part i of every level, in level order.
fn split_levels(
    buf: &mut [f32],
    level_len: usize,
    part_len: usize,
    parts: usize,
) -> Vec<Vec<&mut [f32]>> {
    let mut per_part: Vec<Vec<&mut [f32]>> = (0..parts).map(|_| Vec::new()).collect();
    for level in buf.chunks_exact_mut(level_len) {
        for (i, part) in level.chunks_mut(part_len).enumerate() {
            per_part[i].push(part);
        }
    }
    per_part
}

/// Depth path backward. `d_states` [D,T,d] holds ∂L/∂x_ℓ from outside the recursion (e.g.
/// p_ℓ·∂L/∂out_d). Accumulates dx [T,d], d_w_norm [d], dW1 [2h,d], dW2 [d,h].
#[allow(clippy::too_many_arguments)]
pub fn depth_backward(
    w: &PackedFfn,
    w_norm: &[f32],
    saved: &DepthSaved,
    x: &[f32],
    states: &[f32],
    d_states: &[f32],
    dx: &mut [f32],
    d_w_norm: &mut [f32],
    grads: FfnGrads<'_>,
) -> Result<(), FfnError> {
    let (loops, t) = (saved.loops, saved.tokens);
    check_depth(w, w_norm, x, loops.max(1))?;
    let (d, h) = (w.d, w.h);
    if x.len() != t * d || dx.len() != t * d || states.len() != loops * t * d {
        return shape_err("depth_backward: x, dx [T,d] and states [D,T,d] must match".to_string());
    }
    if d_states.len() != states.len() || d_w_norm.len() != d {
        return shape_err("depth_backward: d_states [D,T,d], d_w_norm [d]".to_string());
    }
    grads.check(w)?;
    let FfnGrads { dw1, dw2 } = grads;
    if loops == 0 || t == 0 {
        return Ok(());
    }
    let (mut dcur, mut dzt, mut dw1p) =
        (Buffer::uninit(t * d), Buffer::uninit(t * d), Buffer::uninit(2 * h * d));
    let (dcur_s, dz, dw1p_s) = (&mut dcur[..t * d], &mut dzt[..t * d], &mut dw1p[..2 * h * d]);
    dw1p_s.fill(0.0);
    dcur_s.copy_from_slice(&d_states[(loops - 1) * t * d..]);
    for l in (0..loops).rev() {
        let input = if l == 0 { x } else { &states[(l - 1) * t * d..l * t * d] };
        let z = &saved.z[l * t * d..(l + 1) * t * d];
        let u = &saved.u[l * t * 2 * h..(l + 1) * t * 2 * h];
        let rstd = &saved.rstd[l * t..(l + 1) * t];
        let a = &saved.a[l * t * h..(l + 1) * t * h];
        dense_backward_core(w, z, u, Some(a), dcur_s, dz, dw1p_s, dw2)?;
        // Residual: ∂x_{ℓ−1} = ∂x_ℓ + norm backward of ∂z, plus the outside gradient of x_{ℓ−1}.
        rms_norm_backward(input, w_norm, rstd, dz, Some((dcur_s, true)), Some((d_w_norm, true)));
        if l > 0 {
            let outside = &d_states[(l - 1) * t * d..l * t * d];
            dcur_s.par_chunks_mut(4096).zip(outside.par_chunks(4096)).for_each(|(o, s)| {
                o.iter_mut().zip(s).for_each(|(o, &v)| *o += v);
            });
        }
    }
    for (o, &v) in dx.iter_mut().zip(dcur_s.iter()) {
        *o += v;
    }
    unpermute_add(dw1p_s, dw1, h, w.expert_width(), d);
    Ok(())
}
