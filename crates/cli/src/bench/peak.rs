//! `vffn bench peak [--threads T] [--json]`: the machine's measured f32 FMA peak per ISA.
//!
//! One line per ISA this CPU runs (`{"isa":..,"threads":..,"gflops":..}` with `--json`), the
//! selected one marked. Every other `vffn bench` GFLOP/s figure is also given as a fraction of
//! the selected ISA's peak at the same thread count ([`peak_of_selected`]).

use std::sync::Mutex;

use anyhow::Context;
use clap::Args;
use vffn_kernels::peak::peak_gflops;
use vffn_kernels::{rayon, selected_kernel, KernelKind};

#[derive(Args, Debug)]
pub struct PeakArgs {
    /// Threads running the FMA loop at once (default 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed rounds per ISA (the best is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: PeakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let selected = selected_kernel().context("choosing the ISA")?;
    let pool = pool(args.threads)?;
    for kind in KernelKind::ALL.into_iter().filter(|k| k.is_available()) {
        let gflops = pool.install(|| peak_gflops(kind, args.threads, args.rounds, 50))?;
        let chosen = kind == selected;
        if args.json {
            outln!(
                "{{\"isa\":\"{kind}\",\"threads\":{},\"gflops\":{gflops:.1},\"selected\":{chosen}}}",
                args.threads
            );
        } else {
            let mark = if chosen { " (selected)" } else { "" };
            outln!("peak {kind:<8} threads={}: {gflops:.1} GFLOP/s{mark}", args.threads);
        }
    }
    Ok(())
}

fn pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("building the thread pool")
}

/// The selected ISA's FMA peak (GFLOP/s) on `threads` threads, measured once per process and
/// thread count (about 0.2 s), for the `peak_fraction` of every GFLOP/s figure.
pub(crate) fn peak_of_selected(threads: usize) -> Option<f64> {
    static CACHE: Mutex<Vec<(usize, f64)>> = Mutex::new(Vec::new());
    let threads = threads.max(1);
    let mut cache = CACHE.lock().ok()?;
    if let Some(&(_, g)) = cache.iter().find(|(t, _)| *t == threads) {
        return Some(g);
    }
    let kind = selected_kernel().ok()?;
    let g = pool(threads).ok()?.install(|| peak_gflops(kind, threads, 5, 30)).ok()?;
    cache.push((threads, g));
    Some(g)
}

/// `gflops` as a fraction of the peak on `threads` threads (None when it cannot be measured).
pub(crate) fn fraction_of_peak(gflops: f64, threads: usize) -> Option<f64> {
    peak_of_selected(threads).filter(|p| *p > 0.0).map(|p| gflops / p)
}
