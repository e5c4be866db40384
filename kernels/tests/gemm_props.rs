//! Property tests of the GEMM paths and micro-kernels against a naive f64 reference.

mod common;

use common::{kernels, values};
use proptest::prelude::*;
use vffn_kernels::gemm::{gemm_packed_with, gemm_with, GemmError, GemmPath, MatMut, MatRef};
use vffn_kernels::microkernel::{kernel_from_name, KernelError, KernelKind};
use vffn_kernels::{PackedB, RowSource};

/// A rows × cols matrix stored row- or column-major with `pad` extra elements per line.
struct Stored {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Stored {
    fn new(seed: u64, rows: usize, cols: usize, col_major: bool, pad: usize) -> Stored {
        let (rs, cs, len) = if col_major {
            let ld = rows + pad;
            (1, ld, ld * cols.max(1))
        } else {
            let ld = cols + pad;
            (ld, 1, ld * rows.max(1))
        };
        Stored { data: values(seed, len), rows, cols, rs, cs }
    }
    fn view(&self) -> MatRef<'_> {
        MatRef::strided(&self.data, self.rows, self.cols, self.rs, self.cs)
    }
    fn view_mut(&mut self) -> MatMut<'_> {
        MatMut::strided(&mut self.data, self.rows, self.cols, self.rs, self.cs)
    }
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Checks `c` against `alpha·A·B + beta·c0` in f64 with an error bound proportional to K and to
/// the magnitude of the terms (NaN in c0 must not leak when beta = 0).
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    alpha: f32,
    a: &Stored,
    b: &Stored,
    beta: f32,
    c0: &Stored,
    c: &Stored,
) -> Result<(), TestCaseError> {
    let k = a.cols;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let (mut exact, mut mag) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = a.at(i, p) as f64 * b.at(p, j) as f64;
                exact += t;
                mag += t.abs();
            }
            exact *= alpha as f64;
            mag *= (alpha as f64).abs();
            if beta != 0.0 {
                exact += beta as f64 * c0.at(i, j) as f64;
                mag += (beta as f64 * c0.at(i, j) as f64).abs();
            }
            let got = c.at(i, j) as f64;
            let tol = 2.0 * (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
            prop_assert!(
                (got - exact).abs() <= tol,
                "{what}: C[{i},{j}] = {got}, expected {exact} (tol {tol})"
            );
        }
    }
    Ok(())
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => prop::sample::select(vec![0usize, 1, 2, 3, 5, 6, 7, 13, 14, 15, 16, 17, 31, 32, 33, 47, 48, 97, 127, 193, 257, 293]),
        4 => 0usize..300,
    ]
}

fn scalar() -> impl Strategy<Value = f32> {
    prop::sample::select(vec![1.0f32, -0.5, 2.5, 0.0])
}

fn beta_value() -> impl Strategy<Value = f32> {
    prop::sample::select(vec![0.0f32, 1.0, 0.5, -2.0])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every kernel × every path, all four transpose combinations, padded strides, alpha/beta.
    #[test]
    fn gemm_matches_reference(
        m in dim(), n in dim(), k in dim(),
        trans_a: bool, trans_b: bool, col_major_c: bool,
        pads in (0usize..3, 0usize..3, 0usize..3),
        alpha in scalar(), beta in beta_value(), seed: u64,
    ) {
        let a = Stored::new(seed, m, k, trans_a, pads.0);
        let b = Stored::new(seed ^ 1, k, n, trans_b, pads.1);
        let mut c0 = Stored::new(seed ^ 2, m, n, col_major_c, pads.2);
        if beta == 0.0 && !c0.data.is_empty() {
            c0.data[0] = f32::NAN; // must be overwritten, not propagated
        }
        let mut paths = vec![GemmPath::Auto, GemmPath::Packed, GemmPath::Direct];
        if m == 1 || n == 1 {
            paths.push(GemmPath::Gemv);
        }
        for kind in kernels() {
            for &path in &paths {
                let mut c = Stored { data: c0.data.clone(), ..c0 };
                gemm_with(kind, path, alpha, a.view(), b.view(), beta, c.view_mut()).unwrap();
                let what = format!("{kind}/{path:?} {m}x{k}x{n} ta={trans_a} tb={trans_b}");
                check(&what, alpha, &a, &b, beta, &c0, &c)?;
                // Padding between lines of C is never touched.
                let mut inside = vec![false; c.data.len()];
                for i in 0..c.rows {
                    for j in 0..c.cols {
                        inside[i * c.rs + j * c.cs] = true;
                    }
                }
                for (idx, (&x, &y)) in c.data.iter().zip(&c0.data).enumerate() {
                    if !inside[idx] {
                        prop_assert!(x.to_bits() == y.to_bits(), "{what}: padding {idx} written");
                    }
                }
            }
        }
    }

    /// Packed and direct paths run the same micro-kernel with the same depth blocking: equal bits.
    #[test]
    fn packed_and_direct_paths_agree_bitwise(
        m in 2usize..200, n in 2usize..200, k in 1usize..600,
        trans_a: bool, trans_b: bool, seed: u64,
    ) {
        let a = Stored::new(seed, m, k, trans_a, 1);
        let b = Stored::new(seed ^ 1, k, n, trans_b, 0);
        for kind in kernels() {
            let mut outs = Vec::new();
            for path in [GemmPath::Packed, GemmPath::Direct] {
                let mut c = Stored::new(seed ^ 2, m, n, false, 0);
                gemm_with(kind, path, 1.5, a.view(), b.view(), 0.5, c.view_mut()).unwrap();
                outs.push(c.data);
            }
            let same = outs[0].iter().zip(&outs[1]).all(|(x, y)| x.to_bits() == y.to_bits());
            prop_assert!(same, "{kind}: packed and direct differ at {m}x{k}x{n}");
        }
    }

    /// Packed B reused over 16-aligned column ranges and arbitrary depth ranges, with contiguous or
    /// gathered rows of A.
    #[test]
    fn packed_b_sub_ranges(
        m in 0usize..150, k in 1usize..300, n in 1usize..200,
        col_start_panels in 0usize..12, col_len in 0usize..200,
        k_lo in 0usize..300, k_len in 0usize..300,
        gather: bool, trans_b: bool, beta in beta_value(), seed: u64,
    ) {
        let b_full = Stored::new(seed, k, n, trans_b, 1);
        let packed = PackedB::pack(b_full.view());
        prop_assert_eq!((packed.rows(), packed.cols()), (k, n));
        let j0 = (col_start_panels * 16).min(n / 16 * 16);
        let j1 = (j0 + col_len).min(n);
        let p0 = k_lo.min(k);
        let p1 = (p0 + k_len).min(k);
        // The sub-matrix B[p0..p1, j0..j1] as its own stored matrix for the reference.
        let sub = Stored {
            data: (p0..p1).flat_map(|p| (j0..j1).map(move |j| (p, j))).map(|(p, j)| b_full.at(p, j)).collect(),
            rows: p1 - p0,
            cols: j1 - j0,
            rs: j1 - j0,
            cs: 1,
        };
        let a_src = Stored::new(seed ^ 3, m + 5, p1 - p0, false, 2);
        let index: Vec<usize> = (0..m).map(|r| (r * 7 + 3) % (m + 5)).collect();
        // A as seen by the product (gathered rows materialized for the reference).
        let a_eff = Stored {
            data: (0..m).flat_map(|r| {
                let row = if gather { index[r] } else { r };
                (0..p1 - p0).map(move |p| (row, p))
            }).map(|(i, p)| a_src.at(i, p)).collect(),
            rows: m,
            cols: p1 - p0,
            rs: p1 - p0,
            cs: 1,
        };
        let c0 = Stored::new(seed ^ 4, m, j1 - j0, false, 0);
        for kind in kernels() {
            let mut c = Stored { data: c0.data.clone(), ..c0 };
            let (a_view, rows) = if gather {
                (a_src.view(), Some(index.as_slice()))
            } else {
                (MatRef::strided(&a_src.data, m, p1 - p0, a_src.rs, 1), None)
            };
            let part = packed.part(j0..j1, p0..p1);
            gemm_packed_with(kind, 0.75, a_view, rows, part, beta, c.view_mut(), true)
                .unwrap();
            check(&format!("{kind} packed [{p0}..{p1}]x[{j0}..{j1}]"), 0.75, &a_eff, &sub, beta, &c0, &c)?;
        }
    }
}

/// GEMV shapes (M = 1 and N = 1) with both weight layouts and strided vectors, every kernel.
#[test]
fn gemv_matches_reference() {
    for kind in kernels() {
        for &(k, n) in &[(1, 1), (5, 3), (17, 70), (64, 64), (300, 129), (1024, 1024), (333, 1000)]
        {
            for trans_b in [false, true] {
                for beta in [0.0, 0.5] {
                    let x = Stored::new(7, 1, k, true, 0); // 1 × k with column stride 1… (rows=1)
                    let xs = Stored::new(8, 1, k, false, 0);
                    let b = Stored::new(9, k, n, trans_b, 3);
                    let c0 = Stored::new(10, 1, n, false, 0);
                    for a in [&x, &xs] {
                        let mut c = Stored { data: c0.data.clone(), ..c0 };
                        gemm_with(
                            kind,
                            GemmPath::Gemv,
                            1.25,
                            a.view(),
                            b.view(),
                            beta,
                            c.view_mut(),
                        )
                        .unwrap();
                        check(
                            &format!("{kind} gemv 1x{k}x{n} tb={trans_b}"),
                            1.25,
                            a,
                            &b,
                            beta,
                            &c0,
                            &c,
                        )
                        .unwrap();
                    }
                    // N = 1: column vector output with a strided column of B.
                    let a2 = Stored::new(11, n, k, trans_b, 2);
                    let v = Stored::new(12, k, 1, true, 0);
                    let c1 = Stored::new(13, n, 1, false, 2);
                    let mut c = Stored { data: c1.data.clone(), ..c1 };
                    gemm_with(kind, GemmPath::Gemv, 1.25, a2.view(), v.view(), beta, c.view_mut())
                        .unwrap();
                    check(&format!("{kind} gemv {n}x{k}x1"), 1.25, &a2, &v, beta, &c1, &c).unwrap();
                }
            }
        }
    }
}

/// Depth beyond one block (k > 256) on both sides of the whole-B packing cut (n ≤ 512 packs all of
/// B and runs row blocks outermost; wider B goes depth block by depth block): both match the
/// reference, and the whole-B order gives the bits of the direct path (same depth blocks).
#[test]
fn deep_products_on_both_sides_of_the_whole_b_cut() {
    for kind in kernels() {
        for &(m, k, n) in &[(37, 300, 530), (50, 513, 600), (200, 700, 100), (9, 1030, 512)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = Stored::new(5, m, k, trans_a, 1);
                let b = Stored::new(6, k, n, trans_b, 0);
                let c0 = Stored::new(7, m, n, false, 0);
                let mut outs = Vec::new();
                for path in [GemmPath::Packed, GemmPath::Direct] {
                    let mut c = Stored { data: c0.data.clone(), ..c0 };
                    gemm_with(kind, path, 1.5, a.view(), b.view(), 0.5, c.view_mut()).unwrap();
                    let what = format!("{kind}/{path:?} {m}x{k}x{n} ta={trans_a} tb={trans_b}");
                    check(&what, 1.5, &a, &b, 0.5, &c0, &c).unwrap();
                    outs.push(c.data);
                }
                let same = outs[0].iter().zip(&outs[1]).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{kind}: packed and direct differ at {m}x{k}x{n}");
            }
        }
    }
}

/// Same result bits with 1 and 2 threads on every path (splits are over independent outputs).
#[test]
fn thread_count_does_not_change_bits() {
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    let (p1, p2) = (pool(1), pool(2));
    let shapes = [
        (300, 290, 310),
        (64, 512, 300),
        (16, 512, 512),
        (1, 1024, 1024),
        (700, 130, 9),
        (200, 600, 530),
    ];
    for kind in kernels() {
        for &(m, k, n) in &shapes {
            for trans_b in [false, true] {
                let a = Stored::new(1, m, k, false, 0);
                let b = Stored::new(2, k, n, trans_b, 0);
                for path in [GemmPath::Auto, GemmPath::Packed, GemmPath::Direct] {
                    let run = |pool: &rayon::ThreadPool| {
                        let mut c = Stored::new(3, m, n, false, 0);
                        pool.install(|| {
                            gemm_with(kind, path, 1.0, a.view(), b.view(), 0.25, c.view_mut())
                        })
                        .unwrap();
                        c.data
                    };
                    let (c1, c2) = (run(&p1), run(&p2));
                    assert!(
                        c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kind}/{path:?} {m}x{k}x{n} tb={trans_b}: 1 and 2 threads differ"
                    );
                }
            }
        }
    }
}

#[test]
fn kernel_names_and_availability() {
    assert_eq!(kernel_from_name("portable"), Ok(KernelKind::Portable));
    assert!(matches!(kernel_from_name("sse9"), Err(KernelError::UnknownName(_))));
    for kind in KernelKind::ALL {
        let r = kernel_from_name(kind.name());
        if kind.is_available() {
            assert_eq!(r, Ok(kind));
        } else {
            assert_eq!(r, Err(KernelError::Unavailable(kind)));
            // Forcing an unavailable kernel is an error, never executed.
            let a = [1.0f32; 4];
            let mut c = [0.0f32; 4];
            let e = gemm_with(
                kind,
                GemmPath::Auto,
                1.0,
                MatRef::new(&a, 2, 2),
                MatRef::new(&a, 2, 2),
                0.0,
                MatMut::new(&mut c, 2, 2),
            );
            assert_eq!(e, Err(GemmError::Kernel(KernelError::Unavailable(kind))));
            assert!(e.unwrap_err().to_string().contains("not supported"));
        }
    }
    assert!(vffn_kernels::selected_kernel().is_ok() || std::env::var("VFFN_KERNEL").is_ok());
}

#[test]
fn packed_b_rejects_bad_ranges() {
    let b = vec![1.0f32; 40 * 48];
    let packed = PackedB::pack(MatRef::new(&b, 40, 48));
    let a = vec![1.0f32; 3 * 40];
    let mut c = vec![0.0f32; 3 * 48];
    let mut run = |cols: std::ops::Range<usize>, ks: std::ops::Range<usize>, ak: usize| {
        let nc = cols.len();
        gemm_packed_with(
            KernelKind::Portable,
            1.0,
            MatRef::new(&a[..3 * ak], 3, ak),
            None,
            packed.part(cols, ks),
            0.0,
            MatMut::new(&mut c[..3 * nc], 3, nc),
            true,
        )
    };
    assert!(matches!(run(8..24, 0..40, 40), Err(GemmError::Shape(_))), "unaligned start");
    assert!(matches!(run(16..64, 0..40, 40), Err(GemmError::Shape(_))), "past the end");
    assert!(matches!(run(16..48, 0..41, 40), Err(GemmError::Shape(_))), "depth past the end");
    assert!(matches!(run(16..48, 4..20, 40), Err(GemmError::Shape(_))), "A width ≠ depth range");
    assert!(run(16..48, 4..20, 16).is_ok());
    let _ = RowSource::Range { start: 0 };
}

/// gemm called from inside rayon tasks (nested parallelism, per-thread buffers taken while a
/// caller on the same thread holds its own) gives the same bits as sequential calls.
#[test]
fn nested_calls_from_rayon_tasks() {
    use rayon::prelude::*;
    let shapes: Vec<(usize, usize, usize)> =
        (0..24).map(|i| (40 + 13 * i, 150 + 7 * i, 90 + 11 * (i % 5))).collect();
    let run = |&(m, k, n): &(usize, usize, usize)| {
        let a = Stored::new(m as u64, m, k, false, 0);
        let b = Stored::new(k as u64, k, n, true, 0);
        let mut c = vec![0.0f32; m * n];
        vffn_kernels::gemm(1.0, a.view(), b.view(), 0.0, MatMut::new(&mut c, m, n));
        c
    };
    let sequential: Vec<Vec<f32>> = shapes.iter().map(run).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let nested: Vec<Vec<f32>> = pool.install(|| shapes.par_iter().map(run).collect());
    for (s, p) in sequential.iter().zip(&nested) {
        assert!(s.iter().zip(p).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn packed_b_layout_matches_source() {
    let b = Stored::new(5, 37, 41, true, 3);
    let packed = PackedB::pack(b.view());
    for p in 0..37 {
        for j in 0..41 {
            assert_eq!(packed.at(p, j).to_bits(), b.at(p, j).to_bits());
        }
    }
}
