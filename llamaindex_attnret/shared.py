"""One lazily built, process-wide AttentionRetriever per configuration, shared by every adapter instance."""

from __future__ import annotations

import threading
from typing import Literal

from shared_core import AttentionRetriever, RetrieverConfig

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
