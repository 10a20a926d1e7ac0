"""A view registered from outside the package, through the public protocol only, is computed and fused."""

from __future__ import annotations

import contextvars
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from shared_core import AttentionRetriever, Document, Unit, interrupt
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


def _main_thread_waits_for_the_read() -> bool:
    """Whether the main thread is blocked in `read_ahead`'s wait for the read (innermost frame in threading)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    return bool(names) and names[0][1] == threading.__file__ and any(name == "read_ahead" for name, _ in names)


@contextmanager
def _inside_the_read(r: AttentionRetriever, at_layer: int, action: Callable[[], None]) -> Iterator[threading.Event]:
    """Run `action` from the read thread once its forward reaches decoder layer `at_layer`, then hold the read there
    until the caller asks it to stop (bounded), so what happens next is known to happen while the model reads."""
    from shared_core import interrupt

    reached = threading.Event()

    def hook(module: Any, args: Any) -> None:
        if threading.current_thread().name != "attnret-read" or reached.is_set():
            return
        reached.set()
        action()
        stop = interrupt._stop.get()
        assert stop is not None and stop.wait(60), "the read was not asked to stop"

    handle = r.model.decoder.layers[at_layer].register_forward_pre_hook(hook)
    try:
        yield reached
    finally:
        handle.remove()


@pytest.fixture
def python_handles_ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler for the test: a process started in the background by a shell (`cmd &`) inherits
    SIGINT ignored, and there no Ctrl-C reaches Python at all (attnret leaves an application's handler alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_handles_ctrl_c")
def test_ctrl_c_while_waiting_for_the_read_stops_it_and_leaves_no_thread() -> None:
    r = AttentionRetriever({"views": {}})
    r.warm_up()
    r.units("Warm up the pipelines. Mary met Anna in Paris.")  # spaCy and the encoder loaded

    def ctrl_c_once_the_caller_waits() -> None:  # runs in the read thread, inside the model
        deadline = time.monotonic() + 60
        while not _main_thread_waits_for_the_read() and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with _inside_the_read(r, 1, ctrl_c_once_the_caller_waits) as reached, pytest.raises(KeyboardInterrupt):
        r.score_units("Who picked up the apple?", STORY * 20)
    assert reached.is_set()
    assert not [t for t in threading.enumerate() if t.name == "attnret-read"]  # stopped and joined
    assert r.stats["prefills"] == 0  # stopped inside its first forward: nothing was kept
    assert len(r.score_units("Who picked up the apple?", STORY * 20)) == 120  # and the next call reads it in full


class _CtrlCInAFinalizer:
    """Sends Ctrl-C to the main thread from its finalizer and runs Python code there, so the KeyboardInterrupt is
    raised inside `__del__`, where Python prints and drops it (what a Ctrl-C landing in a finalizer does)."""

    def __del__(self) -> None:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode checks, here
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, printed
@pytest.mark.usefixtures("python_handles_ctrl_c")
def test_ctrl_c_dropped_by_a_finalizer_during_the_analysis_still_stops_the_call() -> None:
    r = AttentionRetriever({"views": {}})
    r.warm_up()
    r.units("Warm up the pipelines. Mary met Anna in Paris.")
    analyse = r.analyser.analyse

    def analysis_with_a_finalizer(doc: Document) -> object:
        assert reached.wait(60)  # the model is reading beside us
        _CtrlCInAFinalizer()  # dropped at once: its __del__ runs here, in the main thread
        return analyse(doc)

    r.analyser.analyse = analysis_with_a_finalizer  # type: ignore[method-assign]
    with _inside_the_read(r, 1, lambda: None) as reached, pytest.raises(KeyboardInterrupt):
        r.score_units("Who picked up the apple?", STORY * 20)
    assert not [t for t in threading.enumerate() if t.name == "attnret-read"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_an_ignored_sigint_is_left_alone() -> None:
    """A process that ignores SIGINT (a background job, an application's choice) keeps ignoring it during a read."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.ctrl_c_stops(stop):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
