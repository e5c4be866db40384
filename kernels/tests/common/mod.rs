//! Helpers shared by the property tests.

/// Deterministic values in [-1, 1) from a seed (the crate's one xorshift generator).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    vffn_kernels::testvals::values(len, seed, 1.0)
}

/// The micro-kernel families this CPU runs (says which are skipped, once per test).
pub fn kernels() -> Vec<vffn_kernels::KernelKind> {
    vffn_kernels::KernelKind::ALL
        .into_iter()
        .filter(|k| {
            let ok = k.is_available();
            if !ok {
                eprintln!("skipping kernel `{k}`: not supported by this CPU");
            }
            ok
        })
        .collect()
}
