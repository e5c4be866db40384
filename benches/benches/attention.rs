//! Criterion bench `attention`: causal flash-style forward, and forward+backward.
//!
//! Throughput is reported as elements = FLOPs. Causal forward: two T×T×hd products over the lower
//! triangle, ≈ 2·B·H·T²·hd. Backward recomputes S and computes dP, dV, dK, dQ (five products),
//! so forward+backward ≈ 7·B·H·T²·hd.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vffn_kernels::attention::{attention_backward, attention_forward, AttnShape};

fn filled(n: usize, seed: u32) -> Vec<f32> {
    // Cheap deterministic values in [-1, 1).
    (0..n as u32)
        .map(|i| {
            let z = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13).wrapping_mul(0x85EB_CA6B);
            (z >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    for (batch, seq, heads, head_dim) in [(16, 128, 4, 32), (16, 256, 8, 32)] {
        let shape = AttnShape { batch, seq, heads, head_dim };
        let d = shape.d();
        let label = format!("B{batch}_T{seq}_H{heads}_hd{head_dim}");
        let qkv = filled(batch * seq * 3 * d, 1);
        let d_out = filled(batch * seq * d, 2);
        let mut out = vec![0.0f32; batch * seq * d];
        let mut lse = vec![0.0f32; batch * heads * seq];
        let mut d_qkv = vec![0.0f32; qkv.len()];
        let fwd_flops = 2 * (batch * heads * seq * seq * head_dim) as u64;

        group.throughput(Throughput::Elements(fwd_flops));
        group.bench_function(BenchmarkId::new("forward", &label), |bench| {
            bench.iter(|| attention_forward(shape, black_box(&qkv), &mut out, &mut lse))
        });

        group.throughput(Throughput::Elements(fwd_flops / 2 * 7));
        group.bench_function(BenchmarkId::new("forward_backward", &label), |bench| {
            bench.iter(|| {
                attention_forward(shape, black_box(&qkv), &mut out, &mut lse);
                attention_backward(shape, &qkv, &out, &lse, black_box(&d_out), &mut d_qkv);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
