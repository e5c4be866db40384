#!/usr/bin/env bash
# Side-by-side single-thread GEMM comparison: vffn vs the `gemm` crate 0.18 (one process,
# alternating samples) and numpy/OpenBLAS (1 thread), then vffn with 2 threads and the GEMV case.
# Usage: benches/compare/gemm_compare.sh [SAMPLES]   (from the repo root; prints JSON lines)
set -euo pipefail
samples=${1:-31}
root=$(cd "$(dirname "$0")/../.." && pwd)
shapes="1024x1024x1024 512x256x1024 64x256x128 16x512x512 1x1024x1024"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-gemm}
(cd "$root/benches/compare/gemm_crate" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/compare cargo build --release -q)
(cd "$root" && cargo build --release -q -p vffn)
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/compare/release/gemm-crate-compare" --samples "$samples" $shapes
if [ -x /work/venv-np/bin/python ]; then
  (unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; OPENBLAS_NUM_THREADS=1 \
    /work/venv-np/bin/python "$root/benches/compare/gemm_numpy.py" $shapes)
fi
for tb in "" --trans-b; do
  "$CARGO_TARGET_DIR/release/vffn" bench gemm --m 1024 --k 1024 --n 1024 --threads 2 $tb --json \
    --samples "$samples"
done
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
