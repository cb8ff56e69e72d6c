#!/usr/bin/env bash
# One-shot accelerator benchmark (gsa_jax/bench/gpu.py): GSA-Net and DPA training examples/s at 384 and 512
# in float32 and bfloat16, cached-reference inference frames/s at 512, program and device memory, MFU against
# the bf16 matmul rate measured in the same run. Fits in under 8 minutes on one GPU (a 420 s budget for the
# stages, then a hard stop at 470 s; whatever was measured by then is in the JSON).
#
#   bash scripts/bench_gpu.sh [OUT.json]                 on the accelerator (default OUT: bench_gpu.json)
#   bash scripts/bench_gpu.sh --cpu-smoke [OUT.json]     the same code at tiny sizes on the CPU (< 2 min)
# Extra flags after OUT go to the script (e.g. --train_batch=8 --models=gsanet).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1; shift; fi
if [[ "${BENCH_GPU_SMOKE:-0}" == "1" ]]; then SMOKE=1; fi
OUT="${1:-bench_gpu.json}"
shift || true
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
if [[ "$SMOKE" == "1" ]]; then
  export JAX_PLATFORMS=cpu
  exec timeout 170 "$PY" -m gsa_jax.bench.gpu --smoke --budget_s=110 --compile_threads=2 --out="$OUT" "$@"
fi
exec timeout 470 "$PY" -m gsa_jax.bench.gpu --budget_s=420 --out="$OUT" "$@"
