#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
