"""Views: each turns (queries, a document's units) into one raw score per unit; fusion and entities use them by name.

A view prepares per-document state once (cached with the document's analysis: embeddings, an index) and scores
any number of queries against it, so one read of a document serves every query of a call. Attention, dense and
lexical are the built-in views. A new view is one class implementing `View`, registered with `register_view`,
switched on with a section `views: {name: {...options}}` in the retriever config, and weighted in
`fusion.weights` — no core file changes (see CONTRIBUTING.md). The built-in views and `build_views` are in
`views.builtin`.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from shared_core import interrupt
from shared_core.document import Document, Unit

if TYPE_CHECKING:
    from shared_core.config import RetrieverConfig
    from shared_core.engine.attention_engine import AttentionEngine
    from shared_core.views.dense import DenseScorer

T = TypeVar("T")


@runtime_checkable
class View(Protocol):
    """One way of scoring units for a query. `prepare` runs once per document, `score` once per call."""

    name: str

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """Per-document state for `units` (e.g. their embeddings); `reuse=(n, state)` offers the state of an
        earlier text whose first `n` units are these units' first `n` (a grown document) — use it or ignore it."""

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        """Per query, one finite score per unit (higher = more relevant; any scale: fusion normalises)."""


@runtime_checkable
class ReadsAhead(View, Protocol):
    """A view whose scoring starts with work that needs no units (the attention view's forward): the retriever runs
    `read` in a second thread while a new document is analysed, then passes its result to `score_read`."""

    def read(self, queries: Sequence[str], document: Document) -> Any:
        """The part of scoring `queries` on `document` that needs neither its units nor its prepared state."""

    def score_read(
        self, read: Any, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any
    ) -> list[np.ndarray]:
        """Per query, one finite score per unit from `read`'s result; `score` is `score_read` of `read`."""


@dataclass(frozen=True)
class ViewContext:
    """What a view may use of the retriever that builds it: its config, its attention engine (the model's reads)
    and its dense scorer. Views get this, never the facade, so the views wing sits below it."""

    config: RetrieverConfig
    engine: AttentionEngine
    dense: DenseScorer


ViewFactory = Callable[[ViewContext, dict[str, Any]], View]
"""Builds a view from the retriever's `ViewContext` and the options of its `views.<name>` config section."""

_registry: dict[str, ViewFactory] = {}
_lock = threading.Lock()
BUILT_IN = ("attention", "dense", "lexical")


def register_view(name: str, factory: ViewFactory, *, replace: bool = False) -> None:
    """Make the view `name` available to every retriever whose config has a `views.<name>` section."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a view name must be an identifier such as 'cross_encoder', got {name!r}")
    if name in BUILT_IN or name in ("fused", "entity", "document"):
        raise ValueError(f"{name!r} is a built-in score name; register the view under another name")
    if not callable(factory):
        raise TypeError(f"factory must be callable (context, options) -> View, got {type(factory).__name__}")
    with _lock:
        if name in _registry and not replace:
            raise ValueError(f"a view named {name!r} is already registered (pass replace=True to replace it)")
        _registry[name] = factory


def unregister_view(name: str) -> None:
    """Forget a registered view (tests, or reloading a plug-in)."""
    with _lock:
        _registry.pop(name, None)


def registered_factory(name: str) -> ViewFactory | None:
    """The factory registered under `name`, or None."""
    with _lock:
        return _registry.get(name)


def registered_views() -> list[str]:
    """Names of the registered plug-in views."""
    with _lock:
        return sorted(_registry)


def read_ahead(
    views: Mapping[str, View], queries: Sequence[str], document: Document, alongside: Callable[[], T]
) -> tuple[T, dict[str, Any]]:
    """Each `ReadsAhead` view's `read` in a second thread (in the caller's context) while `alongside()` (a new
    document's analysis) runs in this one.

    The two need nothing of each other, so a first query pays about the longer of them, not their sum (the model's
    forward in the second thread measured faster on a 2-core CPU than the other way round). An error or an interrupt
    (Ctrl-C) in this thread stops the model's read at its next layer (`interrupt`) and is raised; otherwise an error
    of the reads is raised here.
    """
    ahead = {name: view for name, view in views.items() if isinstance(view, ReadsAhead)}
    if not ahead:
        return alongside(), {}
    context = contextvars.copy_context()
    stop, finished = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            with interrupt.stoppable(stop):
                outcome["reads"] = {name: view.read(queries, document) for name, view in ahead.items()}
        except BaseException as exc:  # raised in the caller's thread below
            outcome["error"] = exc
        finally:
            finished.set()

    thread = threading.Thread(target=context.run, args=(read,), name="attnret-read")
    with interrupt.ctrl_c_stops(stop) as interrupted:
        thread.start()
        try:
            done = alongside()
            finished.wait()  # not `join`: a join cut by Ctrl-C may return early on a later call (CPython)
            if interrupted.is_set():  # Ctrl-C whose KeyboardInterrupt Python dropped (it landed in a finalizer)
                raise KeyboardInterrupt
        except BaseException:
            stop.set()
            finished.wait()
            raise
        finally:
            if finished.is_set():
                thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return done, outcome["reads"]


def score_views(
    views: Mapping[str, View],
    queries: Sequence[str],
    document: Document,
    units: Sequence[Unit],
    states: Mapping[str, Any],
    reads: Mapping[str, Any] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Per query, the raw per-unit score of each view (one call per view for all the queries), each checked to
    be one finite score per unit, so a plug-in's mistake is named instead of breaking fusion. `reads` holds the
    `read` results of `ReadsAhead` views already run for these queries (`read_ahead`)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in queries]
    for name, view in views.items():
        if reads is not None and name in reads and isinstance(view, ReadsAhead):
            scored = view.score_read(reads[name], queries, document, units, states.get(name))
        else:
            scored = view.score(queries, document, units, states.get(name))
        if len(scored) != len(queries):
            raise ValueError(f"view {name!r} returned {len(scored)} score arrays for {len(queries)} queries")
        for per_query, values in zip(out, scored, strict=True):
            array = np.asarray(values, dtype=np.float64)
            if array.shape != (len(units),) or not np.all(np.isfinite(array)):
                raise ValueError(f"view {name!r} must return one finite score per unit ({len(units)})")
            per_query[name] = array
    return out
