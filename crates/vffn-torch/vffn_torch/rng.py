"""vffn's RNG (xoshiro256** seeded through splitmix64, crates/autograd/src/rng.rs), bit for bit.

Only what the data pipeline needs: the built-in corpus generator and the training batcher draw
from it, so a run handed over from vffn continues with exactly the batches vffn would have drawn.
"""
from __future__ import annotations

MASK = (1 << 64) - 1


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK


class Rng:
    """Same seed, same stream as `vffn_autograd::Rng`; `state` is its four words."""

    __slots__ = ("s0", "s1", "s2", "s3")

    def __init__(self, seed: int):
        sm = seed & MASK
        words = []
        for _ in range(4):
            sm = (sm + 0x9E3779B97F4A7C15) & MASK
            z = sm
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            words.append(z ^ (z >> 31))
        self.s0, self.s1, self.s2, self.s3 = words

    @classmethod
    def from_state(cls, state) -> "Rng":
        rng = cls.__new__(cls)
        rng.s0, rng.s1, rng.s2, rng.s3 = (int(w) & MASK for w in state)
        return rng

    @property
    def state(self) -> list[int]:
        return [self.s0, self.s1, self.s2, self.s3]

    def next_u64(self) -> int:
        s0, s1, s2, s3 = self.s0, self.s1, self.s2, self.s3
        result = (_rotl((s1 * 5) & MASK, 7) * 9) & MASK
        t = (s1 << 17) & MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        self.s0, self.s1, self.s2, self.s3 = s0, s1, s2, _rotl(s3, 45)
        return result

    def uniform(self) -> float:
        """Uniform in [0, 1) with 24 random bits (an f32 in vffn; exact as a Python float)."""
        return (self.next_u64() >> 40) * (1.0 / (1 << 24))

    def below(self, n: int) -> int:
        """Uniform integer in 0..n by Lemire's multiply-shift, as vffn."""
        assert n > 0, "Rng.below(0)"
        return ((self.next_u64() >> 32) * n) >> 32
