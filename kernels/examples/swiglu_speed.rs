//! Times the SwiGLU kernel on a cache-resident tile: `cargo run --release -p vffn-kernels
//! --example swiglu_speed -- [rows] [s] [iters]`. Prints nanoseconds per output element.

use std::time::Instant;
use vffn_kernels::fused::swiglu_forward;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = args.first().copied().unwrap_or(480);
    let s = args.get(1).copied().unwrap_or(64);
    let iters = args.get(2).copied().unwrap_or(2000);
    let u: Vec<f32> = (0..rows * 2 * s).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    let mut a = vec![0.0f32; rows * s];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let mut best = f64::INFINITY;
    pool.install(|| {
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..iters {
                swiglu_forward(&u, &mut a, s);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
    });
    let ns = best * 1e9 / (iters * rows * s) as f64;
    println!("swiglu {rows}x{s}: {ns:.3} ns/element (checksum {})", a.iter().sum::<f32>());
}
