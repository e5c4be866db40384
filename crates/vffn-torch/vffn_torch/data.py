"""vffn's data pipeline, bit for bit (crates/model/src/{corpus.rs,data.rs}, crates/cli/src/common.rs).

- A data file splits 90/10 by position into train/validation.
- Without a file: the built-in synthetic corpus, 2 MiB train from seed "VFFN" and 256 KiB
  validation from that seed ^ "validate" (generated here exactly as vffn generates it).
- Training batches: B windows of T+1 bytes at starts drawn with vffn's RNG, whose state is the
  checkpoint's `data_rng` (the data position), so a handed-over run draws vffn's next batches.
- Validation: the non-overlapping windows w·T .. w·T+T+1, in order.
"""
from __future__ import annotations

import os

import numpy as np

from .rng import Rng

BUILTIN_SOURCE = "builtin"
BUILTIN_CORPUS_SEED = 0x5646464E  # "VFFN"
BUILTIN_TRAIN_BYTES = 2 << 20
BUILTIN_VAL_BYTES = 256 << 10
VAL_SEED_SALT = 0x76616C6964617465  # "validate"

FILLER_WORDS = [
    "the", "a", "old", "new", "cat", "dog", "map", "sees", "finds", "keeps", "red", "small",
    "house", "river", "stone", "walks", "under", "over", "bright", "quiet", "tree", "book",
    "reads", "near",
]
OPENERS = b"([{<"
CLOSER = {ord("("): ord(")"), ord("["): ord("]"), ord("{"): ord("}"), ord("<"): ord(">")}
# vffn compares an f32 uniform with the f32 literal 0.6.
OPEN_PROBABILITY_F32 = float(np.float32(0.6))


def _operand(rng: Rng) -> int:
    # 1..=5 digits, the digit count uniform, no leading zeros
    digits = 1 + rng.below(5)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return low + rng.below(10**digits - low)


def generate_corpus(seed: int, n_bytes: int) -> bytes:
    """The built-in corpus's first `n_bytes` bytes from `seed` (corpus.rs `generate`)."""
    rng = Rng(seed)
    out = bytearray()
    while len(out) < n_bytes:
        kind = rng.below(10)
        if kind <= 2:  # copy line
            length = 3 + rng.below(10)
            word = bytes(ord("a") + rng.below(26) for _ in range(length))
            out += b"copy " + word + b" > " + word + b"\n"
        elif kind <= 5:  # sum line
            a = _operand(rng)
            b = _operand(rng)
            out += f"{a}+{b}={a + b}\n".encode()
        elif kind <= 7:  # bracket closing line
            steps = 2 + rng.below(15)
            prefix, stack = bytearray(), []
            for _ in range(steps):
                if not stack or rng.uniform() < OPEN_PROBABILITY_F32:
                    opener = OPENERS[rng.below(4)]
                    stack.append(opener)
                    prefix.append(opener)
                else:
                    prefix.append(CLOSER[stack.pop()])
            if not stack:
                opener = OPENERS[rng.below(4)]
                stack.append(opener)
                prefix.append(opener)
            completion = bytes(CLOSER[o] for o in reversed(stack))
            out += b"nest " + bytes(prefix) + b" | " + completion + b"\n"
        else:  # filler sentence
            words = 3 + rng.below(6)
            sentence = " ".join(FILLER_WORDS[rng.below(len(FILLER_WORDS))] for _ in range(words))
            out += sentence.encode() + b".\n"
    return bytes(out[:n_bytes])


class DataError(ValueError):
    pass


def split_file_bytes(data: bytes) -> tuple[bytes, bytes]:
    """First 90 % train, last 10 % validation, cut exactly where vffn cuts."""
    if not data:
        raise DataError("data is empty")
    cut = len(data) // 10 * 9 + len(data) % 10 * 9 // 10
    return data[:cut], data[cut:]


def load_dataset(path: str | None, seq_len: int) -> tuple[bytes, bytes, str]:
    """(train bytes, validation bytes, data_source as vffn records it in state.json)."""
    if path is None:
        train = generate_corpus(BUILTIN_CORPUS_SEED, BUILTIN_TRAIN_BYTES)
        val = generate_corpus(BUILTIN_CORPUS_SEED ^ VAL_SEED_SALT, BUILTIN_VAL_BYTES)
        source = BUILTIN_SOURCE
    else:
        with open(path, "rb") as f:
            data = f.read()
        train, val = split_file_bytes(data)
        source = os.path.realpath(path)
    for name, split in (("train", train), ("validation", val)):
        if len(split) < seq_len + 1:
            raise DataError(
                f"the {name} split has {len(split)} bytes but at least seq_len + 1 = "
                f"{seq_len + 1} are needed"
            )
    return train, val, source


class Batcher:
    """B random windows per batch, starts drawn from vffn's RNG (data.rs `Batcher`)."""

    def __init__(self, train: bytes, seq_len: int, batch_size: int, rng: Rng):
        self.train = np.frombuffer(train, dtype=np.uint8)
        self.seq_len, self.batch_size, self.rng = seq_len, batch_size, rng

    def next_starts(self) -> list[int]:
        starts = len(self.train) - self.seq_len
        return [self.rng.below(starts) for _ in range(self.batch_size)]

    def windows(self, starts) -> np.ndarray:
        # -> [len(starts), T+1] bytes: inputs are [:, :-1], targets [:, 1:]
        t = self.seq_len
        return np.stack([self.train[s : s + t + 1] for s in starts]).astype(np.int64)


def validation_windows(val: bytes, seq_len: int) -> np.ndarray:
    """All non-overlapping validation windows [W, T+1] in order (window w starts at w·T)."""
    arr = np.frombuffer(val, dtype=np.uint8)
    count = (len(arr) - 1) // seq_len
    return np.stack([arr[w * seq_len : w * seq_len + seq_len + 1] for w in range(count)]).astype(
        np.int64
    )
