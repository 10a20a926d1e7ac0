#!/usr/bin/env bash
# Set up (scripts/setup.sh), then search a real ~4.5k-token document with the default model (Qwen2.5-Coder-1.5B;
# its first use assembles and converts it once into the user cache, about two minutes).
# Extra arguments replace the default query: bash scripts/demo.sh "your question"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
QUERY=${1:-"In which town was the first Kestrel seismometer prototype built?"}
.venv/bin/attnret search --file examples/data/calloway_venn_annual_report.txt --query "$QUERY" --top-k 5
