#!/usr/bin/env bash
# Set up (scripts/setup.sh), check lint, format and types, and run the test suite; extra arguments go to pytest
# (e.g. -m "not slow" for the quick tier, see tests/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
