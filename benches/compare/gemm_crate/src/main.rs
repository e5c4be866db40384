//! Side-by-side measurement: `gemm` crate 0.18 and vffn-kernels (1 thread unless `--threads T`), same
//! shapes, same
//! timing loop, alternating per shape so machine noise hits both alike.
//!
//! `cargo run --release -- [--samples S] [MxKxN ...]` prints one JSON line per shape, layout and
//! implementation: `{"impl":"gemm-0.18"|"vffn","m":..,"k":..,"n":..,"trans_b":..,"threads":1,
//! "gflops":..,"best":..}` (median and best sample; the best is the least disturbed by other
//! processes on a shared machine). `trans_b` means B is stored as W [n,k] (linear layout, op(B) = Wᵀ).

use std::time::Instant;

// C [m,n] = A [m,k] · op(B); B is [k,n] row-major, or W [n,k] row-major when trans_b.
fn run_vffn(m: usize, k: usize, n: usize, trans_b: bool, a: &[f32], b: &[f32], c: &mut [f32]) {
    use vffn_kernels::{MatMut, MatRef};
    let bv = if trans_b { MatRef::new(b, n, k).t() } else { MatRef::new(b, k, n) };
    let (a, c) = (MatRef::new(a, m, k), MatMut::new(c, m, n));
    match forced_path() {
        // Tuning aid: VFFN_PATH=packed|direct|gemv forces one algorithm.
        Some(path) => {
            let kind = vffn_kernels::selected_kernel().unwrap();
            vffn_kernels::gemm::gemm_with(kind, path, 1.0, a, bv, 0.0, c).unwrap();
        }
        None => vffn_kernels::gemm(1.0, a, bv, 0.0, c),
    }
}

fn forced_path() -> Option<vffn_kernels::GemmPath> {
    use vffn_kernels::GemmPath;
    static PATH: std::sync::OnceLock<Option<GemmPath>> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("VFFN_PATH").as_deref() {
        Ok("packed") => Some(GemmPath::Packed),
        Ok("direct") => Some(GemmPath::Direct),
        Ok("gemv") => Some(GemmPath::Gemv),
        _ => None,
    })
}

fn run_gemm(m: usize, k: usize, n: usize, trans_b: bool, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (rhs_rs, rhs_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: every view lies inside its buffer (a: m·k, b: k·n, c: m·n, row-major strides).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            if threads() > 1 {
                gemm::Parallelism::Rayon(threads())
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

fn threads() -> usize {
    THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

type Runner = fn(usize, usize, usize, bool, &[f32], &[f32], &mut [f32]);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut samples = 21usize;
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--threads" {
            let t: usize = args.next().expect("--threads T").parse().expect("integer");
            THREADS.store(t, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        if arg == "--samples" {
            samples = args.next().expect("--samples N").parse().expect("integer");
            continue;
        }
        let dims: Vec<usize> = arg.split('x').map(|d| d.parse().expect("MxKxN")).collect();
        assert_eq!(dims.len(), 3, "shape must be MxKxN");
        shapes.push((dims[0], dims[1], dims[2]));
    }
    if shapes.is_empty() {
        shapes = vec![(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512)];
    }
    // Both run inside one pool of the requested size (vffn uses the current rayon pool).
    let pool =
        vffn_kernels::rayon::ThreadPoolBuilder::new().num_threads(threads()).build().unwrap();
    pool.install(|| measure(samples, &shapes));
}

fn measure(samples: usize, shapes: &[(usize, usize, usize)]) {
    let impls: [(&str, Runner); 2] = [("gemm-0.18", run_gemm), ("vffn", run_vffn)];
    for &(m, k, n) in shapes {
        for trans_b in [false, true] {
            let a: Vec<f32> =
                (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let b: Vec<f32> =
                (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
            let mut c = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            // Calls per sample so one sample lasts about 2 ms.
            let t0 = Instant::now();
            run_gemm(m, k, n, trans_b, &a, &b, &mut c);
            let once = t0.elapsed().as_secs_f64();
            let reps = ((2e-3 / once.max(1e-9)) as usize).clamp(1, 100_000);
            let mut rates = vec![Vec::with_capacity(samples); impls.len()];
            for (_, run) in &impls {
                for _ in 0..reps {
                    run(m, k, n, trans_b, &a, &b, &mut c);
                }
            }
            // Alternate implementations sample by sample.
            for _ in 0..samples {
                for (r, (_, run)) in rates.iter_mut().zip(&impls) {
                    let t = Instant::now();
                    for _ in 0..reps {
                        run(m, k, n, trans_b, &a, &b, &mut c);
                    }
                    r.push(flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
            for (r, (name, _)) in rates.into_iter().zip(&impls) {
                println!(
                    "{{\"impl\":\"{name}\",\"m\":{m},\"k\":{k},\"n\":{n},\"trans_b\":{trans_b},\"threads\":{},\"gflops\":{:.1},\"best\":{:.1}}}",
                    threads(),
                    median(r.clone()),
                    r.iter().cloned().fold(0.0, f64::max)
                );
            }
        }
    }
}
