//! `vffn bench gemm --m M --k K --n N [--threads T] [--trans-a] [--trans-b] [--dtype f32|bf16]
//! [--json]`
//!
//! Median GFLOP/s (2·m·n·k per call) of `vffn_kernels::gemm` over repeated timed samples.
//! `--trans-a`: A stored as [k,m] (op(A) = Aᵀ). `--trans-b`: B stored as W [n,k], the linear-layer
//! layout (op(B) = Wᵀ). `--dtype bf16`: B is a linear layer's weight W [n,k] stored as bf16 (so
//! `trans_b` is always true) and the product runs `vffn_kernels::bf16::linear_bf16` on the
//! selected bf16 path (`dot` or `widen`, `VFFN_BF16`), reported as `bf16_path`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vffn_kernels::bf16::{bf16_bits, linear_bf16_with, selected_bf16_path, Bf16Rows};
use vffn_kernels::gemm::{gemm_with, GemmPath, MatMut, MatRef};
use vffn_kernels::rayon;
use vffn_kernels::selected_kernel;

use super::{sample, Sampling};
use crate::common::checked_size;
use vffn_benches::values;

#[derive(Args, Debug)]
pub struct GemmArgs {
    #[arg(long)]
    m: usize,
    #[arg(long)]
    k: usize,
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    trans_a: bool,
    #[arg(long)]
    trans_b: bool,
    /// Storage of B: `f32`, or `bf16` (W [n,k] as bf16 bits, A and C f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    #[arg(long)]
    json: bool,
    /// Timed samples (the median is reported); each sample lasts at least ~2 ms.
    #[arg(long, default_value_t = 21)]
    samples: usize,
}

pub fn run(args: GemmArgs) -> anyhow::Result<()> {
    let kernel = selected_kernel().context("choosing the GEMM micro-kernel")?;
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let (m, k, n) = (args.m, args.k, args.n);
    crate::common::check_buffers("--m/--k/--n", checked_size(&[&[m, k], &[k, n], &[m, n]]))?;
    let bf16 = args.dtype == "bf16";
    let bf16_path =
        if bf16 { Some(selected_bf16_path().context("choosing the bf16 path")?) } else { None };
    let trans_b = args.trans_b || bf16;
    let a = values(m * k, 1);
    let b = values(k * n, 2);
    // The bf16 weights: b rounded to nearest even.
    let b16: Vec<u16> = if bf16 { b.iter().map(|&v| bf16_bits(v)).collect() } else { Vec::new() };
    let mut c = vec![0.0f32; m * n];
    // a [m,k] or [k,m]ᵀ; b [k,n] or W [n,k]ᵀ (bf16: W [n,k]); c [m,n]
    let a_view = if args.trans_a { MatRef::new(&a, k, m).t() } else { MatRef::new(&a, m, k) };
    let b_view = if trans_b { MatRef::new(&b, n, k).t() } else { MatRef::new(&b, k, n) };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("building the thread pool")?;
    let mut call = || -> anyhow::Result<()> {
        let out = MatMut::new(&mut c, m, n);
        match bf16_path {
            Some(path) => {
                let w = Bf16Rows::new(&b16, n, k)?;
                linear_bf16_with(path, kernel, a_view, w, out, false)?;
            }
            None => gemm_with(kernel, GemmPath::Auto, 1.0, a_view, b_view, 0.0, out)?,
        }
        Ok(())
    };
    let flops = 2.0 * (m as f64) * (n as f64) * (k as f64);
    let sampling = Sampling {
        warmup: 1,
        min_samples: args.samples,
        max_samples: args.samples,
        budget: Duration::ZERO,
        min_sample: Duration::from_millis(2),
    };
    let mut secs = pool.install(|| sample(&sampling, &mut call))?;
    secs.sort_by(|x, y| x.total_cmp(y));
    let median = secs[secs.len() / 2];
    let gflops = flops / median / 1e9;
    // Best sample: the least disturbed by other processes on a shared machine.
    let best_gflops = flops / secs[0] / 1e9;
    // Weight traffic of the matrix-vector case (B read once per call).
    let weight_bytes = if bf16 { 2 } else { 4 };
    let weight_gbps = (m == 1).then(|| (k * n * weight_bytes) as f64 / median / 1e9);
    let peak = super::peak::fraction_of_peak(gflops, args.threads);
    if args.json {
        let mut line = format!(
            "{{\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{},\"gflops\":{gflops:.2},\"best_gflops\":{best_gflops:.2},\"kernel\":\"{kernel}\",\"trans_a\":{},\"trans_b\":{trans_b},\"dtype\":\"{}\"",
            args.threads, args.trans_a, args.dtype
        );
        if let Some(path) = bf16_path {
            line.push_str(&format!(",\"bf16_path\":\"{path}\""));
        }
        if let Some(g) = weight_gbps {
            line.push_str(&format!(",\"weight_gbps\":{g:.2}"));
        }
        if let Some(f) = peak {
            line.push_str(&format!(",\"peak_fraction\":{f:.3}"));
        }
        line.push('}');
        outln!("{line}");
    } else {
        let ta = if args.trans_a { "ᵀ" } else { "" };
        let tb = if trans_b { "Wᵀ" } else { "B" };
        let dtype = match bf16_path {
            Some(path) => format!(" bf16 ({path})"),
            None => String::new(),
        };
        out!(
            "gemm {m}×{k}×{n} (A{ta}·{tb}{dtype}) threads={} kernel={kernel}: {gflops:.1} GFLOP/s (median of {}, best {best_gflops:.1}, {:.1} µs/call)",
            args.threads,
            args.samples,
            median * 1e6
        );
        if let Some(g) = weight_gbps {
            out!(", weights {g:.1} GB/s");
        }
        match peak {
            Some(f) => outln!(", {:.1} % of the measured FMA peak", 100.0 * f),
            None => outln!(),
        }
    }
    Ok(())
}
