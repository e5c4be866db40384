#!/usr/bin/env bash
# Refactoring guard (issue 17): a commit that only moves code must not change a training run.
# Trains the tiny preset 50 steps (seed 3, 2 threads, tinyshakespeare) with a vffn binary and
# prints one line per step (and per evaluation) with every field of metrics.jsonl except the timing ones.
#   scripts/same-run.sh BIN > before.txt    (binary built from the commit before)
#   scripts/same-run.sh BIN2 > after.txt; cmp before.txt after.txt
# Bitwise equality holds on one machine (the ISA and the cache-derived blocking fix the
# summation order); kernel-speed commits that change that order are kept separate and say so.
set -euo pipefail
bin=${1:?usage: scripts/same-run.sh PATH/TO/vffn}
data=${DATA:-$(dirname "$0")/../../shared/data/tinyshakespeare.txt}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf 'preset = "tiny"\n[train]\nlog_every = 1\neval_every = 25\n' >"$dir/config.toml"
"$bin" train --config "$dir/config.toml" --steps 50 --seed 3 --threads 2 --data "$data" --out "$dir/run" \
    --sample-bytes 0 >/dev/null
python3 - "$dir/run/metrics.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    row.pop("tokens_per_s", None)  # the one timing field
    print(json.dumps(row, sort_keys=True))
PY
