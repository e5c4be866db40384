//! `vffn bench all [--json] [--threads N] [--budget-ms MS] [--presets tiny,small] [--filter S]`
//! and `vffn bench all --markdown FILE.json`.
//!
//! Runs the same set as the criterion benches (the workloads of `vffn_model::workloads`), each item for
//! about `--budget-ms` after one warm-up call: the GEMM issue's shapes (B and Wᵀ layouts), the
//! FFN dense / width / depth paths at the issue-5 shape, causal attention forward and
//! forward+backward at the tiny model's shape, and for each preset × block kind the inference
//! forward and a full training step. Reports each item's median, its FLOPs (vffn-model's
//! accounting) and GFLOP/s, and for model items tokens/s and FLOPs/token, with the machine and
//! the commit: as a table, as one JSON document (`--json`), or re-rendered from such a
//! document as the Markdown table of docs/benchmarks.md (`--markdown`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use vffn_model::workloads::{
    preset_config, AttentionCase, FfnCase, GemmCase, BLOCKS, GEMM_SHAPES, PRESETS,
};
use vffn_model::{Config, Dataset, WeightDtype};

use super::forward::{measure_forward, ModelTiming};
use super::train::measure_train;
use super::{median, sample, Sampling};
use crate::common::{in_pool, load_dataset, read_input_file};

#[derive(Args, Debug)]
pub struct AllArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed milliseconds per item (after one warm-up call; at least one sample, three for
    /// the kernels).
    #[arg(long, default_value_t = 1000)]
    budget_ms: u64,
    /// Model presets to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    presets: Vec<String>,
    /// Only the items whose name contains this string (e.g. `gemm`, `tiny/`, `train`).
    #[arg(long)]
    filter: Option<String>,
    /// Render the JSON document FILE (from `--json`) as the Markdown table and exit.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["json", "threads", "filter"])]
    markdown: Option<PathBuf>,
    /// Seed of the models' initialization and data draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The machine a run was measured on. Documents of older runs lack the later fields: `tile`
/// reads as empty, an absent `Option` as None (serde's rule for missing `Option` fields).
#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// SIMD features detected at run time (x86-64: sse4.2 … avx512*).
    pub features: Vec<String>,
    /// Threads of the pool the items ran in.
    pub threads: usize,
    /// Logical CPUs the OS reports.
    pub logical_cpus: usize,
    /// The GEMM micro-kernel selected for this CPU.
    pub kernel: String,
    /// Operating-system kernel release (Linux: /proc/sys/kernel/osrelease).
    pub os: String,
    /// Micro-kernel tile, rows × columns of C (e.g. "14x32").
    #[serde(default)]
    pub tile: String,
    /// Data cache sizes per core in bytes, and where they were read (sysfs, cpuid, default).
    pub caches: Option<Caches>,
    /// GEMM blocking derived from the caches (or `VFFN_BLOCKING`).
    pub blocking: Option<BlockingInfo>,
    /// Measured f32 FMA peak of the selected ISA on `threads` threads (GFLOP/s).
    pub peak_gflops: Option<f64>,
}

/// Cache sizes as `vffn bench all --json` records them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Caches {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
    pub source: String,
}

/// GEMM blocking as `vffn bench all --json` records it.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlockingInfo {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

/// One measured item.
#[derive(Debug, Serialize, Deserialize)]
pub struct Item {
    /// `group/case`, e.g. `gemm/Wt_512x256x1024`, `model/tiny/versatile/train_step`.
    pub name: String,
    /// Median milliseconds per call (per batch / per step for model items).
    pub median_ms: f64,
    pub samples: usize,
    /// FLOPs per call.
    pub flops: f64,
    pub gflops: f64,
    /// `gflops` over the machine's measured peak (`machine.peak_gflops`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_per_token: Option<f64>,
}

/// The whole `--json` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// `git rev-parse HEAD` of the working directory, or "unknown".
    pub commit: String,
    /// Uncommitted changes to tracked files (null when git is unavailable).
    pub dirty: Option<bool>,
    pub machine: Machine,
    pub budget_ms: u64,
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
    pub items: Vec<Item>,
}

/// What an item runs, built only if the filter keeps it.
enum Work {
    Gemm(usize, usize, usize, bool),
    Ffn(&'static str),
    Attention { backward: bool },
    Forward { preset: String, block: &'static str },
    Train { preset: String, block: &'static str },
}

pub fn run(args: AllArgs) -> Result<()> {
    if let Some(path) = &args.markdown {
        let bytes = read_input_file(path, "bench JSON file")?;
        let report: Report = serde_json::from_slice(&bytes).with_context(|| {
            format!("`{}` is not a `vffn bench all --json` document", path.display())
        })?;
        out!("{}", markdown(&report));
        return Ok(());
    }
    ensure!(args.budget_ms <= 600_000, "--budget-ms must be at most 600000");
    for preset in &args.presets {
        ensure!(PRESETS.contains(&preset.as_str()), "unknown preset `{preset}` (tiny or small)");
    }
    let work = plan(&args);
    ensure!(
        !work.is_empty(),
        "--filter `{}` matches no item",
        args.filter.as_deref().unwrap_or("")
    );
    let started = Instant::now();
    let budget = Duration::from_millis(args.budget_ms);
    let progress = std::io::stderr().is_terminal();
    let (mut items, threads) = in_pool(args.threads, || {
        let tiny = Config::tiny();
        let mut datasets: Vec<(usize, Dataset)> = Vec::new();
        let mut items = Vec::with_capacity(work.len());
        for (name, w) in &work {
            if progress {
                err!("\r\x1b[K{name} …");
            }
            let item = match w {
                Work::Gemm(m, k, n, trans_b) => {
                    let mut case = GemmCase::new(*m, *k, *n, *trans_b);
                    let flops = case.flops();
                    kernel_item(name, flops, budget, || {
                        case.run();
                        Ok(())
                    })?
                }
                Work::Ffn(path) => {
                    let mut case = FfnCase::issue5()?;
                    let flops = match *path {
                        "dense" => case.dense_flops(),
                        "width" => case.width_flops(),
                        _ => case.depth_flops(),
                    };
                    kernel_item(name, flops, budget, || {
                        Ok(match *path {
                            "dense" => case.dense(),
                            "width" => case.width(),
                            _ => case.depth(),
                        }?)
                    })?
                }
                Work::Attention { backward } => {
                    let mut case = AttentionCase::for_config(&tiny);
                    if *backward {
                        let flops = case.forward_backward_flops();
                        kernel_item(name, flops, budget, || {
                            case.forward_backward();
                            Ok(())
                        })?
                    } else {
                        let flops = case.forward_flops();
                        kernel_item(name, flops, budget, || {
                            case.forward();
                            Ok(())
                        })?
                    }
                }
                Work::Forward { preset, block } | Work::Train { preset, block } => {
                    let run = preset_config(preset, block)?;
                    let seq_len = run.model.seq_len;
                    if !datasets.iter().any(|(s, _)| *s == seq_len) {
                        datasets.push((seq_len, load_dataset(None, seq_len)?.0));
                    }
                    let dataset = &datasets.iter().find(|(s, _)| *s == seq_len).expect("loaded").1;
                    let sampling = Sampling {
                        warmup: 1,
                        min_samples: 1,
                        max_samples: 1000,
                        budget,
                        min_sample: Duration::ZERO,
                    };
                    let timing = if matches!(w, Work::Forward { .. }) {
                        measure_forward(
                            &run.model,
                            dataset,
                            args.seed,
                            WeightDtype::F32,
                            &sampling,
                        )?
                    } else {
                        measure_train(&run, dataset, args.seed, &sampling)?
                    };
                    model_item(name, &timing)
                }
            };
            items.push(item);
        }
        Ok((items, rayon::current_num_threads()))
    })?;
    if progress {
        err!("\r\x1b[K");
    }
    let machine = machine(threads);
    if let Some(peak) = machine.peak_gflops.filter(|p| *p > 0.0) {
        for item in &mut items {
            item.peak_fraction = Some(item.gflops / peak);
        }
    }
    let (commit, dirty) = git_state();
    let report = Report {
        date: utc_now(),
        commit,
        dirty,
        machine,
        budget_ms: args.budget_ms,
        elapsed_s: started.elapsed().as_secs_f64(),
        items,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", text_table(&report));
    }
    Ok(())
}

/// The items the flags select, in run order, with their names.
fn plan(args: &AllArgs) -> Vec<(String, Work)> {
    let mut work = Vec::new();
    for &(m, k, n) in &GEMM_SHAPES {
        for trans_b in [false, true] {
            let layout = if trans_b { "Wt" } else { "B" };
            work.push((format!("gemm/{layout}_{m}x{k}x{n}"), Work::Gemm(m, k, n, trans_b)));
        }
    }
    for path in ["dense", "width", "depth"] {
        work.push((format!("ffn/{path}_T2048_d256_h1024"), Work::Ffn(path)));
    }
    let tiny = AttentionCase::for_config(&Config::tiny()).label();
    work.push((format!("attention/forward_{tiny}"), Work::Attention { backward: false }));
    work.push((format!("attention/forward_backward_{tiny}"), Work::Attention { backward: true }));
    for preset in &args.presets {
        for block in BLOCKS {
            let (p, b) = (preset.clone(), block);
            work.push((format!("model/{p}/{b}/forward"), Work::Forward { preset: p, block: b }));
            let (p, b) = (preset.clone(), block);
            work.push((format!("model/{p}/{b}/train_step"), Work::Train { preset: p, block: b }));
        }
    }
    if let Some(filter) = &args.filter {
        work.retain(|(name, _)| name.contains(filter.as_str()));
    }
    work
}

/// A kernel item: samples of ≥ 2 ms (several calls for short ones), at least three.
fn kernel_item(
    name: &str,
    flops: f64,
    budget: Duration,
    call: impl FnMut() -> Result<()>,
) -> Result<Item> {
    let sampling = Sampling {
        warmup: 1,
        min_samples: 3,
        max_samples: 10_000,
        budget,
        min_sample: Duration::from_millis(2),
    };
    let times = sample(&sampling, call)?;
    let secs = median(&times);
    Ok(Item {
        name: name.to_string(),
        median_ms: secs * 1e3,
        samples: times.len(),
        flops,
        gflops: flops / secs / 1e9,
        peak_fraction: None,
        tokens_per_s: None,
        flops_per_token: None,
    })
}

fn model_item(name: &str, t: &ModelTiming) -> Item {
    Item {
        name: name.to_string(),
        median_ms: t.ms,
        samples: t.samples,
        flops: t.flops_per_token * t.tokens as f64,
        gflops: t.gflops(),
        peak_fraction: None,
        tokens_per_s: Some(t.tokens_per_s()),
        flops_per_token: Some(t.flops_per_token),
    }
}

/// `git rev-parse HEAD` and whether tracked files have uncommitted changes.
fn git_state() -> (String, Option<bool>) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
            (commit, dirty)
        }
        _ => ("unknown".to_string(), None),
    }
}

fn machine(threads: usize) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("{} {}", std::env::consts::OS, s.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.to_string());
    Machine {
        cpu_model,
        features: cpu_features(),
        threads,
        logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel: vffn_kernels::selected_kernel()
            .map(|k| k.to_string())
            .unwrap_or_else(|e| format!("none ({e})")),
        os,
        tile: vffn_kernels::selected_kernel()
            .map(|k| format!("{}x{}", k.mr(), k.nr()))
            .unwrap_or_default(),
        caches: Some({
            let c = vffn_kernels::cpu::cache_sizes();
            Caches { l1d: c.l1d, l2: c.l2, l3: c.l3, source: c.source.to_string() }
        }),
        blocking: vffn_kernels::selected_kernel().ok().map(|k| {
            let b = vffn_kernels::cpu::blocking(k);
            BlockingInfo { kc: b.kc, mc: b.mc, nc: b.nc }
        }),
        peak_gflops: super::peak::peak_of_selected(threads),
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Vec<String> {
    let mut found = Vec::new();
    macro_rules! detect {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                found.push($f.to_string());
            }
        )*};
    }
    detect!("sse4.2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl");
    found
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> Vec<String> {
    Vec::new()
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A short description of where the numbers come from.
fn provenance(r: &Report) -> String {
    let dirty = match r.dirty {
        Some(true) => " (with uncommitted changes)",
        Some(false) => "",
        None => " (git state unknown)",
    };
    let short = r.commit.get(..12).unwrap_or(&r.commit);
    format!(
        "{} at commit {short}{dirty}; {}, {} threads ({} logical CPUs), features {}, GEMM kernel {}{}{}{}, {}; {} ms per item, {:.0} s in all",
        r.date,
        r.machine.cpu_model,
        r.machine.threads,
        r.machine.logical_cpus,
        r.machine.features.join(" "),
        r.machine.kernel,
        tile_text(&r.machine),
        caches_text(&r.machine),
        r.machine.peak_gflops.map(|p| format!(", measured FMA peak {p:.0} GFLOP/s")).unwrap_or_default(),
        r.machine.os,
        r.budget_ms,
        r.elapsed_s
    )
}

/// ` 14x32 tile` plus the blocking, when recorded.
fn tile_text(m: &Machine) -> String {
    let mut out = String::new();
    if !m.tile.is_empty() {
        out.push_str(&format!(" ({} tile", m.tile));
        if let Some(b) = &m.blocking {
            out.push_str(&format!(", KC {} MC {} NC {}", b.kc, b.mc, b.nc));
        }
        out.push(')');
    }
    out
}

/// `, caches L1d 48 KiB / L2 2048 KiB / L3 … per core (sysfs)`, when recorded.
fn caches_text(m: &Machine) -> String {
    m.caches
        .as_ref()
        .map(|c| {
            format!(
                ", caches L1d {} KiB / L2 {} KiB / L3 {} KiB per core ({})",
                c.l1d >> 10,
                c.l2 >> 10,
                c.l3 >> 10,
                c.source
            )
        })
        .unwrap_or_default()
}

fn optional(v: Option<f64>, scale: f64, decimals: usize) -> String {
    v.map(|v| format!("{:.*}", decimals, v * scale)).unwrap_or_default()
}

/// An item's cells, in table order: name, median ms, GFLOP/s, % of peak, MFLOP/call,
/// tokens/s, MFLOP/token (absent figures empty).
fn cells(i: &Item) -> [String; 7] {
    [
        i.name.clone(),
        format!("{:.3}", i.median_ms),
        format!("{:.2}", i.gflops),
        optional(i.peak_fraction, 100.0, 1),
        format!("{:.2}", i.flops / 1e6),
        optional(i.tokens_per_s, 1.0, 0),
        optional(i.flops_per_token, 1e-6, 3),
    ]
}

fn text_table(r: &Report) -> String {
    let mut out = format!("vffn bench all: {}\n", provenance(r));
    let header =
        ["item", "median ms", "GFLOP/s", "% peak", "MFLOP/call", "tokens/s", "MFLOP/token"];
    let line = |c: &[&str]| {
        format!(
            "{:<44} {:>11} {:>9} {:>7} {:>13} {:>12} {:>12}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    out.push_str(&line(&header));
    for i in &r.items {
        let c = cells(i);
        out.push_str(&line(&c.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// The Markdown table of docs/benchmarks.md.
pub fn markdown(r: &Report) -> String {
    let mut out = format!("Measured {}.\n\n", provenance(r));
    out.push_str(
        "| item | median ms | GFLOP/s | % of peak | MFLOP/call | tokens/s | MFLOP/token |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for i in &r.items {
        let [name, rest @ ..] = cells(i);
        out.push_str(&format!("| `{name}` | {} |\n", rest.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
