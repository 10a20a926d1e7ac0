"""One lazily built, process-wide AttentionRetriever per configuration, shared by every adapter instance; and the
query check the node postprocessors share."""

from __future__ import annotations

import threading
from typing import Literal

from llama_index.core.schema import QueryBundle

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.validation import check_query

_retrievers: dict[str, AttentionRetriever] = {}
_lock = threading.Lock()


def with_granularity(config: RetrieverConfig, granularity: Literal["sentence", "paragraph"]) -> RetrieverConfig:
    """A copy of `config` whose units are `granularity` (the input is returned when it already matches)."""
    if config.units.granularity == granularity:
        return config
    units = config.units.model_copy(update={"granularity": granularity})
    return config.model_copy(update={"units": units})


def shared_retriever(config: RetrieverConfig) -> AttentionRetriever:
    """The process-wide retriever for `config` (built on first use; the model loads on its first call)."""
    key = config.model_dump_json()
    with _lock:
        retriever = _retrievers.get(key)
        if retriever is None:
            retriever = AttentionRetriever(config)
            _retrievers[key] = retriever
        return retriever


def query_text(query_bundle: QueryBundle | None, component: str) -> str:
    """The checked query of a postprocessor call: a ValueError without one (or an empty one), a TypeError for
    anything but a `QueryBundle`; checked even when no node has text."""
    if query_bundle is None:
        raise ValueError(f"{component} needs a query: pass query_bundle or query_str.")
    if not isinstance(query_bundle, QueryBundle):
        raise TypeError(f"query_bundle must be a QueryBundle, got {type(query_bundle).__name__}")
    return check_query(query_bundle.query_str)
