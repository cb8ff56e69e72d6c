#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs gsa-jax into it (the `gsa-jax` command included).
#   bash scripts/setup.sh          runtime stack (requirements.txt, the pinned lock)
#   bash scripts/setup.sh --test   plus pytest, ruff and the PyTorch side of the conversion tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
reqs=requirements.txt
[[ "${1:-}" == "--test" ]] && reqs=requirements-test.txt
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum "$reqs" requirements.txt | sha1sum | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$reqs"
  touch "$stamp"
fi
# The project itself (editable, its dependencies already pinned above): again whenever pyproject.toml
# changes, so that the console script and the package metadata follow it.
project_stamp=".venv/.project-$(sha1sum pyproject.toml | cut -c1-12)"
if [[ ! -f "$project_stamp" || ! -x .venv/bin/gsa-jax ]]; then
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$project_stamp"
fi
