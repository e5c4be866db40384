//! Criterion bench `attention`: causal flash-style forward, and forward+backward, at the tiny and
//! small models' shapes.
//!
//! Throughput is reported as elements = FLOPs, vffn-model's accounting: scores and weighted
//! values cost `4·c·d` per token with c = (T+1)/2 attended positions; forward+backward is
//! 3 × forward (the model's training convention).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vffn_model::workloads::AttentionCase;

fn bench_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    for (batch, seq, heads, head_dim) in [(16, 128, 4, 32), (16, 256, 8, 32)] {
        let mut case = AttentionCase::new(batch, seq, heads, head_dim);
        let label = case.label();
        group.throughput(Throughput::Elements(case.forward_flops() as u64));
        group.bench_function(BenchmarkId::new("forward", &label), |bench| {
            bench.iter(|| black_box(&mut case).forward())
        });
        group.throughput(Throughput::Elements(case.forward_backward_flops() as u64));
        group.bench_function(BenchmarkId::new("forward_backward", &label), |bench| {
            bench.iter(|| black_box(&mut case).forward_backward())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
