"""LlamaIndex adapter: AttentionRerank and AttentionLongDocRetriever (unit tests, then real-model integration)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from llama_index.core import SummaryIndex, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    Document,
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.retrievers.bm25 import BM25Retriever
from pydantic import Field, ValidationError

from llamaindex_attnret import AttentionLongDocRetriever, AttentionRerank
from llamaindex_attnret.context import NODE_SEPARATOR, build_contexts, node_candidate, split_scoreable
from llamaindex_attnret.shared import shared_retriever
from shared_core import RetrieverConfig
from tests.texts import CHUNKS, KEY, KEY_QUERY

STORY = (
    "Mary went to the kitchen. She picked up the old brass key there.\n\n"
    "John travelled to the garden. The weather was warm and the roses were in bloom.\n\n"
    "Mary went to the office. She left the brass key on the desk.\n\n"
    "Sandra moved to the hallway. Daniel journeyed to the bathroom."
)
QUERY = "Where is the brass key?"


def _chunks(doc: Document, ref_id: str | None = "story") -> list[NodeWithScore]:
    """One node per paragraph with true char offsets and a SOURCE relationship (like a node parser)."""
    nodes = []
    start = 0
    for i, para in enumerate(doc.text.split("\n\n")):
        start = doc.text.index(para, start)
        rel = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=ref_id)} if ref_id else {}
        node = TextNode(
            id_=f"{ref_id}-{i}",
            text=para,
            start_char_idx=start,
            end_char_idx=start + len(para),
            metadata={"chunk": i},
            relationships=rel,
        )
        nodes.append(NodeWithScore(node=node, score=0.5))
        start += len(para)
    return nodes


class _Collector(BaseEventHandler):
    """Collects instrumentation events."""

    events: list[Any] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "_Collector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


# ------------------------------------------------------------------ unit tests (no model)
def test_class_hierarchy() -> None:
    assert issubclass(AttentionRerank, BaseNodePostprocessor)
    assert issubclass(AttentionLongDocRetriever, BaseRetriever)
    assert AttentionRerank.class_name() == "AttentionRerank"


def test_init_defaults_and_lazy_model() -> None:
    rerank = AttentionRerank()
    assert rerank.top_n == 5
    assert rerank.granularity == "node"
    assert rerank.config == RetrieverConfig()
    assert rerank._retriever is None


@pytest.mark.parametrize("kwargs", [{"top_n": 0}, {"top_n": -2}, {"granularity": "word"}, {"config": {"nope": 1}}])
def test_init_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AttentionRerank(**kwargs)


def test_config_coercion(tmp_path: Any) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("attention:\n  layers: [10, 12]\n", encoding="utf-8")
    from_path = AttentionRerank(config=str(path))
    from_dict = AttentionRerank(config={"attention": {"layers": [10, 12]}})
    from_obj = AttentionRerank(config=RetrieverConfig.model_validate({"attention": {"layers": [10, 12]}}))
    assert from_path.config == from_dict.config == from_obj.config
    assert from_path.config.attention.layers == [10, 12]


def test_serialization_round_trip() -> None:
    rerank = AttentionRerank(top_n=3, granularity="sentence", config={"attention": {"pooling": "max"}})
    data = rerank.to_dict()
    assert data["class_name"] == "AttentionRerank"
    again = AttentionRerank.from_dict(data)
    assert (again.top_n, again.granularity, again.config) == (3, "sentence", rerank.config)
    assert AttentionRerank.from_json(rerank.to_json()).config == rerank.config


def test_missing_query_bundle_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="query"):
        AttentionRerank().postprocess_nodes(_chunks(Document(text=STORY)))


def test_empty_nodes() -> None:
    rerank = AttentionRerank()
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    assert rerank._retriever is None


def test_nodes_without_text_pass_through_without_loading_the_model() -> None:
    nodes = [NodeWithScore(node=ImageNode(image="aGVsbG8="), score=0.9), NodeWithScore(node=TextNode(text="  \n"))]
    rerank = AttentionRerank(keep_retrieval_score=True)
    out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    assert [o.node.node_id for o in out] == [n.node.node_id for n in nodes]
    assert all(o.score is None for o in out)
    assert out[0].node.metadata["retrieval_score"] == 0.9
    assert nodes[0].score == 0.9 and "retrieval_score" not in nodes[0].node.metadata  # input untouched
    assert len(AttentionRerank(top_n=1).postprocess_nodes(nodes, query_str=QUERY)) == 1  # they count against top_n
    assert SimilarityPostprocessor(similarity_cutoff=0.0).postprocess_nodes(out) == []  # and fail a cutoff
    assert rerank._retriever is None


@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        ("text", "nodes"),
        (NodeWithScore(node=TextNode(text="x")), "nodes"),
        ([TextNode(text="a node, not a NodeWithScore")], "NodeWithScore"),
        ([NodeWithScore(node=TextNode(text="x")), "y"], "position 1"),
    ],
)
def test_wrong_input_types_are_type_errors(nodes: Any, match: str) -> None:
    rerank = AttentionRerank()
    with pytest.raises(TypeError, match=match):
        rerank.postprocess_nodes(nodes, query_str=QUERY)
    with pytest.raises(TypeError, match="query"):
        rerank.postprocess_nodes([NodeWithScore(node=TextNode(text="x"))], query_str=42)  # type: ignore[arg-type]
    assert rerank._retriever is None


def test_new_fields_default_and_round_trip() -> None:
    rerank = AttentionRerank()
    assert (rerank.keep_retrieval_score, rerank.metadata_mode) == (False, MetadataMode.EMBED)
    again = AttentionRerank.from_dict(AttentionRerank(keep_retrieval_score=True, metadata_mode="none").to_dict())
    assert (again.keep_retrieval_score, again.metadata_mode) == (True, MetadataMode.NONE)


def test_contexts_put_siblings_in_document_order() -> None:
    doc = Document(text=STORY, id_="story")
    chunks = _chunks(doc)
    lone = NodeWithScore(node=TextNode(id_="lone", text="Daniel has the spare key."))
    shuffled = [chunks[2], lone, chunks[0], chunks[3], chunks[1]]
    scoreable, textless = split_scoreable(shuffled)
    assert not textless
    contexts = build_contexts(scoreable)
    assert [c.key for c in contexts] == ["story", "lone"]
    story = contexts[0]
    assert story.text == NODE_SEPARATOR.join(c.node.text for c in chunks)
    assert [m.position for m in story.members] == [2, 4, 0, 3]
    for member in story.members:
        assert story.text[member.start : member.end] == member.node.text
        assert member.document_offset(member.start) == member.node.start_char_idx
    assert contexts[1].text == lone.node.text


def test_retriever_init_validation() -> None:
    docs = [Document(text=STORY)]
    with pytest.raises(ValueError, match="exactly one"):
        AttentionLongDocRetriever()
    with pytest.raises(ValueError, match="exactly one"):
        AttentionLongDocRetriever(docs, docstore=SimpleDocumentStore())
    with pytest.raises(ValueError, match="top_k"):
        AttentionLongDocRetriever(docs, top_k=0)
    with pytest.raises(ValueError, match="granularity"):
        AttentionLongDocRetriever(docs, granularity="node")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="first_stage"):
        AttentionLongDocRetriever(docs, first_stage=object())  # type: ignore[arg-type]


# ------------------------------------------------------------------ integration (real model)
@pytest.mark.integration
def test_node_rerank_reads_all_nodes_in_one_candidate_set() -> None:
    doc = Document(text=STORY, id_="story")
    chunks = _chunks(doc)
    lone = NodeWithScore(node=TextNode(id_="lone", text="Daniel keeps a spare key in the garage."), score=0.1)
    image = NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8="), score=0.7)
    nodes = [chunks[3], image, chunks[0], lone, chunks[2], chunks[1]]
    before = [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]

    out = AttentionRerank(top_n=6).postprocess_nodes(nodes, query_str=QUERY)

    assert [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes] == before
    assert len(out) == 6 and out[-1].node.node_id == "img" and out[-1].score is None
    ranked = out[:5]
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    assert ranked[0].node.node_id in {"story-0", "story-2"}  # a paragraph holding the brass key
    core = shared_retriever(RetrieverConfig())
    texts = [n for n in nodes if n.node.node_id != "img"]
    candidates = [node_candidate(n, MetadataMode.EMBED) for n in texts]
    assert candidates[0].text.startswith("chunk: 3") and candidates[0].source == "story"  # EMBED mode, grouped
    expected = {c.id: h.score for c, h in zip(candidates, core.score_candidates(QUERY, candidates), strict=True)}
    best = sorted(expected.items(), key=lambda kv: -kv[1])
    assert [(r.node.node_id, r.score) for r in ranked] == [(k, pytest.approx(v)) for k, v in best]
    assert len(AttentionRerank(top_n=3).postprocess_nodes(nodes, query_str=QUERY)) == 3  # textless count too


@pytest.mark.integration
def test_sentence_units_keep_source_offsets_and_relationships() -> None:
    doc = Document(text=STORY, id_="story")
    chunks = _chunks(doc)
    out = AttentionRerank(top_n=4, granularity="sentence").postprocess_nodes(chunks[::-1], query_str=QUERY)
    assert len(out) == 4
    by_id = {c.node.node_id: c.node for c in chunks}
    for item in out:
        node = item.node
        assert isinstance(node, TextNode) and item.score is not None
        assert doc.text[node.start_char_idx : node.end_char_idx] == node.text
        assert node.ref_doc_id == "story"
        parent = by_id[node.relationships[NodeRelationship.PARENT].node_id]
        assert parent.start_char_idx <= node.start_char_idx < node.end_char_idx <= parent.end_char_idx
        assert node.metadata["chunk"] == parent.metadata["chunk"]
        assert node.metadata["attnret_reasons"] and node.metadata["attnret_source_id"] == parent.node_id
        assert parent.text[node.metadata["attnret_start"] : node.metadata["attnret_end"]] == node.text
        added = ("attnret_source_id", "attnret_start", "attnret_end", "attnret_reasons", "attnret_scores")
        assert set(added) <= set(node.excluded_llm_metadata_keys) & set(node.excluded_embed_metadata_keys)
    assert [o.score for o in out] == sorted((o.score for o in out), reverse=True)


@pytest.mark.integration
def test_events_and_legacy_callback() -> None:
    collector = _Collector()
    root = get_dispatcher()
    root.add_event_handler(collector)
    debug = LlamaDebugHandler()
    try:
        rerank = AttentionRerank(top_n=2, callback_manager=CallbackManager([debug]))
        out = rerank.postprocess_nodes(_chunks(Document(text=STORY)), query_bundle=QueryBundle(QUERY))
    finally:
        root.event_handlers.remove(collector)
    starts = [e for e in collector.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in collector.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0].top_n == 2 and len(starts[0].nodes) == 4
    assert [n.node.node_id for n in ends[0].nodes] == [n.node.node_id for n in out]
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1


@pytest.mark.integration
def test_async_runs_off_the_event_loop() -> None:
    rerank = AttentionRerank(top_n=2, granularity="paragraph")
    nodes = _chunks(Document(text=STORY))
    rerank.postprocess_nodes(nodes, query_str=QUERY)  # load the model outside the timed part

    async def scenario() -> tuple[list[NodeWithScore], int]:
        ticks = 0
        task = asyncio.create_task(rerank.apostprocess_nodes(nodes, query_str="Where did John travel?"))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.001)
        return await task, ticks

    t0 = time.perf_counter()
    out, ticks = asyncio.run(scenario())
    assert len(out) == 2 and ticks > 1, (ticks, time.perf_counter() - t0)
    sync = rerank.postprocess_nodes(nodes, query_str="Where did John travel?")
    assert [(o.node.node_id, o.score) for o in out] == [(s.node.node_id, pytest.approx(s.score)) for s in sync]


@pytest.mark.integration
def test_long_doc_retriever_over_documents_and_index() -> None:
    other = Document(text="The lighthouse keeper painted the door green.\n\nShips passed at dawn.", id_="other")
    story = Document(text=STORY, id_="story")
    retriever = AttentionLongDocRetriever([story, other], top_k=3)
    hits = retriever.retrieve(QUERY)
    assert len(hits) == 3
    texts = {"story": story.text, "other": other.text}
    for hit in hits:
        assert texts[hit.node.ref_doc_id][hit.node.start_char_idx : hit.node.end_char_idx] == hit.node.text

    index = SummaryIndex([c.node for c in _chunks(story)])
    from_index = AttentionLongDocRetriever.from_index(index, top_k=3)
    index_hits = from_index.retrieve(QUERY)
    assert [(h.node.text, h.node.start_char_idx) for h in index_hits][:1] == [
        (h.node.text, h.node.start_char_idx) for h in hits if h.node.ref_doc_id == "story"
    ][:1]
    assert asyncio.run(from_index.aretrieve(QUERY))[0].node.text == index_hits[0].node.text


@pytest.mark.integration
def test_long_doc_retriever_first_stage_picks_documents() -> None:
    story = Document(text=STORY, id_="story")
    other = Document(text="The lighthouse keeper painted the door green.\n\nShips passed at dawn.", id_="other")
    first_stage = BM25Retriever.from_defaults(nodes=[other, story], similarity_top_k=1)
    retriever = AttentionLongDocRetriever([story, other], top_k=20, first_stage=first_stage)
    hits = retriever.retrieve("Who painted the lighthouse door?")
    assert hits and {h.node.ref_doc_id for h in hits} == {"other"}


@pytest.mark.integration
def test_standalone_nodes_get_distinct_scores_relevant_first_in_any_order() -> None:
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=0.5) for i, t in enumerate(CHUNKS)]
    rerank = AttentionRerank(top_n=4)
    for given in (nodes, nodes[::-1]):
        out = rerank.postprocess_nodes(given, query_str=KEY_QUERY)
        assert out[0].node.node_id == "n2"
        scores = [o.score for o in out]
        assert len(set(scores)) == 4 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


@pytest.mark.integration
def test_single_node_scores_and_similarity_cutoff() -> None:
    rerank = AttentionRerank(keep_retrieval_score=True)
    relevant = NodeWithScore(node=TextNode(id_="key", text=KEY), score=0.3)
    irrelevant = NodeWithScore(node=TextNode(id_="door", text=CHUNKS[0]), score=0.8)
    (r,) = rerank.postprocess_nodes([relevant], query_str=KEY_QUERY)
    (i,) = rerank.postprocess_nodes([irrelevant], query_str=KEY_QUERY)
    assert 0.0 <= i.score < r.score <= 1.0
    assert (r.node.metadata["retrieval_score"], i.node.metadata["retrieval_score"]) == (0.3, 0.8)
    assert "retrieval_score" not in relevant.node.metadata
    cutoff = SimilarityPostprocessor(similarity_cutoff=(r.score + i.score) / 2)
    both = rerank.postprocess_nodes([irrelevant, relevant], query_str=KEY_QUERY)
    assert [n.node.node_id for n in cutoff.postprocess_nodes(both)] == ["key"]


class _MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding over the core's dense model (all-MiniLM-L6-v2, offline)."""

    @classmethod
    def class_name(cls) -> str:
        return "_MiniLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return shared_retriever(RetrieverConfig()).dense.embed([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return shared_retriever(RetrieverConfig()).dense.embed([text])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


@pytest.mark.integration
def test_vector_index_query_engine_context_is_reordered_by_the_reranker() -> None:
    docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(CHUNKS)]
    index = VectorStoreIndex.from_documents(docs, embed_model=_MiniLMEmbedding())
    first = index.as_retriever(similarity_top_k=4).retrieve(KEY_QUERY)
    rerank = AttentionRerank(top_n=3, keep_retrieval_score=True)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=4, node_postprocessors=[rerank])
    response = engine.query(KEY_QUERY)
    got = [(n.node.ref_doc_id, n.score) for n in response.source_nodes]
    expected = rerank.postprocess_nodes(first, query_str=KEY_QUERY)
    assert got == [(n.node.ref_doc_id, pytest.approx(n.score)) for n in expected]
    assert len(got) == 3 and got[0][0] == "d2"
    by_doc = {n.node.ref_doc_id: n.score for n in first}
    assert all(
        n.node.metadata["retrieval_score"] == pytest.approx(by_doc[n.node.ref_doc_id]) for n in response.source_nodes
    )
    assert [n.score for n in response.source_nodes] != [by_doc[d] for d, _ in got]  # our scores, not the vector's
