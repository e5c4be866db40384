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

/// out[m, :] (+)= w[m]·src[idx[m], :] (w = 1 when absent), in parallel over output rows.
fn gather_rows_into(
    src: &[f32],
    idx: &[u32],
    w: Option<&[f32]>,
    d: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    if d == 0 {
        return;
    }
    let rpt = (TASK / d).max(1);
    out.par_chunks_mut(rpt * d).enumerate().for_each(|(block, o)| {
        for (k, orow) in o.chunks_exact_mut(d).enumerate() {
            let m = block * rpt + k;
            let s = &src[idx[m] as usize * d..][..d];
            let wm = w.map_or(1.0, |w| w[m]);
            let it = orow.iter_mut().zip(s);
            match (accumulate, w.is_some()) {
                (false, false) => orow.copy_from_slice(s),
                (false, true) => it.for_each(|(o, &v)| *o = wm * v),
                (true, _) => it.for_each(|(o, &v)| *o += wm * v),
            }
        }
    });
}

/// dst[idx[m], :] (+)= w[m]·src[m, :] for all m; rows not hit are zeroed when `!accumulate`.
/// Sources of each destination row are summed in increasing m, and rows run in parallel, so
/// the result is independent of the thread count.
fn scatter_rows_into(
    src: &[f32],
    idx: &[u32],
    w: Option<&[f32]>,
    d: usize,
    dst: &mut [f32],
    accumulate: bool,
) {
    if d == 0 {
        return;
    }
    let n = dst.len() / d;
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
    dst.par_chunks_mut(d).enumerate().with_min_len(16).for_each(|(r, row)| {
        if !accumulate {
            row.fill(0.0);
        }
        for &m in &order[start[r]..start[r + 1]] {
            let m = m as usize;
            let s = &src[m * d..][..d];
            let wm = w.map_or(1.0, |w| w[m]);
            row.iter_mut().zip(s).for_each(|(o, &v)| *o += wm * v);
        }
    });
}

impl Tape {
    /// Rows of `x` picked by `idx` (repeats allowed); backward scatter-adds into x's gradient.
    // x [N, d], idx [M] -> [M, d]
    pub fn gather_rows(&mut self, x: &Tensor, idx: &[u32]) -> Tensor {
        let (n, d) = (x.rows(), x.cols());
        check_ids("gather_rows", idx, n);
        let mut out = Buffer::uninit(idx.len() * d);
        gather_rows_into(x.data(), idx, None, d, &mut out, false);
        let out = Tensor::from_parts(&[idx.len(), d], out);
        if !self.wants_grad(&[x]) {
            return out;
        }
        let idx = idx.to_vec();
        self.custom(&[x], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                scatter_rows_into(g, &idx, None, d, dx.data(), acc);
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
        scatter_rows_into(src.data(), idx, weights.map(|w| w.data()), d, &mut out, false);
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
                gather_rows_into(g, &idx, ws.as_ref().map(|w| w.data()), d, ds.data(), acc);
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
