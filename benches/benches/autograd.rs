//! Criterion bench `autograd`: forward and backward of one linear layer y = x·Wᵀ,
//! x [2048×256], W [1024×256], through the tape and as raw GEMM calls, plus a side-by-side
//! timing that reports backward/forward and the tape's own overhead.
//!
//! Run: `cargo bench -p vffn-benches --bench autograd`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use vffn_autograd::{Buffer, ParamStore, Rng, Tape, Tensor};
use vffn_kernels::{gemm, MatMut, MatRef};

const T: usize = 2048;
const K: usize = 256;
const N: usize = 1024;
/// Interleaved rounds of the side-by-side report (min over them filters out other load).
const ROUNDS: usize = 60;

struct Setup {
    store: ParamStore,
    w: vffn_autograd::ParamId,
    x: Tensor,
    dy: Vec<f32>,
}

fn setup() -> Setup {
    let mut rng = Rng::new(0);
    let mut store = ParamStore::new();
    let wdata = (0..N * K).map(|_| rng.normal() * 0.05).collect();
    let w = store.add("layer.weight", &[N, K], wdata, false).unwrap();
    let x = Tensor::randn(&[T, K], 1.0, &mut rng);
    let dy = (0..T * N).map(|_| rng.normal()).collect();
    Setup { store, w, x, dy }
}

/// Raw kernels: y = x·Wᵀ.
fn raw_forward(s: &Setup, y: &mut [f32]) {
    let w = s.store.get(s.w).data();
    gemm(1.0, MatRef::new(s.x.data(), T, K), MatRef::new(w, N, K).t(), 0.0, MatMut::new(y, T, N));
}

/// Raw kernels: dx = dy·W, dW = dyᵀ·x.
fn raw_backward(s: &Setup, dx: &mut [f32], dw: &mut [f32]) {
    raw_dx(s, dx);
    raw_dw(s, dw);
}

fn raw_dx(s: &Setup, dx: &mut [f32]) {
    let w = s.store.get(s.w).data();
    gemm(1.0, MatRef::new(&s.dy, T, N), MatRef::new(w, N, K), 0.0, MatMut::new(dx, T, K));
}

fn raw_dw(s: &Setup, dw: &mut [f32]) {
    let dy = MatRef::new(&s.dy, T, N);
    gemm(1.0, dy.t(), MatRef::new(s.x.data(), T, K), 0.0, MatMut::new(dw, N, K));
}

/// Through the tape: watch x, bring in W, linear; then backward from `seed` (= dy) if given.
fn tape_step(s: &Setup, seed: Option<Buffer>) -> f32 {
    let mut tape = Tape::new();
    let x = tape.watch(&s.x);
    let w = tape.param(&s.store, s.w);
    let y = tape.linear(&x, &w);
    let Some(seed) = seed else { return y.data()[0] };
    let grads = tape.backward_with_seed(&y, seed).unwrap();
    grads.get(&x).unwrap()[0] + grads.param(s.w).unwrap()[0]
}

fn bench_linear(c: &mut Criterion) {
    let s = setup();
    if std::env::var_os("VFFN_RATIOS_ONLY").is_some() {
        return report_ratios(&s);
    }
    let mut y = vec![0.0f32; T * N];
    let (mut dx, mut dw) = (vec![0.0f32; T * K], vec![0.0f32; N * K]);
    let mut g = c.benchmark_group("linear_2048x256_w1024");
    g.sample_size(20);
    g.bench_function("raw_forward", |b| b.iter(|| raw_forward(&s, black_box(&mut y))));
    g.bench_function("raw_backward", |b| b.iter(|| raw_backward(&s, &mut dx, &mut dw)));
    g.bench_function("tape_forward", |b| b.iter(|| black_box(tape_step(&s, None))));
    g.bench_function("tape_forward_backward", |b| {
        b.iter_batched(
            || Buffer::copy_of(&s.dy),
            |seed| black_box(tape_step(&s, Some(seed))),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
    report_ratios(&s);
}

/// Interleaved timing of each variant as one timed region (min over rounds, robust to other
/// load), printed as backward/forward and the tape's overhead over raw GEMM calls.
fn report_ratios(s: &Setup) {
    let mut y = vec![0.0f32; T * N];
    let (mut dx, mut dw) = (vec![0.0f32; T * K], vec![0.0f32; N * K]);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let mut best = [f64::INFINITY; 6];
    for _ in 0..ROUNDS {
        let seed = Buffer::copy_of(&s.dy); // made outside the timed region
        let mut seed = Some(seed);
        let r = [
            time(&mut || raw_forward(s, &mut y)),
            time(&mut || {
                raw_forward(s, &mut y);
                raw_backward(s, &mut dx, &mut dw);
            }),
            time(&mut || {
                black_box(tape_step(s, None));
            }),
            time(&mut || {
                black_box(tape_step(s, seed.take()));
            }),
            time(&mut || raw_dx(s, &mut dx)),
            time(&mut || raw_dw(s, &mut dw)),
        ];
        for (b, v) in best.iter_mut().zip(r) {
            *b = b.min(v);
        }
    }
    let [raw_f, raw_fb, tape_f, tape_fb, dx_t, dw_t] = best;
    println!(
        "linear x[{T}x{K}]·W[{N}x{K}]ᵀ, {} rayon threads (min of {ROUNDS}): raw fwd {:.2} ms, \
         raw fwd+bwd {:.2} ms; tape fwd {:.2} ms, tape fwd+bwd {:.2} ms",
        vffn_kernels::rayon::current_num_threads(),
        raw_f * 1e3,
        raw_fb * 1e3,
        tape_f * 1e3,
        tape_fb * 1e3,
    );
    println!(
        "  backward/forward = {:.2} (tape), {:.2} (raw kernels); tape overhead = {:.1}% of the step",
        (tape_fb - tape_f) / tape_f,
        (raw_fb - raw_f) / raw_f,
        100.0 * (tape_fb - raw_fb) / tape_fb
    );
    println!(
        "  raw backward GEMMs: dx = dy·W {:.2} ms ({:.2}× fwd), dW = dyᵀ·x {:.2} ms ({:.2}× fwd)",
        dx_t * 1e3,
        dx_t / raw_f,
        dw_t * 1e3,
        dw_t / raw_f
    );
}

criterion_group!(benches, bench_linear);
criterion_main!(benches);
