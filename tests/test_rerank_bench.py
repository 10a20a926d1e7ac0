"""The reranking benchmark: data preparation, metrics, and a tiny real run (structure and ranges, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.rerank import METHODS, BM25Corpus, load, main, metrics


def test_metrics_count_gold_outside_the_candidates_as_missed() -> None:
    perfect = metrics([3.0, 2.0, 1.0], [True, True, False], 2)
    assert perfect == {"ndcg@10": pytest.approx(1.0), "recall@2": 1.0, "recall@5": 1.0}
    half = metrics([3.0, 2.0, 1.0], [True, False, False], 2)  # the second gold paragraph was not retrieved
    assert half["recall@5"] == 0.5 and half["ndcg@10"] < 1.0
    tied = metrics([1.0, 1.0], [True, False], 1)  # ties count as expected value, never by position
    assert tied["recall@2"] == 1.0 and 0.5 < tied["ndcg@10"] < 1.0


def test_corpus_and_candidates(shared_data: Path) -> None:
    corpus, queries = load(shared_data / "hotpotqa" / "hotpot_dev_distractor_100.json")
    assert len(queries) == 100 and len({p.title for p in corpus}) == len(corpus)
    assert all(len(q.gold) == 2 and q.gold <= set(q.own) for q in queries)
    bm25 = BM25Corpus(corpus)
    paras, scores = bm25.candidates(queries[0], "top20")
    assert len(paras) == 20 and np.all(np.diff(scores) <= 0)
    own, _ = bm25.candidates(queries[0], "own")
    assert [p.title for p in own] == list(queries[0].own)


@pytest.mark.integration
def test_quick_run_writes_results_in_range(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rerank.json"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n", encoding="utf-8")
    config = tmp_path / "config.yaml"  # --config reaches the retriever: its heads are the ones read
    config.write_text("attention:\n  heads: [17-4, 18-6, 15-6]\n", encoding="utf-8")
    args = ["--quick", "--n", "1", "--config", str(config), "--out", str(out), "--readme", str(readme)]
    assert main(args) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["meta"]["config"] == str(config) and data["meta"]["heads"] == "config"
    assert data["meta"]["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [s["setting"] for s in data["summary"]] == ["top10", "own"]
    for s in data["summary"]:
        assert s["questions"] == 1 and s["seconds"] > 0 and s["prefill_seconds"] > 0 and s["tokens"] > 100
        for method in METHODS:
            assert all(0.0 <= v <= 1.0 for v in s["metrics"][method].values())
    assert "<!-- rerank:start -->" in readme.read_text(encoding="utf-8")
