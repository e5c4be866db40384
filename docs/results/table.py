#!/usr/bin/env python3
"""Markdown tables for docs/results.md from the runs of docs/results/run.sh (stdlib only).

    python3 docs/results/table.py [runs/results]

One row per (group, variant): seeds found, params, training FLOPs/token, realized inference
feed-forward FLOPs/token, validation loss (vffn eval: every window of the validation split;
mean ± sample std over seeds), training tokens/s (median of the logged rates; the thread count
from the run's `/usr/bin/time -v` log) and peak RSS.
"""
import json
import re
import statistics
import sys
from pathlib import Path

ORDER = ["dense", "kloop2", "kloop4", "moe", "versatile", "width", "depth", "average"]
LABEL = {
    "dense": "dense",
    "kloop2": "kloop D=2",
    "kloop4": "kloop D=4",
    "moe": "moe 8×top-2 + shared FFN",
    "versatile": "versatile 8-2, D=4",
    "width": "width-only (ablation)",
    "depth": "depth-only (ablation)",
    "average": "no-gating average λ=½ (ablation)",
}


def load(run):
    def read(name):
        path = run / name
        return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None

    ev, ins = read("eval.json"), read("inspect.json")
    if ev is None or ins is None:
        return None
    rates = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("step", 0) > 0 and row.get("tokens_per_s"):
            rates.append(row["tokens_per_s"])
    rss, threads = None, None
    timing = run.parent / (run.name + ".time")
    if timing.is_file():
        text = timing.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        rss = int(m.group(1)) / 1024 if m else None
        m = re.search(r"--threads (\d+)", text)
        threads = int(m.group(1)) if m else None
    return {
        "loss": ev["loss"],
        "params": ins["params"],
        "train_flops": ins["train_flops_per_token"],
        "ffn_flops": ins["inference_ffn_flops_per_token"],
        "dense_ffn_flops": ins["dense_inference_ffn_flops_per_token"],
        "rate": statistics.median(rates) if rates else float("nan"),
        "rss": rss,
        "threads": threads,
    }


def fmt_loss(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results")
    groups = {}
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        m = re.fullmatch(r"(scratch|cont)-(\w+)-s(\d+)", run.name)
        if not m or not run.is_dir():
            continue
        got = load(run)
        if got is not None:
            groups.setdefault((m.group(1), m.group(2)), []).append((int(m.group(3)), got))
    for group, title in [("scratch", "From scratch, 2000 steps"),
                         ("cont", "Continued from the dense checkpoint, +2000 steps")]:
        print(f"\n**{title}**\n")
        print("| model | seeds | params | train FLOPs/token | inference FFN FLOPs/token "
              "(× dense) | val loss (nats) | train tokens/s (threads) | peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        for var in ORDER:
            runs = sorted(groups.get((group, var), []))
            if not runs:
                continue
            rows = [r for _, r in runs]
            first = rows[0]
            ffn = statistics.mean(r["ffn_flops"] for r in rows)
            rss = [r["rss"] for r in rows if r["rss"]]
            print(
                f"| {LABEL[var]} | {','.join(str(s) for s, _ in runs)} | {first['params']:,} | "
                f"{first['train_flops'] / 1e6:.2f} M | {ffn / 1e6:.2f} M "
                f"({ffn / first['dense_ffn_flops']:.2f}×) | {fmt_loss([r['loss'] for r in rows])} | "
                f"{statistics.median(r['rate'] for r in rows):,.0f} "
                f"({'/'.join(sorted({str(r['threads'] or '?') for r in rows}))}) | "
                + (f"{max(rss):.0f} MB |" if rss else "– |")
            )


if __name__ == "__main__":
    main()
