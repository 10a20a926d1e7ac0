"""Lexical baseline for the benchmarks: BM25 (bm25s, Lucene variant) over the same units as every other method."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

__all__ = ["bm25_scores"]

# bm25s sets its own logger to DEBUG and logs every index build; keep benchmark output readable.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def bm25_scores(query: str, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """BM25 score of each text for ``query``, indexing ``texts`` as the corpus (English stop words removed).

    Returns zeros when the query has no indexable term (only stop words, or none found in the texts).
    """
    if isinstance(texts, str):
        raise TypeError("bm25_scores() takes a sequence of texts, not a single string")
    if len(texts) == 0:
        return np.zeros(0, dtype=np.float32)
    corpus = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
    query_tokens = [
        t
        for t in bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        if t in corpus.vocab
    ]
    if not query_tokens:
        return np.zeros(len(texts), dtype=np.float32)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus, show_progress=False)
    return np.asarray(retriever.get_scores(query_tokens), dtype=np.float32)
