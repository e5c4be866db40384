//! `vffn bench gemm --m M --k K --n N [--threads T] [--trans-a] [--trans-b] [--json]`
//!
//! Median GFLOP/s (2·m·n·k per call) of `vffn_kernels::gemm` over repeated timed samples.
//! `--trans-a`: A stored as [k,m] (op(A) = Aᵀ). `--trans-b`: B stored as W [n,k], the linear-layer
//! layout (op(B) = Wᵀ).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use vffn_kernels::gemm::{gemm_with, GemmPath, MatMut, MatRef};
use vffn_kernels::rayon;
use vffn_kernels::selected_kernel;

use super::{sample, Sampling};
use crate::common::checked_size;
use vffn_model::workloads::values;

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
    let a = values(m * k, 1);
    let b = values(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    // a [m,k] or [k,m]ᵀ; b [k,n] or W [n,k]ᵀ; c [m,n]
    let a_view = if args.trans_a { MatRef::new(&a, k, m).t() } else { MatRef::new(&a, m, k) };
    let b_view = if args.trans_b { MatRef::new(&b, n, k).t() } else { MatRef::new(&b, k, n) };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("building the thread pool")?;
    let mut call = || -> anyhow::Result<()> {
        gemm_with(kernel, GemmPath::Auto, 1.0, a_view, b_view, 0.0, MatMut::new(&mut c, m, n))?;
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
    let weight_gbps = (m == 1).then(|| (k * n * 4) as f64 / median / 1e9);
    let peak = super::peak::fraction_of_peak(gflops, args.threads);
    if args.json {
        let mut line = format!(
            "{{\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{},\"gflops\":{gflops:.2},\"best_gflops\":{best_gflops:.2},\"kernel\":\"{kernel}\",\"trans_a\":{},\"trans_b\":{}",
            args.threads, args.trans_a, args.trans_b
        );
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
        let tb = if args.trans_b { "Wᵀ" } else { "B" };
        out!(
            "gemm {m}×{k}×{n} (A{ta}·{tb}) threads={} kernel={kernel}: {gflops:.1} GFLOP/s (median of {}, best {best_gflops:.1}, {:.1} µs/call)",
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
