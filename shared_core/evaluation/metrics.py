"""Ranking metrics with binary relevance: nDCG@k, Recall@k and hit@k, from a ranking or from a score array."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["expected_gains", "hit_at_k", "ndcg_at_k", "rank_by_score", "recall_at_k", "tie_aware_metrics"]


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


def hit_at_k(ranking: Sequence[int], gold: set[int], k: int) -> float:
    """1.0 when at least one gold item is in the top ``k`` of ``ranking``, else 0.0 (hit@1: the first is gold)."""
    _check(gold, k)
    return float(bool(set(ranking[:k]) & gold))


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
    return [int(i) for i in np.lexsort(np.stack([tiebreak, -keys]))]


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


def _expected_hit(scores: np.ndarray, gold: set[int], k: int) -> float:
    """Probability that a random tie order puts at least one gold item in the top ``k``.

    Every tie group wholly above rank ``k`` is in; of the group straddling rank ``k`` (m units, g gold) r positions
    fall inside, which miss every gold unit with probability C(m - g, r) / C(m, r).
    """
    keys = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-keys, kind="stable")
    sorted_keys = keys[order]
    start = 0
    while start < min(k, len(order)):
        end = start + 1
        while end < len(order) and sorted_keys[end] == sorted_keys[start]:
            end += 1
        m = end - start
        g = sum(int(i) in gold for i in order[start:end])
        r = min(end, k) - start
        if g and r == m:
            return 1.0
        if g:
            return 1.0 - math.comb(m - g, r) / math.comb(m, r)
        start = end
    return 0.0


def tie_aware_metrics(
    scores: Sequence[float] | np.ndarray,
    gold: set[int],
    ndcg_ks: Iterable[int] = (10,),
    recall_ks: Iterable[int] = (5, 10),
    hit_ks: Iterable[int] = (),
) -> dict[str, float]:
    """nDCG@k, Recall@k and hit@k as expected values under random tie-breaking: exact, no luck of one shuffle."""
    ndcg_ks, recall_ks, hit_ks = tuple(ndcg_ks), tuple(recall_ks), tuple(hit_ks)
    for k in (*ndcg_ks, *recall_ks, *hit_ks):
        _check(gold, k)
    gains = expected_gains(scores, gold)
    discounts = 1.0 / np.log2(np.arange(len(gains)) + 2)
    out = {}
    for k in ndcg_ks:
        ideal = float(discounts[: min(len(gold), k)].sum())
        out[f"ndcg@{k}"] = float((gains[:k] * discounts[:k]).sum()) / ideal
    for k in recall_ks:
        out[f"recall@{k}"] = float(gains[:k].sum()) / len(gold)
    for k in hit_ks:
        out[f"hit@{k}"] = _expected_hit(np.asarray(scores, dtype=np.float64), gold, k)
    return out
