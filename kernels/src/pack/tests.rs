//! Tests of the A packers: every value (or bf16 pair) where the micro-kernels read it.

use super::*;

/// Element (i, p) of the packed block: panel i / mr, depth p, lane i % mr.
fn packed_at(dst: &[f32], mr: usize, kc: usize, i: usize, p: usize) -> f32 {
    dst[(i / mr) * mr * kc + p * mr + i % mr]
}

/// `pack_a_words` (f32) of a column-major A (the contiguous-copy path) and of gathered rows (the strided
/// path) place every value where the micro-kernel reads it and zero the padding rows, for
/// every kernel height, ragged row counts and depth sub-blocks.
#[test]
fn pack_a_places_every_value() {
    let (m, k) = (37usize, 29usize);
    // A = Bᵀ for a row-major B [k, m]: row stride 1, column stride m.
    let data: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() + 2.0).collect();
    let a = MatRef::new(&data, k, m).t();
    let ix: Vec<usize> = (0..m).rev().step_by(2).collect();
    for mr in [1usize, 2, 5, 6, 14] {
        for (start, rows) in [(0usize, m), (3, 6), (5, 13), (36, 1), (0, 14)] {
            for (p0, kc) in [(0usize, k), (4, 9), (28, 1)] {
                let len = rows.div_ceil(mr) * mr * kc;
                let mut dst = vec![f32::NAN; len];
                pack_a_words(mr, a, RowSource::Range { start }, rows, p0, kc, false, &mut dst);
                for i in 0..rows.div_ceil(mr) * mr {
                    for p in 0..kc {
                        let want = if i < rows { a.at(start + i, p0 + p) } else { 0.0 };
                        let got = packed_at(&dst, mr, kc, i, p);
                        assert_eq!(got.to_bits(), want.to_bits(), "mr {mr} ({i},{p})");
                    }
                }
                let rows = rows.min(ix.len());
                let mut dst = vec![f32::NAN; rows.div_ceil(mr) * mr * kc];
                pack_a_words(mr, a, RowSource::Index(&ix), rows, p0, kc, false, &mut dst);
                for (i, &row) in ix.iter().enumerate().take(rows) {
                    for p in 0..kc {
                        let want = a.at(row, p0 + p);
                        assert_eq!(packed_at(&dst, mr, kc, i, p).to_bits(), want.to_bits());
                    }
                }
            }
        }
    }
}

/// k-pairs of A for the dot kernels: every word holds the bf16 roundings (as `bf16_bits`,
/// NaN, infinity, subnormals and ties included) of columns 2p and 2p + 1, zero past the last
/// column, through the vector packer (14-row panels, one row) and the scalar tail.
#[test]
fn pack_a_words_rounds_pairs_like_bf16_bits() {
    let specials = [
        0x3F80_8000u32,
        0x3F81_8000,
        0x7F7F_FFFF,
        0x7F80_0001,
        0xFFC0_1234,
        0x0000_8000,
        0x0001_8000,
        0x807F_FFFF,
    ];
    let (m, k) = (17usize, 45usize);
    let data: Vec<f32> = (0..m * k)
        .map(|t| match t % 5 {
            0 => f32::from_bits(specials[t / 5 % specials.len()]),
            _ => (t as f32 * 0.731).sin() * 3.0,
        })
        .collect();
    let a = MatRef::new(&data, m, k);
    for mr in [1usize, 14] {
        for (p0, kc) in [(0usize, 23usize), (3, 20), (8, 9)] {
            let mut dst = vec![f32::NAN; m.div_ceil(mr) * mr * kc];
            pack_a_words(mr, a, RowSource::Range { start: 0 }, m, p0, kc, true, &mut dst);
            let words: &[u32] = bytemuck::cast_slice(&dst);
            for i in 0..m.div_ceil(mr) * mr {
                for p in 0..kc {
                    let half = |c: usize| {
                        if i < m && c < k {
                            u32::from(bf16_bits(a.at(i, c)))
                        } else {
                            0
                        }
                    };
                    let want = half(2 * (p0 + p)) | half(2 * (p0 + p) + 1) << 16;
                    let got = words[(i / mr) * mr * kc + p * mr + i % mr];
                    assert_eq!(got, want, "mr {mr} p0 {p0} row {i} word {p}");
                }
            }
        }
    }
}
