#!/usr/bin/env bash
# README command 1: set up, then synthetic videos -> train -> evaluate -> pictures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
.venv/bin/python main.py --mode=demo --workdir="${1:-workdirs/demo}"
