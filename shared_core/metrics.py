"""Ranking metrics with binary relevance: nDCG@k and Recall@k, from a ranking or from a score array."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["metrics_from_scores", "ndcg_at_k", "rank_by_score", "recall_at_k"]


def _check(gold: set[int], k: int) -> None:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not gold:
        raise ValueError("a ranking metric needs at least one relevant item (gold is empty)")


def ndcg_at_k(ranking: Sequence[int], gold: set[int], k: int) -> float:
    """nDCG@k with binary gains: DCG of the top ``k`` over the ideal DCG of ``min(|gold|, k)`` relevant items."""
    _check(gold, k)
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranking[:k]) if item in gold)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(gold), k)))
    return dcg / ideal


def recall_at_k(ranking: Sequence[int], gold: set[int], k: int) -> float:
    """Fraction of the gold items found in the top ``k`` of ``ranking``."""
    _check(gold, k)
    return len(set(ranking[:k]) & gold) / len(gold)


def rank_by_score(scores: Sequence[float] | np.ndarray, seed: int = 0) -> list[int]:
    """Indices by descending score; ties are broken by a seeded random order, never by position.

    Breaking ties by index would reward whichever end of the document the gold happens to sit at (e.g. BM25's many
    zero scores), so ties are shuffled reproducibly instead. NaN scores rank last.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {values.shape}")
    keys = np.where(np.isnan(values), -np.inf, values)
    tiebreak = np.random.default_rng(seed).random(values.shape[0])
    return [int(i) for i in np.lexsort((tiebreak, -keys))]


def metrics_from_scores(
    scores: Sequence[float] | np.ndarray,
    gold: set[int],
    ndcg_ks: Iterable[int] = (10,),
    recall_ks: Iterable[int] = (5, 10),
    seed: int = 0,
) -> dict[str, float]:
    """``{"ndcg@K": ..., "recall@K": ...}`` for a score array over units and the set of gold unit indices."""
    ranking = rank_by_score(scores, seed=seed)
    out = {f"ndcg@{k}": ndcg_at_k(ranking, gold, k) for k in ndcg_ks}
    out.update({f"recall@{k}": recall_at_k(ranking, gold, k) for k in recall_ks})
    return out
