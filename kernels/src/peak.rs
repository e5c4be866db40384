//! The machine's f32 FMA peak: a register-only loop of independent fused multiply-adds per ISA.
//!
//! Each loop keeps more independent accumulators than FMA latency × ports on any core we target
//! (so the FMA units, not dependencies, bound it) and no more than fit in the ISA's registers (so
//! nothing spills: AVX2's 16 ymm registers hold 12 chains and the two constants, AVX-512's 32 zmm
//! hold 16), no memory traffic. The figure is what the roofline of
//! every `vffn bench` GFLOP/s figure is measured against.

use std::time::Instant;

use crate::microkernel::{KernelError, KernelKind};

/// Independent accumulator chains per loop of the 256-bit ISAs (portable, AVX2): 16 chains and
/// two constants do not fit in 16 ymm registers, and the spilled loop measured 75 GFLOP/s on a
/// Zen 5 core that runs 12 chains at twice that.
const CHAINS_256: usize = 12;
/// Chains of the AVX-512 loop.
const CHAINS_512: usize = 16;

/// FLOPs of `iters` iterations for `kind`: chains × lanes × 2 (multiply and add).
fn flops(kind: KernelKind, iters: u64) -> f64 {
    let (chains, lanes) = match kind {
        KernelKind::Portable | KernelKind::Avx2 => (CHAINS_256, 8),
        KernelKind::Avx512 => (CHAINS_512, 16),
    };
    (iters as f64) * (chains * lanes * 2) as f64
}

/// Runs `iters` iterations of the FMA loop of `kind` on this thread; returns a checksum so the
/// work cannot be optimized away.
pub fn fma_loop(kind: KernelKind, iters: u64) -> Result<f32, KernelError> {
    kind.check()?;
    Ok(match kind {
        KernelKind::Portable => portable_loop(iters),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check` confirmed AVX2 and FMA.
        KernelKind::Avx2 => unsafe { avx2_loop(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check` confirmed AVX-512F.
        KernelKind::Avx512 => unsafe { avx512_loop(iters) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-x86 kernels are never available"),
    })
}

/// GFLOP/s of the FMA loop of `kind` on each of `threads` threads at once (the current rayon pool
/// must have at least that many), total over the threads: the best of `rounds` timed rounds of
/// about `round_ms` each.
pub fn peak_gflops(
    kind: KernelKind,
    threads: usize,
    rounds: usize,
    round_ms: u64,
) -> Result<f64, KernelError> {
    kind.check()?;
    let threads = threads.max(1);
    // Size one round from a short calibration on this thread.
    let probe = 1u64 << 16;
    let t = Instant::now();
    std::hint::black_box(fma_loop(kind, probe)?);
    let per_iter = t.elapsed().as_secs_f64().max(1e-9) / probe as f64;
    let iters = ((round_ms as f64 / 1e3) / per_iter).max(1.0) as u64;
    let mut best = 0.0f64;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        rayon::scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| {
                    std::hint::black_box(fma_loop(kind, iters).ok());
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops(kind, iters) * threads as f64 / secs / 1e9);
    }
    Ok(best)
}

fn portable_loop(iters: u64) -> f32 {
    use wide::f32x8;
    let a = f32x8::splat(0.999_999);
    let b = f32x8::splat(1e-7);
    let mut acc = [f32x8::splat(1.0); CHAINS_256];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = c.mul_add(a, b);
        }
    }
    acc.iter().map(|v| v.reduce_add()).sum()
}

/// One FMA-chain loop per x86 ISA: `$set1`, `$fmadd`, `$add`, `$zero` its intrinsics, `$reduce`
/// the lane sum of `$sum`.
macro_rules! fma_loop_x86 {
    ($name:ident, $feature:literal, $chains:expr, $set1:ident, $fmadd:ident, $add:ident, $zero:ident,
     |$sum:ident| $reduce:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(iters: u64) -> f32 {
            use std::arch::x86_64::*;
            let a = $set1(0.999_999);
            let b = $set1(1e-7);
            let mut acc = [$set1(1.0); $chains];
            for _ in 0..iters {
                for c in acc.iter_mut() {
                    *c = $fmadd(*c, a, b);
                }
            }
            let mut $sum = $zero();
            for c in acc {
                $sum = $add($sum, c);
            }
            $reduce
        }
    };
}

fma_loop_x86!(
    avx2_loop,
    "avx2,fma",
    CHAINS_256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_setzero_ps,
    |sum| {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
);
fma_loop_x86!(
    avx512_loop,
    "avx512f",
    CHAINS_512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_setzero_ps,
    |sum| _mm512_reduce_add_ps(sum)
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every available ISA's loop computes the same recurrence (x ← 0.999999·x + 1e-7 from 1):
    /// the checksum is chains × lanes × the scalar value.
    #[test]
    fn every_fma_loop_computes_the_recurrence() {
        let mut x = 1.0f32;
        for _ in 0..1000 {
            x = x.mul_add(0.999_999, 1e-7);
        }
        for kind in KernelKind::ALL.into_iter().filter(|k| k.is_available()) {
            let (chains, lanes) =
                if kind == KernelKind::Avx512 { (CHAINS_512, 16) } else { (CHAINS_256, 8) };
            let got = fma_loop(kind, 1000).unwrap();
            let want = (chains * lanes) as f32 * x;
            assert!((got - want).abs() <= 1e-3 * want, "{kind}: {got} vs {want}");
            assert!(peak_gflops(kind, 1, 1, 1).unwrap() > 0.0);
        }
    }
}
