#!/usr/bin/env bash
# README command 2: set up (with the test extras), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export JAX_PLATFORMS=cpu
# Tests that run the same program in several processes (kill/resume, two hosts, train then evaluate)
# compile it once: XLA programs that take over a second to compile are kept on disk and reused.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax-tests}"
.venv/bin/python -m pytest -n 2 --durations=15 "$@" tests
