#!/usr/bin/env bash
# README command 2: set up (with the test extras), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export JAX_PLATFORMS=cpu
.venv/bin/python -m pytest -n 2 --durations=15 "$@" tests
