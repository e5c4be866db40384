#!/usr/bin/env bash
# One run, side by side: vffn's GEMM against MKL (PyTorch `a @ b`), OpenBLAS (numpy) and the
# `gemm` crate 0.18, on the shapes of issue 15, B and Wᵀ layouts, 1 thread (and 1024³ with 2).
# Peers alternate round by round so machine noise hits them alike. One JSON line per figure
# (`{"peer":..,"m":..,"k":..,"n":..,"trans_b":..,"threads":..,"gflops":..,"round":..}`), after
# `#` header lines naming the machine, its ISA and the measured FMA peak.
#
# Usage (from anywhere): benches/compare/peers.sh [ROUNDS]      (default 3)
# Env: PY (a python with torch and numpy; default /work/venv-torch/bin/python),
#      CARGO_TARGET_DIR (default target), SAMPLES (per figure, default 21).
# Outside CI: it needs torch/numpy installed by hand (see benches/compare/README.md).
set -euo pipefail
rounds=${1:-3}
samples=${SAMPLES:-21}
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PY:-/work/venv-torch/bin/python}
target=${CARGO_TARGET_DIR:-$root/target}
shapes="1024x1024x1024 512x256x1024 64x256x128 16x512x512"
(cd "$root" && cargo build --release -q -p vffn)
vffn="$target/release/vffn"
have_gemm_crate=0
if (cd "$root/benches/compare/gemm_crate" && CARGO_TARGET_DIR=$target/compare cargo build --release -q) 2>/dev/null; then
  have_gemm_crate=1
fi
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"
echo "# commit $(git -C "$root" rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$vffn" bench peak --json | sed 's/^/# peak /'
"$vffn" bench peak --threads 2 --json | sed 's/^/# peak /'
for round in $(seq 1 "$rounds"); do
  for s in $shapes; do
    IFS=x read -r m k n <<<"$s"
    for tb in false true; do
      flag=; [ "$tb" = true ] && flag=--trans-b
      g=$("$vffn" bench gemm --m "$m" --k "$k" --n "$n" $flag --samples "$samples" --json |
        "$py" -c 'import json,sys; print(json.load(sys.stdin)["gflops"])')
      echo "{\"peer\":\"vffn\",\"m\":$m,\"k\":$k,\"n\":$n,\"trans_b\":$tb,\"threads\":1,\"gflops\":$g,\"round\":$round}"
    done
  done
  "$py" "$root/benches/compare/gemm_torch.py" $shapes | sed "s/}\$/, \"round\": $round}/"
  (unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; OPENBLAS_NUM_THREADS=1 \
    "$py" "$root/benches/compare/gemm_numpy.py" $shapes | sed "s/}\$/, \"round\": $round}/")
  if [ $have_gemm_crate = 1 ]; then
    "$target/compare/release/gemm-crate-compare" --samples "$samples" $shapes |
      grep '"gemm-0.18"' | sed "s/\"impl\"/\"peer\"/; s/}\$/,\"round\":$round}/"
  fi
  # Two threads at 1024³.
  g=$("$vffn" bench gemm --m 1024 --k 1024 --n 1024 --threads 2 --samples "$samples" --json |
    "$py" -c 'import json,sys; print(json.load(sys.stdin)["gflops"])')
  echo "{\"peer\":\"vffn\",\"m\":1024,\"k\":1024,\"n\":1024,\"trans_b\":false,\"threads\":2,\"gflops\":$g,\"round\":$round}"
  # (grep reads every line: closing the pipe early would kill the writer with EPIPE)
  "$py" "$root/benches/compare/gemm_torch.py" --threads 2 1024x1024x1024 |
    grep '"trans_b": false' | sed "s/}\$/, \"round\": $round}/"
  (unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; OPENBLAS_NUM_THREADS=2 \
    "$py" "$root/benches/compare/gemm_numpy.py" 1024x1024x1024 |
    grep '"trans_b": false' | sed "s/}\$/, \"round\": $round}/")
done
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
