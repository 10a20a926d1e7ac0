"""Lexical view: BM25 (bm25s, Lucene variant) of the query against each unit, the document's units as the corpus.

Attention and dense embeddings of a small model miss exact names and rare terms that BM25 weighs by their rarity
in the document; fusing the three keeps the exact-match hits without losing the ones that share no word.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np

from shared_core.config.sections import LexicalConfig

# bm25s logs every index build at DEBUG on its own logger; keep callers' logs readable.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class LexicalIndex:
    """A BM25 index over one document's units, built once and reused for every query."""

    index: Any
    vocab: frozenset[str]
    size: int

    @classmethod
    def build(cls, texts: Sequence[str], config: LexicalConfig) -> LexicalIndex:
        """Index `texts` (one entry per unit)."""
        if isinstance(texts, str):
            raise TypeError("LexicalIndex.build() takes a sequence of texts, not a single string")
        if len(texts) == 0:
            return cls(None, frozenset(), 0)
        corpus = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
        if not any(len(ids) for ids in corpus.ids):  # nothing indexable (stop words, one-letter words): all zeros
            return cls(None, frozenset(), len(texts))
        index = bm25s.BM25(k1=config.k1, b=config.b)
        index.index(corpus, show_progress=False)
        return cls(index, frozenset(corpus.vocab), len(texts))

    def score(self, query: str) -> np.ndarray:
        """BM25 score of every unit; zeros when no query term (after stop words) occurs in the document."""
        if self.index is None:
            return np.zeros(self.size, dtype=np.float64)
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [t for t in tokens if t in self.vocab]
        if not known:
            return np.zeros(self.size, dtype=np.float64)
        return np.asarray(self.index.get_scores(known), dtype=np.float64)


def bm25_scores(query: str, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """BM25 score of each text for `query`, indexing `texts` as the corpus (one-off index; see `LexicalIndex`)."""
    return LexicalIndex.build(texts, LexicalConfig(k1=k1, b=b)).score(query)
