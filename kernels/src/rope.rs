//! Rotary position embedding, rotate-half layout (frequencies θ^(−2i/hd) repeated over both halves).
//!
//! PLACEHOLDER signature (issue 3); the implementation is being written.

/// Rotates, in place, `heads` head vectors of width `head_dim` in each of `rows` rows of `x`.
/// Row r starts at `r*row_stride`; head h occupies columns `col_offset + h*head_dim ..` of it and is
/// rotated by angle `positions[r] * theta^(-2i/head_dim)` for pair (i, i + head_dim/2).
/// `inverse = true` rotates by the negative angle (the backward of the forward rotation).
#[allow(clippy::too_many_arguments)]
pub fn rope_apply(
    x: &mut [f32],
    rows: usize,
    row_stride: usize,
    col_offset: usize,
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    theta: f32,
    inverse: bool,
) {
    let _ = (x, rows, row_stride, col_offset, heads, head_dim, positions, theta, inverse);
    unimplemented!("rope_apply")
}
