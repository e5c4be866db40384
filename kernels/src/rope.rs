//! Rotary position embedding, rotate-half layout (frequencies θ^(−2i/hd) repeated over both halves).
//!
//! Pair (i, i + hd/2), i < hd/2, is rotated by angle `pos · inv_freq_i` with
//! `inv_freq_i = 1 / θ^((2i) / hd)`. Angles are computed exactly as PyTorch/HF Llama do, all in
//! f32: the exponent `(2i as f32) / (hd as f32)`, `θ.powf(exponent)`, its reciprocal, then
//! `pos as f32 * inv_freq` and f32 `cos`/`sin`. A PyTorch reference computing
//! `inv_freq = 1 / theta ** (arange(0, hd, 2).float() / hd)` and `outer(arange(T).float(), inv_freq)`
//! therefore agrees to within an ulp or two of the libm's sin/cos.

use rayon::prelude::*;

/// Rows per parallel task of [`rope_apply`].
const ROWS_PER_TASK: usize = 64;

/// `inv_freq_i = 1 / θ^(2i/hd)` for `i < hd/2`, in f32 as PyTorch computes it.
// head_dim -> inv_freq [head_dim/2]
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Rotates, in place, `heads` head vectors of width `head_dim` in each of `rows` rows of `x`.
/// Row r starts at `r*row_stride`; head h occupies columns `col_offset + h*head_dim ..` of it and is
/// rotated by angle `positions[r] * theta^(-2i/head_dim)` for pair (i, i + head_dim/2).
/// `inverse = true` rotates by the negative angle (the backward of the forward rotation).
///
/// # Panics
/// If `head_dim` is odd, `positions.len() != rows`, a head overruns `row_stride`, or `x` is too
/// short for `rows` rows.
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
    assert!(head_dim & 1 == 0, "rope_apply: head_dim {head_dim} must be even");
    assert_eq!(positions.len(), rows, "rope_apply: one position per row");
    let width = col_offset + heads * head_dim;
    assert!(width <= row_stride || rows <= 1, "rope_apply: heads overrun the row stride");
    if rows == 0 || heads == 0 || head_dim == 0 {
        return;
    }
    assert!((rows - 1) * row_stride + width <= x.len(), "rope_apply: x too short");
    let half = head_dim / 2;
    let inv_freq = rope_inv_freq(head_dim, theta);
    // sin is negated for the inverse rotation: rotating by −angle.
    let sign = if inverse { -1.0f32 } else { 1.0 };
    let cos_sin_at = |pos: usize, cos: &mut [f32], sin: &mut [f32]| {
        for i in 0..half {
            let angle = pos as f32 * inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = sign * angle.sin();
        }
    };
    // Training calls repeat positions 0..T over the batch: tabulate once per position then.
    let max_pos = positions.iter().copied().max().unwrap_or(0);
    let table = if max_pos < rows {
        let mut cos = vec![0.0f32; (max_pos + 1) * half];
        let mut sin = vec![0.0f32; (max_pos + 1) * half];
        for pos in 0..=max_pos {
            let range = pos * half..(pos + 1) * half;
            cos_sin_at(pos, &mut cos[range.clone()], &mut sin[range]);
        }
        Some((cos, sin))
    } else {
        None
    };
    // Rows in parallel (each row's arithmetic is independent of the split).
    let rotate = |row: &mut [f32], cos: &[f32], sin: &[f32]| {
        for head in row[col_offset..width].chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    };
    // One row may be wider than the stride (rows ≤ 1 is allowed to overrun it).
    let chunk = if rows == 1 { x.len() } else { row_stride };
    let rows_x = x.par_chunks_mut(chunk).take(rows).zip(positions.par_iter());
    rows_x.with_min_len(ROWS_PER_TASK).for_each_init(
        || (vec![0.0f32; half], vec![0.0f32; half]),
        |(cos_row, sin_row), (row, &pos)| match &table {
            Some((cos, sin)) => {
                let range = pos * half..(pos + 1) * half;
                rotate(row, &cos[range.clone()], &sin[range]);
            }
            None => {
                cos_sin_at(pos, cos_row, sin_row);
                rotate(row, cos_row, sin_row);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many rows (several parallel tasks) at 1 and 2 threads: bitwise equal, and equal to a
    /// row-by-row f64 rotation; the inverse undoes the forward.
    #[test]
    fn parallel_rows_match_the_direct_rotation() {
        let (rows, stride, off, heads, hd) = (301, 40, 4, 2, 16);
        let x: Vec<f32> =
            (0..rows * stride).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let positions: Vec<usize> = (0..rows).map(|r| (r * 7) % 150).collect();
        let run = |threads: usize, inverse: bool, src: &[f32]| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = src.to_vec();
            pool.install(|| {
                rope_apply(&mut y, rows, stride, off, heads, hd, &positions, 1e4, inverse)
            });
            y
        };
        let (one, two) = (run(1, false, &x), run(2, false, &x));
        assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()));
        let inv_freq = rope_inv_freq(hd, 1e4);
        for (r, &pos) in positions.iter().enumerate() {
            for h in 0..heads {
                for i in 0..hd / 2 {
                    let base = r * stride + off + h * hd;
                    let angle = (pos as f32 * inv_freq[i]) as f64;
                    let (a, b) = (x[base + i] as f64, x[base + i + hd / 2] as f64);
                    let want =
                        [a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()];
                    assert!((one[base + i] as f64 - want[0]).abs() < 1e-5);
                    assert!((one[base + i + hd / 2] as f64 - want[1]).abs() < 1e-5);
                }
            }
        }
        // Columns outside the heads are untouched; the inverse restores x.
        assert_eq!(one[..off], x[..off]);
        let back = run(2, true, &one);
        assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
