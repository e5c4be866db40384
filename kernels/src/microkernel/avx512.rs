//! AVX-512F micro-kernel: 14 × 16 tile in 14 zmm accumulators (1 B load + 14 broadcasts per k).
//!
//! NOT EXECUTED on the development machine (Zen 3, no AVX-512): it compiles everywhere and is
//! tested only where `avx512f` is detected.

use std::arch::x86_64::*;

use super::{edge_load, edge_store, Tile, MR_MAX, NR};

/// Rows per tile.
pub(crate) const MR: usize = MR_MAX;

/// Dispatches on the tile height so edge rows cost only their own FMAs.
///
/// # Safety
/// AVX-512F must be available; `t` must describe valid memory (see `run_tile`).
pub(crate) unsafe fn tile(a_packed: bool, t: &Tile) {
    macro_rules! go {
        ($($m:literal $f:ident)*) => {
            match (a_packed, t.mr) {
                $(
                    // SAFETY: forwarded caller contract.
                    (true, $m) => unsafe { $f::<true>(t) },
                    // SAFETY: forwarded caller contract.
                    (false, $m) => unsafe { $f::<false>(t) },
                )*
                _ => unreachable!("tile height out of range"),
            }
        };
    }
    go!(1 tile_1 2 tile_2 3 tile_3 4 tile_4 5 tile_5 6 tile_6 7 tile_7 8 tile_8 9 tile_9
        10 tile_10 11 tile_11 12 tile_12 13 tile_13 14 tile_14)
}

/// One kernel per tile height, accumulators as named locals (kept in registers).
macro_rules! tile_kernel {
    ($name:ident, $m:literal; $($i:literal: $c:ident),+) => {
        #[target_feature(enable = "avx512f")]
        unsafe fn $name<const PACKED: bool>(t: &Tile) {
            let (rs_a, cs_a) = if PACKED { (1, MR) } else { (t.rs_a, t.cs_a) };
            let rs_b = t.rs_b;
            $( let mut $c = _mm512_setzero_ps(); )+
            let mut a = t.a;
            let mut b = t.b;
            // SAFETY (whole body): the caller guarantees A, B readable for p < k, C for the tile.
            unsafe {
                macro_rules! step {
                    ($ap:expr, $bp:expr) => {{
                        let bv = _mm512_loadu_ps($bp);
                        $( $c = _mm512_fmadd_ps(_mm512_set1_ps(*$ap.add($i * rs_a)), bv, $c); )+
                    }};
                }
                let mut left = t.k;
                while left >= 2 {
                    step!(a, b);
                    step!(a.add(cs_a), b.add(rs_b));
                    a = a.add(2 * cs_a);
                    b = b.add(2 * rs_b);
                    left -= 2;
                }
                if left > 0 {
                    step!(a, b);
                }
                epilogue::<$m>([$($c),+], t);
            }
        }
    };
}

tile_kernel!(tile_1, 1; 0: c0);
tile_kernel!(tile_2, 2; 0: c0, 1: c1);
tile_kernel!(tile_3, 3; 0: c0, 1: c1, 2: c2);
tile_kernel!(tile_4, 4; 0: c0, 1: c1, 2: c2, 3: c3);
tile_kernel!(tile_5, 5; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4);
tile_kernel!(tile_6, 6; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5);
tile_kernel!(tile_7, 7; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6);
tile_kernel!(tile_8, 8; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7);
tile_kernel!(tile_9, 9; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8);
tile_kernel!(tile_10, 10; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9);
tile_kernel!(tile_11, 11; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
    10: c10);
tile_kernel!(tile_12, 12; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
    10: c10, 11: c11);
tile_kernel!(tile_13, 13; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
    10: c10, 11: c11, 12: c12);
tile_kernel!(tile_14, 14; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
    10: c10, 11: c11, 12: c12, 13: c13);

/// `C = alpha·acc + beta·C` for one tile, out of line (keeps the loop accumulators in registers).
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue<const M: usize>(acc: [__m512; M], t: &Tile) {
    let alpha = _mm512_set1_ps(t.alpha);
    let beta = _mm512_set1_ps(t.beta);
    let read_c = t.beta != 0.0;
    // SAFETY (whole body): the caller guarantees C is valid for the tile.
    unsafe {
        if t.cs_c == 1 {
            // Masked loads and stores cover a partial tile width without a scalar path.
            let mask: __mmask16 = if t.nr == NR { 0xFFFF } else { (1u16 << t.nr) - 1 };
            for (i, acc_i) in acc.iter().enumerate() {
                let p = t.c.add(i * t.rs_c);
                let mut r = _mm512_mul_ps(*acc_i, alpha);
                if read_c {
                    r = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask, p), r);
                }
                _mm512_mask_storeu_ps(p, mask, r);
            }
        } else {
            let mut buf = edge_load(t);
            for (i, acc_i) in acc.iter().enumerate() {
                let p = buf[i].as_mut_ptr();
                let mut r = _mm512_mul_ps(*acc_i, alpha);
                if read_c {
                    r = _mm512_fmadd_ps(beta, _mm512_loadu_ps(p), r);
                }
                _mm512_storeu_ps(p, r);
            }
            edge_store(t, &buf);
        }
    }
}
