//! Causal multi-head attention, flash-style: forward saves only the output and the per-row
//! log-sum-exp; backward recomputes the probabilities block by block.
//!
//! PLACEHOLDER signatures (issue 3); the implementation is being written.

/// Shapes of one attention call. `d = heads * head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Forward. `qkv` is `[batch*seq, 3d]` row-major: columns `0..d` are q, `d..2d` k, `2d..3d` v;
/// head `h` uses columns `h*head_dim..(h+1)*head_dim` of each part (RoPE already applied to q, k).
/// Writes `out` `[batch*seq, d]` and `lse` `[batch, heads, seq]` (natural log-sum-exp of the scaled
/// scores of each query row, saved for backward). Scale is `1/sqrt(head_dim)`; position t attends to
/// 0..=t of the same sequence.
pub fn attention_forward(shape: AttnShape, qkv: &[f32], out: &mut [f32], lse: &mut [f32]) {
    let _ = (shape, qkv, out, lse);
    unimplemented!("attention_forward")
}

/// Backward. Given the forward's inputs and saved `out`, `lse`, and `d_out` `[batch*seq, d]`, writes
/// `d_qkv` `[batch*seq, 3d]` (overwritten, same layout as `qkv`).
pub fn attention_backward(
    shape: AttnShape,
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    d_qkv: &mut [f32],
) {
    let _ = (shape, qkv, out, lse, d_out, d_qkv);
    unimplemented!("attention_backward")
}
