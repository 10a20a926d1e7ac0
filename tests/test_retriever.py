"""AttentionRetriever with the real default model: spans, ranking, caching, concurrency and bad input."""

from __future__ import annotations

import copy
import threading
import warnings

import numpy as np
import pytest

from shared_core import AttentionRetriever, Document, Hit, RetrieverConfig
from shared_core.document import default_id
from shared_core.evaluation import babilong_examples, gold_units, resolve_task_path

STORY = (
    "Mary got the milk there. John moved to the bedroom.\n\n"
    "Sandra went back to the kitchen. Mary travelled to the hallway. "
    "The weather was nice and the birds sang loudly over the hills.\n\n"
    "Daniel went to the office. Bill picked up the apple."
)


def _assert_exact(hits: list[Hit], docs: list[str]) -> None:
    for h in hits:
        assert docs[h.document_index][h.start : h.end] == h.text
        assert h.text == h.text.strip() and h.text


def test_spans_are_exact_and_scores_ordered(retriever: AttentionRetriever) -> None:
    hits = retriever.retrieve("Where is the milk?", [STORY], top_k=20)
    _assert_exact(hits, [STORY])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == len(retriever.units(STORY)) == 7
    assert all({"attention", "fused"} <= set(h.scores) for h in hits)
    for h in hits:
        assert h.reasons and all(
            r in ("attention", "dense", "lexical", "fused") or r.startswith("entity:") for r in h.reasons
        )
    assert hits[0].text == "Mary got the milk there."


def test_score_units_lists_every_unit_in_order(retriever: AttentionRetriever) -> None:
    units = retriever.score_units("Where is the apple?", STORY)
    assert [u.start for u in units] == sorted(u.start for u in units)
    assert max(units, key=lambda h: h.score).text == "Bill picked up the apple."


def test_paragraph_granularity() -> None:
    r = AttentionRetriever({"units": {"granularity": "paragraph"}})
    hits = r.retrieve("Who picked up the apple?", [STORY], top_k=3)
    _assert_exact(hits, [STORY])
    assert len(hits) == 3
    assert hits[0].text.endswith("Bill picked up the apple.")


def test_score_spans_follow_given_spans(retriever: AttentionRetriever) -> None:
    a = STORY.index("Bill picked")
    spans = [(0, 24), (a, len(STORY))]
    scores = retriever.score_spans("Who picked up the apple?", STORY, spans)
    assert len(scores) == 2 and scores[1] > scores[0]
    with pytest.raises(ValueError, match="outside the document"):
        retriever.score_spans("q", STORY, [(0, len(STORY) + 5)])


@pytest.mark.slow
def test_babi_qa2_story_in_filler_ranks_both_facts_top5(retriever: AttentionRetriever, shared_data) -> None:
    """The multi-fact case: 'Where is the X?' needs the pick-up fact and the holder's move."""
    examples = babilong_examples(
        resolve_task_path("babi-qa2", shared_data), n=6, target_words=900, seed=7, filler="hotpot"
    )
    found = 0
    for ex in examples:
        hits = retriever.score_units(ex.query, ex.documents[0])
        gold = gold_units([(h.start, h.end) for h in hits], ex.gold, 0)
        top5 = {h.unit_index for h in sorted(hits, key=lambda h: -h.score)[:5]}
        found += gold <= top5
    assert found >= 4, f"both supporting facts in the top 5 for only {found}/6 questions"


def test_second_query_runs_only_query_tokens() -> None:
    r = AttentionRetriever()
    doc = "\n\n".join([STORY] * 12)
    r.retrieve("Where is the milk?", [doc])
    first = dict(r.stats)
    r.retrieve("Where is the apple?", [doc])
    assert r.stats["prefills"] == first["prefills"] == 1
    second_tokens = r.stats["query_tokens"] - first["query_tokens"]
    assert second_tokens < first["prefill_tokens"] / 5


def test_cache_disabled_prefills_every_time() -> None:
    r = AttentionRetriever({"attention": {"kv_cache_size": 0}})
    r.retrieve("Where is the milk?", [STORY])
    r.retrieve("Where is the milk?", [STORY])
    assert r.stats["prefills"] == 2


def test_cached_and_fresh_scores_agree(retriever: AttentionRetriever) -> None:
    fresh = AttentionRetriever({"attention": {"kv_cache_size": 0}})
    a = [h.scores["attention"] for h in retriever.score_units("Where is Daniel?", STORY)]
    retriever.score_units("Where is the milk?", STORY)  # the cache must not be changed by a query
    b = [h.scores["attention"] for h in retriever.score_units("Where is Daniel?", STORY)]
    c = [h.scores["attention"] for h in fresh.score_units("Where is Daniel?", STORY)]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


def test_chunked_prefill_gives_the_one_pass_scores(retriever: AttentionRetriever, monkeypatch) -> None:
    import shared_core.engine.attention_engine as engine_module

    one_pass = [h.scores["attention"] for h in retriever.score_units("Where is Daniel?", STORY)]
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 16)
    chunked = AttentionRetriever({"attention": {"kv_cache_size": 0}})
    got = [h.scores["attention"] for h in chunked.score_units("Where is Daniel?", STORY)]
    assert chunked.stats["prefills"] == 1
    assert chunked.stats["forwards"] > 3  # the document went in 16-token steps
    np.testing.assert_allclose(got, one_pass, rtol=1e-4, atol=1e-6)


def test_calibration_changes_scores(retriever: AttentionRetriever) -> None:
    plain = AttentionRetriever({"attention": {"calibration": False}})
    cal = [h.scores["attention"] for h in retriever.score_units("Where is the milk?", STORY)]
    raw = [h.scores["attention"] for h in plain.score_units("Where is the milk?", STORY)]
    assert all(r > 0 for r in raw)  # raw attention mass is positive
    assert not np.allclose(cal, raw)


def test_multiple_documents_keep_ids() -> None:
    r = AttentionRetriever()
    docs = [Document(text=STORY, id="story"), Document(text="The capital of France is Paris. It is big.", id="fr")]
    hits = r.retrieve("What is the capital of France?", docs, top_k=20)
    _assert_exact(hits, [d.text for d in docs])
    assert {h.document_id for h in hits} == {"story", "fr"}
    assert all((h.document_id == "fr") == (h.document_index == 1) for h in hits)
    plain = r.retrieve("Where is the milk?", [STORY, STORY[:60]], top_k=3)
    assert {h.document_id for h in plain} <= {default_id(STORY), default_id(STORY[:60])}  # content hashes


def test_concurrent_calls_match_serial(retriever: AttentionRetriever) -> None:
    queries = ["Where is the milk?", "Where is the apple?", "Who went to the office?", "Where is Sandra?"]
    serial = {q: [(h.start, round(h.score, 6)) for h in retriever.retrieve(q, [STORY], top_k=7)] for q in queries}
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def work(q: str) -> None:
        try:
            results[q] = [(h.start, round(h.score, 6)) for h in retriever.retrieve(q, [STORY], top_k=7)]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(q,)) for q in queries * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == serial


def test_inputs_not_mutated(retriever: AttentionRetriever) -> None:
    docs = [Document(text=STORY, id="a", meta={"k": [1, 2]}), STORY]
    before = copy.deepcopy(docs)
    retriever.retrieve("Where is the milk?", docs, top_k=3)
    assert docs == before


@pytest.mark.parametrize(
    ("query", "documents", "top_k", "error", "match"),
    [
        ("", [STORY], 3, ValueError, "query is empty"),
        ("   \n", [STORY], 3, ValueError, "query is empty"),
        (None, [STORY], 3, TypeError, "query must be a str"),
        ("q", [], 3, ValueError, "documents is empty"),
        ("q", ["  \n "], 3, ValueError, "document 0 is empty"),
        ("q", [STORY, ""], 3, ValueError, "document 1 is empty"),
        ("q", [42], 3, TypeError, "document 0 must be a str"),
        ("q", STORY, 3, TypeError, "wrap a single document"),
        ("q", [STORY], 0, ValueError, "top_k must be positive"),
        ("q", [STORY], -2, ValueError, "top_k must be positive"),
        ("q", [STORY], 2.5, TypeError, "top_k must be an int"),
    ],
)
def test_bad_input(retriever: AttentionRetriever, query, documents, top_k, error, match) -> None:
    with pytest.raises(error, match=match):
        retriever.retrieve(query, documents, top_k=top_k)


def test_document_past_the_window_is_a_clear_error_without_cascade() -> None:
    r = AttentionRetriever({"model": {"max_tokens": 128}, "cascade": {"enabled": False}})
    with pytest.raises(ValueError, match=r"exceeds the model window of 128 tokens.*cascade"):
        r.retrieve("Where is the milk?", [STORY * 4])


SMALL_CASCADE = {"sink_tokens": 8, "cascades": 2, "window": 32, "stride": 64}


def test_window_boundary_is_the_same_for_routing_and_prefill(retriever: AttentionRetriever) -> None:
    # a document that fits only with the query's exact length: one plain prefill, no cascade, no error
    query = "Where is the milk?"
    n_doc = len(retriever.engine.document_tokens(Document(STORY)).ids)
    n_query = len(retriever.engine.prompt.query(query, "query").ids)
    fits = AttentionRetriever({"model": {"max_tokens": n_doc + n_query}, "cascade": SMALL_CASCADE})
    assert len(fits.score_units(query, STORY)) == len(fits.units(STORY))
    assert fits.stats["prefills"] == 1 and fits.stats["cascade_passes"] == 0
    one_less = AttentionRetriever({"model": {"max_tokens": n_doc + n_query - 1}, "cascade": SMALL_CASCADE})
    one_less.score_units(query, STORY)
    assert one_less.stats["prefills"] == 0 and one_less.stats["cascade_passes"] == 1


def test_kv_cache_reaches_transformers_without_deprecated_keywords() -> None:
    """Prefill, query pass and cascade hand the KV cache over under the keyword the installed transformers takes."""
    plain = AttentionRetriever({"cascade": SMALL_CASCADE})
    cascaded = AttentionRetriever({"cascade": {"enabled": True, **SMALL_CASCADE}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for r in (plain, cascaded):
            assert len(r.score_units("Where is the milk?", STORY)) == len(r.units(STORY))
    assert plain.stats["prefills"] == 1 and cascaded.stats["cascade_passes"] == 1


def test_document_past_the_window_goes_through_the_cascade() -> None:
    doc = "\n\n".join([STORY] * 6)
    r = AttentionRetriever({"model": {"max_tokens": 160}, "cascade": SMALL_CASCADE})
    hits = r.retrieve("Who picked up the apple?", [doc], top_k=6)
    _assert_exact(hits, [doc])
    assert r.stats["cascade_passes"] == 1 and r.stats["prefills"] == 0
    assert any(h.text == "Bill picked up the apple." for h in hits[:3])
    units = r.score_units("Who picked up the apple?", doc)
    assert len(units) == len(r.units(doc)) and all(np.isfinite(h.scores["attention"]) for h in units)
    assert r.stats["cascade_passes"] == 1  # the same query on the same document reuses the pass
    assert [h.score for h in units] == [h.score for h in r.score_units("Who picked up the apple?", doc)]
    replayed = r.score_units("Who picked up the pear?", doc)
    assert r.stats["cascade_passes"] == 1 and r.stats["cascade_replays"] == 1  # a new query replays the kept pass
    fresh = AttentionRetriever(
        {"model": {"max_tokens": 160}, "cascade": {**SMALL_CASCADE, "reuse": False}}
    ).score_units("Who picked up the pear?", doc)
    np.testing.assert_allclose(
        [h.scores["attention"] for h in replayed], [h.scores["attention"] for h in fresh], atol=1e-4
    )
    assert [h.text for h in replayed] == [h.text for h in fresh]


def test_cascade_memory_budget_too_small_is_a_clear_error() -> None:
    r = AttentionRetriever({"cascade": {"enabled": True, "memory_budget": "1KB", **SMALL_CASCADE}})
    with pytest.raises(ValueError, match="budget"):
        r.retrieve("Where is the milk?", [STORY])


def test_head_list_restricts_capture_to_its_layers() -> None:
    r = AttentionRetriever({"attention": {"heads": ["3-1", "5-0", "5-7"]}})
    assert r.head_selection.layers == [3, 5]
    assert r.head_selection.per_layer[5] == (0, 7)
    assert r.head_selection.deepest == 5
    hits = r.retrieve("Where is the milk?", [STORY], top_k=3)
    _assert_exact(hits, [STORY])


@pytest.mark.parametrize(
    ("heads", "match"),
    [(["30-0"], "30 layers"), (["2-9"], "9 query heads"), (["2:3"], "form 'layer-head'"), (["x-1"], "form")],
)
def test_bad_head_strings_name_the_model_shape(heads, match) -> None:
    r = AttentionRetriever({"attention": {"heads": heads}})
    with pytest.raises(ValueError, match=match):
        r.warm_up()


def test_config_yaml_round_trip(tmp_path) -> None:
    cfg = RetrieverConfig.model_validate(
        {
            "attention": {"layers": [10, -1], "pooling": "max", "calibration": False},
            "units": {"granularity": "paragraph"},
        }
    )
    text = cfg.to_yaml()
    assert RetrieverConfig.from_yaml(text) == cfg
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert RetrieverConfig.from_yaml(path) == cfg
    assert RetrieverConfig.from_yaml(path).to_yaml() == text


def test_config_rejects_unknown_keys_and_values() -> None:
    with pytest.raises(ValueError, match="extra"):
        RetrieverConfig.model_validate({"attention": {"poolin": "max"}})
    with pytest.raises(ValueError):
        RetrieverConfig.model_validate({"attention": {"pooling": "median"}})
    with pytest.raises(ValueError, match="non-empty"):
        RetrieverConfig.model_validate({"attention": {"layers": []}})
