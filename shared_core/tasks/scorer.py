"""What a task needs of the retriever it works with, as a protocol, so the tasks wing never imports the facade."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared_core.document import Document, Hit, Unit

if TYPE_CHECKING:
    from shared_core.config import RetrieverConfig
    from shared_core.engine.prompt import DocumentTokens
    from shared_core.models.loading import LoadedModel
    from shared_core.views.dense import DenseScorer
    from shared_core.views.model_fusion import ModelFusion


class Scorer(Protocol):
    """The retriever as tasks see it (`AttentionRetriever` is one): its config, model and window, the dense scorer,
    token and unit scores, and a sibling with another config that shares its caches."""

    config: RetrieverConfig
    fusion: ModelFusion
    """The fusion weights in use for documents and candidate sets, and the candidates' calibration."""

    @property
    def model(self) -> LoadedModel:
        """The loaded model (its tokenizer counts tokens)."""

    @property
    def window(self) -> int:
        """Longest prompt (document + query part) in tokens."""

    @property
    def dense(self) -> DenseScorer:
        """The dense scorer of the config's `dense` section."""

    def token_scores(
        self, query: str, document: str | Document, candidates: bool = False
    ) -> tuple[DocumentTokens, np.ndarray]:
        """Aggregated, calibrated attention score of each document token (`candidates`: of a candidate set)."""

    def units(self, document: str | Document) -> list[Unit]:
        """The document's units under the config's granularity."""

    def score_units(self, query: str, document: str | Document) -> list[Hit]:
        """Every unit of the document with its scores, in document order."""

    def sibling(self, config: RetrieverConfig) -> Scorer:
        """A scorer with `config` that shares this one's document caches."""


__all__ = ["Scorer"]
