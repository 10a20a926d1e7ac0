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
from shared_core import Document as CoreDocument
from shared_core import RetrieverConfig

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
    assert [d.score for d in docs] == [0.8, 0.3]
    assert ranker._retriever is None


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

    out = ranker.run(query=QUERY, documents=documents, top_k=2)["documents"]
    expected = retriever.score_documents(QUERY, [CoreDocument(text=d.content, id=d.id) for d in documents[:2]])
    ranked = sorted(zip(documents[:2], expected, strict=True), key=lambda p: -p[1])
    assert [(d.id, d.score) for d in out[:2]] == [(d.id, pytest.approx(s)) for d, s in ranked]
    assert out[2].meta == {"n": 2} and out[2].score is None
    assert documents[1].score == 0.4  # inputs untouched

    assert len(ranker.run(query=QUERY, documents=documents)["documents"]) == 2  # init top_k=1 + pass-through
    high = ranker.run(query=QUERY, documents=documents, top_k=2, score_threshold=max(expected) + 1.0)
    assert [d.meta["n"] for d in high["documents"]] == [2]


@pytest.mark.integration
def test_sentence_granularity_returns_new_documents_with_offsets(documents: list[Document]) -> None:
    ranker = AttentionRanker(granularity="sentence", top_k=4)
    out = ranker.run(query=QUERY, documents=documents)["documents"]
    units, passthrough = out[:4], out[4:]
    assert [d.meta["n"] for d in passthrough] == [2]
    by_id = {d.id: d for d in documents}
    for unit in units:
        source = by_id[unit.meta["source_id"]]
        assert source.content[unit.meta["start"] : unit.meta["end"]] == unit.content
        assert unit.meta["n"] == source.meta["n"] and unit.meta["reasons"]
        assert 0.0 <= unit.score <= 1.0
    assert [u.score for u in units] == sorted((u.score for u in units), reverse=True)
    kept = ranker.run(query=QUERY, documents=documents, score_threshold=0.5)["documents"]
    assert all(d.score >= 0.5 for d in kept[:-1]) and kept[-1].meta["n"] == 2

    async_out = asyncio.run(ranker.run_async(query=QUERY, documents=documents))["documents"]
    assert [(d.content, d.meta.get("start")) for d in async_out] == [(d.content, d.meta.get("start")) for d in out]
