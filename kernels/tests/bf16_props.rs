//! Property tests of the bf16 linear layer (`linear_bf16`) on every path this CPU runs, against
//! a naive f64 reference and an error bound for f32 accumulation.

mod common;

use common::{kernels, values};
use proptest::prelude::*;
use vffn_kernels::bf16::{
    gemv_bf16, gemv_bf16_with, linear_bf16_with, Bf16Error, Bf16Path, Bf16Rows,
};
use vffn_kernels::gemm::{MatMut, MatRef};
use vffn_kernels::microkernel::KernelKind;

/// (path, f32 family) pairs this CPU runs: the widen path with every family, the dot path
/// where avx512_bf16 is detected (says which are skipped).
fn paths() -> Vec<(Bf16Path, KernelKind)> {
    let mut all: Vec<_> = kernels().into_iter().map(|k| (Bf16Path::Widen, k)).collect();
    for path in [Bf16Path::Dot, Bf16Path::Amx] {
        if path.is_available() {
            all.push((path, KernelKind::Avx512));
        } else {
            eprintln!("skipping the bf16 `{path}` path: this CPU (or VFFN_KERNEL) does not run it");
        }
    }
    all
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
    /// out stored column-major (strided rows).
    out_col_major: bool,
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
        // Element (i, j) of out at i·n + j, or at j·m + i when column-major.
        let at = |i: usize, j: usize| if c.out_col_major { j * m + i } else { i * n + j };
        let ov = if c.out_col_major {
            MatMut::strided(&mut out, m, n, 1, m)
        } else {
            MatMut::new(&mut out, m, n)
        };
        linear_bf16_with(path, kind, xv, wv, ov, c.acc).unwrap();
        // The dot and AMX paths (m > 1; one row runs the GEMV) multiply x rounded to bf16.
        let rounds = path != Bf16Path::Widen && m > 1;
        let xr = |v: f32| if rounds { widen(bf16_bits(v)) } else { v };
        for i in 0..m {
            for j in 0..n {
                let base = if c.acc { init[at(i, j)] as f64 } else { 0.0 };
                let terms = (0..k).map(|p| xr(xv.at(i, p)) as f64 * widen(w[j * rs + p]) as f64);
                let want: f64 = base + terms.clone().sum::<f64>();
                let scale: f64 = base.abs() + terms.map(f64::abs).sum::<f64>();
                let got = out[at(i, j)] as f64;
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
        out_col_major in any::<bool>(),
        seed in 0u64..1000,
    ) {
        run_case(&Case { m, k, n, x_col_major, wpad, acc, out_col_major, seed })?;
    }
}

#[test]
fn large_products_match_the_reference_on_every_path() {
    // Several row blocks, column blocks and depth blocks, odd k.
    for (m, k, n) in [(300, 1025, 100), (97, 2000, 530)] {
        for out_col_major in [false, true] {
            let case =
                Case { m, k, n, x_col_major: false, wpad: 3, acc: true, out_col_major, seed: 7 };
            run_case(&case).unwrap();
        }
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

/// f32 values whose rounding to bf16 is interesting: exact ties (low half 0x8000) with even and
/// odd kept bits, just below and above a tie, carries into the exponent, the largest finite
/// values (rounding to infinity), infinities, NaNs, subnormals, and xorshift bit patterns.
fn rounding_cases() -> Vec<f32> {
    let mut bits = vec![
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_7FFF,
        0x3F80_8001,
        0x3FFF_FFFF,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F7F_8000,
        0x7F80_0000,
        0xFF80_0000,
        0x7FC0_0000,
        0x7F80_0001,
        0xFFFF_FFFF,
        0x0000_8000,
        0x0001_8000,
        0x0000_0001,
        0x807F_FFFF,
        0x0000_0000,
        0x8000_0000,
    ];
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    bits.extend((0..4000).map(|_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 32) as u32
    }));
    bits.into_iter().map(f32::from_bits).collect()
}

#[test]
fn bf16_bits_rounds_to_nearest_even_as_the_half_crate_does() {
    for x in rounding_cases() {
        assert_eq!(bf16_bits(x), vffn_kernels::bf16::bf16_bits(x), "{:#010x}", x.to_bits());
    }
}

/// With W the identity, out[i, j] is x[i, j] as the kernel packed it: the dot and AMX paths must
/// give exactly the bf16 rounding of x (ties to even), through the vector packer (row-major x,
/// 16 values at a time) and the scalar one (column-major x, and the odd tail of k).
#[test]
fn the_dot_and_amx_paths_round_x_to_nearest_even_when_packing() {
    let (m, k) = (40, 67);
    // Normal values only: the bf16 instructions treat subnormal inputs as zero.
    let x: Vec<f32> = rounding_cases()
        .into_iter()
        .filter(|v| v.is_normal() && v.abs() < 1e30)
        .take(m * k)
        .collect();
    assert_eq!(x.len(), m * k);
    let mut eye = vec![0u16; k * k];
    for j in 0..k {
        eye[j * k + j] = bf16_bits(1.0);
    }
    let w = Bf16Rows::new(&eye, k, k).unwrap();
    let xt: Vec<f32> = (0..k * m).map(|t| x[(t % m) * k + t / m]).collect();
    for path in [Bf16Path::Dot, Bf16Path::Amx] {
        if !path.is_available() {
            eprintln!("skipping the bf16 `{path}` path: this CPU (or VFFN_KERNEL) does not run it");
            continue;
        }
        for view in [MatRef::new(&x, m, k), MatRef::new(&xt, k, m).t()] {
            let mut out = vec![0.0f32; m * k];
            let o = MatMut::new(&mut out, m, k);
            linear_bf16_with(path, KernelKind::Avx512, view, w, o, false).unwrap();
            for i in 0..m {
                for j in 0..k {
                    let want = widen(bf16_bits(view.at(i, j)));
                    let got = out[i * k + j];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{path} x = {:#010x}",
                        view.at(i, j).to_bits()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bf16 GEMV (`gemv_bf16`, one row of x: decoding).

proptest! {
    #[test]
    fn every_isa_matches_the_f64_sums_of_the_widened_weights(
        k in 1usize..300,
        rows in 1usize..13,
        pad in 0usize..5,
        seed in 0u64..1000,
    ) {
        let rs = k + pad;
        let x = values(seed, k);
        let w: Vec<u16> = values(seed + 1, rows * rs).into_iter().map(bf16_bits).collect();
        let wv = Bf16Rows::strided(&w, rows, k, rs).unwrap();
        for kind in kernels() {
            let mut out = vec![f32::NAN; rows];
            gemv_bf16_with(kind, &x, wv, &mut out).unwrap();
            for (j, &got) in out.iter().enumerate() {
                let row = &w[j * rs..j * rs + k];
                let want: f64 = x.iter().zip(row).map(|(&a, &b)| a as f64 * widen(b) as f64).sum();
                let scale: f64 = x.iter().zip(row).map(|(&a, &b)| (a * widen(b)).abs() as f64).sum();
                prop_assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + scale), "{kind:?} row {j}");
                // The same row alone gives the same bits (position-independent order).
                let mut alone = [0.0f32];
                let one = Bf16Rows::strided(&w[j * rs..], 1, k, rs).unwrap();
                gemv_bf16_with(kind, &x, one, &mut alone).unwrap();
                prop_assert_eq!(alone[0].to_bits(), got.to_bits(), "{:?} row {}", kind, j);
            }
        }
    }
}

#[test]
fn the_gemv_splits_rows_over_threads_without_changing_results() {
    let (k, rows) = (300, 1000);
    let x = values(3, k);
    let w: Vec<u16> = values(4, rows * k).into_iter().map(bf16_bits).collect();
    for kind in kernels() {
        let mut serial = vec![0.0f32; rows];
        for (j, o) in serial.iter_mut().enumerate() {
            let one = Bf16Rows::new(&w[j * k..(j + 1) * k], 1, k).unwrap();
            gemv_bf16_with(kind, &x, one, std::slice::from_mut(o)).unwrap();
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut par = vec![0.0f32; rows];
        let wv = Bf16Rows::new(&w, rows, k).unwrap();
        pool.install(|| gemv_bf16_with(kind, &x, wv, &mut par)).unwrap();
        assert_eq!(serial, par, "{kind:?}");
    }
}

#[test]
fn gemv_shapes_that_do_not_fit_are_errors() {
    let x = [1.0f32; 8];
    let mut out = [0.0f32; 2];
    let w = [0u16; 24];
    let three_rows = Bf16Rows::new(&w, 3, 8).unwrap();
    assert!(matches!(gemv_bf16(&x, three_rows, &mut out), Err(Bf16Error::Shape { .. })));
    let short_rows = Bf16Rows::new(&w, 2, 7).unwrap();
    assert!(matches!(gemv_bf16(&x, short_rows, &mut out), Err(Bf16Error::Shape { .. })));
    // Fields are public: a view built without `Bf16Rows::new` is still checked.
    let unchecked = Bf16Rows { bits: &w[..15], rows: 2, cols: 8, row_stride: 8 };
    assert!(matches!(
        gemv_bf16(&x, unchecked, &mut out),
        Err(Bf16Error::Weights { needed: 16, .. })
    ));
    let overlapping = Bf16Rows { bits: &w, rows: 2, cols: 8, row_stride: 7 };
    assert!(matches!(gemv_bf16(&x, overlapping, &mut out), Err(Bf16Error::Stride { .. })));
}
