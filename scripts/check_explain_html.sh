#!/usr/bin/env bash
# Render an attnret explanation page in headless Debian chromium: screenshot it and check that its script ran cleanly.
#
# Usage: scripts/check_explain_html.sh [REPORT.html] [SHOT.png]
#   REPORT.html  page written by `attnret explain` or shared_core.tasks.explain.write_html; when it is not given or does not
#                exist, a demo page is built there first from a small bAbI-like story (real spaCy NER, MiniLM dense).
#   SHOT.png     where the screenshot goes (default: next to the report, .png).
# Needs /usr/bin/chromium (apt-get install -y chromium). Exits non-zero when the page fails to render.
set -euo pipefail

CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [[ -z "$CHROMIUM" ]]; then
    echo "chromium not found; install it with: apt-get install -y chromium" >&2
    exit 2
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

report="${1:-$workdir/report.html}"
if [[ ! -e "$report" ]]; then
    python - "$report" <<'EOF'
"""Build a demo explanation from a small story: dense view fused alone, entity expansion, then write the page."""

import logging
import sys

from shared_core.views.dense import DenseScorer
from shared_core.document import Document, Hit, Unit
from shared_core.config import EntitiesConfig
from shared_core.views.entities import EntityIndex, expand, load_nlp
from shared_core.tasks.explain import build_explanation, write_html
from shared_core.config import FusionConfig
from shared_core.views.fusion import fuse

logging.basicConfig(level=logging.INFO)
sentences = [
    "Sandra got the milk.", "Daniel picked up the apple.", "The fridge in the kitchen was empty.",
    "Mary travelled to the bathroom.", "She dropped a <towel> & left.", "Sandra went to the garden.",
]
text, units = "", []
for sentence in sentences:
    text += " " if text else ""
    units.append(Unit(len(units), len(text), len(text) + len(sentence), sentence, 0))
    text += sentence
query = "Where is the milk?"
dense = DenseScorer().score(query, [u.text for u in units])
fused = fuse({"dense": dense}, FusionConfig(weights={"dense": 1.0}))
index = EntityIndex.build(text, units, load_nlp())
scored = [
    Hit("demo", 0, u.start, u.end, u.text, float(fused[i]), {"dense": float(dense[i])}, [], i) for i, u in enumerate(units)
]
top = max(range(len(units)), key=lambda i: fused[i])
scored[top].reasons = ["dense"]
hits = [scored[top]]
for e in expand(index, fused, units, EntitiesConfig(), exclude={top}):
    scored[e.unit_index].reasons = [f"entity:{index.display_name(e.entity)}"]
    hits.append(scored[e.unit_index])
explanation = build_explanation(query, [Document(text, id="demo")], [scored], hits, [index])
write_html(explanation, sys.argv[1])
EOF
fi
report="$(realpath "$report")"
shot="${2:-${report%.html}.png}"

flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run --hide-scrollbars
    --user-data-dir="$workdir/profile" --window-size=1280,900)
timeout 90 "$CHROMIUM" "${flags[@]}" --screenshot="$shot" "file://$report" >"$workdir/shot.log" 2>&1 || {
    cat "$workdir/shot.log" >&2
    exit 1
}
timeout 90 "$CHROMIUM" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$report" \
    >"$workdir/dom.html" 2>"$workdir/dom.log" || {
    cat "$workdir/dom.log" >&2
    exit 1
}

if [[ ! -s "$shot" ]]; then
    echo "no screenshot written to $shot" >&2
    exit 1
fi
if grep -q "Uncaught" "$workdir/dom.log"; then
    echo "the page's script failed:" >&2
    grep "Uncaught" "$workdir/dom.log" >&2
    exit 1
fi
units=$(grep -o 'class="u[ "]' "$workdir/dom.html" | wc -l)
if [[ "$units" -eq 0 ]]; then
    echo "rendered DOM has no scored units" >&2
    exit 1
fi
echo "rendered $report: $units units, screenshot $shot ($(stat -c %s "$shot") bytes)"
