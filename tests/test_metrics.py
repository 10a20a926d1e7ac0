"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared_core.evaluation import ndcg_at_k, rank_by_score, recall_at_k, tie_aware_metrics


def test_ndcg_perfect_and_worst() -> None:
    assert ndcg_at_k([3, 1, 0, 2], {3, 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k([0, 2, 3, 1], {5}, 3) == 0.0


def test_ndcg_hand_computed() -> None:
    # gold at ranks 2 and 4 (1-based): DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([7, 1, 8, 2, 9], {1, 2}, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.6509209, abs=1e-6)


def test_ndcg_ideal_uses_min_of_gold_and_k() -> None:
    # three gold items but k = 2: both top slots relevant is already ideal
    assert ndcg_at_k([1, 2, 3], {1, 2, 3}, 2) == pytest.approx(1.0)
    # only one of the top 2 relevant, at rank 2: (1/log2 3) / (1 + 1/log2 3)
    assert ndcg_at_k([0, 2, 3], {1, 2, 3}, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_ndcg_ignores_items_past_k() -> None:
    assert ndcg_at_k([0, 1, 2, 5], {5}, 3) == 0.0
    assert ndcg_at_k([0, 1, 2, 5], {5}, 4) == pytest.approx(1 / math.log2(5))


def test_recall_at_k() -> None:
    ranking = [4, 0, 3, 1, 2]
    assert recall_at_k(ranking, {0, 1}, 1) == 0.0
    assert recall_at_k(ranking, {0, 1}, 2) == 0.5
    assert recall_at_k(ranking, {0, 1}, 4) == 1.0
    assert recall_at_k(ranking, {0, 1, 9}, 5) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [ndcg_at_k, recall_at_k])
def test_metrics_reject_empty_gold_and_bad_k(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="gold is empty"):
        fn([0, 1], set(), 5)
    with pytest.raises(ValueError, match="k must be positive"):
        fn([0, 1], {0}, 0)


def test_rank_by_score_descending_and_nan_last() -> None:
    assert rank_by_score([0.1, 0.9, 0.5]) == [1, 2, 0]
    assert rank_by_score([np.nan, 0.2, -1.0]) == [1, 2, 0]
    with pytest.raises(ValueError, match="one-dimensional"):
        rank_by_score(np.zeros((2, 2)))


def test_rank_by_score_ties_are_not_broken_by_position() -> None:
    # All-equal scores: the order is a seeded shuffle (reproducible), not 0..n-1 or n-1..0.
    ranking = rank_by_score(np.zeros(50))
    assert ranking == rank_by_score(np.zeros(50))
    assert sorted(ranking) == list(range(50))
    assert ranking != list(range(50)) and ranking != list(range(49, -1, -1))
    # Ties only reorder among themselves.
    mixed = rank_by_score([0.0, 1.0, 0.0, 2.0, 0.0])
    assert mixed[:2] == [3, 1] and sorted(mixed[2:]) == [0, 2, 4]


def test_tie_aware_metrics_equal_the_mean_over_every_tie_order() -> None:
    import itertools

    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1, 0.9])
    gold = {2, 5}
    perms = []
    for top in itertools.permutations([1, 5]):
        for mid in itertools.permutations([0, 2, 3]):
            ranking = [*top, *mid, 4]
            perms.append((ndcg_at_k(ranking, gold, 3), recall_at_k(ranking, gold, 2)))
    got = tie_aware_metrics(scores, gold, ndcg_ks=(3,), recall_ks=(2,))
    assert got["ndcg@3"] == pytest.approx(np.mean([p[0] for p in perms]))
    assert got["recall@2"] == pytest.approx(np.mean([p[1] for p in perms]))


def test_tie_aware_metrics_without_ties_match_the_plain_ranking() -> None:
    scores = np.array([0.3, 0.9, 0.1, 0.7])
    ranking = rank_by_score(scores)
    got = tie_aware_metrics(scores, {3})
    assert got == {"ndcg@10": ndcg_at_k(ranking, {3}, 10), "recall@5": 1.0, "recall@10": 1.0}
    assert tie_aware_metrics([np.nan, 1.0], {0}, (), (1,))["recall@1"] == 0.0  # NaN ranks last
