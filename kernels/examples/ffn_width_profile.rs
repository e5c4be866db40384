//! Profiling harness: `cargo run --release -p vffn-kernels --example ffn_width_profile -- [iters] [d] [h]`
//! runs the width forward (and its naive reference) on a random routing, printing median ms.

use std::time::Instant;

use vffn_kernels::ffn::{self, naive, PackedFfn};
use vffn_kernels::testvals::{values, XorShift};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let iters = args.first().copied().unwrap_or(20);
    let d = args.get(1).copied().unwrap_or(256);
    let h = args.get(2).copied().unwrap_or(1024);
    let naive_too = std::env::var("NAIVE").is_ok();
    let (t, e, k) = (2048usize, 8usize, 2usize);
    let w1 = values(2 * h * d, 1, 1.0 / (d as f32).sqrt());
    let w2 = values(d * h, 2, 1.0 / (h as f32).sqrt());
    let x = values(t * d, 4, 1.0);
    let mut rng = XorShift::new(0x5EED);
    let ids = rng.routing(t, k, e);
    let gates: Vec<f32> = (0..t * k).map(|i| 0.3 + 0.4 * ((i % 7) as f32 / 7.0)).collect();
    let packed = PackedFfn::pack(&w1, &w2, d, h, e, false)?;
    let mut out = vec![0.0f32; t * d];
    let (mut tw, mut tn, mut td) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t0 = Instant::now();
        ffn::width_forward(&packed, &x, &ids, &gates, k, &mut out)?;
        tw.push(t0.elapsed().as_secs_f64() * 1e3);
        if std::env::var("NO_DENSE").is_err() {
            let t0 = Instant::now();
            ffn::dense_forward(&packed, &x, &mut out)?;
            td.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        if naive_too {
            let t0 = Instant::now();
            naive::width_naive(&w1, &w2, d, h, e, &x, &ids, &gates, k, &mut out);
            tn.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let gflop = 6.0 * (t * d * h) as f64 * 1e-9;
    let w = median(tw);
    let dn = median(td);
    println!("width {w:.3} ms ({:.1} GFLOP/s)", gflop * k as f64 / e as f64 / w * 1e3);
    println!("dense {dn:.3} ms ({:.1} GFLOP/s)", gflop / dn * 1e3);
    if naive_too {
        let n = median(tn);
        println!("width_naive {n:.3} ms, ratio {:.3}", n / w);
    }
    Ok(())
}
