"""The candidate-lever replay reproduces the collected fused scores before it changes anything (quick tier)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.candidate_levers import ndcg, with_positions
from benchmarks.rerank import metrics

FEATURES = Path(__file__).parents[1] / "benchmarks/results/models/calibration_features_qwen1.5b.json"


def test_shipped_settings_replay_the_collected_scores_and_a_lever_changes_them() -> None:
    rows = with_positions(json.loads(FEATURES.read_text(encoding="utf-8"))["rows"])
    assert {r["setting"] for r in rows} == {"top10", "top20", "own"}
    held_out = [r for r in rows if r["split"] == "held-out" and r["setting"] == "top20"]
    collected = np.mean(
        [
            metrics(np.asarray(r["views"]["fused"]), [bool(x) for x in r["relevant"]], r["n_gold"])["ndcg@10"]
            for r in held_out
        ]
    )
    assert ndcg(rows, "held-out", "top20") == collected
    assert ndcg(rows, "held-in", "top20", weights=(1.0, 0.0, 0.0)) != ndcg(rows, "held-in", "top20")
