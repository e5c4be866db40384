//! Routing → grouped rows: token slots grouped by expert, the (expert, row-block) tiles cut from
//! them, and the slot-ordered per-token sum back.

use rayon::prelude::*;

use super::{shape_err, FfnError};

/// Largest row block of one (expert, row-block) tile: packed A (144 × d) stays in L2.
const TILE_ROWS: usize = 144;
/// Tokens per task in the per-token reductions.
const REDUCE_TOKENS: usize = 64;

/// Token slots grouped by expert (stable: ascending token within an expert).
#[derive(Clone, Debug, Default)]
pub struct Grouping {
    /// Grouped rows of expert e: offsets[e]..offsets[e+1]. [E+1]
    pub(super) offsets: Vec<usize>,
    /// Token of each grouped row. [T·k]
    pub(super) tokens: Vec<usize>,
    /// Slot t·k+j of each grouped row. [T·k]
    pub(super) slot_of: Vec<usize>,
    /// Grouped row of each slot. [T·k]
    pub(super) row_of: Vec<usize>,
}

impl Grouping {
    // experts [T·k] ids < E -> grouping
    pub(super) fn build(experts: &[u32], k: usize, count: usize) -> Result<Grouping, FfnError> {
        if let Some(&bad) = experts.iter().find(|&&e| e as usize >= count) {
            return Err(FfnError::Routing(format!("expert id {bad} ≥ {count} experts")));
        }
        let mut offsets = vec![0usize; count + 1];
        for &e in experts {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..count {
            offsets[e + 1] += offsets[e];
        }
        let n = experts.len();
        let mut next = offsets.clone();
        let (mut tokens, mut slot_of, mut row_of) = (vec![0; n], vec![0; n], vec![0; n]);
        for (slot, &e) in experts.iter().enumerate() {
            let r = next[e as usize];
            next[e as usize] += 1;
            tokens[r] = slot / k;
            slot_of[r] = slot;
            row_of[slot] = r;
        }
        Ok(Grouping { offsets, tokens, slot_of, row_of })
    }

    /// (expert, grouped rows) tiles of at most TILE_ROWS rows, cut from the routing alone.
    pub(super) fn tiles(&self, mr: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut tiles = Vec::new();
        for e in 0..self.offsets.len() - 1 {
            let (r0, r1) = (self.offsets[e], self.offsets[e + 1]);
            let m = r1 - r0;
            if m == 0 {
                continue;
            }
            let blocks = m.div_ceil(TILE_ROWS);
            let step = m.div_ceil(blocks).div_ceil(mr) * mr;
            let mut r = r0;
            while r < r1 {
                tiles.push((e, r..r1.min(r + step)));
                r += step;
            }
        }
        tiles
    }
}

pub(super) fn check_routing(
    t: usize,
    k: usize,
    experts: &[u32],
    gates: &[f32],
    count: usize,
) -> Result<(), FfnError> {
    if k == 0 || k > count {
        return Err(FfnError::Routing(format!("top-k {k} with {count} experts")));
    }
    if experts.len() != t * k || gates.len() != t * k {
        return shape_err(format!(
            "{} expert ids and {} gates for {t} tokens × k = {k}",
            experts.len(),
            gates.len()
        ));
    }
    Ok(())
}

/// out[t] += Σ_j gates[t·k+j]·y[row_of[t·k+j]], in slot order (deterministic).
// y [T·k,d] grouped -> out [T,d]
pub(super) fn scatter_weighted(
    y: &[f32],
    g: &Grouping,
    gates: Option<&[f32]>,
    k: usize,
    d: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(REDUCE_TOKENS * d).enumerate().for_each(|(c, chunk)| {
        for (i, orow) in chunk.chunks_exact_mut(d).enumerate() {
            let t = c * REDUCE_TOKENS + i;
            for j in 0..k {
                let slot = t * k + j;
                let r = g.row_of[slot];
                let yr = &y[r * d..(r + 1) * d];
                let w = gates.map_or(1.0, |gs| gs[slot]);
                for (o, &v) in orow.iter_mut().zip(yr) {
                    *o += w * v;
                }
            }
        }
    });
}
