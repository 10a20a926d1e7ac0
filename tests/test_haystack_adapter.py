"""Haystack adapter: AttentionRanker (unit tests, YAML allowlist, then real-model integration)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import pytest
from haystack import Document, Pipeline, component
from haystack.core.errors import DeserializationError
from haystack.dataclasses import ByteStream
from haystack.utils import ComponentDevice, Device, DeviceMap

from haystack_attnret import AttentionRanker
from shared_core import RetrieverConfig
from shared_core.tasks.candidates import Candidate
from tests.texts import CHUNKS, KEY

TYPE = "haystack_attnret.ranker.AttentionRanker"
STORY = (
    "Mary went to the kitchen. She picked up the old brass key there.\n\n"
    "John travelled to the garden. The weather was warm and the roses were in bloom.\n\n"
    "Mary went to the office. She left the brass key on the desk."
)
QUERY = "Where is the brass key?"
PIPELINE_YAML = f"""
components:
  ranker:
    type: {TYPE}
    init_parameters:
      config:
        attention:
          pooling: max
      granularity: sentence
      top_k: 3
      score_threshold: null
      device: null
connections: []
"""


# ------------------------------------------------------------------ unit tests (no model)
def test_is_a_component_with_expected_sockets() -> None:
    assert TYPE in component.registry
    ranker = AttentionRanker()
    assert set(ranker.__haystack_input__._sockets_dict) == {"query", "documents", "top_k", "score_threshold"}
    assert set(ranker.__haystack_output__._sockets_dict) == {"documents"}
    assert ranker.__haystack_supports_async__


def test_init_defaults_do_not_load_the_model() -> None:
    ranker = AttentionRanker()
    assert (ranker.top_k, ranker.granularity, ranker.score_threshold, ranker.device) == (10, "document", None, None)
    assert ranker.config == RetrieverConfig()
    assert ranker._retriever is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"top_k": 0}, ValueError),
        ({"top_k": -1}, ValueError),
        ({"top_k": "3"}, TypeError),
        ({"top_k": True}, TypeError),
        ({"granularity": "word"}, ValueError),
        ({"score_threshold": "high"}, TypeError),
        ({"device": "cpu"}, TypeError),
        ({"config": {"nope": 1}}, ValueError),
    ],
)
def test_init_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        AttentionRanker(**kwargs)


def test_init_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        AttentionRanker(None, 5)  # type: ignore[misc]


def test_multi_device_map_is_refused() -> None:
    device = ComponentDevice.from_multiple(DeviceMap({"a": Device.cpu(), "b": Device.gpu(0)}))
    with pytest.raises(ValueError, match="single device"):
        AttentionRanker(device=device)


def test_to_dict_defaults_bake_in_no_device() -> None:
    assert AttentionRanker().to_dict() == {
        "type": TYPE,
        "init_parameters": {
            "config": {},
            "top_k": 10,
            "granularity": "document",
            "score_threshold": None,
            "device": None,
            "meta_fields_to_embed": None,
            "embedding_separator": "\n",
        },
    }


def test_to_dict_from_dict_round_trip() -> None:
    ranker = AttentionRanker(
        config={"attention": {"layers": [10, 12]}, "units": {"min_chars": 5}},
        top_k=4,
        granularity="paragraph",
        score_threshold=0.25,
        device=ComponentDevice.from_str("cpu"),
    )
    data = ranker.to_dict()
    assert data["init_parameters"]["config"] == {"attention": {"layers": [10, 12]}, "units": {"min_chars": 5}}
    assert data["init_parameters"]["device"] == {"type": "single", "device": "cpu"}
    snapshot = repr(data)
    again = AttentionRanker.from_dict(data)
    assert repr(data) == snapshot  # from_dict does not modify its input
    assert again.to_dict() == data
    assert again.config == ranker.config and again.device == ranker.device
    assert again._effective_config().model.device == "cpu"


def test_yaml_path_config_is_serialised_as_a_dict(tmp_path: Any) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("attention:\n  pooling: max\n", encoding="utf-8")
    assert AttentionRanker(config=str(path)).to_dict()["init_parameters"]["config"] == {"attention": {"pooling": "max"}}


def test_pipeline_yaml_is_refused_without_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", raising=False)
    with pytest.raises(DeserializationError, match="haystack_attnret"):
        Pipeline.loads(PIPELINE_YAML)


def test_pipeline_yaml_loads_with_allowed_modules_and_round_trips() -> None:
    pipeline = Pipeline.loads(PIPELINE_YAML, allowed_modules=["haystack_attnret.*"])
    ranker = pipeline.get_component("ranker")
    assert isinstance(ranker, AttentionRanker)
    assert (ranker.granularity, ranker.top_k, ranker.config.attention.pooling) == ("sentence", 3, "max")
    assert ranker._retriever is None
    again = Pipeline.loads(pipeline.dumps(), allowed_modules=["haystack_attnret.*"])
    assert again.to_dict() == pipeline.to_dict()
    assert again.to_dict()["components"]["ranker"] == ranker.to_dict()


def test_pipeline_yaml_loads_with_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", "other_pkg.*,haystack_attnret.*")
    assert isinstance(Pipeline.loads(PIPELINE_YAML).get_component("ranker"), AttentionRanker)


def test_empty_documents_give_empty_output_without_loading() -> None:
    ranker = AttentionRanker()
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}
    assert ranker._retriever is None


@pytest.mark.parametrize(("override", "error"), [({"top_k": 0}, ValueError), ({"score_threshold": "x"}, TypeError)])
def test_run_time_overrides_are_validated(override: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        AttentionRanker().run(query=QUERY, documents=[Document(content=STORY)], **override)


def test_documents_without_text_pass_through_unscored() -> None:
    docs = [Document(blob=ByteStream(data=b"\x89PNG"), score=0.8), Document(content="   ", score=0.3)]
    ranker = AttentionRanker()
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [d.id for d in out] == [d.id for d in docs] and all(d.score is None for d in out)
    assert [d.meta["retrieval_score"] for d in out] == [0.8, 0.3]  # the first-stage score is kept
    assert [d.score for d in docs] == [0.8, 0.3] and all("retrieval_score" not in d.meta for d in docs)
    assert len(ranker.run(query=QUERY, documents=docs, top_k=1)["documents"]) == 1  # they count against top_k
    assert ranker.run(query=QUERY, documents=docs, score_threshold=0.0)["documents"] == []  # and fail a threshold
    assert ranker._retriever is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": QUERY, "documents": "text"}, "documents"),
        ({"query": QUERY, "documents": Document(content="x")}, "documents"),
        ({"query": QUERY, "documents": ["plain string"]}, r"documents\[0\]"),
        ({"query": QUERY, "documents": [Document(content="x"), {"content": "y"}]}, r"documents\[1\]"),
        ({"query": None, "documents": [Document(content="x")]}, "query"),
        ({"query": 3, "documents": []}, "query"),
    ],
)
def test_wrong_input_types_are_type_errors(kwargs: dict[str, Any], match: str) -> None:
    ranker = AttentionRanker()
    with pytest.raises(TypeError, match=match):
        ranker.run(**kwargs)
    assert ranker._retriever is None


@pytest.mark.parametrize(
    ("kwargs", "error"), [({"meta_fields_to_embed": "title"}, TypeError), ({"embedding_separator": None}, TypeError)]
)
def test_meta_field_options_are_validated(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        AttentionRanker(**kwargs)


def test_candidate_text_embeds_the_chosen_meta_fields() -> None:
    ranker = AttentionRanker(meta_fields_to_embed=["title", "missing", "empty"], embedding_separator=" | ")
    doc = Document(
        content="Body text.", meta={"title": "Brass keys", "empty": "", "source_id": "s", "split_idx_start": 7}
    )
    c = ranker._candidate(doc)
    assert (c.text, c.id, c.source, c.start) == ("Brass keys | Body text.", doc.id, "s", 7)
    assert AttentionRanker()._candidate(doc).text == "Body text."
    assert AttentionRanker.from_dict(ranker.to_dict()).meta_fields_to_embed == ["title", "missing", "empty"]


# ------------------------------------------------------------------ integration (real model)
@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return [
        Document(content="The lighthouse keeper painted the door green. Ships passed at dawn.", meta={"n": 0}),
        Document(content=STORY, meta={"n": 1}, score=0.4),
        Document(content=None, meta={"n": 2}),
    ]


@pytest.mark.integration
def test_document_granularity_delegates_and_orders(documents: list[Document]) -> None:
    ranker = AttentionRanker(top_k=1)
    ranker.warm_up()
    retriever = ranker._retriever
    ranker.warm_up()
    assert ranker._retriever is retriever  # idempotent

    out = ranker.run(query=QUERY, documents=documents, top_k=3)["documents"]
    hits = retriever.score_candidates(QUERY, [Candidate(text=d.content, id=d.id) for d in documents[:2]])
    expected = [h.score for h in hits]
    ranked = sorted(zip(documents[:2], expected, strict=True), key=lambda p: -p[1])
    assert [(d.id, d.score) for d in out[:2]] == [(d.id, pytest.approx(s)) for d, s in ranked]
    assert out[0].id == documents[1].id  # the story holds the brass key
    assert out[2].meta == {"n": 2} and out[2].score is None
    assert documents[1].score == 0.4 and "retrieval_score" not in documents[1].meta  # inputs untouched
    assert next(d for d in out if d.id == documents[1].id).meta["retrieval_score"] == 0.4

    assert [d.id for d in ranker.run(query=QUERY, documents=documents)["documents"]] == [documents[1].id]  # top_k=1
    high = ranker.run(query=QUERY, documents=documents, top_k=3, score_threshold=max(expected) + 1e-6)
    assert high["documents"] == []  # a threshold drops the textless document too


@pytest.mark.integration
def test_sentence_granularity_returns_new_documents_with_offsets(documents: list[Document]) -> None:
    ranker = AttentionRanker(granularity="sentence", top_k=4)
    out = ranker.run(query=QUERY, documents=documents)["documents"]
    assert len(out) == 4 and all(d.score is not None for d in out)  # top_k is a hard cap: the textless one is cut
    every = ranker.run(query=QUERY, documents=documents, top_k=50)["documents"]
    assert every[-1].meta["n"] == 2 and every[-1].score is None and len(every) > 5  # all sentences, then textless
    units = out
    by_id = {d.id: d for d in documents}
    for unit in units:
        source = by_id[unit.meta["attnret_source_id"]]
        assert source.content[unit.meta["attnret_start"] : unit.meta["attnret_end"]] == unit.content
        assert unit.meta["n"] == source.meta["n"] and unit.meta["attnret_reasons"]
        assert all(isinstance(v, float) for v in unit.meta["attnret_scores"].values())  # per-view scores
        assert 0.0 <= unit.score <= 1.0
    assert [u.score for u in units] == sorted((u.score for u in units), reverse=True)
    kept = ranker.run(query=QUERY, documents=documents, score_threshold=0.5)["documents"]
    assert kept and all(d.score >= 0.5 for d in kept) and len(kept) < len(units)

    async_out = asyncio.run(ranker.run_async(query=QUERY, documents=documents))["documents"]
    starts = [(d.content, d.meta.get("attnret_start")) for d in out]
    assert [(d.content, d.meta.get("attnret_start")) for d in async_out] == starts


@pytest.mark.integration
def test_standalone_documents_get_distinct_scores_relevant_first_in_any_order() -> None:
    ranker = AttentionRanker(top_k=4)
    docs = [Document(content=t, meta={"source": f"doc{i}"}, score=0.5) for i, t in enumerate(CHUNKS)]
    for given in (docs, docs[::-1]):
        out = ranker.run(query="Where did Mary leave the brass key?", documents=given)["documents"]
        assert out[0].content == KEY
        scores = [d.score for d in out]
        assert len(set(scores)) == 4 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


@pytest.mark.integration
def test_single_document_scores_and_threshold() -> None:
    ranker = AttentionRanker()
    query = "Where did Mary leave the brass key?"
    (relevant,) = ranker.run(query=query, documents=[Document(content=KEY)])["documents"]
    (irrelevant,) = ranker.run(query=query, documents=[Document(content=CHUNKS[0])])["documents"]
    assert 0.0 <= irrelevant.score < relevant.score <= 1.0
    cut = (relevant.score + irrelevant.score) / 2
    kept = ranker.run(query=query, documents=[Document(content=CHUNKS[0]), Document(content=KEY)], score_threshold=cut)
    assert [d.content for d in kept["documents"]] == [KEY]


@pytest.mark.integration
def test_duplicate_ids_keep_the_highest_first_stage_score() -> None:
    a = Document(id="same", content=KEY, score=0.2)
    b = Document(id="same", content=KEY, score=0.9)
    c = Document(content=CHUNKS[1], score=0.5)
    out = AttentionRanker().run(query="Where is the brass key?", documents=[a, c, b])["documents"]
    assert [d.id for d in out] == ["same", c.id]
    assert out[0].meta["retrieval_score"] == 0.9 and out[0].score != 0.9
