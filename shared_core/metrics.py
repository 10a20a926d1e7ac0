"""Ranking metrics with binary relevance: nDCG@k and Recall@k, from a ranking or from a score array."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["expected_gains", "ndcg_at_k", "rank_by_score", "recall_at_k", "tie_aware_metrics"]


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


def expected_gains(scores: Sequence[float] | np.ndarray, gold: set[int]) -> np.ndarray:
    """Expected relevance at each rank when tied scores are ordered at random (McSherry & Najork, ECIR 2008).

    A group of m tied units holding g gold units spreads g/m of a gain over each of its m positions; untied scores
    give 0/1 gains. NaN scores rank last.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {values.shape}")
    keys = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(-keys, kind="stable")
    sorted_keys = keys[order]
    relevant = np.array([int(i) in gold for i in order], dtype=np.float64)
    gains = np.empty_like(relevant)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and sorted_keys[end] == sorted_keys[start]:
            end += 1
        gains[start:end] = relevant[start:end].mean()
        start = end
    return gains


def tie_aware_metrics(
    scores: Sequence[float] | np.ndarray,
    gold: set[int],
    ndcg_ks: Iterable[int] = (10,),
    recall_ks: Iterable[int] = (5, 10),
) -> dict[str, float]:
    """nDCG@k and Recall@k as expected values under random tie-breaking: exact, no luck of one shuffle."""
    for k in (*ndcg_ks, *recall_ks):
        _check(gold, k)
    gains = expected_gains(scores, gold)
    discounts = 1.0 / np.log2(np.arange(len(gains)) + 2)
    out = {}
    for k in ndcg_ks:
        ideal = float(discounts[: min(len(gold), k)].sum())
        out[f"ndcg@{k}"] = float((gains[:k] * discounts[:k]).sum()) / ideal
    for k in recall_ks:
        out[f"recall@{k}"] = float(gains[:k].sum()) / len(gold)
    return out
