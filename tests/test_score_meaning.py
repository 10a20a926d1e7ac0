"""What scores mean (issue #29), with the real default models: one-sentence documents in sentence mode, calibrated
candidate scores under a 0.5 cutoff, and the same text scoring the same under two ids."""

from __future__ import annotations

import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import pytest
from haystack import Document
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import NodeWithScore, TextNode

from haystack_attnret import AttentionRanker
from llamaindex_attnret import AttentionRerank
from shared_core import AttentionRetriever
from shared_core import Document as CoreDocument
from shared_core.tasks.candidates import Candidate

QUERY = "Where did Mary leave the brass key?"
KEY = "Mary left the brass key on the desk in the office."
SENTENCES = [
    "The lighthouse keeper painted the door green.",
    "Ships passed the harbour at dawn while gulls circled.",
    KEY,
    "John travelled to the garden where the roses were in bloom.",
    "The bakery on the corner sold warm bread every morning.",
]
UNRELATED = "The bakery on the corner sold warm bread every morning."
CAPITAL_QUERY = "What is the capital of France?"
CAPITAL = "Paris is the capital and largest city of France."


def _distinct_relevant_first(given: list[float | None]) -> None:
    """The first (relevant) result scores highest; every score is real (in (0, 1]) and distinct."""
    scores = [s for s in given if s is not None]
    assert len(scores) == len(given) and len(set(scores)) == len(scores), given
    assert scores[0] == max(scores) and all(0.0 < s <= 1.0 for s in scores), scores


@pytest.mark.integration
def test_core_retrieve_scores_one_sentence_documents(retriever: AttentionRetriever) -> None:
    for given in (SENTENCES, SENTENCES[::-1]):
        hits = retriever.retrieve(QUERY, [CoreDocument(text=t, id=f"d{i}") for i, t in enumerate(given)], top_k=5)
        assert len(hits) == 5 and hits[0].text == KEY
        _distinct_relevant_first([h.score for h in hits])


@pytest.mark.integration
def test_haystack_sentence_mode_scores_one_sentence_documents() -> None:
    ranker = AttentionRanker(granularity="sentence", top_k=5)
    out = ranker.run(query=QUERY, documents=[Document(content=t) for t in SENTENCES])["documents"]
    assert out[0].content == KEY
    _distinct_relevant_first([d.score for d in out])


@pytest.mark.integration
def test_llamaindex_sentence_mode_scores_one_sentence_nodes() -> None:
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=0.5) for i, t in enumerate(SENTENCES)]
    out = AttentionRerank(granularity="sentence", top_n=5).postprocess_nodes(nodes, query_str=QUERY)
    assert out[0].node.get_content() == KEY
    _distinct_relevant_first([n.score for n in out])


@pytest.mark.integration
def test_similarity_cutoff_half_keeps_the_answer_and_drops_the_unrelated() -> None:
    nodes = [
        NodeWithScore(node=TextNode(id_="bread", text=UNRELATED), score=0.9),
        NodeWithScore(node=TextNode(id_="paris", text=CAPITAL), score=0.4),
    ]
    ranked = AttentionRerank(top_n=2).postprocess_nodes(nodes, query_str=CAPITAL_QUERY)
    kept = SimilarityPostprocessor(similarity_cutoff=0.5).postprocess_nodes(ranked)
    assert [n.node.node_id for n in kept] == ["paris"], [(n.node.node_id, n.score) for n in ranked]


@pytest.mark.integration
def test_haystack_threshold_half_keeps_the_answer_and_drops_the_unrelated() -> None:
    docs = [Document(content=UNRELATED, score=0.9), Document(content=CAPITAL, score=0.4)]
    out = AttentionRanker(score_threshold=0.5).run(query=CAPITAL_QUERY, documents=docs)["documents"]
    assert [d.content for d in out] == [CAPITAL]
    assert out[0].score is not None and 0.5 <= out[0].score <= 1.0


@pytest.mark.integration
def test_the_same_text_under_two_ids_scores_the_same(retriever: AttentionRetriever) -> None:
    cs = [
        Candidate(KEY, id="a"),
        *(Candidate(t, id=f"o{i}") for i, t in enumerate(SENTENCES[:2])),
        Candidate(KEY, id="b"),
    ]
    hits = retriever.score_candidates(QUERY, cs)
    assert [h.document_id for h in hits] == ["a", "o0", "o1", "b"]
    assert abs(hits[0].score - hits[3].score) <= 0.01 and hits[0].scores == hits[3].scores
    docs = [Document(id="x", content=KEY), Document(content=SENTENCES[0]), Document(id="y", content=KEY)]
    out = AttentionRanker().run(query=QUERY, documents=docs)["documents"]
    by_id = {d.id: d.score or 0.0 for d in out}
    assert abs(by_id["x"] - by_id["y"]) <= 0.01 and {d.id for d in out[:2]} == {"x", "y"}
