"""Views: each turns (queries, a document's units) into one raw score per unit; fusion and entities use them by name.

A view prepares per-document state once (cached with the document's analysis: embeddings, an index) and scores
any number of queries against it, so one read of a document serves every query of a call. Attention, dense and
lexical are the built-in views. A new view is one class implementing `View`, registered with `register_view`,
switched on with a section `views: {name: {...options}}` in the retriever config, and weighted in
`fusion.weights` — no core file changes (see CONTRIBUTING.md).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from . import interrupt
from .document import Document, Unit
from .lexical import LexicalIndex

if TYPE_CHECKING:
    from .attention_engine import PerLayer
    from .prompt import DocumentTokens
    from .retriever import AttentionRetriever

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


ViewFactory = Callable[["AttentionRetriever", dict[str, Any]], View]
"""Builds a view for a retriever from the options of its `views.<name>` config section."""

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
        raise TypeError(f"factory must be callable (retriever, options) -> View, got {type(factory).__name__}")
    with _lock:
        if name in _registry and not replace:
            raise ValueError(f"a view named {name!r} is already registered (pass replace=True to replace it)")
        _registry[name] = factory


def unregister_view(name: str) -> None:
    """Forget a registered view (tests, or reloading a plug-in)."""
    with _lock:
        _registry.pop(name, None)


def registered_views() -> list[str]:
    """Names of the registered plug-in views."""
    with _lock:
        return sorted(_registry)


def build_views(retriever: AttentionRetriever) -> dict[str, View]:
    """The enabled views of a retriever's config, built-in first, then the configured plug-ins in config order."""
    cfg = retriever.config
    views: dict[str, View] = {"attention": AttentionView(retriever)}
    if cfg.dense.enabled:
        views["dense"] = DenseView(retriever)
    if cfg.lexical.enabled:
        views["lexical"] = LexicalView(retriever)
    for name, options in cfg.views.items():
        with _lock:
            factory = _registry.get(name)
        if factory is None:
            raise ValueError(
                f"views.{name}: no view named {name!r} is registered (registered: {registered_views() or 'none'}); "
                "call shared_core.views.register_view before building the retriever"
            )
        view = factory(retriever, dict(options))
        if not isinstance(view, View):
            raise TypeError(f"the factory of view {name!r} returned {type(view).__name__}, which is not a View")
        views[name] = view
    return views


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
    thread.start()
    try:
        done = alongside()
        finished.wait()  # not `join`: a join cut by Ctrl-C may return early on a later call (CPython)
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


class AttentionView:
    """Calibrated, pooled query-row attention of the causal LM (the attention engine reads the document once)."""

    name = "attention"

    def __init__(self, retriever: AttentionRetriever) -> None:
        self.retriever = retriever

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """Nothing per unit: the model state lives in the attention engine's caches."""
        return None

    def read(self, queries: Sequence[str], document: Document) -> tuple[DocumentTokens, list[PerLayer]]:
        """The engine's calibrated head scores of every document token, per query (the forward: no units needed)."""
        return self.retriever.engine.head_token_scores(list(queries), document)

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        """Per query, pooled token scores in multiples of a uniform share (comparable across document lengths)."""
        return self.score_read(self.read(queries, document), queries, document, units, state)

    def score_read(
        self,
        read: tuple[DocumentTokens, list[PerLayer]],
        queries: Sequence[str],
        document: Document,
        units: Sequence[Unit],
        state: Any,
    ) -> list[np.ndarray]:
        """Per query, the token scores of `read` pooled over each unit."""
        from . import scoring

        att = self.retriever.config.attention
        tokens, per_query = read
        lo, hi = scoring.unit_token_ranges(tokens.offsets, [(u.start, u.end) for u in units])
        out = []
        for per_layer in per_query:
            token_scores = scoring.aggregate_heads(per_layer, att.head_aggregation) * tokens.n_doc_tokens
            out.append(scoring.pool(token_scores, lo, hi, att.pooling, att.topk, att.threshold_std))
        return out


class DenseView:
    """Cosine similarity of sentence embeddings (units embedded once per document)."""

    name = "dense"

    def __init__(self, retriever: AttentionRetriever) -> None:
        self.scorer = retriever.dense

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """Unit embeddings; a grown document embeds only its new units."""
        kept, old = reuse if reuse is not None and reuse[1] is not None else (0, None)
        new = self.scorer.embed([u.text for u in units[kept:]])
        return new if old is None else np.concatenate([old[:kept], new])

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        """Per query, the cosine similarity to each unit."""
        return [self.scorer.score(q, state) for q in queries]


class LexicalView:
    """BM25 of the query against the document's units (the units are the corpus)."""

    name = "lexical"

    def __init__(self, retriever: AttentionRetriever) -> None:
        self.config = retriever.config.lexical

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """The BM25 index of the units (rebuilt for a grown document: it is cheap and IDF changes)."""
        return LexicalIndex.build([u.text for u in units], self.config)

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        """Per query, the BM25 score of each unit."""
        return [state.score(q) for q in queries]
