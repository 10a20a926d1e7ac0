#!/usr/bin/env bash
# Serve the LlamaIndex query engine (vector index + AttentionRerank) with uvicorn, offline, on loopback:
# POST /query {"question": ...}, GET /health.
#   bash examples/serving/serve_llamaindex.sh               # 127.0.0.1:8000
#   HOST=0.0.0.0 PORT=8080 bash examples/serving/serve_llamaindex.sh
# Needs the `serve` and `llamaindex` extras (pip install -e ".[serve,llamaindex]"). See docs/serving.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv_python="$(dirname "$(dirname "$here")")/.venv/bin/python"
python="python"
if [[ -x "$venv_python" ]]; then python="$venv_python"; fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec "$python" -m uvicorn llamaindex_app:app --app-dir "$here" --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
