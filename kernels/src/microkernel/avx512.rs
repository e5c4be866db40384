//! AVX-512F micro-kernels: 14 × 32 tiles over two 16-wide B panels (28 zmm accumulators), and
//! 14 × 16 tiles for a lone last panel (14 accumulators).
//!
//! Why two panels: a core with two 512-bit FMA ports and two load ports (Intel Xeon since Skylake-SP)
//! runs two FMAs and two loads per cycle. One panel needs 1 B load + 14 A broadcasts per 14 FMAs
//! (load-bound: 7.5 cycles of loads per 7 of FMAs); two panels need 2 + 14 loads per 28 FMAs (8 of
//! loads per 14 of FMAs: FMA-bound). On cores with one 512-bit unit per two 256-bit halves (AMD
//! Zen 4) both are FMA-bound, and the wide tile halves the broadcasts per FMA.
//!
//! Every C element's sum runs over k in the same order in both tiles (one FMA per k into its own
//! accumulator), so which tile computes an element never changes its bits.

use std::arch::x86_64::*;

use super::{edge_load, edge_store, Scale, Tile, MR_MAX, NR, NR_MAX};

/// Rows per tile.
pub(crate) const MR: usize = MR_MAX;

/// The match from (two panels?, A packed?, height) to the tile function.
macro_rules! dispatch_tiles {
    ($t:ident, $a_packed:ident; $($m:literal $narrow:ident $wide:ident)*) => {
        match ($t.nr > NR, $a_packed, $t.mr) {
            $(
                // SAFETY: forwarded caller contract.
                (false, true, $m) => unsafe { $narrow::<true>($t) },
                // SAFETY: forwarded caller contract.
                (false, false, $m) => unsafe { $narrow::<false>($t) },
                // SAFETY: forwarded caller contract.
                (true, true, $m) => unsafe { $wide::<true>($t) },
                // SAFETY: forwarded caller contract.
                (true, false, $m) => unsafe { $wide::<false>($t) },
            )*
            _ => unreachable!("tile height out of range"),
        }
    };
}

/// One 16-wide kernel per tile height, accumulators as named locals (kept in registers).
macro_rules! tile_kernel {
    ($feat:literal, $bcast:ident, $madd:ident;
     $name:ident, $m:literal; $($i:literal: $c:ident),+) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name<const PACKED: bool>(t: &Tile) {
            let (rs_a, cs_a) = t.a_strides::<PACKED>(MR);
            $( let mut $c = _mm512_setzero_ps(); )+
            // SAFETY (whole body): the caller guarantees A, B readable for p < k, C for the tile.
            unsafe {
                macro_rules! step {
                    ($ap:expr, $bp:expr) => {{
                        let bv = _mm512_loadu_ps($bp);
                        $( $c = $madd!($bcast!($ap.add($i * rs_a)), bv, $c); )+
                    }};
                }
                depth_loop!(2: 0 1; t, cs_a, step);
                epilogue::<$m>([$($c),+], t);
            }
        }
    };
}

/// One 32-wide kernel per tile height: row i accumulates into `$c0` (panel 1) and `$c1` (panel 2),
/// one broadcast of A(i, p) feeding both FMAs.
macro_rules! wide_kernel {
    ($feat:literal, $bcast:ident, $madd:ident;
     $name:ident, $m:literal; $($i:literal: $c0:ident $c1:ident),+) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name<const PACKED: bool>(t: &Tile) {
            let (rs_a, cs_a) = t.a_strides::<PACKED>(MR);
            $(
                let mut $c0 = _mm512_setzero_ps();
                let mut $c1 = _mm512_setzero_ps();
            )+
            let next = t.b_next;
            // SAFETY (whole body): the caller guarantees A, both B panels readable for p < k, C
            // for the tile.
            unsafe {
                $crate::microkernel::prefetch_c_rows::<$m>(t, NR_MAX - 1);
                macro_rules! step {
                    ($ap:expr, $bp:expr) => {{
                        let b0 = _mm512_loadu_ps($bp);
                        let b1 = _mm512_loadu_ps($bp.add(next));
                        $(
                            let ai = $bcast!($ap.add($i * rs_a));
                            $c0 = $madd!(ai, b0, $c0);
                            $c1 = $madd!(ai, b1, $c1);
                        )+
                    }};
                }
                depth_loop!(2: 0 1; t, cs_a, step);
                wide_epilogue::<$m>([$([$c0, $c1]),+], t);
            }
        }
    };
}

/// One family of kernels (every height, both widths) and its dispatch `tile`: `$feat` the
/// target features, `$bcast!(p)` the broadcast of A's word at p, `$madd!(a, b, c)` the
/// multiply-add into an accumulator.
macro_rules! family {
    ($feat:literal, $bcast:ident, $madd:ident) => {
        /// Dispatches on the tile width and height so edge rows cost only their own FMAs.
        ///
        /// # Safety
        /// The family's features must be available; `t` must describe valid memory (see `run_tile`).
        pub(crate) unsafe fn tile(a_packed: bool, t: &Tile) {
            dispatch_tiles!(t, a_packed; 1 tile_1 wide_1 2 tile_2 wide_2 3 tile_3 wide_3 4 tile_4 wide_4 5 tile_5 wide_5
                6 tile_6 wide_6 7 tile_7 wide_7 8 tile_8 wide_8 9 tile_9 wide_9 10 tile_10 wide_10
                11 tile_11 wide_11 12 tile_12 wide_12 13 tile_13 wide_13 14 tile_14 wide_14)
        }

        tile_kernel!($feat, $bcast, $madd;
            tile_1, 1; 0: c0);
        tile_kernel!($feat, $bcast, $madd;
            tile_2, 2; 0: c0, 1: c1);
        tile_kernel!($feat, $bcast, $madd;
            tile_3, 3; 0: c0, 1: c1, 2: c2);
        tile_kernel!($feat, $bcast, $madd;
            tile_4, 4; 0: c0, 1: c1, 2: c2, 3: c3);
        tile_kernel!($feat, $bcast, $madd;
            tile_5, 5; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4);
        tile_kernel!($feat, $bcast, $madd;
            tile_6, 6; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5);
        tile_kernel!($feat, $bcast, $madd;
            tile_7, 7; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6);
        tile_kernel!($feat, $bcast, $madd;
            tile_8, 8; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7);
        tile_kernel!($feat, $bcast, $madd;
            tile_9, 9; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8);
        tile_kernel!($feat, $bcast, $madd;
            tile_10, 10; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9);
        tile_kernel!($feat, $bcast, $madd;
            tile_11, 11; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
            10: c10);
        tile_kernel!($feat, $bcast, $madd;
            tile_12, 12; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
            10: c10, 11: c11);
        tile_kernel!($feat, $bcast, $madd;
            tile_13, 13; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
            10: c10, 11: c11, 12: c12);
        tile_kernel!($feat, $bcast, $madd;
            tile_14, 14; 0: c0, 1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7, 8: c8, 9: c9,
            10: c10, 11: c11, 12: c12, 13: c13);

        wide_kernel!($feat, $bcast, $madd;
            wide_1, 1; 0: c00 c01);
        wide_kernel!($feat, $bcast, $madd;
            wide_2, 2; 0: c00 c01, 1: c10 c11);
        wide_kernel!($feat, $bcast, $madd;
            wide_3, 3; 0: c00 c01, 1: c10 c11, 2: c20 c21);
        wide_kernel!($feat, $bcast, $madd;
            wide_4, 4; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31);
        wide_kernel!($feat, $bcast, $madd;
            wide_5, 5; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41);
        wide_kernel!($feat, $bcast, $madd;
            wide_6, 6; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51);
        wide_kernel!($feat, $bcast, $madd;
            wide_7, 7; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61);
        wide_kernel!($feat, $bcast, $madd;
            wide_8, 8; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71);
        wide_kernel!($feat, $bcast, $madd;
            wide_9, 9; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81);
        wide_kernel!($feat, $bcast, $madd;
            wide_10, 10; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81, 9: c90 c91);
        wide_kernel!($feat, $bcast, $madd;
            wide_11, 11; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81, 9: c90 c91, 10: ca0 ca1);
        wide_kernel!($feat, $bcast, $madd;
            wide_12, 12; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81, 9: c90 c91, 10: ca0 ca1, 11: cb0 cb1);
        wide_kernel!($feat, $bcast, $madd;
            wide_13, 13; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81, 9: c90 c91, 10: ca0 ca1, 11: cb0 cb1, 12: cc0 cc1);
        wide_kernel!($feat, $bcast, $madd;
            wide_14, 14; 0: c00 c01, 1: c10 c11, 2: c20 c21, 3: c30 c31, 4: c40 c41, 5: c50 c51,
            6: c60 c61, 7: c70 c71, 8: c80 c81, 9: c90 c91, 10: ca0 ca1, 11: cb0 cb1, 12: cc0 cc1,
            13: cd0 cd1);
    };
}

/// f32: A(i, p) broadcast, one FMA per depth step.
macro_rules! bcast_f32 {
    ($p:expr) => {
        _mm512_set1_ps(*$p)
    };
}
macro_rules! fma_f32 {
    ($a:expr, $b:expr, $c:expr) => {
        _mm512_fmadd_ps($a, $b, $c)
    };
}

family!("avx512f", bcast_f32, fma_f32);

/// bf16 k-pairs (`vdpbf16ps`): every 32-bit word of packed A and B holds the bf16 values of
/// depths 2q (low half) and 2q + 1 (high half); each lane adds both products to its f32 sum.
pub(crate) mod dot {
    use super::*;

    macro_rules! bcast_pair {
        ($p:expr) => {
            _mm512_set1_epi32(*($p as *const i32))
        };
    }
    // The words are reinterpreted as 32 bf16 lanes (same 64 bytes; no conversion).
    macro_rules! dot_pair {
        ($a:expr, $b:expr, $c:expr) => {
            _mm512_dpbf16_ps(
                $c,
                std::mem::transmute::<__m512i, __m512bh>($a),
                std::mem::transmute::<__m512, __m512bh>($b),
            )
        };
    }

    family!("avx512f,avx512bf16", bcast_pair, dot_pair);
}

/// Lanes of a 16-wide half of the tile that are inside its `nr` columns.
#[inline(always)]
fn half_mask(nr: usize, half: usize) -> __mmask16 {
    let live = nr.saturating_sub(half * NR).min(NR);
    if live == NR {
        0xFFFF
    } else {
        ((1u32 << live) - 1) as __mmask16
    }
}

/// `r = alpha·acc + beta·C` for one vector of C at `p` (lanes outside `mask` neither read nor
/// written).
#[inline(always)]
unsafe fn store_masked(p: *mut f32, mask: __mmask16, acc: __m512, s: Scale<__m512>) {
    // SAFETY: the caller guarantees the lanes in `mask` are valid C elements.
    unsafe {
        let mut r = _mm512_mul_ps(acc, s.alpha);
        if s.read_c {
            r = _mm512_fmadd_ps(s.beta, _mm512_maskz_loadu_ps(mask, p), r);
        }
        _mm512_mask_storeu_ps(p, mask, r);
    }
}

/// `C = alpha·acc + beta·C` for one 16-wide tile, out of line (keeps the loop accumulators in
/// registers).
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue<const M: usize>(acc: [__m512; M], t: &Tile) {
    let s = Scale::of(t, |x| _mm512_set1_ps(x));
    // SAFETY (whole body): the caller guarantees C is valid for the tile.
    unsafe {
        if t.cs_c == 1 {
            // Masked loads and stores cover a partial tile width without a scalar path.
            let mask = half_mask(t.nr, 0);
            for (i, acc_i) in acc.iter().enumerate() {
                store_masked(t.c.add(i * t.rs_c), mask, *acc_i, s);
            }
        } else {
            let mut buf = edge_load::<NR>(t);
            for (i, acc_i) in acc.iter().enumerate() {
                store_masked(buf[i].as_mut_ptr(), 0xFFFF, *acc_i, s);
            }
            edge_store(t, &buf);
        }
    }
}

/// `C = alpha·acc + beta·C` for one 32-wide tile (the same per-element arithmetic as
/// [`epilogue`]).
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn wide_epilogue<const M: usize>(acc: [[__m512; 2]; M], t: &Tile) {
    let s = Scale::of(t, |x| _mm512_set1_ps(x));
    let masks = [half_mask(t.nr, 0), half_mask(t.nr, 1)];
    // SAFETY (whole body): the caller guarantees C is valid for the tile.
    unsafe {
        if t.cs_c == 1 {
            for (i, row) in acc.iter().enumerate() {
                let p = t.c.add(i * t.rs_c);
                for (h, (v, &mask)) in row.iter().zip(&masks).enumerate() {
                    store_masked(p.add(h * NR), mask, *v, s);
                }
            }
        } else {
            let mut buf = edge_load::<NR_MAX>(t);
            for (i, row) in acc.iter().enumerate() {
                let p = buf[i].as_mut_ptr();
                for (h, v) in row.iter().enumerate() {
                    store_masked(p.add(h * NR), 0xFFFF, *v, s);
                }
            }
            edge_store(t, &buf);
        }
    }
}
