#!/usr/bin/env bash
# Every training run behind docs/results.md, in the paper's regime at tiny scale. Idempotent:
# finished runs are skipped, interrupted ones resumed (bit-exactly), so it can be re-run until
# everything is done. Summarize with `python3 docs/results/table.py`.
#
#   docs/results/run.sh                 # everything (≈ 6 h on 2 cores)
#   ONLY='^(scratch-dense|scratch-versatile)-s0$' docs/results/run.sh   # a subset (regex)
#   THREADS=1 taskset -c 0 docs/results/run.sh & THREADS=1 taskset -c 1 docs/results/run.sh
#                                       # two copies, one per core: each run is locked
#                                       # ($OUT/<name>.lock), so the copies share out the runs
#
# Environment: VFFN (binary, default target/release/vffn), DATA (default
# ../shared/data/tinyshakespeare.txt), OUT (default runs/results), THREADS (2), SEEDS ("0 1 2").
set -euo pipefail
cd "$(dirname "$0")/../.."
VFFN=${VFFN:-target/release/vffn}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-runs/results}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-0 1 2}
ONLY=${ONLY:-.}
STEPS=${STEPS:-2000} # override only to smoke-test the script
[ -x "$VFFN" ] || { echo "error: $VFFN not built (cargo build --release)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "error: data file $DATA not found" >&2; exit 1; }
mkdir -p "$OUT/configs"

# Variant → [model] overrides of the tiny preset (d 128, 4 layers, h 512, E 8 top-2, D 4).
variant() {
  case "$1" in
    dense) echo 'block = "dense"' ;;
    kloop2) printf 'block = "kloop"\nmax_depth = 2\n' ;;
    kloop4) printf 'block = "kloop"\nmax_depth = 4\n' ;;
    moe) echo 'block = "moe"' ;;
    versatile) echo 'block = "versatile"' ;;
    width) printf 'block = "versatile"\npaths = "width"\n' ;;
    depth) printf 'block = "versatile"\npaths = "depth"\n' ;;
    average) printf 'block = "versatile"\nfusion = "average"\n' ;;
    *) echo "unknown variant $1" >&2; exit 1 ;;
  esac
}

config_of() {
  local file="$OUT/configs/$1.toml"
  # Written aside and renamed: a second copy of this script may be reading it.
  printf 'preset = "tiny"\n[model]\n%s\n[train]\nsteps = %d\n' "$(variant "$1")" "$STEPS" >"$file.$$"
  mv "$file.$$" "$file"
  echo "$file"
}

finished() { # run dir → 0 when its checkpoint is at step $STEPS
  python3 - "$1/ckpt/state.json" "$STEPS" <<'PY' 2>/dev/null
import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))["step"] >= int(sys.argv[2]) else 1)
PY
}

# run NAME VARIANT SEED [DATA|builtin] [INIT_DIR]
run() {
  local name=$1 var=$2 seed=$3 data=${4:-$DATA} init=${5:-}
  [[ $name =~ $ONLY ]] || return 0
  local dir="$OUT/$name" cfg args lock
  # One run.sh per run at a time: a second copy (e.g. one per core with THREADS=1) skips it.
  exec {lock}>"$dir.lock"
  if ! flock -n "$lock"; then
    echo "== $name: another run.sh holds it, skipped"
    exec {lock}>&-
    return 0
  fi
  if [ -n "$init" ] && ! finished "$init" && ! [ -f "$dir/ckpt/state.json" ]; then
    echo "== $name: base $init not finished yet (another copy may be training it), skipped"
    exec {lock}>&-
    return 0
  fi
  cfg=$(config_of "$var")
  args=(train --config "$cfg" --seed "$seed" --threads "$THREADS" --out "$dir" --sample-bytes 0)
  [ "$data" = builtin ] || args+=(--data "$data")
  if finished "$dir"; then
    echo "== $name: done"
  else
    if [ -f "$dir/ckpt/state.json" ]; then
      args+=(--resume)
    elif [ -n "$init" ]; then
      args+=(--init-from "$init/ckpt")
    fi
    echo "== $name: $VFFN ${args[*]}"
    /usr/bin/time -v -o "$dir.time" "$VFFN" "${args[@]}"
  fi
  local evaldata=()
  [ "$data" = builtin ] || evaldata=(--data "$data")
  [ -s "$dir/eval.json" ] || "$VFFN" eval --checkpoint "$dir" "${evaldata[@]}" --json >"$dir/eval.json"
  [ -s "$dir/inspect.json" ] ||
    "$VFFN" inspect --checkpoint "$dir" "${evaldata[@]}" --batches 0 --json >"$dir/inspect.json"
  exec {lock}>&-
}

for seed in $SEEDS; do
  # From scratch (seed 0's dense run is also the base of the continued runs).
  for var in dense moe kloop4 versatile; do
    run "scratch-$var-s$seed" "$var" "$seed"
  done
  # Continued pre-training from the dense checkpoint: 2000 more steps, same recipe.
  for var in dense kloop2 kloop4 moe versatile width depth average; do
    run "cont-$var-s$seed" "$var" "$seed" "$DATA" "$OUT/scratch-dense-s0"
  done
done
# Routing on the built-in corpus (known easy / hard tokens): depth histograms, easy vs hard.
run "builtin-versatile-s0" versatile 0 builtin
if [[ builtin-versatile-s0 =~ $ONLY ]]; then
  "$VFFN" inspect --checkpoint "$OUT/builtin-versatile-s0" --batches 0 \
    --svg docs/results/builtin-versatile >"$OUT/builtin-versatile-s0/inspect.txt"
fi
