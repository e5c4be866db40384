#!/usr/bin/env bash
# Side-by-side single-thread GEMM comparison: vffn vs the `gemm` crate 0.18 (one process,
# alternating samples) and numpy/OpenBLAS (1 thread), then vffn with 2 threads and the GEMV case.
# Usage: benches/compare/gemm_compare.sh [SAMPLES]   (from the repo root; prints JSON lines)
# Env: PY (a python with numpy), CARGO_TARGET_DIR (default target-gemm).
set -euo pipefail
samples=${1:-31}
root=$(cd "$(dirname "$0")/../.." && pwd)
shapes="1024x1024x1024 512x256x1024 64x256x128 16x512x512 1x1024x1024"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-gemm}
(cd "$root/benches/compare/gemm_crate" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/compare cargo build --release -q)
(cd "$root" && cargo build --release -q -p vffn)
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/compare/release/gemm-crate-compare" --samples "$samples" $shapes
# numpy: $PY, else the first of the usual scratch venvs that has it.
py=${PY:-}
for cand in /work/venv-np/bin/python /work/venv-torch/bin/python; do
  [ -z "$py" ] && [ -x "$cand" ] && "$cand" -c "import numpy" 2>/dev/null && py=$cand
done
if [ -n "$py" ]; then
  (unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; OPENBLAS_NUM_THREADS=1 \
    "$py" "$root/benches/compare/gemm_numpy.py" $shapes)
else
  echo "# numpy not found (set PY): OpenBLAS column skipped" >&2
fi
for tb in "" --trans-b; do
  "$CARGO_TARGET_DIR/release/vffn" bench gemm --m 1024 --k 1024 --n 1024 --threads 2 $tb --json \
    --samples "$samples"
done
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
