"""The quality benchmark: README-section rewriting, metric plumbing, real-set rows and a quick run over both real
sets (the built sets' quick run: test_benchmarks_all)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from benchmarks.baselines import bm25_scores  # the repository root is on pytest's pythonpath (pyproject)
from benchmarks.quality import (
    METHODS,
    README_END,
    README_START,
    REAL_OVERALL,
    REAL_WORDS,
    Prepared,
    main,
    markdown_table,
    merge_results,
    prepare,
    question_metrics,
    readme_section,
    update_readme_section,
    with_overall,
)
from benchmarks.tune_fusion import load_cases, replay
from shared_core.config import EntitiesConfig, FusionConfig, RetrieverConfig
from shared_core.evaluation import GoldSpan, LabelledExample, tie_aware_metrics


def test_readme_section_added_when_missing(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\nIntro.\n", encoding="utf-8")
    update_readme_section(readme, "| a | b |")
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Project\n\nIntro.\n\n## Retrieval quality\n\n")
    assert f"{README_START}\n| a | b |\n{README_END}" in text


def test_readme_section_replaced_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before = f"# P\n\nkeep me\n\n{README_START}\nold table\n{README_END}\n\n## After\n\nalso kept\n"
    readme.write_text(before, encoding="utf-8")
    update_readme_section(readme, "new table\n")
    text = readme.read_text(encoding="utf-8")
    assert text == f"# P\n\nkeep me\n\n{README_START}\nnew table\n{README_END}\n\n## After\n\nalso kept\n"
    update_readme_section(readme, "newer")  # idempotent structure: one section only
    assert readme.read_text(encoding="utf-8").count(README_START) == 1


def test_readme_created_when_absent(tmp_path: Path) -> None:
    readme = tmp_path / "NEW.md"
    update_readme_section(readme, "body")
    assert readme.read_text(encoding="utf-8") == f"## Retrieval quality\n\n{README_START}\nbody\n{README_END}\n"


def test_prepare_maps_gold_and_lexical_gap_across_documents() -> None:
    docs = ["Mary got the milk there. Mary went to the garden.", "John went home. The milk is sour."]
    gold = [GoldSpan(0, 0, 24), GoldSpan(0, 25, 49), GoldSpan(1, 16, 33)]
    example = LabelledExample("x", "Where is the milk?", docs, gold, "t")

    def split(doc: str) -> list[tuple[int, int]]:
        out, start = [], 0
        for i, ch in enumerate(doc):
            if ch == ".":
                out.append((start, i + 1))
                start = i + 2
        return out

    prepared = prepare(example, split)
    assert prepared.spans == [(0, 0, 24), (0, 25, 49), (1, 0, 15), (1, 16, 33)]
    assert prepared.texts[3] == "The milk is sour."
    assert prepared.gold == {0, 1, 3}
    assert prepared.nooverlap_gold == {1}  # "Mary went to the garden." shares no content word with the query
    metrics = question_metrics(np.array([0.9, 0.1, 0.5, 0.8]), prepared)
    assert metrics["recall@5"] == 1.0
    assert metrics["nooverlap_recall@10"] == 1.0
    assert 0 < metrics["ndcg@10"] < 1


def test_question_metrics_without_lexical_gap() -> None:
    example = LabelledExample("x", "milk", ["milk. other."], [GoldSpan(0, 0, 5)], "t")
    prepared = Prepared(example, [(0, 0, 5), (0, 6, 12)], ["milk.", "other."], {0}, set())
    metrics = question_metrics(bm25_scores("milk", prepared.texts), prepared)
    assert metrics == {"ndcg@10": 1.0, "recall@5": 1.0, "recall@10": 1.0, "hit@1": 1.0}


def test_method_registry() -> None:
    assert {"bm25", "dense", "attention", "attention-nocal", "qr-heads", "fused", "fused+entities"} <= set(METHODS)
    nocal = METHODS["attention-nocal"].override
    assert isinstance(nocal, dict) and nocal["attention"] == {"heads": "all", "calibration": False}
    assert nocal["dense"] == nocal["lexical"] == nocal["entities"] == {"enabled": False}  # attention alone
    assert METHODS["fused+entities"].override == {}  # the default configuration


def test_qr_heads_reads_the_configs_own_head_set() -> None:
    override = METHODS["qr-heads"].override
    assert callable(override)

    def heads_of(heads: Any) -> Any:
        retriever = SimpleNamespace(config=RetrieverConfig.coerce({"attention": {"heads": heads}}))
        out = override(retriever)
        assert out["dense"] == out["lexical"] == out["entities"] == {"enabled": False}  # attention alone
        return out["attention"]["heads"]

    assert heads_of("auto") == "auto"  # the default config: the model's shipped set
    assert heads_of("benchmarks/results/training/heads_qwen1.5b_trained.yaml").endswith("heads_qwen1.5b_trained.yaml")
    assert heads_of(["14-3", "15-0"]) == ["14-3", "15-0"]
    assert heads_of("all") == "auto"  # every head is the `attention` method's row


def test_bm25_scores_rank_lexical_match_first() -> None:
    scores = bm25_scores("Where is the milk?", ["John went home.", "Mary got the milk there.", "Nothing here."])
    assert int(np.argmax(scores)) == 1 and scores[0] == 0.0
    assert bm25_scores("the", ["a b", "c d"]).tolist() == [0.0, 0.0]  # only stop words
    with pytest.raises(TypeError):
        bm25_scores("q", "not a list")


def test_markdown_table_marks_best() -> None:
    row = {"n": 2, "recall@5": 0.5, "recall@10": 1.0, "nooverlap_recall@10": None, "n_nooverlap": 0}
    results = {
        "results": [
            {"task": "t", "words": 100, "method": "a", "ndcg@10": 0.25, "sec_per_doc": 0.1, **row},
            {"task": "t", "words": 100, "method": "b", "ndcg@10": 0.75, "sec_per_doc": 0.2, **row},
        ]
    }
    table = markdown_table(results)
    assert "| t | 100 | 2 | 0.250 | **0.750** |" in table
    assert "| t | 100 | a | 2 | 0.250 | 0.500 | 1.000 | – | – (0) | 0.10 |" in table  # no hit@1 in old rows


def test_tied_scores_get_the_expected_metric_of_random_tie_breaking() -> None:
    example = LabelledExample("x", "q", ["a. b. c. d."], [GoldSpan(0, 0, 2)], "t")
    prepared = Prepared(example, [(0, 0, 2), (0, 3, 5), (0, 6, 8), (0, 9, 11)], ["a.", "b.", "c.", "d."], {0}, set())
    tied = question_metrics(np.zeros(4), prepared)
    expected = np.mean([1 / np.log2(r + 1) for r in range(1, 5)])  # gold equally likely at ranks 1..4
    assert abs(tied["ndcg@10"] - expected) < 1e-12 and tied["recall@5"] == 1.0
    assert question_metrics(np.array([1.0, 0.0, 0.0, 0.0]), prepared)["ndcg@10"] == 1.0  # ties below the gold


def test_merge_results_adds_lengths_and_keeps_the_provenance_of_every_run_still_shown() -> None:
    def run(words: int, date: str, methods: tuple[str, ...]) -> dict:
        rows = [
            {
                "task": t,
                "words": words,
                "method": m,
                "n": 1,
                "ndcg@10": 0.5,
                "recall@5": 0.5,
                "recall@10": 0.5,
                "nooverlap_recall@10": None,
                "n_nooverlap": 0,
                "sec_per_doc": 1.0,
            }
            for t in ("babi-qa1", "overall")
            for m in methods
        ]
        questions = [{"task": "babi-qa1", "words": words, "method": m} for m in methods]
        meta = {"date": date, "commit": "abc", "machine": "box"}
        settings = {"command": f"cmd {words}", "tasks": ["babi-qa1"], "words": [words], "methods": list(methods)}
        return {"meta": meta, "settings": settings, "results": rows, "per_question": questions}

    merged = merge_results(run(1500, "d1", ("bm25", "attention")), run(6000, "d2", ("bm25",)))
    assert {(r["words"], r["method"]) for r in merged["results"]} == {
        (1500, "bm25"),
        (1500, "attention"),
        (6000, "bm25"),
    }
    assert [r["meta"]["date"] for r in merged["runs"]] == ["d1", "d2"]
    again = merge_results(merged, run(6000, "d3", ("bm25",)))  # a rerun of one length replaces it
    assert sum(r["words"] == 6000 for r in again["results"]) == 2 and len(again["per_question"]) == 3
    assert [r["meta"]["date"] for r in again["runs"]] == ["d1", "d3"]  # d2's rows are all replaced: its line goes
    partly = merge_results(again, run(1500, "d4", ("attention",)))  # d1 still gives the 1500-word bm25 rows
    assert [r["meta"]["date"] for r in partly["runs"]] == ["d1", "d3", "d4"]
    text = readme_section(again)
    assert "Reproduce: `cmd 1500`" in text and "Reproduce: `cmd 6000`" in text and "| babi-qa1 | 6000 | 1 |" in text
    assert "–" in text  # attention was not run at 6000 words


def test_hit_at_1_is_the_expected_value_over_tie_orders() -> None:
    example = LabelledExample("x", "q", ["a. b. c. d."], [GoldSpan(0, 0, 2)], "t")
    prepared = Prepared(example, [(0, 0, 2), (0, 3, 5), (0, 6, 8), (0, 9, 11)], ["a.", "b.", "c.", "d."], {0}, set())
    assert question_metrics(np.array([1.0, 0.0, 0.0, 0.0]), prepared)["hit@1"] == 1.0
    assert question_metrics(np.array([0.0, 1.0, 0.0, 0.0]), prepared)["hit@1"] == 0.0
    assert question_metrics(np.array([1.0, 1.0, 1.0, 0.0]), prepared)["hit@1"] == pytest.approx(1 / 3)  # 3-way tie
    assert tie_aware_metrics(np.array([1.0, 1.0, 1.0, 0.0]), {0, 3}, (), (), (3,))["hit@3"] == 1.0
    two = tie_aware_metrics(np.array([1.0, 1.0, 1.0, 1.0]), {0, 1}, (), (), (1, 2))
    assert two["hit@1"] == pytest.approx(0.5) and two["hit@2"] == pytest.approx(1 - 1 / 6)  # C(2,2)/C(4,2) miss


def _real_run(date: str, task: str, methods: tuple[str, ...], ndcg: float) -> dict:
    rows = [
        {
            "task": task,
            "words": REAL_WORDS,
            "method": m,
            "n": 2,
            "ndcg@10": ndcg,
            "recall@5": 0.5,
            "recall@10": 0.5,
            "hit@1": 0.5,
            "nooverlap_recall@10": None,
            "n_nooverlap": 0,
            "sec_per_doc": 1.0,
            "doc_words": 3000.0,
        }
        for m in methods
    ]
    meta = {"date": date, "commit": "abc", "machine": "box"}
    settings = {"command": f"cmd {task}", "tasks": [task], "words": [1500], "methods": list(methods)}
    questions = [{"task": task, "words": REAL_WORDS, "method": m} for m in methods]
    return {"meta": meta, "settings": settings, "results": with_overall(rows), "per_question": questions}


def test_real_rows_merge_and_their_overall_is_recomputed() -> None:
    covid = _real_run("d1", "covidqa", ("bm25", "fused+entities"), 0.4)
    merged = merge_results(covid, _real_run("d2", "qmsum", ("bm25",), 0.8))
    overall = {r["method"]: r for r in merged["results"] if r["task"] == REAL_OVERALL}
    assert overall["bm25"]["ndcg@10"] == pytest.approx(0.6) and overall["bm25"]["n"] == 4  # macro over both sets
    assert overall["fused+entities"]["ndcg@10"] == pytest.approx(0.4) and overall["fused+entities"]["n"] == 2
    assert [r["meta"]["date"] for r in merged["runs"]] == ["d1", "d2"]
    again = merge_results(merged, _real_run("d3", "covidqa", ("bm25", "fused+entities"), 0.2))
    assert [r["meta"]["date"] for r in again["runs"]] == ["d2", "d3"]  # the whole covidqa run was replaced
    text = markdown_table(again)
    assert "| covidqa | whole (3,000) | 2 |" in text and "| overall-real | whole (3,000) | 4 |" in text
    assert "| covidqa | whole (3,000) | bm25 | 2 | 0.200 | 0.500 | 0.500 | 0.500 | – (0) | 1.00 |" in text


@pytest.mark.slow
def test_quick_run_covers_both_real_sets(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    views = tmp_path / "views.pkl"
    argv = ["--quick", "--tasks", "covidqa,qmsum", "--real-max-words", "300", "--methods", "bm25,dense,fused+entities"]
    assert main([*argv, "--out", str(out), "--views-out", str(views), "--no-progress"]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    rows = {(r["task"], r["method"]): r for r in results["results"]}
    assert set(rows) == {
        (t, m) for t in ("covidqa", "qmsum", REAL_OVERALL) for m in ("bm25", "dense", "fused+entities")
    }
    for (task, _), r in rows.items():
        assert r["words"] == REAL_WORDS and r["n"] == (4 if task == REAL_OVERALL else 2)
        assert all(0.0 <= r[k] <= 1.0 for k in ("ndcg@10", "recall@5", "recall@10", "hit@1"))
        assert 250 <= r["doc_words"] < 1500  # cut after the paragraph/turn reaching 300 words
    questions = [q for q in results["per_question"] if q["method"] == "fused+entities"]
    assert len({q["id"] for q in questions}) == 4 and all(q["units"] > 1 for q in questions)
    head_sets = results["settings"]["head_sets"]  # the head set each retriever method read is recorded
    assert set(head_sets) == {"fused+entities"} and head_sets["fused+entities"].endswith("smollm2-135m-instruct.yaml")
    cases = load_cases(views)  # the default config's views, ready for tune_fusion to replay
    assert len(cases) == 4 and {c.task for c in cases} == {"covidqa", "qmsum"}
    default = rows[("covidqa", "fused+entities")]["ndcg@10"]
    replayed = np.mean([replay(c, FusionConfig(), EntitiesConfig()) for c in cases if c.task == "covidqa"])
    assert replayed == pytest.approx(default, abs=1e-9)  # replaying the default gives the benchmark's figure


def test_agreement_weights_lower_the_view_that_disagrees_and_keep_the_default_fixed() -> None:
    from shared_core.document import Unit
    from shared_core.views.fusion import adaptive_weights
    from shared_core.views.ranking import rank_units

    rising = np.arange(20, dtype=np.float64)
    views = {"attention": rising[::-1].copy(), "dense": rising.copy(), "lexical": rising.copy()}
    fixed = FusionConfig()
    assert adaptive_weights(views, fixed) == fixed.view_weights  # the shipped default: fixed weights
    agreement = FusionConfig(adaptive="agreement", adaptive_strength=1.0, adaptive_k=5)
    weights = adaptive_weights(views, agreement)
    assert weights["attention"] < fixed.view_weights["attention"] * 0.01  # its top 5 is nobody else's
    assert weights["dense"] == pytest.approx(fixed.view_weights["dense"] * 1.5)  # agree 0.5 / mean 1/3
    assert adaptive_weights(views, agreement.model_copy(update={"adaptive_strength": 0.0})) == fixed.view_weights
    before = {k: v.copy() for k, v in views.items()}
    units = [Unit(index=i, start=i, end=i + 1, text="x") for i in range(20)]
    ranked = rank_units(views, units, None, agreement, EntitiesConfig(enabled=False))
    assert int(np.argmax(ranked.fused)) == 19  # dense and lexical win the vote
    assert all(np.array_equal(views[k], before[k]) for k in views)  # inputs untouched


def test_attention_levers_replay_the_default_exactly(shared_data: Path, tmp_path: Path) -> None:
    """The lever script rebuilds the default attention view from the all-heads capture: the replay must match the
    default retriever's own view and its fused ranking (else every lever's change would be measured off a shifted
    baseline)."""
    from benchmarks.attention_levers import main as levers_main

    out = tmp_path / "levers.json"
    argv = ["--tasks", "babi-qa1,covidqa", "--n", "1", "--words", "300", "--docs", "1", "--per-doc", "2"]
    assert levers_main([*argv, "--real-max-words", "covidqa=500", "--out", str(out)]) == 0
    run = json.loads(out.read_text(encoding="utf-8"))["runs"][0]
    assert run["replay_max_rel_diff"] < 1e-5
    assert {q["task"] for q in run["per_question"]} == {"babi-qa1", "covidqa"}
    for q in run["per_question"]:
        assert q["default"] == pytest.approx(q["fused+entities"])  # the replayed default is the benchmark's default
        assert q["levers"]["default heads"]["fused"] == pytest.approx(q["default"])
        assert {"second pass, top 1 appended, fused with the first", "all heads, layers 10-19"} <= set(q["levers"])
    assert set(run["summary"]) == {"babi-qa1", "covidqa"}
