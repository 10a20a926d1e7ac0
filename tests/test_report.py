"""Benchmark reporting: README sections per benchmark, provenance lines, and plots from result files."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import plots
from benchmarks.report import markers, provenance_line, run_metadata, update_readme_section


def test_sections_coexist_and_are_replaced_independently(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# P\n", encoding="utf-8")
    update_readme_section(readme, "quality table", "quality")
    update_readme_section(readme, "perf table", "perf")
    update_readme_section(readme, "new perf table", "perf")
    text = readme.read_text(encoding="utf-8")
    q0, q1 = markers("quality")
    p0, p1 = markers("perf")
    assert f"{q0}\nquality table\n{q1}" in text and f"{p0}\nnew perf table\n{p1}" in text
    assert "## Retrieval quality" in text and "## Speed and memory" in text and text.count(p0) == 1


def test_provenance_names_date_commit_machine_and_device() -> None:
    meta = run_metadata()
    assert {"date", "commit", "machine", "versions"} <= set(meta) and meta["commit"]
    line = provenance_line(meta, "cuda")
    assert meta["date"] in line and meta["commit"] in line and meta["machine"] in line and "`cuda`" in line


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def test_plots_from_result_files(tmp_path: Path) -> None:
    meta = {"date": "2026-01-01", "commit": "abc1234", "machine": "test box", "device": "cpu"}
    perf_rows = [
        {"method": m, "tokens": n, "seconds": s * n / 1000, "peak_mb": s * n / 10}
        for n in (1000, 2000)
        for m, s in (("bare_prefill", 1.0), ("first_query", 0.8), ("next_query", 0.05), ("dense", 0.1))
    ]
    _write(tmp_path / "perf.json", {"meta": meta, "rows": perf_rows})
    needle_rows = [
        {"method": m, "prompt_tokens": n, "seconds": n / 100, "peak_mb": 200.0}
        for n in (8000, 32000)
        for m in ("cascade", "streaming")
    ]
    _write(tmp_path / "cascade_needle.json", {"meta": meta, "rows": needle_rows})
    quality_rows = [
        {"task": "overall", "words": w, "method": m, "ndcg@10": 0.5} for w in (1500, 6000) for m in ("bm25", "dense")
    ]
    _write(tmp_path / "quality.json", {"meta": meta, "results": quality_rows})
    out = tmp_path / "docs"
    assert plots.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    for name in plots.PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "![memory vs length](docs/memory_vs_length.png)" in plots.readme_block()


def test_plots_leave_out_missing_results(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    assert plots.main(["--results", str(tmp_path), "--out", str(out)]) == 0  # empty axes, still written
    assert (out / "memory_vs_length.png").is_file() and not (out / "quality_vs_length.png").exists()


def test_perf_table_shows_time_memory_and_ratios_of_every_method() -> None:
    from benchmarks.perf import table

    attnret = {"first_query_s": 2.0, "analysis_s": 0.4, "next_query_s": 0.2, "queries_50_s": 10.0, "grown_s": 0.1}
    attnret["queries_50_many_s"] = 6.0
    rows = [
        {"method": "bare_prefill", "seconds": 4.0, "peak_mb": 500},
        {"method": "attnret", "seconds": 2.0, "peak_mb": 300, "kept_mb": 0.0, **attnret},
        {"method": "dense", "seconds": 1.0, "peak_mb": 31, "queries_50_s": 1.5},
    ]
    rows = [{**r, "tokens": 1759, "target": 1500} for r in rows]
    header, rule, line = table(rows).splitlines()
    names, values = ([c.strip() for c in row.split("|")[1:-1]] for row in (header, line))
    cells = dict(zip(names, values, strict=True))
    assert rule.count("---") == len(cells) == 19
    assert cells["next/first"] == "0.100" and cells["first/bare"] == "0.500" and cells["50/first"] == "5.000"
    assert cells["first query s (analysis s)"] == "2.00 (0.40)" and cells["queries/s"] == "5.00"
    assert cells["grown/first"] == "0.050" and cells["attnret peak MB"] == "300"
    assert cells["50 in one call s"] == "6.00" and cells["50 in one call/first"] == "3.000"
    assert cells["dense s (50)"] == "1.000 (1.50)"
    assert cells["naive eager peak MB"] == "—" and cells["bm25 s (50)"] == "— (—)"  # not measured: a dash, not a zero
