"""The model tables of `benchmarks.models` read the result files they name (quick tier: no model)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.models import SideBySide, side_by_side_rows, side_by_side_table


def _quality(path: Path, rows: list[tuple[str, int, str, float, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [{"task": t, "words": w, "method": m, "ndcg@10": v, "n": n} for t, w, m, v, n in rows]
    path.write_text(json.dumps({"results": results}), encoding="utf-8")


def test_side_by_side_reads_each_set_and_the_last_models_baselines(tmp_path: Path) -> None:
    _quality(
        tmp_path / "models/q_big.json",
        [
            ("overall", 1500, "qr-heads", 0.61, 40),
            ("overall", 1500, "fused+entities", 0.72, 40),
            ("overall", 1500, "bm25", 0.60, 40),
            ("overall", 1500, "dense", 0.65, 40),
            ("qmsum", 0, "qr-heads", 0.41, 22),
            ("qmsum", 0, "fused+entities", 0.45, 22),
            ("qmsum", 0, "bm25", 0.40, 22),
            ("qmsum", 0, "dense", 0.39, 22),
        ],
    )
    _quality(
        tmp_path / "q_small.json", [("overall", 1500, "qr-heads", 0.5, 40), ("overall", 1500, "attention", 0.3, 40)]
    )
    rerank = {
        "summary": [
            {
                "setting": "top20",
                "metrics": {
                    m: {"ndcg@10": v}
                    for m, v in {"attention": 0.8, "attnret": 0.9, "bm25": 0.82, "dense": 0.85}.items()
                },
            }
        ]
    }
    (tmp_path / "models/r.json").write_text(json.dumps(rerank), encoding="utf-8")
    timings = [{"setting": "default", "first_query_s": 9.0, "peak_rss_gb": 2.0}]
    timings.append({"setting": "int8", "first_query_s": 6.1, "peak_rss_gb": 1.4})
    (tmp_path / "s.json").write_text(json.dumps({"results": timings}), encoding="utf-8")
    models = (
        SideBySide("small", "q_small.json", "missing.json", None, "missing.json", settings="s.json", setting="int8"),
        SideBySide("big", "models/q_big.json", "models/q_big.json", None, "models/r.json", all_heads="q_small.json"),
    )
    baseline, small, big = side_by_side_rows(tmp_path, models)
    skip = SideBySide("skip", "models/q_big.json", "models/q_big.json", None, "models/r.json", real_skip=("qr-heads",))
    assert side_by_side_rows(tmp_path, (skip,))[1][1:5] == ["– / 0.610 / 0.720", "–", "–", "– / – / 0.450"]
    assert baseline == ["better of BM25 / MiniLM", "0.650 (n = 40)", "–", "–", "0.400 (n = 22)", "0.850 (n = 20)", ""]
    assert small == ["small", "0.300 / 0.500 / –", "–", "–", "–", "–", "6.1 s / 1.4 GB"]
    assert big == ["big", "0.300 / 0.610 / 0.720", "–", "–", "– / 0.410 / 0.450", "0.800 / 0.900", "–"]


def test_side_by_side_table_of_the_shipped_results_names_every_model() -> None:
    table = side_by_side_table()
    for name in ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        assert name in table
    assert "0.795 / 0.807" in table  # the first 1.5B head set's COVID-QA cells (quality_qwen1.5b_by_name.json)
    assert "0.808 / – / 0.846" in table  # the default (quality_qwen1.5b_whole_heads.json, its qr-heads blanked)
