"""`python -m benchmarks --quick`: every benchmark, the README sections and the plots, end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import grown_turn
from benchmarks.__main__ import main
from benchmarks.report import markers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_run_writes_results_readme_and_plots(shared_data: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# attnret\n\nIntro kept.\n", encoding="utf-8")
    results, docs = tmp_path / "results", tmp_path / "docs"
    assert main(["--quick", "--results", str(results), "--docs", str(docs), "--readme", str(readme)]) == 0

    quality = json.loads((results / "quality.json").read_text(encoding="utf-8"))
    assert {"date", "commit", "machine", "versions"} <= set(quality["meta"])
    rows = quality["results"]
    methods = {"bm25", "dense", "attention", "naive-attention", "qr-heads", "fused", "fused+entities"}
    assert {(r["task"], r["method"]) for r in rows} == {
        (t, m) for t in ("babi-qa2", "hotpotqa", "overall") for m in methods
    }
    for r in rows:
        assert r["n"] == (4 if r["task"] == "overall" else 2)
        assert all(0.0 <= r[k] <= 1.0 for k in ("ndcg@10", "recall@5", "recall@10"))
        assert r["sec_per_doc"] >= 0.0
    by_method = {(r["task"], r["method"]): r for r in rows}
    for task in ("babi-qa2", "hotpotqa"):  # the output_attentions reference gives the capture's rankings
        naive, fast = by_method[(task, "naive-attention")], by_method[(task, "attention")]
        assert naive["ndcg@10"] == pytest.approx(fast["ndcg@10"], abs=0.02)

    perf = json.loads((results / "perf.json").read_text(encoding="utf-8"))
    measured = {r["method"] for r in perf["rows"]}
    assert {"bare_prefill", "attnret", "naive_eager", "dense", "bm25"} <= measured
    assert all(r["seconds"] > 0 or r["method"] == "bm25" for r in perf["rows"])
    attnret = next(r for r in perf["rows"] if r["method"] == "attnret")
    # times are measured, not compared: on a loaded machine their order is noise (the ratios live in the benchmark)
    assert all(attnret[k] > 0 for k in ("analysis_s", "first_query_s", "queries_50_s"))
    # one read, one grown, and the other document of the 50-in-one-call figure
    assert attnret["stats"]["prefills"] == 3 and attnret["stats"]["calibration_passes"] == 3
    assert attnret["queries_50_many_s"] > 0

    needle = json.loads((results / "cascade_needle.json").read_text(encoding="utf-8"))
    assert {r["method"] for r in needle["rows"]} == {"full", "cascade", "cascade_end", "streaming", "truncate"}
    cascade = next(r for r in needle["rows"] if r["method"] == "cascade")
    assert cascade["scored_fraction"] == 1.0  # resident scoring scores every token
    assert needle["heads"] != "layers"  # the shipped QR-head set, as the retriever reads it

    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# attnret\n\nIntro kept.\n")
    for section in ("quality", "perf", "cascade", "plots"):
        start, end = markers(section)
        assert text.count(start) == 1 and text.index(start) < text.index(end)
    assert "commit `" in text and "Reproduce: `python -m benchmarks.perf --quick" in text
    for name in ("memory_vs_length.png", "time_vs_length.png", "quality_vs_length.png"):
        data = (docs / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"(docs/{name})" in text


def test_grown_turn_benchmark_resumes_inside_and_reads_fewer_tokens(tmp_path: Path) -> None:
    out = tmp_path / "grown.json"
    assert grown_turn.main(["--tokens", "1400", "--pairs", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {"date", "commit", "machine", "command"} <= set(result["meta"])
    (row,) = result["rows"]
    assert len(row["carried_s"]) == len(row["chunk_start_s"]) == 1 and row["first_s"] > 0
    assert 0 < row["carried_tokens_read"] < row["chunk_start_tokens_read"]  # the old last chunk is not read again
