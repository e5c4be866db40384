//! Finite-difference gradient checks for every op (central differences, accumulated in f64),
//! on random shapes drawn by proptest.
//!
//! `check` computes L(x) = Σ f(x)·r for a fixed random r: the tape gives ∂L/∂x by
//! `backward_with_grad(out, r)`; finite differences re-run f on a no-grad tape with each input
//! element moved by ±h. It also runs f twice on the same inputs and sums the outputs, so every
//! op's backward runs once into a fresh gradient slot and once accumulating, and checks that the
//! result is twice the single gradient.

use proptest::prelude::*;

use crate::{AttnShape, Rng, Tape, Tensor, Trans, RMS_NORM_EPS, ROPE_THETA};

fn uniform(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()).unwrap()
}

/// `n` ids drawn uniformly below `below`.
fn random_ids(n: usize, below: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(below) as u32).collect()
}

/// A uniform [rows, d] table and `n` ids of its rows.
fn table_and_ids(rows: usize, d: usize, n: usize, rng: &mut Rng) -> (Tensor, Vec<u32>) {
    let table = uniform(&[rows, d], rng);
    (table, random_ids(n, rows, rng))
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Operands of a binary op from `seed`: a [r, c] and b [r, c], or b [c] (broadcast) when `bcast`.
fn binary_operands(r: usize, c: usize, bcast: bool, seed: u64) -> [Tensor; 2] {
    let mut rng = Rng::new(seed);
    let a = uniform(&[r, c], &mut rng);
    let b = if bcast { uniform(&[c], &mut rng) } else { uniform(&[r, c], &mut rng) };
    [a, b]
}

/// Compares tape gradients of `f` at `inputs` with central finite differences.
fn check<F>(inputs: &[Tensor], seed: u64, h: f32, tol: f64, f: F) -> Result<(), TestCaseError>
where
    F: Fn(&mut Tape, &[Tensor]) -> Tensor,
{
    let mut rng = Rng::new(seed ^ 0xD1CE);
    // Analytic, single use.
    let mut tape = Tape::new();
    let xs: Vec<Tensor> = inputs.iter().map(|t| tape.watch(t)).collect();
    let out = f(&mut tape, &xs);
    let r: Vec<f32> = (0..out.numel()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    prop_assert!(out.is_tracked(), "output not tracked");
    let grads = tape.backward_with_grad(&out, &r).unwrap();
    let analytic: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| grads.get(x).map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; x.numel()]))
        .collect();
    drop(grads);
    // Analytic, two uses summed: exercises the accumulate path of every backward.
    let mut tape = Tape::new();
    let xs2: Vec<Tensor> = inputs.iter().map(|t| tape.watch(t)).collect();
    let (o1, o2) = (f(&mut tape, &xs2), f(&mut tape, &xs2));
    let sum = tape.add(&o1, &o2);
    let grads2 = tape.backward_with_grad(&sum, &r).unwrap();
    for (i, x) in xs2.iter().enumerate() {
        let twice = grads2.get(x).map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; x.numel()]);
        for (j, (&a2, &a)) in twice.iter().zip(&analytic[i]).enumerate() {
            prop_assert!(
                (a2 as f64 - 2.0 * a as f64).abs() <= 1e-5 * (1.0 + a.abs() as f64),
                "input {i} elem {j}: accumulated {a2} vs 2×{a}"
            );
        }
    }
    // Numeric.
    let loss = |vals: &[Tensor]| -> f64 {
        let mut t = Tape::no_grad();
        let o = f(&mut t, vals);
        assert_eq!(t.num_nodes(), 0, "no-grad tape recorded nodes");
        dot64(o.data(), &r)
    };
    for (i, x) in inputs.iter().enumerate() {
        for j in 0..x.numel() {
            let mut perturbed = inputs.to_vec();
            let base = x.data()[j];
            let (up, down) = (base + h, base - h);
            let mut v = x.to_vec();
            v[j] = up;
            perturbed[i] = Tensor::from_vec(x.shape(), v.clone()).unwrap();
            let lp = loss(&perturbed);
            v[j] = down;
            perturbed[i] = Tensor::from_vec(x.shape(), v).unwrap();
            let lm = loss(&perturbed);
            let numeric = (lp - lm) / (up as f64 - down as f64);
            let a = analytic[i][j] as f64;
            prop_assert!(
                (a - numeric).abs() <= tol * (1.0 + numeric.abs()),
                "input {i} elem {j}: analytic {a} numeric {numeric}"
            );
        }
    }
    Ok(())
}

const H: f32 = 1e-2;
const TOL: f64 = 2e-3;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn grad_matmul(m in 1usize..7, k in 1usize..7, n in 1usize..7, ta: bool, tb: bool,
                   seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (ta, tb) = (if ta { Trans::T } else { Trans::N }, if tb { Trans::T } else { Trans::N });
        let a = uniform(&if ta == Trans::N { [m, k] } else { [k, m] }, &mut rng);
        let b = uniform(&if tb == Trans::N { [k, n] } else { [n, k] }, &mut rng);
        check(&[a, b], seed, H, TOL, |t, x| t.matmul(&x[0], &x[1], ta, tb))?;
    }

    #[test]
    fn grad_linear(b in 1usize..3, t in 1usize..4, k in 1usize..6, n in 1usize..6,
                   seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = uniform(&[b, t, k], &mut rng);
        let w = uniform(&[n, k], &mut rng);
        check(&[x, w], seed, H, TOL, |tp, v| {
            let y = tp.linear(&v[0], &v[1]);
            assert_eq!(y.shape(), [b, t, n]);
            y
        })?;
    }

    #[test]
    fn grad_add(r in 1usize..5, c in 1usize..6, bcast: bool, seed in any::<u64>()) {
        check(&binary_operands(r, c, bcast, seed), seed, H, TOL, |t, x| t.add(&x[0], &x[1]))?;
    }

    #[test]
    fn grad_sub(r in 1usize..5, c in 1usize..6, bcast: bool, seed in any::<u64>()) {
        check(&binary_operands(r, c, bcast, seed), seed, H, TOL, |t, x| t.sub(&x[0], &x[1]))?;
    }

    #[test]
    fn grad_mul(r in 1usize..5, c in 1usize..6, bcast: bool, seed in any::<u64>()) {
        check(&binary_operands(r, c, bcast, seed), seed, H, TOL, |t, x| t.mul(&x[0], &x[1]))?;
    }

    #[test]
    fn grad_scale(n in 1usize..20, c in -3.0f32..3.0, seed in any::<u64>()) {
        let x = uniform(&[n], &mut Rng::new(seed));
        check(&[x], seed, H, TOL, |t, v| t.scale(&v[0], c))?;
    }

    #[test]
    fn grad_scale_rows(r in 1usize..6, c in 1usize..7, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = uniform(&[r, c], &mut rng);
        let w = uniform(&[r], &mut rng);
        check(&[x, w], seed, H, TOL, |t, v| t.scale_rows(&v[0], &v[1]))?;
    }

    #[test]
    fn grad_sum_mean(r in 1usize..6, c in 1usize..7, seed in any::<u64>()) {
        let x = uniform(&[r, c], &mut Rng::new(seed));
        check(std::slice::from_ref(&x), seed, H, TOL, |t, v| t.sum(&v[0]))?;
        check(std::slice::from_ref(&x), seed, H, TOL, |t, v| t.mean(&v[0]))?;
        check(&[x], seed, H, TOL, |t, v| t.mean_rows(&v[0]))?;
    }

    #[test]
    fn grad_rms_norm(r in 1usize..6, d in 1usize..20, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        // |x| in [0.5, 1]: keeps each row's RMS away from 0, where x/rms(x) is nearly a step and
        // central differences (not the gradient) lose accuracy.
        let x: Vec<f32> = (0..r * d)
            .map(|_| {
                let m = 0.5 + 0.5 * rng.uniform();
                if rng.below(2) == 0 { m } else { -m }
            })
            .collect();
        let x = Tensor::from_vec(&[r, d], x).unwrap();
        let w = uniform(&[d], &mut rng);
        check(&[x, w], seed, 1e-3, 5e-3, |t, v| t.rms_norm(&v[0], &v[1], RMS_NORM_EPS))?;
    }

    #[test]
    fn grad_silu(n in 1usize..40, seed in any::<u64>()) {
        let x = uniform(&[n], &mut Rng::new(seed));
        check(&[t3(x)], seed, H, TOL, |t, v| t.silu(&v[0]))?;
    }

    #[test]
    fn grad_swiglu(r in 1usize..5, h in 1usize..12, seed in any::<u64>()) {
        let x = t3(uniform(&[r, 2 * h], &mut Rng::new(seed)));
        check(&[x], seed, H, TOL, |t, v| t.swiglu(&v[0]))?;
    }

    #[test]
    fn grad_softmax(r in 1usize..5, n in 1usize..12, seed in any::<u64>()) {
        let x = t3(uniform(&[r, n], &mut Rng::new(seed)));
        check(&[x], seed, H, TOL, |t, v| t.softmax(&v[0]))?;
    }

    #[test]
    fn grad_cross_entropy(r in 1usize..6, v in 1usize..12, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = t3(uniform(&[r, v], &mut rng));
        let targets = random_ids(r, v, &mut rng);
        check(&[x], seed, H, TOL, |t, l| t.cross_entropy(&l[0], &targets))?;
    }

    #[test]
    fn grad_embedding(vocab in 1usize..8, d in 1usize..6, n in 1usize..10, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (table, ids) = table_and_ids(vocab, d, n, &mut rng);
        check(&[table], seed, H, TOL, |t, v| t.embedding(&v[0], &ids))?;
    }

    #[test]
    fn grad_gather(rows in 1usize..8, d in 1usize..6, m in 0usize..10, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (x, idx) = table_and_ids(rows, d, m, &mut rng);
        // Multiply by a second tracked input so an empty gather still yields a tracked output.
        let s = uniform(&[m, d], &mut rng);
        check(&[x, s], seed, H, TOL, |t, v| {
            let g = t.gather_rows(&v[0], &idx);
            t.mul(&g, &v[1])
        })?;
    }

    #[test]
    fn grad_scatter_add(m in 1usize..10, d in 1usize..6, rows in 1usize..6, weighted: bool,
                        seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let src = uniform(&[m, d], &mut rng);
        let w = uniform(&[m], &mut rng);
        let idx = random_ids(m, rows, &mut rng);
        check(&[src, w], seed, H, TOL, |t, v| {
            if weighted {
                t.scatter_add(&v[0], &idx, Some(&v[1]), rows)
            } else {
                t.scatter_add(&v[0], &idx, None, rows)
            }
        })?;
    }

    #[test]
    fn grad_top_k(r in 1usize..5, n in 1usize..9, kf in 0.0f64..1.0, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let k = 1 + ((n - 1) as f64 * kf) as usize;
        // Distinct values spaced ≫ h apart, so ±h never changes the selection.
        let mut data = Vec::new();
        for _ in 0..r {
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, rng.below(i + 1));
            }
            data.extend(perm.iter().map(|&p| p as f32 * 0.25 - 1.0 + rng.uniform() * 0.05));
        }
        let x = Tensor::from_vec(&[r, n], data).unwrap();
        check(&[x], seed, H, TOL, |t, v| {
            let (vals, idx) = t.top_k(&v[0], k);
            for row in 0..r {
                let got = &vals.data()[row * k..(row + 1) * k];
                assert!(got.windows(2).all(|w| w[0] >= w[1]), "not descending");
                for (j, &i) in idx[row * k..(row + 1) * k].iter().enumerate() {
                    assert_eq!(v[0].data()[row * n + i as usize], got[j]);
                }
            }
            vals
        })?;
    }

    #[test]
    fn grad_gumbel_softmax(r in 1usize..5, n in 1usize..8, tau in 0.3f32..2.0,
                           seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let logits = uniform(&[r, n], &mut rng);
        let mut noise_rng = Rng::new(seed ^ 77);
        let noise: Vec<f32> = (0..r * n).map(|_| noise_rng.gumbel()).collect();
        let noise_t = Tensor::from_vec(&[r, n], noise.clone()).unwrap();
        // Straight-through: the tape's gradient must be that of softmax((l+g)/τ), so the no-grad
        // tape (used for the finite differences) evaluates that soft surrogate.
        check(std::slice::from_ref(&logits), seed, H, TOL, |t, v| {
            if t.grad_enabled() {
                let hard = t.gumbel_softmax_hard_with_noise(&v[0], tau, &noise);
                for (row, hr) in hard.data().chunks(n).enumerate() {
                    assert_eq!(hr.iter().filter(|&&x| x == 1.0).count(), 1);
                    assert_eq!(hr.iter().filter(|&&x| x == 0.0).count(), n - 1);
                    let z: Vec<f32> = (0..n).map(|j| v[0].data()[row * n + j] + noise[row * n + j])
                        .collect();
                    let hot = hr.iter().position(|&x| x == 1.0).unwrap();
                    assert!(z.iter().all(|&zj| zj <= z[hot]));
                }
                hard
            } else {
                let z = t.add(&v[0], &noise_t);
                let z = t.scale(&z, 1.0 / tau);
                t.softmax(&z)
            }
        })?;
        // Rng-driven noise is reproducible; zero noise picks argmax of the logits.
        let mut t = Tape::no_grad();
        let a = t.gumbel_softmax_hard(&logits, tau, Some(&mut Rng::new(5)));
        let b = t.gumbel_softmax_hard(&logits, tau, Some(&mut Rng::new(5)));
        prop_assert_eq!(a.data(), b.data());
        let z = t.gumbel_softmax_hard(&logits, tau, None);
        for (lr, zr) in logits.data().chunks(n).zip(z.data().chunks(n)) {
            let hot = zr.iter().position(|&x| x == 1.0).unwrap();
            prop_assert!(lr.iter().all(|&l| l <= lr[hot]));
        }
    }

    #[test]
    fn grad_stack(n in 1usize..4, r in 1usize..4, c in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let xs: Vec<Tensor> = (0..n).map(|_| uniform(&[r, c], &mut rng)).collect();
        check(&xs, seed, H, TOL, |t, v| {
            let refs: Vec<&Tensor> = v.iter().collect();
            t.stack(&refs)
        })?;
    }

    #[test]
    fn grad_weighted_sum(n in 1usize..4, r in 1usize..5, c in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let s = uniform(&[n, r, c], &mut rng);
        let w = uniform(&[r, n], &mut rng);
        check(&[s, w], seed, H, TOL, |t, v| t.weighted_sum(&v[0], &v[1]))?;
    }

    #[test]
    fn grad_concat(r in 1usize..4, c1 in 1usize..4, c2 in 1usize..4, axis in 0usize..2,
                   seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (a, b) = if axis == 1 {
            (uniform(&[r, c1], &mut rng), uniform(&[r, c2], &mut rng))
        } else {
            (uniform(&[c1, r], &mut rng), uniform(&[c2, r], &mut rng))
        };
        check(&[a, b], seed, H, TOL, |t, v| t.concat(&[&v[0], &v[1]], axis))?;
    }

    #[test]
    fn grad_split(r in 1usize..5, c in 2usize..7, axis in 0usize..2, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = uniform(&[r, c], &mut rng);
        let dim = [r, c][axis];
        let first = 1 + rng.below(dim);
        let sizes = [first - 1, dim - first + 1];
        let w: Vec<Tensor> = sizes.iter().map(|&s| {
            let mut sh = [r, c];
            sh[axis] = s;
            uniform(&sh, &mut rng)
        }).collect();
        // Weight the pieces differently (one piece may be empty) and sum them into one output.
        check(&[x], seed, H, TOL, |t, v| {
            let p = t.split(&v[0], axis, &sizes);
            let a = t.mul(&p[0], &w[0]);
            let b = t.mul(&p[1], &w[1]);
            let (sa, sb) = (t.sum(&a), t.sum(&b));
            let sb = t.scale(&sb, 3.0);
            let both = t.stack(&[&sa, &sb]);
            t.concat(&[&both, &p[1].reshape(&[p[1].numel()]).unwrap()], 0)
        })?;
    }

    #[test]
    fn grad_transpose_and_views(r in 1usize..5, c in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = uniform(&[r, c], &mut rng);
        let w = uniform(&[c, r], &mut rng);
        check(&[x, w], seed, H, TOL, |t, v| {
            let xt = t.transpose(&v[0]);
            let prod = t.mul(&xt, &v[1]);
            // A view of the last rows plus a reshape, both keeping the tape link.
            let tail = prod.narrow_rows(c / 2, c - c / 2).unwrap();
            let flat = tail.reshape(&[tail.numel()]).unwrap();
            let s = t.silu(&flat);
            t.concat(&[&s, &v[0].reshape(&[r * c]).unwrap()], 0)
        })?;
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn grad_rope(b in 1usize..3, t in 1usize..5, heads in 1usize..3, half in 1usize..4,
                 seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let hd = 2 * half;
        let d = heads * hd;
        let x = uniform(&[b * t, 3 * d], &mut rng);
        let positions: Vec<usize> = (0..b * t).map(|i| (i % t) * 7 + rng.below(3)).collect();
        check(std::slice::from_ref(&x), seed, H, TOL, |tp, v| {
            tp.rope(&v[0], &[0, d], heads, hd, &positions, ROPE_THETA)
        })?;
        // The rotation preserves each head's norm and leaves v (columns 2d..3d) untouched.
        let mut tp = Tape::no_grad();
        let y = tp.rope(&x, &[0, d], heads, hd, &positions, ROPE_THETA);
        for (xr, yr) in x.data().chunks(3 * d).zip(y.data().chunks(3 * d)) {
            prop_assert_eq!(&xr[2 * d..], &yr[2 * d..]);
            for h in 0..2 * heads {
                let n = |s: &[f32]| s[h * hd..(h + 1) * hd].iter().map(|v| v * v).sum::<f32>();
                prop_assert!((n(xr) - n(yr)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn grad_attention(b in 1usize..3, t in 1usize..6, heads in 1usize..3, hd in 1usize..5,
                      seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let shape = AttnShape { batch: b, seq: t, heads, head_dim: 2 * hd };
        let d = shape.d();
        let qkv = uniform(&[b * t, 3 * d], &mut rng);
        check(&[qkv], seed, H, TOL, |tp, v| tp.attention(&v[0], shape))?;
    }
}

/// Scales inputs to [-3, 3] so saturating nonlinearities are exercised.
fn t3(x: Tensor) -> Tensor {
    let v = x.data().iter().map(|v| v * 3.0).collect();
    Tensor::from_vec(x.shape(), v).unwrap()
}
