"""The attnret command line, run in-process on real files with the real default model."""

from __future__ import annotations

import json

from shared_core.cli import main

DOC = "Mary got the milk there. John moved to the bedroom.\n\nDaniel went to the office. Bill picked up the apple."


def test_search_prints_json_hits(tmp_path, capsys, retriever) -> None:
    f = tmp_path / "doc.txt"
    f.write_text(DOC)
    assert main(["search", "--file", str(f), "--query", "Who picked up the apple?", "--top-k", "2", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)  # one shape for --query and --queries
    assert result["query"] == "Who picked up the apple?"
    hits = result["hits"]
    assert len(hits) == 2
    assert hits[0]["text"] == "Bill picked up the apple."
    assert DOC[hits[0]["start"] : hits[0]["end"]] == hits[0]["text"]
    assert hits[0]["document_id"] == str(f)


def test_search_text_output_and_config(tmp_path, capsys, retriever) -> None:
    f = tmp_path / "doc.txt"
    f.write_text(DOC)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("units:\n  granularity: paragraph\n")
    assert main(["search", "--file", str(f), "--query", "Where is the milk?", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "  1. [" in out and "Mary got the milk there. John moved to the bedroom." in out


def test_search_errors_are_reported_not_raised(tmp_path, capsys) -> None:
    f = tmp_path / "empty.txt"
    f.write_text("   ")
    assert main(["search", "--file", str(f), "--query", "anything"]) == 2
    assert "document 0 is empty" in capsys.readouterr().err
