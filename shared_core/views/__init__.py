"""Views wing: each view turns (queries, a document's units) into one raw score per unit; fusion, ranking and the
entity scope combine them, and the per-document analysis prepares their state once.

Built-in views: attention (the engine's reads), dense (sentence embeddings), lexical (BM25); plug-ins register with
`register_view`. Imports the engine, models, text and config wings and the foundation; never a task or the facade.
"""

from shared_core.views.base import (
    ReadsAhead,
    View,
    ViewContext,
    ViewFactory,
    read_ahead,
    register_view,
    registered_views,
    score_views,
    unregister_view,
)

__all__ = [
    "ReadsAhead",
    "View",
    "ViewContext",
    "ViewFactory",
    "read_ahead",
    "register_view",
    "registered_views",
    "score_views",
    "unregister_view",
]
