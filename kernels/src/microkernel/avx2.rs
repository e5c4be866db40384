//! AVX2 + FMA micro-kernel: 6 × 16 tile in 12 ymm accumulators (2 B loads + 6 broadcasts per k).

use std::arch::x86_64::*;

use super::{edge_load, edge_store, Scale, Tile, NR};

/// Rows per tile.
pub(crate) const MR: usize = 6;

/// Dispatches on the tile height so edge rows cost only their own FMAs.
///
/// # Safety
/// AVX2 and FMA must be available; `t` must describe valid memory (see `run_tile`).
pub(crate) unsafe fn tile(a_packed: bool, t: &Tile) {
    // SAFETY: forwarded caller contract.
    unsafe {
        if a_packed {
            tile_of_height::<true>(t)
        } else {
            tile_of_height::<false>(t)
        }
    }
}

/// [`tile`] for one A layout.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tile_of_height<const PACKED: bool>(t: &Tile) {
    // SAFETY (all arms): forwarded caller contract.
    unsafe {
        match t.mr {
            6 => tile_6::<PACKED>(t),
            5 => tile_5::<PACKED>(t),
            4 => tile_4::<PACKED>(t),
            3 => tile_3::<PACKED>(t),
            2 => tile_2::<PACKED>(t),
            1 => tile_1::<PACKED>(t),
            _ => unreachable!("tile height out of range"),
        }
    }
}

/// One kernel per tile height, accumulators as named locals (arrays indexed in loops end up in
/// stack memory, costing a store per FMA).
macro_rules! tile_kernel {
    ($name:ident, $m:literal; $($i:literal: $c0:ident $c1:ident),+) => {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name<const PACKED: bool>(t: &Tile) {
            let (rs_a, cs_a) = t.a_strides::<PACKED>(MR);
            $(
                let mut $c0 = _mm256_setzero_ps();
                let mut $c1 = _mm256_setzero_ps();
            )+
            // SAFETY (whole body): the caller guarantees A, B readable for p < k, C for the tile.
            unsafe {
                $crate::microkernel::prefetch_c_rows::<$m>(t, NR - 1);
                macro_rules! step {
                    ($ap:expr, $bp:expr) => {{
                        let b0 = _mm256_loadu_ps($bp);
                        let b1 = _mm256_loadu_ps($bp.add(8));
                        $(
                            let ai = _mm256_broadcast_ss(&*$ap.add($i * rs_a));
                            $c0 = _mm256_fmadd_ps(ai, b0, $c0);
                            $c1 = _mm256_fmadd_ps(ai, b1, $c1);
                        )+
                    }};
                }
                depth_loop!(4: 0 1 2 3; t, cs_a, step);
                epilogue::<$m>([$([$c0, $c1]),+], t);
            }
        }
    };
}

tile_kernel!(tile_6, 6; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51);
tile_kernel!(tile_5, 5; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41);
tile_kernel!(tile_4, 4; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31);
tile_kernel!(tile_3, 3; 0: c00 c01, 1: c10 c11, 2: c20 c21);
tile_kernel!(tile_2, 2; 0: c00 c01, 1: c10 c11);
tile_kernel!(tile_1, 1; 0: c00 c01);

/// `C = alpha·acc + beta·C` for one tile (kept out of line so the loop's accumulators stay in
/// registers: the epilogue's stores take addresses).
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue<const M: usize>(acc: [[__m256; 2]; M], t: &Tile) {
    let s = Scale::of(t, |x| _mm256_set1_ps(x));
    // SAFETY (whole body): the caller guarantees C is valid for the tile.
    unsafe {
        macro_rules! store {
            ($c:expr, $rs:expr) => {{
                for i in 0..M {
                    for h in 0..2 {
                        let p = $c.add(i * $rs + 8 * h);
                        let mut r = _mm256_mul_ps(acc[i][h], s.alpha);
                        if s.read_c {
                            r = _mm256_fmadd_ps(s.beta, _mm256_loadu_ps(p), r);
                        }
                        _mm256_storeu_ps(p, r);
                    }
                }
            }};
        }
        if t.nr == NR && t.cs_c == 1 {
            store!(t.c, t.rs_c);
        } else if t.rs_c == 1 && t.nr == NR && M == MR {
            store_transposed(acc, s, t);
        } else {
            let mut buf = edge_load::<NR>(t);
            let p = buf.as_mut_ptr() as *mut f32;
            store!(p, NR);
            edge_store(t, &buf);
        }
    }
}

/// Epilogue for a column-major C tile (rs_c == 1): transposes the 6 × 16 accumulators in registers
/// (two 8 × 8 transposes, rows 6 and 7 padding) and writes each C column's 6 values. Same per-element arithmetic as the row-major store.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_transposed<const M: usize>(acc: [[__m256; 2]; M], s: Scale<__m256>, t: &Tile) {
    for h in 0..2 {
        let mut rows = [_mm256_setzero_ps(); 8];
        for (row, acc_i) in rows.iter_mut().zip(&acc) {
            *row = acc_i[h];
        }
        let cols = transpose8(rows);
        for (q, col) in cols.iter().enumerate() {
            // SAFETY: column 8h+q of the tile holds M = 6 valid values starting at this address.
            unsafe {
                // 4 + 2 floats with plain 128/64-bit moves (AMD's masked stores are microcoded).
                let p = t.c.add((8 * h + q) * t.cs_c);
                let mut r = _mm256_mul_ps(*col, s.alpha);
                if s.read_c {
                    let lo = _mm_loadu_ps(p);
                    let hi = _mm_castpd_ps(_mm_load_sd(p.add(4) as *const f64));
                    r = _mm256_fmadd_ps(s.beta, _mm256_set_m128(hi, lo), r);
                }
                _mm_storeu_ps(p, _mm256_castps256_ps128(r));
                _mm_store_sd(p.add(4) as *mut f64, _mm_castps_pd(_mm256_extractf128_ps::<1>(r)));
            }
        }
    }
}

/// 8 × 8 transpose of f32 lanes.
#[target_feature(enable = "avx2")]
pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
