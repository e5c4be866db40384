//! Deterministic test values: one xorshift64 generator for the property tests, the benches and
//! the profiling examples, so that every harness draws the same numbers from the same seed.
//!
//! Not a statistical RNG (the model's RNG is in vffn-autograd): a fixed, cheap, portable stream
//! whose values depend only on the seed, on every machine.

/// Marsaglia's xorshift64 (shifts 13, 7, 17). The state is never zero.
#[derive(Clone, Debug)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A stream starting from `seed | 1` (the low bit set keeps the state non-zero).
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    /// A stream from `seed` spread by the golden-ratio multiplier first, so that nearby seeds
    /// (1, 2, 3, ...) give unrelated streams.
    pub fn mixed(seed: u64) -> Self {
        Self::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64-bit state.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Uniform in [-1, 1) from the top 24 bits (every value exact in f32).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// An index in 0..n (n > 0) from bits 33..64; the modulo bias is irrelevant for tests.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() >> 33) as usize % n
    }

    /// Top-k routing for `tokens` tokens: per token `k` distinct expert ids in 0..experts (k ≤
    /// experts), drawn in turn with [`XorShift::below`]. Returns `[tokens, k]` row-major.
    pub fn routing(&mut self, tokens: usize, k: usize, experts: usize) -> Vec<u32> {
        assert!(k <= experts, "routing: {k} distinct ids out of {experts} experts");
        let mut ids = Vec::with_capacity(tokens * k);
        for _ in 0..tokens {
            let chosen = ids.len();
            while ids.len() < chosen + k {
                let c = self.below(experts) as u32;
                if !ids[chosen..].contains(&c) {
                    ids.push(c);
                }
            }
        }
        ids
    }
}

/// `len` values uniform in [-scale, scale) from `XorShift::mixed(seed)`.
pub fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = XorShift::mixed(seed);
    (0..len).map(|_| rng.unit() * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_values_and_another_seed_other_values() {
        assert_eq!(values(64, 7, 0.5), values(64, 7, 0.5));
        assert_ne!(values(64, 7, 0.5), values(64, 8, 0.5));
    }

    #[test]
    fn values_lie_in_the_half_open_interval_scaled() {
        let v = values(10_000, 3, 0.25);
        assert!(v.iter().all(|x| (-0.25..0.25).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn a_zero_seed_still_moves() {
        let mut rng = XorShift::new(0);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn below_stays_under_its_bound_and_reaches_every_index() {
        let mut rng = XorShift::new(0x5EED);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let i = rng.below(5);
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
