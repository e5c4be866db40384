//! Embedding lookup, row gather, and weighted scatter-add (index-add).

use rayon::prelude::*;

use super::{dot8, TASK};
use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;

fn check_ids(op: &str, idx: &[u32], rows: usize) {
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= rows) {
        panic!("{op}: index {bad} out of range for {rows} rows");
    }
}

/// The rows a gather reads and a scatter writes: packed row m ↔ table row idx[m], weighted by
/// w[m] (1 when absent), rows of width d.
struct RowMap<'a> {
    idx: &'a [u32],
    w: Option<&'a [f32]>,
    d: usize,
}

impl RowMap<'_> {
    fn weight(&self, m: usize) -> f32 {
        self.w.map_or(1.0, |w| w[m])
    }

    /// packed[m, :] (+)= w[m]·table[idx[m], :], in parallel over packed rows.
    fn gather(&self, table: &[f32], packed: &mut [f32], accumulate: bool) {
        let d = self.d;
        if d == 0 {
            return;
        }
        let rpt = (TASK / d).max(1);
        packed.par_chunks_mut(rpt * d).enumerate().for_each(|(block, o)| {
            for (k, orow) in o.chunks_exact_mut(d).enumerate() {
                let m = block * rpt + k;
                let s = &table[self.idx[m] as usize * d..][..d];
                let wm = self.weight(m);
                let it = orow.iter_mut().zip(s);
                match (accumulate, self.w.is_some()) {
                    (false, false) => orow.copy_from_slice(s),
                    (false, true) => it.for_each(|(o, &v)| *o = wm * v),
                    (true, _) => it.for_each(|(o, &v)| *o += wm * v),
                }
            }
        });
    }

    /// table[idx[m], :] (+)= w[m]·packed[m, :] for all m; rows not hit are zeroed when
    /// `!accumulate`. Sources of each table row are summed in increasing m, and rows run in
    /// parallel, so the result is independent of the thread count.
    fn scatter(&self, packed: &[f32], table: &mut [f32], accumulate: bool) {
        let (idx, d) = (self.idx, self.d);
        if d == 0 {
            return;
        }
        let n = table.len() / d;
        // Counting sort of m by destination (stable, so each row's sources stay in m order).
        let mut start = vec![0usize; n + 1];
        for &i in idx {
            start[i as usize + 1] += 1;
        }
        for r in 0..n {
            start[r + 1] += start[r];
        }
        let mut fill = start.clone();
        let mut order = vec![0u32; idx.len()];
        for (m, &i) in idx.iter().enumerate() {
            order[fill[i as usize]] = m as u32;
            fill[i as usize] += 1;
        }
        table.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(r, row)| {
            if !accumulate {
                row.fill(0.0);
            }
            for &m in &order[start[r]..start[r + 1]] {
                let m = m as usize;
                let s = &packed[m * d..][..d];
                let wm = self.weight(m);
                row.iter_mut().zip(s).for_each(|(o, &v)| *o += wm * v);
            }
        });
    }
}

impl Tape {
    /// Rows of `x` picked by `idx` (repeats allowed); backward scatter-adds into x's gradient.
    // x [N, d], idx [M] -> [M, d]
    pub fn gather_rows(&mut self, x: &Tensor, idx: &[u32]) -> Tensor {
        let (n, d) = (x.rows(), x.cols());
        check_ids("gather_rows", idx, n);
        let mut out = Buffer::uninit(idx.len() * d);
        RowMap { idx, w: None, d }.gather(x.data(), &mut out, false);
        let out = Tensor::from_parts(&[idx.len(), d], out);
        if !self.wants_grad(&[x]) {
            return out;
        }
        let idx = idx.to_vec();
        self.custom(&[x], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                RowMap { idx: &idx, w: None, d }.scatter(g, dx.data(), acc);
            }
        })
    }

    /// Embedding lookup: rows of `table` for token `ids` (a [`Tape::gather_rows`]).
    // table [V, d], ids [n] -> [n, d]
    pub fn embedding(&mut self, table: &Tensor, ids: &[u32]) -> Tensor {
        self.gather_rows(table, ids)
    }

    /// Weighted scatter-add (index-add) into `rows` zero rows: out[idx[m]] += w[m]·src[m].
    /// `weights` (shape [M]) is optional and carries a gradient.
    // src [M, d], idx [M], weights [M] -> [rows, d]
    pub fn scatter_add(
        &mut self,
        src: &Tensor,
        idx: &[u32],
        weights: Option<&Tensor>,
        rows: usize,
    ) -> Tensor {
        let (m, d) = (src.rows(), src.cols());
        assert_eq!(idx.len(), m, "scatter_add: {} indices for {m} rows", idx.len());
        if let Some(w) = weights {
            assert_eq!(w.numel(), m, "scatter_add: {} weights for {m} rows", w.numel());
        }
        check_ids("scatter_add", idx, rows);
        let mut out = Buffer::uninit(rows * d);
        RowMap { idx, w: weights.map(|w| w.data()), d }.scatter(src.data(), &mut out, false);
        let out = Tensor::from_parts(&[rows, d], out);
        let inputs: Vec<&Tensor> = [Some(src), weights].into_iter().flatten().collect();
        if !self.wants_grad(&inputs) {
            return out;
        }
        let (ss, ws) = (src.detach(), weights.map(Tensor::detach));
        let idx = idx.to_vec();
        self.custom(&inputs, out, move |g, grads| {
            // dsrc[m] = w[m]·g[idx[m]]
            if let Some(ds) = &mut grads[0] {
                let acc = ds.accumulate();
                let rows = RowMap { idx: &idx, w: ws.as_ref().map(|w| w.data()), d };
                rows.gather(g, ds.data(), acc);
            }
            // dw[m] = g[idx[m]]·src[m]
            if let Some(Some(dw)) = grads.get_mut(1) {
                let acc = dw.accumulate();
                let sdata = ss.data();
                dw.data().par_iter_mut().enumerate().with_min_len(64).for_each(|(k, o)| {
                    let v = dot8(&g[idx[k] as usize * d..][..d], &sdata[k * d..][..d]);
                    if acc {
                        *o += v;
                    } else {
                        *o = v;
                    }
                });
            }
        })
    }
}
