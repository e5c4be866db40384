//! Criterion bench `ffn`: the FFN kernels at T = 2048, d = 256, h = 1024 (E = 8, top-2, D = 4),
//! single-threaded, side by side with their naive references (same items as `vffn bench ffn`).
//! Throughput is in FLOPs (vffn-model's accounting, criterion's "elem/s" reads as FLOP/s):
//! F = 6·h·d per token and pass; width (k/E)·F per token; depth each token's loops × F (the
//! naive references do the same useful work); train_fwd_bwd 3 × (width + D·F) per token.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use vffn_kernels::ffn::{self, naive, PackedFfn};
use vffn_kernels::rayon;
use vffn_kernels::testvals::values;
use vffn_model::workloads::{FfnCase, FfnShape, FfnTrainInputs, FfnTrainStep};

const T: usize = 2048;
const D: usize = 256;
const H: usize = 1024;
const E: usize = 8;
const K: usize = 2;
const LOOPS: usize = 4;

fn bench_ffn(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    let w1 = values(2 * H * D, 1, 1.0 / (D as f32).sqrt());
    let w2 = values(D * H, 2, 1.0 / (H as f32).sqrt());
    let wn = vec![1.0f32; D];
    let x = values(T * D, 3, 1.0);
    // Routing: token t → experts (t·3 + j·5) mod 8 (distinct for j = 0, 1), depths 1..=4.
    let ids: Vec<u32> = (0..T * K).map(|i| (((i / K) * 3 + (i % K) * 5) % E) as u32).collect();
    let gates = vec![0.5f32; T * K];
    let depth: Vec<u8> = (0..T).map(|t| (1 + (t * 7 + t / 5) % LOOPS) as u8).collect();
    let d_out = values(T * D, 4, 1.0);
    let d_states = values(LOOPS * T * D, 5, 1.0);
    let packed = PackedFfn::pack(&w1, &w2, D, H, E, false).expect("pack");
    let mut out = vec![0.0f32; T * D];
    // Same shape and routing formulas as this bench: its FLOP counts apply.
    let shape = FfnShape { tokens: T, d: D, h: H, experts: E, top_k: K, max_depth: LOOPS };
    let case = FfnCase::new(shape).expect("ffn case");
    let flops = |f: f64| Throughput::Elements(f as u64);
    let mut group = c.benchmark_group("ffn");
    group.sample_size(10).warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(flops(case.dense_flops()));
    group.bench_function("dense", |b| {
        pool.install(|| b.iter(|| ffn::dense_forward(&packed, &x, &mut out).expect("dense")))
    });
    group.throughput(flops(case.width_flops()));
    group.bench_function("width", |b| {
        pool.install(|| {
            b.iter(|| ffn::width_forward(&packed, &x, &ids, &gates, K, &mut out).expect("width"))
        })
    });
    group.bench_function("width_naive", |b| {
        pool.install(|| {
            b.iter(|| naive::width_naive(&w1, &w2, D, H, E, &x, &ids, &gates, K, &mut out))
        })
    });
    group.throughput(flops(case.depth_flops()));
    group.bench_function("depth", |b| {
        pool.install(|| {
            b.iter(|| {
                ffn::depth_forward(&packed, &wn, 1e-6, &x, &depth, LOOPS, &mut out).expect("depth")
            })
        })
    });
    group.bench_function("depth_naive", |b| {
        pool.install(|| {
            b.iter(|| naive::depth_naive(&w1, &w2, D, H, &wn, 1e-6, &x, &depth, &mut out))
        })
    });
    let mut step = FfnTrainStep::new(shape).expect("ffn train step");
    let inputs = FfnTrainInputs {
        w1: &w1,
        w2: &w2,
        w_norm: &wn,
        x: &x,
        ids: &ids,
        gates: &gates,
        d_out: &d_out,
        d_states: &d_states,
    };
    group.throughput(flops(3.0 * (case.width_flops() + LOOPS as f64 * case.dense_flops())));
    group.bench_function("train_fwd_bwd", |b| {
        pool.install(|| b.iter(|| step.run(&inputs).expect("train_fwd_bwd")))
    });
    group.finish();
}

criterion_group!(benches, bench_ffn);
criterion_main!(benches);
