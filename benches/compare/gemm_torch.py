"""Peer measurement: PyTorch (MKL on x86) f32 GEMM `a @ b` on the vffn GEMM shapes.

Run: /work/venv-torch/bin/python gemm_torch.py [--threads T] [MxKxN ...]
Prints one JSON line per shape and layout (median GFLOP/s of timed samples of >= 2 ms);
trans_b: B stored as W [n,k], op(B) = W^T (a linear layer's forward).
"""
import json
import sys
import time

import torch

SHAPES = [(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512)]


def measure(m, k, n, trans_b, samples=21):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g)
    w = torch.randn((n, k) if trans_b else (k, n), generator=g)
    b = w.t() if trans_b else w
    c = torch.empty(m, n)
    t0 = time.perf_counter()
    torch.matmul(a, b, out=c)
    once = time.perf_counter() - t0
    reps = max(1, min(100000, int(2e-3 / max(once, 1e-9))))
    for _ in range(reps):
        torch.matmul(a, b, out=c)
    rates = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        rates.append(2.0 * m * n * k * reps / (time.perf_counter() - t) / 1e9)
    return sorted(rates)[len(rates) // 2]


def main():
    args = sys.argv[1:]
    threads = 1
    if args[:1] == ["--threads"]:
        threads, args = int(args[1]), args[2:]
    torch.set_num_threads(threads)
    shapes = [tuple(int(d) for d in s.split("x")) for s in args] or SHAPES
    for m, k, n in shapes:
        for trans_b in (False, True):
            g = measure(m, k, n, trans_b)
            print(json.dumps({"peer": "torch-mkl", "m": m, "k": k, "n": n, "trans_b": trans_b,
                              "threads": threads, "gflops": round(g, 1)}))


if __name__ == "__main__":
    main()
