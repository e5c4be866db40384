//! Criterion bench `gemm`: single-threaded GFLOP/s of `vffn_kernels::gemm` on the shapes,
//! with B stored as [k,n] (op(B) = B) and as a linear-layer weight W [n,k] (op(B) = Wᵀ).
//! Throughput is in FLOPs (2·m·n·k per call), so criterion's "elem/s" reads as FLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use vffn_kernels::{gemm, rayon, MatMut, MatRef};

const SHAPES: [(usize, usize, usize); 5] =
    [(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512), (1, 1024, 1024)];

fn values(len: usize, salt: usize) -> Vec<f32> {
    (0..len).map(|i| ((i.wrapping_mul(2654435761) ^ salt) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn bench_gemm(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20).warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for &(m, k, n) in &SHAPES {
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for trans_b in [false, true] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let mut out = vec![0.0f32; m * n];
            let layout = if trans_b { "Wt" } else { "B" };
            let id = BenchmarkId::new(layout, format!("{m}x{k}x{n}"));
            group.bench_function(id, |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        // a [m,k] · (b [k,n] | W [n,k]ᵀ) -> out [m,n]
                        let bv =
                            if trans_b { MatRef::new(&b, n, k).t() } else { MatRef::new(&b, k, n) };
                        gemm(1.0, MatRef::new(&a, m, k), bv, 0.0, MatMut::new(&mut out, m, n));
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
