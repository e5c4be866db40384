#!/usr/bin/env bash
# Every training run behind docs/results.md, in the paper's regime at tiny scale. Idempotent:
# finished runs are skipped, interrupted ones resumed (bit-exactly), so it can be re-run until
# everything is done. Summarize with `python3 docs/results/table.py`.
#
#   docs/results/run.sh                 # everything (the issue-19 runs included: days on 2 cores)
#   ONLY='^(scratch-dense|scratch-versatile)-s0$' docs/results/run.sh   # a subset (regex)
#   THREADS=1 taskset -c 0 docs/results/run.sh & THREADS=1 taskset -c 1 docs/results/run.sh
#                                       # two copies, one per core: each run is locked
#                                       # ($OUT/<name>.lock), so the copies share out the runs
#
# Environment: VFFN (binary, default target/release/vffn), DATA (default
# ../shared/data/tinyshakespeare.txt), OUT (default runs/results), THREADS (2), SEEDS ("0 1 2"),
# FIG3A_SEEDS ("0": the Fig. 3a width runs).
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

# Variant → [model] overrides of the tiny preset (d 128, 4 layers, h 512, E 8 top-2, D 4), or
# of the small preset for the small* variants (d 256, 6 layers, h 1024, seq 256).
variant() {
  case "$1" in
    dense) echo 'block = "dense"' ;;
    kloop2) printf 'block = "kloop"\nmax_depth = 2\n' ;;
    kloop4) printf 'block = "kloop"\nmax_depth = 4\n' ;;
    moe) echo 'block = "moe"' ;;
    versatile) echo 'block = "versatile"' ;;
    # The first width-only rows: the routed virtual experts alone (2/8 of the FFN).
    width) printf 'block = "versatile"\npaths = "width"\nshared_expert = false\n' ;;
    # Issue 19: the paper's width-only setup keeps one shared expert (the whole FFN).
    widthshared) printf 'block = "versatile"\npaths = "width"\nshared_expert = true\n' ;;
    depth) printf 'block = "versatile"\npaths = "depth"\n' ;;
    average) printf 'block = "versatile"\nfusion = "average"\n' ;;
    # Issue 19, Table 4 at tiny scale: L_max under 8-choose-2, experts under L_max 4
    # (L_max 4 with 8-choose-2 is the versatile row itself).
    lmax2) printf 'block = "versatile"\nmax_depth = 2\n' ;;
    lmax6) printf 'block = "versatile"\nmax_depth = 6\n' ;;
    e8k4) printf 'block = "versatile"\nn_experts = 8\ntop_k = 4\n' ;;
    e16k4) printf 'block = "versatile"\nn_experts = 16\ntop_k = 4\n' ;;
    # Issue 19, Fig. 3a at tiny scale: width-only + shared expert under other expert choices
    # (8-choose-2 is widthshared itself).
    widthe4k1) printf 'block = "versatile"\npaths = "width"\nshared_expert = true\nn_experts = 4\ntop_k = 1\n' ;;
    widthe8k4) printf 'block = "versatile"\npaths = "width"\nshared_expert = true\nn_experts = 8\ntop_k = 4\n' ;;
    widthe16k4) printf 'block = "versatile"\npaths = "width"\nshared_expert = true\nn_experts = 16\ntop_k = 4\n' ;;
    # Issue 19, the remedy: the depth router's noise scaled by the temperature.
    noise) printf 'block = "versatile"\ndepth_noise = "scaled"\n' ;;
    # Issue 19, one step up in scale (small preset).
    smalldense) echo 'block = "dense"' ;;
    smallversatile) echo 'block = "versatile"' ;;
    *) echo "unknown variant $1" >&2; exit 1 ;;
  esac
}

config_of() {
  local file="$OUT/configs/$1.toml"
  # Written aside and renamed: a second copy of this script may be reading it.
  local preset=tiny
  [[ $1 == small* ]] && preset=small
  printf 'preset = "%s"\n[model]\n%s\n[train]\nsteps = %d\n' "$preset" "$(variant "$1")" "$STEPS" >"$file.$$"
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
  if [ ! -s "$dir/eval.json" ]; then # written whole or not at all (collectors copy it)
    "$VFFN" eval --checkpoint "$dir" "${evaldata[@]}" --json >"$dir/eval.json.$$"
    mv "$dir/eval.json.$$" "$dir/eval.json"
  fi
  # Re-inspected when written before the width-path expert load existed (issue 19).
  if ! grep -qs width_expert_counts "$dir/inspect.json"; then
    "$VFFN" inspect --checkpoint "$dir" "${evaldata[@]}" --batches 0 --json >"$dir/inspect.json.$$"
    mv "$dir/inspect.json.$$" "$dir/inspect.json"
  fi
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
# Issue 19 (after every run above): width-only with the shared expert, Table 4, the remedy
# (one seed from scratch, one continued) and the small preset (seed 0, from scratch).
for seed in $SEEDS; do
  for var in widthshared lmax2 lmax6 e8k4 e16k4; do
    run "cont-$var-s$seed" "$var" "$seed" "$DATA" "$OUT/scratch-dense-s0"
  done
done
# The paper's method again with this binary, so that its metrics carry depth_agree /
# depth_margin (the routing curves), beside the remedy trained by the same code.
run "scratch-routing-s0" versatile 0
run "cont-routing-s0" versatile 0 "$DATA" "$OUT/scratch-dense-s0"
run "scratch-noise-s0" noise 0
run "cont-noise-s0" noise 0 "$DATA" "$OUT/scratch-dense-s0"
for name in scratch-routing-s0 cont-routing-s0 scratch-noise-s0 cont-noise-s0; do
  if [[ $name =~ $ONLY ]] && finished "$OUT/$name"; then # routing.svg: one picture per regime
    "$VFFN" inspect --checkpoint "$OUT/$name" --data "$DATA" --batches 0 \
      --svg "docs/results/$name" >"$OUT/$name/inspect.txt"
  fi
done
run "scratch-smalldense-s0" smalldense 0
run "scratch-smallversatile-s0" smallversatile 0
# Fig. 3a at tiny scale, "if time allows": FIG3A_SEEDS (default: seed 0 only).
for seed in ${FIG3A_SEEDS:-0}; do
  for var in widthe4k1 widthe8k4 widthe16k4; do
    run "cont-$var-s$seed" "$var" "$seed" "$DATA" "$OUT/scratch-dense-s0"
  done
done
# Routing on the built-in corpus (known easy / hard tokens): depth histograms, easy vs hard.
run "builtin-versatile-s0" versatile 0 builtin
if [[ builtin-versatile-s0 =~ $ONLY ]]; then
  "$VFFN" inspect --checkpoint "$OUT/builtin-versatile-s0" --batches 0 \
    --svg docs/results/builtin-versatile >"$OUT/builtin-versatile-s0/inspect.txt"
fi
