//! vffn-kernels: packed SIMD GEMM, grouped/gather GEMM for virtual experts, fused element-wise ops.
//!
//! Kernels know nothing of tensors or tapes: they take slices, shapes and strides.

pub mod attention;
pub mod gemm;
pub mod rope;

pub use gemm::{gemm, MatMut, MatRef};
