//! RoPE and causal multi-head attention, wrapping vffn-kernels' `rope` and `attention`.

use std::sync::Arc;

use vffn_kernels::attention::{attention_backward, attention_forward, AttnShape};
use vffn_kernels::rope::rope_apply;

use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Rotates every head block of `x` (rows of width `width`) in place, forward or inverse.
#[allow(clippy::too_many_arguments)]
fn rotate(
    x: &mut [f32],
    width: usize,
    col_offsets: &[usize],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    theta: f32,
    inverse: bool,
) {
    let rows = positions.len();
    for &off in col_offsets {
        rope_apply(x, rows, width, off, heads, head_dim, positions, theta, inverse);
    }
}

impl Tape {
    /// Rotary position embedding (rotate-half layout, θ^(−2i/hd) repeated over both halves) applied
    /// to `heads` head blocks of width `head_dim` starting at each of `col_offsets`; row r is at
    /// position `positions[r]`. For a fused [q | k | v] buffer use offsets `[0, d]`.
    /// Backward is the inverse rotation.
    // x [R, W], positions [R] -> [R, W]
    pub fn rope(
        &mut self,
        x: &Tensor,
        col_offsets: &[usize],
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        theta: f32,
    ) -> Tensor {
        let (rows, width) = (x.rows(), x.cols());
        assert_eq!(positions.len(), rows, "rope: {} positions for {rows} rows", positions.len());
        for &off in col_offsets {
            assert!(off + heads * head_dim <= width, "rope: heads at {off} overrun width {width}");
        }
        let mut out = Buffer::copy_of(x.data());
        rotate(&mut out, width, col_offsets, heads, head_dim, positions, theta, false);
        let out = Tensor::from_parts(x.shape(), out);
        if !self.wants_grad(&[x]) {
            return out;
        }
        let offsets: Arc<[usize]> = col_offsets.into();
        let positions: Arc<[usize]> = positions.into();
        self.custom(&[x], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let inv = |buf: &mut [f32]| {
                    rotate(buf, width, &offsets, heads, head_dim, &positions, theta, true)
                };
                if dx.accumulate() {
                    let mut tmp = Buffer::copy_of(g);
                    inv(&mut tmp);
                    dx.add(&tmp);
                } else {
                    crate::pool::par_copy(dx.data(), g);
                    inv(dx.data());
                }
            }
        })
    }

    /// Causal multi-head attention over a fused qkv buffer (RoPE already applied to q and k).
    /// Flash-style: saves only the output and the per-row log-sum-exp ([batch, heads, seq]), so
    /// memory kept for backward is O(T·d) per layer; backward recomputes the probabilities.
    // qkv [B·T, 3d] -> out [B·T, d]
    pub fn attention(&mut self, qkv: &Tensor, shape: AttnShape) -> Tensor {
        let (bt, d) = (shape.batch * shape.seq, shape.d());
        assert_eq!(
            (qkv.rows(), qkv.cols()),
            (bt, 3 * d),
            "attention: qkv {:?} for {shape:?}",
            qkv.shape()
        );
        let mut out = Buffer::uninit(bt * d);
        let mut lse = Buffer::uninit(shape.batch * shape.heads * shape.seq);
        attention_forward(shape, qkv.data(), &mut out, &mut lse);
        let out = Tensor::from_parts(&[bt, d], out);
        if !self.wants_grad(&[qkv]) {
            return out;
        }
        let (qs, os) = (qkv.detach(), out.clone());
        self.custom(&[qkv], out, move |g, grads| {
            if let Some(dq) = &mut grads[0] {
                if dq.accumulate() {
                    let mut tmp = Buffer::uninit(bt * 3 * d);
                    attention_backward(shape, qs.data(), os.data(), &lse, g, &mut tmp);
                    dq.add(&tmp);
                } else {
                    attention_backward(shape, qs.data(), os.data(), &lse, g, dq.data());
                }
            }
        })
    }
}
