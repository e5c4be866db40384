//! AMX-BF16 tiles for the bf16 linear layers (Intel Sapphire Rapids and later).
//!
//! `tdpbf16ps` multiplies a 16-row tile of A (16 k-pair words per row: 32 bf16 depths) by a tile
//! of B (16 k-pair rows × 16 columns) into a 16 × 16 f32 tile: 16 384 flops per instruction. On
//! the Xeon of docs/kernels.md one thread runs 3.0 TFLOP/s of them, 14× its f32 FMA peak, where
//! `vdpbf16ps` (the `Dot` path) issues only every other cycle, half the f32 FMA rate.
//!
//! Layout: A (x rounded to bf16) is packed row-major in k-pair words, each row padded with zeros
//! to a multiple of 16 words and the rows to a multiple of 32; B is packed in the 16-wide panels
//! of k-pair words the `Dot` path uses (one 64-byte line per word row: exactly an AMX B tile row),
//! all depths, padded likewise. Each 32 × 32 block of C accumulates over all of k in four tiles
//! (two A tiles × two B tiles per step of 16 words), is stored to a stack buffer and added to C,
//! so every element's sum runs in the same order whatever thread computes its block.

use std::arch::asm;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::bf16::types::Bf16Rows;
use crate::gemm::{MatRef, OutView};
use crate::microkernel::NR;
use crate::pack::{pack_a_words, with_scratch, BOperand, Block, RowSource, Scratch};

/// Rows and columns of the C block one kernel call computes (two tiles each way).
const BLOCK: usize = 32;
/// k-pair words per tile step (64 bytes of a tile row).
const STEP: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-BF16 and Linux lets this process use the tile data
/// (asked once, with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7 (safe from Rust 1.89 on) reports zeros where it does not exist.
            #[allow(unused_unsafe)]
            // SAFETY: CPUID exists on every x86_64 CPU.
            let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
            if !(amx_bf16 && amx_tile) {
                return false;
            }
            let ret: i64;
            // SAFETY: arch_prctl (syscall 158) with ARCH_REQ_XCOMP_PERM (0x1023) and feature
            // 18 (XTILEDATA) only asks the kernel to allow the tile state; it touches no memory
            // of ours and returns 0 on success or a negative errno (old kernels, no AMX).
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") 0x1023i64,
                    in("rsi") 18i64,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes (tmm0–3 the C
/// accumulators, tmm4–5 A, tmm6–7 B).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// `C = x·Wᵀ (+ C when accumulate)` with AMX tiles; x is m × k with m ≥ 1, W n × k bf16 rows.
/// The caller checked shapes and views and that [`available`] holds.
pub(crate) fn linear(x: MatRef<'_>, w: Bf16Rows<'_>, c: OutView, accumulate: bool) {
    let (m, k, n) = (x.rows, x.cols, w.rows);
    let words = k.div_ceil(2).next_multiple_of(STEP);
    let (m_pad, n_pad) = (m.next_multiple_of(BLOCK), n.next_multiple_of(BLOCK));
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n * k >= 1 << 19;
    with_scratch(Scratch::A, |abuf| {
        with_scratch(Scratch::B, |bbuf| {
            // A: row-major k-pair words, rows past m zero.
            let a = bytemuck::cast_slice_mut::<f32, u32>(abuf.slice_mut(m_pad * words));
            let pack_row = |(i, row): (usize, &mut [u32])| {
                if i < m {
                    let dst = bytemuck::cast_slice_mut(row);
                    pack_a_words(1, x, RowSource::Range { start: i }, 1, 0, words, true, dst);
                } else {
                    row.fill(0);
                }
            };
            // B: 16-wide panels of k-pair words over all depths, columns past n zero.
            let b = bbuf.slice_mut(n_pad * words);
            let pairs = BOperand::Bf16Pairs(w);
            let kw = k.div_ceil(2);
            let pack_panel = |(q, panel): (usize, &mut [f32])| {
                let j0 = q * NR;
                if j0 < n {
                    let blk = Block { p0: 0, kc: kw, j0, cols: NR.min(n - j0) };
                    pairs.pack_panel(blk, &mut panel[..kw * NR]);
                    panel[kw * NR..].fill(0.0);
                } else {
                    panel.fill(0.0);
                }
            };
            if parallel {
                a.par_chunks_mut(words).enumerate().for_each(pack_row);
                b.par_chunks_mut(words * NR).enumerate().for_each(pack_panel);
            } else {
                a.chunks_mut(words).enumerate().for_each(pack_row);
                b.chunks_mut(words * NR).enumerate().for_each(pack_panel);
            }
            let (a, b): (&[u32], &[f32]) = (a, b);
            // Rows of A are taken in groups that fit half of L2 (A is read once per 32 columns
            // of B: from L2, not L3), each group with every column block of B in turn; items
            // are groups × column chunks, enough of them to keep every thread busy. No split
            // changes a block's arithmetic.
            let (row_blocks, col_blocks) = (m_pad / BLOCK, n_pad / BLOCK);
            let group = (crate::cpu::cache_sizes().l2 / 2 / (BLOCK * words * 4)).max(1);
            let groups = row_blocks.div_ceil(group);
            let chunks = if parallel { (3 * threads).div_ceil(groups).min(col_blocks) } else { 1 };
            let per_chunk = col_blocks.div_ceil(chunks);
            let items: Vec<(Range<usize>, Range<usize>)> = (0..row_blocks)
                .step_by(group)
                .flat_map(|ib| {
                    (0..col_blocks).step_by(per_chunk).map(move |jb| {
                        (ib..(ib + group).min(row_blocks), jb..(jb + per_chunk).min(col_blocks))
                    })
                })
                .collect();
            let run = |(ibs, jbs): &(Range<usize>, Range<usize>)| {
                // SAFETY: `available()` held (checked by the caller: CPU support and the OS
                // permission); the config describes eight 16 × 64-byte tiles.
                unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
                for (jb, ib) in jbs.clone().flat_map(|jb| ibs.clone().map(move |ib| (jb, ib))) {
                    let mut acc = [[0.0f32; BLOCK]; BLOCK];
                    let a_rows = &a[ib * BLOCK * words..(ib + 1) * BLOCK * words];
                    let panels = &b[jb * BLOCK * words..(jb + 1) * BLOCK * words];
                    // SAFETY: tiles configured above; `a_rows` holds 32 rows of `words` words,
                    // `panels` two panels of `words` rows of 16 words, `acc` 32 × 32 floats.
                    unsafe { block(a_rows, panels, words, &mut acc) };
                    store(&acc, c, ib * BLOCK, jb * BLOCK, accumulate);
                }
                // SAFETY: releases this thread's tile state (set by ldtilecfg above).
                unsafe { asm!("tilerelease", options(nostack, nomem)) };
            };
            if parallel && items.len() > 1 {
                items.par_iter().for_each(run);
            } else {
                items.iter().for_each(run);
            }
        })
    });
}

/// Writes (or adds, when `accumulate`) the part of a 32 × 32 block inside C at (i0, j0): whole
/// rows as slices when C's rows are contiguous (vectorized), else element by element.
fn store(acc: &[[f32; BLOCK]; BLOCK], c: OutView, i0: usize, j0: usize, accumulate: bool) {
    let cols = c.cols.saturating_sub(j0).min(BLOCK);
    for (i, row) in acc.iter().enumerate().take(c.rows.saturating_sub(i0).min(BLOCK)) {
        let vals = &row[..cols];
        if c.cs == 1 {
            // SAFETY: C row i0 + i, columns j0 .. j0 + cols, is inside C (contiguous: cs = 1),
            // and this block of C belongs to the calling item alone.
            let out = unsafe { std::slice::from_raw_parts_mut(c.elem(i0 + i, j0), cols) };
            if accumulate {
                out.iter_mut().zip(vals).for_each(|(o, v)| *o += v);
            } else {
                out.copy_from_slice(vals);
            }
        } else {
            for (j, &v) in vals.iter().enumerate() {
                // SAFETY: as above, one element at a time.
                unsafe {
                    let o = c.elem(i0 + i, j0 + j);
                    *o = if accumulate { *o + v } else { v };
                }
            }
        }
    }
}

/// One 32 × 32 block: `acc[i][j] = Σ_q A words (i, q) · B words (q, j)` over `words` k-pair
/// words, A rows `words` apart, B two panels of `words` × 16 words.
///
/// # Safety
/// The tile configuration [`CONFIG`] must be loaded on this thread, and AMX available; the slices
/// must hold 32·words (A) and 32·words (B) words.
unsafe fn block(a: &[u32], b: &[f32], words: usize, acc: &mut [[f32; BLOCK]; BLOCK]) {
    assert!(a.len() >= BLOCK * words && b.len() >= BLOCK * words && words.is_multiple_of(STEP));
    let a0 = a.as_ptr();
    let a1 = a[16 * words..].as_ptr();
    let b0 = b.as_ptr();
    let b1 = b[words * NR..].as_ptr();
    let sa = words * 4;
    // SAFETY (whole body): every tile load reads 16 rows of 64 bytes inside the slices (A rows
    // i < 32 at words q..q+16, B word rows q..q+16 of both panels, q + 16 ≤ words); the stores
    // write the 32 × 32 floats of `acc` (row stride 128 bytes).
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for q in (0..words).step_by(STEP) {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(q),
                a1 = in(reg) a1.add(q),
                b0 = in(reg) b0.add(q * NR),
                b1 = in(reg) b1.add(q * NR),
                sa = in(reg) sa,
                sb = in(reg) NR * 4,
                options(nostack, readonly),
            );
        }
        let out = acc.as_mut_ptr() as *mut f32;
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) out,
            c1 = in(reg) out.add(16),
            c2 = in(reg) out.add(16 * BLOCK),
            c3 = in(reg) out.add(16 * BLOCK + 16),
            s = in(reg) BLOCK * 4,
            options(nostack),
        );
    }
}
