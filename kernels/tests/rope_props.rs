//! RoPE against a naive reference, inverse∘forward = identity, strided/offset layouts.
use proptest::prelude::*;
use vffn_kernels::rope::{rope_apply, rope_inv_freq};

fn uniform(seed: u64, n: usize) -> Vec<f32> {
    vffn_kernels::testvals::values(n, seed, 1.0)
}

/// Naive rotate-half in f64, with the angle formed as documented (f32 `pos * inv_freq`, as
/// PyTorch does) so only the rotation arithmetic differs.
fn naive(x: &[f32], head_dim: usize, pos: usize, theta: f32, inverse: bool) -> Vec<f64> {
    let half = head_dim / 2;
    let mut y = vec![0.0f64; head_dim];
    for i in 0..half {
        let inv_freq = 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32);
        let angle = (pos as f32 * inv_freq) as f64 * if inverse { -1.0 } else { 1.0 };
        let (a, b) = (x[i] as f64, x[i + half] as f64);
        y[i] = a * angle.cos() - b * angle.sin();
        y[i + half] = b * angle.cos() + a * angle.sin();
    }
    y
}

#[derive(Debug, Clone)]
struct Layout {
    rows: usize,
    heads: usize,
    head_dim: usize,
    col_offset: usize,
    extra: usize,
    positions: Vec<usize>,
    theta: f32,
    seed: u64,
}

impl Layout {
    fn row_stride(&self) -> usize {
        self.col_offset + self.heads * self.head_dim + self.extra
    }
}

fn layouts() -> impl Strategy<Value = Layout> {
    (1usize..20, 1usize..4, 1usize..33, 0usize..10, 0usize..5, any::<u64>(), any::<bool>())
        .prop_flat_map(|(rows, heads, half, col_offset, extra, seed, big_pos)| {
            let max_pos: usize = if big_pos { 5000 } else { 40 };
            (prop::collection::vec(0..max_pos, rows), prop_oneof![Just(10_000.0f32), Just(500.0)])
                .prop_map(move |(positions, theta)| Layout {
                    rows,
                    heads,
                    head_dim: 2 * half,
                    col_offset,
                    extra,
                    positions,
                    theta,
                    seed,
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_naive_and_leaves_other_columns(lay in layouts(), inverse in any::<bool>()) {
        let stride = lay.row_stride();
        let x0 = uniform(lay.seed, lay.rows * stride);
        let mut x = x0.clone();
        rope_apply(&mut x, lay.rows, stride, lay.col_offset, lay.heads, lay.head_dim,
            &lay.positions, lay.theta, inverse);
        for r in 0..lay.rows {
            for c in 0..stride {
                let in_heads = c >= lay.col_offset && c < lay.col_offset + lay.heads * lay.head_dim;
                if !in_heads {
                    prop_assert_eq!(x[r * stride + c].to_bits(), x0[r * stride + c].to_bits());
                }
            }
            for h in 0..lay.heads {
                let start = r * stride + lay.col_offset + h * lay.head_dim;
                let want = naive(&x0[start..start + lay.head_dim], lay.head_dim,
                    lay.positions[r], lay.theta, inverse);
                for (p, (&got, &want)) in x[start..start + lay.head_dim].iter().zip(&want).enumerate() {
                    prop_assert!((got as f64 - want).abs() < 1e-6, "row {r} head {h} col {p}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn inverse_undoes_forward(lay in layouts()) {
        let stride = lay.row_stride();
        let x0 = uniform(lay.seed, lay.rows * stride);
        let mut x = x0.clone();
        let args = (lay.rows, stride, lay.col_offset, lay.heads, lay.head_dim);
        rope_apply(&mut x, args.0, args.1, args.2, args.3, args.4, &lay.positions, lay.theta, false);
        rope_apply(&mut x, args.0, args.1, args.2, args.3, args.4, &lay.positions, lay.theta, true);
        for (&a, &b) in x.iter().zip(&x0) {
            prop_assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// One row at a time (no position table) gives the same bits as a batched call (table).
    #[test]
    fn row_by_row_equals_batched(lay in layouts()) {
        let stride = lay.row_stride();
        let x0 = uniform(lay.seed, lay.rows * stride);
        let mut batched = x0.clone();
        rope_apply(&mut batched, lay.rows, stride, lay.col_offset, lay.heads, lay.head_dim,
            &lay.positions, lay.theta, false);
        let mut single = x0.clone();
        for r in 0..lay.rows {
            rope_apply(&mut single[r * stride..(r + 1) * stride], 1, stride, lay.col_offset,
                lay.heads, lay.head_dim, &lay.positions[r..r + 1], lay.theta, false);
        }
        prop_assert!(batched.iter().zip(&single).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn inv_freq_matches_formula() {
    let f = rope_inv_freq(8, 10_000.0);
    let want = [1.0, 0.1, 0.01, 0.001];
    for (got, want) in f.iter().zip(want) {
        assert!((got - want).abs() <= 1e-7 * want.max(1e-3), "{got} vs {want}");
    }
}

#[test]
fn position_zero_is_identity_and_norm_is_kept() {
    let x0 = uniform(5, 2 * 16);
    let mut x = x0.clone();
    rope_apply(&mut x, 2, 16, 0, 2, 8, &[0, 0], 10_000.0, false);
    assert_eq!(x, x0);
    let mut y = x0.clone();
    rope_apply(&mut y, 2, 16, 0, 2, 8, &[3, 1000], 10_000.0, false);
    // Each pair is rotated, so each pair's norm is unchanged.
    for r in 0..2 {
        for h in 0..2 {
            for i in 0..4 {
                let (a, b) = (r * 16 + h * 8 + i, r * 16 + h * 8 + i + 4);
                let before = x0[a].hypot(x0[b]);
                let after = y[a].hypot(y[b]);
                assert!((before - after).abs() < 1e-6);
            }
        }
    }
    assert_ne!(y, x0);
}
