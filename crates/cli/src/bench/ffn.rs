//! `vffn bench ffn --tokens T --d D --h H [--threads N] [--json]`
//!
//! Median milliseconds of the FFN kernels, all measured side by side (each sample round runs
//! every item once, in the same order): `dense` (one FFN over T tokens), `width` (top-k of E
//! virtual experts, random routing), `width_naive`, `depth` (depths uniform in 1..=D, compacted),
//! `depth_naive` (masked, all tokens to the deepest loop), `train_fwd_bwd` (the whole versatile
//! FFN in training mode: pack, norm, width + all D loops forward, both backwards) and
//! `dense_fwd_bwd` (pack + one FFN forward + backward, the unit of the FLOP-proportional time).
//! Inference items use weights packed beforehand (`pack` reports that cost).

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use vffn_kernels::ffn::{self, naive, PackedFfn};
use vffn_kernels::rayon;
use vffn_kernels::testvals::{values, XorShift};
use vffn_model::workloads::{FfnShape, FfnTrainInputs, FfnTrainStep};

use crate::common::{check_buffers, checked_size};

#[derive(Args, Debug)]
pub struct FfnArgs {
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    #[arg(long, default_value_t = 256)]
    d: usize,
    #[arg(long, default_value_t = 1024)]
    h: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    experts: usize,
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    #[arg(long, default_value_t = 4)]
    max_depth: usize,
    /// Sample rounds (the median is reported).
    #[arg(long, default_value_t = 7)]
    samples: usize,
    #[arg(long)]
    json: bool,
}

const ITEMS: [&str; 8] = [
    "dense",
    "width",
    "width_naive",
    "depth",
    "depth_naive",
    "train_fwd_bwd",
    "dense_fwd_bwd",
    "pack",
];

pub fn run(args: FfnArgs) -> anyhow::Result<()> {
    let (t, d, h, e, k, depth_max) =
        (args.tokens, args.d, args.h, args.experts, args.top_k, args.max_depth);
    anyhow::ensure!(args.threads >= 1 && args.samples >= 1, "--threads and --samples must be ≥ 1");
    anyhow::ensure!(t >= 1 && d >= 1 && (1..=e).contains(&k), "bad sizes");
    anyhow::ensure!((1..=255).contains(&depth_max), "--max-depth must be in 1..=255");
    // Weights (and their packed copies and gradients), the token buffers of every loop, the
    // hidden activations: checked before any is allocated.
    let floats =
        checked_size(&[&[8, h, d], &[10 + 4 * depth_max, t, d], &[4, t, h], &[2, t, k], &[2, e]]);
    check_buffers("--tokens/--d/--h", floats)?;
    let eps = 1e-6f32;
    let w1 = values(2 * h * d, 1, 1.0 / (d as f32).sqrt());
    let w2 = values(d * h, 2, 1.0 / (h as f32).sqrt());
    let w_norm: Vec<f32> = values(d, 3, 0.1).iter().map(|v| 1.0 + v).collect();
    let x = values(t * d, 4, 1.0);
    let mut rng = XorShift::new(0x5EED);
    let ids = rng.routing(t, k, e);
    let gates: Vec<f32> = (0..t * k).map(|i| 0.3 + 0.4 * ((i % 7) as f32 / 7.0)).collect();
    let depth: Vec<u8> = (0..t).map(|_| 1 + rng.below(depth_max) as u8).collect();
    let mean_depth = depth.iter().map(|&c| c as f64).sum::<f64>() / t as f64;
    let d_out = values(t * d, 5, 1.0);
    let d_states = values(depth_max * t * d, 6, 1.0);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("building the thread pool")?;
    let times = pool.install(|| -> anyhow::Result<Vec<Vec<f64>>> {
        let packed = PackedFfn::pack(&w1, &w2, d, h, e, false)?;
        let mut out = vec![0.0f32; t * d];
        let shape = FfnShape { tokens: t, d, h, experts: e, top_k: k, max_depth: depth_max };
        let mut train = FfnTrainStep::new(shape)?;
        let train_inputs = FfnTrainInputs {
            w1: &w1,
            w2: &w2,
            w_norm: &w_norm,
            x: &x,
            ids: &ids,
            gates: &gates,
            d_out: &d_out,
            d_states: &d_states,
        };
        let mut u_dense = Vec::new();
        let mut dz = vec![0.0f32; t * d];
        let (mut dw1, mut dw2) = (vec![0.0f32; 2 * h * d], vec![0.0; d * h]);
        let mut item = |i: usize| -> anyhow::Result<()> {
            match i {
                0 => ffn::dense_forward(&packed, &x, &mut out)?,
                1 => ffn::width_forward(&packed, &x, &ids, &gates, k, &mut out)?,
                2 => naive::width_naive(&w1, &w2, d, h, e, &x, &ids, &gates, k, &mut out),
                3 => ffn::depth_forward(&packed, &w_norm, eps, &x, &depth, depth_max, &mut out)?,
                4 => naive::depth_naive(&w1, &w2, d, h, &w_norm, eps, &x, &depth, &mut out),
                5 => train.run(&train_inputs)?,
                6 => {
                    let p = PackedFfn::pack(&w1, &w2, d, h, e, true)?;
                    ffn::dense_forward_train(&p, &x, &mut out, &mut u_dense)?;
                    dz.fill(0.0);
                    let grads = ffn::FfnGrads::new(&mut dw1, &mut dw2);
                    ffn::dense_backward(&p, &x, &u_dense, &d_out, &mut dz, grads)?;
                }
                _ => {
                    std::hint::black_box(PackedFfn::pack(&w1, &w2, d, h, e, false)?);
                }
            }
            Ok(())
        };
        for i in 0..ITEMS.len() {
            item(i)?; // warm-up (buffers, caches)
        }
        let mut per_item = vec![Vec::with_capacity(args.samples); ITEMS.len()];
        for _ in 0..args.samples {
            for (i, v) in per_item.iter_mut().enumerate() {
                let t0 = Instant::now();
                item(i)?;
                v.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(per_item)
    })?;
    let med: Vec<f64> = times
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        })
        .collect();
    let get = |name: &str| med[ITEMS.iter().position(|&n| n == name).expect("item")];
    let frac = k as f64 / e as f64;
    let flop_units = depth_max as f64 + frac;
    let ratios = [
        ("width_over_frac_dense", get("width") / (frac * get("dense"))),
        ("depth_over_mean_depth_dense", get("depth") / (mean_depth * get("dense"))),
        ("width_naive_over_width", get("width_naive") / get("width")),
        ("depth_naive_over_depth", get("depth_naive") / get("depth")),
        (
            "train_over_flop_proportional",
            get("train_fwd_bwd") / (flop_units * get("dense_fwd_bwd")),
        ),
    ];
    if args.json {
        let mut line = format!(
            "{{\"tokens\":{t},\"d\":{d},\"h\":{h},\"threads\":{},\"experts\":{e},\"top_k\":{k},\"max_depth\":{depth_max},\"mean_depth\":{mean_depth:.4}",
            args.threads
        );
        for (name, v) in ITEMS.iter().zip(&med) {
            line.push_str(&format!(",\"{name}\":{v:.3}"));
        }
        for (name, v) in ratios {
            line.push_str(&format!(",\"{name}\":{v:.3}"));
        }
        line.push('}');
        outln!("{line}");
    } else {
        outln!(
            "ffn T={t} d={d} h={h} E={e} k={k} D={depth_max} threads={} (median ms of {})",
            args.threads,
            args.samples
        );
        for (name, v) in ITEMS.iter().zip(&med) {
            outln!("  {name:<14} {v:9.3} ms");
        }
        outln!("  mean_depth     {mean_depth:9.3}");
        for (name, v) in ratios {
            outln!("  {name:<30} {v:.3}");
        }
    }
    Ok(())
}
