"""Candidate-set levers replayed without the model: view weights, the recency-bias constant and the attention scale.

    python -m benchmarks.candidate_levers benchmarks/results/models/calibration_features_qwen1.5b.json

Reads a ``benchmarks.calibrate collect`` file (every candidate's raw views and gold label, HotpotQA BM25 sets) and
rebuilds each candidate's fused score under other settings: the views' [0, 1] scales and weights are the product's
(`tasks.candidates.ViewScales`, the weighted mean), and the attention view's recency correction is undone and redone
with another constant from the candidate's position in the canonical prompt order (`prompt_order` of the same
first-stage relevance the scorer uses), its centre approximated by characters instead of tokens. The shipped
settings reproduce the collected fused scores' nDCG@10 exactly (printed as a check). Settings are compared on the
held-in questions (0-19: top 10, top 20, own 10); the held-out rows are what ``benchmarks.rerank`` reports.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.rerank import BM25Corpus, load, metrics
from shared_core.evaluation import resolve_task_path
from shared_core.tasks.candidates import (
    POSITION_BIAS,
    Candidate,
    ViewScales,
    fuse_scaled,
    join,
    order_relevance,
    prompt_order,
)

SETTINGS = ("top10", "top20", "own")
"""Single-window sets (HotpotQA paragraphs, at most ~3k tokens) whose prompt positions can be rebuilt."""
SHIPPED = {"weights": (1.0, 0.5, 2.0), "bias": POSITION_BIAS, "scale": 2.0}


def with_positions(rows: Sequence[dict[str, Any]], data: str | None = None) -> list[dict[str, Any]]:
    """The rows of `SETTINGS`, each with its candidates' relative prompt positions and bias-free attention."""
    corpus, queries = load(Path(data) if data else resolve_task_path("hotpotqa"))
    bm25 = BM25Corpus(corpus)
    out = []
    for row in rows:
        if row["setting"] not in SETTINGS:
            continue
        paragraphs, _ = bm25.candidates(queries[row["question"]], row["setting"])
        views = row["views"]
        relevance = order_relevance(np.asarray(views["lexical_raw"]), np.asarray(views["dense_raw"]))
        order = prompt_order([Candidate(text=p.text, id=p.title) for p in paragraphs], relevance)
        joined, spans = join([paragraphs[i].text for i in order])
        position = np.zeros(len(paragraphs))
        for k, i in enumerate(order):
            position[i] = (spans[k][0] + spans[k][1]) / (2.0 * len(joined))
        unbiased = np.asarray(views["attention_raw"]) * np.exp(POSITION_BIAS * (position - 0.5))
        out.append({**row, "position": position, "unbiased": unbiased})
    return out


def fused(row: dict[str, Any], weights: Sequence[float], bias: float, scale: float) -> np.ndarray:
    """The candidates' fused score under one setting (the product's scales and weighted mean)."""
    multiples = row["unbiased"] * np.exp(-bias * (row["position"] - 0.5))
    attention = ViewScales(attention_scale=scale).attention(multiples)
    views = {
        "attention": attention,
        "dense": np.asarray(row["views"]["dense"]),
        "lexical": np.asarray(row["views"]["lexical"]),
    }
    return fuse_scaled(views, dict(zip(views, weights, strict=True)))


def ndcg(rows: Sequence[dict[str, Any]], split: str, setting: str, **options: Any) -> float:
    """Mean nDCG@10 of one split and setting (gold outside the candidates counts as missed, as in the benchmark)."""
    values = [
        metrics(fused(r, **{**SHIPPED, **options}), [bool(x) for x in r["relevant"]], r["n_gold"])["ndcg@10"]
        for r in rows
        if r["split"] == split and r["setting"] == setting
    ]
    return float(np.mean(values))


def levers() -> list[tuple[str, dict[str, Any]]]:
    """The settings replayed: the shipped one, a weight grid, other recency constants and attention scales."""
    out: list[tuple[str, dict[str, Any]]] = [("shipped (a1/d0.5/l2, bias 1.6, scale 2)", {})]
    for d, lex in itertools.product((0.0, 0.25, 0.5, 1.0, 2.0), (0.0, 1.0, 2.0, 3.0)):
        if (d, lex) != (0.5, 2.0):
            out.append((f"weights a1/d{d:g}/l{lex:g}", {"weights": (1.0, d, lex)}))
    out += [(f"recency bias {b:g}", {"bias": b}) for b in (0.0, 0.8, 1.2, 2.0, 2.4)]
    out += [(f"attention scale {s:g}", {"scale": s}) for s in (1.0, 4.0, 8.0)]
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per setting, held-in nDCG@10 per set and their mean, and held-out top 20."""
    head = "| setting | held-in " + " | held-in ".join(SETTINGS) + " | held-in mean | held-out top20 |"
    lines = [head, "|---|" + "---:|" * (len(SETTINGS) + 2)]
    results = []
    for name, options in levers():
        held_in = [ndcg(rows, "held-in", s, **options) for s in SETTINGS]
        results.append((name, held_in, float(np.mean(held_in)), ndcg(rows, "held-out", "top20", **options)))
    shipped, *others = results
    for name, held_in, mean, out in [shipped, *sorted(others, key=lambda r: -r[2])]:
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in held_in) + f" | {mean:.3f} | {out:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the check and the lever table of one collected features file."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.candidate_levers", description=__doc__.splitlines()[0])
    p.add_argument("features", help="a benchmarks.calibrate collect JSON")
    p.add_argument("--data", default=None, help="HotpotQA JSON (default: the shared data's hotpotqa file)")
    args = p.parse_args(argv)
    rows = with_positions(json.loads(Path(args.features).read_text(encoding="utf-8"))["rows"], args.data)
    collected = [
        metrics(np.asarray(r["views"]["fused"]), [bool(x) for x in r["relevant"]], r["n_gold"])["ndcg@10"]
        for r in rows
        if r["split"] == "held-out" and r["setting"] == "top20"
    ]
    check = f"check: collected fused {np.mean(collected):.4f}, replayed {ndcg(rows, 'held-out', 'top20'):.4f}"
    sys.stdout.write(check + " (held-out top 20)\n\n" + table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
