//! vffn-kernels: packed SIMD GEMM, grouped/gather GEMM for virtual experts, fused element-wise ops.
//!
//! Kernels know nothing of tensors or tapes: they take slices, shapes and strides.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
pub mod bf16;
pub mod cpu;
pub mod ffn;
pub mod fused;
pub mod gemm;
mod gemv;
pub mod mat;
pub mod microkernel;
pub mod pack;
pub mod peak;
pub mod pool;
pub mod rope;
mod simd;
pub mod testvals;
#[cfg(target_arch = "x86_64")]
mod vmath;

pub use gemm::{gemm, gemm_packed_with, GemmError, GemmPath, MatMut, MatRef};
pub use microkernel::{selected_kernel, KernelError, KernelKind};
pub use pack::{PackedB, PackedPart, RowSource};
/// Re-exported so callers pick the GEMM thread count (`ThreadPool::install`) with the same rayon.
pub use rayon;
