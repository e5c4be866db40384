//! Routing ops: top-k (values carry the gradient) and hard Gumbel-softmax (straight-through).

use std::cmp::Ordering;

use rayon::prelude::*;
use vffn_kernels::fused;

use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;
use crate::Rng;

/// Larger value first; among equal values the lower index first (NaN sorts as largest).
fn rank(row: &[f32], a: u32, b: u32) -> Ordering {
    row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
}

impl Tape {
    /// The k largest entries of each row, in descending order, and their column indices (ties
    /// pick the lower index). Values carry the gradient (it flows back to the chosen entries);
    /// indices do not.
    // x [R, n] -> values [R, k], indices [R·k]
    pub fn top_k(&mut self, x: &Tensor, k: usize) -> (Tensor, Vec<u32>) {
        let (rows, n) = (x.rows(), x.cols());
        assert!(k <= n, "top_k: k = {k} > row width {n}");
        let mut idx = vec![0u32; rows * k];
        let mut vals = Buffer::uninit(rows * k);
        if k > 0 {
            let data = x.data();
            idx.par_chunks_mut(k).zip(vals.par_chunks_mut(k)).enumerate().for_each(
                |(r, (ir, vr))| {
                    let row = &data[r * n..(r + 1) * n];
                    let mut all: Vec<u32> = (0..n as u32).collect();
                    if k < n {
                        all.select_nth_unstable_by(k - 1, |&a, &b| rank(row, a, b));
                        all.truncate(k);
                    }
                    all.sort_unstable_by(|&a, &b| rank(row, a, b));
                    ir.copy_from_slice(&all);
                    vr.iter_mut().zip(ir.iter()).for_each(|(v, &i)| *v = row[i as usize]);
                },
            );
        }
        let vals = Tensor::from_parts(&[rows, k], vals);
        if !self.wants_grad(&[x]) {
            return (vals, idx);
        }
        let saved = idx.clone();
        let vals = self.custom(&[x], vals, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                dx.zero_if_fresh();
                let d = dx.data();
                for r in 0..rows {
                    for j in 0..k {
                        d[r * n + saved[r * k + j] as usize] += g[r * k + j];
                    }
                }
            }
        });
        (vals, idx)
    }

    /// Hard Gumbel-softmax with a straight-through gradient: forward is the one-hot of
    /// argmax(logits + g) (ties: lower index), backward is that of softmax((logits + g)/τ).
    /// Noise g ~ Gumbel(0, 1) is drawn row-major from `rng`; `None` means zero noise.
    // logits [R, n] -> one-hot [R, n]
    pub fn gumbel_softmax_hard(
        &mut self,
        logits: &Tensor,
        tau: f32,
        rng: Option<&mut Rng>,
    ) -> Tensor {
        let mut noise = Buffer::uninit(logits.numel());
        match rng {
            Some(rng) => noise.iter_mut().for_each(|g| *g = rng.gumbel()),
            None => noise.fill(0.0),
        }
        self.gumbel_softmax_hard_with_noise(logits, tau, &noise)
    }

    /// [`Tape::gumbel_softmax_hard`] with caller-supplied noise (same shape as `logits`).
    pub fn gumbel_softmax_hard_with_noise(
        &mut self,
        logits: &Tensor,
        tau: f32,
        noise: &[f32],
    ) -> Tensor {
        let (rows, n) = (logits.rows(), logits.cols());
        assert_eq!(noise.len(), logits.numel(), "gumbel_softmax_hard: noise length");
        assert!(tau > 0.0, "gumbel_softmax_hard: tau must be > 0, got {tau}");
        let mut z = Buffer::uninit(logits.numel());
        z.iter_mut().zip(logits.data().iter().zip(noise)).for_each(|(z, (&l, &g))| *z = l + g);
        let mut hard = Buffer::zeros(logits.numel());
        if n > 0 {
            for (zr, hr) in z.chunks_exact(n).zip(hard.chunks_exact_mut(n)) {
                let best = (0..n as u32).min_by(|&a, &b| rank(zr, a, b)).expect("n > 0");
                hr[best as usize] = 1.0;
            }
        }
        let hard = Tensor::from_parts(logits.shape(), hard);
        if !self.wants_grad(&[logits]) || n == 0 {
            return hard;
        }
        // The soft sample, reusing z's buffer: y = softmax(z/τ).
        let mut soft = Buffer::uninit(rows * n);
        fused::softmax_forward(&z, &mut soft, n, 1.0 / tau);
        drop(z);
        self.custom(&[logits], hard, move |g, grads| {
            if let Some(dl) = &mut grads[0] {
                let acc = dl.accumulate();
                fused::softmax_backward(&soft, g, dl.data(), n, 1.0 / tau, acc);
            }
        })
    }
}
