"""Peer measurement: numpy (OpenBLAS) single-threaded f32 GEMM on the vffn GEMM shapes.

Run: unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; OPENBLAS_NUM_THREADS=1 /work/venv-np/bin/python gemm_numpy.py
Prints one JSON line per shape and layout (median GFLOP/s); trans_b: B stored as W [n,k], op(B)=W^T.
"""
import json
import sys
import time

import os

import numpy as np

# What OpenBLAS was told to use (the caller sets OPENBLAS_NUM_THREADS before starting Python).
THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))

SHAPES = [(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512), (1, 1024, 1024)]


def median_gflops(call, flops, samples=21):
    """Median GFLOP/s of `call()` over `samples` timed samples of at least ~2 ms each (after one
    sizing call and one untimed sample). Shared with gemm_torch.py."""
    t0 = time.perf_counter()
    call()
    once = time.perf_counter() - t0
    reps = max(1, min(100000, int(2e-3 / max(once, 1e-9))))
    for _ in range(reps):
        call()
    rates = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        rates.append(flops * reps / (time.perf_counter() - t) / 1e9)
    return sorted(rates)[len(rates) // 2]


def measure(m, k, n, trans_b, samples=21):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    b = w.T if trans_b else w
    c = np.empty((m, n), dtype=np.float32)
    return median_gflops(lambda: np.matmul(a, b, out=c), 2.0 * m * n * k, samples)


def main():
    shapes = SHAPES
    if len(sys.argv) > 1:
        shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[1:]]
    for m, k, n in shapes:
        for trans_b in (False, True):
            g = measure(m, k, n, trans_b)
            print(json.dumps({"peer": "numpy-openblas", "m": m, "k": k, "n": n,
                              "trans_b": trans_b, "threads": THREADS, "gflops": round(g, 1)}))


if __name__ == "__main__":
    main()
