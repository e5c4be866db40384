#!/usr/bin/env python3
"""Markdown tables for docs/results.md from the runs of docs/results/run.sh (stdlib only).

    python3 docs/results/table.py [runs/results]

One row per (group, variant): seeds found, params, training FLOPs/token, realized inference
feed-forward FLOPs/token, validation loss (vffn eval: every window of the validation split;
mean ± sample std over seeds), training tokens/s (median of the logged rates; the thread count
from the run's `/usr/bin/time -v` log) and peak RSS. Then the issue-19 sections (Table 4, the
depth-noise remedy, the small preset; a section is left out until one of its runs is done),
the depth router's training agreement (metrics.jsonl `depth_agree` / `depth_margin`) and the
expert load over width-path tokens (inspect.json `width_expert_counts`).
"""
import json
import re
import statistics
import sys
from pathlib import Path

ORDER = ["dense", "kloop2", "kloop4", "moe", "versatile", "width", "widthshared", "depth",
         "average"]
LABEL = {
    "dense": "dense",
    "kloop2": "kloop D=2",
    "kloop4": "kloop D=4",
    "moe": "moe 8×top-2 + shared FFN",
    "versatile": "versatile 8-2, D=4",
    "width": "width-only, routed experts alone (ablation)",
    "widthshared": "width-only + shared expert (ablation, the paper's setup)",
    "depth": "depth-only (ablation)",
    "average": "no-gating average λ=½ (ablation)",
    "lmax2": "versatile 8-2, L_max 2",
    "lmax6": "versatile 8-2, L_max 6",
    "e8k4": "versatile 8-4, L_max 4",
    "e16k4": "versatile 16-4, L_max 4",
    "widthe4k1": "width-only + shared expert, 4-choose-1",
    "widthe8k4": "width-only + shared expert, 8-choose-4",
    "widthe16k4": "width-only + shared expert, 16-choose-4",
    "routing": "versatile 8-2, D=4 (re-run, routing logged)",
    "noise": "versatile, depth_noise = scaled (remedy)",
    "smalldense": "small preset: dense",
    "smallversatile": "small preset: versatile 8-2, D=4",
}
# (title, group, variants, label override) of the sections after the two main tables.
SECTIONS = [
    ("Table 4 at tiny scale, continued from the dense checkpoint, +2000 steps", "cont",
     ["lmax2", "versatile", "lmax6", "e8k4", "e16k4"], {"versatile": "versatile 8-2, L_max 4"}),
    ("Fig. 3a at tiny scale: width-only + shared expert, continued, +2000 steps", "cont",
     ["widthe4k1", "widthshared", "widthe8k4", "widthe16k4"],
     {"widthshared": "width-only + shared expert, 8-choose-2"}),
    ("Depth-noise remedy, from scratch, 2000 steps", "scratch", ["routing", "noise"], {}),
    ("Depth-noise remedy, continued from the dense checkpoint, +2000 steps", "cont",
     ["routing", "noise"], {}),
    ("Small preset, from scratch, 2000 steps", "scratch", ["smalldense", "smallversatile"], {}),
]
HEADER = ("| model | seeds | params | train FLOPs/token | inference FFN FLOPs/token "
          "(× dense) | val loss (nats) | train tokens/s (threads) | peak RSS |\n"
          "|---|---|---|---|---|---|---|---|")


def read_config(run):
    """The [model] table of the run's config.toml (minimal TOML: `key = value` lines)."""
    model, section = {}, None
    path = run / "config.toml"
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "model":
            key, value = (part.strip() for part in line.split("=", 1))
            model[key] = value.strip('"')
    return model


def ffn_flops(ins, model):
    """Realized inference FFN FLOPs/token. inspect.json files written before issue 19 counted
    the width path of `fusion = "average"` only for tokens with ℓ < D, though λ = ½ runs it for
    every token: recomputed here from their depth histograms (F per loop, (k/E)·F for the width
    path, as crates/model/src/flops.rs)."""
    layers = ins["layers"]
    if model.get("fusion") != "average" or any("width_expert_counts" in l for l in layers):
        return ins["inference_ffn_flops_per_token"]
    f = ins["dense_inference_ffn_flops_per_token"] / len(layers)
    width = int(model["top_k"]) / int(model["n_experts"]) * f
    total = 0.0
    for layer in layers:
        counts = layer["depth_counts"]
        loops = sum((i + 1) * c for i, c in enumerate(counts)) / sum(counts)
        total += loops * f + width
    return total


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
    agree = []  # (step, depth_agree, depth_margin) of the rows that have them
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("depth_agree"):
            agree.append((row["step"], row["depth_agree"], row["depth_margin"]))
    return {
        "loss": ev["loss"],
        "params": ins["params"],
        "train_flops": ins["train_flops_per_token"],
        "ffn_flops": ffn_flops(ins, read_config(run)),
        "agree": agree,
        "layers": ins["layers"],
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
    main_tables = [
        ("From scratch, 2000 steps", "scratch", [v for v in ORDER if v != "widthshared"], {}),
        ("Continued from the dense checkpoint, +2000 steps", "cont", ORDER, {}),
    ]
    for title, group, variants, labels in main_tables + SECTIONS:
        present = [v for v in variants if groups.get((group, v))]
        if title in (t for t, *_ in SECTIONS) and not any(v not in ORDER for v in present):
            continue  # an issue-19 section before any of its own runs is done
        print(f"\n**{title}**\n")
        print(HEADER)
        for var in present:
            runs = sorted(groups[(group, var)])
            rows = [r for _, r in runs]
            first = rows[0]
            ffn = statistics.mean(r["ffn_flops"] for r in rows)
            rss = [r["rss"] for r in rows if r["rss"]]
            print(
                f"| {labels.get(var, LABEL[var])} | {','.join(str(s) for s, _ in runs)} | "
                f"{first['params']:,} | "
                f"{first['train_flops'] / 1e6:.2f} M | {ffn / 1e6:.2f} M "
                f"({ffn / first['dense_ffn_flops']:.2f}×) | {fmt_loss([r['loss'] for r in rows])} | "
                f"{statistics.median(r['rate'] for r in rows):,.0f} "
                f"({'/'.join(sorted({str(r['threads'] or '?') for r in rows}))}) | "
                + (f"{max(rss):.0f} MB |" if rss else "– |")
            )
    runs = [(f"{g}-{v}-s{s}", r) for (g, v), rs in sorted(groups.items()) for s, r in sorted(rs)]
    agreement_table(runs)
    expert_load_table(runs)


def agreement_table(runs):
    """Per run with depth_agree in its metrics: agreement and margin per layer at a few steps."""
    logged = [(name, r["agree"]) for name, r in runs if r["agree"]]
    if not logged:
        return
    print("\n**Depth router during training: share of tokens whose Gumbel pick equals the "
          "noise-free argmax, and mean top-1 − top-2 logit margin, per layer**\n")
    print("| run | step | agreement per layer | margin per layer |")
    print("|---|---|---|---|")
    for name, rows in logged:
        last = rows[-1][0]
        for want in sorted({s for s in (10, 100, 500, 1000, last) if s <= last}):
            step, agree, margin = min(rows, key=lambda row: abs(row[0] - want))
            print(f"| {name} | {step} | {' / '.join(f'{a:.2f}' for a in agree)} | "
                  f"{' / '.join(f'{m:.3f}' for m in margin)} |")


def expert_load_table(runs):
    """Busiest expert's share per layer: over width-path tokens, and the raw router choice."""
    have = [(name, r["layers"]) for name, r in runs
            if any(l.get("width_expert_counts") for l in r["layers"])]
    if not have:
        return
    print("\n**Expert load: busiest expert's share per layer, over the tokens whose width "
          "path runs (λ > 0) / router choice over all tokens; share of tokens on the width "
          "path**\n")
    print("| run | busiest expert % per layer (width-path / all) | width-path tokens % |")
    print("|---|---|---|")
    for name, layers in have:
        cells, shares = [], []
        for layer in layers:
            width, raw = layer.get("width_expert_counts") or [], layer["expert_counts"]
            if not raw:
                continue
            top = lambda counts: 100 * max(counts) / max(sum(counts), 1)
            cells.append(f"{top(width):.0f}/{top(raw):.0f}")
            shares.append(f"{100 * sum(width) / max(sum(raw), 1):.0f}")
        print(f"| {name} | {' · '.join(cells)} | {' · '.join(shares)} |")


if __name__ == "__main__":
    main()
