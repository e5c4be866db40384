//! SwiGLU FFN kernels for VersatileFFN: shared packed weights, a grouped gather-GEMM for virtual
//! (width) experts and real (moe) experts, depth recursion with compaction, and the training
//! forward/backward of both paths. Slices in, slices out.
//!
//! Model layout: W1 = ff_proj [2h, d] (rows 0..h value, h..2h gate), W2 = ff_out [d, h];
//! FFN(z) = (z·W1[0..h]ᵀ · silu(z·W1[h..2h]ᵀ))·W2ᵀ. Virtual expert e (width s = h/E) is value rows
//! e·s.., gate rows h+e·s.. of W1 and columns e·s.. of W2.
//!
//! Packing ([`PackedFfn`]): W1's rows are packed once in *expert-interleaved* order
//! [v_0; g_0; v_1; g_1; …] (`perm` layout), so expert e is the one contiguous column range
//! e·2s..(e+1)·2s of the packed W1ᵀ and the depth-loop FFN is all of it; W2ᵀ [h, d] is packed so
//! expert e is the depth range e·s..(e+1)·s. The backward packs W1(perm) [2h, d] (expert e = depth
//! range) and W2 [d, h] (expert e = columns e·s..). No expert and no loop repacks anything.
//! Needs s % 16 == 0 (packed column ranges start on 16-wide panels).
//!
//! Determinism: tiles are cut from the routing alone (never the thread count), every tile or
//! GEMM block writes disjoint outputs, and cross-expert sums (out, dz) are done per token in slot
//! order from a slot-indexed buffer, so results are bitwise identical for any thread count.

mod dense;
mod depth;
mod group;
pub mod naive;
mod packed;
mod routed;

use std::fmt;

use crate::gemm::GemmError;

pub use dense::{dense_backward, dense_forward, dense_forward_train};
pub use depth::{depth_backward, depth_forward, depth_forward_train, DepthSaved};
pub use group::Grouping;
pub use packed::PackedFfn;
pub use routed::{
    moe_backward, moe_forward, moe_forward_train, width_backward, width_forward,
    width_forward_train, WidthSaved,
};

/// Errors of the FFN kernels (bad shapes or routings from the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FfnError {
    /// Slice lengths or dimensions do not fit together.
    Shape(String),
    /// An expert id ≥ the expert count, or a depth outside 1..=D.
    Routing(String),
    /// Expert width s = h/E must be a positive multiple of 16.
    ExpertWidth { hidden: usize, experts: usize },
    /// The GEMM refused (kernel unavailable).
    Gemm(GemmError),
}

impl fmt::Display for FfnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FfnError::Shape(s) => write!(f, "ffn shape error: {s}"),
            FfnError::Routing(s) => write!(f, "ffn routing error: {s}"),
            FfnError::ExpertWidth { hidden, experts } => write!(
                f,
                "ffn: hidden {hidden} / experts {experts} must be a positive multiple of 16"
            ),
            FfnError::Gemm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FfnError {}

impl From<GemmError> for FfnError {
    fn from(e: GemmError) -> Self {
        FfnError::Gemm(e)
    }
}

impl From<crate::microkernel::KernelError> for FfnError {
    fn from(e: crate::microkernel::KernelError) -> Self {
        FfnError::Gemm(GemmError::Kernel(e))
    }
}

fn shape_err<T>(s: String) -> Result<T, FfnError> {
    Err(FfnError::Shape(s))
}

/// An FFN's weight gradients, added to (+=) by every backward, in the weights' model layout:
/// dW1 [2h, d] (value rows, then gate rows) and dW2 [d, h] — or one real expert's [2s, d] and
/// [d, s].
pub struct FfnGrads<'a> {
    pub dw1: &'a mut [f32],
    pub dw2: &'a mut [f32],
}

impl<'a> FfnGrads<'a> {
    pub fn new(dw1: &'a mut [f32], dw2: &'a mut [f32]) -> Self {
        FfnGrads { dw1, dw2 }
    }

    /// The one shape check of every backward: dW1 [2h, d] and dW2 [d, h] of `w`.
    fn check(&self, w: &PackedFfn) -> Result<(), FfnError> {
        if self.dw1.len() != 2 * w.h * w.d || self.dw2.len() != w.d * w.h {
            return shape_err(format!("dW1 must be [2h,d] and dW2 [d,h] (h {}, d {})", w.h, w.d));
        }
        Ok(())
    }
}

/// Resizes a saved buffer to exactly `len` (keeping its allocation).
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v.truncate(len);
    v
}
