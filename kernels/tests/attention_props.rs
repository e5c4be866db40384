//! Attention kernels against a naive f64 reference (full score matrix, masked softmax), a
//! finite-difference check of the backward, decode against the full forward, and thread-count
//! independence.
use proptest::prelude::*;
use vffn_kernels::attention::{
    attention_backward, attention_backward_portable, attention_decode, attention_forward,
    attention_forward_portable, AttnShape,
};

/// Uniforms in [-amp, amp) from the crate's test generator.
fn uniform(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    vffn_kernels::testvals::values(n, seed, amp)
}

struct Reference {
    out: Vec<f64>,
    lse: Vec<f64>,
    d_qkv: Vec<f64>,
}

/// Naive f64 forward and analytic backward: S = QKᵀ/√hd masked, P = softmax(S), O = PV;
/// dV = PᵀdO, dP = dO Vᵀ, dS = P∘(dP − rowsum(dP∘P)), dQ = dS K/√hd, dK = dSᵀQ/√hd.
fn reference(shape: AttnShape, qkv: &[f32], d_out: &[f32]) -> Reference {
    let AttnShape { batch, seq, heads, head_dim: hd } = shape;
    let d = heads * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; batch * seq * d];
    let mut lse = vec![0.0; batch * heads * seq];
    let mut d_qkv = vec![0.0; batch * seq * 3 * d];
    let at = |b: usize, t: usize, part: usize, h: usize, p: usize| {
        qkv[(b * seq + t) * 3 * d + part * d + h * hd + p] as f64
    };
    for b in 0..batch {
        for h in 0..heads {
            let mut prob = vec![vec![0.0f64; seq]; seq];
            for i in 0..seq {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| (0..hd).map(|p| at(b, i, 0, h, p) * at(b, j, 1, h, p)).sum::<f64>())
                    .map(|s| s * scale)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                lse[(b * heads + h) * seq + i] = max + sum.ln();
                for j in 0..=i {
                    prob[i][j] = (scores[j] - max).exp() / sum;
                }
                for p in 0..hd {
                    out[(b * seq + i) * d + h * hd + p] =
                        (0..=i).map(|j| prob[i][j] * at(b, j, 2, h, p)).sum();
                }
            }
            let d_o = |t: usize, p: usize| d_out[(b * seq + t) * d + h * hd + p] as f64;
            for i in 0..seq {
                let dp: Vec<f64> =
                    (0..=i).map(|j| (0..hd).map(|p| d_o(i, p) * at(b, j, 2, h, p)).sum()).collect();
                let row_dot: f64 = (0..=i).map(|j| dp[j] * prob[i][j]).sum();
                for j in 0..=i {
                    let ds = prob[i][j] * (dp[j] - row_dot);
                    for p in 0..hd {
                        d_qkv[(b * seq + i) * 3 * d + h * hd + p] += ds * at(b, j, 1, h, p) * scale;
                        d_qkv[(b * seq + j) * 3 * d + d + h * hd + p] +=
                            ds * at(b, i, 0, h, p) * scale;
                        d_qkv[(b * seq + j) * 3 * d + 2 * d + h * hd + p] += prob[i][j] * d_o(i, p);
                    }
                }
            }
        }
    }
    Reference { out, lse, d_qkv }
}

/// Largest |got − want| / (1 + |want|).
fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs())).fold(0.0, f64::max)
}

fn run_forward(shape: AttnShape, qkv: &[f32], portable: bool) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; shape.batch * shape.seq * shape.d()];
    let mut lse = vec![f32::NAN; shape.batch * shape.heads * shape.seq];
    if portable {
        attention_forward_portable(shape, qkv, &mut out, &mut lse);
    } else {
        attention_forward(shape, qkv, &mut out, &mut lse);
    }
    (out, lse)
}

fn run_backward(shape: AttnShape, qkv: &[f32], d_out: &[f32], portable: bool) -> Vec<f32> {
    let (out, lse) = run_forward(shape, qkv, portable);
    let mut d_qkv = vec![f32::NAN; qkv.len()];
    if portable {
        attention_backward_portable(shape, qkv, &out, &lse, d_out, &mut d_qkv);
    } else {
        attention_backward(shape, qkv, &out, &lse, d_out, &mut d_qkv);
    }
    d_qkv
}

fn shapes() -> impl Strategy<Value = (AttnShape, u64, f32)> {
    let seq = prop_oneof![
        Just(1usize),
        Just(2),
        Just(7),
        Just(13),
        Just(64),
        Just(67),
        Just(128),
        Just(131),
        1usize..100
    ];
    (1usize..3, seq, 1usize..4, 1usize..17, any::<u64>(), prop_oneof![Just(1.0f32), Just(3.0)])
        .prop_map(|(batch, seq, heads, half_hd, seed, amp)| {
            (AttnShape { batch, seq, heads, head_dim: 2 * half_hd }, seed, amp)
        })
}

/// Largest relative errors (relative to 1 + |reference|) of one family's out, lse and d_qkv.
#[derive(Clone, Copy)]
struct Tolerances {
    out: f64,
    lse: f64,
    bwd: f64,
}

// ~3x the largest error seen over 400 random cases: f32 accumulation over ≤ hd products for
// scores and ≤ T terms for outputs and gradients.
const FMA_TOL: Tolerances = Tolerances { out: 5e-6, lse: 1e-6, bwd: 5e-6 };
// The portable fallback rounds each multiply and add separately (no FMA): ~2x the error, bounds
// again ~3x the worst seen over 600 cases (out 2.8e-6, lse 1.04e-6, d_qkv 3.2e-6).
const PORTABLE_TOL: Tolerances = Tolerances { out: 1e-5, lse: 3e-6, bwd: 1e-5 };

/// Forward (out, lse) and backward (d_qkv) of one case against the naive f64 reference, on the
/// selected kernels or the portable fallback.
fn matches_naive(
    shape: AttnShape,
    seed: u64,
    amp: f32,
    portable: bool,
) -> Result<(), TestCaseError> {
    let tol = if portable { PORTABLE_TOL } else { FMA_TOL };
    let qkv = uniform(seed, shape.batch * shape.seq * 3 * shape.d(), amp);
    let d_out = uniform(seed ^ 0xABCD, shape.batch * shape.seq * shape.d(), 1.0);
    let want = reference(shape, &qkv, &d_out);
    let (out, lse) = run_forward(shape, &qkv, portable);
    let err = max_rel_err(&out, &want.out);
    prop_assert!(err < tol.out, "out err {err} (portable: {portable})");
    let err = max_rel_err(&lse, &want.lse);
    prop_assert!(err < tol.lse, "lse err {err} (portable: {portable})");
    let d_qkv = run_backward(shape, &qkv, &d_out, portable);
    let err = max_rel_err(&d_qkv, &want.d_qkv);
    prop_assert!(err < tol.bwd, "d_qkv err {err} (portable: {portable})");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn forward_and_backward_match_naive_f64((shape, seed, amp) in shapes()) {
        matches_naive(shape, seed, amp, false)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn portable_fallback_matches_naive_f64((shape, seed, amp) in shapes()) {
        matches_naive(shape, seed, amp, true)?;
    }

    #[test]
    fn decode_equals_forward_rows(
        seq in 1usize..80, heads in 1usize..4, half_hd in 1usize..20, seed in any::<u64>()
    ) {
        let shape = AttnShape { batch: 1, seq, heads, head_dim: 2 * half_hd };
        let d = shape.d();
        let qkv = uniform(seed, seq * 3 * d, 2.0);
        let (out, _) = run_forward(shape, &qkv, false);
        let k_cache: Vec<f32> = (0..seq).flat_map(|t| qkv[t * 3 * d + d..t * 3 * d + 2 * d].to_vec()).collect();
        let v_cache: Vec<f32> = (0..seq).flat_map(|t| qkv[t * 3 * d + 2 * d..(t + 1) * 3 * d].to_vec()).collect();
        for t in 0..seq {
            let mut row = vec![f32::NAN; d];
            // The cache may hold more rows than `len`: only the first len = t+1 count.
            attention_decode(heads, shape.head_dim, &qkv[t * 3 * d..t * 3 * d + d], &k_cache, &v_cache, t + 1, &mut row);
            for (p, (&got, &want)) in row.iter().zip(&out[t * d..(t + 1) * d]).enumerate() {
                prop_assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "t {t} col {p}: {got} vs {want}");
            }
        }
    }
}

/// Central differences of L = Σ out∘w (w fixed random) against the kernel's backward.
#[test]
fn backward_matches_finite_differences() {
    for (shape, seed) in [
        (AttnShape { batch: 1, seq: 5, heads: 2, head_dim: 4 }, 1u64),
        (AttnShape { batch: 2, seq: 3, heads: 1, head_dim: 6 }, 2),
        (AttnShape { batch: 1, seq: 11, heads: 1, head_dim: 2 }, 3),
    ] {
        let qkv = uniform(seed, shape.batch * shape.seq * 3 * shape.d(), 1.5);
        let weights = uniform(seed + 100, shape.batch * shape.seq * shape.d(), 1.0);
        let loss = |x: &[f32]| -> f64 {
            let (out, _) = run_forward(shape, x, false);
            out.iter().zip(&weights).map(|(&o, &w)| o as f64 * w as f64).sum()
        };
        let grad = run_backward(shape, &qkv, &weights, false);
        let h = 1e-2f32;
        for i in 0..qkv.len() {
            let mut plus = qkv.clone();
            plus[i] += h;
            let mut minus = qkv.clone();
            minus[i] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (plus[i] - minus[i]) as f64;
            let analytic = grad[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 * (1.0 + analytic.abs()),
                "{shape:?} input {i}: numeric {numeric} vs analytic {analytic}"
            );
        }
    }
}

/// Same result, bit for bit, whatever the number of rayon threads.
#[test]
fn bitwise_independent_of_thread_count() {
    let shape = AttnShape { batch: 3, seq: 97, heads: 3, head_dim: 32 };
    let qkv = uniform(7, shape.batch * shape.seq * 3 * shape.d(), 2.0);
    let d_out = uniform(8, shape.batch * shape.seq * shape.d(), 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (out, lse) = run_forward(shape, &qkv, false);
            let d_qkv = run_backward(shape, &qkv, &d_out, false);
            (out, lse, d_qkv)
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        let many = run(threads);
        assert!(one.0.iter().zip(&many.0).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(one.1.iter().zip(&many.1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(one.2.iter().zip(&many.2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// A sharply peaked softmax (large scores) stays finite and matches the reference.
#[test]
fn large_scores_stay_finite() {
    let shape = AttnShape { batch: 1, seq: 70, heads: 2, head_dim: 16 };
    let qkv = uniform(11, shape.batch * shape.seq * 3 * shape.d(), 12.0);
    let d_out = uniform(12, shape.batch * shape.seq * shape.d(), 1.0);
    let want = reference(shape, &qkv, &d_out);
    let (out, lse) = run_forward(shape, &qkv, false);
    assert!(out.iter().chain(&lse).all(|x| x.is_finite()));
    // Scores reach ~hd·144/4 ≈ 580: lse carries their f32 rounding.
    assert!(max_rel_err(&out, &want.out) < 1e-4);
    assert!(max_rel_err(&lse, &want.lse) < 1e-5);
}
