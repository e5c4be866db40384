//! Portable micro-kernel on `wide::f32x8`: 2 × 16 tile (4 f32x8 accumulators = 8 SSE registers, so
//! with the B row and the broadcast nothing spills even without AVX; measured 19 vs 15 GFLOP/s for
//! 4 × 16 on SSE2).

use wide::f32x8;

use super::{edge_load, edge_store, Scale, Tile, NR};

/// Rows per tile.
pub(crate) const MR: usize = 2;

#[inline(always)]
unsafe fn load8(p: *const f32) -> f32x8 {
    // SAFETY: the caller guarantees 8 readable floats at p.
    f32x8::from(unsafe { core::ptr::read_unaligned(p as *const [f32; 8]) })
}

#[inline(always)]
unsafe fn store8(p: *mut f32, v: f32x8) {
    // SAFETY: the caller guarantees 8 writable floats at p.
    unsafe { core::ptr::write_unaligned(p as *mut [f32; 8], v.to_array()) }
}

/// Dispatches on the tile height.
///
/// # Safety
/// `t` must describe valid memory (see `run_tile`).
pub(crate) unsafe fn tile(a_packed: bool, t: &Tile) {
    // SAFETY (all arms): forwarded caller contract.
    unsafe {
        match (a_packed, t.mr) {
            (true, 1) => tile_mr::<1, true>(t),
            (true, 2) => tile_mr::<2, true>(t),
            (true, 3) => tile_mr::<3, true>(t),
            (true, 4) => tile_mr::<4, true>(t),
            (false, 1) => tile_mr::<1, false>(t),
            (false, 2) => tile_mr::<2, false>(t),
            (false, 3) => tile_mr::<3, false>(t),
            (false, 4) => tile_mr::<4, false>(t),
            _ => unreachable!("tile height out of range"),
        }
    }
}

#[inline(never)]
unsafe fn tile_mr<const M: usize, const PACKED: bool>(t: &Tile) {
    let (rs_a, cs_a) = t.a_strides::<PACKED>(MR);
    let mut acc = [[f32x8::ZERO; 2]; M];
    let mut a = t.a;
    let mut b = t.b;
    // SAFETY (whole body): the caller guarantees A, B are readable for p < k and C for the tile.
    unsafe {
        for _ in 0..t.k {
            let b0 = load8(b);
            let b1 = load8(b.add(8));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai = f32x8::splat(*a.add(i * rs_a));
                acc_i[0] = ai.mul_add(b0, acc_i[0]);
                acc_i[1] = ai.mul_add(b1, acc_i[1]);
            }
            a = a.add(cs_a);
            b = b.add(t.rs_b);
        }
        let acc = acc;
        let s = Scale::of(t, f32x8::splat);
        let store = |c: *mut f32, rs: usize| {
            for (i, acc_i) in acc.iter().enumerate() {
                for (h, v) in acc_i.iter().enumerate() {
                    let p = c.add(i * rs + 8 * h);
                    let mut r = *v * s.alpha;
                    if s.read_c {
                        r = s.beta.mul_add(load8(p), r);
                    }
                    store8(p, r);
                }
            }
        };
        if t.nr == NR && t.cs_c == 1 {
            store(t.c, t.rs_c);
        } else {
            let mut buf = edge_load::<NR>(t);
            store(buf.as_mut_ptr() as *mut f32, NR);
            edge_store(t, &buf);
        }
    }
}
