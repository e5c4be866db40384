//! Decode: one new query row against a KV cache.

use super::{exp_lanes, mask_tail, round_up};
#[cfg(target_arch = "x86_64")]
use crate::simd::avx;
use crate::simd::{Lanes, Portable, W};

/// One decode step's inputs (see [`attention_decode`]).
#[derive(Clone, Copy)]
struct CachedQuery<'a> {
    heads: usize,
    hd: usize,
    q: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    len: usize,
}

#[inline(always)]
fn decode_impl<L: Lanes>(l: L, query: &CachedQuery<'_>, out: &mut [f32]) {
    let CachedQuery { heads, hd, q, k_cache, v_cache, len } = *query;
    let d = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let len_pad = round_up(len, W);
    let mut scores = vec![0.0f32; len_pad];
    for h in 0..heads {
        let q_h: Vec<f32> = q[h * hd..(h + 1) * hd].iter().map(|&x| x * scale).collect();
        let full = hd / W * W;
        for (j, s) in scores[..len].iter_mut().enumerate() {
            let k = &k_cache[j * d + h * hd..j * d + (h + 1) * hd];
            let mut acc = l.splat(0.0);
            for p in (0..full).step_by(W) {
                acc = l.mul_add(l.read(&q_h[p..]), l.read(&k[p..]), acc);
            }
            let tail: f32 = (full..hd).map(|p| q_h[p] * k[p]).sum();
            *s = l.reduce_sum(acc) + tail;
        }
        mask_tail(&mut scores, len);
        let mut vmax = l.splat(f32::NEG_INFINITY);
        for chunk in scores.chunks_exact(W) {
            vmax = l.max(vmax, l.read(chunk));
        }
        let m = l.splat(l.reduce_max(vmax));
        let mut vsum = l.splat(0.0);
        for chunk in scores.chunks_exact_mut(W) {
            let e = exp_lanes(l, l.sub(l.read(chunk), m));
            vsum = l.add(vsum, e);
            l.write(chunk, e);
        }
        let inv = 1.0 / l.reduce_sum(vsum);
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        for (j, &pj) in scores[..len].iter().enumerate() {
            let v = &v_cache[j * d + h * hd..j * d + (h + 1) * hd];
            for (o, &x) in o.iter_mut().zip(v) {
                *o += pj * x;
            }
        }
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_avx2(l: avx::Avx2Fma, query: &CachedQuery<'_>, out: &mut [f32]) {
    decode_impl(l, query, out)
}

/// Attention of one new query row per head against `len` cached key/value rows (generation with a
/// KV cache). `q` and `out` are `[d]` (`d = heads*head_dim`); `k_cache`, `v_cache` hold at least
/// `len` rows of `[d]` (RoPE already applied to q and the cached keys). The new token's own key and
/// value must already be the cache's last row, so `out` equals row `len−1` of
/// [`attention_forward`] over the same `len` rows (up to rounding).
///
/// # Panics
/// If `len == 0` or a slice is too short.
pub fn attention_decode(
    heads: usize,
    head_dim: usize,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    len: usize,
    out: &mut [f32],
) {
    let d = heads * head_dim;
    assert!(len > 0, "attention_decode: empty cache");
    assert_eq!(q.len(), d, "attention_decode: q must be [d]");
    assert_eq!(out.len(), d, "attention_decode: out must be [d]");
    assert!(k_cache.len() >= len * d && v_cache.len() >= len * d, "attention_decode: cache short");
    let query = CachedQuery { heads, hd: head_dim, q, k_cache, v_cache, len };
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = avx::Avx2Fma::detect() {
        // SAFETY: the token proves AVX2 and FMA are available.
        unsafe { decode_avx2(l, &query, out) };
        return;
    }
    decode_impl(Portable, &query, out)
}
