"""Peer measurement: PyTorch (MKL on x86) f32 GEMM `a @ b` on the vffn GEMM shapes.

Run: /work/venv-torch/bin/python gemm_torch.py [--threads T] [MxKxN ...]
Prints one JSON line per shape and layout (median GFLOP/s of timed samples of >= 2 ms);
trans_b: B stored as W [n,k], op(B) = W^T (a linear layer's forward).
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemm_numpy import median_gflops  # noqa: E402  (one timing loop for every peer)

SHAPES = [(1024, 1024, 1024), (512, 256, 1024), (64, 256, 128), (16, 512, 512)]


def measure(m, k, n, trans_b, samples=21):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g)
    w = torch.randn((n, k) if trans_b else (k, n), generator=g)
    b = w.t() if trans_b else w
    c = torch.empty(m, n)
    return median_gflops(lambda: torch.matmul(a, b, out=c), 2.0 * m * n * k, samples)


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
