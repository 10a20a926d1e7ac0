"""The built-in views (attention, dense, lexical) and `build_views`, which adds the configured plug-ins after them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared_core.document import Document, Unit
from shared_core.engine import scoring
from shared_core.engine.attention_engine import PerLayer
from shared_core.engine.prompt import DocumentTokens
from shared_core.views.base import View, ViewContext, registered_factory, registered_views
from shared_core.views.lexical import LexicalIndex


def build_views(context: ViewContext) -> dict[str, View]:
    """The enabled views of `context.config`, built-in first, then the configured plug-ins in config order."""
    cfg = context.config
    views: dict[str, View] = {"attention": AttentionView(context)}
    if cfg.dense.enabled:
        views["dense"] = DenseView(context)
    if cfg.lexical.enabled:
        views["lexical"] = LexicalView(context)
    for name, options in cfg.views.items():
        factory = registered_factory(name)
        if factory is None:
            raise ValueError(
                f"views.{name}: no view named {name!r} is registered (registered: {registered_views() or 'none'}); "
                "call shared_core.views.register_view before building the retriever"
            )
        view = factory(context, dict(options))
        if not isinstance(view, View):
            raise TypeError(f"the factory of view {name!r} returned {type(view).__name__}, which is not a View")
        views[name] = view
    return views


class AttentionView:
    """Calibrated, pooled query-row attention of the causal LM (the attention engine reads the document once)."""

    name = "attention"

    def __init__(self, context: ViewContext) -> None:
        self.engine = context.engine
        self.config = context.config.attention

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """Nothing per unit: the model state lives in the attention engine's caches."""
        return None

    def read(self, queries: Sequence[str], document: Document) -> tuple[DocumentTokens, list[PerLayer]]:
        """The engine's calibrated head scores of every document token, per query (the forward: no units needed)."""
        return self.engine.head_token_scores(list(queries), document)

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
        att = self.config
        tokens, per_query = read
        lo, hi = scoring.unit_token_ranges(tokens.offsets, [(u.start, u.end) for u in units])
        out = []
        for per_layer in per_query:
            weights = self.engine.head_selection.weights  # a trained head set's; None = every head the same
            token_scores = scoring.aggregate_heads(per_layer, att.head_aggregation, weights) * tokens.n_doc_tokens
            out.append(scoring.pool(token_scores, lo, hi, att.pooling, att.topk, att.threshold_std))
        return out


class DenseView:
    """Cosine similarity of sentence embeddings (units embedded once per document)."""

    name = "dense"

    def __init__(self, context: ViewContext) -> None:
        self.scorer = context.dense

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

    def __init__(self, context: ViewContext) -> None:
        self.config = context.config.lexical

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        """The BM25 index of the units (rebuilt for a grown document: it is cheap and IDF changes)."""
        return LexicalIndex.build([u.text for u in units], self.config)

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        """Per query, the BM25 score of each unit."""
        return [state.score(q) for q in queries]
