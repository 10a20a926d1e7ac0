"""A unit's score informed by its neighbours (`views.context`, `fusion.context`): the arithmetic, the config checks,
the ranking it changes, and candidate sets left alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.config import ConfigError, EntitiesConfig, FusionConfig
from shared_core.document import Unit
from shared_core.views.context import neighbour_mean, with_context
from shared_core.views.ranking import rank_units

OFF = {"context": 0.0, "paragraph_context": 0.0}


def test_neighbour_mean_weighs_nearer_units_more() -> None:
    scores = np.array([0.0, 1.0, 0.0, 0.0])
    # unit 0: units 1 (weight 2) and 2 (weight 1); unit 2: units 1 and 3 (weight 2) and 0 (weight 1)
    np.testing.assert_allclose(neighbour_mean(scores, 2), [2 / 3, 0.0, 2 / 5, 1 / 3])


def test_neighbour_mean_within_groups_and_a_lone_unit_keeps_its_score() -> None:
    scores = np.array([0.2, 0.8, 0.4, 0.9])
    np.testing.assert_allclose(neighbour_mean(scores, 3, groups=[0, 0, 1, 2]), [0.8, 0.2, 0.4, 0.9])
    np.testing.assert_allclose(neighbour_mean(np.array([0.7]), 4), [0.7])


def test_with_context_mixes_the_shares() -> None:
    fused = np.array([1.0, 0.0, 0.5])
    config = FusionConfig(context=0.5, paragraph_context=0.25, context_window=1)
    out = with_context(fused, [0, 0, 1], config)
    # unit 1: 0.25 * 0 + 0.5 * mean(1, 0.5) + 0.25 * 1 (its paragraph neighbour is unit 0 only)
    np.testing.assert_allclose(out, [0.25 * 1 + 0.5 * 0 + 0.25 * 0, 0.625, 0.25 * 0.5 + 0.5 * 0 + 0.25 * 0.5])


def test_with_context_off_or_one_unit_is_the_identity() -> None:
    fused = np.array([0.3, 0.9, 0.1])
    np.testing.assert_array_equal(with_context(fused, [0, 0, 0], FusionConfig(**OFF)), fused)
    np.testing.assert_array_equal(with_context(np.array([0.4]), [0], FusionConfig()), [0.4])


def test_rrf_fusion_mixes_nothing_and_its_defaults_are_accepted() -> None:
    fused = np.array([0.3, 0.9, 0.1])
    config = FusionConfig(method="rrf")  # the default shares, not given: accepted, not applied
    np.testing.assert_array_equal(with_context(fused, [0, 0, 0], config), fused)
    FusionConfig(method="rrf", context=0, paragraph_context=0)


def test_with_context_refuses_mismatched_paragraphs() -> None:
    with pytest.raises(ValueError, match="3 scores but 2 paragraph"):
        with_context(np.zeros(3), [0, 0], FusionConfig())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=40),
    st.floats(0, 0.5),
    st.floats(0, 0.5),
    st.integers(1, 6),
    st.randoms(use_true_random=False),
)
def test_with_context_stays_within_the_scores_range(scores, share, para, window, rnd) -> None:
    fused = np.array(scores)
    paragraphs = sorted(rnd.randrange(4) for _ in scores)
    out = with_context(fused, paragraphs, FusionConfig(context=share, paragraph_context=para, context_window=window))
    assert out.shape == fused.shape and np.all(np.isfinite(out))
    assert out.min() >= fused.min() - 1e-12 and out.max() <= fused.max() + 1e-12


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"context": 0.7, "paragraph_context": 0.5}, "must be at most 1"),
        ({"context": -0.1}, "context"),
        ({"paragraph_context": 1.5}, "paragraph_context"),
        ({"context": float("nan")}, "context"),
        ({"context_window": 0}, "context_window"),
        ({"method": "rrf", "context": 0.3}, "rrf"),
    ],
)
def test_bad_context_settings_are_named(fields, match) -> None:
    with pytest.raises((ValueError, ConfigError), match=match):
        RetrieverConfig.coerce({"fusion": fields})


def _units(paragraphs: list[int]) -> list[Unit]:
    return [
        Unit(index=i, start=i * 10, end=i * 10 + 9, text=f"unit {i}.", paragraph=p) for i, p in enumerate(paragraphs)
    ]


def test_a_unit_inside_a_discussion_outranks_an_equal_lone_match() -> None:
    # unit 2 sits among units the views also like; unit 7 scores as high alone among units they do not
    attention = np.array([0.1, 0.6, 0.9, 0.6, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0])
    views = {"attention": attention}
    units = _units([0] * 5 + [1] * 5)
    off = rank_units(views, units, None, FusionConfig(**OFF), EntitiesConfig(enabled=False))
    assert off.final[2] == off.final[7]
    on = rank_units(views, units, None, FusionConfig(), EntitiesConfig(enabled=False))
    assert on.final[2] > on.final[7]
    assert np.argsort(-on.final, kind="stable")[0] == 2
    hits = on.hits(units, "d", 0)
    assert hits[2].scores["fused"] == pytest.approx(on.final[2]) and hits[2].scores["attention"] == 0.9


def test_candidates_are_never_mixed_with_their_neighbours(retriever: AttentionRetriever) -> None:
    query = "Which city hosts the glass museum?"
    candidates = [
        "The glass museum is in Corning, New York.",
        "Corning is a small city on the Chemung River.",
        "Rivers in New York flood in spring.",
        "A museum of glass opened in 1951.",
    ]
    off = retriever.sibling(RetrieverConfig.coerce({"fusion": OFF}))
    heavy = retriever.sibling(RetrieverConfig.coerce({"fusion": {"context": 0.6, "paragraph_context": 0.4}}))
    for other in (off, heavy):
        assert [h.score for h in other.score_candidates(query, candidates)] == pytest.approx(
            [h.score for h in retriever.score_candidates(query, candidates)], abs=1e-9
        )


def test_a_documents_units_take_their_neighbours_share(retriever: AttentionRetriever) -> None:
    document = (
        "The committee met on Monday. Ada chaired it.\n\n"
        "The budget for the new bridge was discussed at length. Costs rose by a third. "
        "Steel prices drove the rise.\n\nLunch was served at noon. Everyone left by two."
    )
    query = "Why did the bridge budget go up?"
    off = retriever.sibling(RetrieverConfig.coerce({"fusion": OFF}))
    plain = off.score_all(query, [document])[0]
    mixed = retriever.score_all(query, [document])[0]
    assert [h.text for h in plain] == [h.text for h in mixed]
    own = np.array([h.scores["fused"] for h in plain])
    paragraphs = [u.paragraph for u in retriever.units(document)]
    config = retriever.fusion.documents
    np.testing.assert_allclose([h.scores["fused"] for h in mixed], with_context(own, paragraphs, config), atol=1e-9)


def test_tune_fusion_replays_context_off_and_other_settings_but_not_the_default_twice() -> None:
    from benchmarks.tune_fusion import context_candidates

    default = FusionConfig()
    cands = context_candidates(default)
    assert cands[0].name == "default, context off" and cands[0].fusion.context == 0 == cands[0].fusion.paragraph_context
    settings_seen = {(c.fusion.context, c.fusion.paragraph_context, c.fusion.context_window) for c in cands[1:]}
    assert len(settings_seen) == len(cands) - 1 == 53
    assert (default.context, default.paragraph_context, default.context_window) not in settings_seen
    assert (0.3, 0.3, 4) in settings_seen  # shares summing to exactly 0.6 are kept
