"""Summarizes `peers.sh` output: median GFLOP/s per peer and shape over rounds, and vffn's ratio
to the better of MKL and OpenBLAS. Usage: python3 peers_summary.py FILE"""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        key = (r["m"], r["k"], r["n"], r["trans_b"], r["threads"])
        rows[(key, r["peer"])].append(r["gflops"])
keys = sorted({k for k, _ in rows}, key=lambda k: (k[4], -k[0] * k[1] * k[2], k[3]))
peers = ["vffn", "torch-mkl", "numpy-openblas", "gemm-0.18"]
print("| shape | threads | " + " | ".join(peers) + " | vffn / best of MKL, OpenBLAS |")
print("|---|---:|" + "---:|" * (len(peers) + 1))
for k in keys:
    med = {p: statistics.median(rows[(k, p)]) for p in peers if rows.get((k, p))}
    best = max([med[p] for p in ("torch-mkl", "numpy-openblas") if p in med] or [float("nan")])
    shape = f"{k[0]}×{k[1]}×{k[2]}" + (" Wᵀ" if k[3] else " B")
    cells = " | ".join(f"{med[p]:.1f}" if p in med else "—" for p in peers)
    print(f"| {shape} | {k[4]} | {cells} | {med.get('vffn', float('nan')) / best:.2f} |")
