"""Multi-view scoring through the retriever: fusion weights, entity expansion, reasons, documents, explain."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from shared_core import AttentionRetriever, Document
from shared_core.cli import main

# "Where is the milk?" needs "Sandra got the milk" and Sandra's move, which shares no word with the query.
CHAIN = (
    "Sandra went to the garden. Bill journeyed to the hallway. Fred went back to the kitchen.\n\n"
    "Daniel travelled to the office. John went to the bedroom. Mary moved to the bathroom.\n\n"
    "Jeff travelled to the cinema. Julie moved to the school. Daniel picked up the football there.\n\n"
    "Anna went to the library. Peter grabbed the box there. Lucy moved to the cellar.\n\n"
    "Tom took the cup there. Kate journeyed to the market. Omar picked up the hat there.\n\n"
    "Sandra got the milk there. John journeyed to the park. Mary went back to the office. "
    "Bill grabbed the apple there. Fred moved to the bedroom."
)
QUERY = "Where is the milk?"
MOVE = "Sandra went to the garden."


@pytest.fixture(scope="module")
def views_only() -> AttentionRetriever:
    return AttentionRetriever({"entities": {"enabled": False}})


def _top(hits, n: int) -> list[str]:
    return [h.text for h in sorted(hits, key=lambda h: -h.score)[:n]]


def test_hits_carry_every_view_and_reasons(views_only: AttentionRetriever) -> None:
    units = views_only.score_units(QUERY, CHAIN)
    assert all({"attention", "dense", "lexical", "fused"} <= set(h.scores) for h in units)
    for name in ("attention", "dense"):
        top5 = set(np.argsort([-h.scores[name] for h in units], kind="stable")[:5].tolist())
        assert {i for i, h in enumerate(units) if name in h.reasons} == top5
    assert all(h.reasons for h in units)


def test_fusion_weights_change_rankings_as_configured(views_only: AttentionRetriever) -> None:
    units = views_only.score_units("Who grabbed the apple?", CHAIN)
    by_dense = max(units, key=lambda h: h.scores["dense"]).text
    by_attention = max(units, key=lambda h: h.scores["attention"]).text
    only_dense = AttentionRetriever(
        {"entities": {"enabled": False}, "fusion": {"weights": {"attention": 0, "dense": 1, "lexical": 0}}}
    )
    only_att = AttentionRetriever(
        {"entities": {"enabled": False}, "fusion": {"weights": {"attention": 1, "dense": 0, "lexical": 0}}}
    )
    assert only_dense.retrieve("Who grabbed the apple?", [CHAIN], top_k=1)[0].text == by_dense
    assert only_att.retrieve("Who grabbed the apple?", [CHAIN], top_k=1)[0].text == by_attention
    rrf = AttentionRetriever({"entities": {"enabled": False}, "fusion": {"method": "rrf"}})
    assert [h.text for h in rrf.retrieve("Who grabbed the apple?", [CHAIN], top_k=3)]


def test_dense_and_lexical_disabled_leave_attention_only() -> None:
    r = AttentionRetriever({"dense": {"enabled": False}, "lexical": {"enabled": False}, "entities": {"enabled": False}})
    hits = r.score_units(QUERY, CHAIN)
    assert all(set(h.scores) == {"attention", "fused"} for h in hits)


def test_entity_expansion_brings_the_move_neither_view_ranks(views_only: AttentionRetriever) -> None:
    units = views_only.score_units(QUERY, CHAIN)
    for name in ("attention", "dense"):  # the premise: neither view alone ranks the move in its top 5
        ranked = [h.text for h in sorted(units, key=lambda h: -h.scores[name])]
        assert MOVE not in ranked[:5], f"{name} already ranks the move {ranked.index(MOVE) + 1}"
    assert next(h for h in units if h.text == MOVE).scores["lexical"] == 0  # shares no word with the query
    r = AttentionRetriever({"entities": {"top_entities": 1, "direct_hits": 1}})
    hits = r.retrieve(QUERY, [CHAIN], top_k=3)
    assert hits[0].text == "Sandra got the milk there."
    move = next(h for h in hits if h.text == MOVE)
    assert "entity:Sandra" in move.reasons and move.scores["entity"] > 0
    assert move.score <= hits[0].score


def test_entity_index_is_cached_with_the_document() -> None:
    r = AttentionRetriever()
    index = r.entity_index(CHAIN)
    assert index is not None and "sandra" in index.entities
    assert r.entity_index(CHAIN) is index
    assert AttentionRetriever({"entities": {"enabled": False}}).entity_index(CHAIN) is None


def test_document_scores_rank_the_relevant_document_first(views_only: AttentionRetriever) -> None:
    docs = [Document(text="The Eiffel Tower is in Paris. It opened in 1889.", id="paris"), Document(CHAIN, "chain")]
    scores = views_only.score_documents(QUERY, docs)
    assert scores[1] > scores[0]
    assert views_only.score_documents(QUERY, [CHAIN]) == [1.0]
    hits = views_only.retrieve(QUERY, docs, top_k=2)
    assert hits[0].document_id == "chain" and hits[0].scores["document"] == max(scores)


def test_explain_cli_writes_html_and_json(tmp_path, capsys) -> None:
    f = tmp_path / "story.txt"
    f.write_text(CHAIN)
    out, data = tmp_path / "report.html", tmp_path / "report.json"
    assert main(["explain", "--file", str(f), "--query", QUERY, "--out", str(out), "--json", str(data)]) == 0
    html = out.read_text()
    assert "<html" in html.lower() and "Sandra got the milk there." in html
    payload = json.loads(data.read_text())
    assert payload["query"] == QUERY
    units = payload["documents"][0]["units"]
    assert len(units) == 20 and all(CHAIN[u["start"] : u["end"]] for u in units)
    assert payload["hits"][0]["text"] == "Sandra got the milk there."


class _Meeting:
    """Wraps functions that should run at the same time: each records its thread on entry, marks itself started and
    waits (at most 60 s) for its partner to start; `met[name]` says whether the partner started meanwhile."""

    def __init__(self) -> None:
        self.started: dict[str, threading.Event] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.met: dict[str, bool] = {}

    def wrap(self, name: str, partner: str | None, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` recording its thread, meeting `partner` first (None: no partner, no wait)."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.threads[name] = threading.current_thread()
            if partner is not None:
                self.started.setdefault(name, threading.Event()).set()
                self.met[name] = self.started.setdefault(partner, threading.Event()).wait(60)
            return fn(*args, **kwargs)

        return wrapped


def test_a_new_document_is_analysed_while_the_model_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    r = AttentionRetriever()
    build, read = r.analyser._build, r.engine.head_token_scores
    meeting = _Meeting()
    monkeypatch.setattr(r.analyser, "_build", meeting.wrap("analysis", "read", build))
    monkeypatch.setattr(r.engine, "head_token_scores", meeting.wrap("read", "analysis", read))
    scores = [h.score for h in r.score_units(QUERY, CHAIN)]
    threads = meeting.threads
    assert threads["analysis"] is threading.current_thread() and threads["read"] is not threads["analysis"]
    assert meeting.met == {"analysis": True, "read": True}  # each started while the other was running
    alone = _Meeting()  # the document is analysed now: the next query reads in this thread, with no analysis
    monkeypatch.setattr(r.analyser, "_build", alone.wrap("analysis", None, build))
    monkeypatch.setattr(r.engine, "head_token_scores", alone.wrap("read", None, read))
    r.score_units("Who went to the kitchen?", CHAIN)
    assert "analysis" not in alone.threads and alone.threads["read"] is threading.current_thread()
    one_after_the_other = AttentionRetriever({"overlap_analysis": False})
    expected = [h.score for h in one_after_the_other.score_units(QUERY, CHAIN)]
    assert np.allclose(scores, expected, atol=1e-6)


def test_a_failed_read_still_waits_for_the_analysis_and_raises_its_error() -> None:
    r = AttentionRetriever({"model": {"max_tokens": 128}, "cascade": {"enabled": False}})
    with pytest.raises(ValueError, match="exceeds the model window of 128 tokens"):
        r.score_units(QUERY, CHAIN)
    assert r.analyser.cached(Document(CHAIN))  # the analysis beside it finished (no thread left running)
    assert r.units(CHAIN)[0].text == MOVE


def test_scoring_given_spans_needs_no_spacy_pipeline() -> None:
    missing = "en_core_web_missing"
    r = AttentionRetriever({"units": {"spacy_model": missing}, "entities": {"spacy_model": missing}})
    spans = [(0, len(MOVE)), (CHAIN.index("Sandra got"), CHAIN.index("Sandra got") + 26)]
    assert len(r.score_spans(QUERY, CHAIN, spans)) == 2  # the caller's spans: nothing to parse
    with pytest.raises(OSError, match="is not installed"):
        r.score_units(QUERY, CHAIN)
