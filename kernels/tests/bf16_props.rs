//! Property tests of the bf16 linear layer (`linear_bf16`) on every path this CPU runs, against
//! a naive f64 reference and an error bound for f32 accumulation.

use proptest::prelude::*;
use vffn_kernels::bf16::{linear_bf16_with, Bf16Error, Bf16Path, Bf16Rows};
use vffn_kernels::gemm::{MatMut, MatRef};
use vffn_kernels::microkernel::KernelKind;

/// (path, f32 family) pairs this CPU runs: the widen path with every family, the dot path
/// where avx512_bf16 is detected (says which are skipped).
fn paths() -> Vec<(Bf16Path, KernelKind)> {
    let mut all: Vec<_> = KernelKind::ALL
        .into_iter()
        .filter(|k| {
            let ok = k.is_available();
            if !ok {
                eprintln!("skipping the widen path with `{k}`: not supported by this CPU");
            }
            ok
        })
        .map(|k| (Bf16Path::Widen, k))
        .collect();
    if Bf16Path::Dot.is_available() {
        all.push((Bf16Path::Dot, KernelKind::Avx512));
    } else {
        eprintln!(
            "skipping the bf16 dot path: avx512_bf16 (or the avx512 family) is not available"
        );
    }
    all
}

/// Deterministic values in [-1, 1) from a seed (xorshift).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// bf16 bits of x, round-to-nearest-even (the `half` crate's conversion).
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn widen(bits: u16) -> f32 {
    half::bf16::from_bits(bits).to_f32()
}

/// γ(n) = n·u / (1 − n·u), u = 2⁻²⁴: the relative bound of any f32 summation order of n + 1
/// terms (Higham, Lemma 3.1), products included.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * (2.0f64).powi(-24);
    nu / (1.0 - nu)
}

/// One case: x [m, k] (column stride `xcs`: 1 row-major, else column-major), W [n, k] rows
/// `wpad` apart beyond k, out [m, n] starting from `init` (accumulated into when `acc`).
#[derive(Debug, Clone)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    x_col_major: bool,
    wpad: usize,
    acc: bool,
    seed: u64,
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let (m, k, n) = (c.m, c.k, c.n);
    let x = values(c.seed, m * k);
    let xv = if c.x_col_major { MatRef::new(&x, k, m).t() } else { MatRef::new(&x, m, k) };
    let rs = k + c.wpad;
    let w: Vec<u16> = values(c.seed + 1, n * rs).into_iter().map(bf16_bits).collect();
    let wv = Bf16Rows::strided(&w, n, k, rs).unwrap();
    let init = values(c.seed + 2, m * n);
    for (path, kind) in paths() {
        let mut out = if c.acc { init.clone() } else { vec![f32::NAN; m * n] };
        linear_bf16_with(path, kind, xv, wv, MatMut::new(&mut out, m, n), c.acc).unwrap();
        // The dot path (m > 1; one row runs the GEMV) multiplies x rounded to bf16.
        let rounds = path == Bf16Path::Dot && m > 1;
        let xr = |v: f32| if rounds { widen(bf16_bits(v)) } else { v };
        for i in 0..m {
            for j in 0..n {
                let base = if c.acc { init[i * n + j] as f64 } else { 0.0 };
                let terms = (0..k).map(|p| xr(xv.at(i, p)) as f64 * widen(w[j * rs + p]) as f64);
                let want: f64 = base + terms.clone().sum::<f64>();
                let scale: f64 = base.abs() + terms.map(f64::abs).sum::<f64>();
                let got = out[i * n + j] as f64;
                prop_assert!(
                    (got - want).abs() <= gamma(k + 1) * scale,
                    "{path} {kind} ({i},{j}): got {got}, want {want}, bound {}",
                    gamma(k + 1) * scale
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Shapes around the tiles and blocks: m = 1 (the GEMV), ragged rows and panels, odd k,
    /// k across the depth blocks, strided W, column-major x, accumulation.
    #[test]
    fn every_path_matches_the_f64_reference_within_the_f32_accumulation_bound(
        m in prop_oneof![Just(1usize), 2usize..40],
        k in prop_oneof![1usize..80, 700usize..900],
        n in 1usize..70,
        x_col_major in any::<bool>(),
        wpad in 0usize..4,
        acc in any::<bool>(),
        seed in 0u64..1000,
    ) {
        run_case(&Case { m, k, n, x_col_major, wpad, acc, seed })?;
    }
}

#[test]
fn large_products_match_the_reference_on_every_path() {
    // Several row blocks, column blocks and depth blocks, odd k.
    for (m, k, n) in [(300, 1025, 100), (97, 2000, 530)] {
        run_case(&Case { m, k, n, x_col_major: false, wpad: 3, acc: true, seed: 7 }).unwrap();
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (m, k, n) = (200, 777, 300);
    let x = values(1, m * k);
    let w: Vec<u16> = values(2, n * k).into_iter().map(bf16_bits).collect();
    let wv = Bf16Rows::new(&w, n, k).unwrap();
    for (path, kind) in paths() {
        for rows in [1, m] {
            let xv = MatRef::new(&x[..rows * k], rows, k);
            let mut runs = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![0.0f32; rows * n];
                pool.install(|| {
                    linear_bf16_with(path, kind, xv, wv, MatMut::new(&mut out, rows, n), false)
                })
                .unwrap();
                runs.push(out);
            }
            assert!(runs.windows(2).all(|r| r[0] == r[1]), "{path} {kind} m = {rows}");
        }
    }
}

#[test]
fn mismatched_shapes_and_short_weights_are_errors() {
    let x = vec![1.0f32; 6];
    let w = vec![0u16; 12];
    let mut out = vec![0.0f32; 8];
    let wv = Bf16Rows::new(&w, 4, 3).unwrap();
    let bad = linear_bf16_with(
        Bf16Path::Widen,
        KernelKind::Portable,
        MatRef::new(&x, 3, 2),
        wv,
        MatMut::new(&mut out, 3, 2),
        false,
    );
    assert!(matches!(bad, Err(Bf16Error::Shape { .. })), "{bad:?}");
    assert!(matches!(Bf16Rows::new(&w, 5, 3), Err(Bf16Error::Weights { needed: 15, .. })));
    assert!(matches!(Bf16Rows::strided(&w, 3, 3, 2), Err(Bf16Error::Stride { .. })));
}
