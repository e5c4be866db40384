//! Criterion bench `model`: for each preset (tiny, small) and block kind (dense, kloop, moe,
//! versatile), the inference forward over one batch and one full training step (forward,
//! backward, gradient clip, AdamW), on all cores.
//!
//! Throughput is in FLOPs from vffn-model's accounting (criterion's "elem/s" reads as FLOP/s):
//! realized inference FLOPs of the batch's routing for the forward, `training_flops` for the
//! step. The FLOPs/token figure is in the benchmark id (`…/MFLOPtok=4.96`) and printed once per
//! group.
//!
//! Run: `cargo bench -p vffn-benches --bench model` (`-- tiny` for one preset).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use vffn_model::workloads::{
    builtin_dataset, preset_config, ForwardCase, TrainStep, BLOCKS, PRESETS,
};

const SEED: u64 = 0;

fn bench_model(c: &mut Criterion) {
    for preset in PRESETS {
        let seq_len = preset_config(preset, "dense").expect("preset").model.seq_len;
        let dataset = builtin_dataset(seq_len).expect("built-in corpus");
        let mut group = c.benchmark_group(format!("model_{preset}"));
        // A small step takes seconds: criterion's minimum sample count, and a short measurement
        // time so that `--quick` (which doubles the calls until the time is spent) stops early.
        group.sample_size(10).warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(if preset == "tiny" { 3 } else { 2 }));
        for block in BLOCKS {
            let run = preset_config(preset, block).expect("config");
            let forward = ForwardCase::new(run.model.clone(), &dataset, SEED).expect("model");
            let output = forward.run().expect("forward");
            let per_token = forward.flops_per_token(&output).expect("realized FLOPs");
            let tokens = forward.tokens() as f64;
            println!(
                "model_{preset}/{block}: forward {:.3} MFLOP/token realized, {} tokens/batch",
                per_token / 1e6,
                forward.tokens()
            );
            group.throughput(Throughput::Elements((per_token * tokens) as u64));
            let id = format!("MFLOPtok={:.2}", per_token / 1e6);
            group.bench_function(BenchmarkId::new(format!("forward_{block}"), id), |b| {
                b.iter(|| black_box(forward.run().expect("forward")))
            });
            drop(forward);

            let mut step = TrainStep::new(run, &dataset, SEED).expect("model");
            let per_token = step.flops_per_token();
            println!(
                "model_{preset}/{block}: train step {:.3} MFLOP/token, {} tokens/step",
                per_token / 1e6,
                step.tokens()
            );
            group.throughput(Throughput::Elements((per_token * step.tokens() as f64) as u64));
            let id = format!("MFLOPtok={:.2}", per_token / 1e6);
            group.bench_function(BenchmarkId::new(format!("train_step_{block}"), id), |b| {
                b.iter(|| step.run().expect("train step"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_model);
criterion_main!(benches);
