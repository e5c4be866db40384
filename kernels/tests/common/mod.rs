//! Helpers shared by the property tests.

/// Deterministic values in [-1, 1) from a seed (the crate's one xorshift generator).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    vffn_kernels::testvals::values(len, seed, 1.0)
}
