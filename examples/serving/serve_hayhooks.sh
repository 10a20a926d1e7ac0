#!/usr/bin/env bash
# Serve the example Haystack pipeline with Hayhooks, offline, on loopback: POST /attnret_report/run {"question": ...}.
#   bash examples/serving/serve_hayhooks.sh                 # 127.0.0.1:1416
#   HAYHOOKS_HOST=0.0.0.0 HAYHOOKS_PORT=8080 bash examples/serving/serve_hayhooks.sh
# Needs the `serve` extra (pip install -e ".[serve]"). See docs/serving.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
examples="$(dirname "$here")"
venv_bin="$(dirname "$examples")/.venv/bin"
hayhooks="hayhooks"
if [[ -x "$venv_bin/hayhooks" ]]; then hayhooks="$venv_bin/hayhooks"; fi
export HAYSTACK_TELEMETRY_ENABLED="${HAYSTACK_TELEMETRY_ENABLED:-False}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
exec "$hayhooks" run \
  --host "${HAYHOOKS_HOST:-127.0.0.1}" \
  --port "${HAYHOOKS_PORT:-1416}" \
  --pipelines-dir "$here/pipelines" \
  --additional-python-path "$examples" \
  "$@"
