#!/usr/bin/env bash
# Side by side: vffn (`vffn bench train|forward`) vs PyTorch CPU (torch_bench.py) on the same
# preset, blocks and batch. For each block × mode × thread count, ROUNDS rounds alternate one
# vffn run and one torch run (fresh processes); the table shows the medians and vffn/torch.
# Usage (from anywhere): benches/compare/torch_vs_vffn.sh
# Env: VFFN (default target/release/vffn), PY (default /work/venv-torch/bin/python),
#      PRESET (tiny), BLOCKS ("dense kloop moe versatile"), MODES ("train forward"),
#      THREADS ("2 1"), ROUNDS (3), STEPS (5), WARMUP (2), TORCH_INFER (paper | early-exit),
#      RAW (file for every JSON line; default a temp file, path printed).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vffn=${VFFN:-$root/target/release/vffn}
py=${PY:-/work/venv-torch/bin/python}
preset=${PRESET:-tiny}
blocks=${BLOCKS:-dense kloop moe versatile}
modes=${MODES:-train forward}
threads_list=${THREADS:-2 1}
rounds=${ROUNDS:-3}
steps=${STEPS:-5}
warmup=${WARMUP:-2}
infer=${TORCH_INFER:-paper}
raw=${RAW:-$(mktemp /tmp/torch_vs_vffn.XXXXXX.jsonl)}
[ -x "$vffn" ] || { echo "vffn binary not found at $vffn (set VFFN)" >&2; exit 1; }
[ -x "$py" ] || { echo "python not found at $py (set PY)" >&2; exit 1; }
bench="$root/benches/compare/torch_bench.py"
: >"$raw"

echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)  vffn=$vffn  torch infer=$infer"
for threads in $threads_list; do
  for mode in $modes; do
    for block in $blocks; do
      for ((r = 1; r <= rounds; r++)); do
        if [ "$mode" = train ]; then
          v=$("$vffn" bench train --preset "$preset" --block "$block" --threads "$threads" \
            --steps "$steps" --warmup "$warmup" --json)
        else
          # vffn bench forward: one warm-up forward, then --repeats timed ones.
          v=$("$vffn" bench forward --preset "$preset" --block "$block" --threads "$threads" \
            --repeats "$steps" --json)
        fi
        t=$("$py" "$bench" --preset "$preset" --block "$block" --mode "$mode" \
          --threads "$threads" --steps "$steps" --warmup "$warmup" --infer "$infer" --json)
        printf '{"engine":"vffn","mode":"%s","round":%d,"result":%s}\n' "$mode" "$r" "$v" >>"$raw"
        printf '{"engine":"torch","mode":"%s","round":%d,"result":%s}\n' "$mode" "$r" "$t" >>"$raw"
      done
    done
  done
done
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)  raw JSON lines: $raw"

"$py" - "$raw" "$preset" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rec = json.loads(line)
    res = rec["result"]
    key = (res["threads"], rec["mode"], res["block"])
    rows.setdefault(key, {}).setdefault(rec["engine"], []).append(res)
print(f"preset {sys.argv[2]}: medians over rounds (tokens/s); ratio = vffn / torch")
print(f"{'threads':>7} {'mode':<8} {'block':<10} {'vffn tok/s':>11} {'torch tok/s':>12} {'ratio':>7} {'vffn MB':>8} {'torch MB':>9}")
for (threads, mode, block), eng in rows.items():
    v = statistics.median(r["tokens_per_s"] for r in eng["vffn"])
    t = statistics.median(r["tokens_per_s"] for r in eng["torch"])
    tm = statistics.median(r["peak_rss_mb"] for r in eng["torch"])
    vm = [r["peak_rss_mb"] for r in eng["vffn"] if r.get("peak_rss_mb")]
    vm = f"{statistics.median(vm):.0f}" if vm else "-"
    print(f"{threads:>7} {mode:<8} {block:<10} {v:>11.0f} {t:>12.0f} {v / t:>7.2f} {vm:>8} {tm:>9.0f}")
EOF
