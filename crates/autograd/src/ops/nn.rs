//! Fused row-wise ops on vffn-kernels' `fused` kernels: RMSNorm, SiLU, SwiGLU, softmax,
//! log-softmax + cross-entropy.

use vffn_kernels::fused;

use super::Saved;
use crate::pool::Buffer;
use crate::tape::Tape;
use crate::tensor::Tensor;

impl Tape {
    /// RMSNorm with affine weight: y = x / sqrt(mean(x²) + eps) · w, over the last dim.
    // x [.., d], w [d] -> y [.., d]; saves rstd [rows]
    pub fn rms_norm(&mut self, x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
        let d = x.cols();
        assert_eq!(w.shape(), [d], "rms_norm: weight {:?} for width {d}", w.shape());
        let mut y = Buffer::uninit(x.numel());
        let mut rstd = Buffer::uninit(x.rows());
        fused::rms_norm_forward(x.data(), w.data(), &mut y, &mut rstd, eps);
        let y = Tensor::from_parts(x.shape(), y);
        self.record_binary(x, w, y, move |xs, ws, dy, dx, dw| {
            let dx = dx.map(|s| (s.accumulate(), s)).map(|(a, s)| (s.data(), a));
            let dw = dw.map(|s| (s.accumulate(), s)).map(|(a, s)| (s.data(), a));
            fused::rms_norm_backward(xs, ws, &rstd, dy, dx, dw);
        })
    }

    /// SiLU x·σ(x), element-wise.
    pub fn silu(&mut self, x: &Tensor) -> Tensor {
        let mut y = Buffer::uninit(x.numel());
        fused::silu_forward(x.data(), &mut y);
        let y = Tensor::from_parts(x.shape(), y);
        self.record_unary(x, y, Saved::Input, fused::silu_backward)
    }

    /// Fused SwiGLU over a [value | gate] pair: out = value·silu(gate).
    // x [.., 2h] -> [.., h]
    pub fn swiglu(&mut self, x: &Tensor) -> Tensor {
        let two_h = x.cols();
        assert!(two_h.is_multiple_of(2) && two_h > 0, "swiglu: last dim {two_h} must be even");
        let h = two_h / 2;
        let mut y = Buffer::uninit(x.numel() / 2);
        fused::swiglu_forward(x.data(), &mut y, h);
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = h;
        let y = Tensor::from_parts(&shape, y);
        self.record_unary(x, y, Saved::Input, move |xs, dy, dx, acc| {
            fused::swiglu_backward(xs, dy, dx, h, acc)
        })
    }

    /// Softmax over the last dim.
    // x [.., n] -> [.., n]
    pub fn softmax(&mut self, x: &Tensor) -> Tensor {
        let n = x.cols();
        let mut y = Buffer::uninit(x.numel());
        if n > 0 {
            fused::softmax_forward(x.data(), &mut y, n, 1.0);
        }
        let y = Tensor::from_parts(x.shape(), y);
        self.record_unary(x, y, Saved::Output, move |ys, dy, dx, acc| {
            fused::softmax_backward(ys, dy, dx, n, 1.0, acc)
        })
    }

    /// Mean cross-entropy of logits against target ids (fused, numerically stable log-softmax).
    // logits [R, V], targets [R] -> scalar; saves lse [R]
    pub fn cross_entropy(&mut self, logits: &Tensor, targets: &[u32]) -> Tensor {
        let (rows, v) = (logits.rows(), logits.cols());
        assert_eq!(targets.len(), rows, "cross_entropy: {} targets for {rows} rows", targets.len());
        let mut lse = Buffer::uninit(rows);
        let mut losses = Buffer::uninit(rows);
        let mean = fused::cross_entropy_forward(logits.data(), targets, &mut lse, &mut losses, v);
        let out = Tensor::scalar(mean as f32);
        if !self.wants_grad(&[logits]) {
            return out;
        }
        let xs = logits.detach();
        let targets = targets.to_vec();
        self.custom(&[logits], out, move |g, grads| {
            if let Some(dx) = &mut grads[0] {
                let acc = dx.accumulate();
                let scale = (g[0] as f64 / rows.max(1) as f64) as f32;
                fused::cross_entropy_backward(xs.data(), &targets, &lse, dx.data(), v, scale, acc);
            }
        })
    }
}
