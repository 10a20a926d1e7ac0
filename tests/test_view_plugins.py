"""A view registered from outside the package, through the public protocol only, is computed and fused."""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from shared_core import AttentionRetriever, Document, Unit
from shared_core.views import ReadsAhead, View, read_ahead, register_view, registered_views, unregister_view

STORY = (
    "Mary moved to the bathroom. John went to the hallway. Sandra moved to the garden. "
    "Daniel travelled to the office. Bill picked up the apple. Fred went to the kitchen."
)


class KeywordView:
    """Scores 1 for units holding a configured word: a stand-in for a cross-encoder or late-interaction view."""

    name = "keyword"

    def __init__(self, word: str) -> None:
        self.word = word
        self.prepared = 0

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        self.prepared += 1
        return np.array([float(self.word in u.text.lower()) for u in units])

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        return [state.copy() for _ in queries]


@pytest.fixture
def keyword_view() -> Iterator[list[KeywordView]]:
    built: list[KeywordView] = []

    def factory(retriever: AttentionRetriever, options: dict[str, Any]) -> View:
        view = KeywordView(str(options["word"]))
        built.append(view)
        return view

    register_view("keyword", factory)
    yield built
    unregister_view("keyword")


def test_a_registered_view_is_fused_with_no_change_to_core_files(keyword_view: list[KeywordView]) -> None:
    assert "keyword" in registered_views()
    config = {
        "views": {"keyword": {"word": "kitchen"}},
        "fusion": {"weights": {"attention": 1, "dense": 0.5, "lexical": 2, "keyword": 50}},
        "entities": {"enabled": False},
    }
    r = AttentionRetriever(config)
    hits = r.retrieve("Who picked up the apple?", [STORY], top_k=3)
    assert hits[0].text == "Fred went to the kitchen."  # the plug-in's weight decides the ranking
    assert hits[0].scores["keyword"] == 1.0 and "keyword" in hits[0].reasons
    assert all("keyword" in h.scores for h in r.score_units("Who picked up the apple?", STORY))
    r.score_units("Where is Mary?", STORY)
    assert keyword_view[0].prepared == 1  # prepared once per document, whatever the number of queries
    base = AttentionRetriever({"entities": {"enabled": False}}).retrieve("Who picked up the apple?", [STORY], 1)
    assert base[0].text != "Fred went to the kitchen." and "keyword" not in base[0].scores


def test_plugin_view_errors_are_clear(keyword_view: list[KeywordView]) -> None:
    with pytest.raises(ValueError, match="no view named 'nope' is registered"):
        AttentionRetriever({"views": {"nope": {}}})
    with pytest.raises(ValueError, match="already registered"):
        register_view("keyword", lambda r, o: KeywordView("x"))
    with pytest.raises(ValueError, match="built-in"):
        register_view("dense", lambda r, o: KeywordView("x"))
    r = AttentionRetriever({"views": {"keyword": {"word": "apple"}}})  # no fusion weight for it
    with pytest.raises(ValueError, match="no fusion weight for view"):
        r.retrieve("Who picked up the apple?", [STORY])


def test_a_view_returning_bad_scores_is_refused(keyword_view: list[KeywordView]) -> None:
    class Broken(KeywordView):
        def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list:
            return [np.full(len(units), np.nan) for _ in queries]

    register_view("broken", lambda r, o: Broken("x"))
    try:
        r = AttentionRetriever({"views": {"broken": {}}, "fusion": {"weights": {"attention": 1, "broken": 1}}})
        with pytest.raises(ValueError, match="view 'broken' must return one finite score per unit"):
            r.score_units("Who picked up the apple?", STORY)
    finally:
        unregister_view("broken")


WEIGHTS = {"attention": 1, "dense": 1, "lexical": 1}
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="unset")


class LengthView(KeywordView):
    """A read-ahead plug-in: its unit-free part (the query's length) is read while the document is analysed."""

    def __init__(self, word: str) -> None:
        super().__init__(word)
        self.read_in: list[threading.Thread] = []
        self.caller: list[str] = []
        self.scored_from_reads = self.scored_directly = 0

    def read(self, queries: Sequence[str], document: Document) -> list[float]:
        self.read_in.append(threading.current_thread())
        self.caller.append(CALLER.get())
        return [float(len(q)) for q in queries]

    def score_read(
        self, read: Any, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any
    ) -> list[np.ndarray]:
        self.scored_from_reads += 1
        return [state * length for length in read]

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        self.scored_directly += 1
        return [state * float(len(q)) for q in queries]


def test_a_read_ahead_plugin_reads_beside_the_analysis_and_scores_from_its_read() -> None:
    built: list[LengthView] = []
    register_view("length", lambda r, o: built.append(LengthView("apple")) or built[-1])
    try:
        config = {
            "views": {"length": {}},
            "fusion": {"weights": {"attention": 1, "dense": 1, "lexical": 1, "length": 1}},
        }
        r = AttentionRetriever(config)
        view = built[0]
        assert isinstance(view, ReadsAhead)
        CALLER.set("the caller's request")
        hits = r.score_units("Who picked up the apple?", STORY)
        assert view.read_in[0] is not threading.current_thread()  # read in a second thread, in the caller's context
        assert view.caller == ["the caller's request"] and (view.scored_from_reads, view.scored_directly) == (1, 0)
        assert [h.scores["length"] for h in hits] == [24.0 * ("apple" in h.text) for h in hits]
        r.score_units("Who has the apple?", STORY)  # analysed already: nothing to overlap, plain `score`
        assert len(view.read_in) == 1 and (view.scored_from_reads, view.scored_directly) == (1, 1)
    finally:
        unregister_view("length")


def test_an_analysis_error_beside_the_read_is_raised_as_it_is() -> None:
    class Poisoned(KeywordView):
        def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
            if "poison" in document.text:
                raise ValueError("poisoned view: the document holds 'poison'")
            return super().prepare(document, units, reuse)

    register_view("poisoned", lambda r, o: Poisoned("apple"))
    try:
        r = AttentionRetriever(
            {
                "views": {"poisoned": {}},
                "fusion": {"weights": {"attention": 1, "dense": 1, "lexical": 1, "poisoned": 1}},
            }
        )
        with pytest.raises(ValueError, match="poisoned view: the document holds 'poison'"):
            r.score_units("Who picked up the apple?", STORY + " Fred dropped the poison.")
        assert len(r.score_units("Who picked up the apple?", STORY)) == 6
    finally:
        unregister_view("poisoned")


def test_an_interrupt_in_the_callers_thread_stops_the_models_read() -> None:
    r = AttentionRetriever({"views": {}})
    r.warm_up()

    def analysis() -> None:
        raise KeyboardInterrupt  # Ctrl-C during the analysis, while the model reads

    with pytest.raises(KeyboardInterrupt):
        read_ahead(r.views, ["Who has the apple?"], Document(STORY * 20), analysis)
    assert not [t for t in threading.enumerate() if t.name == "attnret-read"]  # the read stopped, and was joined
    assert r.stats["forwards"] == 0 and r.stats["prefills"] == 0  # at its first layer: nothing was read or kept
    assert len(r.score_units("Who has the apple?", STORY * 20)) == 120  # and the next call reads it in full


def test_ctrl_c_while_waiting_for_the_read_stops_it_and_leaves_no_thread() -> None:
    cascade = {"sink_tokens": 8, "cascades": 2, "window": 32, "stride": 64, "reuse": False}
    r = AttentionRetriever({"model": {"max_tokens": 160}, "cascade": cascade})  # a long read: ~100 cascade chunks
    r.warm_up()
    r.units("Warm up the pipelines. Mary met Anna in Paris.")  # spaCy and the encoder loaded: a short analysis
    long_text = "\n\n".join([STORY] * 40)
    analysed = threading.Event()
    analyse = r.analyser.analyse

    def analyse_then_signal(doc: Document) -> object:
        try:
            return analyse(doc)
        finally:
            analysed.set()

    r.analyser.analyse = analyse_then_signal  # type: ignore[method-assign]
    # Ctrl-C once the analysis is done, while this thread waits for the model's read (not inside the analysis,
    # where a signal may land in a finalizer and be ignored by Python)
    timer = threading.Thread(target=lambda: (analysed.wait(), time.sleep(0.3), os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        r.score_units("Who picked up the apple?", long_text)
        time.sleep(60)  # only reached if the read ends within 0.3 s of the analysis (it takes far longer)
    timer.join()
    assert not [t for t in threading.enumerate() if t.name == "attnret-read"]  # stopped and joined
