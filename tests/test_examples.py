"""The example pipelines run offline end to end and retrieve both facts the answer needs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import pytest
from haystack import Pipeline
from haystack.core.errors import DeserializationError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REPORT = (EXAMPLES / "data" / "calloway_venn_annual_report.txt").read_text(encoding="utf-8")
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
# The answer (Pellingford) needs both: fact A names who built the prototype, fact B, ~1,200 words
# later, says where that group works, and shares no content word with the question.
FACT_A = "The first working prototype of the Kestrel seismometer was built over the winter by the instrument group"
FACT_B = "Odile Brannigan's group works from a converted boathouse on the harbour quay at Pellingford."


def _load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_story_facts_are_far_apart_and_fact_b_shares_no_word_with_the_question() -> None:
    stop = {"the", "in", "was", "a", "at", "on", "which", "from"}
    assert REPORT.index(FACT_B) - REPORT.index(FACT_A) > 5000
    assert 3000 <= len(REPORT.split()) <= 6000
    question_words = {w.strip("?").lower() for w in QUESTION.split()} - stop
    fact_words = {w.strip(".'s").lower() for w in FACT_B.split()} - stop
    assert not question_words & fact_words


def test_haystack_yaml_needs_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", raising=False)
    module = _load("haystack_pipeline")
    with pytest.raises(DeserializationError):
        Pipeline.loads(module.PIPELINE_YAML.read_text(encoding="utf-8"))
    pipeline = module.load_pipeline()
    assert list(pipeline.graph.nodes) == [
        "retriever",
        "attention_ranker",
        "lost_in_the_middle",
        "prompt_builder",
        "generator",
        "answer_builder",
    ]


def test_haystack_long_units_keep_both_facts_together() -> None:
    module = _load("haystack_pipeline")
    units = module.long_units(REPORT)
    assert 2 <= len(units) <= 6
    assert any(FACT_A in u.content and FACT_B in u.content for u in units)


def _assert_both_facts(result: dict) -> None:
    print(f"\nQ: {result['question']}\nA: {result['answer']}")
    for span in result["spans"]:
        assert REPORT[span["start"] : span["end"]] == span["text"]
        print(f"  [{span['n']}] {span['reasons']} {span['text']}")
    texts = [span["text"] for span in result["spans"]]
    assert any(FACT_A in t for t in texts), "fact A (the builder) was not retrieved"
    assert any(FACT_B in t for t in texts), "fact B (where the builder works) was not retrieved"
    assert isinstance(result["answer"], str) and result["answer"]


@pytest.mark.integration
@pytest.mark.slow
def test_haystack_example_retrieves_both_facts() -> None:
    _assert_both_facts(_load("haystack_pipeline").answer(QUESTION))


@pytest.mark.integration
@pytest.mark.slow
def test_llamaindex_example_retrieves_both_facts() -> None:
    _assert_both_facts(_load("llamaindex_query_engine").answer(QUESTION))


@pytest.mark.integration
def test_llamaindex_vector_index_example_reranks_the_builder_first() -> None:
    """The README one-liner offline: a VectorStoreIndex on the bundled MiniLM, then AttentionRerank (no LLM)."""
    module = _load("llamaindex_vector_index")
    index = module.build_index()
    chunks = [hit.node.get_content() for hit in index.as_retriever(similarity_top_k=3).retrieve(QUESTION)]
    assert FACT_A not in chunks[0], "the vector search alone already ranks the builder's chunk first"
    sentences = module.retrieve(QUESTION, module.build_query_engine(index))["sentences"]
    for item in sentences:
        assert REPORT[item["start"] : item["end"]] == item["text"]
        print(f"  [{item['n']}] {item['score']:.3f} {item['reasons']} {item['text']}")
    assert len(sentences) == 5
    assert FACT_A in sentences[0]["text"], "the builder's sentence is not first"
    assert any(FACT_B in item["text"] for item in sentences), "where the builder works was not retrieved"
    scores = [item["score"] for item in sentences]
    assert scores == sorted(scores, reverse=True)
