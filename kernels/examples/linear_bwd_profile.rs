//! Profiling driver for the backward GEMMs of one linear layer (issue 3's bench shape):
//! `cargo run --release -p vffn-kernels --example linear_bwd_profile -- [dx|dw|fwd] [iters]`,
//! under `perf record`. Prints the median and minimum milliseconds, and GFLOP/s at the median.

use std::time::Instant;
use vffn_kernels::{gemm, MatMut, MatRef};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("dw", String::as_str).to_string();
    if !matches!(which.as_str(), "fwd" | "dx" | "dw") {
        eprintln!("error: product `{which}` is not one of fwd, dx, dw");
        std::process::exit(2);
    }
    let iters: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let (t, d, o) = (2048usize, 256usize, 1024usize);
    let fill =
        |n: usize, s: u32| (0..n).map(|i| ((i as u32 ^ s) % 97) as f32 / 97.0 - 0.5).collect();
    let x: Vec<f32> = fill(t * d, 1);
    let w: Vec<f32> = fill(o * d, 2);
    let dy: Vec<f32> = fill(t * o, 3);
    let mut out = vec![0.0f32; t * o];
    let mut times = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        match which.as_str() {
            "fwd" => gemm(
                1.0,
                MatRef::new(&x, t, d),
                MatRef::new(&w, o, d).t(),
                0.0,
                MatMut::new(&mut out[..t * o], t, o),
            ),
            "dx" => gemm(
                1.0,
                MatRef::new(&dy, t, o),
                MatRef::new(&w, o, d),
                0.0,
                MatMut::new(&mut out[..t * d], t, d),
            ),
            _ => gemm(
                1.0,
                MatRef::new(&dy, t, o).t(),
                MatRef::new(&x, t, d),
                0.0,
                MatMut::new(&mut out[..o * d], o, d),
            ),
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    let flops = 2.0 * (t * d * o) as f64;
    println!("{which}: median {ms:.3} ms, min {:.3} ms, {:.1} GFLOP/s", times[0], flops / ms / 1e6);
}
